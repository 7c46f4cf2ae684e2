//! What both workflow endpoints do around their work: authenticate, parse the JSON body
//! with errors in the contract's shape, take a work permit (503 when the service is at its
//! in-flight limit rather than queueing without bound), and honour `Idempotency-Key` — a
//! retried request returns the first result and does no second OCR or LLM work.

use std::future::Future;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::body::{parse_json, received, require_json_content_type, RawBody};
use super::error::{ApiError, SpecError};
use crate::app::AppState;
use crate::model::IdempotencyState;

/// The header clients send to make a request safe to retry.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Gives an idempotency claim back if the request never completes (an error, or the client
/// going away and the handler being dropped), so a retry runs again instead of waiting
/// for the claim to go stale.
struct Claim {
    state: AppState,
    scope: String,
    endpoint: &'static str,
    key: String,
    settled: bool,
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let store = self.state.store.clone();
        let (scope, endpoint, key) = (self.scope.clone(), self.endpoint, self.key.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = store.idempotency_release(&scope, endpoint, &key).await {
                    tracing::warn!(error = %e, "could not release an idempotency key");
                }
            });
        }
    }
}

/// A workflow request names the user it is about. Responses kept for replay are stored
/// under that user, so that erasing the user erases them too.
pub trait AboutUser {
    fn user_id(&self) -> &str;
}

/// Runs a workflow endpoint: `work` gets the caller and the parsed request and returns the
/// status and JSON body to answer.
pub async fn run<T, F, Fut>(
    state: AppState,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: RawBody,
    endpoint: &'static str,
    work: F,
) -> Response
where
    T: DeserializeOwned + AboutUser,
    F: FnOnce(AppState, Caller, T) -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    match run_inner(state, caller, headers, body, endpoint, work).await {
        Ok(response) => response,
        Err(error) => SpecError(error).into_response(),
    }
}

async fn run_inner<T, F, Fut>(
    state: AppState,
    caller: Result<Caller, ApiError>,
    headers: HeaderMap,
    body: RawBody,
    endpoint: &'static str,
    work: F,
) -> Result<Response, ApiError>
where
    T: DeserializeOwned + AboutUser,
    F: FnOnce(AppState, Caller, T) -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let caller = caller?;
    require_json_content_type(&headers)?;
    let body = received(body, &state)?;
    let request: T = parse_json(&body)?;
    let in_flight = state.settings.auth.max_in_flight;
    let _permit = state
        .work_permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded {
            detail: format!(
                "the service is working on its limit of {in_flight} requests; retry shortly"
            ),
            retry_after: 5,
        })?;

    let idempotency_key = match headers.get(IDEMPOTENCY_HEADER) {
        None => None,
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 128)
                .ok_or_else(|| {
                    ApiError::Validation(
                        "Idempotency-Key must be 1 to 128 characters of visible ASCII".into(),
                    )
                })?;
            Some(key.to_string())
        }
    };
    let Some(key) = idempotency_key else {
        let (status, value) = work(state, caller, request).await?;
        return Ok((status, axum::Json(value)).into_response());
    };

    let request_hash = hex::encode(Sha256::digest(&body));
    let stale_after = state.settings.server.request_timeout_secs as i64 + 60;
    match state
        .store
        .idempotency_begin(caller.scope(), endpoint, &key, &request_hash, stale_after)
        .await?
    {
        IdempotencyState::Fresh => {}
        IdempotencyState::Completed { status, body } => {
            metrics::counter!("examiner_idempotent_replays_total").increment(1);
            let mut response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(response);
        }
        IdempotencyState::InProgress => {
            return Err(ApiError::Conflict(
                "a request with this Idempotency-Key is still in progress; retry when it has finished".into(),
            ))
        }
        IdempotencyState::Mismatch => {
            return Err(ApiError::Validation(
                "this Idempotency-Key was already used with a different request body; use a new key for a new request".into(),
            ))
        }
    }
    let mut claim = Claim {
        state: state.clone(),
        scope: caller.scope().to_string(),
        endpoint,
        key: key.clone(),
        settled: false,
    };
    let user_id = request.user_id().to_string();
    let (status, value) = work(state.clone(), caller.clone(), request).await?;
    if status.is_success() {
        let text = value.to_string();
        state
            .store
            .idempotency_complete(
                caller.scope(),
                endpoint,
                &key,
                status.as_u16(),
                &text,
                &user_id,
            )
            .await?;
        claim.settled = true;
    }
    Ok((status, axum::Json(value)).into_response())
}
