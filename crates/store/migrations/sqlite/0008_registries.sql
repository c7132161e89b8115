-- CQI registries: each patient's membership and pseudonymized record per registry, kept current by the
-- registry-membership worker. A removed member keeps its row (member = false, no record) so the records feed can
-- report the removal; seq orders the changes of one registry (the feed's cursor).
CREATE TABLE registry_members (
    registry_id  TEXT    NOT NULL,
    patient_id   TEXT    NOT NULL,
    pseudonym    TEXT    NOT NULL,
    member       BOOLEAN NOT NULL,
    period_start TEXT,
    period_end   TEXT,
    inactive     BOOLEAN NOT NULL DEFAULT FALSE,
    record       TEXT,
    seq          INTEGER NOT NULL,
    changed_us   INTEGER NOT NULL,
    PRIMARY KEY (registry_id, patient_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX registry_members_feed ON registry_members (registry_id, seq);
CREATE INDEX registry_members_changed ON registry_members (registry_id, changed_us);

-- Bulk Data exports: one row per kick-off, its state, and the manifest once complete. Files live on disk under the
-- configured folder, one subfolder per export id.
CREATE TABLE bulk_exports (
    id             TEXT    NOT NULL PRIMARY KEY,
    client_id      TEXT    NOT NULL,
    status         TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    request        TEXT    NOT NULL,
    params         TEXT    NOT NULL,
    transaction_us INTEGER NOT NULL,
    created_us     INTEGER NOT NULL,
    expires_us     INTEGER,
    progress       TEXT,
    manifest       TEXT,
    error          TEXT
);
CREATE INDEX bulk_exports_client ON bulk_exports (client_id, status);
CREATE INDEX bulk_exports_expiry ON bulk_exports (expires_us);

-- What each registry's rows were computed with: a fingerprint of its pseudonymization key (an HMAC of a fixed
-- text, which reveals nothing of the key), and when an evaluation of every patient was last queued. A registry
-- newly enabled or given a new key is evaluated again for every patient, and so is each registry once a day
-- (patients reach a minimum age without any write).
CREATE TABLE registry_state (
    registry_id     TEXT    NOT NULL PRIMARY KEY,
    key_fingerprint TEXT    NOT NULL,
    evaluated_us    INTEGER NOT NULL
);
