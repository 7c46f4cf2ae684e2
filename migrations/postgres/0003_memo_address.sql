-- 64 bits of each memo entry's address (SHA-256 over namespace and key, as Examiner computes
-- it: src/store/sql_store.rs, memo_address). Each process keeps the addresses in memory, read
-- in by id since the last read, and answers a lookup of an address it has not seen without
-- asking the server. Rows written before this column have none: no lookup finds them, and
-- they go with the trims like any other old entry.
ALTER TABLE memo ADD COLUMN address BIGINT;
