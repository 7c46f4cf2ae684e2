//! Where a store's connections come from: sqlx's pool, or, for SQLite, a few connections the
//! store holds itself.
//!
//! sqlx's pool pings every connection as it is handed back (sqlx-core 0.8,
//! `return_to_pool`, which cannot be turned off). On SQLite a ping is a round trip to the
//! connection's own thread, in a task spawned for it: per query, one more wake-up of that
//! thread and of a Tokio worker, for a local file's connection that cannot go stale.
//! Without it Examiner used about 6 % less CPU per LLM call at 100 concurrent requests
//! (BENCHMARKS.md, "Evaluate", step 22).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{ConnectOptions, Connection, Database, Pool};

/// A store's source of connections for reading or for writing.
pub(super) enum Connections<DB: Database> {
    /// sqlx's pool: connections over a network can break, and are checked as they come back.
    Pool(Pool<DB>),
    /// Connections to a local file, held by the store.
    Held(Arc<Held<DB>>),
}

impl<DB: Database> Clone for Connections<DB> {
    fn clone(&self) -> Self {
        match self {
            Connections::Pool(pool) => Connections::Pool(pool.clone()),
            Connections::Held(held) => Connections::Held(held.clone()),
        }
    }
}

/// Up to `size` connections, opened when first needed and reused as they were left: a
/// transaction dropped unfinished has already queued its rollback on the connection (sqlx's
/// `Transaction` does that on drop), and commands on a connection run in order. Connections
/// left unused for [`IDLE_TIMEOUT`] are closed, all but the last one used, as sqlx's pool
/// closes idle ones: each keeps its own page cache (up to 2 MB on SQLite), which a server
/// past its busy hour has no use for.
pub(super) struct Held<DB: Database> {
    options: <DB::Connection as Connection>::Options,
    /// The connections not lent, each with when it came back; the last came back last.
    idle: Mutex<Vec<(DB::Connection, Instant)>>,
    permits: Arc<tokio::sync::Semaphore>,
    /// How long a caller waits for a connection before giving up with
    /// [`sqlx::Error::PoolTimedOut`], as sqlx's pool would (its default, 30 s).
    acquire_timeout: Duration,
}

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// sqlx's pool's default `idle_timeout`.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

impl<DB: Database> Held<DB> {
    /// Takes out the idle connections unused for `timeout` or longer, but never the last
    /// one used, so that an idle server still answers its next query without opening a file.
    fn take_expired(&self, now: Instant, timeout: Duration) -> Vec<DB::Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Oldest first: the expired ones are a prefix, and the newest always stays.
        let expired = idle
            .iter()
            .take(idle.len().saturating_sub(1))
            .take_while(|(_, since)| now.saturating_duration_since(*since) >= timeout)
            .count();
        idle.drain(..expired)
            .map(|(connection, _)| connection)
            .collect()
    }
}

/// Closes `held`'s expired idle connections every so often, for as long as it exists.
async fn close_idle<DB: Database>(held: Weak<Held<DB>>, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(held) = held.upgrade() else { return };
        let expired = held.take_expired(Instant::now(), timeout);
        drop(held);
        for connection in expired {
            if let Err(e) = connection.close().await {
                tracing::debug!(error = %e, "closing an idle database connection failed");
            }
        }
    }
}

impl<DB: Database> Connections<DB> {
    /// At most `size` connections opened with `options`, none checked when handed back.
    /// Must be called inside a Tokio runtime, which closes the idle ones.
    pub(super) fn held(options: <DB::Connection as Connection>::Options, size: usize) -> Self {
        Self::held_with(options, size, ACQUIRE_TIMEOUT, IDLE_TIMEOUT)
    }

    fn held_with(
        options: <DB::Connection as Connection>::Options,
        size: usize,
        acquire_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let held = Arc::new(Held {
            options,
            idle: Mutex::new(Vec::with_capacity(size)),
            permits: Arc::new(tokio::sync::Semaphore::new(size)),
            acquire_timeout,
        });
        tokio::spawn(close_idle(Arc::downgrade(&held), idle_timeout));
        Connections::Held(held)
    }

    /// A connection of its own for the caller until the handle is dropped; waits while all
    /// are in use (for held ones, at most [`ACQUIRE_TIMEOUT`]).
    pub(super) async fn acquire(&self) -> Result<Handle<DB>, sqlx::Error> {
        match self {
            Connections::Pool(pool) => Ok(Handle::Pooled(pool.acquire().await?)),
            Connections::Held(held) => {
                let permit = tokio::time::timeout(
                    held.acquire_timeout,
                    held.permits.clone().acquire_owned(),
                )
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)?
                .map_err(|_| sqlx::Error::PoolClosed)?;
                let idle = held
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .pop();
                let connection = match idle {
                    Some((connection, _)) => connection,
                    None => held.options.connect().await?,
                };
                Ok(Handle::Held(HeldConnection {
                    connection: Some(connection),
                    held: held.clone(),
                    discard: false,
                    _permit: permit,
                }))
            }
        }
    }
}

/// One connection, lent by [`Connections::acquire`].
pub(super) enum Handle<DB: Database> {
    Pooled(PoolConnection<DB>),
    Held(HeldConnection<DB>),
}

pub(super) struct HeldConnection<DB: Database> {
    /// Always `Some` until dropped.
    connection: Option<DB::Connection>,
    held: Arc<Held<DB>>,
    discard: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl<DB: Database> Handle<DB> {
    /// Closes the connection instead of reusing it (its state is unknown); the next caller
    /// gets a new one.
    pub(super) fn close_on_drop(&mut self) {
        match self {
            Handle::Pooled(connection) => connection.close_on_drop(),
            Handle::Held(connection) => connection.discard = true,
        }
    }
}

impl<DB: Database> Deref for Handle<DB> {
    type Target = DB::Connection;

    fn deref(&self) -> &DB::Connection {
        match self {
            Handle::Pooled(connection) => connection,
            Handle::Held(connection) => connection
                .connection
                .as_ref()
                .expect("a held connection is present until dropped"),
        }
    }
}

impl<DB: Database> DerefMut for Handle<DB> {
    fn deref_mut(&mut self) -> &mut DB::Connection {
        match self {
            Handle::Pooled(connection) => connection,
            Handle::Held(connection) => connection
                .connection
                .as_mut()
                .expect("a held connection is present until dropped"),
        }
    }
}

impl<DB: Database> Drop for HeldConnection<DB> {
    fn drop(&mut self) {
        // The permit goes after this: the connection is back before anyone can ask for it.
        if let Some(connection) = self.connection.take() {
            if !self.discard {
                self.held
                    .idle
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((connection, Instant::now()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteConnectOptions;
    use std::str::FromStr;

    fn file_options(dir: &tempfile::TempDir) -> SqliteConnectOptions {
        SqliteConnectOptions::from_str(&format!(
            "sqlite://{}",
            dir.path().join("held.db").display()
        ))
        .unwrap()
        .create_if_missing(true)
    }

    async fn connection_id(handle: &mut Handle<sqlx::Sqlite>) -> i64 {
        // A temporary table is private to its connection: it tells connections apart.
        sqlx::query("CREATE TEMP TABLE IF NOT EXISTS mark (id INTEGER)")
            .execute(&mut **handle)
            .await
            .unwrap();
        let seen: Option<i64> = sqlx::query_scalar("SELECT id FROM mark")
            .fetch_optional(&mut **handle)
            .await
            .unwrap();
        match seen {
            Some(id) => id,
            None => {
                let id = rand::random::<u32>() as i64;
                sqlx::query("INSERT INTO mark (id) VALUES (?)")
                    .bind(id)
                    .execute(&mut **handle)
                    .await
                    .unwrap();
                id
            }
        }
    }

    #[tokio::test]
    async fn connections_are_reused_bounded_and_replaced_when_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let connections = Connections::<sqlx::Sqlite>::held(file_options(&dir), 2);
        let mut first = connections.acquire().await.unwrap();
        let first_id = connection_id(&mut first).await;
        let mut second = connections.acquire().await.unwrap();
        let second_id = connection_id(&mut second).await;
        assert_ne!(first_id, second_id);
        // Both lent: a third caller waits.
        let third = connections.acquire();
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut third)
                .await
                .is_err(),
            "a third connection was lent beyond the bound"
        );
        drop(first);
        let mut third = third.await.unwrap();
        assert_eq!(connection_id(&mut third).await, first_id);
        // A discarded connection is closed, and a new one takes its place.
        third.close_on_drop();
        drop(third);
        let mut fourth = connections.acquire().await.unwrap();
        let fourth_id = connection_id(&mut fourth).await;
        assert!(fourth_id != first_id && fourth_id != second_id);
    }

    #[tokio::test]
    async fn a_caller_waits_for_a_connection_only_so_long() {
        let dir = tempfile::tempdir().unwrap();
        let connections = Connections::<sqlx::Sqlite>::held_with(
            file_options(&dir),
            1,
            std::time::Duration::from_millis(50),
            IDLE_TIMEOUT,
        );
        let lent = connections.acquire().await.unwrap();
        assert!(matches!(
            connections.acquire().await,
            Err(sqlx::Error::PoolTimedOut)
        ));
        drop(lent);
        connections.acquire().await.unwrap();
    }

    #[tokio::test]
    async fn connections_left_unused_are_closed_but_the_last_one_used() {
        let dir = tempfile::tempdir().unwrap();
        let timeout = std::time::Duration::from_millis(200);
        let connections =
            Connections::<sqlx::Sqlite>::held_with(file_options(&dir), 3, ACQUIRE_TIMEOUT, timeout);
        let Connections::Held(held) = &connections else {
            unreachable!()
        };
        let idle_count = || held.idle.lock().unwrap().len();
        let mut handles = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..3 {
            let mut handle = connections.acquire().await.unwrap();
            ids.push(connection_id(&mut handle).await);
            handles.push(handle);
        }
        // Handed back in order: the third comes back last.
        handles.clear();
        assert_eq!(idle_count(), 3);
        // A connection that keeps being used is not closed.
        for _ in 0..6 {
            tokio::time::sleep(timeout / 2).await;
            let mut handle = connections.acquire().await.unwrap();
            assert_eq!(connection_id(&mut handle).await, ids[2]);
        }
        assert_eq!(idle_count(), 1, "the two unused connections are still open");
        // Nor is the last one used, however long it stays unused.
        tokio::time::sleep(timeout * 3).await;
        assert_eq!(idle_count(), 1);
        let mut handle = connections.acquire().await.unwrap();
        assert_eq!(connection_id(&mut handle).await, ids[2]);
        // The two closed ones are replaced by new ones when needed.
        for _ in 0..2 {
            let mut another = connections.acquire().await.unwrap();
            assert!(!ids.contains(&connection_id(&mut another).await));
            handles.push(another);
        }
    }

    #[tokio::test]
    async fn only_connections_idle_past_the_timeout_expire_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let connections = Connections::<sqlx::Sqlite>::held(file_options(&dir), 4);
        let Connections::Held(held) = &connections else {
            unreachable!()
        };
        let handles: Vec<_> = futures::future::join_all((0..4).map(|_| connections.acquire()))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        drop(handles);
        // Back at minutes 0, 1, 2 and 3; the timeout is 2 minutes.
        let start = Instant::now();
        for (n, (_, since)) in held.idle.lock().unwrap().iter_mut().enumerate() {
            *since = start + Duration::from_secs(n as u64 * 60);
        }
        let at = |minutes: u64| start + Duration::from_secs(minutes * 60);
        let timeout = Duration::from_secs(120);
        assert_eq!(held.take_expired(at(1), timeout).len(), 0);
        assert_eq!(held.take_expired(at(3), timeout).len(), 2);
        assert_eq!(held.idle.lock().unwrap().len(), 2);
        // The last one back stays, however old.
        assert_eq!(held.take_expired(at(60), timeout).len(), 1);
        assert_eq!(held.take_expired(at(60), timeout).len(), 0);
        assert_eq!(held.idle.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_transaction_dropped_unfinished_leaves_nothing_for_the_next_caller() {
        let dir = tempfile::tempdir().unwrap();
        let connections = Connections::<sqlx::Sqlite>::held(file_options(&dir), 1);
        let mut handle = connections.acquire().await.unwrap();
        sqlx::query("CREATE TABLE t (n INTEGER)")
            .execute(&mut *handle)
            .await
            .unwrap();
        {
            let mut tx = handle.begin().await.unwrap();
            sqlx::query("INSERT INTO t (n) VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        drop(handle);
        let mut next = connections.acquire().await.unwrap();
        // Not inside the abandoned transaction: a new one can begin, and the row is gone.
        let mut tx = next.begin().await.unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(rows, 0);
        tx.commit().await.unwrap();
    }
}
