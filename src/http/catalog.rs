//! Catalog endpoints: courses, exams, question papers and users, so an exam can be set up
//! over HTTP. Creating a record again with identical content answers 200; with different
//! content, 409. A new record answers 201 with a `Location` header.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::auth::{redact_for_student, Caller};
use super::error::ApiError;
use super::{validate, ApiJson, ApiQuery};
use crate::app::AppState;
use crate::model::{Course, Erasure, Exam, QuestionPaper, User};
use crate::store::Written;

fn written<T: serde::Serialize>(written: Written, location: String, body: T) -> Response {
    match written {
        Written::Created => (
            StatusCode::CREATED,
            [(header::LOCATION, location)],
            Json(body),
        )
            .into_response(),
        Written::Unchanged => (StatusCode::OK, Json(body)).into_response(),
    }
}

fn optional_text(field: &str, value: &Option<String>, state: &AppState) -> Result<(), ApiError> {
    match value {
        Some(v) => validate::text(field, v, state.settings.limits.max_text_chars),
        None => Ok(()),
    }
}

/// Create a course.
#[utoipa::path(post, path = "/courses", tag = "catalog", request_body = Course,
    responses((status = 201, body = Course, description = "Created"),
              (status = 200, body = Course, description = "Already existed, identical"),
              (status = 409, description = "Exists with different content"),
              (status = 422, description = "Invalid input")))]
pub async fn create_course(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(course): ApiJson<Course>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let max = state.settings.limits.max_id_chars;
    validate::id("course_code", &course.course_code, max)?;
    validate::text("course_name", &course.course_name, 500)?;
    optional_text("description", &course.description, &state)?;
    let w = state.store.put_course(&course).await?;
    Ok(written(
        w,
        format!("/courses/{}", course.course_code),
        course,
    ))
}

/// List courses.
#[utoipa::path(get, path = "/courses", tag = "catalog", responses((status = 200, body = [Course])))]
pub async fn list_courses(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<Course>>, ApiError> {
    Ok(Json(state.store.list_courses().await?))
}

/// Get a course.
#[utoipa::path(get, path = "/courses/{course_code}", tag = "catalog",
    params(("course_code" = String, Path)), responses((status = 200, body = Course), (status = 404)))]
pub async fn get_course(
    State(state): State<AppState>,
    _caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<Course>, ApiError> {
    state
        .store
        .get_course(&code)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("course {code:?} does not exist")))
}

/// Create an exam of an existing course.
#[utoipa::path(post, path = "/exams", tag = "catalog", request_body = Exam,
    responses((status = 201, body = Exam), (status = 200, body = Exam), (status = 404, description = "Course missing"), (status = 409), (status = 422)))]
pub async fn create_exam(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(exam): ApiJson<Exam>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let max = state.settings.limits.max_id_chars;
    validate::id("exam_code", &exam.exam_code, max)?;
    validate::id("course_code", &exam.course_code, max)?;
    validate::text("exam_name", &exam.exam_name, 500)?;
    if let Some(total) = exam.total_exam_marks {
        validate::marks("total_exam_marks", total)?;
    }
    let w = state.store.put_exam(&exam).await?;
    Ok(written(w, format!("/exams/{}", exam.exam_code), exam))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExamFilter {
    /// Only exams of this course.
    pub course_code: Option<String>,
}

/// List exams.
#[utoipa::path(get, path = "/exams", tag = "catalog", params(ExamFilter), responses((status = 200, body = [Exam])))]
pub async fn list_exams(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(filter): ApiQuery<ExamFilter>,
) -> Result<Json<Vec<Exam>>, ApiError> {
    Ok(Json(
        state
            .store
            .list_exams(filter.course_code.as_deref())
            .await?,
    ))
}

/// Get an exam.
#[utoipa::path(get, path = "/exams/{exam_code}", tag = "catalog",
    params(("exam_code" = String, Path)), responses((status = 200, body = Exam), (status = 404)))]
pub async fn get_exam(
    State(state): State<AppState>,
    _caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<Exam>, ApiError> {
    state
        .store
        .get_exam(&code)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("exam {code:?} does not exist")))
}

/// Checks a paper and puts its questions' numbers in canonical form (serde already did).
pub fn validate_paper(paper: &QuestionPaper, state: &AppState) -> Result<(), ApiError> {
    let limits = &state.settings.limits;
    validate::id(
        "question_paper_code",
        &paper.question_paper_code,
        limits.max_id_chars,
    )?;
    validate::id("exam_code", &paper.exam_code, limits.max_id_chars)?;
    optional_text("title", &paper.title, state)?;
    if let Some(step) = paper.marks_step {
        if !(step.is_finite() && step > 0.0) {
            return Err(ApiError::Validation(format!(
                "marks_step must be a positive number, not {step}"
            )));
        }
    }
    if paper.questions.is_empty() {
        return Err(ApiError::Validation(
            "a question paper needs at least one question".into(),
        ));
    }
    if paper.questions.len() > limits.max_questions {
        return Err(ApiError::Validation(format!(
            "a question paper may have at most {} questions",
            limits.max_questions
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for q in &paper.questions {
        let n = &q.question_number;
        if !seen.insert(n.clone()) {
            return Err(ApiError::Validation(format!(
                "question {n} appears more than once"
            )));
        }
        validate::text(
            &format!("question {n}: standard_answer"),
            &q.standard_answer,
            limits.max_text_chars,
        )?;
        if q.standard_answer.trim().is_empty() {
            return Err(ApiError::Validation(format!(
                "question {n}: standard_answer must not be empty"
            )));
        }
        optional_text(
            &format!("question {n}: question_text"),
            &q.question_text,
            state,
        )?;
        validate::marks(&format!("question {n}: total_marks"), q.total_marks)?;
        if q.total_marks == 0.0 {
            return Err(ApiError::Validation(format!(
                "question {n}: total_marks must be more than 0"
            )));
        }
    }
    Ok(())
}

/// Create a question paper with its questions (one document).
#[utoipa::path(post, path = "/question-papers", tag = "catalog", request_body = QuestionPaper,
    responses((status = 201, body = QuestionPaper), (status = 200, body = QuestionPaper), (status = 404, description = "Exam missing"), (status = 409), (status = 422)))]
pub async fn create_question_paper(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(paper): ApiJson<QuestionPaper>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    validate_paper(&paper, &state)?;
    let w = state.store.put_question_paper(&paper).await?;
    Ok(written(
        w,
        format!("/question-papers/{}", paper.question_paper_code),
        paper,
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PaperFilter {
    /// Only papers of this exam.
    pub exam_code: Option<String>,
}

/// List question papers with their questions.
#[utoipa::path(get, path = "/question-papers", tag = "catalog", params(PaperFilter), responses((status = 200, body = [QuestionPaper])))]
pub async fn list_question_papers(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(filter): ApiQuery<PaperFilter>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let papers = state
        .store
        .list_question_papers(filter.exam_code.as_deref())
        .await?;
    visible(&caller, &papers)
}

/// Papers as the caller may see them: students never see standard answers.
fn visible<T: serde::Serialize>(
    caller: &Caller,
    value: &T,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut value = serde_json::to_value(value).map_err(ApiError::internal)?;
    if caller.is_student() {
        redact_for_student(&mut value);
    }
    Ok(Json(value))
}

/// Get a question paper with its questions.
#[utoipa::path(get, path = "/question-papers/{question_paper_code}", tag = "catalog",
    params(("question_paper_code" = String, Path)), responses((status = 200, body = QuestionPaper), (status = 404)))]
pub async fn get_question_paper(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let paper = state
        .store
        .get_question_paper(&code)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("question paper {code:?} does not exist")))?;
    visible(&caller, &paper)
}

/// Register a user.
#[utoipa::path(post, path = "/users", tag = "catalog", request_body = User,
    responses((status = 201, body = User), (status = 200, body = User), (status = 409), (status = 422)))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(user): ApiJson<User>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    validate::id("user_id", &user.user_id, state.settings.limits.max_id_chars)?;
    optional_text("name", &user.name, &state)?;
    optional_text("email", &user.email, &state)?;
    let w = state.store.put_user(&user).await?;
    Ok(written(w, format!("/users/{}", user.user_id), user))
}

/// List users.
#[utoipa::path(get, path = "/users", tag = "catalog", responses((status = 200, body = [User])))]
pub async fn list_users(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<User>>, ApiError> {
    caller.require_staff()?;
    Ok(Json(state.store.list_users().await?))
}

/// Get a user.
#[utoipa::path(get, path = "/users/{user_id}", tag = "catalog",
    params(("user_id" = String, Path)), responses((status = 200, body = User), (status = 404)))]
pub async fn get_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<User>, ApiError> {
    state
        .store
        .get_user(&id)
        .await?
        .filter(|u| caller.may_read(&u.user_id))
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("user {id:?} does not exist")))
}

/// How long an erasure waits for memo writes already queued.
const MEMO_SETTLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Erase everything stored about a user (admin): submissions with their OCR text and
/// answers, every version of their evaluations, the user record, API keys bound to the user,
/// responses kept for `Idempotency-Key` replays, and the memoised OCR texts and LLM replies
/// found by the keys those records kept. The records go in one transaction, all or none;
/// the memo entries just before it commits (README, "Erasing a user's data").
#[utoipa::path(delete, path = "/users/{user_id}", tag = "catalog",
    params(("user_id" = String, Path)),
    responses((status = 200, body = Erasure, description = "What was erased"),
        (status = 403, description = "Not an admin key"),
        (status = 404, description = "Nothing is stored about this user"),
        (status = 503, description = "Memo writes queued before the erasure did not finish in time; nothing was erased")))]
pub async fn erase_user(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Erasure>, ApiError> {
    caller.require_admin()?;
    // Replies about the user's answers still queued for the memo would land after the
    // erasure deleted their keys.
    if !state.grader.settle_memo(MEMO_SETTLE_LIMIT).await {
        return Err(ApiError::Overloaded {
            detail: "LLM replies are still being written to the memo, so the erasure could \
                     not cover them; nothing was erased, try again shortly"
                .into(),
            retry_after: 5,
        });
    }
    let erasure = state.store.erase_user(&id).await?;
    state.grader.forget_memo_in_memory();
    if erasure.is_empty() {
        return Err(ApiError::NotFound(format!(
            "nothing is stored about user {id:?}"
        )));
    }
    // Keys verified before the erasure are trusted for a few seconds; not these.
    for key_id in &erasure.api_keys {
        state.api_keys.forget(key_id);
    }
    metrics::counter!("examiner_users_erased_total").increment(1);
    tracing::info!(
        user_id = %erasure.user_id,
        submissions = erasure.submissions,
        evaluations = erasure.evaluations,
        api_keys = erasure.api_keys.len(),
        memoised_results = erasure.memoised_results,
        "user data erased"
    );
    Ok(Json(erasure))
}
