#!/usr/bin/env bash
# Peer FHIR benchmark: the counterpart of scripts/bench-fhir.sh for the medplum peer (scripts/peer/medplum): starts a
# fresh in-memory peer, drives it with the same sdoh-fhir-load runs, and reports the peer's peak resident memory.
# Usage: scripts/peer/bench-peer-fhir.sh [sdoh-fhir-load arguments...] [--then sdoh-fhir-load arguments...]...
#   e.g. scripts/peer/bench-peer-fhir.sh --scenario create --clients 32 --duration 20 \
#          --then --scenario read --clients 32 --duration 20 --working-set 1000
# PEER_VALIDATE=1 makes the peer validate resources before storing them (see scripts/peer/medplum/server.mjs).
# Uses the sdoh-fhir-load binary under ${CARGO_TARGET_DIR:-target}/release (build it first; this script does not).
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
cleanup() {
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
  [ -n "${peer:-}" ] && kill "$peer" 2>/dev/null && wait "$peer" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
scripts/peer/medplum/run.sh "$port" 2>"$work/peer.log" &
peer=$!
until curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; do
  kill -0 "$peer" 2>/dev/null || { cat "$work/peer.log" >&2; exit 1; }
  sleep 0.05
done
( peak=0
  while kill -0 "$peer" 2>/dev/null; do
    rss=$(awk '/VmRSS/ {print $2}' /proc/$peer/status 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" > "$work/peak"
    sleep 0.2
  done ) &
sampler=$!
status=0
run() {
  local ids=()
  [[ " $* " == *" --ids-file "* ]] || ids=(--ids-file "$work/patients.txt")
  "$target/release/sdoh-fhir-load" --base "http://127.0.0.1:$port/fhir" --json "${ids[@]}" "$@" || status=$?
}
args=()
for a in "$@"; do
  if [ "$a" = "--then" ]; then run "${args[@]}"; args=(); else args+=("$a"); fi
done
run "${args[@]}"
echo "{\"peer\":\"medplum-fhir-router-memory\",\"validate\":\"${PEER_VALIDATE:-0}\",\"peer_peak_rss_kb\":$(cat "$work/peak" 2>/dev/null || echo 0)}"
grep -v '^\s*$' "$work/peer.log" | tail -5 >&2 || true
exit "$status"
