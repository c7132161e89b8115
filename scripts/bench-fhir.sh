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
[ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release --bin sdoh-gateway --bin sdoh-fhir-load >/dev/null 2>&1
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port); mllp_port=$(free_port)
case "$backend" in
  sqlite) url="sqlite:$work/gateway.db" ;;
  postgres)
    schema="bench_fhir_$$"
    psql -q -o /dev/null -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
    url="postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$schema" ;;
  *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
esac
cleanup() {
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
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
( peak=0
  while kill -0 "$gw" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' /proc/$gw/status 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" > "$work/peak"
    sleep 0.2
  done ) &
sampler=$!
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
echo "{\"backend\":\"$backend\",\"gateway_peak_rss_kb\":$(cat "$work/peak" 2>/dev/null || echo 0),\"sqlite_dir_kb\":$db_size}"
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
exit "$status"
