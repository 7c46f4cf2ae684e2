//! The two endpoints of the fixed contract (`POST /upload-exam-answers`,
//! `POST /evaluate-answers`) and the read endpoints for what they stored.
//!
//! Field names and nesting follow `spec/api.md` exactly; extra fields beside them
//! (`submission_id`, `unassigned_text`, `evaluation_id`, per-question `error` and `flags`)
//! are additions clients may ignore. Failures use the contract's shape (see [`SpecError`]).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::{IntoParams, ToSchema};

use super::auth::{redact_for_student, Caller};
use super::body::RawBody;
use super::envelope::{self, AboutUser};
use super::error::{ApiError, SpecError};
use super::{validate, ApiQuery};
use crate::app::AppState;
use crate::model::{
    stage_role, EvaluationRecord, EvaluationSummary, Role, Submission, SubmissionSummary,
};
use crate::store::Filter;
use crate::workflow::evaluate::{self, Caller as GradingCaller, EvaluateInput, PairInput};
use crate::workflow::upload::{self, ImageRef, UploadInput};

/// An image of the student's written answers, or a scanned PDF of them.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UploadImage {
    #[schema(example = "img_1")]
    pub image_id: String,
    /// `http(s)://` URL or a base64 `data:` URL of a PNG, JPEG, TIFF, WebP, BMP or GIF image,
    /// or of a PDF, whose pages are read in order (each counts towards `limits.max_pages`).
    #[schema(example = "https://example.com/image1.jpg")]
    pub image_url: String,
}

/// Workflow 1 request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UploadRequest {
    #[schema(example = "USER123")]
    pub user_id: String,
    #[schema(example = "CA-FND-2024")]
    pub course_code: String,
    #[schema(example = "CA-FO-PAPER1")]
    pub exam_code: String,
    #[schema(example = "QP001")]
    pub question_paper_code: String,
    /// In page order.
    pub images: Vec<UploadImage>,
}

/// A question-answer pair found in the script.
#[derive(Debug, Serialize, ToSchema)]
pub struct QaPairOut {
    #[schema(example = "1.a")]
    pub question_number: String,
    pub answer: String,
    /// Lowest OCR confidence of the pages this answer was read from, 0 to 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocr_confidence: Option<f64>,
    /// Engine that read those pages (`pdf-text` for typed PDF pages read from their own
    /// text, `mixed` for several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ocr_engine: Option<String>,
    /// Read with confidence under `ocr.low_confidence_below`: check the transcription.
    pub low_ocr_confidence: bool,
}

/// What OCR made of one image.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageOut {
    pub image_id: String,
    /// `application/pdf` for a PDF, else the image's type.
    pub media_type: String,
    /// Pages read: 1 for an image, the page count for a PDF.
    pub page_count: i64,
    pub ocr_confidence: f64,
    /// Engine that read its pages (`pdf-text` for typed PDF pages read from their own text,
    /// `mixed` for several).
    pub ocr_engine: String,
    pub content_sha256: String,
}

/// Workflow 1 response.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadResponse {
    #[schema(example = "success")]
    pub status: String,
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    pub extracted_text: String,
    pub qa_pairs: Vec<QaPairOut>,
    pub message: String,
    /// Where the submission is stored: `GET /student-answers/{submission_id}`.
    pub submission_id: String,
    /// Text before the first question number (a name, a roll number); empty when none.
    pub unassigned_text: String,
    pub pages: Vec<PageOut>,
    /// True when these exact images (by content hash) were already uploaded by this user
    /// for this paper; the earlier submission is returned and nothing new is stored.
    pub duplicate: bool,
}

/// Checks the four ids every workflow request carries, and that the caller may act for
/// the user.
fn check_request(
    state: &AppState,
    caller: &Caller,
    [user_id, course_code, exam_code, question_paper_code]: [&str; 4],
) -> Result<(), ApiError> {
    let max = state.settings.limits.max_id_chars;
    validate::id("user_id", user_id, max)?;
    validate::id("course_code", course_code, max)?;
    validate::id("exam_code", exam_code, max)?;
    validate::id("question_paper_code", question_paper_code, max)?;
    caller.may_act_for(user_id)
}

fn to_json<T: Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// Upload answer images: fetch, OCR, split into question-answer pairs, store.
///
/// Send an `Idempotency-Key` header to make retries safe: a repeated request returns the
/// first response without fetching or recognising anything again.
#[utoipa::path(post, path = "/upload-exam-answers", tag = "workflows", request_body = UploadRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries return the first result")),
    responses((status = 200, body = UploadResponse),
              (status = 401, description = "No or unknown API key"),
              (status = 403, description = "A student key acting for another user"),
              (status = 404, description = "Course, exam or paper unknown"),
              (status = 413, description = "An image, all images together, or the body itself (server.max_body_bytes) too large"),
              (status = 422, description = "Invalid request, an image URL unusable, an image or PDF unreadable, or more pages than limits.max_pages"),
              (status = 429, description = "Rate limited"),
              (status = 502, description = "An image's server failed"),
              (status = 503, description = "Too much work in progress")))]
pub async fn upload_exam_answers(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    envelope::run(state, caller, headers, body, "upload", upload_work).await
}

async fn upload_work(
    state: AppState,
    caller: Caller,
    request: UploadRequest,
) -> Result<(StatusCode, Value), ApiError> {
    check_request(
        &state,
        &caller,
        [
            &request.user_id,
            &request.course_code,
            &request.exam_code,
            &request.question_paper_code,
        ],
    )?;
    let max_images = state.settings.limits.max_images;
    if request.images.is_empty() {
        return Err(ApiError::Validation(
            "images must list at least one image".into(),
        ));
    }
    if request.images.len() > max_images {
        return Err(ApiError::Validation(format!(
            "{} images sent; at most {max_images} are accepted in one upload",
            request.images.len()
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for image in &request.images {
        validate::id(
            "image_id",
            &image.image_id,
            state.settings.limits.max_id_chars,
        )?;
        if !seen.insert(image.image_id.as_str()) {
            return Err(ApiError::Validation(format!(
                "image_id {:?} appears more than once",
                image.image_id
            )));
        }
        if image.image_url.trim().is_empty() {
            return Err(ApiError::Validation(format!(
                "image {:?}: image_url must not be empty",
                image.image_id
            )));
        }
    }
    let input = UploadInput {
        user_id: request.user_id,
        course_code: request.course_code,
        exam_code: request.exam_code,
        question_paper_code: request.question_paper_code,
        images: request
            .images
            .into_iter()
            .map(|i| ImageRef {
                image_id: i.image_id,
                image_url: i.image_url,
            })
            .collect(),
    };
    let outcome = upload::upload(&state, input).await?;
    let submission = outcome.submission;
    let message = if outcome.duplicate {
        "These images were already uploaded for this paper; the stored question-answer pairs are returned."
    } else if submission.qa_pairs.is_empty() {
        "No question numbers were recognised; the text is stored as unassigned_text."
    } else {
        "Question-answer pairs extracted and saved successfully."
    };
    let response = UploadResponse {
        status: "success".into(),
        pages: submission
            .images
            .iter()
            .map(|i| PageOut {
                image_id: i.image_id.clone(),
                media_type: i.media_type.clone(),
                page_count: i.page_count,
                ocr_confidence: i.ocr_confidence,
                ocr_engine: i.ocr_engine.clone(),
                content_sha256: i.content_sha256.clone(),
            })
            .collect(),
        qa_pairs: submission
            .qa_pairs
            .iter()
            .map(|p| QaPairOut {
                question_number: p.question_number.to_string(),
                answer: p.answer.clone(),
                ocr_confidence: p.ocr_confidence,
                ocr_engine: p.ocr_engine.clone(),
                low_ocr_confidence: p.low_ocr_confidence,
            })
            .collect(),
        message: message.into(),
        user_id: submission.user_id,
        course_code: submission.course_code,
        exam_code: submission.exam_code,
        question_paper_code: submission.question_paper_code,
        extracted_text: submission.extracted_text,
        submission_id: submission.submission_id,
        unassigned_text: submission.unassigned_text,
        duplicate: outcome.duplicate,
    };
    Ok((StatusCode::OK, to_json(&response)?))
}

/// A pair to grade. `standard_answer` and `total_marks` may be left out when the paper is stored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluatePair {
    #[schema(example = "1.a")]
    pub question_number: String,
    /// The question as set (an addition to the contract; optional). Both graders use it, the
    /// embedded one to tell answering from restating the question. Left out: the stored
    /// question's, unless the pair brings a standard answer of its own.
    #[schema(example = "What is FastAPI?")]
    pub question_text: Option<String>,
    pub student_answer: String,
    pub standard_answer: Option<String>,
    pub total_marks: Option<f64>,
}

/// Workflow 2 request. Without `qa_pairs`, the user's latest upload for the paper is graded.
#[derive(Debug, Deserialize, ToSchema)]
pub struct EvaluateRequest {
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    pub qa_pairs: Option<Vec<EvaluatePair>>,
}

impl AboutUser for EvaluateRequest {
    fn user_id(&self) -> &str {
        &self.user_id
    }
}

impl AboutUser for UploadRequest {
    fn user_id(&self) -> &str {
        &self.user_id
    }
}

/// One graded question.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluationOut {
    pub question_number: String,
    pub llm_evaluation: String,
    /// Null when the question could not be graded (see `error`).
    pub marks_awarded: Option<f64>,
    pub total_marks: f64,
    /// `graded`, `not_answered` or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub flags: Vec<String>,
}

/// Workflow 2 response.
#[derive(Debug, Serialize, ToSchema)]
pub struct EvaluateResponse {
    /// `success`, `partial` (some questions could not be graded) or `failure`.
    pub status: String,
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    pub total_exam_marks: f64,
    pub evaluation: Vec<EvaluationOut>,
    pub final_score: f64,
    pub message: String,
    /// Where the evaluation is stored: `GET /evaluations/{evaluation_id}`.
    pub evaluation_id: String,
    pub version: i64,
}

fn evaluate_response(
    record: EvaluationRecord,
    message: String,
) -> Result<(StatusCode, Value), ApiError> {
    let status = if record.status == "failure" {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::OK
    };
    let body = EvaluateResponse {
        status: record.status.clone(),
        total_exam_marks: record.total_exam_marks,
        final_score: record.final_score,
        evaluation: record
            .items
            .into_iter()
            .map(|i| EvaluationOut {
                question_number: i.question_number.to_string(),
                llm_evaluation: i.llm_evaluation,
                marks_awarded: i.marks_awarded,
                total_marks: i.total_marks,
                status: serde_json::to_value(i.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                error: i.error,
                flags: i.flags,
            })
            .collect(),
        message,
        user_id: record.user_id,
        course_code: record.course_code,
        exam_code: record.exam_code,
        question_paper_code: record.question_paper_code,
        evaluation_id: record.evaluation_id,
        version: record.version,
    };
    Ok((status, to_json(&body)?))
}

/// The workflow's view of the caller: only students are bound to the stored answer key.
fn grading_caller(caller: &Caller) -> GradingCaller {
    match (&caller.role, &caller.user_id) {
        (Role::Student, Some(user_id)) => GradingCaller::Student {
            user_id: user_id.clone(),
        },
        _ => GradingCaller::Examiner,
    }
}

/// Grade question-answer pairs: evaluator, verifier, and arbiter when they disagree.
///
/// Send an `Idempotency-Key` header to make retries safe: a repeated request returns the
/// first response without calling any grader again.
#[utoipa::path(post, path = "/evaluate-answers", tag = "workflows", request_body = EvaluateRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries return the first result")),
    responses((status = 200, body = EvaluateResponse, description = "Graded (status success or partial)"),
              (status = 401, description = "No or unknown API key"),
              (status = 403, description = "A student key acting for another user"),
              (status = 404, description = "Nothing stored to grade"),
              (status = 409, description = "Conflicts with the stored paper"),
              (status = 413, description = "The body is larger than server.max_body_bytes"),
              (status = 422, description = "Invalid request"),
              (status = 429, description = "Rate limited"),
              (status = 502, body = EvaluateResponse, description = "No question could be graded"),
              (status = 503, description = "Too much work in progress")))]
pub async fn evaluate_answers(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: RawBody,
) -> Response {
    envelope::run(state, caller, headers, body, "evaluate", evaluate_work).await
}

async fn evaluate_work(
    state: AppState,
    caller: Caller,
    request: EvaluateRequest,
) -> Result<(StatusCode, Value), ApiError> {
    check_request(
        &state,
        &caller,
        [
            &request.user_id,
            &request.course_code,
            &request.exam_code,
            &request.question_paper_code,
        ],
    )?;
    let limits = &state.settings.limits;
    let qa_pairs = match request.qa_pairs {
        None => None,
        Some(pairs) => {
            if pairs.is_empty() {
                return Err(ApiError::Validation(
                    "qa_pairs is empty; leave it out to grade the latest upload".into(),
                ));
            }
            if pairs.len() > limits.max_questions {
                return Err(ApiError::Validation(format!(
                    "{} pairs sent; at most {} are graded in one request",
                    pairs.len(),
                    limits.max_questions
                )));
            }
            let mut parsed = Vec::with_capacity(pairs.len());
            for pair in pairs {
                let number = validate::question_number(&pair.question_number)?;
                validate::text(
                    &format!("question {number}: student_answer"),
                    &pair.student_answer,
                    limits.max_text_chars,
                )?;
                if let Some(answer) = &pair.standard_answer {
                    validate::text(
                        &format!("question {number}: standard_answer"),
                        answer,
                        limits.max_text_chars,
                    )?;
                }
                if let Some(text) = &pair.question_text {
                    validate::text(
                        &format!("question {number}: question_text"),
                        text,
                        limits.max_text_chars,
                    )?;
                }
                if let Some(marks) = pair.total_marks {
                    validate::marks(&format!("question {number}: total_marks"), marks)?;
                    if marks == 0.0 {
                        return Err(ApiError::Validation(format!(
                            "question {number}: total_marks must be more than 0"
                        )));
                    }
                }
                parsed.push(PairInput {
                    question_number: number,
                    // A blank text is no text, as in a stored paper.
                    question_text: pair.question_text.filter(|t| !t.trim().is_empty()),
                    student_answer: pair.student_answer,
                    standard_answer: pair.standard_answer,
                    total_marks: pair.total_marks,
                });
            }
            Some(parsed)
        }
    };
    let input = EvaluateInput {
        user_id: request.user_id,
        course_code: request.course_code,
        exam_code: request.exam_code,
        question_paper_code: request.question_paper_code,
        qa_pairs,
    };
    let result = evaluate::evaluate(&state, &grading_caller(&caller), input).await?;
    evaluate_response(result.record, result.message)
}

/// Grade again the questions of an evaluation that could not be graded; stored as a new version.
#[utoipa::path(post, path = "/evaluations/{evaluation_id}/retry", tag = "results",
    params(("evaluation_id" = String, Path)),
    responses((status = 200, body = EvaluateResponse), (status = 404), (status = 502, body = EvaluateResponse)))]
pub async fn retry_evaluation(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(id): Path<String>,
) -> Result<Response, SpecError> {
    let caller = caller?;
    let previous = evaluation_to_act_on(&state, &caller, &id).await?;
    let _permit = state
        .work_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded {
            detail: "the service is at its limit of requests in progress; retry shortly".into(),
            retry_after: 5,
        })?;
    let result = evaluate::retry_failed(&state, previous).await?;
    let (status, body) = evaluate_response(result.record, result.message)?;
    Ok((status, Json(body)).into_response())
}

/// Filters for listing submissions.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SubmissionFilter {
    pub user_id: Option<String>,
    pub question_paper_code: Option<String>,
    /// At most this many, newest first: default 100, at least 1, and more than 1000 gives 1000.
    pub limit: Option<i64>,
    /// The id of the last submission of the previous page. When a page is full, the
    /// response's `Link` header gives the next page's URL (`rel="next"`).
    pub after: Option<String>,
}

/// An evaluation's overall status, as a listing filter.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    Success,
    Partial,
    Failure,
}

impl StatusFilter {
    fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Success => "success",
            StatusFilter::Partial => "partial",
            StatusFilter::Failure => "failure",
        }
    }
}

/// Filters for listing evaluations.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EvaluationFilter {
    pub user_id: Option<String>,
    pub question_paper_code: Option<String>,
    /// Only evaluations with this status: `partial` and `failure` are those with questions
    /// to retry (`POST /evaluations/{evaluation_id}/retry`).
    #[param(inline)]
    pub status: Option<StatusFilter>,
    /// Only evaluations with at least one question carrying this flag, e.g. `needs_review`
    /// for the examiner's review queue or `possible_prompt_injection`.
    pub flag: Option<String>,
    /// `true`: only each student's newest evaluation of each paper, leaving out versions
    /// that were retried, reviewed or graded again since (the review queue's view).
    pub latest: Option<bool>,
    /// At most this many, newest first: default 100, at least 1, and more than 1000 gives 1000.
    pub limit: Option<i64>,
    /// The id of the last evaluation of the previous page. When a page is full, the
    /// response's `Link` header gives the next page's URL (`rel="next"`).
    pub after: Option<String>,
}

impl SubmissionFilter {
    fn into_filter(self) -> Result<Filter, ApiError> {
        Ok(Filter {
            user_id: self.user_id,
            question_paper_code: self.question_paper_code,
            after: self.after,
            limit: page_size(self.limit)?,
            ..Filter::default()
        })
    }
}

impl EvaluationFilter {
    fn into_filter(self) -> Result<Filter, ApiError> {
        if let Some(flag) = &self.flag {
            if !crate::model::flag::ALL.contains(&flag.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "flag {flag:?} is not one Examiner sets; known flags: {}",
                    crate::model::flag::ALL.join(", ")
                )));
            }
        }
        Ok(Filter {
            user_id: self.user_id,
            question_paper_code: self.question_paper_code,
            status: self.status.map(|s| s.as_str().to_string()),
            flag: self.flag,
            latest: self.latest.unwrap_or(false),
            after: self.after,
            limit: page_size(self.limit)?,
        })
    }
}

/// Above the largest page a caller gets the largest page, as documented; a page of nothing
/// or less is a mistake worth saying so.
fn page_size(limit: Option<i64>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(100),
        Some(n) if n < 1 => Err(ApiError::BadRequest(format!(
            "limit must be at least 1 (at most 1000 are returned), not {n}"
        ))),
        Some(n) => Ok(n.min(1000)),
    }
}

/// Students see only their own results, whatever they ask for: `None` when they asked for
/// another user's.
fn scoped(caller: &Caller, mut filter: Filter) -> Option<Filter> {
    if caller.is_student() {
        match (&filter.user_id, &caller.user_id) {
            (Some(asked), Some(own)) if asked != own => return None,
            _ => filter.user_id = caller.user_id.clone(),
        }
    }
    Some(filter)
}

/// A page of a listing, with a `Link` to the next page when this one is full. The link
/// repeats the filters as given (a student's own user id included when the filter was
/// narrowed to it), so following it lists the same records.
fn page<T: Serialize>(
    path: &str,
    filter: &Filter,
    items: Vec<T>,
    last_id: impl Fn(&T) -> &str,
) -> Response {
    let next = match items.last() {
        Some(last) if items.len() as i64 >= filter.limit => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            let optional = [
                ("user_id", &filter.user_id),
                ("question_paper_code", &filter.question_paper_code),
                ("status", &filter.status),
                ("flag", &filter.flag),
            ];
            for (name, value) in optional {
                if let Some(value) = value {
                    query.append_pair(name, value);
                }
            }
            if filter.latest {
                query.append_pair("latest", "true");
            }
            query.append_pair("limit", &filter.limit.to_string());
            query.append_pair("after", last_id(last));
            Some(format!("<{path}?{}>; rel=\"next\"", query.finish()))
        }
        _ => None,
    };
    let mut response = Json(items).into_response();
    if let Some(link) = next.and_then(|l| axum::http::HeaderValue::from_str(&l).ok()) {
        response
            .headers_mut()
            .insert(axum::http::header::LINK, link);
    }
    response
}

/// List stored submissions, newest first, a page at a time.
#[utoipa::path(get, path = "/student-answers", tag = "results", params(SubmissionFilter),
    responses((status = 200, body = [SubmissionSummary],
        headers(("link" = String, description = "`<URL>; rel=\"next\"` when there may be more")))))]
pub async fn list_student_answers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<SubmissionFilter>,
) -> Result<Response, ApiError> {
    let Some(filter) = scoped(&caller, filter.into_filter()?) else {
        return Ok(Json(Vec::<SubmissionSummary>::new()).into_response());
    };
    let items = state.store.list_submissions(&filter).await?;
    Ok(page("/student-answers", &filter, items, |s| {
        &s.submission_id
    }))
}

/// A stored submission: images with their OCR text and confidence, and the pairs.
#[utoipa::path(get, path = "/student-answers/{submission_id}", tag = "results",
    params(("submission_id" = String, Path)), responses((status = 200, body = Submission), (status = 404)))]
pub async fn get_student_answers(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Submission>, ApiError> {
    state
        .store
        .get_submission(&id)
        .await?
        .filter(|s| caller.may_read(&s.user_id))
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("submission {id:?} does not exist")))
}

/// List stored evaluations, newest first, a page at a time. Each summary carries the flags
/// raised on its questions; `?flag=needs_review` is the review queue.
#[utoipa::path(get, path = "/evaluations", tag = "results", params(EvaluationFilter),
    responses((status = 200, body = [EvaluationSummary],
        headers(("link" = String, description = "`<URL>; rel=\"next\"` when there may be more"))),
        (status = 400, description = "an unknown flag or status, or `after` naming no evaluation of this listing")))]
pub async fn list_evaluations(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<EvaluationFilter>,
) -> Result<Response, ApiError> {
    let Some(filter) = scoped(&caller, filter.into_filter()?) else {
        return Ok(Json(Vec::<EvaluationSummary>::new()).into_response());
    };
    let items = state.store.list_evaluations(&filter).await?;
    Ok(page("/evaluations", &filter, items, |e| &e.evaluation_id))
}

/// A stored evaluation. Examiners see every stage of every question; students see their
/// marks and feedback without standard answers, reasoning or raw replies.
#[utoipa::path(get, path = "/evaluations/{evaluation_id}", tag = "results",
    params(("evaluation_id" = String, Path)), responses((status = 200, body = EvaluationRecord), (status = 404)))]
pub async fn get_evaluation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = readable_evaluation(&state, &caller, &id).await?;
    Ok(Json(evaluation_view(&caller, &record)?))
}

/// An evaluation as the caller may see it: students without standard answers, reasoning
/// or stages, but with their own regrade requests ([`regrade_requests_of`]).
pub(super) fn evaluation_view(
    caller: &Caller,
    record: &EvaluationRecord,
) -> Result<Value, ApiError> {
    let mut value = to_json(record)?;
    if caller.is_student() {
        let requests: Vec<Vec<Value>> = record
            .items
            .iter()
            .map(|item| regrade_requests_of(&item.stages.list()))
            .collect();
        redact_for_student(&mut value);
        if let Some(items) = value.get_mut("items").and_then(Value::as_array_mut) {
            for (item, requests) in items.iter_mut().zip(requests) {
                if requests.is_empty() {
                    continue;
                }
                if let Some(item) = item.as_object_mut() {
                    item.insert("regrade_requests".into(), Value::Array(requests));
                }
            }
        }
    }
    Ok(value)
}

/// A question's regrade requests as its student may see them, from its stages: when they
/// asked, what they wrote, the marks at the time, and when an examiner reviewed the
/// question after it (`null` while it waits). Who asked (a key id) stays with the stages.
fn regrade_requests_of(stages: &[Value]) -> Vec<Value> {
    let role = |stage: &Value, role: &str| stage.get("role").and_then(Value::as_str) == Some(role);
    let requests = stages
        .iter()
        .enumerate()
        .filter(|(_, stage)| role(stage, stage_role::REGRADE_REQUEST));
    let requests = requests.map(|(position, stage)| {
        let reviewed_at = stages[position..]
            .iter()
            .find(|later| role(later, stage_role::EXAMINER))
            .and_then(|review| review.get("reviewed_at"))
            .cloned()
            .unwrap_or(Value::Null);
        json!({
            "requested_at": stage.get("requested_at"),
            "comment": stage.get("comment"),
            "marks_at_request": stage.get("marks"),
            "reviewed_at": reviewed_at,
        })
    });
    requests.collect()
}

/// The evaluation `id` if the caller may read it; another user's is as absent as an unknown
/// one, so students cannot probe for ids.
pub(super) async fn readable_evaluation(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<EvaluationRecord, ApiError> {
    state
        .store
        .get_evaluation(id)
        .await?
        .filter(|e| caller.may_read(&e.user_id))
        .ok_or_else(|| ApiError::NotFound(format!("evaluation {id:?} does not exist")))
}

/// The evaluation `id` if the caller may also act for its student (retry it, ask for a
/// regrade of it).
pub(super) async fn evaluation_to_act_on(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<EvaluationRecord, ApiError> {
    let evaluation = readable_evaluation(state, caller, id).await?;
    caller.may_act_for(&evaluation.user_id)?;
    Ok(evaluation)
}
