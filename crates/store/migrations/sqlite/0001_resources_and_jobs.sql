-- Current version of every FHIR resource, with its full JSON (meta included).
CREATE TABLE resources (
    resource_type   TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    version_id      INTEGER NOT NULL,
    last_updated_us INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    content         TEXT,
    PRIMARY KEY (resource_type, id)
) WITHOUT ROWID;

-- Every version ever written; seq orders system-wide history.
CREATE TABLE resource_history (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_type   TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    version_id      INTEGER NOT NULL,
    last_updated_us INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    content         TEXT,
    UNIQUE (resource_type, id, version_id)
);
CREATE INDEX resource_history_type_time ON resource_history (resource_type, last_updated_us);
CREATE INDEX resource_history_time ON resource_history (last_updated_us);

-- Durable work queue shared by every worker of every replica.
CREATE TABLE jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    state          TEXT    NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'leased', 'dead')),
    attempts       INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    run_at_us      INTEGER NOT NULL,
    lease_until_us INTEGER,
    lease_token    INTEGER,
    last_error     TEXT,
    created_us     INTEGER NOT NULL
);
CREATE INDEX jobs_claimable ON jobs (queue, state, run_at_us, id);
CREATE INDEX jobs_lease ON jobs (state, lease_until_us);
