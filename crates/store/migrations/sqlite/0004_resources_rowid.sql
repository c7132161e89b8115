-- The current-version table becomes an ordinary rowid table with a unique key. As a WITHOUT ROWID table its
-- ~1 KB rows lived inside the primary-key b-tree, three to a page: every insert between two ids split a page, the
-- table grew to three times the size of the same rows in resource_history, and each commit wrote that much more
-- WAL. Here the rows append in insertion order and only the narrow (resource_type, id) index is kept sorted.
CREATE TABLE resources_rowid (
    resource_type   TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    version_id      INTEGER NOT NULL,
    last_updated_us INTEGER NOT NULL,
    deleted         INTEGER NOT NULL DEFAULT 0,
    content         TEXT,
    UNIQUE (resource_type, id)
);
INSERT INTO resources_rowid (resource_type, id, version_id, last_updated_us, deleted, content)
    SELECT resource_type, id, version_id, last_updated_us, deleted, content FROM resources ORDER BY last_updated_us;
DROP TABLE resources;
ALTER TABLE resources_rowid RENAME TO resources;
CREATE INDEX resources_type_updated ON resources (resource_type, last_updated_us);
