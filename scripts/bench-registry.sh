#!/usr/bin/env bash
# Registry benchmarks of issue 8 at their sizes: seeds a fresh database with a deterministic synthetic population
# (sdoh-bench-seed: Patients with race, ethnicity, language, county, payer; type 2 diabetes; encounters; HRSN
# screenings in five domains; health concerns; referrals with Tasks; diabetes registry membership), starts the
# release gateway on it, waits for the registry Group, then measures:
#   1. Group/registry-diabetes/$export end to end (kick-off, poll, manifest): resources/s, the gateway's peak RSS
#      during the export and its RSS before it;
#   2. every measure for one quarter over the whole population (/measures.csv, all stratifiers) and each measure's
#      $evaluate-measure for that quarter;
#   3. a records feed page of 1,000 (Group/registry-diabetes/$registry-records?_since=...&_count=1000), first and
#      middle pages.
# One JSON line per figure. Honours BENCH_NO_BUILD=1 and CARGO_TARGET_DIR (scripts/lib/gateway-bench.sh).
# Usage: scripts/bench-registry.sh sqlite|postgres [patients]      (default 100000 patients, about 1.2M resources)
#   e.g. scripts/bench-registry.sh sqlite 2000                      (a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}
patients=${2:-100000}
key=bench-key-0123456789abcdef0123456789abcdef
export SDOH_GATEWAY_REGISTRIES__ENABLED='[diabetes]'
export SDOH_GATEWAY_REGISTRIES__KEYS__DIABETES=$key
export SDOH_GATEWAY_EXPORTS__MAX_CONCURRENT_PER_CLIENT=1
source scripts/lib/gateway-bench.sh
bench_build sdoh-gateway sdoh-bench-seed
bench_database "$backend" bench_registry
export SDOH_GATEWAY_EXPORTS__FOLDER="$work/exports"
mkdir -p "$SDOH_GATEWAY_EXPORTS__FOLDER"

"$target/release/sdoh-bench-seed" --database-url "$url" --patients "$patients" --registry "diabetes=$key" \
  > "$work/seeded.json" 2> "$work/seed.log"
echo "{\"backend\":\"$backend\",\"seeded\":$(cat "$work/seeded.json")}"

launch_gateway
base="http://127.0.0.1:$http_port"

# Peak VmRSS of the gateway while the marker file exists.
rss_now() { awk '/VmRSS/ {print $2}' /proc/$gw/status 2>/dev/null || echo 0; }
peak_while() {
  local peak=0 rss
  while [ -e "$1" ]; do
    rss=$(rss_now)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    sleep 0.02
  done
  echo "$peak" > "$1.peak"
}

python3 - "$base" "$work" "$backend" "$gw" <<'PY'
import json, os, statistics, subprocess, sys, threading, time, urllib.parse, urllib.request
base, work, backend, gw = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
fhir = f"{base}/fhir"
seeded = json.load(open(f"{work}/seeded.json"))
members_expected = seeded["registry_rows"]

def rss_kb():
    for line in open(f"/proc/{gw}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0

class Peak:
    """Samples the gateway's RSS every 20 ms while a block runs."""
    def __enter__(self):
        self.peak, self.running = rss_kb(), True
        def sample():
            while self.running:
                self.peak = max(self.peak, rss_kb()); time.sleep(0.02)
        self.thread = threading.Thread(target=sample); self.thread.start(); return self
    def __exit__(self, *exc):
        self.running = False; self.thread.join()

def get(url, timeout=600):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()

def emit(**figures):
    print(json.dumps({"backend": backend, **figures}), flush=True)

# The Group is rebuilt by the gateway's worker from the seeded membership rows; measure nothing until it is there.
started = time.time()
while True:
    try:
        group = json.loads(get(f"{fhir}/Group/registry-diabetes")[1])
        if group.get("quantity", 0) >= members_expected:
            break
    except urllib.error.HTTPError:
        pass
    if time.time() - started > 1800:
        sys.exit("the registry Group did not appear")
    time.sleep(0.5)
emit(members=group["quantity"], group_ready_s=round(time.time() - started, 1), rss_idle_kb=rss_kb())

# 1. Bulk export of the registry.
for attempt in range(2):
    before = rss_kb()
    with Peak() as peak:
        t0 = time.time()
        req = urllib.request.Request(f"{fhir}/Group/registry-diabetes/$export", headers={"Prefer": "respond-async"})
        status_url = urllib.request.urlopen(req).headers["Content-Location"]
        while True:
            r = urllib.request.urlopen(status_url)
            if r.status == 200:
                manifest = json.load(r); break
            time.sleep(0.05)
        seconds = time.time() - t0
    resources = sum(o["count"] for o in manifest["output"])
    emit(benchmark="group-export", run=attempt + 1, resources=resources, seconds=round(seconds, 2),
         resources_per_s=round(resources / seconds), rss_before_kb=before, rss_peak_kb=peak.peak,
         export_growth_kb=peak.peak - before)
    urllib.request.urlopen(urllib.request.Request(status_url, method="DELETE")).read()

# 2. Measures for one quarter over the whole population.
def timed(url):
    t0 = time.time(); status, body = get(url); return time.time() - t0, status, body
for attempt in range(3):
    with Peak() as peak:
        s, status, body = timed(f"{base}/measures.csv?period=quarter&from=2026-01-01&to=2026-03-31")
    rows = body.decode().count("\n") - 1
    emit(benchmark="measures-csv-quarter", run=attempt + 1, patients=seeded["patients"], seconds=round(s, 3),
         rows=rows, rss_peak_kb=peak.peak)
measures = [e["resource"]["id"] for e in json.loads(get(f"{fhir}/Measure")[1])["entry"]]
total = 0.0
for m in measures:
    s, status, _ = timed(f"{fhir}/Measure/{m}/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-03-31")
    total += s
emit(benchmark="evaluate-measure-quarter-each", measures=len(measures), seconds_total=round(total, 3),
     seconds_mean=round(total / len(measures), 3))

# 3. The records feed, 1,000 records a page: the first page and one from the middle of the registry.
since = urllib.parse.quote("2000-01-01T00:00:00Z")
url = f"{fhir}/Group/registry-diabetes/$registry-records?_since={since}&_count=1000"
pages, times, entries = 0, [], 0
while url and pages < 60:
    s, status, body = timed(url)
    bundle = json.loads(body)
    times.append(s); pages += 1; entries += len(bundle.get("entry", []))
    url = next((l["url"] for l in bundle.get("link", []) if l["relation"] == "next"), None)
emit(benchmark="registry-feed-page-1000", pages=pages, records=entries, first_s=round(times[0], 3),
     median_s=round(statistics.median(times), 3), max_s=round(max(times), 3), rss_kb=rss_kb())
PY
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
