//! API key management over HTTP, for admins. The secret of a new key is in the creation
//! response only; afterwards only its id, role and owner are shown.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{create_key, Caller};
use super::error::ApiError;
use super::{validate, ApiJson};
use crate::app::AppState;
use crate::model::{ApiKey, Role};

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub role: Role,
    /// Required for student keys: the only user the key acts for.
    pub user_id: Option<String>,
    pub label: Option<String>,
}

/// A created key with its secret, shown only this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub key: ApiKey,
    /// Send as `Authorization: Bearer <key>`. Not retrievable later.
    pub secret: String,
}

/// Create an API key (admin).
#[utoipa::path(post, path = "/keys", tag = "keys", request_body = NewKey,
    responses((status = 201, body = CreatedKey), (status = 403), (status = 422)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(new): ApiJson<NewKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    caller.require_admin()?;
    if let Some(user_id) = &new.user_id {
        validate::id("user_id", user_id, state.settings.limits.max_id_chars)?;
    }
    if let Some(label) = &new.label {
        validate::text("label", label, 200)?;
    }
    let (key, secret) = create_key(state.store.as_ref(), new.role, new.user_id, new.label).await?;
    Ok((StatusCode::CREATED, Json(CreatedKey { key, secret })))
}

/// List API keys, without secrets (admin).
#[utoipa::path(get, path = "/keys", tag = "keys", responses((status = 200, body = [ApiKey]), (status = 403)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<ApiKey>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.store.list_api_keys().await?))
}

/// Revoke an API key (admin).
#[utoipa::path(delete, path = "/keys/{key_id}", tag = "keys",
    params(("key_id" = String, Path)), responses((status = 204), (status = 403), (status = 404)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(key_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_admin()?;
    if state.store.revoke_api_key(&key_id).await? {
        state.api_keys.forget(&key_id);
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "no active key has the id {key_id:?}"
        )))
    }
}
