-- Search index: one row per index value of the current version of each resource, replaced in the write's own
-- transaction and removed on delete. `param` is the SearchParameter code; `grp`/`comp` tie the component rows of
-- one composite tuple together (plain values have 0/0). Indexes lead with (resource_type, param, value) so each
-- clause of a search is an index range probe.
CREATE TABLE search_token (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    system        TEXT,
    code          TEXT,
    text_norm     TEXT,
    type_system   TEXT,
    type_code     TEXT
);
CREATE INDEX search_token_value ON search_token (resource_type, param, code, system, id);
CREATE INDEX search_token_owner ON search_token (resource_type, id, param);

CREATE TABLE search_string (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    value_norm    TEXT NOT NULL,
    value_exact   TEXT NOT NULL
);
CREATE INDEX search_string_value ON search_string (resource_type, param, value_norm, id);
CREATE INDEX search_string_owner ON search_string (resource_type, id, param);

CREATE TABLE search_reference (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    target_type   TEXT,
    target_id     TEXT,
    url           TEXT,
    version       TEXT,
    ident_system  TEXT,
    ident_value   TEXT
);
CREATE INDEX search_reference_target ON search_reference (resource_type, param, target_id, target_type, id);
CREATE INDEX search_reference_url ON search_reference (resource_type, param, url);
-- Covering, so _include reads the targets of given sources from this index alone.
CREATE INDEX search_reference_owner ON search_reference (resource_type, id, param, target_type, target_id);

CREATE TABLE search_date (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    low_us        INTEGER NOT NULL,
    high_us       INTEGER NOT NULL
);
CREATE INDEX search_date_value ON search_date (resource_type, param, low_us, high_us, id);
CREATE INDEX search_date_owner ON search_date (resource_type, id, param);

-- NULL bounds are open ends (a Range without low, a Quantity with a comparator).
CREATE TABLE search_number (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    low           REAL,
    high          REAL
);
CREATE INDEX search_number_value ON search_number (resource_type, param, low, id);
CREATE INDEX search_number_owner ON search_number (resource_type, id, param);

CREATE TABLE search_quantity (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    low           REAL,
    high          REAL,
    system        TEXT,
    code          TEXT,
    unit          TEXT
);
CREATE INDEX search_quantity_value ON search_quantity (resource_type, param, code, low, id);
CREATE INDEX search_quantity_owner ON search_quantity (resource_type, id, param);

CREATE TABLE search_uri (
    resource_type TEXT NOT NULL,
    id            TEXT NOT NULL,
    param         TEXT NOT NULL,
    grp           INTEGER NOT NULL DEFAULT 0,
    comp          INTEGER NOT NULL DEFAULT 0,
    value         TEXT NOT NULL
);
CREATE INDEX search_uri_value ON search_uri (resource_type, param, value, id);
CREATE INDEX search_uri_owner ON search_uri (resource_type, id, param);

-- _lastUpdated and _sort=_lastUpdated read the resources table itself.
CREATE INDEX resources_type_updated ON resources (resource_type, last_updated_us);
