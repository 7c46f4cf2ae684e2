//! One error type for every HTTP answer that is not a success, and the one place that
//! decides its status code and logs internal causes.
//!
//! Catalog and other endpoints answer `application/problem+json` (RFC 9457). The two
//! endpoints of the fixed contract answer in the contract's own shape — `"status":
//! "failure"` and a `message` — with the problem-details members `type`, `title` and
//! `detail` beside them ([`SpecError`]). 5xx bodies never carry internal error text.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::fetch::FetchError;
use crate::ocr::OcrError;
use crate::store::StoreError;

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all, or not UTF-8.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but invalid input: missing fields, wrong types, values out of range.
    #[error("{0}")]
    Validation(String),
    /// No key, or an unknown or revoked one.
    #[error("{0}")]
    Unauthorized(String),
    /// A known caller acting beyond its rights.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// An image could not be fetched; whose fault it was decides the status.
    #[error("image {image_id:?}: the URL {error}")]
    Fetch { image_id: String, error: FetchError },
    /// An image could not be read.
    #[error("image {image_id:?}: {error}")]
    Ocr { image_id: String, error: OcrError },
    /// A model backend failed for the whole request.
    #[error("{0}")]
    Upstream(String),
    /// This key made too many requests; try again after the given seconds.
    #[error("{detail}")]
    RateLimited { detail: String, retry_after: u64 },
    /// Too much work in flight; try again after the given seconds.
    #[error("{detail}")]
    Overloaded { detail: String, retry_after: u64 },
    /// A fault of ours. The cause is logged; the response says only that it happened.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        ApiError::Internal(cause.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Fetch { error, .. } => match error {
                e if e.is_upstream() => StatusCode::BAD_GATEWAY,
                FetchError::TooLarge { .. } | FetchError::RequestTooLarge { .. } => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            },
            ApiError::Ocr { error, .. } => match error {
                OcrError::Overloaded | OcrError::BackendUnavailable { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                OcrError::Backend(_) => StatusCode::BAD_GATEWAY,
                e if e.is_bad_input() => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable URI naming the kind of problem.
    fn problem_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "urn:examiner:problem:malformed-request",
            ApiError::Validation(_) => "urn:examiner:problem:invalid-input",
            ApiError::Unauthorized(_) => "urn:examiner:problem:unauthorized",
            ApiError::Forbidden(_) => "urn:examiner:problem:forbidden",
            ApiError::NotFound(_) => "urn:examiner:problem:not-found",
            ApiError::Conflict(_) => "urn:examiner:problem:conflict",
            ApiError::PayloadTooLarge(_) => "urn:examiner:problem:too-large",
            ApiError::UnsupportedMediaType(_) => "urn:examiner:problem:unsupported-media-type",
            ApiError::MethodNotAllowed(_) => "urn:examiner:problem:method-not-allowed",
            ApiError::Fetch { .. } => "urn:examiner:problem:image-fetch-failed",
            ApiError::Ocr { error, .. } if error.is_upstream() => {
                "urn:examiner:problem:upstream-failed"
            }
            ApiError::Ocr { .. } => "urn:examiner:problem:image-unreadable",
            ApiError::Upstream(_) => "urn:examiner:problem:upstream-failed",
            ApiError::RateLimited { .. } => "urn:examiner:problem:rate-limited",
            ApiError::Overloaded { .. } => "urn:examiner:problem:overloaded",
            ApiError::Internal(_) => "urn:examiner:problem:internal",
        }
    }

    /// What the caller is told. Internal causes stay in the log.
    pub fn detail(&self) -> String {
        match self {
            ApiError::Internal(_) => {
                "the service failed to complete the request; it has been logged".to_string()
            }
            ApiError::Ocr { image_id, error } if error.is_upstream() => {
                format!("image {image_id:?} could not be read: {error}")
            }
            ApiError::Ocr { image_id, error } if !error.is_bad_input() => {
                format!("image {image_id:?} could not be recognised because of a fault in the service; it has been logged")
            }
            other => other.to_string(),
        }
    }

    fn log(&self) {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, status = status.as_u16(), "request failed");
        } else {
            tracing::debug!(error = %self, status = status.as_u16(), "request rejected");
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            ApiError::Overloaded { retry_after, .. }
            | ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            ApiError::Ocr {
                error: OcrError::Overloaded,
                ..
            } => Some(2),
            ApiError::Ocr {
                error: OcrError::BackendUnavailable { retry_in_secs, .. },
                ..
            } => Some((*retry_in_secs).max(1)),
            _ => None,
        }
    }

    fn respond(&self, body: serde_json::Value, content_type: &'static str) -> Response {
        self.log();
        let mut response = (self.status(), axum::Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        if matches!(self, ApiError::Unauthorized(_)) {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"examiner\""),
            );
        }
        if let Some(seconds) = self.retry_after() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({
            "type": self.problem_type(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": status.as_u16(),
            "detail": self.detail(),
        });
        self.respond(body, "application/problem+json")
    }
}

/// An [`ApiError`] answered in the fixed contract's failure shape.
#[derive(Debug)]
pub struct SpecError(pub ApiError);

impl<E: Into<ApiError>> From<E> for SpecError {
    fn from(error: E) -> Self {
        SpecError(error.into())
    }
}

impl IntoResponse for SpecError {
    fn into_response(self) -> Response {
        let error = self.0;
        let status = error.status();
        let detail = error.detail();
        let body = json!({
            "status": "failure",
            "message": detail,
            "type": error.problem_type(),
            "title": status.canonical_reason().unwrap_or("Error"),
            "detail": detail,
        });
        error.respond(body, "application/json")
    }
}

/// What `axum::Json::from_bytes` refuses ([`super::body::parse_json`]): the body is already
/// read and its content type checked by then.
impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => ApiError::Validation(format!(
                "the request body does not match the expected shape: {}",
                serde_cause(&e)
            )),
            JsonRejection::JsonSyntaxError(e) => ApiError::BadRequest(format!(
                "the request body is not valid JSON: {}",
                serde_cause(&e)
            )),
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// serde's message without axum's prefix ("Failed to deserialize the JSON body into the
/// target type: ..."), which says nothing to a user.
fn serde_cause(error: &dyn std::error::Error) -> String {
    let mut deepest = error.to_string();
    let mut source = error.source();
    while let Some(err) = source {
        deepest = err.to_string();
        source = err.source();
    }
    deepest
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        match rejection {
            // The text names the parameter ("limit: invalid digit found in string").
            QueryRejection::FailedToDeserializeQueryString(e) => ApiError::BadRequest(format!(
                "the query string does not match the expected parameters: {}",
                e.body_text()
                    .trim_start_matches("Failed to deserialize query string: ")
            )),
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::UnknownCursor { .. } => ApiError::BadRequest(format!(
                "after: {error}; pass the id of the last item of the previous page, with the same filters"
            )),
            StoreError::Conflict { .. } => ApiError::Conflict(format!(
                "{error}; creating a record again is only allowed with identical content"
            )),
            StoreError::Superseded { ref newest_id, .. } => ApiError::Conflict(format!(
                "{error}; marks seen on an older version no longer stand: read evaluation {newest_id} and make the change there"
            )),
            StoreError::MissingLink { .. } => {
                ApiError::NotFound(format!("{error}; create it first"))
            }
            // Every connection stayed busy for the store's whole wait: the request can be
            // sent again, unlike a fault.
            StoreError::Database(sqlx::Error::PoolTimedOut) => ApiError::Overloaded {
                detail: "the database is busy: no connection came free in time; try again shortly".into(),
                retry_after: 5,
            },
            other => ApiError::internal(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_with_no_connection_free_answers_503_with_retry_after() {
        let response =
            ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut)).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        // Any other database error stays a fault of ours.
        let response =
            ApiError::from(StoreError::Database(sqlx::Error::RowNotFound)).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
    }
}
