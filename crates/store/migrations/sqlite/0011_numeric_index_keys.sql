-- Search index rows keyed by numbers instead of text. Each row named its resource by (resource_type, id) and its
-- parameter by its code, so every row carried ~60 bytes of repeated key text in its table and in both of its
-- indexes, and the owner index took inserts at random places (converted resources have hash-derived ids). Rows now
-- name the resource by `resources.rid`, a number that grows with each new resource (so a new resource's rows append
-- to the owner index), and the parameter by `param`, a fixed 48-bit hash of "ResourceType.code" computed by the
-- store (`search::param_key`), which also stands in for the resource type in the value indexes.
--
-- The old tables are kept as legacy_search_*; the store converts their rows (it computes the parameter keys) and
-- drops them when it opens the database (`Store::migrate`).

-- `rid` becomes an explicit INTEGER PRIMARY KEY: an implicit rowid may be renumbered by VACUUM, and index rows
-- now point at it. Existing rows keep their rowid as their rid.
CREATE TABLE resources_keyed (
    rid             INTEGER PRIMARY KEY,
    resource_type   TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    version_id      INTEGER NOT NULL,
    last_updated_us INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    content         TEXT
);
INSERT INTO resources_keyed (rid, resource_type, id, version_id, last_updated_us, deleted, content)
    SELECT rowid, resource_type, id, version_id, last_updated_us, deleted, content FROM resources;
DROP TABLE resources;
ALTER TABLE resources_keyed RENAME TO resources;
CREATE UNIQUE INDEX resources_key ON resources (resource_type, id);
CREATE INDEX resources_type_updated ON resources (resource_type, last_updated_us);

DROP INDEX search_token_value;
DROP INDEX search_token_owner;
ALTER TABLE search_token RENAME TO legacy_search_token;
CREATE TABLE search_token (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    system        TEXT,
    code          TEXT,
    text_norm     TEXT,
    type_system   TEXT,
    type_code     TEXT
);
CREATE INDEX search_token_value ON search_token (param, code, system, rid);
CREATE INDEX search_token_owner ON search_token (rid, param);

DROP INDEX search_string_value;
DROP INDEX search_string_owner;
ALTER TABLE search_string RENAME TO legacy_search_string;
CREATE TABLE search_string (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    value_norm    TEXT NOT NULL,
    value_exact   TEXT NOT NULL
);
CREATE INDEX search_string_value ON search_string (param, value_norm, rid);
CREATE INDEX search_string_owner ON search_string (rid, param);

DROP INDEX search_reference_target;
DROP INDEX search_reference_url;
DROP INDEX search_reference_owner;
ALTER TABLE search_reference RENAME TO legacy_search_reference;
CREATE TABLE search_reference (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    target_type   TEXT,
    target_id     TEXT,
    url           TEXT,
    version       TEXT,
    ident_system  TEXT,
    ident_value   TEXT
);
CREATE INDEX search_reference_target ON search_reference (param, target_id, target_type, rid);
CREATE INDEX search_reference_url ON search_reference (param, url);
CREATE INDEX search_reference_owner ON search_reference (rid, param, target_type, target_id);

DROP INDEX search_date_value;
DROP INDEX search_date_owner;
ALTER TABLE search_date RENAME TO legacy_search_date;
CREATE TABLE search_date (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    low_us        INTEGER NOT NULL,
    high_us       INTEGER NOT NULL
);
CREATE INDEX search_date_value ON search_date (param, low_us, high_us, rid);
CREATE INDEX search_date_owner ON search_date (rid, param);

DROP INDEX search_number_value;
DROP INDEX search_number_owner;
ALTER TABLE search_number RENAME TO legacy_search_number;
CREATE TABLE search_number (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    low           REAL,
    high          REAL
);
CREATE INDEX search_number_value ON search_number (param, low, rid);
CREATE INDEX search_number_owner ON search_number (rid, param);

DROP INDEX search_quantity_value;
DROP INDEX search_quantity_owner;
ALTER TABLE search_quantity RENAME TO legacy_search_quantity;
CREATE TABLE search_quantity (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    low           REAL,
    high          REAL,
    system        TEXT,
    code          TEXT,
    unit          TEXT
);
CREATE INDEX search_quantity_value ON search_quantity (param, code, low, rid);
CREATE INDEX search_quantity_owner ON search_quantity (rid, param);

DROP INDEX search_uri_value;
DROP INDEX search_uri_owner;
ALTER TABLE search_uri RENAME TO legacy_search_uri;
CREATE TABLE search_uri (
    rid           INTEGER NOT NULL,
    param         INTEGER NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    value         TEXT NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (param, value, rid);
CREATE INDEX search_uri_owner ON search_uri (rid, param);
