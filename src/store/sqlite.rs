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

use async_trait::async_trait;
use chrono::Utc;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{SqliteConnection, SqlitePool};

use super::known::Known;
use super::sql::{self, Arg, Conn};
use super::{Filter, Store, StoreError, StoreOptions, Written};
use crate::model::{
    ApiKey, Catalog, Course, EvaluationRecord, EvaluationSummary, Exam, IdempotencyState,
    NewEvaluation, QuestionPaper, Submission, SubmissionSummary, User,
};

/// SQLite behind the [`Store`] trait: the records in the database file given, memoised
/// results in a second file beside it ([`memo_path`]).
///
/// SQLite lets one writer at a time into a file. The memo's writes (16 rows per graded script,
/// then under random keys) used to share the one file with the evaluations, and an
/// evaluation's commit waited behind a batch of them: at 100 concurrent requests 6–14 % of
/// inserts took over 50 ms. In a file of their own they run beside the records' writes
/// instead of in front of them.
#[derive(Clone)]
pub struct SqliteStore {
    main: Database,
    memo: Arc<memo::Memo>,
    known: Arc<Known>,
}

#[cfg(test)]
mod known_tests;
mod memo;

/// One SQLite file. Reads share a pool of connections; every write goes through one
/// connection of its own. SQLite lets one writer in at a time anyway, and a writer that finds
/// the lock taken sleeps in the busy handler (1, 2, 5, 10… ms steps), which under load added
/// hundreds of milliseconds to requests (BENCHMARKS.md, "Evaluate"). Queueing for the one
/// writer connection instead hands the lock over the moment it is free, and keeps that
/// connection's page cache valid, since no other connection of the process writes.
#[derive(Clone)]
struct Database {
    pool: SqlitePool,
    writer: SqlitePool,
    _checkpointer: Arc<AbortOnDrop>,
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
        let memo = Arc::new(memo::Memo::new(memo, options.memo_max_entries));
        tokio::spawn({
            let memo = memo.clone();
            async move { memo.warm().await }
        });
        Ok(Self {
            main,
            memo,
            known: Arc::default(),
        })
    }
}

impl Database {
    async fn open(
        path: &str,
        migrator: &sqlx::migrate::Migrator,
        readers: u32,
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
        // No ping before a connection is handed out: a connection to a local file does not go
        // stale, and each ping is a round trip to the connection's own thread, a wake-up of
        // another thread per query (BENCHMARKS.md, step 17).
        let writer = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(1)
            // Checkpoints run beside the writer (see `checkpoint_in_background`), not inside
            // the commit that crosses SQLite's threshold, which held every queued write up
            // for the checkpoint's copying and fsync.
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        migrator.run(&writer).await?;
        let pool = SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(readers)
            .connect_with(options)
            .await?;
        let wal = std::path::PathBuf::from(format!("{path}-wal"));
        let checkpointer = AbortOnDrop(tokio::spawn(checkpoint_in_background(
            pool.clone(),
            writer.clone(),
            wal,
        )));
        Ok(Self {
            pool,
            writer,
            _checkpointer: Arc::new(checkpointer),
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
async fn checkpoint_in_background(pool: SqlitePool, writer: SqlitePool, wal: std::path::PathBuf) {
    let stat = |wal: &std::path::Path| std::fs::metadata(wal).ok();
    let mut checkpointed = None;
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            return;
        }
        let Some(meta) = stat(&wal) else { continue };
        let seen = meta.modified().ok();
        if seen == checkpointed {
            continue;
        }
        let on = if meta.len() > WAL_RESTART_BYTES {
            &writer
        } else {
            &pool
        };
        match sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(on)
            .await
        {
            Ok(_) => checkpointed = seen,
            Err(e) => tracing::warn!(error = %e, "SQLite checkpoint failed; retrying"),
        }
    }
}

/// Stops a background task when the last clone of its owner goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    args: Vec<Arg<'q>>,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    for arg in args {
        query = match arg {
            Arg::Text(value) => query.bind(value),
            Arg::Int(value) => query.bind(value),
            Arg::Real(value) => query.bind(value),
        };
    }
    query
}

#[async_trait]
impl Conn for SqliteConnection {
    type Row = SqliteRow;

    async fn execute(&mut self, sql: &str, args: Vec<Arg<'_>>) -> Result<u64, sqlx::Error> {
        Ok(bind_all(sqlx::query(sql), args)
            .execute(self)
            .await?
            .rows_affected())
    }

    async fn fetch_optional(
        &mut self,
        sql: &str,
        args: Vec<Arg<'_>>,
    ) -> Result<Option<SqliteRow>, sqlx::Error> {
        bind_all(sqlx::query(sql), args).fetch_optional(self).await
    }

    async fn fetch_all(
        &mut self,
        sql: &str,
        args: Vec<Arg<'_>>,
    ) -> Result<Vec<SqliteRow>, sqlx::Error> {
        bind_all(sqlx::query(sql), args).fetch_all(self).await
    }
}

/// Reads go to the pool of readers, writes to the one writer connection (see [`Database`]);
/// a write of several statements runs in a transaction on it.
#[async_trait]
impl Store for SqliteStore {
    async fn put_course(&self, course: &Course) -> Result<Written, StoreError> {
        sql::put_course(&mut *self.main.writer.acquire().await?, course).await
    }

    async fn get_course(&self, code: &str) -> Result<Option<Course>, StoreError> {
        sql::get_course(&mut *self.main.pool.acquire().await?, code).await
    }

    async fn list_courses(&self) -> Result<Vec<Course>, StoreError> {
        sql::list_courses(&mut *self.main.pool.acquire().await?).await
    }

    async fn put_exam(&self, exam: &Exam) -> Result<Written, StoreError> {
        let mut tx = self.main.writer.begin().await?;
        let written = sql::put_exam(&mut *tx, exam).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn get_exam(&self, code: &str) -> Result<Option<Exam>, StoreError> {
        if let Some(exam) = self.known.exam(code) {
            return Ok(Some(exam));
        }
        let exam = sql::get_exam(&mut *self.main.pool.acquire().await?, code).await?;
        if let Some(exam) = &exam {
            self.known.remember_exam(exam);
        }
        Ok(exam)
    }

    async fn list_exams(&self, course_code: Option<&str>) -> Result<Vec<Exam>, StoreError> {
        sql::list_exams(&mut *self.main.pool.acquire().await?, course_code).await
    }

    async fn put_question_paper(&self, paper: &QuestionPaper) -> Result<Written, StoreError> {
        let mut tx = self.main.writer.begin().await?;
        let written = sql::put_paper(&mut *tx, paper).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn get_question_paper(&self, code: &str) -> Result<Option<QuestionPaper>, StoreError> {
        if let Some(paper) = self.known.paper(code) {
            return Ok(Some(paper));
        }
        let paper = sql::get_paper(&mut *self.main.pool.acquire().await?, code).await?;
        if let Some(paper) = &paper {
            self.known.remember_paper(paper);
        }
        Ok(paper)
    }

    async fn list_question_papers(
        &self,
        exam_code: Option<&str>,
    ) -> Result<Vec<QuestionPaper>, StoreError> {
        sql::list_papers(&mut *self.main.pool.acquire().await?, exam_code).await
    }

    async fn put_user(&self, user: &User) -> Result<Written, StoreError> {
        sql::put_user(&mut *self.main.writer.acquire().await?, user).await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        sql::get_user(&mut *self.main.pool.acquire().await?, user_id).await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sql::list_users(&mut *self.main.pool.acquire().await?).await
    }

    async fn import_catalog(&self, catalog: &Catalog) -> Result<usize, StoreError> {
        let mut tx = self.main.writer.begin().await?;
        let created = sql::import_catalog(&mut *tx, catalog).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn insert_submission(
        &self,
        submission: &Submission,
        images_digest: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.main.writer.begin().await?;
        sql::insert_submission(&mut *tx, submission, images_digest).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_submission_by_images(
        &self,
        user_id: &str,
        question_paper_code: &str,
        images_digest: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        sql::latest_submission(
            &mut *conn,
            user_id,
            question_paper_code,
            Some(images_digest),
        )
        .await
    }

    async fn get_submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        sql::get_submission(&mut *self.main.pool.acquire().await?, id).await
    }

    async fn list_submissions(
        &self,
        filter: &Filter,
    ) -> Result<Vec<SubmissionSummary>, StoreError> {
        sql::list_submissions(&mut *self.main.pool.acquire().await?, filter).await
    }

    async fn latest_submission(
        &self,
        user_id: &str,
        question_paper_code: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        sql::latest_submission(&mut *conn, user_id, question_paper_code, None).await
    }

    async fn insert_evaluation(&self, e: NewEvaluation) -> Result<EvaluationRecord, StoreError> {
        let evaluation_id = uuid::Uuid::now_v7().to_string();
        let created_at = Utc::now();
        let register_user = !self.known.has_user(&e.user_id);
        let mut attempt = 0;
        // Another process storing an evaluation of the same paper may take the version number
        // first: then this one runs again with the next, so both are kept.
        let version = loop {
            attempt += 1;
            let result = async {
                let mut tx = self.main.writer.begin().await?;
                let version =
                    sql::insert_evaluation(&mut *tx, &e, &evaluation_id, created_at, register_user)
                        .await?;
                tx.commit().await?;
                Ok(version)
            }
            .await;
            match result {
                Err(err) if attempt < 5 && sql::is_unique_violation(&err) => continue,
                other => break other?,
            }
        };
        self.known.remember_user(&e.user_id);
        Ok(e.into_record(evaluation_id, version, created_at))
    }

    async fn get_evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError> {
        sql::get_evaluation(&mut *self.main.pool.acquire().await?, id).await
    }

    async fn list_evaluations(
        &self,
        filter: &Filter,
    ) -> Result<Vec<EvaluationSummary>, StoreError> {
        sql::list_evaluations(&mut *self.main.pool.acquire().await?, filter).await
    }

    async fn cache_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.memo.get(namespace, key).await
    }

    async fn cache_put(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.memo
            .put_many(namespace, &[(key.to_string(), value.to_string())])
            .await
    }

    async fn cache_put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError> {
        self.memo.put_many(namespace, entries).await
    }

    async fn create_api_key(&self, key: &ApiKey, key_hash: &str) -> Result<(), StoreError> {
        sql::create_api_key(&mut *self.main.writer.acquire().await?, key, key_hash).await
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        sql::find_api_key(&mut *self.main.pool.acquire().await?, key_hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        sql::list_api_keys(&mut *self.main.pool.acquire().await?).await
    }

    async fn revoke_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        sql::revoke_api_key(&mut *self.main.writer.acquire().await?, key_id).await
    }

    async fn idempotency_begin(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
        request_hash: &str,
        stale_after_secs: i64,
    ) -> Result<IdempotencyState, StoreError> {
        let mut tx = self.main.writer.begin().await?;
        let state = sql::idempotency_begin(
            &mut *tx,
            (scope, endpoint, key),
            request_hash,
            stale_after_secs,
        )
        .await?;
        tx.commit().await?;
        Ok(state)
    }

    async fn idempotency_complete(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.main.writer.acquire().await?;
        sql::idempotency_complete(&mut *conn, (scope, endpoint, key), status, body).await
    }

    async fn idempotency_release(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.main.writer.acquire().await?;
        sql::idempotency_release(&mut *conn, (scope, endpoint, key)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.main.pool).await?;
        sqlx::query("SELECT 1").execute(&self.memo.db.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EvaluationItem, ItemStatus};
    use crate::segment::QuestionNumber;

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
                stages: serde_json::json!([{ "role": "evaluator", "n": n }]),
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
        let mut memo_batch = store.memo.db.writer.begin().await.unwrap();
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
                .fetch_all(&store.main.pool)
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
