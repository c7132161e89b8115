"""A standard FHIR client (fhirpy, unmodified) against the running gateway: create, read, update, search, delete.

Run by tests/fhir.rs with the gateway's FHIR base URL as the only argument; exits non-zero on the first mismatch.
"""
import sys

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

base = sys.argv[1]
client = SyncFHIRClient(base, extra_headers={"Accept": "application/fhir+json"})

patient = client.resource(
    "Patient",
    identifier=[{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-7781"}],
    name=[{"family": "Nguyen", "given": ["Minh"]}],
    birthDate="1976-05-14",
    gender="male",
)
patient.save()
assert patient.id, "server assigned an id"

same = client.reference("Patient", patient.id).to_resource()
assert same["name"][0]["family"] == "Nguyen", same

patient["telecom"] = [{"system": "phone", "value": "503-555-0101"}]
patient.save()
assert client.reference("Patient", patient.id).to_resource()["meta"]["versionId"] == "2"

found = client.resources("Patient").search(family="nguy").fetch()
assert [p.id for p in found] == [patient.id], found
found = client.resources("Patient").search(identifier="urn:oid:2.16.840.1.113883.19.5|MRN-7781").fetch()
assert [p.id for p in found] == [patient.id], found
assert client.resources("Patient").search(birthdate__ge="1976-05").fetch(), "date prefix search"

observation = client.resource(
    "Observation",
    status="final",
    category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
    code={"coding": [{"system": "http://loinc.org", "code": "88122-7"}]},
    subject=patient.to_reference(),
    valueCodeableConcept={"coding": [{"system": "http://loinc.org", "code": "LA28397-0", "display": "Often true"}]},
)
observation.save()
hits = client.resources("Observation").search(subject=f"Patient/{patient.id}", category="survey").fetch()
assert [o.id for o in hits] == [observation.id], hits
with_patient = client.resources("Observation").search(_id=observation.id).include("Observation", "subject").fetch_raw()
types = sorted(e["resource"]["resourceType"] for e in with_patient["entry"])
assert types == ["Observation", "Patient"], types

bundle = client.execute(
    "",
    method="post",
    data={
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": {"resourceType": "Goal", "lifecycleStatus": "active",
                             "description": {"text": "Food security"}, "subject": {"reference": f"Patient/{patient.id}"}},
                "request": {"method": "POST", "url": "Goal"},
            }
        ],
    },
)
assert bundle["type"] == "transaction-response", bundle
assert bundle["entry"][0]["response"]["status"].startswith("201"), bundle

try:
    client.resource("Patient", birthDate="1976-13-40").save()
    raise AssertionError("an invalid date must be refused")
except OperationOutcome as outcome:
    assert "birthDate" in str(outcome) or "date" in str(outcome).lower(), outcome

observation.delete()
try:
    client.reference("Observation", observation.id).to_resource()
    raise AssertionError("a deleted resource must not be readable")
except (ResourceNotFound, OperationOutcome):
    pass

print("fhirpy: all interactions behaved")
