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
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --bin sdoh-gateway --bin sdoh-load >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port); mllp_port=$(free_port)
case "$backend" in
  sqlite) url="sqlite:$work/gateway.db" ;;
  postgres)
    schema="bench_ingest_$$"
    psql -q -o /dev/null -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
    url="postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$schema" ;;
  *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
esac
cleanup() {
  [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
  [ -n "${schema:-}" ] && PGOPTIONS="-c client_min_messages=warning" psql -q -o /dev/null -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $schema CASCADE" || true
  rm -rf "$work"
}
trap cleanup EXIT
"$target/release/sdoh-gateway" --database-url "$url" --http-listen "127.0.0.1:$http_port" \
  --mllp-listen "127.0.0.1:$mllp_port" --log-level warn serve 2>"$work/gateway.log" &
gw=$!
until curl -sf "http://127.0.0.1:$http_port/health/ready" >/dev/null; do
  kill -0 "$gw" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
  sleep 0.05
done
peak=0
( while kill -0 "$gw" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' /proc/$gw/status 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" > "$work/peak"
    sleep 0.2
  done ) &
sampler=$!
"$target/release/sdoh-load" --mllp "127.0.0.1:$mllp_port" --verify-database "$url" --json "$@"
kill "$sampler" 2>/dev/null || true
echo "{\"backend\":\"$backend\",\"gateway_peak_rss_kb\":$(cat "$work/peak" 2>/dev/null || echo 0)}"
curl -s "http://127.0.0.1:$http_port/metrics" | grep -E '^ingest_(group_commit_batch_size|commit_duration_seconds)_(sum|count)' || true
