//! Reading JSON request bodies, the same way for every endpoint: a JSON content type (415
//! otherwise), a body within `server.max_body_bytes` (413), valid JSON (400), an object at
//! the top level and the expected fields (422, naming the field: `qa_pairs[0].total_marks:
//! invalid type: …`).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::app::AppState;

/// JSON body extractor whose rejections are problem details.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        require_json_content_type(request.headers())?;
        let body = received(Bytes::from_request(request, state).await, state)?;
        parse_json(&body).map(ApiJson)
    }
}

/// The body of a request whose caller is checked first, as a handler argument: reading it
/// may have failed (too large), which is answered only after a missing key is.
pub type RawBody = Result<Bytes, BytesRejection>;

/// The body as read in, or why it could not be: 413 with the limit, 400 otherwise.
pub fn received(body: RawBody, state: &AppState) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge(format!(
                "the request body is larger than the {} bytes the service accepts (server.max_body_bytes)",
                state.settings.server.max_body_bytes
            ))
        } else {
            ApiError::BadRequest(format!("the request body could not be read: {rejection}"))
        }
    })
}

pub fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let mime = v.split(';').next().unwrap_or_default().trim();
            mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
        });
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "send the body as JSON with the header Content-Type: application/json".into(),
        ))
    }
}

/// Parses a JSON object into `T`: syntax errors are 400, everything else 422.
///
/// Anything but an object is refused before serde sees it: serde reads a JSON array as a
/// struct's fields in declaration order, so `["C1", "Accounting"]` would otherwise create a
/// course.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().copied().find(|b| !b.is_ascii_whitespace());
    if let Some(first) = first.filter(|&b| b != b'{') {
        // Invalid JSON is a syntax error whatever it starts with.
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            return Err(ApiError::BadRequest(format!(
                "the request body is not valid JSON: {e}"
            )));
        }
        let kind = match first {
            b'[' => "an array",
            b'"' => "a string",
            b't' | b'f' => "a boolean",
            b'n' => "null",
            _ => "a number",
        };
        return Err(ApiError::Validation(format!(
            "the request body must be a JSON object ({{\"field\": value, …}}), not {kind}"
        )));
    }
    match serde_json::from_slice(body) {
        Ok(value) => Ok(value),
        // Read again only to say where: axum's reading tracks the path to the field at
        // fault, which serde_json's error does not, at a cost every field would pay.
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            Err(match axum::Json::<T>::from_bytes(body) {
                Err(rejection) => rejection.into(),
                Ok(_) => ApiError::Validation(format!(
                    "the request body does not match the expected shape: {e}"
                )),
            })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "the request body is not valid JSON: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Course {
        course_code: String,
        course_name: String,
        #[serde(default)]
        marks: Vec<f64>,
    }

    fn refusal(body: &str) -> (StatusCode, String) {
        let error = parse_json::<Course>(body.as_bytes()).expect_err(body);
        (error.status(), error.detail())
    }

    #[test]
    fn an_object_is_read() {
        let course: Course =
            parse_json(br#" {"course_code": "C1", "course_name": "Accounting"}"#).unwrap();
        assert_eq!(course.course_code, "C1");
    }

    #[test]
    fn only_an_object_is_read_even_where_serde_would_take_the_fields_in_order() {
        for (body, kind) in [
            (r#"["C1", "Accounting"]"#, "an array"),
            (r#""C1""#, "a string"),
            ("true", "a boolean"),
            ("null", "null"),
            ("-5", "a number"),
        ] {
            let (status, detail) = refusal(body);
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert!(detail.ends_with(&format!("not {kind}")), "{body}: {detail}");
        }
    }

    #[test]
    fn syntax_errors_are_bad_requests_whatever_the_body_starts_with() {
        for body in ["", "   ", "[1,", "{\"course_code\": ", "nope"] {
            let (status, detail) = refusal(body);
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}: {detail}");
            assert!(detail.contains("not valid JSON"), "{body:?}: {detail}");
        }
    }

    #[test]
    fn a_wrong_field_is_named_with_its_path() {
        let (status, detail) =
            refusal(r#"{"course_code": "C1", "course_name": "A", "marks": [1, "two"]}"#);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(detail.contains("marks[1]: invalid type"), "{detail}");
        let (status, detail) = refusal(r#"{"course_code": "C1"}"#);
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(detail.contains("missing field `course_name`"), "{detail}");
    }
}
