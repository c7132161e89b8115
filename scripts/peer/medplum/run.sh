#!/usr/bin/env bash
# Starts the medplum peer FHIR server (in-memory, for benchmarks): installs the pinned packages if needed, then runs
# server.mjs in the foreground. Usage: scripts/peer/medplum/run.sh [port]  (default 8103; base URL http://127.0.0.1:PORT/fhir)
# SIGTERM/SIGINT stop it cleanly (exit 0). HOST and BASE_PATH environment variables are passed through to server.mjs.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -d node_modules ]; then
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
# exec: node receives the signals itself and answers SIGTERM by closing the server.
exec node server.mjs "$@"
