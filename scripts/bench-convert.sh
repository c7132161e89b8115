#!/usr/bin/env bash
# End-to-end ORU throughput: MLLP in -> journal -> conversion worker (v2fhir) -> QuestionnaireResponse ->
# normalization worker (sdoh) -> stored, searchable SDOHCC screening Observations.
#
# Starts the release gateway on a fresh database, sends N ORU^R01 Hunger Vital Sign screenings (each on its own
# patient, MRN00000001..N) with `sdoh-load --kind oru-screening`, polls GET /metrics until `conversion_total
# {outcome="converted"}` and `normalization_total{outcome="normalized"}` both reach N (or the deadline passes), then
# checks that a random sample of the patients has survey Observations via the FHIR search API, and prints one JSON
# line of figures. Rates are N divided by the time from the load tool's start (first send) to the poll that first
# saw the last conversion / normalization (polled every 50 ms).
#
# Usage: scripts/bench-convert.sh sqlite|postgres [N] [sdoh-load arguments...]
#   e.g. scripts/bench-convert.sh sqlite                 # N = 20000, 32 connections, 1 in flight each
#        SDOH_GATEWAY_WORKERS__COUNT=4 scripts/bench-convert.sh sqlite 20000
#        scripts/bench-convert.sh postgres 20000 --connections 16 --pipeline 4
# Environment: BENCH_NO_BUILD=1 reuses the binaries already built; CARGO_TARGET_DIR is respected;
#   SDOH_GATEWAY_WORKERS__COUNT sets worker tasks per queue (gateway default 2); BENCH_DEADLINE_S (default 900)
#   bounds the wait for the workers; BENCH_SAMPLE (default 20) is the number of patients checked by search.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}; shift
n=20000
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then n=$1; shift; fi
source scripts/lib/gateway-bench.sh
start_gateway "$backend" bench_convert sdoh-load
status=0
python3 - "$backend" "$n" "$http_port" "$mllp_port" "$gw" "$target/release/sdoh-load" "$@" <<'PY' || status=$?
import json, os, random, subprocess, sys, time, urllib.parse, urllib.request

backend, n, http_port, mllp_port, gw_pid, load_bin = sys.argv[1:7]
n, extra = int(n), sys.argv[7:]
base = f"http://127.0.0.1:{http_port}"
deadline_s = float(os.environ.get("BENCH_DEADLINE_S", "900"))
sample_size = int(os.environ.get("BENCH_SAMPLE", "20"))


def get(path, timeout=60):
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        return r.read().decode()


def counters():
    """(converted, conversion failed, normalized, normalization failed) from the Prometheus text."""
    c = {"conv_ok": 0, "conv_failed": 0, "norm_ok": 0, "norm_failed": 0}
    for line in get("/metrics", timeout=10).splitlines():
        if line.startswith("conversion_total{"):
            key = "conv_ok" if 'outcome="converted"' in line else "conv_failed" if 'outcome="failed"' in line else None
        elif line.startswith("normalization_total{"):
            key = "norm_ok" if 'outcome="normalized"' in line else "norm_failed" if 'outcome="failed"' in line else None
        else:
            continue
        if key:
            c[key] += int(float(line.rsplit(" ", 1)[1]))
    return c


def cpu_s():
    """The gateway's CPU time so far (user + system, all threads), in seconds."""
    try:
        with open(f"/proc/{gw_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kb():
    try:
        with open(f"/proc/{gw_pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
    except (OSError, StopIteration):
        return 0


args = [load_bin, "--mllp", f"127.0.0.1:{mllp_port}", "--kind", "oru-screening", "--messages", str(n), "--json"]
cpu0 = cpu_s()
t0 = time.monotonic()
load = subprocess.Popen(args + extra, stdout=subprocess.PIPE, text=True)
t_conv = t_norm = t_load = None
peak, c = 0, counters()
while time.monotonic() - t0 < deadline_s:
    c = counters()
    now = time.monotonic() - t0
    peak = max(peak, rss_kb())
    if t_load is None and load.poll() is not None:
        t_load = now
    if t_conv is None and c["conv_ok"] + c["conv_failed"] >= n:
        t_conv = now
    if t_norm is None and c["norm_ok"] + c["norm_failed"] >= n:
        t_norm = now
    if t_conv is not None and t_norm is not None and t_load is not None:
        break
    if t_load is not None and load.returncode != 0:
        break
    time.sleep(0.05)
cpu_used = cpu_s() - cpu0
out, _ = load.communicate()
if t_load is None:
    t_load = time.monotonic() - t0
try:
    load_report = json.loads(out.strip().splitlines()[-1])
except (ValueError, IndexError):
    load_report = {"error": "no report", "exit_code": load.returncode}

# Searchability: random patients, found by the identifier the load tool gave them, each with survey Observations.
found, per_patient, search_ms = 0, [], []
for mrn in random.sample(range(1, n + 1), min(sample_size, n)):
    try:
        ident = urllib.parse.quote(f"MRN{mrn:08d}")
        patients = json.loads(get(f"/fhir/Patient?identifier={ident}"))
        ids = [e["resource"]["id"] for e in patients.get("entry", [])]
        if len(ids) != 1:
            per_patient.append(0)
            continue
        started = time.monotonic()
        q = urllib.parse.quote(f"Patient/{ids[0]}")
        bundle = json.loads(get(f"/fhir/Observation?subject={q}&category=survey"))
        search_ms.append(round((time.monotonic() - started) * 1000, 1))
        k = len(bundle.get("entry", []))
        per_patient.append(k)
        found += k > 0
    except Exception as e:  # noqa: BLE001 - a failed lookup counts as not searchable
        print(f"sample MRN{mrn:08d}: {e}", file=sys.stderr)
        per_patient.append(0)
try:
    total = json.loads(get("/fhir/Observation?category=survey&_summary=count", timeout=120)).get("total")
except Exception as e:  # noqa: BLE001
    print(f"Observation count: {e}", file=sys.stderr)
    total = None


def rate(t):
    return round(n / t) if t else None


report = {
    "backend": backend,
    "messages": n,
    "workers_per_queue": int(os.environ.get("SDOH_GATEWAY_WORKERS__COUNT", "2")),
    "load": load_report,
    "first_send_to_last_ack_s": round(t_load, 3),
    "first_send_to_last_conversion_s": round(t_conv, 3) if t_conv else None,
    "conversion_msg_per_s": rate(t_conv),
    "first_send_to_last_normalization_s": round(t_norm, 3) if t_norm else None,
    "normalization_msg_per_s": rate(t_norm),
    "gateway_cpu_ms_per_message": round(cpu_used * 1000 / n, 3),
    "converted": c["conv_ok"],
    "conversion_failed": c["conv_failed"],
    "normalized": c["norm_ok"],
    "normalization_failed": c["norm_failed"],
    "sample_patients": len(per_patient),
    "sample_patients_with_survey_observations": found,
    "sample_observations_per_patient": sorted(set(per_patient)),
    "sample_search_ms_max": max(search_ms) if search_ms else None,
    "survey_observations_total": total,
    "gateway_peak_rss_kb": peak,
}
print(json.dumps(report))
ok = (
    load.returncode == 0
    and c["conv_ok"] == n
    and c["norm_ok"] == n
    and found == len(per_patient)
    and (total is None or total >= n * min(per_patient, default=0))
)
sys.exit(0 if ok else 1)
PY
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
exit "$status"
