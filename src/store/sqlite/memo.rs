//! The memo file as an append-only log, with its key index in memory.
//!
//! Memo keys are content hashes. Under a table keyed by them every insert lands on a random
//! page of the key's B-tree, and at 100 concurrent requests those page writes were half of
//! what the memo cost (BENCHMARKS.md, step 16). Rows are appended in id order instead, so a
//! batch fills the last pages of the table, and the index from key to row is a hash map in
//! memory: a hit is one read by row id, a miss asks the database nothing.
//!
//! The log is bounded: past `max_entries` rows the oldest tenth goes, in the transaction
//! that crossed the bound. The pages they held are reused by the rows that follow, so the
//! file stops growing once it reaches its bound.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use futures::TryStreamExt;
use sqlx::Row;

use super::{now, Database};
use crate::store::StoreError;

/// Rows per multi-row INSERT: 4 bound values each keeps a statement well under SQLite's
/// limit of 32,766 variables.
pub(super) const ROWS_PER_STATEMENT: usize = 1_000;

pub(super) struct Memo {
    pub(super) db: Database,
    index: Mutex<MemoIndex>,
    /// Writes and the index updates that follow their commits run one at a time, so the
    /// index never points at a row an earlier write superseded.
    writing: tokio::sync::Mutex<()>,
    max_entries: u64,
}

#[derive(Default)]
struct MemoIndex {
    /// [`address`] → id of the newest row under it.
    rows: HashMap<u64, i64>,
    /// Rows in the table, superseded ones included: they occupy space until trimmed.
    count: u64,
}

/// 64 bits of (namespace, key). Two entries sharing them cost a lookup that finds the other's
/// row, sees its key differ, and answers "absent": a repeated computation, never a wrong value.
fn address(namespace: &str, key: &str) -> u64 {
    // Fixed keys: addresses must agree across the threads of one process, and no further.
    let mut hasher = std::hash::DefaultHasher::new();
    namespace.hash(&mut hasher);
    key.hash(&mut hasher);
    hasher.finish()
}

impl Memo {
    /// Loads the index of the log in `db` (one pass over the table, in id order).
    pub(super) async fn open(db: Database, max_entries: u64) -> Result<Self, StoreError> {
        let mut index = MemoIndex::default();
        {
            let mut rows =
                sqlx::query("SELECT id, namespace, key FROM memo_log ORDER BY id").fetch(&db.pool);
            while let Some(row) = rows.try_next().await? {
                let id: i64 = row.try_get(0)?;
                let namespace: &str = row.try_get(1)?;
                let key: &str = row.try_get(2)?;
                index.rows.insert(address(namespace, key), id);
                index.count += 1;
            }
        }
        Ok(Memo {
            db,
            index: Mutex::new(index),
            writing: tokio::sync::Mutex::new(()),
            max_entries: max_entries.max(1),
        })
    }

    fn index(&self) -> std::sync::MutexGuard<'_, MemoIndex> {
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Rows the log holds now (superseded ones included).
    #[cfg(test)]
    pub(super) fn rows(&self) -> u64 {
        self.index().count
    }

    pub(super) async fn get(
        &self,
        namespace: &str,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(id) = self.index().rows.get(&address(namespace, key)).copied() else {
            return Ok(None);
        };
        let row = sqlx::query("SELECT namespace, key, value FROM memo_log WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        // The row may have been trimmed since, or belong to another key with the same address.
        Ok(row.and_then(|row| {
            let same = row.try_get::<&str, _>(0).ok() == Some(namespace)
                && row.try_get::<&str, _>(1).ok() == Some(key);
            if same {
                row.try_get(2).ok()
            } else {
                None
            }
        }))
    }

    /// Appends the entries in one transaction (a later entry under a key supersedes an
    /// earlier one) and trims the log if it passed its bound.
    pub(super) async fn put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let _writing = self.writing.lock().await;
        let created_at = now();
        let mut tx = self.db.writer.begin().await?;
        let mut ids = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO memo_log (namespace, key, value, created_at) ",
            );
            insert.push_values(chunk, |mut row, (key, value)| {
                row.push_bind(namespace)
                    .push_bind(key)
                    .push_bind(value)
                    .push_bind(&created_at);
            });
            // SQLite returns the ids in the order of the VALUES rows.
            insert.push(" RETURNING id");
            let chunk_ids: Vec<i64> = insert.build_query_scalar().fetch_all(&mut *tx).await?;
            if chunk_ids.len() != chunk.len() {
                return Err(StoreError::Corrupt(format!(
                    "the memo stored {} rows of {}",
                    chunk_ids.len(),
                    chunk.len()
                )));
            }
            ids.extend(chunk_ids);
        }
        let count = self.index().count + entries.len() as u64;
        let trim = if count > self.max_entries {
            Some(self.trim(&mut tx).await?)
        } else {
            None
        };
        tx.commit().await?;

        let mut index = self.index();
        index.count = count;
        if let Some((oldest_kept, deleted)) = trim {
            index.rows.retain(|_, id| *id >= oldest_kept);
            index.count = index.count.saturating_sub(deleted);
        }
        let oldest_kept = trim.map_or(i64::MIN, |(oldest_kept, _)| oldest_kept);
        for ((key, _), id) in entries.iter().zip(ids) {
            // A batch larger than the bound has trimmed some of its own rows.
            if id >= oldest_kept {
                index.rows.insert(address(namespace, key), id);
            }
        }
        Ok(())
    }

    /// Deletes the oldest rows so that nine tenths of the bound remain, leaving room for many
    /// batches before the next trim. Returns the oldest id kept and how many rows went.
    async fn trim(&self, tx: &mut sqlx::SqliteConnection) -> Result<(i64, u64), StoreError> {
        let keep = (self.max_entries - self.max_entries / 10).max(1);
        let oldest_kept: i64 =
            sqlx::query_scalar("SELECT id FROM memo_log ORDER BY id DESC LIMIT 1 OFFSET $1")
                .bind(i64::try_from(keep - 1).unwrap_or(i64::MAX))
                .fetch_one(&mut *tx)
                .await?;
        let deleted = sqlx::query("DELETE FROM memo_log WHERE id < $1")
            .bind(oldest_kept)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tracing::info!(
            deleted,
            kept = keep,
            "the memo reached its bound of {} entries; the oldest were deleted",
            self.max_entries
        );
        Ok((oldest_kept, deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::{memo_path, SqliteStore};
    use crate::store::{Store, StoreOptions};

    async fn open(dir: &tempfile::TempDir, max_entries: u64) -> SqliteStore {
        let path = dir.path().join("examiner.db");
        SqliteStore::open(
            path.to_str().unwrap(),
            &StoreOptions {
                memo_max_entries: max_entries,
            },
        )
        .await
        .unwrap()
    }

    fn entries(range: std::ops::Range<usize>) -> Vec<(String, String)> {
        range.map(|n| (format!("k{n}"), format!("v{n}"))).collect()
    }

    async fn get(store: &SqliteStore, namespace: &str, key: &str) -> Option<String> {
        store.cache_get(namespace, key).await.unwrap()
    }

    #[tokio::test]
    async fn values_beyond_one_statement_are_stored_superseded_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1_000_000).await;
        let all = entries(0..ROWS_PER_STATEMENT * 2 + 3);
        store.cache_put_many("ns", &all).await.unwrap();
        store.cache_put("ns", "k5", "new").await.unwrap();
        store.cache_put("other", "k5", "elsewhere").await.unwrap();

        let reopened = open(&dir, 1_000_000).await;
        for store in [&store, &reopened] {
            assert_eq!(get(store, "ns", "k5").await.as_deref(), Some("new"));
            assert_eq!(
                get(store, "other", "k5").await.as_deref(),
                Some("elsewhere")
            );
            assert_eq!(get(store, "ns", "k0").await.as_deref(), Some("v0"));
            let last = all.len() - 1;
            assert_eq!(
                get(store, "ns", &format!("k{last}")).await,
                Some(format!("v{last}"))
            );
            assert_eq!(get(store, "ns", "absent").await, None);
            assert_eq!(get(store, "other", "k6").await, None);
        }
        assert_eq!(reopened.memo.rows(), all.len() as u64 + 2);
    }

    #[tokio::test]
    async fn a_miss_is_answered_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 100).await;
        store.cache_put("ns", "k1", "v1").await.unwrap();
        // Written into the same files by another store after this one loaded its index:
        // invisible to it, which proves that the miss asked the database nothing.
        let other = open(&dir, 100).await;
        other.cache_put("ns", "k2", "v2").await.unwrap();
        assert_eq!(get(&store, "ns", "k2").await, None);
        assert_eq!(get(&store, "ns", "k1").await.as_deref(), Some("v1"));
        assert_eq!(get(&other, "ns", "k2").await.as_deref(), Some("v2"));
    }

    #[tokio::test]
    async fn the_log_keeps_the_newest_entries_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 10).await;
        for batch in 0..5 {
            store
                .cache_put_many("ns", &entries(batch * 4..batch * 4 + 4))
                .await
                .unwrap();
            assert!(store.memo.rows() <= 10, "{} rows", store.memo.rows());
        }
        // 20 written; every batch that passed the bound trimmed the log back to 9.
        assert_eq!(store.memo.rows(), 9);
        for n in 0..11 {
            assert_eq!(get(&store, "ns", &format!("k{n}")).await, None, "k{n}");
        }
        for n in 11..20 {
            assert_eq!(
                get(&store, "ns", &format!("k{n}")).await,
                Some(format!("v{n}"))
            );
        }
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memo_log")
            .fetch_one(&store.memo.db.pool)
            .await
            .unwrap();
        assert_eq!(count, 9);

        let reopened = open(&dir, 10).await;
        assert_eq!(reopened.memo.rows(), 9);
        assert_eq!(get(&reopened, "ns", "k19").await.as_deref(), Some("v19"));
        assert_eq!(get(&reopened, "ns", "k10").await, None);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_bound_keeps_its_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 10).await;
        store.cache_put_many("ns", &entries(0..25)).await.unwrap();
        assert_eq!(store.memo.rows(), 9);
        assert_eq!(get(&store, "ns", "k15").await, None);
        assert_eq!(get(&store, "ns", "k16").await.as_deref(), Some("v16"));
        assert_eq!(get(&store, "ns", "k24").await.as_deref(), Some("v24"));
        assert_eq!(store.memo.index().rows.len(), 9);
    }

    #[tokio::test]
    async fn a_superseded_entry_counts_until_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 3).await;
        store.cache_put("ns", "k", "old").await.unwrap();
        store.cache_put("ns", "k", "new").await.unwrap();
        store.cache_put("ns", "j", "v").await.unwrap();
        assert_eq!(store.memo.rows(), 3);
        assert_eq!(get(&store, "ns", "k").await.as_deref(), Some("new"));
        // The fourth row trims to 3 - 3/10 = 3 rows: only "old" goes.
        store.cache_put("ns", "i", "v").await.unwrap();
        assert_eq!(store.memo.rows(), 3);
        assert_eq!(get(&store, "ns", "k").await.as_deref(), Some("new"));
        assert_eq!(get(&store, "ns", "j").await.as_deref(), Some("v"));
    }

    #[tokio::test]
    async fn entries_of_the_keyed_table_are_carried_into_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("examiner.db");
        let memo_file = memo_path(path.to_str().unwrap());
        {
            // The memo file as the first migration left it, with two entries.
            let mut first = sqlx::migrate!("./migrations/sqlite-memo");
            first.migrations = std::borrow::Cow::Owned(first.migrations[..1].to_vec());
            let pool = sqlx::SqlitePool::connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&memo_file)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
            first.run(&pool).await.unwrap();
            sqlx::query(
                "INSERT INTO cache_entries (namespace, key, value, created_at)
                 VALUES ('llm', 'a', '{\"n\":1}', '2026-01-01T00:00:00Z'),
                        ('ocr', 'b', 'text', '2026-01-02T00:00:00Z')",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = open(&dir, 100).await;
        assert_eq!(get(&store, "llm", "a").await.as_deref(), Some("{\"n\":1}"));
        assert_eq!(get(&store, "ocr", "b").await.as_deref(), Some("text"));
        assert_eq!(store.memo.rows(), 2);
    }
}
