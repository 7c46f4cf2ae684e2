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

-- 64 bits of each entry's address (SHA-256 of namespace and key) under the entry's id: the
-- process rebuilds its index from this table at open, about 20 bytes a row, instead of
-- reading the log's values. Entries carried over above are addressed by the process at open.
CREATE TABLE memo_addresses (
    id       INTEGER PRIMARY KEY,
    address  INTEGER NOT NULL
);
