//! The memo file as an append-only log, with its key index in memory.
//!
//! Memo keys are content hashes. Under a table keyed by them every insert lands on a random
//! page of the key's B-tree, and at 100 concurrent requests those page writes were half of
//! what the memo cost (BENCHMARKS.md, step 16). Rows are appended in id order instead, so a
//! batch fills the last pages of the table, and the index from key to row is a hash map in
//! memory: a hit is one read by row id, a miss asks the database nothing.
//!
//! Beside the log, `memo_addresses` holds 64 bits of each entry's address under the same id,
//! written in the same transactions: the index is rebuilt at open from that table (about 20
//! bytes a row) instead of from the log's rows (about 1 KB each).
//!
//! The log is bounded: past `max_entries` rows the oldest tenth goes, in the transaction
//! that crossed the bound. The pages they held are reused by the rows that follow, so the
//! file stops growing once it reaches its bound. An entry served from the older half of the
//! log is appended again (a second chance), so entries in use outlive those that are not:
//! close to least-recently-used, for one write per entry per half a bound of appends.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use sqlx::Connection;

use super::Database;
use crate::store::sql::now;
use crate::store::sql_store::{is_in_older_half, memo_address, Memo};
use crate::store::StoreError;

/// Rows per multi-row INSERT: 4 bound values each keeps a statement well under SQLite's
/// limit of 32,766 variables.
pub(super) const ROWS_PER_STATEMENT: usize = 1_000;

pub struct MemoLog {
    pub(super) db: Database,
    /// Loaded on first use, or by [`MemoLog::warm`] in the background: at the default bound a
    /// million addresses took about three seconds to read, which neither the service's start
    /// nor a CLI command that never touches the memo should wait for.
    index: tokio::sync::OnceCell<Mutex<MemoIndex>>,
    /// Writes and the index updates that follow their commits run one at a time, so the
    /// index never points at a row an earlier write superseded.
    writing: tokio::sync::Mutex<()>,
    max_entries: u64,
}

#[derive(Default)]
struct MemoIndex {
    /// [`address`] → id of the newest row under it.
    rows: HashMap<u64, i64>,
    /// The newest row's id (0 for an empty log).
    newest: i64,
    /// Rows in the table, superseded ones included: they occupy space until trimmed.
    count: u64,
}

impl MemoLog {
    pub(super) fn new(db: Database, max_entries: u64) -> Self {
        MemoLog {
            db,
            index: tokio::sync::OnceCell::new(),
            writing: tokio::sync::Mutex::new(()),
            max_entries: max_entries.max(1),
        }
    }

    /// Loads the index now, if no lookup has yet.
    pub(super) async fn warm(&self) {
        if let Err(e) = self.index().await {
            tracing::warn!(error = %e, "could not read the memo's index; the next lookup tries again");
        }
    }

    async fn index(&self) -> Result<std::sync::MutexGuard<'_, MemoIndex>, StoreError> {
        let index = self
            .index
            .get_or_try_init(|| async {
                let started = std::time::Instant::now();
                let index = load_index(&self.db).await?;
                tracing::debug!(
                    entries = index.count,
                    ms = started.elapsed().as_millis() as u64,
                    "memo index loaded"
                );
                Ok::<_, StoreError>(Mutex::new(index))
            })
            .await?;
        Ok(index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// Rows the log holds now (superseded ones included).
    #[cfg(test)]
    pub(super) async fn rows(&self) -> u64 {
        self.index().await.unwrap().count
    }

    async fn lookup(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        let (id, newest) = {
            let index = self.index().await?;
            let Some(&id) = index.rows.get(&memo_address(namespace, key)) else {
                return Ok(None);
            };
            (id, index.newest)
        };
        // The row may have been trimmed since, or belong to another key with the same address.
        let value: Option<String> = sqlx::query_scalar(
            "SELECT value FROM memo_log WHERE id = $1 AND namespace = $2 AND key = $3",
        )
        .bind(id)
        .bind(namespace)
        .bind(key)
        .fetch_optional(&mut *self.db.readers.acquire().await?)
        .await?;
        if let Some(value) = &value {
            if is_in_older_half(id, newest, self.max_entries) {
                // A second chance: served from the half that trims delete first, the entry is
                // appended again, so what is in use stays while what is not ages out.
                let again = [(key.to_string(), value.clone())];
                if let Err(e) = self.append(namespace, &again).await {
                    tracing::warn!(error = %e, "could not renew a memo entry; it may be recomputed later");
                }
            }
        }
        Ok(value)
    }

    /// Appends the entries in one transaction (a later entry under a key supersedes an
    /// earlier one) and trims the log if it passed its bound.
    async fn append(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError> {
        let _writing = self.writing.lock().await;
        let before = self.index().await?.count;
        let addresses: Vec<u64> = entries
            .iter()
            .map(|(key, _)| memo_address(namespace, key))
            .collect();
        let created_at = now();
        let mut conn = self.db.writer.acquire().await?;
        let mut tx = conn.begin().await?;
        let mut ids = Vec::with_capacity(entries.len());
        for (chunk, chunk_addresses) in entries
            .chunks(ROWS_PER_STATEMENT)
            .zip(addresses.chunks(ROWS_PER_STATEMENT))
        {
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
            let mut insert_addresses =
                sqlx::QueryBuilder::new("INSERT INTO memo_addresses (id, address) ");
            insert_addresses.push_values(
                chunk_ids.iter().zip(chunk_addresses),
                |mut row, (id, address)| {
                    row.push_bind(*id).push_bind(*address as i64);
                },
            );
            insert_addresses.build().execute(&mut *tx).await?;
            ids.extend(chunk_ids);
        }
        let count = before + entries.len() as u64;
        let newest = ids.last().copied();
        let trim = if count > self.max_entries {
            Some(self.trim(&mut tx).await?)
        } else {
            None
        };
        tx.commit().await?;

        let (oldest_kept, deleted) = trim.unwrap_or((i64::MIN, 0));
        let mut index = self.index().await?;
        index.count = count.saturating_sub(deleted);
        index.newest = index.newest.max(newest.unwrap_or(0));
        if trim.is_some() {
            index.rows.retain(|_, id| *id >= oldest_kept);
        }
        for (address, id) in addresses.into_iter().zip(ids) {
            // A batch larger than the bound has trimmed some of its own rows.
            if id >= oldest_kept {
                index.rows.insert(address, id);
            }
        }
        Ok(())
    }

    /// Deletes every row under the keys: the log may hold an older copy of an entry beside
    /// the one the index points at (a second chance appends a copy), so the rows are found
    /// by address in `memo_addresses` (a scan of about 20 bytes a row), then checked by key.
    async fn delete(&self, namespace: &str, keys: &[String]) -> Result<u64, StoreError> {
        let keys: HashSet<&str> = keys.iter().map(String::as_str).collect();
        if keys.is_empty() {
            return Ok(0);
        }
        let addresses: Vec<i64> = keys
            .iter()
            .map(|key| memo_address(namespace, key) as i64)
            .collect();
        let _writing = self.writing.lock().await;
        let mut conn = self.db.writer.acquire().await?;
        let mut tx = conn.begin().await?;
        let mut candidates = Vec::new();
        for chunk in addresses.chunks(ROWS_PER_STATEMENT) {
            let mut select =
                sqlx::QueryBuilder::new("SELECT id FROM memo_addresses WHERE address IN");
            push_list(&mut select, chunk);
            candidates.extend(
                select
                    .build_query_scalar::<i64>()
                    .fetch_all(&mut *tx)
                    .await?,
            );
        }
        // An address another key shares leaves that key's rows alone.
        let mut doomed = Vec::new();
        let mut found = HashSet::new();
        for chunk in candidates.chunks(ROWS_PER_STATEMENT) {
            let mut select =
                sqlx::QueryBuilder::new("SELECT id, key FROM memo_log WHERE namespace = ");
            select.push_bind(namespace).push(" AND id IN");
            push_list(&mut select, chunk);
            let rows: Vec<(i64, String)> = select.build_query_as().fetch_all(&mut *tx).await?;
            for (id, key) in rows {
                if let Some(key) = keys.get(key.as_str()) {
                    doomed.push(id);
                    found.insert(*key);
                }
            }
        }
        for table in ["memo_log", "memo_addresses"] {
            for chunk in doomed.chunks(ROWS_PER_STATEMENT) {
                let mut delete =
                    sqlx::QueryBuilder::new(format!("DELETE FROM {table} WHERE id IN"));
                push_list(&mut delete, chunk);
                delete.build().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        // An index still loading reads the tables as they are now, or finds rows gone.
        if let Some(index) = self.index.get() {
            let mut index = index
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let doomed: HashSet<i64> = doomed.iter().copied().collect();
            index.rows.retain(|_, id| !doomed.contains(id));
            index.count = index.count.saturating_sub(doomed.len() as u64);
        }
        Ok(found.len() as u64)
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
        sqlx::query("DELETE FROM memo_addresses WHERE id < $1")
            .bind(oldest_kept)
            .execute(&mut *tx)
            .await?;
        tracing::info!(
            deleted,
            kept = keep,
            "the memo reached its bound of {} entries; the oldest were deleted",
            self.max_entries
        );
        Ok((oldest_kept, deleted))
    }
}

/// Appends ` (v1, v2, …)` to `query`, the values bound: the list of an `IN`.
fn push_list<'a>(query: &mut sqlx::QueryBuilder<'a, sqlx::Sqlite>, values: &'a [i64]) {
    query.push(" (");
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(*value);
    }
    query.push(")");
}

/// Addresses read per query while loading the index: each read is short, so other queries on
/// the memo's connections are not held up behind one long scan.
/// (Small under test, so that the tests' logs span several reads.)
const LOAD_CHUNK: i64 = if cfg!(test) { 100 } else { 50_000 };

#[async_trait::async_trait]
impl Memo for MemoLog {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.lookup(namespace, key).await
    }

    async fn put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError> {
        self.append(namespace, entries).await
    }

    async fn forget(&self, namespace: &str, keys: &[String]) -> Result<u64, StoreError> {
        self.delete(namespace, keys).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.db.readers.acquire().await?)
            .await?;
        Ok(())
    }
}

/// The index from the addresses table, in id order (a later entry under an address wins).
async fn load_index(db: &Database) -> Result<MemoIndex, StoreError> {
    backfill_addresses(db).await?;
    let mut index = MemoIndex::default();
    let mut after = i64::MIN;
    loop {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, address FROM memo_addresses WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(LOAD_CHUNK)
        .fetch_all(&mut *db.readers.acquire().await?)
        .await?;
        let Some(&(last, _)) = rows.last() else {
            return Ok(index);
        };
        index.count += rows.len() as u64;
        index.newest = last;
        for (id, address) in rows {
            index.rows.insert(address as u64, id);
        }
        after = last;
    }
}

/// Entries carried over from the keyed table by the migration have no addresses yet: they
/// are computed once, from the log itself.
async fn backfill_addresses(db: &Database) -> Result<(), StoreError> {
    let mut reader = db.readers.acquire().await?;
    let addressed: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM memo_addresses")
        .fetch_one(&mut *reader)
        .await?;
    let logged: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM memo_log")
        .fetch_one(&mut *reader)
        .await?;
    drop(reader);
    if logged.is_none() || addressed.is_some() {
        return Ok(());
    }
    let mut conn = db.writer.acquire().await?;
    let mut tx = conn.begin().await?;
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, namespace, key FROM memo_log ORDER BY id")
            .fetch_all(&mut *tx)
            .await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::new("INSERT INTO memo_addresses (id, address) ");
        insert.push_values(chunk, |mut row, (id, namespace, key)| {
            row.push_bind(*id)
                .push_bind(memo_address(namespace, key) as i64);
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    tracing::info!(
        entries = rows.len(),
        "memo entries of the earlier format indexed"
    );
    Ok(())
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
                ..StoreOptions::default()
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
        assert_eq!(reopened.memo.rows().await, all.len() as u64 + 2);
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
            assert!(
                store.memo.rows().await <= 10,
                "{} rows",
                store.memo.rows().await
            );
        }
        // 20 written; every batch that passed the bound trimmed the log back to 9.
        assert_eq!(store.memo.rows().await, 9);
        for table in ["memo_log", "memo_addresses"] {
            let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                .fetch_one(&mut *store.memo.db.readers.acquire().await.unwrap())
                .await
                .unwrap();
            assert_eq!(count, 9, "{table}");
        }
        let reopened = open(&dir, 10).await;
        assert_eq!(reopened.memo.rows().await, 9);
        // (Reading the older entries renews them: see `memo_keeps_what_is_used`.)
        for n in 0..11 {
            assert_eq!(get(&store, "ns", &format!("k{n}")).await, None, "k{n}");
        }
        for n in 11..20 {
            assert_eq!(
                get(&store, "ns", &format!("k{n}")).await,
                Some(format!("v{n}"))
            );
        }
        assert_eq!(get(&reopened, "ns", "k19").await.as_deref(), Some("v19"));
        assert_eq!(get(&reopened, "ns", "k10").await, None);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_bound_keeps_its_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 10).await;
        store.cache_put_many("ns", &entries(0..25)).await.unwrap();
        assert_eq!(store.memo.rows().await, 9);
        assert_eq!(get(&store, "ns", "k15").await, None);
        assert_eq!(get(&store, "ns", "k16").await.as_deref(), Some("v16"));
        assert_eq!(get(&store, "ns", "k24").await.as_deref(), Some("v24"));
        assert_eq!(store.memo.index().await.unwrap().rows.len(), 9);
    }

    #[tokio::test]
    async fn a_superseded_entry_counts_until_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 3).await;
        store.cache_put("ns", "k", "old").await.unwrap();
        store.cache_put("ns", "k", "new").await.unwrap();
        store.cache_put("ns", "j", "v").await.unwrap();
        assert_eq!(store.memo.rows().await, 3);
        // The fourth row trims to 3 - 3/10 = 3 rows: only "old" goes.
        store.cache_put("ns", "i", "v").await.unwrap();
        assert_eq!(store.memo.rows().await, 3);
        let logged: Vec<String> = sqlx::query_scalar("SELECT value FROM memo_log ORDER BY id")
            .fetch_all(&mut *store.memo.db.readers.acquire().await.unwrap())
            .await
            .unwrap();
        assert_eq!(logged, ["new", "v", "v"]);
        assert_eq!(get(&store, "ns", "k").await.as_deref(), Some("new"));
    }

    #[tokio::test]
    async fn forgetting_deletes_every_copy_of_an_entry_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir, 1_000).await;
        store.cache_put("ns", "k", "old").await.unwrap();
        store.cache_put("ns", "k", "new").await.unwrap();
        store.cache_put_many("ns", &entries(0..3)).await.unwrap();
        store.cache_put("other", "k", "elsewhere").await.unwrap();

        let keys = ["k".to_string(), "k1".into(), "absent".into()];
        assert_eq!(store.memo.forget("ns", &keys).await.unwrap(), 2);
        let logged: Vec<(String, String)> =
            sqlx::query_as("SELECT namespace, key FROM memo_log ORDER BY id")
                .fetch_all(&mut *store.memo.db.readers.acquire().await.unwrap())
                .await
                .unwrap();
        let remaining = [("ns", "k0"), ("ns", "k2"), ("other", "k")];
        let remaining: Vec<(String, String)> = remaining
            .iter()
            .map(|(n, k)| (n.to_string(), k.to_string()))
            .collect();
        assert_eq!(logged, remaining, "the older copy of k went too");
        let addressed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memo_addresses")
            .fetch_one(&mut *store.memo.db.readers.acquire().await.unwrap())
            .await
            .unwrap();
        assert_eq!(addressed, 3);
        assert_eq!(store.memo.rows().await, 3);

        let reopened = open(&dir, 1_000).await;
        for store in [&store, &reopened] {
            assert_eq!(get(store, "ns", "k").await, None);
            assert_eq!(get(store, "ns", "k1").await, None);
            assert_eq!(get(store, "ns", "k0").await.as_deref(), Some("v0"));
            assert_eq!(get(store, "other", "k").await.as_deref(), Some("elsewhere"));
        }
        assert_eq!(store.memo.forget("ns", &keys).await.unwrap(), 0);
        store.cache_put("ns", "k", "again").await.unwrap();
        assert_eq!(get(&store, "ns", "k").await.as_deref(), Some("again"));
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
        // Addressed at the first open; the second reads the addresses.
        let reopened = open(&dir, 100).await;
        for store in [&store, &reopened] {
            assert_eq!(get(store, "llm", "a").await.as_deref(), Some("{\"n\":1}"));
            assert_eq!(get(store, "ocr", "b").await.as_deref(), Some("text"));
            assert_eq!(store.memo.rows().await, 2);
        }
        let addressed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM memo_addresses")
            .fetch_one(&mut *store.memo.db.readers.acquire().await.unwrap())
            .await
            .unwrap();
        assert_eq!(addressed, 2);
    }
}
