-- Memoised results as an append-only log: rows go in id order, and the index from key to
-- row is kept in memory by the process (src/store/sqlite/memo.rs). A table keyed by the
-- content hashes took every insert on a random page of its key index; appends fill the last
-- pages, and deleting the oldest rows frees pages that the next appends reuse.
CREATE TABLE memo_log (
    id          INTEGER PRIMARY KEY,
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

INSERT INTO memo_log (namespace, key, value, created_at)
SELECT namespace, key, value, created_at FROM cache_entries ORDER BY created_at;

DROP TABLE cache_entries;
