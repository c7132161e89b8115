#!/usr/bin/env bash
# CBO polling benchmark: loads referral Tasks across CBO Organizations into a fresh release gateway (authentication
# on), registers CBO clients, and measures `Task?owner=<own org>&status=requested&_lastUpdated=gt<t>` polls, each
# made with that CBO's own token (so the store's access scoping is part of every poll).
# Usage: scripts/bench-poll.sh sqlite|postgres [--tasks 100000] [--owners 500] [--pollers 50] [sdoh-fhir-load args...]
#        [--then sdoh-fhir-load args...]...     (each --then polls the same data again, loading nothing)
#   e.g. scripts/bench-poll.sh sqlite --tasks 100000 --owners 500 --clients 8 --duration 30 \
#          --then --clients 1 --duration 20 --then --poll-since load-end --clients 8 --duration 20
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
poll() {
  "$target/release/sdoh-fhir-load" --base "http://127.0.0.1:$http_port/fhir" --json --scenario poll \
    --owners "$owners" --token "$loader" --tokens-file "$work/tokens" "$@" || status=$?
}
load="--tasks $tasks"
args=()
for a in "${rest[@]}" --then; do
  if [ "$a" = "--then" ]; then
    # shellcheck disable=SC2086
    poll $load "${args[@]}"
    load="--tasks 0"; args=()
  else
    args+=("$a")
  fi
done
echo "{\"backend\":\"$backend\",\"gateway_peak_rss_kb\":$(peak_rss_kb),\"pollers\":$pollers}"
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
exit "$status"
