//! Persistence: the [`Store`] trait every other stage writes through, and its backends.
//!
//! The store owns the catalog (courses, exams, question papers, users), submissions
//! (one per upload, with its images, OCR text and question-answer pairs), evaluations and
//! the content-addressed caches. Every write that a request reports as done happens in one
//! transaction: a reader sees all of it or none of it. Catalog writes are idempotent —
//! writing a record that exists with identical content succeeds, different content is a
//! [`StoreError::Conflict`].
//!
//! SQLite (WAL) is the embedded default; PostgreSQL serves deployments where several
//! processes share one database. The backend is chosen once, from the URL's scheme. Both run
//! the same SQL for every record ([`sql`]); each backend decides which connection a call
//! gets and keeps its memo its own way.

mod connections;
#[cfg(test)]
mod contract_tests;
mod copy;
mod known;
mod postgres;
mod sql;
mod sql_store;
mod sqlite;
#[doc(hidden)]
pub mod testing;

use async_trait::async_trait;

pub use copy::{copy_records, CopyReport};
pub use postgres::PostgresStore;
pub use sql_store::{Memo, SqlStore};
pub use sqlite::SqliteStore;

use crate::model::{
    ApiKey, Catalog, Course, Erasure, EvaluationRecord, EvaluationSummary, Exam, IdempotencyState,
    MarksSheetRow, ModerationItem, NewEvaluation, QuestionPaper, Submission, SubmissionSummary,
    User,
};

/// How a store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    /// Memoised results kept (LLM stage replies and OCR page texts); past this the oldest
    /// are deleted. The default, a million, is about 1 GB of replies.
    pub memo_max_entries: u64,
    /// Connections a PostgreSQL store keeps open at most. (SQLite's pool is fixed: one
    /// writer and a few readers per file.)
    pub max_connections: u32,
}

/// The memo's namespace of page texts read by OCR, keyed by the reading's configuration and
/// the image's hash (kept with each stored image as `ocr_memo_key`).
pub const OCR_MEMO: &str = "ocr";
/// The memo's namespace of validated LLM stage replies, keyed by the rendered prompt (kept
/// with each stored stage as `memo_key`).
pub const LLM_MEMO: &str = "llm";

/// The default bound of the memo.
pub const DEFAULT_MEMO_MAX_ENTRIES: u64 = 1_000_000;

/// The default bound of a PostgreSQL store's connection pool.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            memo_max_entries: DEFAULT_MEMO_MAX_ENTRIES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// What a catalog write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The record was new and is now stored.
    Created,
    /// An identical record was already stored; nothing changed.
    Unchanged,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A record with this key exists with different content.
    #[error("{kind} {key:?} already exists with different content")]
    Conflict { kind: &'static str, key: String },
    /// A record this one links to does not exist.
    #[error("{kind} {key:?} does not exist")]
    MissingLink { kind: &'static str, key: String },
    /// Stored data that cannot be read back (a bug or a hand-edited database).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The message includes the cause, so the cause is not also given as the error's
    /// source: a chain printed with `{:#}` would say it twice.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database URL names a backend this build does not have.
    #[error(
        "unsupported database URL {0:?}: expected sqlite://PATH or postgres://USER@HOST/DATABASE"
    )]
    Unsupported(String),
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// A listing was asked to go on after a record it does not hold.
    #[error("{kind} {key:?} is not in this listing")]
    UnknownCursor { kind: &'static str, key: String },
    /// An evaluation made from one version of a student's paper (a retry or a review) was
    /// not stored, because a newer version had been stored since.
    #[error("evaluation version {based_on} is not the newest: version {newest_version} ({newest_id}) was stored since")]
    Superseded {
        based_on: i64,
        newest_version: i64,
        newest_id: String,
    },
    /// A copy between databases that cannot be made.
    #[error("cannot copy: {0}")]
    Copy(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

/// Filters for listing submissions and evaluations, newest first.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub user_id: Option<String>,
    pub question_paper_code: Option<String>,
    /// Evaluations with this status only (`success`, `partial`, `failure`); not used for
    /// submissions.
    pub status: Option<String>,
    /// Evaluations with at least one question carrying this flag; not used for submissions.
    pub flag: Option<String>,
    /// Only each student's newest evaluation of each paper (older versions were retried,
    /// reviewed or graded again since); not used for submissions.
    pub latest: bool,
    /// The id of the last record of the previous page: the listing goes on after it. It
    /// must name a record of the filter's user and paper, else [`StoreError::UnknownCursor`].
    pub after: Option<String>,
    pub limit: i64,
}

/// The persistence seam. One implementation per database; chosen once from the URL.
#[async_trait]
pub trait Store: Send + Sync {
    async fn put_course(&self, course: &Course) -> Result<Written, StoreError>;
    async fn get_course(&self, code: &str) -> Result<Option<Course>, StoreError>;
    async fn list_courses(&self) -> Result<Vec<Course>, StoreError>;

    async fn put_exam(&self, exam: &Exam) -> Result<Written, StoreError>;
    async fn get_exam(&self, code: &str) -> Result<Option<Exam>, StoreError>;
    async fn list_exams(&self, course_code: Option<&str>) -> Result<Vec<Exam>, StoreError>;

    async fn put_question_paper(&self, paper: &QuestionPaper) -> Result<Written, StoreError>;
    async fn get_question_paper(&self, code: &str) -> Result<Option<QuestionPaper>, StoreError>;
    /// An exam and a question paper read together, as every upload and graded script does:
    /// a store may answer both with one query.
    async fn get_exam_and_paper(
        &self,
        exam_code: &str,
        question_paper_code: &str,
    ) -> Result<(Option<Exam>, Option<QuestionPaper>), StoreError> {
        tokio::try_join!(
            self.get_exam(exam_code),
            self.get_question_paper(question_paper_code)
        )
    }
    async fn list_question_papers(
        &self,
        exam_code: Option<&str>,
    ) -> Result<Vec<QuestionPaper>, StoreError>;

    async fn put_user(&self, user: &User) -> Result<Written, StoreError>;
    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<User>, StoreError>;

    /// Imports a whole catalog in one transaction; returns how many records were new.
    async fn import_catalog(&self, catalog: &Catalog) -> Result<usize, StoreError>;

    /// Stores a submission and registers its user if unknown, atomically. `images_digest`
    /// identifies the images (their content hashes in order) to recognise re-uploads.
    async fn insert_submission(
        &self,
        submission: &Submission,
        images_digest: &str,
    ) -> Result<(), StoreError>;
    /// The newest submission of a user for a paper made of exactly these images.
    async fn find_submission_by_images(
        &self,
        user_id: &str,
        question_paper_code: &str,
        images_digest: &str,
    ) -> Result<Option<Submission>, StoreError>;
    async fn get_submission(&self, id: &str) -> Result<Option<Submission>, StoreError>;
    async fn list_submissions(&self, filter: &Filter)
        -> Result<Vec<SubmissionSummary>, StoreError>;
    /// The newest submission of a user for a paper.
    async fn latest_submission(
        &self,
        user_id: &str,
        question_paper_code: &str,
    ) -> Result<Option<Submission>, StoreError>;

    /// Stores an evaluation with all its items, atomically; returns it with its id and
    /// version. Takes the evaluation so its items move into the record instead of being copied.
    async fn insert_evaluation(
        &self,
        evaluation: NewEvaluation,
    ) -> Result<EvaluationRecord, StoreError>;
    async fn get_evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError>;
    /// When the user's first evaluation of the paper (version 1) was stored, if one is.
    async fn first_evaluated_at(
        &self,
        user_id: &str,
        question_paper_code: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, StoreError>;
    async fn list_evaluations(&self, filter: &Filter)
        -> Result<Vec<EvaluationSummary>, StoreError>;
    /// The newest evaluation of every student graded on a paper, with each question's
    /// marks, by user id: the paper's marks sheet.
    async fn marks_sheet(
        &self,
        question_paper_code: &str,
    ) -> Result<Vec<MarksSheetRow>, StoreError>;

    /// Every question of each student's newest evaluation of the paper, by user id then
    /// position, with what moderation needs to compare graders and examiners.
    async fn moderation_items(
        &self,
        question_paper_code: &str,
    ) -> Result<Vec<ModerationItem>, StoreError>;

    /// A memoised value by content address (OCR results, LLM replies). Memoised values are a
    /// bounded cache: the oldest may be gone.
    async fn cache_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError>;
    async fn cache_put(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError>;
    /// Stores many memoised values at once, atomically: a write-behind queue drains into one
    /// transaction instead of one write (and one wait for the write lock) per value.
    async fn cache_put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError>;
    /// Deletes the memoised values under these keys; returns how many keys had one.
    async fn cache_forget(&self, namespace: &str, keys: &[String]) -> Result<u64, StoreError>;
    /// Stores a new API key by the hash of its secret.
    async fn create_api_key(&self, key: &ApiKey, key_hash: &str) -> Result<(), StoreError>;
    /// The active (not revoked) key with this secret hash.
    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError>;
    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// Revokes a key; false when no active key has that id.
    async fn revoke_api_key(&self, key_id: &str) -> Result<bool, StoreError>;

    /// Claims an idempotency key for a request, or says why it cannot be run now.
    /// A claim older than `stale_after_secs` is taken over (its request died).
    async fn idempotency_begin(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
        request_hash: &str,
        stale_after_secs: i64,
    ) -> Result<IdempotencyState, StoreError>;
    /// Records the response of a claimed key, for replay.
    async fn idempotency_complete(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
        status: u16,
        body: &str,
        user_id: &str,
    ) -> Result<(), StoreError>;
    /// Deletes everything stored about one user, in one transaction: submissions (with
    /// their images' OCR text and answers), every version of their evaluations, the user
    /// record, API keys bound to the user, and responses kept for replay that are about the
    /// user or were made with those keys. The memo entries under the keys those records
    /// kept (their pages' OCR texts, the LLM replies about their answers) are deleted just
    /// before the transaction commits; should that fail, nothing is committed. Catalog records
    /// are not touched.
    async fn erase_user(&self, user_id: &str) -> Result<Erasure, StoreError>;
    /// Gives a claimed key back after a failure, so a retry runs the request again.
    async fn idempotency_release(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
    ) -> Result<(), StoreError>;

    /// Cheap liveness check of the database.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// `url` with its password, if any, replaced by `***`: for logs, errors and `config show`.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// Opens the store named by `url` (`sqlite://path` or `postgres://…`), creating and
/// migrating it.
pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    open_with(url, &StoreOptions::default()).await
}

/// Opens the store at `url` with `options`.
pub async fn open_with(
    url: &str,
    options: &StoreOptions,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(std::sync::Arc::new(SqliteStore::open(path, options).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(std::sync::Arc::new(
            PostgresStore::open(url, options).await?,
        ))
    } else {
        Err(StoreError::Unsupported(redact_url(url)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_is_shown_without_its_password() {
        assert_eq!(
            redact_url("postgres://examiner:s3cret@db:5432/examiner?sslmode=require"),
            "postgres://examiner:***@db:5432/examiner?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/test"),
            "postgres://postgres@127.0.0.1/test"
        );
        assert_eq!(
            redact_url("sqlite:///data/examiner.db"),
            "sqlite:///data/examiner.db"
        );
    }

    #[tokio::test]
    async fn an_unknown_scheme_is_refused_without_echoing_a_password() {
        let Err(err) = open("mysql://root:pw@localhost/examiner").await else {
            panic!("a mysql URL was accepted");
        };
        let text = err.to_string();
        assert!(
            text.contains("expected sqlite://PATH or postgres://"),
            "{text}"
        );
        assert!(!text.contains("pw@"), "{text}");
    }
}
