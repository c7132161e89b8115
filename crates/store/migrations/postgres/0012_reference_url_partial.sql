-- Only canonical and absolute references have a `url` (one reference row in thirty in screening data), yet every
-- reference row had an entry in the url index: a fourth b-tree insert per row for nothing. A search by url
-- (`url = ?`) implies `url IS NOT NULL`, so the planner still uses the partial index for it.
DROP INDEX search_reference_url;
CREATE INDEX search_reference_url ON search_reference (param, url) WHERE url IS NOT NULL;
