//! The PostgreSQL backend, for deployments where several Examiner processes (on one machine
//! or many) share one database. Chosen by a `postgres://` or `postgresql://` URL and migrated
//! on open; concurrent starts are safe, since migrations take an advisory lock.
//!
//! Records are written by the same SQL as SQLite's ([`super::sql`]), through the same
//! [`SqlStore`]. What differs:
//! - Every connection may write; PostgreSQL locks rows, not the database, so there is no
//!   single writer to queue for: one pool reads and writes.
//! - The memo is an ordinary table keyed by (namespace, key) ([`MemoTable`]), shared by every
//!   process: a reply one process paid for is served to all of them.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection as _;
use sqlx::{PgConnection, PgPool};

use super::sql::{self, args, Columns, Conn};
use super::sql_store::{is_in_older_half, Memo, SqlStore};
use super::{StoreError, StoreOptions};

/// PostgreSQL behind the [`Store`](super::Store) trait.
pub type PostgresStore = SqlStore<sqlx::Postgres, MemoTable>;

sql::impl_conn!(sqlx::Postgres, PgConnection);

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, with
    /// any parameter PostgreSQL's clients take, e.g. `sslmode`) and applies migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect: PgConnectOptions = url.parse()?;
        // One connection first, so a server that refuses or a wrong password is reported as
        // such at once, not as the pool's timeout half a minute later.
        PgConnection::connect_with(&connect).await?.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        let memo = MemoTable {
            pool: pool.clone(),
            max_entries: i64::try_from(options.memo_max_entries.max(1)).unwrap_or(i64::MAX),
        };
        Ok(SqlStore::new(pool.clone(), pool, Arc::new(memo), None)
            .with_version_lock("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"))
    }
}

/// Memo rows per multi-row statement (4 values each).
const MEMO_ROWS_PER_STATEMENT: usize = 1_000;

/// The memo as a table keyed by (namespace, key), bounded by its ids: they grow with every
/// insert, so the rows past the bound are found from the ends of the id index rather than by
/// counting the table. An entry served from the older half takes a new id (a second chance),
/// so entries in use outlive those that are not.
pub struct MemoTable {
    pool: PgPool,
    max_entries: i64,
}

impl MemoTable {
    /// Deletes the oldest tenth once the table holds more than its bound. Ids the sequence
    /// handed out without a row to show for them (a rolled-back insert, an insert that
    /// updated an existing entry instead) make it trim a little early, never late.
    async fn trim(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let Some(row) = conn
            .fetch_optional(
                "SELECT MIN(id) AS oldest, MAX(id) AS newest FROM memo",
                args![],
            )
            .await?
        else {
            return Ok(());
        };
        let (Some(oldest), Some(newest)) = (
            row.col::<Option<i64>>("oldest")?,
            row.col::<Option<i64>>("newest")?,
        ) else {
            return Ok(());
        };
        if newest - oldest < self.max_entries {
            return Ok(());
        }
        let keep = self.max_entries - self.max_entries / 10;
        // Rows another writer holds are left for a later trim rather than waited for, so a
        // trim never waits on a batch that waits on it.
        conn.execute(
            "DELETE FROM memo WHERE id IN
                 (SELECT id FROM memo WHERE id <= $1 FOR UPDATE SKIP LOCKED)",
            args![newest - keep],
        )
        .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Memo for MemoTable {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let Some(row) = conn
            .fetch_optional(
                "SELECT value, id, (SELECT MAX(id) FROM memo) AS newest FROM memo
                 WHERE namespace = $1 AND key = $2",
                args![namespace, key],
            )
            .await?
        else {
            return Ok(None);
        };
        let id: i64 = row.col("id")?;
        let newest: Option<i64> = row.col("newest")?;
        if is_in_older_half(id, newest.unwrap_or(id), self.max_entries as u64) {
            // A second chance: a newer id keeps the entry from the trims that come first.
            conn.execute(
                "UPDATE memo SET id = nextval(pg_get_serial_sequence('memo', 'id')) WHERE id = $1",
                args![id],
            )
            .await?;
        }
        row.col("value")
    }

    /// Entries go in key order, so two processes writing overlapping batches lock their rows
    /// in the same order and never deadlock.
    async fn put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError> {
        // One row per key (PostgreSQL refuses a statement that updates a row twice), the last
        // value given winning.
        let latest: std::collections::BTreeMap<&str, &str> = entries
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        let latest: Vec<(&str, &str)> = latest.into_iter().collect();
        let created_at = sql::now();
        let mut tx = self.pool.begin().await?;
        for chunk in latest.chunks(MEMO_ROWS_PER_STATEMENT) {
            let mut values = Vec::with_capacity(chunk.len() * 4);
            for (key, value) in chunk {
                values.extend(args![namespace, *key, *value, &created_at]);
            }
            let statement = format!(
                "INSERT INTO memo (namespace, key, value, created_at) VALUES {}
                 ON CONFLICT (namespace, key)
                 DO UPDATE SET value = EXCLUDED.value, created_at = EXCLUDED.created_at",
                sql::placeholders(chunk.len(), 4)
            );
            tx.execute(&statement, values).await?;
        }
        self.trim(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The memo is a table of the records' database, which the store has just pinged.
        Ok(())
    }
}
