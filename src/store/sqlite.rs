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
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::{Filter, Store, StoreError, StoreOptions, Written};
use crate::model::{
    ApiKey, Catalog, Course, EvaluationItem, EvaluationRecord, EvaluationSummary, Exam,
    IdempotencyState, ItemStatus, NewEvaluation, Question, QuestionPaper, Role, StoredQaPair,
    Submission, SubmissionImage, SubmissionSummary, User,
};
use crate::segment::QuestionNumber;

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
    known: Arc<known::Known>,
}

mod known;
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

/// Rows per multi-row INSERT of evaluation items (14 bound values each).
const ITEM_ROWS_PER_STATEMENT: usize = 500;

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {text:?}: {e}")))
}

fn parse_number(text: &str) -> Result<QuestionNumber, StoreError> {
    QuestionNumber::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("bad question number {text:?}")))
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Inserts are the first statement of a write so SQLite takes its write lock up front; a
/// dangling link then shows up as a foreign-key failure, reported as the missing record.
fn missing_link(error: sqlx::Error, kind: &'static str, key: &str) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::MissingLink {
            kind,
            key: key.to_string(),
        },
        _ => StoreError::Database(error),
    }
}

/// Compares a stored record with the one being written.
fn settle<T: PartialEq>(
    existing: Option<T>,
    wanted: &T,
    kind: &'static str,
    key: &str,
) -> Result<Written, StoreError> {
    match existing {
        Some(existing) if existing == *wanted => Ok(Written::Unchanged),
        Some(_) => Err(StoreError::Conflict {
            kind,
            key: key.to_string(),
        }),
        None => Err(StoreError::Corrupt(format!(
            "{kind} {key:?} neither inserted nor found"
        ))),
    }
}

fn course_from(row: &SqliteRow) -> Result<Course, StoreError> {
    Ok(Course {
        course_code: row.try_get("course_code")?,
        course_name: row.try_get("course_name")?,
        description: row.try_get("description")?,
    })
}

fn exam_from(row: &SqliteRow) -> Result<Exam, StoreError> {
    Ok(Exam {
        exam_code: row.try_get("exam_code")?,
        course_code: row.try_get("course_code")?,
        exam_name: row.try_get("exam_name")?,
        total_exam_marks: row.try_get("total_exam_marks")?,
    })
}

fn user_from(row: &SqliteRow) -> Result<User, StoreError> {
    Ok(User {
        user_id: row.try_get("user_id")?,
        name: row.try_get("name")?,
        email: row.try_get("email")?,
    })
}

async fn put_course_in(conn: &mut SqliteConnection, c: &Course) -> Result<Written, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO courses (course_code, course_name, description, created_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (course_code) DO NOTHING",
    )
    .bind(&c.course_code)
    .bind(&c.course_name)
    .bind(&c.description)
    .bind(now())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Written::Created);
    }
    let existing = get_course_in(conn, &c.course_code).await?;
    settle(existing, c, "course", &c.course_code)
}

async fn get_course_in(
    conn: &mut SqliteConnection,
    code: &str,
) -> Result<Option<Course>, StoreError> {
    sqlx::query("SELECT course_code, course_name, description FROM courses WHERE course_code = $1")
        .bind(code)
        .fetch_optional(conn)
        .await?
        .map(|row| course_from(&row))
        .transpose()
}

async fn put_exam_in(conn: &mut SqliteConnection, e: &Exam) -> Result<Written, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO exams (exam_code, course_code, exam_name, total_exam_marks, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (exam_code) DO NOTHING",
    )
    .bind(&e.exam_code)
    .bind(&e.course_code)
    .bind(&e.exam_name)
    .bind(e.total_exam_marks)
    .bind(now())
    .execute(&mut *conn)
    .await
    .map_err(|err| missing_link(err, "course", &e.course_code))?
    .rows_affected();
    if inserted == 1 {
        return Ok(Written::Created);
    }
    let existing = get_exam_in(conn, &e.exam_code).await?;
    settle(existing, e, "exam", &e.exam_code)
}

async fn get_exam_in(conn: &mut SqliteConnection, code: &str) -> Result<Option<Exam>, StoreError> {
    sqlx::query(
        "SELECT exam_code, course_code, exam_name, total_exam_marks FROM exams WHERE exam_code = $1",
    )
    .bind(code)
    .fetch_optional(conn)
    .await?
    .map(|row| exam_from(&row))
    .transpose()
}

async fn put_paper_in(
    conn: &mut SqliteConnection,
    p: &QuestionPaper,
) -> Result<Written, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO question_papers (question_paper_code, exam_code, title, marks_step, created_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (question_paper_code) DO NOTHING",
    )
    .bind(&p.question_paper_code)
    .bind(&p.exam_code)
    .bind(&p.title)
    .bind(p.marks_step)
    .bind(now())
    .execute(&mut *conn)
    .await
    .map_err(|err| missing_link(err, "exam", &p.exam_code))?
    .rows_affected();
    if inserted == 0 {
        let existing = get_paper_in(conn, &p.question_paper_code).await?;
        return settle(existing, p, "question paper", &p.question_paper_code);
    }
    for (position, q) in p.questions.iter().enumerate() {
        sqlx::query(
            "INSERT INTO questions (question_paper_code, position, question_number, question_text,
                                    standard_answer, total_marks)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&p.question_paper_code)
        .bind(position as i64)
        .bind(q.question_number.as_str())
        .bind(&q.question_text)
        .bind(&q.standard_answer)
        .bind(q.total_marks)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Written::Created)
}

async fn get_paper_in(
    conn: &mut SqliteConnection,
    code: &str,
) -> Result<Option<QuestionPaper>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT question_paper_code, exam_code, title, marks_step
         FROM question_papers WHERE question_paper_code = $1",
    )
    .bind(code)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT question_number, question_text, standard_answer, total_marks
         FROM questions WHERE question_paper_code = $1 ORDER BY position",
    )
    .bind(code)
    .fetch_all(&mut *conn)
    .await?;
    let questions = rows
        .iter()
        .map(|r| {
            Ok(Question {
                question_number: parse_number(r.try_get("question_number")?)?,
                question_text: r.try_get("question_text")?,
                standard_answer: r.try_get("standard_answer")?,
                total_marks: r.try_get("total_marks")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(QuestionPaper {
        question_paper_code: row.try_get("question_paper_code")?,
        exam_code: row.try_get("exam_code")?,
        title: row.try_get("title")?,
        marks_step: row.try_get("marks_step")?,
        questions,
    }))
}

async fn put_user_in(conn: &mut SqliteConnection, u: &User) -> Result<Written, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO users (user_id, name, email, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(&u.user_id)
    .bind(&u.name)
    .bind(&u.email)
    .bind(now())
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Written::Created);
    }
    let existing = get_user_in(conn, &u.user_id).await?;
    settle(existing, u, "user", &u.user_id)
}

async fn get_user_in(conn: &mut SqliteConnection, id: &str) -> Result<Option<User>, StoreError> {
    sqlx::query("SELECT user_id, name, email FROM users WHERE user_id = $1")
        .bind(id)
        .fetch_optional(conn)
        .await?
        .map(|row| user_from(&row))
        .transpose()
}

async fn get_submission_in(
    conn: &mut SqliteConnection,
    id: &str,
) -> Result<Option<Submission>, StoreError> {
    let Some(row) = sqlx::query(
        "SELECT submission_id, user_id, course_code, exam_code, question_paper_code,
                extracted_text, unassigned_text, created_at
         FROM submissions WHERE submission_id = $1",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let images = sqlx::query(
        "SELECT image_id, image_url, content_sha256, media_type, byte_size, width, height,
                ocr_text, ocr_confidence, ocr_engine
         FROM submission_images WHERE submission_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(SubmissionImage {
            image_id: r.try_get("image_id")?,
            image_url: r.try_get("image_url")?,
            content_sha256: r.try_get("content_sha256")?,
            media_type: r.try_get("media_type")?,
            byte_size: r.try_get("byte_size")?,
            width: r.try_get("width")?,
            height: r.try_get("height")?,
            ocr_text: r.try_get("ocr_text")?,
            ocr_confidence: r.try_get("ocr_confidence")?,
            ocr_engine: r.try_get("ocr_engine")?,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    let qa_pairs = sqlx::query(
        "SELECT question_number, answer, ocr_confidence, ocr_engine, low_ocr_confidence
         FROM submission_answers WHERE submission_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(StoredQaPair {
            question_number: parse_number(r.try_get("question_number")?)?,
            answer: r.try_get("answer")?,
            ocr_confidence: r.try_get("ocr_confidence")?,
            ocr_engine: r.try_get("ocr_engine")?,
            low_ocr_confidence: r.try_get::<i64, _>("low_ocr_confidence")? != 0,
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Submission {
        submission_id: row.try_get("submission_id")?,
        user_id: row.try_get("user_id")?,
        course_code: row.try_get("course_code")?,
        exam_code: row.try_get("exam_code")?,
        question_paper_code: row.try_get("question_paper_code")?,
        images,
        extracted_text: row.try_get("extracted_text")?,
        unassigned_text: row.try_get("unassigned_text")?,
        qa_pairs,
        created_at: parse_time(row.try_get("created_at")?)?,
    }))
}

fn item_from(row: &SqliteRow) -> Result<EvaluationItem, StoreError> {
    let flags: String = row.try_get("flags")?;
    let stages: String = row.try_get("stages")?;
    let status: String = row.try_get("status")?;
    Ok(EvaluationItem {
        question_number: parse_number(row.try_get("question_number")?)?,
        student_answer: row.try_get("student_answer")?,
        standard_answer: row.try_get("standard_answer")?,
        total_marks: row.try_get("total_marks")?,
        marks_awarded: row.try_get("marks_awarded")?,
        llm_evaluation: row.try_get("llm_evaluation")?,
        reasoning: row.try_get("reasoning")?,
        status: serde_json::from_value(serde_json::Value::String(status.clone()))
            .map_err(|_| StoreError::Corrupt(format!("bad item status {status:?}")))?,
        error: row.try_get("error")?,
        flags: serde_json::from_str(&flags)
            .map_err(|e| StoreError::Corrupt(format!("bad flags: {e}")))?,
        final_stage: row.try_get("final_stage")?,
        stages: serde_json::from_str(&stages)
            .map_err(|e| StoreError::Corrupt(format!("bad stages: {e}")))?,
    })
}

fn api_key_from(row: &SqliteRow) -> Result<ApiKey, StoreError> {
    let role: String = row.try_get("role")?;
    let revoked_at: Option<String> = row.try_get("revoked_at")?;
    Ok(ApiKey {
        key_id: row.try_get("key_id")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("bad role {role:?}")))?,
        user_id: row.try_get("user_id")?,
        label: row.try_get("label")?,
        created_at: parse_time(row.try_get("created_at")?)?,
        revoked: revoked_at.is_some(),
    })
}

fn status_text(status: ItemStatus) -> &'static str {
    match status {
        ItemStatus::Graded => "graded",
        ItemStatus::NotAnswered => "not_answered",
        ItemStatus::Failed => "failed",
    }
}

const EVALUATION_COLUMNS: &str = "evaluation_id, version, user_id, course_code, exam_code,
    question_paper_code, submission_id, grader, total_exam_marks, final_score, status, created_at";

#[async_trait]
impl Store for SqliteStore {
    async fn put_course(&self, course: &Course) -> Result<Written, StoreError> {
        let mut conn = self.main.writer.acquire().await?;
        put_course_in(&mut conn, course).await
    }

    async fn get_course(&self, code: &str) -> Result<Option<Course>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        get_course_in(&mut conn, code).await
    }

    async fn list_courses(&self) -> Result<Vec<Course>, StoreError> {
        sqlx::query(
            "SELECT course_code, course_name, description FROM courses ORDER BY course_code",
        )
        .fetch_all(&self.main.pool)
        .await?
        .iter()
        .map(course_from)
        .collect()
    }

    async fn put_exam(&self, exam: &Exam) -> Result<Written, StoreError> {
        let mut tx = self.main.writer.begin().await?;
        let written = put_exam_in(&mut tx, exam).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn get_exam(&self, code: &str) -> Result<Option<Exam>, StoreError> {
        if let Some(exam) = self.known.exam(code) {
            return Ok(Some(exam));
        }
        let mut conn = self.main.pool.acquire().await?;
        let exam = get_exam_in(&mut conn, code).await?;
        if let Some(exam) = &exam {
            self.known.remember_exam(exam);
        }
        Ok(exam)
    }

    async fn list_exams(&self, course_code: Option<&str>) -> Result<Vec<Exam>, StoreError> {
        sqlx::query(
            "SELECT exam_code, course_code, exam_name, total_exam_marks FROM exams
             WHERE $1 IS NULL OR course_code = $1 ORDER BY exam_code",
        )
        .bind(course_code)
        .fetch_all(&self.main.pool)
        .await?
        .iter()
        .map(exam_from)
        .collect()
    }

    async fn put_question_paper(&self, paper: &QuestionPaper) -> Result<Written, StoreError> {
        let mut tx = self.main.writer.begin().await?;
        let written = put_paper_in(&mut tx, paper).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn get_question_paper(&self, code: &str) -> Result<Option<QuestionPaper>, StoreError> {
        if let Some(paper) = self.known.paper(code) {
            return Ok(Some(paper));
        }
        let mut conn = self.main.pool.acquire().await?;
        let paper = get_paper_in(&mut conn, code).await?;
        if let Some(paper) = &paper {
            self.known.remember_paper(paper);
        }
        Ok(paper)
    }

    async fn list_question_papers(
        &self,
        exam_code: Option<&str>,
    ) -> Result<Vec<QuestionPaper>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        let codes: Vec<String> = sqlx::query_scalar(
            "SELECT question_paper_code FROM question_papers
             WHERE $1 IS NULL OR exam_code = $1 ORDER BY question_paper_code",
        )
        .bind(exam_code)
        .fetch_all(&mut *conn)
        .await?;
        let mut papers = Vec::with_capacity(codes.len());
        for code in codes {
            if let Some(paper) = get_paper_in(&mut conn, &code).await? {
                papers.push(paper);
            }
        }
        Ok(papers)
    }

    async fn put_user(&self, user: &User) -> Result<Written, StoreError> {
        let mut conn = self.main.writer.acquire().await?;
        put_user_in(&mut conn, user).await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        get_user_in(&mut conn, user_id).await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sqlx::query("SELECT user_id, name, email FROM users ORDER BY user_id")
            .fetch_all(&self.main.pool)
            .await?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn import_catalog(&self, catalog: &Catalog) -> Result<usize, StoreError> {
        let mut tx = self.main.writer.begin().await?;
        let mut created = 0;
        for course in &catalog.courses {
            created += usize::from(put_course_in(&mut tx, course).await? == Written::Created);
        }
        for exam in &catalog.exams {
            created += usize::from(put_exam_in(&mut tx, exam).await? == Written::Created);
        }
        for paper in &catalog.question_papers {
            created += usize::from(put_paper_in(&mut tx, paper).await? == Written::Created);
        }
        for user in &catalog.users {
            created += usize::from(put_user_in(&mut tx, user).await? == Written::Created);
        }
        tx.commit().await?;
        Ok(created)
    }

    async fn insert_submission(
        &self,
        s: &Submission,
        images_digest: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.main.writer.begin().await?;
        // Registering the user first also takes the write lock for the whole transaction.
        sqlx::query(
            "INSERT INTO users (user_id, created_at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(&s.user_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO submissions (submission_id, user_id, course_code, exam_code,
                 question_paper_code, extracted_text, unassigned_text, created_at, images_digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&s.submission_id)
        .bind(&s.user_id)
        .bind(&s.course_code)
        .bind(&s.exam_code)
        .bind(&s.question_paper_code)
        .bind(&s.extracted_text)
        .bind(&s.unassigned_text)
        .bind(
            s.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        )
        .bind(images_digest)
        .execute(&mut *tx)
        .await?;
        for (position, image) in s.images.iter().enumerate() {
            sqlx::query(
                "INSERT INTO submission_images (submission_id, position, image_id, image_url,
                     content_sha256, media_type, byte_size, width, height, ocr_text,
                     ocr_confidence, ocr_engine)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&s.submission_id)
            .bind(position as i64)
            .bind(&image.image_id)
            .bind(&image.image_url)
            .bind(&image.content_sha256)
            .bind(&image.media_type)
            .bind(image.byte_size)
            .bind(image.width)
            .bind(image.height)
            .bind(&image.ocr_text)
            .bind(image.ocr_confidence)
            .bind(&image.ocr_engine)
            .execute(&mut *tx)
            .await?;
        }
        for (position, pair) in s.qa_pairs.iter().enumerate() {
            sqlx::query(
                "INSERT INTO submission_answers (submission_id, position, question_number, answer,
                     ocr_confidence, ocr_engine, low_ocr_confidence)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&s.submission_id)
            .bind(position as i64)
            .bind(pair.question_number.as_str())
            .bind(&pair.answer)
            .bind(pair.ocr_confidence)
            .bind(&pair.ocr_engine)
            .bind(i64::from(pair.low_ocr_confidence))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn get_submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        get_submission_in(&mut conn, id).await
    }

    async fn list_submissions(
        &self,
        filter: &Filter,
    ) -> Result<Vec<SubmissionSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.submission_id, s.user_id, s.course_code, s.exam_code,
                    s.question_paper_code, s.created_at,
                    (SELECT COUNT(*) FROM submission_images i
                      WHERE i.submission_id = s.submission_id) AS image_count,
                    (SELECT COUNT(*) FROM submission_answers a
                      WHERE a.submission_id = s.submission_id) AS question_count
             FROM submissions s
             WHERE ($1 IS NULL OR s.user_id = $1) AND ($2 IS NULL OR s.question_paper_code = $2)
             ORDER BY s.created_at DESC, s.submission_id DESC
             LIMIT $3",
        )
        .bind(&filter.user_id)
        .bind(&filter.question_paper_code)
        .bind(filter.limit)
        .fetch_all(&self.main.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SubmissionSummary {
                    submission_id: r.try_get("submission_id")?,
                    user_id: r.try_get("user_id")?,
                    course_code: r.try_get("course_code")?,
                    exam_code: r.try_get("exam_code")?,
                    question_paper_code: r.try_get("question_paper_code")?,
                    image_count: r.try_get("image_count")?,
                    question_count: r.try_get("question_count")?,
                    created_at: parse_time(r.try_get("created_at")?)?,
                })
            })
            .collect()
    }

    async fn latest_submission(
        &self,
        user_id: &str,
        question_paper_code: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT submission_id FROM submissions
             WHERE user_id = $1 AND question_paper_code = $2
             ORDER BY created_at DESC, submission_id DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(question_paper_code)
        .fetch_optional(&mut *conn)
        .await?;
        match id {
            Some(id) => get_submission_in(&mut conn, &id).await,
            None => Ok(None),
        }
    }

    async fn insert_evaluation(&self, e: NewEvaluation) -> Result<EvaluationRecord, StoreError> {
        let evaluation_id = uuid::Uuid::now_v7().to_string();
        let created_at = Utc::now();
        let register_user = !self.known.has_user(&e.user_id);
        let version = insert_evaluation_retrying(
            &self.main.writer,
            &e,
            &evaluation_id,
            created_at,
            register_user,
        )
        .await?;
        self.known.remember_user(&e.user_id);
        Ok(EvaluationRecord {
            evaluation_id,
            version,
            user_id: e.user_id,
            course_code: e.course_code,
            exam_code: e.exam_code,
            question_paper_code: e.question_paper_code,
            submission_id: e.submission_id,
            grader: e.grader,
            total_exam_marks: e.total_exam_marks,
            final_score: e.final_score,
            status: e.status,
            items: e.items,
            created_at,
        })
    }

    async fn get_evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        let Some(row) = sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE evaluation_id = $1"
        ))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        else {
            return Ok(None);
        };
        let items = sqlx::query(
            "SELECT question_number, student_answer, standard_answer, total_marks, marks_awarded,
                    llm_evaluation, reasoning, status, error, flags, final_stage, stages
             FROM evaluation_items WHERE evaluation_id = $1 ORDER BY position",
        )
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(item_from)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(EvaluationRecord {
            evaluation_id: row.try_get("evaluation_id")?,
            version: row.try_get("version")?,
            user_id: row.try_get("user_id")?,
            course_code: row.try_get("course_code")?,
            exam_code: row.try_get("exam_code")?,
            question_paper_code: row.try_get("question_paper_code")?,
            submission_id: row.try_get("submission_id")?,
            grader: row.try_get("grader")?,
            total_exam_marks: row.try_get("total_exam_marks")?,
            final_score: row.try_get("final_score")?,
            status: row.try_get("status")?,
            items,
            created_at: parse_time(row.try_get("created_at")?)?,
        }))
    }

    async fn list_evaluations(
        &self,
        filter: &Filter,
    ) -> Result<Vec<EvaluationSummary>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations
             WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR question_paper_code = $2)
             ORDER BY created_at DESC, evaluation_id DESC LIMIT $3"
        ))
        .bind(&filter.user_id)
        .bind(&filter.question_paper_code)
        .bind(filter.limit)
        .fetch_all(&self.main.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(EvaluationSummary {
                    evaluation_id: r.try_get("evaluation_id")?,
                    version: r.try_get("version")?,
                    user_id: r.try_get("user_id")?,
                    question_paper_code: r.try_get("question_paper_code")?,
                    submission_id: r.try_get("submission_id")?,
                    grader: r.try_get("grader")?,
                    total_exam_marks: r.try_get("total_exam_marks")?,
                    final_score: r.try_get("final_score")?,
                    status: r.try_get("status")?,
                    created_at: parse_time(r.try_get("created_at")?)?,
                })
            })
            .collect()
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

    async fn find_submission_by_images(
        &self,
        user_id: &str,
        question_paper_code: &str,
        images_digest: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let mut conn = self.main.pool.acquire().await?;
        let id: Option<String> = sqlx::query_scalar(
            "SELECT submission_id FROM submissions
             WHERE user_id = $1 AND question_paper_code = $2 AND images_digest = $3
             ORDER BY created_at DESC, submission_id DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(question_paper_code)
        .bind(images_digest)
        .fetch_optional(&mut *conn)
        .await?;
        match id {
            Some(id) => get_submission_in(&mut conn, &id).await,
            None => Ok(None),
        }
    }

    async fn create_api_key(&self, key: &ApiKey, key_hash: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (key_id, key_hash, role, user_id, label, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.key_id)
        .bind(key_hash)
        .bind(key.role.as_str())
        .bind(&key.user_id)
        .bind(&key.label)
        .bind(
            key.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        )
        .execute(&self.main.writer)
        .await?;
        Ok(())
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        sqlx::query(
            "SELECT key_id, role, user_id, label, created_at, revoked_at FROM api_keys
             WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.main.pool)
        .await?
        .map(|row| api_key_from(&row))
        .transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        sqlx::query(
            "SELECT key_id, role, user_id, label, created_at, revoked_at FROM api_keys
             ORDER BY created_at, key_id",
        )
        .fetch_all(&self.main.pool)
        .await?
        .iter()
        .map(api_key_from)
        .collect()
    }

    async fn revoke_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        let revoked = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL",
        )
        .bind(now())
        .bind(key_id)
        .execute(&self.main.writer)
        .await?
        .rows_affected();
        Ok(revoked == 1)
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
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (scope, endpoint, key, request_hash, state, created_at)
             VALUES ($1, $2, $3, $4, 'pending', $5)
             ON CONFLICT (scope, endpoint, key) DO NOTHING",
        )
        .bind(scope)
        .bind(endpoint)
        .bind(key)
        .bind(request_hash)
        .bind(now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed == 1 {
            tx.commit().await?;
            return Ok(IdempotencyState::Fresh);
        }
        let row = sqlx::query(
            "SELECT request_hash, state, status_code, response, created_at FROM idempotency_keys
             WHERE scope = $1 AND endpoint = $2 AND key = $3",
        )
        .bind(scope)
        .bind(endpoint)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        let stored_hash: String = row.try_get("request_hash")?;
        if stored_hash != request_hash {
            return Ok(IdempotencyState::Mismatch);
        }
        let state: String = row.try_get("state")?;
        if state == "completed" {
            let status: i64 = row.try_get::<Option<i64>, _>("status_code")?.unwrap_or(200);
            let body: String = row
                .try_get::<Option<String>, _>("response")?
                .unwrap_or_default();
            return Ok(IdempotencyState::Completed {
                status: u16::try_from(status).unwrap_or(200),
                body,
            });
        }
        let claimed_at = parse_time(row.try_get("created_at")?)?;
        if (Utc::now() - claimed_at).num_seconds() < stale_after_secs {
            return Ok(IdempotencyState::InProgress);
        }
        // The claiming request died (a crash or a kill); this one takes over.
        sqlx::query(
            "UPDATE idempotency_keys SET created_at = $1
             WHERE scope = $2 AND endpoint = $3 AND key = $4 AND state = 'pending'",
        )
        .bind(now())
        .bind(scope)
        .bind(endpoint)
        .bind(key)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(IdempotencyState::Fresh)
    }

    async fn idempotency_complete(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET state = 'completed', status_code = $1, response = $2
             WHERE scope = $3 AND endpoint = $4 AND key = $5",
        )
        .bind(i64::from(status))
        .bind(body)
        .bind(scope)
        .bind(endpoint)
        .bind(key)
        .execute(&self.main.writer)
        .await?;
        Ok(())
    }

    async fn idempotency_release(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE scope = $1 AND endpoint = $2 AND key = $3 AND state = 'pending'",
        )
        .bind(scope)
        .bind(endpoint)
        .bind(key)
        .execute(&self.main.writer)
        .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.main.pool).await?;
        sqlx::query("SELECT 1").execute(&self.memo.db.pool).await?;
        Ok(())
    }
}

/// One evaluation in its own transaction. Another process storing an evaluation of the same
/// paper may take the version number first: then this one retries with the next, so both
/// are kept.
async fn insert_evaluation_retrying(
    writer: &SqlitePool,
    e: &NewEvaluation,
    evaluation_id: &str,
    created_at: DateTime<Utc>,
    register_user: bool,
) -> Result<i64, StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let mut tx = writer.begin().await?;
            let version =
                insert_evaluation_in(&mut tx, e, evaluation_id, created_at, register_user).await?;
            tx.commit().await?;
            Ok(version)
        }
        .await;
        match result {
            Err(StoreError::Database(err)) if attempt < 5 && is_unique_violation(&err) => continue,
            other => return other,
        }
    }
}

/// Writes one evaluation and its items inside the caller's transaction; returns its version.
async fn insert_evaluation_in(
    tx: &mut SqliteConnection,
    e: &NewEvaluation,
    evaluation_id: &str,
    created_at: DateTime<Utc>,
    register_user: bool,
) -> Result<i64, StoreError> {
    // As with uploads, a user graded for the first time is registered (unless this process
    // knows the user is stored: users are never deleted).
    if register_user {
        sqlx::query(
            "INSERT INTO users (user_id, created_at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(&e.user_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    }
    // The version is computed inside the INSERT so the transaction's first statement is
    // a write (see the module docs).
    let version: i64 = sqlx::query_scalar(&format!(
        "INSERT INTO evaluations ({EVALUATION_COLUMNS})
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11
             FROM evaluations WHERE user_id = $2 AND question_paper_code = $5
             RETURNING version"
    ))
    .bind(evaluation_id)
    .bind(&e.user_id)
    .bind(&e.course_code)
    .bind(&e.exam_code)
    .bind(&e.question_paper_code)
    .bind(&e.submission_id)
    .bind(&e.grader)
    .bind(e.total_exam_marks)
    .bind(e.final_score)
    .bind(&e.status)
    .bind(created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    .fetch_one(&mut *tx)
    .await?;
    let mut rows = Vec::with_capacity(e.items.len());
    for (position, item) in e.items.iter().enumerate() {
        let flags = serde_json::to_string(&item.flags)
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let stages = serde_json::to_string(&item.stages)
            .map_err(|err| StoreError::Corrupt(err.to_string()))?;
        rows.push((position as i64, item, flags, stages));
    }
    // One statement for a script's items rather than one each: every statement is a
    // round trip to the connection's thread while the write lock is held.
    for chunk in rows.chunks(ITEM_ROWS_PER_STATEMENT) {
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT INTO evaluation_items (evaluation_id, position, question_number,
                     student_answer, standard_answer, total_marks, marks_awarded, llm_evaluation,
                     reasoning, status, error, flags, final_stage, stages) ",
        );
        insert.push_values(chunk, |mut row, (position, item, flags, stages)| {
            row.push_bind(evaluation_id)
                .push_bind(*position)
                .push_bind(item.question_number.as_str())
                .push_bind(&item.student_answer)
                .push_bind(&item.standard_answer)
                .push_bind(item.total_marks)
                .push_bind(item.marks_awarded)
                .push_bind(&item.llm_evaluation)
                .push_bind(&item.reasoning)
                .push_bind(status_text(item.status))
                .push_bind(&item.error)
                .push_bind(flags)
                .push_bind(&item.final_stage)
                .push_bind(stages);
        });
        insert.build().execute(&mut *tx).await?;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let big = evaluation(ITEM_ROWS_PER_STATEMENT + 7);
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
