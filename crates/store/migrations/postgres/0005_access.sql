-- API clients: bearer credentials bound to one Organization and a role. Only a SHA-256 of the random secret is kept.
CREATE TABLE api_clients (
    client_id     TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    role          TEXT    NOT NULL CHECK (role IN ('admin', 'ehr', 'cbo', 'registry')),
    organization  TEXT    NOT NULL,
    secret_sha256 TEXT    NOT NULL,
    created_us    BIGINT NOT NULL,
    revoked_us    BIGINT
);

-- What an organization with a scoped role (a CBO) may see besides nothing: the resources its referral Tasks
-- reference (granted via that Task, recomputed on every write of the Task or of its focus ServiceRequest) and
-- what it created itself (via_task = '').
CREATE TABLE access_grants (
    organization  TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    via_task      TEXT NOT NULL,
    PRIMARY KEY (organization, resource_type, id, via_task)
);
CREATE INDEX access_grants_task ON access_grants (via_task);
CREATE INDEX access_grants_target ON access_grants (resource_type, id);
