#!/usr/bin/env bash
# Measures `sdoh-gateway serve`: start to ready on an existing database, and idle resident memory.
# Usage: scripts/bench-serve.sh [runs]   (builds the release binary first)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release --bin sdoh-gateway >/dev/null 2>&1
bin=target/release/sdoh-gateway
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mllp_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
args=(--http-listen "127.0.0.1:$port" --mllp-listen "127.0.0.1:$mllp_port" --log-level warn)
(cd "$work" && "$OLDPWD/$bin" "${args[@]}" migrate >/dev/null)
for i in $(seq "$runs"); do
  start=$(date +%s%N)
  (cd "$work" && exec "$OLDPWD/$bin" "${args[@]}" serve 2>/dev/null) &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null; do :; done
  ready=$(date +%s%N)
  echo "run $i: start to ready $(( (ready - start) / 1000000 )) ms"
  if [ "$i" = "$runs" ]; then
    sleep 5   # idle: let start-up allocations settle before reading RSS
    echo "idle resident memory: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
  fi
  kill -TERM "$pid"; wait "$pid" || true
done
