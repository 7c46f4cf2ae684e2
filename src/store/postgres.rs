//! The PostgreSQL backend, for deployments where several Examiner processes (on one machine
//! or many) share one database. Chosen by a `postgres://` or `postgresql://` URL and migrated
//! on open; concurrent starts are safe, since migrations take an advisory lock.
//!
//! Records are written by the same SQL as SQLite's ([`super::sql`]), through the same
//! [`SqlStore`]. What differs:
//! - Every connection may write; PostgreSQL locks rows, not the database, so there is no
//!   single writer to queue for: one pool reads and writes.
//! - The memo is an ordinary table keyed by (namespace, key) ([`MemoTable`]), shared by every
//!   process: a reply one process paid for is served to all of them. Each process keeps the
//!   addresses of the stored entries in memory, so a miss rarely asks the server.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection as _;
use sqlx::{PgConnection, PgPool};

use super::connections::Connections;
use super::sql::{self, args, Columns, Conn};
use super::sql_store::{is_in_older_half, memo_address, Memo, SqlStore};
use super::{StoreError, StoreOptions};

/// PostgreSQL behind the [`Store`](super::Store) trait.
pub type PostgresStore = SqlStore<sqlx::Postgres, MemoTable>;

sql::impl_conn!(sqlx::Postgres, PgConnection, sql::Placeholder::Numbered, scripts: false);

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
            seen: Mutex::new(SeenAddresses::default()),
            reading: tokio::sync::Mutex::new(()),
        };
        Ok(SqlStore::new(
            Connections::Pool(pool.clone()),
            Connections::Pool(pool),
            Arc::new(memo),
            None,
        )
        .with_version_lock("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"))
    }
}

/// Memo rows per multi-row statement (5 values each).
const MEMO_ROWS_PER_STATEMENT: usize = 1_000;

/// How long a lookup of an address this process has not seen is answered "absent" from
/// memory before the addresses other processes stored since are read in. An entry another
/// process stored within this time may be computed again here: a repeated computation, at
/// most once per entry and process, for one query a second instead of one per lookup.
const READ_IN_EVERY: Duration = Duration::from_secs(1);

/// The memo as a table keyed by (namespace, key), bounded by its ids: they grow with every
/// insert, so the rows past the bound are found from the ends of the id index rather than by
/// counting the table. An entry served from the older half takes a new id (a second chance),
/// so entries in use outlive those that are not.
///
/// Every lookup used to be a query, and with one per LLM stage the memo was most of what
/// the server did (BENCHMARKS.md, "On PostgreSQL"). Nearly all lookups miss, so each process
/// keeps the addresses ([`memo_address`]) of the stored entries in memory, reading in those
/// with ids past the last it read at most once per [`READ_IN_EVERY`]: a miss asks the server
/// nothing, a hit is one query as before.
pub struct MemoTable {
    pool: PgPool,
    max_entries: i64,
    seen: Mutex<SeenAddresses>,
    /// One read-in at a time; lookups that wait for it then find its result.
    reading: tokio::sync::Mutex<()>,
}

/// The addresses of the entries stored as of the last read-in.
#[derive(Default)]
struct SeenAddresses {
    addresses: HashSet<u64>,
    /// The highest id read in (0: none yet).
    newest_read: i64,
    /// The next read-in reads the ids above this: the highest id as of the read-in before
    /// the last, so each read-in also reads again what the last one read (the second after
    /// a start reads all again once). Ids are taken when a row is inserted but become
    /// visible at commit, so a transaction that took a lower id may commit after a read-in
    /// has seen a higher one; the overlap finds it.
    read_from: i64,
    /// When the last read-in was; `None` before the first.
    read_at: Option<Instant>,
}

impl SeenAddresses {
    /// Whether the last read-in is recent enough to answer "absent" from memory.
    fn fresh(&self) -> bool {
        self.read_at.is_some_and(|at| at.elapsed() < READ_IN_EVERY)
    }
}

/// What a lookup of an address should do, from what this process has seen.
enum Seen {
    Stored,
    Absent,
    /// Not seen, and the last read-in is older than [`READ_IN_EVERY`].
    Unsure,
}

impl MemoTable {
    fn seen(&self) -> std::sync::MutexGuard<'_, SeenAddresses> {
        self.seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check(&self, address: u64) -> Seen {
        let seen = self.seen();
        if seen.addresses.contains(&address) {
            Seen::Stored
        } else if seen.fresh() {
            Seen::Absent
        } else {
            Seen::Unsure
        }
    }

    /// Reads in the addresses stored since the last read-in, unless another lookup just did.
    /// Trimmed entries' addresses stay until the set outgrows twice the bound; then it is read
    /// in afresh. A stale address costs one lookup that finds no row.
    async fn read_in(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.reading.lock().await;
        let read_from = {
            let mut seen = self.seen();
            if seen.fresh() {
                return Ok(());
            }
            if seen.addresses.len() as i64 > self.max_entries.saturating_mul(2) {
                *seen = SeenAddresses::default();
            }
            seen.read_from
        };
        let started = Instant::now();
        let rows = self
            .pool
            .acquire()
            .await?
            .fetch_all(
                "SELECT id, address FROM memo WHERE id > $1 AND address IS NOT NULL",
                args![read_from],
            )
            .await?;
        let mut seen = self.seen();
        let before = seen.newest_read;
        for row in &rows {
            let id: i64 = row.col("id")?;
            let address: i64 = row.col("address")?;
            seen.addresses.insert(address as u64);
            seen.newest_read = seen.newest_read.max(id);
        }
        seen.read_from = before;
        seen.read_at = Some(started);
        Ok(())
    }

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
        let address = memo_address(namespace, key);
        match self.check(address) {
            Seen::Stored => {}
            Seen::Absent => return Ok(None),
            Seen::Unsure => {
                self.read_in().await?;
                if !matches!(self.check(address), Seen::Stored) {
                    return Ok(None);
                }
            }
        }
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
        let latest: Vec<(&str, &str, u64)> = latest
            .into_iter()
            .map(|(key, value)| (key, value, memo_address(namespace, key)))
            .collect();
        let created_at = sql::now();
        let mut tx = self.pool.begin().await?;
        for chunk in latest.chunks(MEMO_ROWS_PER_STATEMENT) {
            let mut values = Vec::with_capacity(chunk.len() * 5);
            for (key, value, address) in chunk {
                values.extend(args![namespace, *key, *value, &created_at, *address as i64]);
            }
            let statement = format!(
                "INSERT INTO memo (namespace, key, value, created_at, address) VALUES {}
                 ON CONFLICT (namespace, key)
                 DO UPDATE SET value = EXCLUDED.value, created_at = EXCLUDED.created_at,
                               address = EXCLUDED.address",
                sql::placeholders(sql::Placeholder::Numbered, chunk.len(), 5)
            );
            tx.execute(&statement, values).await?;
        }
        self.trim(&mut tx).await?;
        tx.commit().await?;
        // What this process stored it finds at once; other processes at their next read-in.
        self.seen()
            .addresses
            .extend(latest.iter().map(|(_, _, address)| address));
        Ok(())
    }

    async fn forget(&self, namespace: &str, keys: &[String]) -> Result<u64, StoreError> {
        if keys.is_empty() {
            return Ok(0);
        }
        // Rows locked in key order, as `put_many` locks them, so the two never deadlock.
        let deleted: Vec<String> = sqlx::query_scalar(
            "DELETE FROM memo WHERE id IN
                 (SELECT id FROM memo WHERE namespace = $1 AND key = ANY($2)
                  ORDER BY key FOR UPDATE)
             RETURNING key",
        )
        .bind(namespace)
        .bind(keys)
        .fetch_all(&self.pool)
        .await?;
        let mut seen = self.seen();
        for key in &deleted {
            seen.addresses.remove(&memo_address(namespace, key));
        }
        Ok(deleted.len() as u64)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // The memo is a table of the records' database, which the store has just pinged.
        Ok(())
    }
}
