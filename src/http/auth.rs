//! Who is calling and what they may do — decided here and nowhere else.
//!
//! Callers present `Authorization: Bearer <key>`; keys are stored only as SHA-256 hashes
//! (they are 192-bit random secrets, so a fast hash is enough). Each key has a role:
//! students act only for their own `user_id` and read only their own results, never seeing
//! standard answers, examiner-facing reasoning or the stages' raw replies; examiners have
//! the catalog and every student's results; admins also manage keys. Reading another
//! user's resource answers 404 (ids cannot be probed); acting for another user, 403.
//! Every key is rate limited by a token bucket configured per role.
//!
//! A verified key is remembered for [`KEY_MEMO_TTL`], so a busy client's requests do not
//! each cost a database query: a key revoked through this server stops working at once,
//! one revoked elsewhere (`examiner keys revoke`, another node) within that time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use base64::Engine as _;
use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::app::AppState;
use crate::config::{AuthMode, RateLimit};
use crate::model::{ApiKey, Role};
use crate::store::Store;

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub role: Role,
    /// For student keys: the only user they act for.
    pub user_id: Option<String>,
    /// `None` when authentication is off.
    pub key_id: Option<String>,
}

impl Caller {
    /// The caller when `auth.mode = "none"`: full rights (loopback development setups).
    fn unauthenticated() -> Self {
        Caller {
            role: Role::Admin,
            user_id: None,
            key_id: None,
        }
    }

    pub fn is_student(&self) -> bool {
        self.role == Role::Student
    }

    /// Catalog writes and everyone's results need an examiner or admin key.
    pub fn require_staff(&self) -> Result<(), ApiError> {
        if self.is_student() {
            Err(ApiError::Forbidden(
                "this needs an examiner or admin key; student keys may upload, evaluate and read their own results".into(),
            ))
        } else {
            Ok(())
        }
    }

    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role == Role::Admin {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "managing keys needs an admin key".into(),
            ))
        }
    }

    /// Uploading or evaluating for `user_id`.
    pub fn may_act_for(&self, user_id: &str) -> Result<(), ApiError> {
        match (&self.role, &self.user_id) {
            (Role::Student, Some(own)) if own != user_id => Err(ApiError::Forbidden(format!(
                "this key belongs to user {own:?} and cannot act for user {user_id:?}"
            ))),
            (Role::Student, None) => Err(ApiError::Forbidden(
                "this student key is not bound to a user".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the caller may read resources of `user_id`; callers that may not get a 404.
    pub fn may_read(&self, user_id: &str) -> bool {
        !self.is_student() || self.user_id.as_deref() == Some(user_id)
    }

    /// Identifies the caller's idempotency keys.
    pub fn scope(&self) -> &str {
        self.key_id.as_deref().unwrap_or("anonymous")
    }
}

/// Creates a new random key; returns the secret (shown once) and its hash (stored).
pub fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut bytes);
    let secret = format!(
        "exm_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_secret(&secret);
    (secret, hash)
}

pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates and stores a key; returns it with its secret.
pub async fn create_key(
    store: &dyn Store,
    role: Role,
    user_id: Option<String>,
    label: Option<String>,
) -> Result<(ApiKey, String), ApiError> {
    if role == Role::Student && user_id.is_none() {
        return Err(ApiError::Validation(
            "a student key needs the user_id it belongs to".into(),
        ));
    }
    if role != Role::Student && user_id.is_some() {
        return Err(ApiError::Validation(
            "only student keys are bound to a user_id".into(),
        ));
    }
    let (secret, hash) = new_secret();
    let key = ApiKey {
        key_id: format!("key_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        role,
        user_id,
        label,
        created_at: Utc::now(),
        revoked: false,
    };
    store.create_api_key(&key, &hash).await?;
    Ok((key, secret))
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

/// Token buckets per key.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes a token for `key_id`; on refusal, the seconds until one is available.
    pub fn check(&self, key_id: &str, limit: RateLimit) -> Result<(), u64> {
        if limit.per_minute == 0 {
            return Ok(());
        }
        let rate = f64::from(limit.per_minute) / 60.0;
        let capacity = f64::from(limit.burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = buckets.entry(key_id.to_string()).or_insert(Bucket {
            tokens: capacity,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(capacity);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::Unauthorized(
                "send an API key as `Authorization: Bearer <key>`; an admin creates keys with `examiner keys create`".into(),
            )
        })?
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not readable text".into()))?;
    let mut parts = value.splitn(2, ' ');
    match (parts.next(), parts.next()) {
        (Some(scheme), Some(token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <key>`".into(),
        )),
    }
}

/// How long a verified key is trusted without asking the store again.
pub const KEY_MEMO_TTL: Duration = Duration::from_secs(5);
/// Most keys remembered at once; beyond it, expired entries are dropped first.
const KEY_MEMO_CAPACITY: usize = 10_000;

/// Keys recently verified against the store, by secret hash. Unknown keys are never
/// remembered, so a key created a moment ago works at once.
#[derive(Default)]
pub struct KeyMemo {
    entries: Mutex<HashMap<String, (ApiKey, Instant)>>,
}

impl KeyMemo {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ApiKey, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, key_hash: &str) -> Option<ApiKey> {
        let entries = self.lock();
        let (key, verified) = entries.get(key_hash)?;
        (verified.elapsed() < KEY_MEMO_TTL).then(|| key.clone())
    }

    fn remember(&self, key_hash: String, key: ApiKey) {
        let mut entries = self.lock();
        if entries.len() >= KEY_MEMO_CAPACITY {
            entries.retain(|_, (_, verified)| verified.elapsed() < KEY_MEMO_TTL);
            if entries.len() >= KEY_MEMO_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key_hash, (key, Instant::now()));
    }

    /// Stops trusting a key at once (it was revoked).
    pub fn forget(&self, key_id: &str) {
        self.lock().retain(|_, (key, _)| key.key_id != key_id);
    }

    /// The active key with this secret hash, from memory when verified recently.
    async fn find(&self, store: &dyn Store, key_hash: String) -> Result<Option<ApiKey>, ApiError> {
        if let Some(key) = self.get(&key_hash) {
            return Ok(Some(key));
        }
        let found = store.find_api_key(&key_hash).await?;
        if let Some(key) = &found {
            self.remember(key_hash, key.clone());
        }
        Ok(found)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.settings.auth.mode == AuthMode::None {
            return Ok(Caller::unauthenticated());
        }
        let secret = bearer(&parts.headers)?;
        let key = state
            .api_keys
            .find(state.store.as_ref(), hash_secret(secret))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("the API key is unknown or revoked".into()))?;
        let auth = &state.settings.auth;
        let limit = match key.role {
            Role::Student => auth.student_rate,
            Role::Examiner => auth.examiner_rate,
            Role::Admin => auth.admin_rate,
        };
        if let Err(retry_after) = state.rate_limiter.check(&key.key_id, limit) {
            metrics::counter!("examiner_rate_limited_total", "role" => key.role.as_str())
                .increment(1);
            return Err(ApiError::RateLimited {
                detail: format!(
                    "this key may make {} requests a minute; try again in {retry_after} s",
                    limit.per_minute
                ),
                retry_after,
            });
        }
        Ok(Caller {
            role: key.role,
            user_id: key.user_id,
            key_id: Some(key.key_id),
        })
    }
}

/// Removes what students may not see from a JSON document: standard answers,
/// examiner-facing reasoning and the stages' raw replies, wherever they appear.
pub fn redact_for_student(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for field in ["standard_answer", "reasoning", "stages"] {
                map.remove(field);
            }
            for child in map.values_mut() {
                redact_for_student(child);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                redact_for_student(item);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hashed() {
        let (a, hash_a) = new_secret();
        let (b, _) = new_secret();
        assert_ne!(a, b);
        assert!(a.starts_with("exm_") && a.len() > 30);
        assert_eq!(hash_secret(&a), hash_a);
        assert_ne!(hash_a, a);
    }

    fn key(key_id: &str) -> ApiKey {
        ApiKey {
            key_id: key_id.into(),
            role: Role::Examiner,
            user_id: None,
            label: None,
            created_at: Utc::now(),
            revoked: false,
        }
    }

    #[test]
    fn remembered_keys_expire_and_can_be_forgotten() {
        let memo = KeyMemo::default();
        memo.remember("hash-a".into(), key("a"));
        memo.remember("hash-b".into(), key("b"));
        assert_eq!(memo.get("hash-a").map(|k| k.key_id), Some("a".into()));
        memo.forget("a");
        assert_eq!(memo.get("hash-a"), None);
        assert!(memo.get("hash-b").is_some());

        let long_ago = Instant::now().checked_sub(KEY_MEMO_TTL).unwrap();
        memo.lock().insert("hash-c".into(), (key("c"), long_ago));
        assert_eq!(
            memo.get("hash-c"),
            None,
            "an expired entry is asked of the store again"
        );
    }

    #[test]
    fn token_bucket_refuses_past_the_burst() {
        let limiter = RateLimiter::default();
        let limit = RateLimit {
            per_minute: 60,
            burst: 3,
        };
        for _ in 0..3 {
            assert!(limiter.check("k", limit).is_ok());
        }
        let retry = limiter.check("k", limit).unwrap_err();
        assert!((1..=2).contains(&retry));
        assert!(limiter.check("other", limit).is_ok(), "buckets are per key");
        assert!(
            limiter.check("k", RateLimit::default()).is_ok(),
            "0 = unlimited"
        );
    }

    #[test]
    fn students_act_only_for_themselves() {
        let student = Caller {
            role: Role::Student,
            user_id: Some("U1".into()),
            key_id: Some("k".into()),
        };
        assert!(student.may_act_for("U1").is_ok());
        assert!(matches!(
            student.may_act_for("U2"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(student.may_read("U1") && !student.may_read("U2"));
        assert!(student.require_staff().is_err());
        let examiner = Caller {
            role: Role::Examiner,
            user_id: None,
            key_id: Some("e".into()),
        };
        assert!(examiner.may_act_for("U2").is_ok() && examiner.may_read("U2"));
        assert!(examiner.require_admin().is_err());
    }

    #[test]
    fn redaction_removes_answer_keys_everywhere() {
        let mut doc = serde_json::json!({"items": [{"standard_answer": "x", "reasoning": "y",
            "stages": [], "llm_evaluation": "keep"}], "questions": [{"standard_answer": "z"}]});
        redact_for_student(&mut doc);
        assert_eq!(
            doc,
            serde_json::json!({"items": [{"llm_evaluation": "keep"}], "questions": [{}]})
        );
    }
}
