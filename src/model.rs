//! The records Examiner keeps — catalog (courses, exams, question papers, users) and
//! student submissions — as plain data shared by the store and the HTTP edge.
//!
//! Values here are already validated: question numbers are canonical, marks are finite and
//! non-negative. Parsing and checking happen at the edges (`http`, `cli::catalog`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::segment::QuestionNumber;

/// Roles of the stages recorded by people rather than graders (`EvaluationItem::stages`;
/// the graders' roles are `grade::StageRole`).
pub mod stage_role {
    /// An examiner set the marks by hand (`POST /evaluations/{id}/review`).
    pub const EXAMINER: &str = "examiner";
    /// The student asked for the marks to be looked at again.
    pub const REGRADE_REQUEST: &str = "regrade_request";
}

/// The flags a graded question can carry (`EvaluationItem::flags`), named once so that
/// listings can be filtered by them and a mistyped filter is refused, not silently empty.
pub mod flag {
    /// The answer is empty or a stock non-answer; it got 0 without a model.
    pub const EMPTY_ANSWER: &str = "empty_answer";
    /// The student answer looks like it addresses the grader; the arbiter decided.
    pub const POSSIBLE_PROMPT_INJECTION: &str = "possible_prompt_injection";
    /// The final marks and the embedded grader's estimate differ by more than
    /// `grading.review_threshold_fraction` of the marks.
    pub const NEEDS_REVIEW: &str = "needs_review";
    /// The embedded grader's second opinion was asked for but not in by the time the request
    /// stopped waiting (`grading.second_opinion_wait_secs`), so `needs_review` could not be
    /// decided.
    pub const SECOND_OPINION_MISSING: &str = "second_opinion_missing";
    /// The answer graded was read from its page with low OCR confidence: the marks may
    /// reflect the transcription rather than what the student wrote.
    pub const LOW_OCR_CONFIDENCE: &str = "low_ocr_confidence";
    /// The marks came from the embedded grader, not an LLM.
    pub const OFFLINE_LOCAL_GRADER: &str = "offline_local_grader";
    /// The embedded grader found the answer far from the standard answer's topic.
    pub const POSSIBLY_OFF_TOPIC: &str = "possibly_off_topic";
    /// The question is worth more marks than any the embedded grader's calibration was
    /// fitted on (`fitted_max_marks` of its profile). In `local` mode its marks are an
    /// extrapolation; in `llm` mode its second opinion did not decide `needs_review`.
    pub const BEYOND_CALIBRATION: &str = "beyond_calibration";
    /// The embedded grader could not grade the answer (its `error` says why).
    pub const GRADER_ERROR: &str = "grader_error";
    /// An examiner set the marks by hand (`POST /evaluations/{id}/review`); the stage
    /// `examiner` of the question records who, when, and the marks it replaced.
    pub const REVIEWED: &str = "reviewed";
    /// The student asked for the marks to be looked at again
    /// (`POST /evaluations/{id}/regrade-request`); an examiner's review settles it.
    pub const REGRADE_REQUESTED: &str = "regrade_requested";
    /// The script has no answer numbered as this question, but one numbered as the whole it
    /// belongs to or as a part of it (the script's "2" for the paper's "2.a" and "2.b"),
    /// which matches no question of the paper and was not graded: an examiner should look.
    pub const ANSWER_NUMBERED_DIFFERENTLY: &str = "answer_numbered_differently";

    /// All of the above.
    pub const ALL: &[&str] = &[
        EMPTY_ANSWER,
        POSSIBLE_PROMPT_INJECTION,
        NEEDS_REVIEW,
        SECOND_OPINION_MISSING,
        LOW_OCR_CONFIDENCE,
        OFFLINE_LOCAL_GRADER,
        POSSIBLY_OFF_TOPIC,
        BEYOND_CALIBRATION,
        GRADER_ERROR,
        REVIEWED,
        REGRADE_REQUESTED,
        ANSWER_NUMBERED_DIFFERENTLY,
    ];

    /// Flags that ask for an examiner (`beyond_calibration` does in `local` mode, where the
    /// marks are an extrapolation); an examiner's review of the question settles them, and
    /// the moderation report shows how often each one's marks were changed.
    pub const SETTLED_BY_REVIEW: &[&str] = &[
        NEEDS_REVIEW,
        SECOND_OPINION_MISSING,
        BEYOND_CALIBRATION,
        GRADER_ERROR,
        REGRADE_REQUESTED,
        ANSWER_NUMBERED_DIFFERENTLY,
    ];
}

/// A course, e.g. a professional qualification level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Course {
    #[schema(example = "CA-FND-2024")]
    pub course_code: String,
    #[schema(example = "CA Foundation (2024 scheme)")]
    pub course_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// An exam of a course.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Exam {
    #[schema(example = "CA-FO-PAPER1")]
    pub exam_code: String,
    #[schema(example = "CA-FND-2024")]
    pub course_code: String,
    #[schema(example = "Paper 1: Principles and Practice of Accounting")]
    pub exam_name: String,
    /// The exam's full marks; when absent, a paper's question marks are summed instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = 100)]
    pub total_exam_marks: Option<f64>,
}

/// One question of a paper with its standard (model) answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Question {
    /// Canonical question number (`1.a`, `2`, `3.b.ii`); other spellings (`1(a)`, `Q2`) are accepted and normalised.
    #[schema(value_type = String, example = "1.a")]
    pub question_number: QuestionNumber,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub question_text: Option<String>,
    pub standard_answer: String,
    #[schema(example = 10)]
    pub total_marks: f64,
}

/// A question paper and its questions, in paper order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuestionPaper {
    #[schema(example = "QP001")]
    pub question_paper_code: String,
    #[schema(example = "CA-FO-PAPER1")]
    pub exam_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Granularity marks are rounded to (default: the service's `grading.default_marks_step`, 0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub marks_step: Option<f64>,
    pub questions: Vec<Question>,
}

impl QuestionPaper {
    /// Sum of the questions' marks.
    pub fn total_marks(&self) -> f64 {
        self.questions
            .iter()
            .map(|q| q.total_marks)
            .fold(0.0, |a, b| a + b)
    }

    /// The paper's question numbers in paper order.
    pub fn question_numbers(&self) -> Vec<QuestionNumber> {
        self.questions
            .iter()
            .map(|q| q.question_number.clone())
            .collect()
    }
}

/// A student (or any person answers are stored for).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct User {
    #[schema(example = "USER123")]
    pub user_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// A whole catalog, as imported from a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Catalog {
    pub courses: Vec<Course>,
    pub exams: Vec<Exam>,
    pub question_papers: Vec<QuestionPaper>,
    pub users: Vec<User>,
}

/// One uploaded image as stored: where it came from, what it was, and what OCR read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmissionImage {
    pub image_id: String,
    /// The URL given; `data:` URLs are stored as a short description, not their bytes.
    pub image_url: String,
    /// SHA-256 of the image bytes, hex.
    pub content_sha256: String,
    /// `application/pdf` for a PDF, else the image's type.
    pub media_type: String,
    pub byte_size: i64,
    /// Pages read: 1 for an image, the page count for a PDF.
    #[serde(default = "one_page")]
    pub page_count: i64,
    /// In pixels, as read; for a PDF, its first page as rendered.
    pub width: i64,
    pub height: i64,
    /// For a PDF, its pages' texts in order, one line apart.
    pub ocr_text: String,
    /// Mean word confidence of the OCR engine, 0 to 1; for a PDF, its least legible page's.
    pub ocr_confidence: f64,
    pub ocr_engine: String,
    /// The key of the page's text in the memo (namespace `ocr`), so that erasing the user's
    /// data deletes it there too; `None` for images stored before keys were kept.
    #[serde(default)]
    pub ocr_memo_key: Option<String>,
}

fn one_page() -> i64 {
    1
}

/// A question-answer pair as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StoredQaPair {
    #[schema(value_type = String, example = "1.a")]
    pub question_number: QuestionNumber,
    pub answer: String,
    /// The lowest OCR confidence (0 to 1) of the pages the answer was read from; absent for
    /// submissions stored before confidences were kept per pair.
    #[serde(default)]
    pub ocr_confidence: Option<f64>,
    /// The engine that read those pages (`"mixed"` when they were read by different engines).
    #[serde(default)]
    pub ocr_engine: Option<String>,
    /// True when `ocr_confidence` is under `ocr.low_confidence_below`: review this answer's
    /// transcription first.
    #[serde(default)]
    pub low_ocr_confidence: bool,
}

/// One upload of a student's answer script: everything it produced, stored atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Submission {
    pub submission_id: String,
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    pub images: Vec<SubmissionImage>,
    pub extracted_text: String,
    /// Text before the first recognised question number.
    pub unassigned_text: String,
    pub qa_pairs: Vec<StoredQaPair>,
    pub created_at: DateTime<Utc>,
}

/// A submission without its images and text, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SubmissionSummary {
    pub submission_id: String,
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    pub image_count: i64,
    /// Pages read in all: an image is one, a PDF as many as it has.
    pub page_count: i64,
    pub question_count: i64,
    pub created_at: DateTime<Utc>,
}

/// What happened to one question of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Marks were awarded.
    Graded,
    /// The paper has the question but the submission has no answer to it: 0 marks.
    NotAnswered,
    /// No grader could mark it (backend failures); marks are null, never invented.
    Failed,
}

/// One graded question, with the full audit trail of how its marks came about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvaluationItem {
    #[schema(value_type = String, example = "1.a")]
    pub question_number: QuestionNumber,
    /// The question as set, when the request or the stored paper gave it: graded with it,
    /// and graded again with it by a retry.
    #[serde(default)]
    pub question_text: Option<String>,
    pub student_answer: String,
    pub standard_answer: String,
    pub total_marks: f64,
    /// Null when the question could not be graded.
    pub marks_awarded: Option<f64>,
    /// Student-facing feedback of the stage whose marks stand.
    pub llm_evaluation: String,
    /// Examiner-facing reasoning of that stage.
    pub reasoning: Option<String>,
    pub status: ItemStatus,
    pub error: Option<String>,
    /// Review flags, e.g. `possible_prompt_injection`, `needs_review`, `second_opinion_missing`.
    pub flags: Vec<String>,
    /// `evaluator` when the verifier confirmed it, `arbiter` otherwise.
    pub final_stage: Option<String>,
    /// Every stage's model, prompt version, structured reply, marks, latency and tokens.
    #[schema(value_type = Vec<Object>)]
    pub stages: Stages,
}

/// A question's stages (a JSON list) held as the JSON text that is stored. Grading encodes
/// them once, straight from the stage records, and the store writes that text as it is:
/// building them as a `Value` tree first, only to encode the tree, was 2.6 % of Examiner's
/// CPU under load (BENCHMARKS.md, step 20). Readers that look inside parse them ([`Stages::list`]).
#[derive(Clone, Debug)]
pub struct Stages(Box<serde_json::value::RawValue>);

impl Stages {
    /// The stages encoded from `records` (a list of anything serialisable).
    pub fn encode<T: Serialize + ?Sized>(records: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(records).map(Stages)
    }

    /// Stored text, checked to be JSON.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        serde_json::value::RawValue::from_string(text).map(Stages)
    }

    pub fn as_text(&self) -> &str {
        self.0.get()
    }

    /// The stages as a list of values; empty when the text is not a list.
    pub fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(self.0.get()).unwrap_or_default()
    }

    /// The stages as a value (a list, unless stored otherwise).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(self.0.get()).unwrap_or(serde_json::Value::Null)
    }
}

impl Default for Stages {
    fn default() -> Self {
        Stages::from(serde_json::Value::Array(Vec::new()))
    }
}

impl From<serde_json::Value> for Stages {
    fn from(value: serde_json::Value) -> Self {
        // A `Value` always encodes.
        Stages(serde_json::value::to_raw_value(&value).expect("a JSON value encodes"))
    }
}

/// Equal when the JSON is: a database may store the text with other spacing or key order.
impl PartialEq for Stages {
    fn eq(&self, other: &Self) -> bool {
        self.as_text() == other.as_text() || self.to_value() == other.to_value()
    }
}

impl Serialize for Stages {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Stages {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Through a `Value`, so that any self-describing format reads them, not only JSON.
        serde_json::Value::deserialize(deserializer).map(Stages::from)
    }
}

/// An evaluation ready to be stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvaluation {
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    /// The submission graded, when grading stored answers.
    pub submission_id: Option<String>,
    /// Which grader produced it (`llm`, `local`).
    pub grader: String,
    pub total_exam_marks: f64,
    pub final_score: f64,
    /// `success`, `partial` or `failure`, as in the response.
    pub status: String,
    pub items: Vec<EvaluationItem>,
    /// The version this one was made from (a retry or a review of it). Storing fails with
    /// `StoreError::Superseded` when a newer version of the student's paper has been stored
    /// since, so a change made from an old version never silently replaces a newer one.
    #[serde(default)]
    pub replaces_version: Option<i64>,
}

impl NewEvaluation {
    /// The record as stored under `evaluation_id` and `version`; the items move, not copied.
    pub fn into_record(
        self,
        evaluation_id: String,
        version: i64,
        created_at: DateTime<Utc>,
    ) -> EvaluationRecord {
        EvaluationRecord {
            evaluation_id,
            version,
            user_id: self.user_id,
            course_code: self.course_code,
            exam_code: self.exam_code,
            question_paper_code: self.question_paper_code,
            submission_id: self.submission_id,
            grader: self.grader,
            total_exam_marks: self.total_exam_marks,
            final_score: self.final_score,
            status: self.status,
            items: self.items,
            created_at,
        }
    }
}

/// A stored evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvaluationRecord {
    pub evaluation_id: String,
    /// 1 for the first evaluation of this user's paper, then 2, 3, ...; older versions are kept.
    pub version: i64,
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    pub submission_id: Option<String>,
    pub grader: String,
    pub total_exam_marks: f64,
    pub final_score: f64,
    pub status: String,
    pub items: Vec<EvaluationItem>,
    pub created_at: DateTime<Utc>,
}

impl EvaluationRecord {
    /// The next version of this evaluation with these items (a retry, a review or a
    /// regrade request), made by the same grader; the score and status are for the caller
    /// to total.
    pub fn next_version(self, items: Vec<EvaluationItem>) -> NewEvaluation {
        NewEvaluation {
            user_id: self.user_id,
            course_code: self.course_code,
            exam_code: self.exam_code,
            question_paper_code: self.question_paper_code,
            submission_id: self.submission_id,
            grader: self.grader,
            total_exam_marks: self.total_exam_marks,
            final_score: 0.0,
            status: String::new(),
            items,
            replaces_version: Some(self.version),
        }
    }
}

/// An evaluation without its items, for listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EvaluationSummary {
    pub evaluation_id: String,
    pub version: i64,
    pub user_id: String,
    pub question_paper_code: String,
    pub submission_id: Option<String>,
    pub grader: String,
    pub total_exam_marks: f64,
    pub final_score: f64,
    pub status: String,
    /// The flags raised on any of its questions (e.g. `needs_review`), sorted.
    pub flags: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// One student's row of a paper's marks sheet: their newest evaluation for the paper and
/// the marks of each question it graded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MarksSheetRow {
    #[serde(flatten)]
    pub evaluation: EvaluationSummary,
    pub marks: Vec<QuestionMarks>,
}

/// The marks of one question, as a marks sheet shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct QuestionMarks {
    #[schema(value_type = String, example = "1.a")]
    pub question_number: QuestionNumber,
    pub total_marks: f64,
    /// Null when the question could not be graded (its evaluation is `partial`).
    pub marks_awarded: Option<f64>,
}

/// One question of a student's newest evaluation of a paper, as moderation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModerationItem {
    pub user_id: String,
    pub question_number: QuestionNumber,
    pub total_marks: f64,
    pub marks_awarded: Option<f64>,
    pub flags: Vec<String>,
    /// An examiner set the marks (`final_stage` is `examiner`).
    pub reviewed: bool,
    /// For a reviewed question, the marks that stood before its first review (the
    /// grader's); `None` when the grader had given none (it failed) or it was not reviewed.
    pub grader_marks: Option<f64>,
    /// For a reviewed question, the flags its first review settled (`needs_review`,
    /// `regrade_requested`, ...): why it was reviewed. Empty when the examiner chose it.
    pub review_reasons: Vec<String>,
}

/// What erasing a user's data removed (`DELETE /users/{user_id}`, `examiner erase-user`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Erasure {
    pub user_id: String,
    /// The user record (name, email) was deleted; false when there was none.
    pub user_record: bool,
    /// Submissions, with their images' OCR text and their answers.
    pub submissions: u64,
    /// Evaluations, counting every version.
    pub evaluations: u64,
    /// The ids of the API keys bound to the user (student keys), deleted.
    pub api_keys: Vec<String>,
    /// Responses kept to answer repeated requests with the same `Idempotency-Key`.
    pub replayable_responses: u64,
    /// Memoised results derived from the user's pages and answers (OCR texts, LLM replies),
    /// found by the keys kept with the records erased.
    pub memoised_results: u64,
}

impl Erasure {
    /// Nothing was stored about the user.
    pub fn is_empty(&self) -> bool {
        !self.user_record
            && self.submissions == 0
            && self.evaluations == 0
            && self.api_keys.is_empty()
            && self.replayable_responses == 0
            && self.memoised_results == 0
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Examiner rights plus managing keys.
    Admin,
    /// The catalog and every student's results; may grade with its own answer key.
    Examiner,
    /// Its own uploads, evaluations and results only.
    Student,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Examiner => "examiner",
            Role::Student => "student",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "examiner" => Some(Role::Examiner),
            "student" => Some(Role::Student),
            _ => None,
        }
    }
}

/// A stored API key, without the secret (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub key_id: String,
    pub role: Role,
    /// The user a student key acts for.
    pub user_id: Option<String>,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked: bool,
}

/// Where an idempotent request stands.
#[derive(Debug, Clone, PartialEq)]
pub enum IdempotencyState {
    /// First time: the caller runs the request and then completes or releases the key.
    Fresh,
    /// Already done: replay this response.
    Completed { status: u16, body: String },
    /// Another request with this key is running.
    InProgress,
    /// The key was used before with a different request body.
    Mismatch,
}
