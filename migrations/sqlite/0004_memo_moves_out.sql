-- Memoised results moved to a database file of their own (`<name>-memo.db`, see
-- `store::sqlite`). They are only a cache: entries from before the move are not carried
-- over, and the first request that needs one computes it again.
DROP TABLE cache_entries;
