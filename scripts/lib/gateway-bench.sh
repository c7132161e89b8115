# Shared by the gateway benchmark scripts (bench-fhir.sh, bench-ingest.sh, bench-convert.sh); source it, then call
# start_gateway. It builds the release binaries unless BENCH_NO_BUILD=1, honours CARGO_TARGET_DIR, and on exit stops
# the gateway and the memory sampler and drops the scratch folder and PostgreSQL schema.
#
#   start_gateway <sqlite|postgres> <schema-stem> <binary to build>...
#     sets: target, work, url, schema (postgres), http_port, mllp_port, gw (pid)
#   or, to prepare the database before the gateway starts: bench_build <binaries...>; bench_database <backend>
#     <schema-stem>; (fill "$url"); launch_gateway
#   sample_peak_rss      records the gateway's peak VmRSS (kB) in $work/peak while it runs
#   peak_rss_kb          prints that peak (0 if none)

# The throughput benchmarks measure the FHIR and MLLP paths without authentication unless the script asks for it
# (bench-poll.sh measures CBO polls with real tokens).
: "${SDOH_GATEWAY_AUTH__REQUIRED:=false}"
export SDOH_GATEWAY_AUTH__REQUIRED

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_cleanup() {
  [ -n "${sampler:-}" ] && kill "$sampler" 2>/dev/null || true
  [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null && wait "$gw" 2>/dev/null || true
  [ -n "${schema:-}" ] && PGOPTIONS="-c client_min_messages=warning" psql -q -o /dev/null -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $schema CASCADE" || true
  [ -n "${work:-}" ] && rm -rf "$work"
}

start_gateway() {
  local backend=$1 stem=$2; shift 2
  bench_build sdoh-gateway "$@"
  bench_database "$backend" "$stem"
  launch_gateway
}

# Builds the release binaries named (unless BENCH_NO_BUILD=1); sets target.
bench_build() {
  local bins=()
  for b in "$@"; do bins+=(--bin "$b"); done
  [ -n "${BENCH_NO_BUILD:-}" ] || cargo build --release "${bins[@]}" >/dev/null 2>&1
  target=${CARGO_TARGET_DIR:-target}
}

# A fresh scratch folder and database, without a gateway yet (for scripts that seed the database first); sets
# work, url, schema (postgres), http_port, mllp_port.
bench_database() {
  local backend=$1 stem=$2
  work=$(mktemp -d)
  trap bench_cleanup EXIT
  http_port=$(free_port); mllp_port=$(free_port)
  case "$backend" in
    sqlite) url="sqlite:$work/gateway.db" ;;
    postgres)
      schema="${stem}_$$"
      psql -q -o /dev/null -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $schema CASCADE; CREATE SCHEMA $schema"
      url="postgres://postgres@127.0.0.1:5432/test?options=-c%20search_path%3D$schema" ;;
    *) echo "backend must be sqlite or postgres" >&2; exit 2 ;;
  esac
}

# Starts the gateway on the database of bench_database and waits until it is ready; sets gw (pid).
launch_gateway() {
  "$target/release/sdoh-gateway" --database-url "$url" --http-listen "127.0.0.1:$http_port" \
    --mllp-listen "127.0.0.1:$mllp_port" --log-level "${BENCH_LOG_LEVEL:-warn}" serve 2>"$work/gateway.log" &
  gw=$!
  until curl -sf "http://127.0.0.1:$http_port/health/ready" >/dev/null; do
    kill -0 "$gw" 2>/dev/null || { cat "$work/gateway.log" >&2; exit 1; }
    sleep 0.05
  done
}

sample_peak_rss() {
  ( peak=0
    while kill -0 "$gw" 2>/dev/null; do
      rss=$(awk '/VmRSS/ {print $2}' /proc/$gw/status 2>/dev/null || echo 0)
      [ "${rss:-0}" -gt "$peak" ] && peak=$rss && echo "$peak" > "$work/peak"
      sleep 0.2
    done ) &
  sampler=$!
}

peak_rss_kb() { cat "$work/peak" 2>/dev/null || echo 0; }
