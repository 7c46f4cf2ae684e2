//! The embedded SQLite backend: two database files in WAL mode, migrated on open. The main
//! one (`examiner.db`) holds the records; `examiner-memo.db` holds memoised results, whose
//! writes would otherwise queue in front of the records' (BENCHMARKS.md, "Evaluate").
//!
//! Writes that must be atomic run in one transaction that starts with a write, so SQLite
//! takes its write lock up front and concurrent writers queue on the busy timeout instead
//! of failing on a lock upgrade.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode};
use sqlx::SqliteConnection;

use super::connections::Connections;
use super::sql;
use super::sql_store::{AbortOnDrop, SqlStore};
use super::{StoreError, StoreOptions};

/// SQLite behind the [`Store`](super::Store) trait: the records in the database file given,
/// memoised results in a second file beside it ([`memo_path`]), as an append-only log
/// ([`memo::MemoLog`]).
///
/// SQLite lets one writer at a time into a file. The memo's writes (16 rows per graded script,
/// then under random keys) used to share the one file with the evaluations, and an
/// evaluation's commit waited behind a batch of them: at 100 concurrent requests 6–14 % of
/// inserts took over 50 ms. In a file of their own they run beside the records' writes
/// instead of in front of them.
pub type SqliteStore = SqlStore<sqlx::Sqlite, memo::MemoLog>;

#[cfg(test)]
mod known_tests;
mod memo;

/// One SQLite file. Reads share a few connections; every write goes through one connection
/// of its own. SQLite lets one writer in at a time anyway, and a writer that finds the lock
/// taken sleeps in the busy handler (1, 2, 5, 10… ms steps), which under load added hundreds
/// of milliseconds to requests (BENCHMARKS.md, "Evaluate"). Queueing for the one writer
/// connection instead hands the lock over the moment it is free, and keeps that connection's
/// page cache valid, since no other connection of the process writes. The store holds these
/// connections itself rather than in sqlx's pool ([`Connections`]).
#[derive(Clone)]
struct Database {
    readers: Connections<sqlx::Sqlite>,
    writer: Connections<sqlx::Sqlite>,
    /// Runs checkpoints while any clone of the database is alive.
    checkpointer: Arc<AbortOnDrop>,
}

/// The memo's file beside the main one: `examiner.db` → `examiner-memo.db`.
pub fn memo_path(path: &str) -> String {
    match path.strip_suffix(".db") {
        Some(stem) => format!("{stem}-memo.db"),
        None => format!("{path}-memo"),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path` and the memo's beside it
    /// ([`memo_path`]), and applies migrations.
    pub async fn open(path: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let main = Database::open(path, &sqlx::migrate!("./migrations/sqlite"), 8).await?;
        let memo = Database::open(
            &memo_path(path),
            &sqlx::migrate!("./migrations/sqlite-memo"),
            4,
        )
        .await?;
        let memo = Arc::new(memo::MemoLog::new(memo, options.memo_max_entries));
        tokio::spawn({
            let memo = memo.clone();
            async move { memo.warm().await }
        });
        Ok(SqlStore::new(
            main.readers,
            main.writer,
            memo,
            Some(main.checkpointer),
        ))
    }
}

impl Database {
    async fn open(
        path: &str,
        migrator: &sqlx::migrate::Migrator,
        reader_count: usize,
    ) -> Result<Self, StoreError> {
        if let Some(parent) = std::path::Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    StoreError::Corrupt(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Reads copy pages in with pread(2) rather than mapping the file. The file grows
            // under steady writes, so readers kept remapping it, and each unmap flushed the TLBs
            // of both cores: 4% of Examiner's samples at c100, and 17% more CPU on the SQLite
            // threads than without the map (BENCHMARKS.md, step 13).
            .pragma("mmap_size", "0")
            .pragma("journal_size_limit", WAL_RESTART_BYTES.to_string());
        // Checkpoints run beside the writer (see `checkpoint_in_background`), not inside the
        // commit that crosses SQLite's threshold, which held every queued write up for the
        // checkpoint's copying and fsync.
        let writer = Connections::held(options.clone().pragma("wal_autocheckpoint", "0"), 1);
        migrator.run(&mut *writer.acquire().await?).await?;
        let readers = Connections::held(options, reader_count);
        let wal = std::path::PathBuf::from(format!("{path}-wal"));
        let checkpointer = AbortOnDrop(tokio::spawn(checkpoint_in_background(
            readers.clone(),
            writer.clone(),
            wal,
        )));
        Ok(Self {
            readers,
            writer,
            checkpointer: Arc::new(checkpointer),
        })
    }
}

/// How often the write-ahead log is looked at for new writes to copy into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Past this size the log is made to start over (see `checkpoint_in_background`); a log
/// that started over is also cut back to this size.
const WAL_RESTART_BYTES: u64 = 32 << 20;

/// Copies committed writes from the write-ahead log into the database file, off the writer's
/// path: a passive checkpoint on a reading connection never waits for the writer, so writes
/// go on meanwhile. It runs only when the log changed (one `stat` a tick otherwise, so an
/// idle server stays idle).
///
/// SQLite starts the log over only after a checkpoint that copied all of it, which a
/// checkpoint racing a steady writer never does: the log grew by gigabytes under load. So
/// once it passes [`WAL_RESTART_BYTES`], one more passive checkpoint runs on the writer
/// connection, where no write can slip in; most frames are already copied, so it is short,
/// and the next write starts the log over.
async fn checkpoint_in_background(
    readers: Connections<sqlx::Sqlite>,
    writer: Connections<sqlx::Sqlite>,
    wal: std::path::PathBuf,
) {
    let stat = |wal: &std::path::Path| std::fs::metadata(wal).ok();
    let mut checkpointed = None;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(meta) = stat(&wal) else { continue };
        let seen = meta.modified().ok();
        if seen == checkpointed {
            continue;
        }
        let on = if meta.len() > WAL_RESTART_BYTES {
            &writer
        } else {
            &readers
        };
        let checkpoint = async {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                .execute(&mut *on.acquire().await?)
                .await
        };
        match checkpoint.await {
            Ok(_) => checkpointed = seen,
            Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed; retrying"),
        }
    }
}

sql::impl_conn!(sqlx::Sqlite, SqliteConnection, sql::Placeholder::Anonymous, scripts: true);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EvaluationItem, ItemStatus, NewEvaluation};
    use crate::segment::QuestionNumber;
    use crate::store::Store;
    use chrono::SubsecRound;
    use sqlx::Connection;

    async fn open(dir: &tempfile::TempDir) -> (SqliteStore, std::path::PathBuf) {
        let path = dir.path().join("examiner.db");
        let store = SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default())
            .await
            .unwrap();
        (store, path)
    }

    fn evaluation(items: usize) -> NewEvaluation {
        let items = (0..items)
            .map(|n| EvaluationItem {
                question_number: QuestionNumber::parse(&format!("{}", n + 1)).unwrap(),
                question_text: None,
                student_answer: format!("answer {n} {}", "x".repeat(300)),
                standard_answer: "the standard answer".into(),
                total_marks: 5.0,
                marks_awarded: Some((n % 6) as f64 * 0.5),
                llm_evaluation: format!("feedback {n}"),
                reasoning: Some("reasoning".into()),
                status: ItemStatus::Graded,
                error: None,
                flags: vec![format!("flag-{n}")],
                final_stage: Some("evaluator".into()),
                stages: serde_json::json!([{ "role": "evaluator", "n": n }]).into(),
            })
            .collect();
        NewEvaluation {
            user_id: "U1".into(),
            course_code: "C".into(),
            exam_code: "E".into(),
            question_paper_code: "QP".into(),
            submission_id: None,
            grader: "llm".into(),
            total_exam_marks: 5.0,
            final_score: 1.0,
            status: "success".into(),
            items,
            replaces_version: None,
        }
    }

    #[tokio::test]
    async fn items_beyond_one_statement_are_stored_in_order_with_versions_counting_up() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(&dir).await;
        let big = evaluation(sql::ITEM_ROWS_PER_STATEMENT + 7);
        let first = store.insert_evaluation(big.clone()).await.unwrap();
        let second = store.insert_evaluation(evaluation(2)).await.unwrap();
        assert_eq!((first.version, second.version), (1, 2));
        let read = store
            .get_evaluation(&first.evaluation_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read.items, big.items);
    }

    #[tokio::test]
    async fn an_evaluation_is_one_script_and_a_failed_script_leaves_no_transaction_open() {
        use sql::ScriptOutcome::{Committed, RolledBack};
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(&dir).await;
        let count = |table: &'static str| {
            let reader = store.reader.clone();
            async move {
                sqlx::query_scalar::<_, i64>(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&mut *reader.acquire().await.unwrap())
                    .await
                    .unwrap()
            }
        };
        let mut conn = store.writer.acquire().await.unwrap();
        let now = chrono::Utc::now().trunc_subsecs(6);
        let first = evaluation(sql::ITEM_ROWS_PER_STATEMENT + 2);
        let second = evaluation(3);
        assert_eq!(
            sql::insert_evaluation_script(&mut *conn, &first, "E-1", now, true)
                .await
                .unwrap(),
            Committed(1)
        );
        assert_eq!(
            sql::insert_evaluation_script(&mut *conn, &second, "E-2", now, false)
                .await
                .unwrap(),
            Committed(2)
        );
        // A user not stored: the items' foreign key stops the script before its COMMIT.
        let mut stranger = evaluation(3);
        stranger.user_id = "U9".into();
        assert_eq!(
            sql::insert_evaluation_script(&mut *conn, &stranger, "E-3", now, false)
                .await
                .unwrap(),
            RolledBack
        );
        // An id already taken fails at the evaluation's row.
        assert_eq!(
            sql::insert_evaluation_script(&mut *conn, &second, "E-1", now, false)
                .await
                .unwrap(),
            RolledBack
        );
        // No transaction is left on the connection: a new one begins.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
        drop(conn);
        assert_eq!(count("evaluations").await, 2);
        assert_eq!(
            count("evaluation_items").await,
            (first.items.len() + second.items.len()) as i64
        );
        assert_eq!(count("users").await, 1);
        for (id, version, stored) in [("E-1", 1, &first), ("E-2", 2, &second)] {
            let read = store.get_evaluation(id).await.unwrap().unwrap();
            assert_eq!(
                read,
                stored.clone().into_record(id.into(), version, now),
                "{id}"
            );
        }
        // Through the store, which sends the script: the next version, and the remembered
        // user found erased behind its back goes statement by statement and is registered
        // again.
        let next_version = || async {
            store
                .insert_evaluation(evaluation(2))
                .await
                .unwrap()
                .version
        };
        assert_eq!(next_version().await, 3);
        sqlx::query("PRAGMA foreign_keys = OFF; DELETE FROM evaluation_items; DELETE FROM evaluations; DELETE FROM users; PRAGMA foreign_keys = ON")
            .execute(&mut *store.writer.acquire().await.unwrap())
            .await
            .unwrap();
        assert_eq!(next_version().await, 1);
        assert_eq!(count("users").await, 1);
    }

    #[test]
    fn the_memo_file_sits_beside_the_main_one() {
        assert_eq!(memo_path("/data/examiner.db"), "/data/examiner-memo.db");
        assert_eq!(memo_path("/data/store"), "/data/store-memo");
    }

    #[tokio::test]
    async fn an_evaluation_is_stored_while_the_memo_is_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open(&dir).await;
        // A memo batch in the middle of its transaction holds the memo's writer.
        let mut memo_writer = store.memo.db.writer.acquire().await.unwrap();
        let mut memo_batch = memo_writer.begin().await.unwrap();
        sqlx::query(
            "INSERT INTO memo_log (namespace, key, value, created_at) VALUES ('ns', 'k', 'v', 'now')",
        )
        .execute(&mut *memo_batch)
        .await
        .unwrap();
        let stored = tokio::time::timeout(
            Duration::from_secs(5),
            store.insert_evaluation(evaluation(3)),
        )
        .await
        .expect("the evaluation's insert waited for the memo's writer")
        .unwrap();
        assert_eq!(stored.version, 1);
        memo_batch.commit().await.unwrap();
        let memo_file = memo_path(path.to_str().unwrap());
        assert!(std::path::Path::new(&memo_file).is_file());
        // The main file no longer has a memo table.
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE name = 'cache_entries'")
                .fetch_all(&mut *store.reader.acquire().await.unwrap())
                .await
                .unwrap();
        assert!(tables.is_empty());
    }

    #[tokio::test]
    async fn committed_writes_reach_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open(&dir).await;
        let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let before = size(&path);
        for _ in 0..4 {
            store.insert_evaluation(evaluation(50)).await.unwrap();
        }
        // The writer never checkpoints, so the file grows only if the background task does.
        let mut grown = false;
        for _ in 0..100 {
            if size(&path) > before + 50_000 {
                grown = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(grown, "the database file stayed at {} bytes", size(&path));
    }
}
