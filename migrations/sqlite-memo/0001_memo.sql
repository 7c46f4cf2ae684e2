-- Memoised results (LLM stage replies, OCR page texts), keyed by a hash of everything that
-- produced them. Kept in a database file of its own so that its writes, a steady stream of
-- rows under random keys, never queue in front of the main database's writes.
CREATE TABLE cache_entries (
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
