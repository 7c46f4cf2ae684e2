//! The PostgreSQL backend, for deployments where several Examiner processes (on one machine
//! or many) share one database. Chosen by a `postgres://` or `postgresql://` URL and migrated
//! on open; concurrent starts are safe, since migrations take an advisory lock.
//!
//! Records are written by the same SQL as SQLite's ([`super::sql`]). What differs:
//! - Every connection may write; PostgreSQL locks rows, not the database, so there is no
//!   single writer to queue for.
//! - The memo is an ordinary table keyed by (namespace, key), shared by every process: a reply
//!   one process paid for is served to all of them.
//! - Exams, papers and users already seen are still served from each process's memory
//!   ([`super::known`]): they never change once stored, whichever process stored them.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool};

use super::known::Known;
use super::sql::{self, args, Arg, Conn};
use super::{Filter, Store, StoreError, StoreOptions, Written};
use crate::model::{
    ApiKey, Catalog, Course, EvaluationRecord, EvaluationSummary, Exam, IdempotencyState,
    NewEvaluation, QuestionPaper, Submission, SubmissionSummary, User,
};

/// PostgreSQL behind the [`Store`] trait.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    known: Arc<Known>,
    memo_max_entries: i64,
}

/// Memo rows per multi-row statement (4 values each).
const MEMO_ROWS_PER_STATEMENT: usize = 1_000;

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database`, with
    /// any parameter PostgreSQL's clients take, e.g. `sslmode`) and applies migrations.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            known: Arc::default(),
            memo_max_entries: i64::try_from(options.memo_max_entries.max(1)).unwrap_or(i64::MAX),
        })
    }

    /// Deletes the oldest tenth of the memo once it holds more than its bound. Ids grow with
    /// every insert, so the rows past the bound are found from the ends of the key index, not
    /// by counting the table; ids a rolled-back insert skipped make it trim a little early.
    async fn trim_memo(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        let row = conn
            .fetch_optional(
                "SELECT MIN(id) AS oldest, MAX(id) AS newest FROM memo",
                args![],
            )
            .await?;
        let Some(row) = row else { return Ok(()) };
        let oldest: Option<i64> = sql::Columns::col(&row, "oldest")?;
        let newest: Option<i64> = sql::Columns::col(&row, "newest")?;
        let (Some(oldest), Some(newest)) = (oldest, newest) else {
            return Ok(());
        };
        if newest - oldest < self.memo_max_entries {
            return Ok(());
        }
        let keep = self.memo_max_entries - self.memo_max_entries / 10;
        conn.execute("DELETE FROM memo WHERE id <= $1", args![newest - keep])
            .await?;
        Ok(())
    }
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    args: Vec<Arg<'q>>,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
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
impl Conn for PgConnection {
    type Row = PgRow;

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
    ) -> Result<Option<PgRow>, sqlx::Error> {
        bind_all(sqlx::query(sql), args).fetch_optional(self).await
    }

    async fn fetch_all(
        &mut self,
        sql: &str,
        args: Vec<Arg<'_>>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        bind_all(sqlx::query(sql), args).fetch_all(self).await
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn put_course(&self, course: &Course) -> Result<Written, StoreError> {
        sql::put_course(&mut *self.pool.acquire().await?, course).await
    }

    async fn get_course(&self, code: &str) -> Result<Option<Course>, StoreError> {
        sql::get_course(&mut *self.pool.acquire().await?, code).await
    }

    async fn list_courses(&self) -> Result<Vec<Course>, StoreError> {
        sql::list_courses(&mut *self.pool.acquire().await?).await
    }

    async fn put_exam(&self, exam: &Exam) -> Result<Written, StoreError> {
        sql::put_exam(&mut *self.pool.acquire().await?, exam).await
    }

    async fn get_exam(&self, code: &str) -> Result<Option<Exam>, StoreError> {
        if let Some(exam) = self.known.exam(code) {
            return Ok(Some(exam));
        }
        let exam = sql::get_exam(&mut *self.pool.acquire().await?, code).await?;
        if let Some(exam) = &exam {
            self.known.remember_exam(exam);
        }
        Ok(exam)
    }

    async fn list_exams(&self, course_code: Option<&str>) -> Result<Vec<Exam>, StoreError> {
        sql::list_exams(&mut *self.pool.acquire().await?, course_code).await
    }

    async fn put_question_paper(&self, paper: &QuestionPaper) -> Result<Written, StoreError> {
        let mut tx = self.pool.begin().await?;
        let written = sql::put_paper(&mut *tx, paper).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn get_question_paper(&self, code: &str) -> Result<Option<QuestionPaper>, StoreError> {
        if let Some(paper) = self.known.paper(code) {
            return Ok(Some(paper));
        }
        // In one transaction so the paper and its questions are read as of one moment.
        let mut tx = self.pool.begin().await?;
        let paper = sql::get_paper(&mut *tx, code).await?;
        tx.commit().await?;
        if let Some(paper) = &paper {
            self.known.remember_paper(paper);
        }
        Ok(paper)
    }

    async fn list_question_papers(
        &self,
        exam_code: Option<&str>,
    ) -> Result<Vec<QuestionPaper>, StoreError> {
        sql::list_papers(&mut *self.pool.acquire().await?, exam_code).await
    }

    async fn put_user(&self, user: &User) -> Result<Written, StoreError> {
        sql::put_user(&mut *self.pool.acquire().await?, user).await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        sql::get_user(&mut *self.pool.acquire().await?, user_id).await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sql::list_users(&mut *self.pool.acquire().await?).await
    }

    async fn import_catalog(&self, catalog: &Catalog) -> Result<usize, StoreError> {
        let mut tx = self.pool.begin().await?;
        let created = sql::import_catalog(&mut *tx, catalog).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn insert_submission(
        &self,
        submission: &Submission,
        images_digest: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
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
        let mut tx = self.pool.begin().await?;
        let found =
            sql::latest_submission(&mut *tx, user_id, question_paper_code, Some(images_digest))
                .await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn get_submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        sql::get_submission(&mut *self.pool.acquire().await?, id).await
    }

    async fn list_submissions(
        &self,
        filter: &Filter,
    ) -> Result<Vec<SubmissionSummary>, StoreError> {
        sql::list_submissions(&mut *self.pool.acquire().await?, filter).await
    }

    async fn latest_submission(
        &self,
        user_id: &str,
        question_paper_code: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let found = sql::latest_submission(&mut *tx, user_id, question_paper_code, None).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn insert_evaluation(&self, e: NewEvaluation) -> Result<EvaluationRecord, StoreError> {
        let evaluation_id = uuid::Uuid::now_v7().to_string();
        let created_at = Utc::now();
        let register_user = !self.known.has_user(&e.user_id);
        // Two processes storing an evaluation of the same paper may compute the same version;
        // the second to commit fails on the unique (user, paper, version) and runs again.
        let mut attempt = 0;
        let version = loop {
            attempt += 1;
            let result = async {
                let mut tx = self.pool.begin().await?;
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
        sql::get_evaluation(&mut *self.pool.acquire().await?, id).await
    }

    async fn list_evaluations(
        &self,
        filter: &Filter,
    ) -> Result<Vec<EvaluationSummary>, StoreError> {
        sql::list_evaluations(&mut *self.pool.acquire().await?, filter).await
    }

    async fn cache_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .pool
            .acquire()
            .await?
            .fetch_optional(
                "SELECT value FROM memo WHERE namespace = $1 AND key = $2",
                args![namespace, key],
            )
            .await?;
        row.map(|row| sql::Columns::col(&row, "value")).transpose()
    }

    async fn cache_put(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.cache_put_many(namespace, &[(key.to_string(), value.to_string())])
            .await
    }

    /// A later entry under a key replaces an earlier one. Entries go in key order, so two
    /// processes writing overlapping batches lock their rows in the same order and never
    /// deadlock.
    async fn cache_put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        // One row per key (PostgreSQL refuses a statement that updates a row twice), the last
        // value given winning.
        let mut latest = std::collections::BTreeMap::new();
        for (key, value) in entries {
            latest.insert(key.as_str(), value.as_str());
        }
        let latest: Vec<(&str, &str)> = latest.into_iter().collect();
        let created_at = sql::now();
        let mut tx = self.pool.begin().await?;
        for chunk in latest.chunks(MEMO_ROWS_PER_STATEMENT) {
            let mut values = Vec::with_capacity(chunk.len() * 4);
            for (key, value) in chunk {
                values.extend(args![namespace, *key, *value, &created_at]);
            }
            Conn::execute(
                &mut *tx,
                &format!(
                    "INSERT INTO memo (namespace, key, value, created_at) VALUES {}
                     ON CONFLICT (namespace, key)
                     DO UPDATE SET value = EXCLUDED.value, created_at = EXCLUDED.created_at",
                    sql::placeholders(chunk.len(), 4)
                ),
                values,
            )
            .await?;
        }
        self.trim_memo(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn create_api_key(&self, key: &ApiKey, key_hash: &str) -> Result<(), StoreError> {
        sql::create_api_key(&mut *self.pool.acquire().await?, key, key_hash).await
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        sql::find_api_key(&mut *self.pool.acquire().await?, key_hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        sql::list_api_keys(&mut *self.pool.acquire().await?).await
    }

    async fn revoke_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        sql::revoke_api_key(&mut *self.pool.acquire().await?, key_id).await
    }

    async fn idempotency_begin(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
        request_hash: &str,
        stale_after_secs: i64,
    ) -> Result<IdempotencyState, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        let mut conn = self.pool.acquire().await?;
        sql::idempotency_complete(&mut *conn, (scope, endpoint, key), status, body).await
    }

    async fn idempotency_release(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        sql::idempotency_release(&mut *conn, (scope, endpoint, key)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
