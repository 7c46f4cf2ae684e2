//! The SQL both backends run: every record's reads and writes, written once against
//! [`Conn`], a connection that runs a statement with its arguments. SQLite and PostgreSQL
//! each implement `Conn` for their connection type; what differs between them — which
//! connection a call gets, transactions' retries, the memo, what is kept in memory — stays
//! in their own modules.
//!
//! The SQL is the subset both databases run: `$n` placeholders, `ON CONFLICT … DO NOTHING`,
//! `RETURNING`, `TEXT`/`BIGINT`/`DOUBLE PRECISION` columns, and timestamps as RFC 3339 text
//! with microseconds in UTC, which sort as they read.
//!
//! Functions here run inside whatever the caller holds: a writer that must be atomic passes
//! a transaction's connection and commits it afterwards.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{StoreError, Written};
use crate::model::{
    stage_role, ApiKey, Course, Erasure, EvaluationItem, EvaluationRecord, EvaluationSummary, Exam,
    IdempotencyState, ItemStatus, MarksSheetRow, ModerationItem, NewEvaluation, Question,
    QuestionMarks, QuestionPaper, Role, Stages, StoredQaPair, Submission, SubmissionImage,
    SubmissionSummary, User,
};
use crate::segment::QuestionNumber;

/// One bound value. Three kinds cover every column of the schema.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(Option<i64>),
    Real(Option<f64>),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(value: &'a str) -> Self {
        Arg::Text(Some(value))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(value: &'a String) -> Self {
        Arg::Text(Some(value))
    }
}

impl<'a> From<&'a Option<String>> for Arg<'a> {
    fn from(value: &'a Option<String>) -> Self {
        Arg::Text(value.as_deref())
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Arg::Text(value)
    }
}

impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Arg::Int(Some(value))
    }
}

impl From<Option<i64>> for Arg<'_> {
    fn from(value: Option<i64>) -> Self {
        Arg::Int(value)
    }
}

impl From<f64> for Arg<'_> {
    fn from(value: f64) -> Self {
        Arg::Real(Some(value))
    }
}

impl From<Option<f64>> for Arg<'_> {
    fn from(value: Option<f64>) -> Self {
        Arg::Real(value)
    }
}

/// The arguments of one statement, in placeholder order.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        vec![$($crate::store::sql::Arg::from($value)),*]
    };
}
pub(super) use args;

/// A database connection (or transaction) that runs one statement at a time.
#[async_trait]
pub(super) trait Conn: Send {
    type Row: Columns + Send + 'static;
    /// How this database's statements mark the values of a list ([`placeholders`]).
    const PLACEHOLDER: Placeholder;
    /// Whether [`Conn::fetch_all`] runs a script of several statements in one call, binding
    /// anonymous values in order across them (SQLite); PostgreSQL binds one statement a call.
    const SCRIPTS: bool;

    /// Runs a statement; returns the rows it changed.
    async fn execute(&mut self, sql: &str, args: Vec<Arg<'_>>) -> Result<u64, sqlx::Error>;
    async fn fetch_optional(
        &mut self,
        sql: &str,
        args: Vec<Arg<'_>>,
    ) -> Result<Option<Self::Row>, sqlx::Error>;
    async fn fetch_all(
        &mut self,
        sql: &str,
        args: Vec<Arg<'_>>,
    ) -> Result<Vec<Self::Row>, sqlx::Error>;
}

/// Binds a statement's [`Arg`]s in order.
pub(super) fn bind_all<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    args: Vec<Arg<'q>>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<f64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for arg in args {
        query = match arg {
            Arg::Text(value) => query.bind(value),
            Arg::Int(value) => query.bind(value),
            Arg::Real(value) => query.bind(value),
        };
    }
    query
}

/// Implements [`Conn`] for one sqlx driver's connection type. Statements are prepared once
/// per connection and kept (sqlx's statement cache), as with `sqlx::query` anywhere.
macro_rules! impl_conn {
    ($database:ty, $connection:ty, $placeholder:expr, scripts: $scripts:expr) => {
        #[async_trait::async_trait]
        impl $crate::store::sql::Conn for $connection {
            type Row = <$database as sqlx::Database>::Row;
            const PLACEHOLDER: $crate::store::sql::Placeholder = $placeholder;
            const SCRIPTS: bool = $scripts;

            async fn execute(
                &mut self,
                sql: &str,
                args: Vec<$crate::store::sql::Arg<'_>>,
            ) -> Result<u64, sqlx::Error> {
                Ok(
                    $crate::store::sql::bind_all::<$database>(sqlx::query(sql), args)
                        .execute(self)
                        .await?
                        .rows_affected(),
                )
            }

            async fn fetch_optional(
                &mut self,
                sql: &str,
                args: Vec<$crate::store::sql::Arg<'_>>,
            ) -> Result<Option<Self::Row>, sqlx::Error> {
                $crate::store::sql::bind_all::<$database>(sqlx::query(sql), args)
                    .fetch_optional(self)
                    .await
            }

            async fn fetch_all(
                &mut self,
                sql: &str,
                args: Vec<$crate::store::sql::Arg<'_>>,
            ) -> Result<Vec<Self::Row>, sqlx::Error> {
                $crate::store::sql::bind_all::<$database>(sqlx::query(sql), args)
                    .fetch_all(self)
                    .await
            }
        }
    };
}
pub(super) use impl_conn;

/// A column type both databases decode.
pub(super) trait Column:
    Sized
    + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
    + sqlx::Type<sqlx::Sqlite>
    + for<'r> sqlx::Decode<'r, sqlx::Postgres>
    + sqlx::Type<sqlx::Postgres>
{
}

impl<T> Column for T where
    T: Sized
        + for<'r> sqlx::Decode<'r, sqlx::Sqlite>
        + sqlx::Type<sqlx::Sqlite>
        + for<'r> sqlx::Decode<'r, sqlx::Postgres>
        + sqlx::Type<sqlx::Postgres>
{
}

/// A result row whose columns are read by name.
pub(super) trait Columns {
    fn col<T: Column>(&self, name: &str) -> Result<T, StoreError>;
}

impl Columns for sqlx::sqlite::SqliteRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        Ok(sqlx::Row::try_get(self, name)?)
    }
}

impl Columns for sqlx::postgres::PgRow {
    fn col<T: Column>(&self, name: &str) -> Result<T, StoreError> {
        Ok(sqlx::Row::try_get(self, name)?)
    }
}

pub(super) fn now() -> String {
    timestamp(Utc::now())
}

pub(super) fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("bad timestamp {text:?}: {e}")))
}

fn time_col(row: &impl Columns, name: &str) -> Result<DateTime<Utc>, StoreError> {
    parse_time(&row.col::<String>(name)?)
}

fn number_col(row: &impl Columns, name: &str) -> Result<QuestionNumber, StoreError> {
    let text: String = row.col(name)?;
    QuestionNumber::parse(&text)
        .ok_or_else(|| StoreError::Corrupt(format!("bad question number {text:?}")))
}

pub(super) fn is_unique_violation(error: &StoreError) -> bool {
    matches!(error, StoreError::Database(sqlx::Error::Database(db)) if db.is_unique_violation())
}

/// Inserts are the first statement of a write (SQLite then takes its write lock up front);
/// a dangling link shows up as a foreign-key failure, reported as the missing record.
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

/// How a statement marks the values of a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Placeholder {
    /// `$1, $2, …` (PostgreSQL).
    Numbered,
    /// `?` each, bound in order (SQLite). SQLite finds a numbered value's slot by a linear
    /// search of the statement's names, so numbering a many-row insert costs time quadratic in
    /// its values; anonymous ones are bound without a search.
    Anonymous,
}

/// `($1, $2), ($3, $4)` (or `(?, ?), (?, ?)`) for `rows` rows of `columns` values, which must
/// be the statement's only values: numbering starts at 1, and anonymous ones bind in order.
pub(super) fn placeholders(style: Placeholder, rows: usize, columns: usize) -> String {
    let mut text = String::with_capacity(rows * columns * 5);
    for row in 0..rows {
        text.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                text.push_str(", ");
            }
            match style {
                Placeholder::Numbered => {
                    text.push('$');
                    text.push_str(&(row * columns + column + 1).to_string());
                }
                Placeholder::Anonymous => text.push('?'),
            }
        }
        text.push(')');
    }
    text
}

fn course_from(row: &impl Columns) -> Result<Course, StoreError> {
    Ok(Course {
        course_code: row.col("course_code")?,
        course_name: row.col("course_name")?,
        description: row.col("description")?,
    })
}

fn exam_from(row: &impl Columns) -> Result<Exam, StoreError> {
    Ok(Exam {
        exam_code: row.col("exam_code")?,
        course_code: row.col("course_code")?,
        exam_name: row.col("exam_name")?,
        total_exam_marks: row.col("total_exam_marks")?,
    })
}

fn question_from(row: &impl Columns) -> Result<Question, StoreError> {
    Ok(Question {
        question_number: number_col(row, "question_number")?,
        question_text: row.col("question_text")?,
        standard_answer: row.col("standard_answer")?,
        total_marks: row.col("total_marks")?,
    })
}

fn user_from(row: &impl Columns) -> Result<User, StoreError> {
    Ok(User {
        user_id: row.col("user_id")?,
        name: row.col("name")?,
        email: row.col("email")?,
    })
}

fn api_key_from(row: &impl Columns) -> Result<ApiKey, StoreError> {
    let role: String = row.col("role")?;
    let revoked_at: Option<String> = row.col("revoked_at")?;
    Ok(ApiKey {
        key_id: row.col("key_id")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("bad role {role:?}")))?,
        user_id: row.col("user_id")?,
        label: row.col("label")?,
        created_at: time_col(row, "created_at")?,
        revoked: revoked_at.is_some(),
    })
}

fn item_from(row: &impl Columns) -> Result<EvaluationItem, StoreError> {
    let stages: String = row.col("stages")?;
    let status: String = row.col("status")?;
    Ok(EvaluationItem {
        question_number: number_col(row, "question_number")?,
        question_text: row.col("question_text")?,
        student_answer: row.col("student_answer")?,
        standard_answer: row.col("standard_answer")?,
        total_marks: row.col("total_marks")?,
        marks_awarded: row.col("marks_awarded")?,
        llm_evaluation: row.col("llm_evaluation")?,
        reasoning: row.col("reasoning")?,
        status: serde_json::from_value(serde_json::Value::String(status.clone()))
            .map_err(|_| StoreError::Corrupt(format!("bad item status {status:?}")))?,
        error: row.col("error")?,
        flags: flags_col(row)?,
        final_stage: row.col("final_stage")?,
        stages: Stages::from_text(stages)
            .map_err(|e| StoreError::Corrupt(format!("bad stages: {e}")))?,
    })
}

fn status_text(status: ItemStatus) -> &'static str {
    match status {
        ItemStatus::Graded => "graded",
        ItemStatus::NotAnswered => "not_answered",
        ItemStatus::Failed => "failed",
    }
}

// ---- catalog ----

pub(super) async fn put_course<C: Conn + ?Sized>(
    conn: &mut C,
    c: &Course,
) -> Result<Written, StoreError> {
    let inserted = conn
        .execute(
            "INSERT INTO courses (course_code, course_name, description, created_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (course_code) DO NOTHING",
            args![&c.course_code, &c.course_name, &c.description, &now()],
        )
        .await?;
    if inserted == 1 {
        return Ok(Written::Created);
    }
    let existing = get_course(conn, &c.course_code).await?;
    settle(existing, c, "course", &c.course_code)
}

pub(super) async fn get_course<C: Conn + ?Sized>(
    conn: &mut C,
    code: &str,
) -> Result<Option<Course>, StoreError> {
    conn.fetch_optional(
        "SELECT course_code, course_name, description FROM courses WHERE course_code = $1",
        args![code],
    )
    .await?
    .map(|row| course_from(&row))
    .transpose()
}

pub(super) async fn list_courses<C: Conn + ?Sized>(
    conn: &mut C,
) -> Result<Vec<Course>, StoreError> {
    conn.fetch_all(
        "SELECT course_code, course_name, description FROM courses ORDER BY course_code",
        args![],
    )
    .await?
    .iter()
    .map(course_from)
    .collect()
}

pub(super) async fn put_exam<C: Conn + ?Sized>(
    conn: &mut C,
    e: &Exam,
) -> Result<Written, StoreError> {
    let inserted = conn
        .execute(
            "INSERT INTO exams (exam_code, course_code, exam_name, total_exam_marks, created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (exam_code) DO NOTHING",
            args![
                &e.exam_code,
                &e.course_code,
                &e.exam_name,
                e.total_exam_marks,
                &now()
            ],
        )
        .await
        .map_err(|err| missing_link(err, "course", &e.course_code))?;
    if inserted == 1 {
        return Ok(Written::Created);
    }
    let existing = get_exam(conn, &e.exam_code).await?;
    settle(existing, e, "exam", &e.exam_code)
}

pub(super) async fn get_exam<C: Conn + ?Sized>(
    conn: &mut C,
    code: &str,
) -> Result<Option<Exam>, StoreError> {
    conn.fetch_optional(
        "SELECT exam_code, course_code, exam_name, total_exam_marks FROM exams
         WHERE exam_code = $1",
        args![code],
    )
    .await?
    .map(|row| exam_from(&row))
    .transpose()
}

pub(super) async fn list_exams<C: Conn + ?Sized>(
    conn: &mut C,
    course_code: Option<&str>,
) -> Result<Vec<Exam>, StoreError> {
    conn.fetch_all(
        "SELECT exam_code, course_code, exam_name, total_exam_marks FROM exams
         WHERE $1 IS NULL OR course_code = $1 ORDER BY exam_code",
        args![course_code],
    )
    .await?
    .iter()
    .map(exam_from)
    .collect()
}

pub(super) async fn put_paper<C: Conn + ?Sized>(
    conn: &mut C,
    p: &QuestionPaper,
) -> Result<Written, StoreError> {
    let inserted = conn
        .execute(
            "INSERT INTO question_papers (question_paper_code, exam_code, title, marks_step,
                                          created_at)
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (question_paper_code) DO NOTHING",
            args![
                &p.question_paper_code,
                &p.exam_code,
                &p.title,
                p.marks_step,
                &now()
            ],
        )
        .await
        .map_err(|err| missing_link(err, "exam", &p.exam_code))?;
    if inserted == 0 {
        let existing = get_paper(conn, &p.question_paper_code).await?;
        return settle(existing, p, "question paper", &p.question_paper_code);
    }
    for (position, q) in p.questions.iter().enumerate() {
        conn.execute(
            "INSERT INTO questions (question_paper_code, position, question_number, question_text,
                                    standard_answer, total_marks)
             VALUES ($1, $2, $3, $4, $5, $6)",
            args![
                &p.question_paper_code,
                position as i64,
                q.question_number.as_str(),
                &q.question_text,
                &q.standard_answer,
                q.total_marks
            ],
        )
        .await?;
    }
    Ok(Written::Created)
}

pub(super) async fn get_paper<C: Conn + ?Sized>(
    conn: &mut C,
    code: &str,
) -> Result<Option<QuestionPaper>, StoreError> {
    let Some(row) = conn
        .fetch_optional(
            "SELECT question_paper_code, exam_code, title, marks_step
             FROM question_papers WHERE question_paper_code = $1",
            args![code],
        )
        .await?
    else {
        return Ok(None);
    };
    let questions = conn
        .fetch_all(
            "SELECT question_number, question_text, standard_answer, total_marks
             FROM questions WHERE question_paper_code = $1 ORDER BY position",
            args![code],
        )
        .await?
        .iter()
        .map(question_from)
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(QuestionPaper {
        question_paper_code: row.col("question_paper_code")?,
        exam_code: row.col("exam_code")?,
        title: row.col("title")?,
        marks_step: row.col("marks_step")?,
        questions,
    }))
}

/// [`get_exam`] and [`get_paper`] in one statement: one round trip where two or three
/// would be (on SQLite each a wake-up of a connection's thread), and one snapshot of both.
/// The exam's and the paper's columns repeat on every question's row; a paper without
/// questions, or no paper, gives one row with the missing columns NULL.
pub(super) async fn get_exam_and_paper<C: Conn + ?Sized>(
    conn: &mut C,
    exam_code: &str,
    paper_code: &str,
) -> Result<(Option<Exam>, Option<QuestionPaper>), StoreError> {
    let rows = conn
        .fetch_all(
            "SELECT e.exam_code, e.course_code, e.exam_name, e.total_exam_marks,
                    p.question_paper_code, p.exam_code AS paper_exam_code, p.title, p.marks_step,
                    q.question_number, q.question_text, q.standard_answer, q.total_marks
             FROM (SELECT 1 AS one) AS one
             LEFT JOIN exams e ON e.exam_code = $1
             LEFT JOIN question_papers p ON p.question_paper_code = $2
             LEFT JOIN questions q ON q.question_paper_code = p.question_paper_code
             ORDER BY q.position",
            args![exam_code, paper_code],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Err(StoreError::Corrupt(
            "reading an exam and a paper returned no row".into(),
        ));
    };
    let exam = match first.col::<Option<String>>("exam_code")? {
        Some(_) => Some(exam_from(first)?),
        None => None,
    };
    let paper = match first.col::<Option<String>>("question_paper_code")? {
        Some(question_paper_code) => {
            let mut questions = Vec::with_capacity(rows.len());
            for row in &rows {
                if row.col::<Option<String>>("question_number")?.is_some() {
                    questions.push(question_from(row)?);
                }
            }
            Some(QuestionPaper {
                question_paper_code,
                exam_code: first.col("paper_exam_code")?,
                title: first.col("title")?,
                marks_step: first.col("marks_step")?,
                questions,
            })
        }
        None => None,
    };
    Ok((exam, paper))
}

pub(super) async fn list_papers<C: Conn + ?Sized>(
    conn: &mut C,
    exam_code: Option<&str>,
) -> Result<Vec<QuestionPaper>, StoreError> {
    let codes = conn
        .fetch_all(
            "SELECT question_paper_code FROM question_papers
             WHERE $1 IS NULL OR exam_code = $1 ORDER BY question_paper_code",
            args![exam_code],
        )
        .await?
        .iter()
        .map(|row| row.col::<String>("question_paper_code"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut papers = Vec::with_capacity(codes.len());
    for code in codes {
        if let Some(paper) = get_paper(conn, &code).await? {
            papers.push(paper);
        }
    }
    Ok(papers)
}

pub(super) async fn put_user<C: Conn + ?Sized>(
    conn: &mut C,
    u: &User,
) -> Result<Written, StoreError> {
    let inserted = conn
        .execute(
            "INSERT INTO users (user_id, name, email, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id) DO NOTHING",
            args![&u.user_id, &u.name, &u.email, &now()],
        )
        .await?;
    if inserted == 1 {
        return Ok(Written::Created);
    }
    let existing = get_user(conn, &u.user_id).await?;
    settle(existing, u, "user", &u.user_id)
}

/// Registers a user by id alone if unknown (uploads and evaluations name users not yet
/// created through the catalog).
pub(super) async fn register_user<C: Conn + ?Sized>(
    conn: &mut C,
    user_id: &str,
) -> Result<(), StoreError> {
    conn.execute(
        register_user_statement(C::PLACEHOLDER),
        args![user_id, &now()],
    )
    .await?;
    Ok(())
}

/// [`register_user`]'s statement; its values are the user's id and the time.
fn register_user_statement(style: Placeholder) -> &'static str {
    match style {
        Placeholder::Numbered => {
            "INSERT INTO users (user_id, created_at) VALUES ($1, $2)
             ON CONFLICT (user_id) DO NOTHING"
        }
        Placeholder::Anonymous => {
            "INSERT INTO users (user_id, created_at) VALUES (?, ?)
             ON CONFLICT (user_id) DO NOTHING"
        }
    }
}

pub(super) async fn get_user<C: Conn + ?Sized>(
    conn: &mut C,
    id: &str,
) -> Result<Option<User>, StoreError> {
    conn.fetch_optional(
        "SELECT user_id, name, email FROM users WHERE user_id = $1",
        args![id],
    )
    .await?
    .map(|row| user_from(&row))
    .transpose()
}

pub(super) async fn list_users<C: Conn + ?Sized>(conn: &mut C) -> Result<Vec<User>, StoreError> {
    conn.fetch_all(
        "SELECT user_id, name, email FROM users ORDER BY user_id",
        args![],
    )
    .await?
    .iter()
    .map(user_from)
    .collect()
}

/// Imports a whole catalog inside the caller's transaction; returns how many records were new.
pub(super) async fn import_catalog<C: Conn + ?Sized>(
    conn: &mut C,
    catalog: &crate::model::Catalog,
) -> Result<usize, StoreError> {
    let mut created = 0;
    for course in &catalog.courses {
        created += usize::from(put_course(conn, course).await? == Written::Created);
    }
    for exam in &catalog.exams {
        created += usize::from(put_exam(conn, exam).await? == Written::Created);
    }
    for paper in &catalog.question_papers {
        created += usize::from(put_paper(conn, paper).await? == Written::Created);
    }
    for user in &catalog.users {
        created += usize::from(put_user(conn, user).await? == Written::Created);
    }
    Ok(created)
}

// ---- submissions ----

/// Writes a submission inside the caller's transaction, registering its user first (which,
/// on SQLite, also takes the write lock for the whole transaction).
pub(super) async fn insert_submission<C: Conn + ?Sized>(
    conn: &mut C,
    s: &Submission,
    images_digest: &str,
) -> Result<(), StoreError> {
    register_user(conn, &s.user_id).await?;
    conn.execute(
        "INSERT INTO submissions (submission_id, user_id, course_code, exam_code,
             question_paper_code, extracted_text, unassigned_text, created_at, images_digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        args![
            &s.submission_id,
            &s.user_id,
            &s.course_code,
            &s.exam_code,
            &s.question_paper_code,
            &s.extracted_text,
            &s.unassigned_text,
            &timestamp(s.created_at),
            images_digest
        ],
    )
    .await?;
    for (position, image) in s.images.iter().enumerate() {
        conn.execute(
            "INSERT INTO submission_images (submission_id, position, image_id, image_url,
                 content_sha256, media_type, byte_size, width, height, ocr_text,
                 ocr_confidence, ocr_engine, ocr_memo_key, page_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            args![
                &s.submission_id,
                position as i64,
                &image.image_id,
                &image.image_url,
                &image.content_sha256,
                &image.media_type,
                image.byte_size,
                image.width,
                image.height,
                &image.ocr_text,
                image.ocr_confidence,
                &image.ocr_engine,
                &image.ocr_memo_key,
                image.page_count
            ],
        )
        .await?;
    }
    for (position, pair) in s.qa_pairs.iter().enumerate() {
        conn.execute(
            "INSERT INTO submission_answers (submission_id, position, question_number, answer,
                 ocr_confidence, ocr_engine, low_ocr_confidence)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            args![
                &s.submission_id,
                position as i64,
                pair.question_number.as_str(),
                &pair.answer,
                pair.ocr_confidence,
                &pair.ocr_engine,
                i64::from(pair.low_ocr_confidence)
            ],
        )
        .await?;
    }
    Ok(())
}

pub(super) async fn get_submission<C: Conn + ?Sized>(
    conn: &mut C,
    id: &str,
) -> Result<Option<Submission>, StoreError> {
    let Some(row) = conn
        .fetch_optional(
            "SELECT submission_id, user_id, course_code, exam_code, question_paper_code,
                    extracted_text, unassigned_text, created_at
             FROM submissions WHERE submission_id = $1",
            args![id],
        )
        .await?
    else {
        return Ok(None);
    };
    let images = conn
        .fetch_all(
            "SELECT image_id, image_url, content_sha256, media_type, byte_size, width, height,
                    ocr_text, ocr_confidence, ocr_engine, ocr_memo_key, page_count
             FROM submission_images WHERE submission_id = $1 ORDER BY position",
            args![id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(SubmissionImage {
                image_id: r.col("image_id")?,
                image_url: r.col("image_url")?,
                content_sha256: r.col("content_sha256")?,
                media_type: r.col("media_type")?,
                byte_size: r.col("byte_size")?,
                width: r.col("width")?,
                height: r.col("height")?,
                ocr_text: r.col("ocr_text")?,
                ocr_confidence: r.col("ocr_confidence")?,
                ocr_engine: r.col("ocr_engine")?,
                ocr_memo_key: r.col("ocr_memo_key")?,
                page_count: r.col("page_count")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let qa_pairs = conn
        .fetch_all(
            "SELECT question_number, answer, ocr_confidence, ocr_engine, low_ocr_confidence
             FROM submission_answers WHERE submission_id = $1 ORDER BY position",
            args![id],
        )
        .await?
        .iter()
        .map(|r| {
            Ok(StoredQaPair {
                question_number: number_col(r, "question_number")?,
                answer: r.col("answer")?,
                ocr_confidence: r.col("ocr_confidence")?,
                ocr_engine: r.col("ocr_engine")?,
                low_ocr_confidence: r.col::<i64>("low_ocr_confidence")? != 0,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Some(Submission {
        submission_id: row.col("submission_id")?,
        user_id: row.col("user_id")?,
        course_code: row.col("course_code")?,
        exam_code: row.col("exam_code")?,
        question_paper_code: row.col("question_paper_code")?,
        images,
        extracted_text: row.col("extracted_text")?,
        unassigned_text: row.col("unassigned_text")?,
        qa_pairs,
        created_at: time_col(&row, "created_at")?,
    }))
}

/// Where a page of a newest-first listing starts: the `created_at` of the record named by
/// `filter.after` (of the filter's user and paper), or `None` for the first page.
async fn page_start<C: Conn + ?Sized>(
    conn: &mut C,
    table: &str,
    id_column: &str,
    kind: &'static str,
    filter: &super::Filter,
) -> Result<Option<String>, StoreError> {
    let Some(after) = &filter.after else {
        return Ok(None);
    };
    let row = conn
        .fetch_optional(
            &format!(
                "SELECT created_at FROM {table} WHERE {id_column} = $1
                   AND ($2 IS NULL OR user_id = $2) AND ($3 IS NULL OR question_paper_code = $3)"
            ),
            args![after, &filter.user_id, &filter.question_paper_code],
        )
        .await?;
    match row {
        Some(row) => Ok(Some(row.col("created_at")?)),
        None => Err(StoreError::UnknownCursor {
            kind,
            key: after.clone(),
        }),
    }
}

pub(super) async fn list_submissions<C: Conn + ?Sized>(
    conn: &mut C,
    filter: &super::Filter,
) -> Result<Vec<SubmissionSummary>, StoreError> {
    let start = page_start(conn, "submissions", "submission_id", "submission", filter).await?;
    conn.fetch_all(
        "SELECT s.submission_id, s.user_id, s.course_code, s.exam_code,
                s.question_paper_code, s.created_at,
                (SELECT COUNT(*) FROM submission_images i
                  WHERE i.submission_id = s.submission_id) AS image_count,
                (SELECT CAST(COALESCE(SUM(i.page_count), 0) AS BIGINT) FROM submission_images i
                  WHERE i.submission_id = s.submission_id) AS page_count,
                (SELECT COUNT(*) FROM submission_answers a
                  WHERE a.submission_id = s.submission_id) AS question_count
         FROM submissions s
         WHERE ($1 IS NULL OR s.user_id = $1) AND ($2 IS NULL OR s.question_paper_code = $2)
           AND ($3 IS NULL OR s.created_at < $3 OR (s.created_at = $3 AND s.submission_id < $4))
         ORDER BY s.created_at DESC, s.submission_id DESC
         LIMIT $5",
        args![
            &filter.user_id,
            &filter.question_paper_code,
            &start,
            &filter.after,
            filter.limit
        ],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(SubmissionSummary {
            submission_id: r.col("submission_id")?,
            user_id: r.col("user_id")?,
            course_code: r.col("course_code")?,
            exam_code: r.col("exam_code")?,
            question_paper_code: r.col("question_paper_code")?,
            image_count: r.col("image_count")?,
            page_count: r.col("page_count")?,
            question_count: r.col("question_count")?,
            created_at: time_col(r, "created_at")?,
        })
    })
    .collect()
}

/// The newest submission of a user for a paper, of these images when `images_digest` is given.
pub(super) async fn latest_submission<C: Conn + ?Sized>(
    conn: &mut C,
    user_id: &str,
    question_paper_code: &str,
    images_digest: Option<&str>,
) -> Result<Option<Submission>, StoreError> {
    let id = conn
        .fetch_optional(
            "SELECT submission_id FROM submissions
             WHERE user_id = $1 AND question_paper_code = $2
               AND ($3 IS NULL OR images_digest = $3)
             ORDER BY created_at DESC, submission_id DESC LIMIT 1",
            args![user_id, question_paper_code, images_digest],
        )
        .await?
        .map(|row| row.col::<String>("submission_id"))
        .transpose()?;
    match id {
        Some(id) => get_submission(conn, &id).await,
        None => Ok(None),
    }
}

// ---- evaluations ----

/// Rows per multi-row INSERT of evaluation items (15 bound values each, well under SQLite's
/// 32,766 and PostgreSQL's 65,535).
pub(super) const ITEM_ROWS_PER_STATEMENT: usize = 500;

const EVALUATION_COLUMNS: &str = "evaluation_id, version, user_id, course_code, exam_code,
    question_paper_code, submission_id, grader, total_exam_marks, final_score, status, created_at";

/// Writes one evaluation and its items inside the caller's transaction; returns its version.
/// Another writer may take the same version first: the caller then sees a unique violation
/// ([`is_unique_violation`]) and runs the transaction again. `None`, with nothing written:
/// the user was not registered (`register` false) and is not stored, having been erased
/// since the caller saw it.
pub(super) async fn insert_evaluation<C: Conn + ?Sized>(
    conn: &mut C,
    e: &NewEvaluation,
    evaluation_id: &str,
    created_at: DateTime<Utc>,
    register: bool,
) -> Result<Option<i64>, StoreError> {
    // As with uploads, a user graded for the first time is registered (unless the caller
    // remembers the user as stored; the insert below checks that it still is).
    if register {
        register_user(conn, &e.user_id).await?;
    }
    let created_at = timestamp(created_at);
    let (sql, values) = evaluation_row(C::PLACEHOLDER, e, evaluation_id, &created_at);
    let row = conn.fetch_optional(&sql, values).await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let version: i64 = row.col("version")?;
    let flags = item_flags(e)?;
    // One statement for a script's items rather than one each: every statement is a round
    // trip to the database (on SQLite, to the connection's thread) while the write lock is held.
    for (start, chunk) in item_chunks(e) {
        let sql = items_insert(C::PLACEHOLDER, chunk.len());
        let mut values = Vec::with_capacity(chunk.len() * ITEM_COLUMN_COUNT);
        push_item_values(&mut values, evaluation_id, start, chunk, &flags);
        conn.execute(&sql, values).await?;
    }
    Ok(Some(version))
}

/// The statement that writes an evaluation's row and returns its version, with its values.
/// The version is computed inside the INSERT so that, without the registration, the
/// transaction's first statement is a write (see the SQLite backend). No row is written
/// when the user is not stored.
fn evaluation_row<'a>(
    style: Placeholder,
    e: &'a NewEvaluation,
    evaluation_id: &'a str,
    created_at: &'a str,
) -> (String, Vec<Arg<'a>>) {
    let mut values = args![
        evaluation_id,
        &e.user_id,
        &e.course_code,
        &e.exam_code,
        &e.question_paper_code,
        &e.submission_id,
        &e.grader,
        e.total_exam_marks,
        e.final_score,
        &e.status,
        created_at
    ];
    // The evaluation's id, then the row's other values after its version.
    let (id, rest, user, paper) = match style {
        Placeholder::Numbered => ("$1", "$2, $3, $4, $5, $6, $7, $8, $9, $10, $11", "$2", "$5"),
        Placeholder::Anonymous => {
            // Each value where it is used: the user, the paper, the user again.
            values.extend(args![&e.user_id, &e.question_paper_code, &e.user_id]);
            ("?", "?, ?, ?, ?, ?, ?, ?, ?, ?, ?", "?", "?")
        }
    };
    let sql = format!(
        "INSERT INTO evaluations ({EVALUATION_COLUMNS})
         SELECT {id}, COALESCE(MAX(version), 0) + 1, {rest}
         FROM evaluations WHERE user_id = {user} AND question_paper_code = {paper}
         HAVING EXISTS (SELECT 1 FROM users WHERE user_id = {user})
         RETURNING version"
    );
    (sql, values)
}

const ITEM_COLUMN_COUNT: usize = 15;

/// Each item's flags as stored (a JSON list).
fn item_flags(e: &NewEvaluation) -> Result<Vec<String>, StoreError> {
    e.items
        .iter()
        .map(|item| {
            serde_json::to_string(&item.flags).map_err(|err| StoreError::Corrupt(err.to_string()))
        })
        .collect()
}

/// The items in statements' worth, each with the position of its first.
fn item_chunks(e: &NewEvaluation) -> impl Iterator<Item = (usize, &[EvaluationItem])> {
    e.items
        .chunks(ITEM_ROWS_PER_STATEMENT)
        .enumerate()
        .map(|(n, chunk)| (n * ITEM_ROWS_PER_STATEMENT, chunk))
}

fn items_insert(style: Placeholder, rows: usize) -> String {
    format!(
        "INSERT INTO evaluation_items (evaluation_id, position, question_number,
             student_answer, standard_answer, total_marks, marks_awarded, llm_evaluation,
             reasoning, status, error, flags, final_stage, stages, question_text) VALUES {}",
        placeholders(style, rows, ITEM_COLUMN_COUNT)
    )
}

/// The values of [`items_insert`] for `chunk`, whose first item is at `start`.
fn push_item_values<'a>(
    values: &mut Vec<Arg<'a>>,
    evaluation_id: &'a str,
    start: usize,
    chunk: &'a [EvaluationItem],
    flags: &'a [String],
) {
    for (offset, item) in chunk.iter().enumerate() {
        let position = start + offset;
        values.extend(args![
            evaluation_id,
            position as i64,
            item.question_number.as_str(),
            &item.student_answer,
            &item.standard_answer,
            item.total_marks,
            item.marks_awarded,
            &item.llm_evaluation,
            &item.reasoning,
            status_text(item.status),
            &item.error,
            &flags[position],
            &item.final_stage,
            item.stages.as_text(),
            &item.question_text
        ]);
    }
}

/// How [`insert_evaluation_script`] ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ScriptOutcome {
    /// Stored under this version.
    Committed(i64),
    /// Nothing stored, the connection as it was.
    RolledBack,
    /// Nothing stored, but the rollback failed: the connection may still hold the
    /// transaction, so it must not be used again.
    Unsettled,
}

/// [`insert_evaluation`] with its transaction as one script, sent in one call, for a
/// database that runs scripts ([`Conn::SCRIPTS`]). On SQLite each statement sent is a round
/// trip to the connection's thread, and the four of a graded script (BEGIN, the evaluation,
/// its items, COMMIT) cost that thread as much in waking up as in writing (BENCHMARKS.md,
/// step 20).
///
/// Any failure — the user not stored, another process's version, a database error — rolls
/// the script back, and the caller goes statement by statement, which tells them apart.
/// The script must run to its end or its rollback: a caller that could be cancelled runs it
/// in a task of its own.
pub(super) async fn insert_evaluation_script<C: Conn + ?Sized>(
    conn: &mut C,
    e: &NewEvaluation,
    evaluation_id: &str,
    created_at: DateTime<Utc>,
    register: bool,
) -> Result<ScriptOutcome, StoreError> {
    debug_assert!(C::SCRIPTS && C::PLACEHOLDER == Placeholder::Anonymous);
    let flags = item_flags(e)?;
    let registered_at = register.then(now);
    let created_at = timestamp(created_at);
    let mut script = String::from("BEGIN IMMEDIATE;\n");
    let mut values = Vec::with_capacity(16 + e.items.len() * ITEM_COLUMN_COUNT);
    if let Some(registered_at) = &registered_at {
        script.push_str(register_user_statement(Placeholder::Anonymous));
        script.push_str(";\n");
        values.extend(args![&e.user_id, registered_at]);
    }
    let (row, row_values) = evaluation_row(Placeholder::Anonymous, e, evaluation_id, &created_at);
    script.push_str(&row);
    script.push_str(";\n");
    values.extend(row_values);
    // Without the evaluation's row (the user is not stored) its items break their foreign
    // key, so the script stops before COMMIT.
    for (start, chunk) in item_chunks(e) {
        script.push_str(&items_insert(Placeholder::Anonymous, chunk.len()));
        script.push_str(";\n");
        push_item_values(&mut values, evaluation_id, start, chunk, &flags);
    }
    script.push_str("COMMIT");
    match conn.fetch_all(&script, values).await {
        Ok(rows) => match rows.as_slice() {
            [row] => Ok(ScriptOutcome::Committed(row.col("version")?)),
            // No evaluation row and nothing else written: an evaluation without items has no
            // foreign key to stop its script.
            [] if e.items.is_empty() && !register => Ok(ScriptOutcome::RolledBack),
            _ => Err(StoreError::Corrupt(format!(
                "storing an evaluation committed {} version rows",
                rows.len()
            ))),
        },
        Err(error) => {
            tracing::debug!(%error, "the evaluation's script failed; going statement by statement");
            match conn.execute("ROLLBACK", args![]).await {
                Ok(_) => Ok(ScriptOutcome::RolledBack),
                // The script failed before its BEGIN took effect, or SQLite rolled back on
                // the error itself.
                Err(e) if e.to_string().contains("no transaction is active") => {
                    Ok(ScriptOutcome::RolledBack)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not roll back a failed evaluation script; closing its connection");
                    Ok(ScriptOutcome::Unsettled)
                }
            }
        }
    }
}

/// The id of the given version of the student's evaluation of the paper of `e`.
pub(super) async fn evaluation_id_of_version<C: Conn + ?Sized>(
    conn: &mut C,
    e: &NewEvaluation,
    version: i64,
) -> Result<String, StoreError> {
    conn.fetch_optional(
        "SELECT evaluation_id FROM evaluations
          WHERE user_id = $1 AND question_paper_code = $2 AND version = $3",
        args![&e.user_id, &e.question_paper_code, version],
    )
    .await?
    .ok_or_else(|| StoreError::Corrupt(format!("evaluation version {version} is missing")))?
    .col("evaluation_id")
}

pub(super) async fn first_evaluated_at<C: Conn + ?Sized>(
    conn: &mut C,
    user_id: &str,
    question_paper_code: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    let first = conn
        .fetch_optional(
            "SELECT created_at FROM evaluations
             WHERE user_id = $1 AND question_paper_code = $2 AND version = 1",
            args![user_id, question_paper_code],
        )
        .await?;
    first
        .map(|row| parse_time(&row.col::<String>("created_at")?))
        .transpose()
}

pub(super) async fn get_evaluation<C: Conn + ?Sized>(
    conn: &mut C,
    id: &str,
) -> Result<Option<EvaluationRecord>, StoreError> {
    let Some(row) = conn
        .fetch_optional(
            &format!("SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE evaluation_id = $1"),
            args![id],
        )
        .await?
    else {
        return Ok(None);
    };
    let items = conn
        .fetch_all(
            "SELECT question_number, question_text, student_answer, standard_answer, total_marks,
                    marks_awarded, llm_evaluation, reasoning, status, error, flags, final_stage,
                    stages
             FROM evaluation_items WHERE evaluation_id = $1 ORDER BY position",
            args![id],
        )
        .await?
        .iter()
        .map(item_from)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(EvaluationRecord {
        evaluation_id: row.col("evaluation_id")?,
        version: row.col("version")?,
        user_id: row.col("user_id")?,
        course_code: row.col("course_code")?,
        exam_code: row.col("exam_code")?,
        question_paper_code: row.col("question_paper_code")?,
        submission_id: row.col("submission_id")?,
        grader: row.col("grader")?,
        total_exam_marks: row.col("total_exam_marks")?,
        final_score: row.col("final_score")?,
        status: row.col("status")?,
        items,
        created_at: time_col(&row, "created_at")?,
    }))
}

pub(super) async fn list_evaluations<C: Conn + ?Sized>(
    conn: &mut C,
    filter: &super::Filter,
) -> Result<Vec<EvaluationSummary>, StoreError> {
    let start = page_start(conn, "evaluations", "evaluation_id", "evaluation", filter).await?;
    let flag_pattern = filter.flag.as_deref().map(json_string_pattern);
    let mut summaries = conn
        .fetch_all(
            &format!(
                "SELECT {EVALUATION_COLUMNS} FROM evaluations e
                 WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR question_paper_code = $2)
                   AND ($3 IS NULL OR status = $3)
                   AND ($4 IS NULL OR EXISTS (SELECT 1 FROM evaluation_items i
                         WHERE i.evaluation_id = e.evaluation_id AND i.flags LIKE $4 ESCAPE '\\'))
                   AND ($5 IS NULL OR created_at < $5 OR (created_at = $5 AND evaluation_id < $6))
                   {newest}
                 ORDER BY created_at DESC, evaluation_id DESC LIMIT $7",
                newest = if filter.latest { NEWEST_VERSION } else { "" }
            ),
            args![
                &filter.user_id,
                &filter.question_paper_code,
                &filter.status,
                &flag_pattern,
                &start,
                &filter.after,
                filter.limit
            ],
        )
        .await?
        .iter()
        .map(summary_row)
        .collect::<Result<Vec<_>, StoreError>>()?;
    add_flags(conn, &mut summaries).await?;
    Ok(summaries)
}

/// Keeps only the newest version of each student's evaluation of a paper (`e`'s rows).
const NEWEST_VERSION: &str = "AND version = (
    SELECT MAX(version) FROM evaluations newer
     WHERE newer.user_id = e.user_id AND newer.question_paper_code = e.question_paper_code)";

pub(super) async fn marks_sheet<C: Conn + ?Sized>(
    conn: &mut C,
    question_paper_code: &str,
) -> Result<Vec<MarksSheetRow>, StoreError> {
    // One statement, so the evaluations and their items come from one snapshot even while
    // new versions are being stored.
    let evaluation_columns: Vec<String> = EVALUATION_COLUMNS
        .split(',')
        .map(|column| format!("e.{}", column.trim()))
        .collect();
    let joined = conn
        .fetch_all(
            &format!(
                "SELECT {}, i.question_number, i.total_marks, i.marks_awarded, i.flags
                   FROM evaluations e JOIN evaluation_items i
                     ON i.evaluation_id = e.evaluation_id
                  WHERE e.question_paper_code = $1 {NEWEST_VERSION}
                  ORDER BY e.user_id, i.position",
                evaluation_columns.join(", ")
            ),
            args![question_paper_code],
        )
        .await?;
    // Rows come by user, so an evaluation's items are consecutive.
    let mut rows: Vec<MarksSheetRow> = Vec::new();
    for item in &joined {
        let id: String = item.col("evaluation_id")?;
        if rows
            .last()
            .is_none_or(|row| row.evaluation.evaluation_id != id)
        {
            rows.push(MarksSheetRow {
                evaluation: summary_row(item)?,
                marks: Vec::new(),
            });
        }
        let Some(row) = rows.last_mut() else {
            continue;
        };
        row.marks.push(QuestionMarks {
            question_number: number_col(item, "question_number")?,
            total_marks: item.col("total_marks")?,
            marks_awarded: item.col("marks_awarded")?,
        });
        row.evaluation.flags.extend(flags_col(item)?);
    }
    for row in &mut rows {
        sort_unique(&mut row.evaluation.flags);
    }
    Ok(rows)
}

pub(super) async fn moderation_items<C: Conn + ?Sized>(
    conn: &mut C,
    question_paper_code: &str,
) -> Result<Vec<ModerationItem>, StoreError> {
    // Only reviewed questions' stages are read: the grader's marks are in their first
    // examiner stage, and other questions' stages are most of an evaluation's bytes.
    let rows = conn
        .fetch_all(
            &format!(
                "SELECT e.user_id, i.question_number, i.total_marks, i.marks_awarded, i.flags,
                        CASE WHEN i.final_stage = '{examiner}' THEN i.stages END AS examiner_stages
                   FROM evaluations e JOIN evaluation_items i
                     ON i.evaluation_id = e.evaluation_id
                  WHERE e.question_paper_code = $1 {NEWEST_VERSION}
                  ORDER BY e.user_id, i.position",
                examiner = stage_role::EXAMINER
            ),
            args![question_paper_code],
        )
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in &rows {
        let stages: Option<String> = row.col("examiner_stages")?;
        let review = stages.as_deref().map(first_examiner_stage).transpose()?;
        let reasons = review
            .as_ref()
            .and_then(|stage| stage["settled_flags"].as_array())
            .map(|flags| {
                flags
                    .iter()
                    .filter_map(|f| f.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        items.push(ModerationItem {
            user_id: row.col("user_id")?,
            question_number: number_col(row, "question_number")?,
            total_marks: row.col("total_marks")?,
            marks_awarded: row.col("marks_awarded")?,
            flags: flags_col(row)?,
            reviewed: review.is_some(),
            grader_marks: review.and_then(|stage| stage["previous_marks"].as_f64()),
            review_reasons: reasons,
        });
    }
    Ok(items)
}

/// The first examiner stage among a question's stored stages (`Null` if there is none).
fn first_examiner_stage(stages: &str) -> Result<serde_json::Value, StoreError> {
    let stages: serde_json::Value =
        serde_json::from_str(stages).map_err(|e| StoreError::Corrupt(format!("stages: {e}")))?;
    let first = stages.as_array().and_then(|list| {
        list.iter()
            .find(|stage| stage["role"] == stage_role::EXAMINER)
    });
    Ok(first.cloned().unwrap_or_default())
}

/// A LIKE pattern (escape character `\`) for text holding `value` as a JSON string: flags
/// are stored per item as a JSON array, and the quotes keep one flag from matching inside
/// another, while the escapes keep `_` from matching any character.
fn json_string_pattern(value: &str) -> String {
    let mut pattern = String::from("%");
    for c in serde_json::Value::String(value.into()).to_string().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Fills each summary's `flags` with the flags of its questions, in one query for the page.
async fn add_flags<C: Conn + ?Sized>(
    conn: &mut C,
    summaries: &mut [EvaluationSummary],
) -> Result<(), StoreError> {
    if summaries.is_empty() {
        return Ok(());
    }
    let ids: Vec<Arg> = summaries
        .iter()
        .map(|s| Arg::from(s.evaluation_id.as_str()))
        .collect();
    let rows = conn
        .fetch_all(
            &format!(
                "SELECT evaluation_id, flags FROM evaluation_items
                 WHERE flags <> '[]' AND evaluation_id IN {}",
                placeholders(C::PLACEHOLDER, 1, ids.len())
            ),
            ids,
        )
        .await?;
    let position: HashMap<String, usize> = summaries
        .iter()
        .enumerate()
        .map(|(n, summary)| (summary.evaluation_id.clone(), n))
        .collect();
    for row in rows {
        if let Some(&n) = position.get(&row.col::<String>("evaluation_id")?) {
            summaries[n].flags.extend(flags_col(&row)?);
        }
    }
    for summary in summaries {
        sort_unique(&mut summary.flags);
    }
    Ok(())
}

/// An evaluation's flags as its summary gives them: each once, sorted.
fn sort_unique(flags: &mut Vec<String>) {
    flags.sort_unstable();
    flags.dedup();
}

fn flags_col(row: &impl Columns) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&row.col::<String>("flags")?)
        .map_err(|e| StoreError::Corrupt(format!("bad flags: {e}")))
}

fn summary_row(r: &impl Columns) -> Result<EvaluationSummary, StoreError> {
    Ok(EvaluationSummary {
        evaluation_id: r.col("evaluation_id")?,
        version: r.col("version")?,
        user_id: r.col("user_id")?,
        question_paper_code: r.col("question_paper_code")?,
        submission_id: r.col("submission_id")?,
        grader: r.col("grader")?,
        total_exam_marks: r.col("total_exam_marks")?,
        final_score: r.col("final_score")?,
        status: r.col("status")?,
        flags: Vec::new(),
        created_at: time_col(r, "created_at")?,
    })
}

// ---- API keys ----

pub(super) async fn create_api_key<C: Conn + ?Sized>(
    conn: &mut C,
    key: &ApiKey,
    key_hash: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO api_keys (key_id, key_hash, role, user_id, label, created_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        args![
            &key.key_id,
            key_hash,
            key.role.as_str(),
            &key.user_id,
            &key.label,
            &timestamp(key.created_at)
        ],
    )
    .await?;
    Ok(())
}

pub(super) async fn find_api_key<C: Conn + ?Sized>(
    conn: &mut C,
    key_hash: &str,
) -> Result<Option<ApiKey>, StoreError> {
    conn.fetch_optional(
        "SELECT key_id, role, user_id, label, created_at, revoked_at FROM api_keys
         WHERE key_hash = $1 AND revoked_at IS NULL",
        args![key_hash],
    )
    .await?
    .map(|row| api_key_from(&row))
    .transpose()
}

pub(super) async fn list_api_keys<C: Conn + ?Sized>(
    conn: &mut C,
) -> Result<Vec<ApiKey>, StoreError> {
    conn.fetch_all(
        "SELECT key_id, role, user_id, label, created_at, revoked_at FROM api_keys
         ORDER BY created_at, key_id",
        args![],
    )
    .await?
    .iter()
    .map(api_key_from)
    .collect()
}

pub(super) async fn revoke_api_key<C: Conn + ?Sized>(
    conn: &mut C,
    key_id: &str,
) -> Result<bool, StoreError> {
    let revoked = conn
        .execute(
            "UPDATE api_keys SET revoked_at = $1 WHERE key_id = $2 AND revoked_at IS NULL",
            args![&now(), key_id],
        )
        .await?;
    Ok(revoked == 1)
}

// ---- erasure ----

/// The memo keys kept with a user's records, by namespace: their pages' OCR texts and the
/// LLM replies about their answers (every version's stages).
pub(super) async fn user_memo_keys<C: Conn + ?Sized>(
    conn: &mut C,
    user_id: &str,
) -> Result<Vec<(&'static str, Vec<String>)>, StoreError> {
    let mut ocr = BTreeSet::new();
    for row in conn
        .fetch_all(
            "SELECT i.ocr_memo_key FROM submission_images i
             JOIN submissions s ON s.submission_id = i.submission_id
             WHERE s.user_id = $1 AND i.ocr_memo_key IS NOT NULL",
            args![user_id],
        )
        .await?
    {
        ocr.insert(row.col::<String>("ocr_memo_key")?);
    }
    let mut llm = BTreeSet::new();
    for row in conn
        .fetch_all(
            "SELECT DISTINCT i.stages FROM evaluation_items i
             JOIN evaluations e ON e.evaluation_id = i.evaluation_id
             WHERE e.user_id = $1",
            args![user_id],
        )
        .await?
    {
        let stages: String = row.col("stages")?;
        let stages: serde_json::Value = serde_json::from_str(&stages)
            .map_err(|e| StoreError::Corrupt(format!("bad stages: {e}")))?;
        let keys = stages
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|stage| stage.get("memo_key")?.as_str());
        llm.extend(keys.map(str::to_string));
    }
    Ok(vec![
        (super::OCR_MEMO, ocr.into_iter().collect()),
        (super::LLM_MEMO, llm.into_iter().collect()),
    ])
}

/// Deletes everything stored about `user_id` inside the caller's transaction (see
/// [`super::Store::erase_user`]). Children go before their parents: the schema's foreign keys
/// hold throughout.
pub(super) async fn erase_user<C: Conn + ?Sized>(
    conn: &mut C,
    user_id: &str,
) -> Result<Erasure, StoreError> {
    conn.execute(
        "DELETE FROM evaluation_items WHERE evaluation_id IN
             (SELECT evaluation_id FROM evaluations WHERE user_id = $1)",
        args![user_id],
    )
    .await?;
    let evaluations = conn
        .execute("DELETE FROM evaluations WHERE user_id = $1", args![user_id])
        .await?;
    for child in ["submission_answers", "submission_images"] {
        conn.execute(
            &format!(
                "DELETE FROM {child} WHERE submission_id IN
                     (SELECT submission_id FROM submissions WHERE user_id = $1)"
            ),
            args![user_id],
        )
        .await?;
    }
    let submissions = conn
        .execute("DELETE FROM submissions WHERE user_id = $1", args![user_id])
        .await?;
    let mut api_keys = Vec::new();
    for row in conn
        .fetch_all(
            "DELETE FROM api_keys WHERE user_id = $1 RETURNING key_id",
            args![user_id],
        )
        .await?
    {
        api_keys.push(row.col::<String>("key_id")?);
    }
    api_keys.sort();
    // Responses about the user, and any made with the user's own keys (rows completed
    // before responses were tagged with their user have only the key to go by).
    let mut replayable_responses = conn
        .execute(
            "DELETE FROM idempotency_keys WHERE user_id = $1",
            args![user_id],
        )
        .await?;
    for key_id in &api_keys {
        replayable_responses += conn
            .execute(
                "DELETE FROM idempotency_keys WHERE scope = $1",
                args![key_id],
            )
            .await?;
    }
    let user_record = conn
        .execute("DELETE FROM users WHERE user_id = $1", args![user_id])
        .await?
        == 1;
    Ok(Erasure {
        user_id: user_id.to_string(),
        user_record,
        submissions,
        evaluations,
        api_keys,
        replayable_responses,
        // Counted by the store, which deletes them from its memo.
        memoised_results: 0,
    })
}

// ---- idempotency keys ----

/// Claims a key inside the caller's transaction, which the caller commits whatever the
/// answer: only a fresh claim or a takeover wrote anything.
pub(super) async fn idempotency_begin<C: Conn + ?Sized>(
    conn: &mut C,
    (scope, endpoint, key): (&str, &str, &str),
    request_hash: &str,
    stale_after_secs: i64,
) -> Result<IdempotencyState, StoreError> {
    let claimed = conn
        .execute(
            "INSERT INTO idempotency_keys (scope, endpoint, key, request_hash, state, created_at)
             VALUES ($1, $2, $3, $4, 'pending', $5)
             ON CONFLICT (scope, endpoint, key) DO NOTHING",
            args![scope, endpoint, key, request_hash, &now()],
        )
        .await?;
    if claimed == 1 {
        return Ok(IdempotencyState::Fresh);
    }
    let row = conn
        .fetch_optional(
            "SELECT request_hash, state, status_code, response, created_at FROM idempotency_keys
             WHERE scope = $1 AND endpoint = $2 AND key = $3",
            args![scope, endpoint, key],
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("idempotency key {key:?} vanished")))?;
    if row.col::<String>("request_hash")? != request_hash {
        return Ok(IdempotencyState::Mismatch);
    }
    if row.col::<String>("state")? == "completed" {
        let status = row.col::<Option<i64>>("status_code")?.unwrap_or(200);
        let body = row.col::<Option<String>>("response")?.unwrap_or_default();
        return Ok(IdempotencyState::Completed {
            status: u16::try_from(status).unwrap_or(200),
            body,
        });
    }
    let claimed_at = time_col(&row, "created_at")?;
    if (Utc::now() - claimed_at).num_seconds() < stale_after_secs {
        return Ok(IdempotencyState::InProgress);
    }
    // The claiming request died (a crash or a kill); this one takes over.
    conn.execute(
        "UPDATE idempotency_keys SET created_at = $1
         WHERE scope = $2 AND endpoint = $3 AND key = $4 AND state = 'pending'",
        args![&now(), scope, endpoint, key],
    )
    .await?;
    Ok(IdempotencyState::Fresh)
}

pub(super) async fn idempotency_complete<C: Conn + ?Sized>(
    conn: &mut C,
    (scope, endpoint, key): (&str, &str, &str),
    status: u16,
    body: &str,
    user_id: &str,
) -> Result<(), StoreError> {
    conn.execute(
        "UPDATE idempotency_keys
            SET state = 'completed', status_code = $1, response = $2, user_id = $3
          WHERE scope = $4 AND endpoint = $5 AND key = $6",
        args![i64::from(status), body, user_id, scope, endpoint, key],
    )
    .await?;
    Ok(())
}

pub(super) async fn idempotency_release<C: Conn + ?Sized>(
    conn: &mut C,
    (scope, endpoint, key): (&str, &str, &str),
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM idempotency_keys
         WHERE scope = $1 AND endpoint = $2 AND key = $3 AND state = 'pending'",
        args![scope, endpoint, key],
    )
    .await?;
    Ok(())
}

/// A round trip to the database.
pub(super) async fn ping<C: Conn + ?Sized>(conn: &mut C) -> Result<(), StoreError> {
    conn.execute("SELECT 1", args![]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{placeholders, Placeholder};

    #[test]
    fn placeholders_number_every_value_of_every_row() {
        assert_eq!(placeholders(Placeholder::Numbered, 1, 2), "($1, $2)");
        assert_eq!(
            placeholders(Placeholder::Numbered, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(placeholders(Placeholder::Anonymous, 2, 2), "(?, ?), (?, ?)");
    }
}
