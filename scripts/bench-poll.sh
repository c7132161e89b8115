#!/usr/bin/env bash
# CBO polling benchmark: loads referral Tasks across CBO Organizations into a fresh release gateway (authentication
# on), registers CBO clients, and measures `Task?owner=<own org>&status=requested&_lastUpdated=gt<t>` polls, each
# made with that CBO's own token (so the store's access scoping is part of every poll).
# Usage: scripts/bench-poll.sh sqlite|postgres [--tasks 100000] [--owners 500] [--pollers 50] [sdoh-fhir-load args...]
#   e.g. scripts/bench-poll.sh sqlite --tasks 100000 --owners 500 --clients 8 --duration 30
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}; shift
tasks=100000; owners=500; pollers=50; rest=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tasks) tasks=$2; shift 2 ;;
    --owners) owners=$2; shift 2 ;;
    --pollers) pollers=$2; shift 2 ;;
    *) rest+=("$1"); shift ;;
  esac
done
export SDOH_GATEWAY_AUTH__REQUIRED=true
source scripts/lib/gateway-bench.sh
start_gateway "$backend" bench_poll sdoh-fhir-load
sample_peak_rss
token_of() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["token"])'; }
add_client() {
  "$target/release/sdoh-gateway" --database-url "$url" --log-level warn clients add --name "$1" --role "$2" \
    --organization "$3" --json | token_of
}
# An admin loads the Tasks in every status (clients may only create them as draft or requested).
loader=$(add_client "bench loader" admin Organization/operations)
: > "$work/tokens"
for k in $(seq 0 $((pollers - 1))); do
  org="Organization/cbo-$(( k * owners / pollers ))"
  echo "$org $(add_client "bench $org" cbo "$org")" >> "$work/tokens"
done
status=0
"$target/release/sdoh-fhir-load" --base "http://127.0.0.1:$http_port/fhir" --json --scenario poll \
  --tasks "$tasks" --owners "$owners" --token "$loader" --tokens-file "$work/tokens" "${rest[@]}" || status=$?
echo "{\"backend\":\"$backend\",\"gateway_peak_rss_kb\":$(peak_rss_kb),\"pollers\":$pollers}"
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
exit "$status"
