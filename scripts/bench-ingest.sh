#!/usr/bin/env bash
# Durable MLLP ingest benchmark: starts the release gateway on a fresh database, drives it with sdoh-load, and
# reports the load tool's figures plus the gateway's peak resident memory during the run.
# Usage: scripts/bench-ingest.sh sqlite|postgres [sdoh-load arguments...]
#   e.g. scripts/bench-ingest.sh sqlite --connections 32 --messages 200000
#        scripts/bench-ingest.sh postgres --connections 32 --pipeline 8 --messages 200000
#        scripts/bench-ingest.sh sqlite --connections 32 --rate 2000 --messages 60000
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}; shift
# BENCH_NO_BUILD=1 reuses the binaries already built under ${CARGO_TARGET_DIR:-target}.
source scripts/lib/gateway-bench.sh
start_gateway "$backend" bench_ingest sdoh-load
sample_peak_rss
"$target/release/sdoh-load" --mllp "127.0.0.1:$mllp_port" --verify-database "$url" --json "$@"
kill "$sampler" 2>/dev/null || true
echo "{\"backend\":\"$backend\",\"gateway_peak_rss_kb\":$(peak_rss_kb)}"
curl -s "http://127.0.0.1:$http_port/metrics" | grep -E '^ingest_(group_commit_batch_size|commit_duration_seconds)_(sum|count)' || true
