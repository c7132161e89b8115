-- Equity-measure facts, materialized as resources are written: one row per resource of a fact type that
-- contributes to a measure (a Patient's demographics or merge link, a Coverage's payer, an Encounter's day, an SDOHCC
-- screening or referral, a referral Task's progress), a few dozen bytes of compact JSON instead of the document.
-- Written, replaced and removed in the same transaction as the resource version, so a measure reads these rows
-- instead of parsing every document. Keyed like `resources`.
CREATE TABLE measure_facts (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    payload       TEXT NOT NULL,
    PRIMARY KEY (resource_type, id)
);

-- Resources written before this table existed have no rows yet: the gateway fills them once at startup
-- (`fhir_server::measures::facts::backfill`) and then deletes this marker, in one transaction.
CREATE TABLE measure_facts_backfill (pending INTEGER NOT NULL);
INSERT INTO measure_facts_backfill (pending) VALUES (1);
