#!/usr/bin/env bash
# FHIR API benchmark: starts the release gateway on a fresh database, drives its FHIR API with sdoh-fhir-load, and
# reports the load tool's figures plus the gateway's peak resident memory during the run.
# Usage: scripts/bench-fhir.sh sqlite|postgres [sdoh-fhir-load arguments...] [--then sdoh-fhir-load arguments...]...
# Each `--then` starts another load run against the same gateway and database, so a search can run over data a
# transaction run loaded. `--ids-file` defaults to a file in the run's scratch folder, shared by all runs.
#   e.g. scripts/bench-fhir.sh sqlite --scenario create --clients 32 --duration 30
#        scripts/bench-fhir.sh postgres --scenario read --clients 32 --duration 30
#        scripts/bench-fhir.sh sqlite --scenario transaction --clients 1 --requests 200
#        scripts/bench-fhir.sh sqlite --scenario transaction --clients 4 --requests 2000 \
#          --then --scenario search --clients 32 --duration 30
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}; shift
# BENCH_NO_BUILD=1 reuses the binaries already built, so a series of runs measures one build.
source scripts/lib/gateway-bench.sh
start_gateway "$backend" bench_fhir sdoh-fhir-load
sample_peak_rss
status=0
run() {
  local ids=()
  [[ " $* " == *" --ids-file "* ]] || ids=(--ids-file "$work/patients.txt")
  "$target/release/sdoh-fhir-load" --base "http://127.0.0.1:$http_port/fhir" --json "${ids[@]}" "$@" || status=$?
}
args=()
for a in "$@"; do
  if [ "$a" = "--then" ]; then run "${args[@]}"; args=(); else args+=("$a"); fi
done
run "${args[@]}"
db_size=0
[ "$backend" = sqlite ] && db_size=$(du -sk "$work" | awk '{print $1}')
echo "{\"backend\":\"$backend\",\"gateway_peak_rss_kb\":$(peak_rss_kb),\"sqlite_dir_kb\":$db_size}"
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
exit "$status"
