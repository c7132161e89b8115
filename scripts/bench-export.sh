#!/usr/bin/env bash
# Bulk export benchmark: starts the release gateway with the diabetes registry on a fresh database, grows the
# registry in steps (each member: Patient, diabetes Condition, screening Observation, Encounter, loaded as FHIR
# transaction Bundles), and after each step runs Group/registry-diabetes/$export end to end (kick-off, poll, manifest).
# Per step it prints one JSON line: members, exported resources, seconds, resources/s, and the gateway's peak resident
# memory during that export alone, so a flat memory profile shows as the same peak however large the export.
# Usage: scripts/bench-export.sh sqlite|postgres [steps...]      (default steps: 10000 50000 100000 members)
#   e.g. scripts/bench-export.sh sqlite 1000 10000 100000 250000
#        scripts/bench-export.sh postgres 20 40                 (a smoke run)
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}; shift
steps=("$@"); [ ${#steps[@]} -gt 0 ] || steps=(10000 50000 100000)
export SDOH_GATEWAY_AUTH__REQUIRED=false
export SDOH_GATEWAY_REGISTRIES__ENABLED='[diabetes]'
export SDOH_GATEWAY_REGISTRIES__KEYS__DIABETES=bench-key-0123456789abcdef0123456789abcdef
export SDOH_GATEWAY_EXPORTS__MAX_CONCURRENT_PER_CLIENT=1
source scripts/lib/gateway-bench.sh
export SDOH_GATEWAY_EXPORTS__FOLDER
SDOH_GATEWAY_EXPORTS__FOLDER=$(mktemp -d)
start_gateway "$backend" bench_export
trap 'bench_cleanup; rm -rf "$SDOH_GATEWAY_EXPORTS__FOLDER"' EXIT
base="http://127.0.0.1:$http_port/fhir"

# Peak VmRSS of the gateway while the marker file exists (one export).
export_peak() {
  local peak=0 rss
  while [ -e "$work/exporting" ]; do
    rss=$(awk '/VmRSS/ {print $2}' /proc/$gw/status 2>/dev/null || echo 0)
    [ "${rss:-0}" -gt "$peak" ] && peak=$rss
    sleep 0.05
  done
  echo "$peak" > "$work/export-peak"
}

loaded=0
for members in "${steps[@]}"; do
  python3 - "$base" "$loaded" "$members" <<'PY'
import json, sys, time, urllib.request
base, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def post(bundle):
    req = urllib.request.Request(base, json.dumps(bundle).encode(), {"Content-Type": "application/fhir+json"})
    urllib.request.urlopen(req, timeout=300).read()
def put(r):
    return {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
batch = []
for n in range(start, end):
    p = f"bench-p{n}"
    batch += [
        put({"resourceType": "Patient", "id": p, "gender": "female" if n % 2 else "male", "birthDate": f"{1940 + n % 50}-05-01",
             "name": [{"family": f"Family{n}"}], "address": [{"district": f"County {n % 20}"}]}),
        put({"resourceType": "Condition", "id": f"bench-c{n}", "subject": {"reference": f"Patient/{p}"},
             "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "E11.9"}]}, "onsetDateTime": "2020-01-01"}),
        put({"resourceType": "Observation", "id": f"bench-o{n}", "status": "final", "subject": {"reference": f"Patient/{p}"},
             "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
             "code": {"coding": [{"system": "http://loinc.org", "code": "88124-3"}]}, "effectiveDateTime": "2026-01-10T09:00:00Z",
             "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": "LA19952-3"}]}}),
        put({"resourceType": "Encounter", "id": f"bench-e{n}", "status": "finished", "subject": {"reference": f"Patient/{p}"},
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "period": {"start": "2026-01-10T09:00:00Z"}}),
    ]
    if len(batch) >= 400:
        post({"resourceType": "Bundle", "type": "transaction", "entry": batch}); batch = []
if batch:
    post({"resourceType": "Bundle", "type": "transaction", "entry": batch})
# Membership is kept by workers: wait until the Group has every member.
deadline = time.time() + 3600
while time.time() < deadline:
    try:
        group = json.load(urllib.request.urlopen(f"{base}/Group/registry-diabetes", timeout=300))
        if group.get("quantity", 0) >= end:
            break
    except urllib.error.HTTPError:
        pass
    time.sleep(0.5)
else:
    sys.exit(f"the registry did not reach {end} members")
PY
  loaded=$members
  touch "$work/exporting"; export_peak & peak_sampler=$!
  python3 - "$base" "$backend" "$members" "$work/exporting" <<'PY' || { rm -f "$work/exporting"; exit 1; }
import json, os, sys, time, urllib.request
base, backend, members, marker = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
started = time.time()
req = urllib.request.Request(f"{base}/Group/registry-diabetes/$export", headers={"Prefer": "respond-async"})
status_url = urllib.request.urlopen(req).headers["Content-Location"]
while True:
    r = urllib.request.urlopen(status_url)
    if r.status == 200:
        manifest = json.load(r); break
    time.sleep(0.1)
seconds = time.time() - started
os.remove(marker)
resources = sum(o["count"] for o in manifest["output"])
print(json.dumps({"backend": backend, "members": members, "resources": resources, "seconds": round(seconds, 2),
                  "resources_per_s": round(resources / seconds)}), flush=True)
urllib.request.urlopen(urllib.request.Request(status_url, method="DELETE")).read()
PY
  wait "$peak_sampler"
  echo "{\"members\":$members,\"export_peak_rss_kb\":$(cat "$work/export-peak")}"
done
grep -v '^\s*$' "$work/gateway.log" | tail -5 >&2 || true
