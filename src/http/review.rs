//! `POST /evaluations/{id}/review`: an examiner's marks for some questions of an evaluation,
//! and `POST /evaluations/{id}/regrade-request`: a student's request for one
//! ([`crate::workflow::review`]). Each is stored as the student's newest version.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::ApiError;
use super::workflows::{evaluation_to_act_on, evaluation_view, readable_evaluation};
use super::{validate, ApiJson};
use crate::app::AppState;
use crate::model::EvaluationRecord;
use crate::workflow::evaluate::EvaluationResult;
use crate::workflow::review::{self, RegradeRequest, Review, ReviewedQuestion};

/// Longest feedback or note an examiner may write for one question, in characters.
const MAX_REVIEW_TEXT_CHARS: usize = 20_000;

/// An examiner's marks for some questions of an evaluation; the others keep theirs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewRequest {
    pub questions: Vec<ReviewQuestion>,
}

/// The marks an examiner gives one question.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReviewQuestion {
    #[schema(example = "1.a")]
    pub question_number: String,
    /// Within `[0, total_marks]` and on the paper's marks step (or the full marks).
    #[schema(example = 3.5)]
    pub marks_awarded: f64,
    /// Student-facing feedback. Without it the grader's stays, or for a question no grader
    /// marked, "Marked by an examiner."
    pub feedback: Option<String>,
    /// Examiner-facing: why the marks were set; becomes the question's `reasoning`.
    pub note: Option<String>,
}

/// Set the marks of some questions by hand (examiners and admins). Stored as a new version
/// of the student's evaluation, with an `examiner` stage recording who, when and the marks
/// replaced; the question's `needs_review`, `second_opinion_missing`, `beyond_calibration`,
/// `grader_error` and `regrade_requested` flags are settled and it is flagged `reviewed`.
/// Only the newest version can be reviewed.
#[utoipa::path(post, path = "/evaluations/{evaluation_id}/review", tag = "results",
    params(("evaluation_id" = String, Path)), request_body = ReviewRequest,
    responses((status = 201, body = EvaluationRecord, description = "Stored as the newest version",
        headers(("location" = String, description = "`/evaluations/{new evaluation_id}`"))),
        (status = 403, description = "Not an examiner or admin key"),
        (status = 404),
        (status = 409, description = "A newer version of this evaluation was stored since"),
        (status = 422, description = "Unknown or repeated question, marks out of range or off the paper's step")))]
pub async fn review_evaluation(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReviewRequest>,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let previous = readable_evaluation(&state, &caller, &id).await?;
    let max_questions = state.settings.limits.max_questions;
    if request.questions.len() > max_questions {
        return Err(ApiError::Validation(format!(
            "{} questions sent; an evaluation has at most {max_questions}",
            request.questions.len()
        )));
    }
    let mut questions = Vec::with_capacity(request.questions.len());
    for question in request.questions {
        let number = validate::question_number(&question.question_number)?;
        for (field, text) in [("feedback", &question.feedback), ("note", &question.note)] {
            if let Some(text) = text {
                validate::text(
                    &format!("question {number}: {field}"),
                    text,
                    MAX_REVIEW_TEXT_CHARS,
                )?;
            }
        }
        questions.push(ReviewedQuestion {
            question_number: number,
            marks_awarded: question.marks_awarded,
            feedback: question.feedback.filter(|f| !f.trim().is_empty()),
            note: question.note.filter(|n| !n.trim().is_empty()),
        });
    }
    let review = Review {
        reviewer: caller.key_id.clone(),
        questions,
    };
    let result = review::review(&state, previous, review).await?;
    created(&caller, result)
}

/// Longest comment a student may give with a regrade request, in characters.
const MAX_REGRADE_COMMENT_CHARS: usize = 2_000;

/// A student's request that an examiner look at the marks of one question again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegradeRequestBody {
    #[schema(example = "1.b")]
    pub question_number: String,
    /// Why the marks look wrong, for the examiner (at most 2,000 characters).
    #[schema(example = "The second half of my answer, on page 2, was not marked.")]
    pub comment: String,
}

/// Ask for an examiner's review of one question's marks (the student, or staff on their
/// behalf). Stored as a new version of the evaluation in which the question carries the flag
/// `regrade_requested` — the review queue lists it — and the comment; the marks stay until
/// an examiner reviews it. Only the newest version, and one open request per question.
#[utoipa::path(post, path = "/evaluations/{evaluation_id}/regrade-request", tag = "results",
    params(("evaluation_id" = String, Path)), request_body = RegradeRequestBody,
    responses((status = 201, body = EvaluationRecord, description = "Stored as the newest version",
        headers(("location" = String, description = "`/evaluations/{new evaluation_id}`"))),
        (status = 404, description = "No such evaluation of the caller's"),
        (status = 409, description = "Already requested, a newer version was stored since, or the regrade window (`grading.regrade_window_days`) has closed"),
        (status = 422, description = "Unknown question, or an empty or too long comment")))]
pub async fn request_regrade(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RegradeRequestBody>,
) -> Result<Response, ApiError> {
    let previous = evaluation_to_act_on(&state, &caller, &id).await?;
    let number = validate::question_number(&request.question_number)?;
    let comment = request.comment.trim();
    if comment.is_empty() {
        return Err(ApiError::Validation(
            "comment is empty; say what the examiner should look at".into(),
        ));
    }
    validate::text("comment", comment, MAX_REGRADE_COMMENT_CHARS)?;
    let request = RegradeRequest {
        requested_by: caller.key_id.clone(),
        question_number: number,
        comment: comment.to_string(),
        on_behalf: !caller.is_student(),
    };
    let result = review::request_regrade(&state, previous, request).await?;
    created(&caller, result)
}

/// 201 with the stored version (as the caller may see it) and its `Location`.
fn created(caller: &Caller, result: EvaluationResult) -> Result<Response, ApiError> {
    let location = format!("/evaluations/{}", result.record.evaluation_id);
    let body = evaluation_view(caller, &result.record)?;
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}
