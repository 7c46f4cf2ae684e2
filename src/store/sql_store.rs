//! [`Store`] for any SQL database sqlx drives whose connections implement [`Conn`]: SQLite and
//! PostgreSQL. The records' SQL is in [`super::sql`]; what a backend brings is its pools (which
//! connection reads, which writes) and its memo ([`Memo`]).
//!
//! Exams, papers and users already seen are served from memory ([`super::known`]): they never
//! change once stored, whichever process stored them (a user can be erased; see there).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{SubsecRound, Utc};
use sha2::{Digest, Sha256};
use sqlx::Connection;

use super::connections::Connections;
use super::known::Known;
use super::sql::{self, Conn};
use super::{Filter, Store, StoreError, Written};
use crate::model::{
    ApiKey, Catalog, Course, Erasure, EvaluationRecord, EvaluationSummary, Exam, IdempotencyState,
    MarksSheetRow, ModerationItem, NewEvaluation, QuestionPaper, Submission, SubmissionSummary,
    User,
};

/// Memoised values by content address: each backend keeps them its own way.
#[async_trait]
pub trait Memo: Send + Sync + 'static {
    async fn get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError>;
    /// Stores the entries at once; a later entry under a key supersedes an earlier one.
    async fn put_many(
        &self,
        namespace: &str,
        entries: &[(String, String)],
    ) -> Result<(), StoreError>;
    /// Deletes the entries under these keys, every copy of each; returns how many keys had
    /// one. Keys with none are skipped.
    async fn forget(&self, namespace: &str, keys: &[String]) -> Result<u64, StoreError>;
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Whether memo row `id` is among the older half of a memo whose newest row is `newest`, i.e.
/// among the rows the next trims delete: a hit there is written again (a second chance). Ids
/// grow by one per appended row, so their distance counts the rows appended since.
pub(super) fn is_in_older_half(id: i64, newest: i64, max_entries: u64) -> bool {
    max_entries >= 2 && newest - id >= i64::try_from(max_entries / 2).unwrap_or(i64::MAX)
}

/// 64 bits of SHA-256 over (namespace, key), by which each process keeps the memo's index
/// in memory: stored, so it must not change between builds. Two entries sharing them cost a
/// lookup that finds the other's row, sees its key differ, and answers "absent": a repeated
/// computation, never a wrong value.
pub(super) fn memo_address(namespace: &str, key: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(namespace)
        .chain_update([0])
        .chain_update(key)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// Stops a background task when the last clone of its owner goes.
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The records in one database, the memo beside them.
pub struct SqlStore<DB: sqlx::Database, M> {
    /// Reads.
    pub(super) reader: Connections<DB>,
    /// Writes; on SQLite one connection (see `sqlite.rs`), on PostgreSQL the reader pool.
    pub(super) writer: Connections<DB>,
    pub(super) memo: Arc<M>,
    pub(super) known: Arc<Known>,
    /// Background work that lives as long as the store (SQLite's checkpoints).
    pub(super) _background: Option<Arc<AbortOnDrop>>,
    /// A statement that, run first in an evaluation's transaction with the user and paper
    /// as its one argument, holds off other writers of that pair's versions until commit.
    /// SQLite needs none (one writer at a time); on PostgreSQL concurrent transactions
    /// would otherwise all compute the same next version and all but one start over.
    pub(super) version_lock: Option<&'static str>,
}

impl<DB: sqlx::Database, M> Clone for SqlStore<DB, M> {
    fn clone(&self) -> Self {
        Self {
            reader: self.reader.clone(),
            writer: self.writer.clone(),
            memo: self.memo.clone(),
            known: self.known.clone(),
            _background: self._background.clone(),
            version_lock: self.version_lock,
        }
    }
}

impl<DB: sqlx::Database, M> SqlStore<DB, M> {
    pub(super) fn new(
        reader: Connections<DB>,
        writer: Connections<DB>,
        memo: Arc<M>,
        background: Option<Arc<AbortOnDrop>>,
    ) -> Self {
        Self {
            reader,
            writer,
            memo,
            known: Arc::default(),
            _background: background,
            version_lock: None,
        }
    }

    /// Sets [`SqlStore::version_lock`].
    pub(super) fn with_version_lock(mut self, statement: &'static str) -> Self {
        self.version_lock = Some(statement);
        self
    }
}

/// Stores a new evaluation with one script ([`sql::insert_evaluation_script`]) where the
/// database runs scripts and nothing needs checking before the commit (a change based on
/// a version does). `None`: nothing was stored, and the caller goes statement by
/// statement. The evaluation comes back either way.
async fn insert_evaluation_in_one_call<DB>(
    writer: &Connections<DB>,
    known: &Known,
    e: NewEvaluation,
    evaluation_id: &str,
    created_at: chrono::DateTime<Utc>,
) -> Result<(NewEvaluation, Option<i64>), StoreError>
where
    DB: sqlx::Database,
    DB::Connection: Conn,
{
    if !<DB::Connection as Conn>::SCRIPTS || e.replaces_version.is_some() {
        return Ok((e, None));
    }
    let register_user = !known.has_user(&e.user_id);
    let writer = writer.clone();
    let evaluation_id = evaluation_id.to_string();
    // In a task of its own, so that a request cancelled meanwhile cannot stop the script
    // between its BEGIN and its COMMIT or rollback.
    let task = tokio::spawn(async move {
        let outcome = async {
            let mut conn = writer.acquire().await?;
            let outcome = sql::insert_evaluation_script(
                &mut *conn,
                &e,
                &evaluation_id,
                created_at,
                register_user,
            )
            .await?;
            if outcome == sql::ScriptOutcome::Unsettled {
                conn.close_on_drop();
            }
            Ok::<_, StoreError>(outcome)
        }
        .await;
        (e, outcome)
    });
    let (e, outcome) = task
        .await
        .map_err(|err| StoreError::Corrupt(format!("storing an evaluation failed: {err}")))?;
    match outcome? {
        sql::ScriptOutcome::Committed(version) => Ok((e, Some(version))),
        sql::ScriptOutcome::RolledBack | sql::ScriptOutcome::Unsettled => Ok((e, None)),
    }
}

/// A write of several statements runs in a transaction on the writer; a read takes a reader.
#[async_trait]
impl<DB, M> Store for SqlStore<DB, M>
where
    DB: sqlx::Database,
    DB::Connection: Conn,
    M: Memo,
{
    async fn put_course(&self, course: &Course) -> Result<Written, StoreError> {
        sql::put_course(&mut *self.writer.acquire().await?, course).await
    }

    async fn get_course(&self, code: &str) -> Result<Option<Course>, StoreError> {
        sql::get_course(&mut *self.reader.acquire().await?, code).await
    }

    async fn list_courses(&self) -> Result<Vec<Course>, StoreError> {
        sql::list_courses(&mut *self.reader.acquire().await?).await
    }

    async fn put_exam(&self, exam: &Exam) -> Result<Written, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let mut tx = conn.begin().await?;
        let written = sql::put_exam(&mut *tx, exam).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn get_exam(&self, code: &str) -> Result<Option<Exam>, StoreError> {
        if let Some(exam) = self.known.exam(code) {
            return Ok(Some(exam));
        }
        let exam = sql::get_exam(&mut *self.reader.acquire().await?, code).await?;
        if let Some(exam) = &exam {
            self.known.remember_exam(exam);
        }
        Ok(exam)
    }

    async fn list_exams(&self, course_code: Option<&str>) -> Result<Vec<Exam>, StoreError> {
        sql::list_exams(&mut *self.reader.acquire().await?, course_code).await
    }

    async fn put_question_paper(&self, paper: &QuestionPaper) -> Result<Written, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let mut tx = conn.begin().await?;
        let written = sql::put_paper(&mut *tx, paper).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn get_question_paper(&self, code: &str) -> Result<Option<QuestionPaper>, StoreError> {
        if let Some(paper) = self.known.paper(code) {
            return Ok(Some(paper));
        }
        let paper = sql::get_paper(&mut *self.reader.acquire().await?, code).await?;
        if let Some(paper) = &paper {
            self.known.remember_paper(paper);
        }
        Ok(paper)
    }

    async fn get_exam_and_paper(
        &self,
        exam_code: &str,
        question_paper_code: &str,
    ) -> Result<(Option<Exam>, Option<QuestionPaper>), StoreError> {
        let (exam, paper) = (
            self.known.exam(exam_code),
            self.known.paper(question_paper_code),
        );
        if exam.is_some() && paper.is_some() {
            return Ok((exam, paper));
        }
        let (exam, paper) = sql::get_exam_and_paper(
            &mut *self.reader.acquire().await?,
            exam_code,
            question_paper_code,
        )
        .await?;
        if let Some(exam) = &exam {
            self.known.remember_exam(exam);
        }
        if let Some(paper) = &paper {
            self.known.remember_paper(paper);
        }
        Ok((exam, paper))
    }

    async fn list_question_papers(
        &self,
        exam_code: Option<&str>,
    ) -> Result<Vec<QuestionPaper>, StoreError> {
        sql::list_papers(&mut *self.reader.acquire().await?, exam_code).await
    }

    async fn put_user(&self, user: &User) -> Result<Written, StoreError> {
        sql::put_user(&mut *self.writer.acquire().await?, user).await
    }

    async fn get_user(&self, user_id: &str) -> Result<Option<User>, StoreError> {
        sql::get_user(&mut *self.reader.acquire().await?, user_id).await
    }

    async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        sql::list_users(&mut *self.reader.acquire().await?).await
    }

    async fn import_catalog(&self, catalog: &Catalog) -> Result<usize, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let mut tx = conn.begin().await?;
        let created = sql::import_catalog(&mut *tx, catalog).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn insert_submission(
        &self,
        submission: &Submission,
        images_digest: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        let mut tx = conn.begin().await?;
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
        let mut conn = self.reader.acquire().await?;
        sql::latest_submission(
            &mut *conn,
            user_id,
            question_paper_code,
            Some(images_digest),
        )
        .await
    }

    async fn get_submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        sql::get_submission(&mut *self.reader.acquire().await?, id).await
    }

    async fn list_submissions(
        &self,
        filter: &Filter,
    ) -> Result<Vec<SubmissionSummary>, StoreError> {
        sql::list_submissions(&mut *self.reader.acquire().await?, filter).await
    }

    async fn latest_submission(
        &self,
        user_id: &str,
        question_paper_code: &str,
    ) -> Result<Option<Submission>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        sql::latest_submission(&mut *conn, user_id, question_paper_code, None).await
    }

    async fn insert_evaluation(&self, e: NewEvaluation) -> Result<EvaluationRecord, StoreError> {
        let evaluation_id = uuid::Uuid::now_v7().to_string();
        // Stored to the microsecond, so the record answered is the record read back later.
        let created_at = Utc::now().trunc_subsecs(6);
        let (e, scripted) =
            insert_evaluation_in_one_call(&self.writer, &self.known, e, &evaluation_id, created_at)
                .await?;
        if let Some(version) = scripted {
            self.known.remember_user(&e.user_id);
            return Ok(e.into_record(evaluation_id, version, created_at));
        }
        // Another writer storing an evaluation of the same paper may take the version number
        // first (another process on SQLite; see `version_lock` for PostgreSQL): the unique
        // (user, paper, version) refuses this one, which runs again with the next number, so
        // both are kept.
        let mut attempt = 0;
        let version = loop {
            attempt += 1;
            let register_user = !self.known.has_user(&e.user_id);
            let result = async {
                let mut conn = self.writer.acquire().await?;
                let mut tx = conn.begin().await?;
                if let Some(lock) = self.version_lock {
                    let pair = format!("{}\u{1f}{}", e.user_id, e.question_paper_code);
                    tx.execute(lock, sql::args![&pair]).await?;
                }
                let Some(version) =
                    sql::insert_evaluation(&mut *tx, &e, &evaluation_id, created_at, register_user)
                        .await?
                else {
                    return Ok(None);
                };
                // Checked after the insert, under the write lock that numbering takes, so two
                // changes made from the same version cannot both be stored.
                if let Some(based_on) = e.replaces_version.filter(|v| version != v + 1) {
                    let newest_version = version - 1;
                    let newest_id =
                        sql::evaluation_id_of_version(&mut *tx, &e, newest_version).await?;
                    return Err(StoreError::Superseded {
                        based_on,
                        newest_version,
                        newest_id,
                    });
                }
                tx.commit().await?;
                Ok(Some(version))
            }
            .await;
            match result {
                Err(err) if attempt < 5 && sql::is_unique_violation(&err) => continue,
                // Remembered, but erased since (by another process): register it again.
                Ok(None) if !register_user => self.known.forget_user(&e.user_id),
                Ok(None) => {
                    return Err(StoreError::Corrupt(format!(
                        "user {:?} was registered but is not stored",
                        e.user_id
                    )))
                }
                Ok(Some(version)) => break version,
                Err(err) => return Err(err),
            }
        };
        self.known.remember_user(&e.user_id);
        Ok(e.into_record(evaluation_id, version, created_at))
    }

    async fn get_evaluation(&self, id: &str) -> Result<Option<EvaluationRecord>, StoreError> {
        sql::get_evaluation(&mut *self.reader.acquire().await?, id).await
    }

    async fn first_evaluated_at(
        &self,
        user_id: &str,
        question_paper_code: &str,
    ) -> Result<Option<chrono::DateTime<Utc>>, StoreError> {
        let mut conn = self.reader.acquire().await?;
        sql::first_evaluated_at(&mut *conn, user_id, question_paper_code).await
    }

    async fn marks_sheet(
        &self,
        question_paper_code: &str,
    ) -> Result<Vec<MarksSheetRow>, StoreError> {
        sql::marks_sheet(&mut *self.reader.acquire().await?, question_paper_code).await
    }

    async fn moderation_items(
        &self,
        question_paper_code: &str,
    ) -> Result<Vec<ModerationItem>, StoreError> {
        sql::moderation_items(&mut *self.reader.acquire().await?, question_paper_code).await
    }

    async fn list_evaluations(
        &self,
        filter: &Filter,
    ) -> Result<Vec<EvaluationSummary>, StoreError> {
        sql::list_evaluations(&mut *self.reader.acquire().await?, filter).await
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
        if entries.is_empty() {
            return Ok(());
        }
        self.memo.put_many(namespace, entries).await
    }

    async fn cache_forget(&self, namespace: &str, keys: &[String]) -> Result<u64, StoreError> {
        self.memo.forget(namespace, keys).await
    }

    async fn create_api_key(&self, key: &ApiKey, key_hash: &str) -> Result<(), StoreError> {
        sql::create_api_key(&mut *self.writer.acquire().await?, key, key_hash).await
    }

    async fn find_api_key(&self, key_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        sql::find_api_key(&mut *self.reader.acquire().await?, key_hash).await
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        sql::list_api_keys(&mut *self.reader.acquire().await?).await
    }

    async fn revoke_api_key(&self, key_id: &str) -> Result<bool, StoreError> {
        sql::revoke_api_key(&mut *self.writer.acquire().await?, key_id).await
    }

    async fn idempotency_begin(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
        request_hash: &str,
        stale_after_secs: i64,
    ) -> Result<IdempotencyState, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let mut tx = conn.begin().await?;
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
        user_id: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        sql::idempotency_complete(&mut *conn, (scope, endpoint, key), status, body, user_id).await
    }

    async fn erase_user(&self, user_id: &str) -> Result<Erasure, StoreError> {
        let mut conn = self.writer.acquire().await?;
        let mut tx = conn.begin().await?;
        let memo_keys = sql::user_memo_keys(&mut *tx, user_id).await?;
        let mut erasure = sql::erase_user(&mut *tx, user_id).await?;
        // Before the commit: should this fail, the records stay, and with them the keys that
        // find these entries when the erasure is tried again.
        for (namespace, keys) in memo_keys {
            erasure.memoised_results += self.memo.forget(namespace, &keys).await?;
        }
        tx.commit().await?;
        self.known.forget_user(user_id);
        Ok(erasure)
    }

    async fn idempotency_release(
        &self,
        scope: &str,
        endpoint: &str,
        key: &str,
    ) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await?;
        sql::idempotency_release(&mut *conn, (scope, endpoint, key)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sql::ping(&mut *self.reader.acquire().await?).await?;
        self.memo.ping().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_addresses_are_stable_and_keep_namespaces_apart() {
        // Stored beside every memo entry (SQLite's memo file, PostgreSQL's memo table), so a
        // change here would orphan every stored entry.
        assert_eq!(memo_address("llm", "k"), memo_address("llm", "k"));
        assert_ne!(memo_address("llm", "k"), memo_address("ocr", "k"));
        assert_ne!(memo_address("ll", "mk"), memo_address("llm", "k"));
        let digest = Sha256::digest(b"llm\0k");
        assert_eq!(
            memo_address("llm", "k"),
            u64::from_le_bytes(digest[..8].try_into().unwrap())
        );
    }
}
