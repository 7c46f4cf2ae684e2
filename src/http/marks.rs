//! A paper's reports for examiners: `GET /question-papers/{code}/marks`, the marks sheet
//! ([`crate::workflow::marks`]) as JSON or CSV, and `GET /question-papers/{code}/moderation`
//! ([`crate::workflow::moderation`]).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::auth::Caller;
use super::error::ApiError;
use super::ApiQuery;
use crate::app::AppState;
use crate::workflow::marks::{self, MarksSheet};
use crate::workflow::moderation::{self, ModerationReport};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SheetFormat {
    /// `json` (the default) or `csv`; `Accept: text/csv` also asks for CSV.
    #[param(inline)]
    pub format: Option<Format>,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Csv,
}

/// The marks sheet of a question paper: each student's newest evaluation with the marks of
/// every question and the flags raised. Examiners and admins only.
#[utoipa::path(get, path = "/question-papers/{question_paper_code}/marks", tag = "results",
    params(("question_paper_code" = String, Path), SheetFormat),
    responses((status = 200, body = MarksSheet,
        description = "JSON, or CSV (`text/csv`) with one column per question"),
        (status = 403), (status = 404, description = "neither the paper nor any evaluation of it is stored")))]
pub async fn marks_sheet(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
    ApiQuery(format): ApiQuery<SheetFormat>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require_staff()?;
    let csv = match format.format {
        Some(format) => matches!(format, Format::Csv),
        None => headers
            .get(header::ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(|accept| accept.contains("text/csv")),
    };
    let sheet = marks::marks_sheet(state.store.as_ref(), &code)
        .await?
        .ok_or_else(|| ApiError::NotFound(marks::unknown_paper(&code)))?;
    if !csv {
        return Ok(Json(sheet).into_response());
    }
    let mut response = marks::to_csv(&sheet).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let disposition = format!(
        "attachment; filename=\"{}\"",
        marks::csv_file_name(&sheet.question_paper_code)
    );
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// The moderation report of a question paper, over each student's newest evaluation: the
/// questions still waiting for an examiner (by flag), and how examiners' marks compare with
/// the graders' where they marked by hand (`POST /evaluations/{id}/review`), overall and per
/// question. Examiners and admins only.
#[utoipa::path(get, path = "/question-papers/{question_paper_code}/moderation", tag = "results",
    params(("question_paper_code" = String, Path)),
    responses((status = 200, body = ModerationReport), (status = 403),
        (status = 404, description = "neither the paper nor any evaluation of it is stored")))]
pub async fn moderation_report(
    State(state): State<AppState>,
    caller: Caller,
    Path(code): Path<String>,
) -> Result<Json<ModerationReport>, ApiError> {
    caller.require_staff()?;
    let report = moderation::moderation_report(state.store.as_ref(), &code)
        .await?
        .ok_or_else(|| ApiError::NotFound(marks::unknown_paper(&code)))?;
    Ok(Json(report))
}
