//! Settings of the LLM grader: one backend per role plus process-wide knobs. Every field has a
//! documented default (`#[serde(default)]`), unknown fields are rejected so typos surface, and
//! no secret is ever held here: `api_key_env` names the environment variable with the key.
//! An empty `base_url` or `model` means "not configured" (the config layer uses that to pick
//! another grader); [`LlmSettings::validate`] rejects it when an LLM grader is built.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::GradeError;

/// The whole three-stage process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// First marker. Default: [`LlmBackendSettings::default`].
    pub evaluator: LlmBackendSettings,
    /// Checks the evaluator. Default: [`LlmBackendSettings::default`].
    pub verifier: LlmBackendSettings,
    /// Decides on disagreement. Default: [`LlmBackendSettings::default`].
    pub arbiter: LlmBackendSettings,
    /// The arbiter runs when |verifier − evaluator| exceeds this fraction of the question's
    /// total marks. Default 0.10.
    pub tolerance_fraction: f64,
    /// Questions of one request graded at once. Default 8.
    pub per_request_concurrency: usize,
    /// Memoise validated stage replies. Default true.
    pub cache: bool,
    /// Call plain-`http://` backends through Examiner's own HTTP/1.1 client, which costs less
    /// CPU per call than the general one; `https://` URLs, URLs with credentials and proxies
    /// from the environment always use the general client. Default true.
    pub lean_http1: bool,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            evaluator: LlmBackendSettings::default(),
            verifier: LlmBackendSettings::default(),
            arbiter: LlmBackendSettings::default(),
            tolerance_fraction: 0.10,
            per_request_concurrency: 8,
            cache: true,
            lean_http1: true,
        }
    }
}

impl LlmSettings {
    /// Checks every role and the process knobs; the error names the offending field.
    pub fn validate(&self) -> Result<(), GradeError> {
        self.evaluator.validate("evaluator")?;
        self.verifier.validate("verifier")?;
        self.arbiter.validate("arbiter")?;
        if !(self.tolerance_fraction.is_finite() && self.tolerance_fraction >= 0.0) {
            return Err(GradeError::InvalidSettings(format!(
                "tolerance_fraction must be a finite number >= 0, got {}",
                self.tolerance_fraction
            )));
        }
        if self.per_request_concurrency == 0 {
            return Err(GradeError::InvalidSettings(
                "per_request_concurrency must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// One OpenAI-compatible chat-completions backend.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmBackendSettings {
    /// As OpenAI clients take it, including `/v1`, e.g. `http://127.0.0.1:11434/v1`; requests
    /// go to `{base_url}/chat/completions`. Default "" (not configured).
    pub base_url: String,
    /// Model name as the server knows it. Default "" (not configured).
    pub model: String,
    /// NAME of the environment variable holding the API key. Default "EXAMINER_LLM_API_KEY".
    /// Unset or empty variable: no Authorization header is sent.
    pub api_key_env: String,
    /// Sampling temperature. Default 0.0 (grading should be repeatable).
    pub temperature: f64,
    /// Completion token limit. Default 1024.
    pub max_tokens: u32,
    /// Per-request timeout (connect to last byte). Default 60.
    pub timeout_secs: u64,
    /// Requests in flight to this backend at once. Default 16.
    pub concurrency: usize,
    /// Retries after 429, 5xx, timeouts and connection errors. Default 3.
    pub max_retries: u32,
    /// Consecutive failed requests that open the circuit breaker; 0 disables it. Default 5.
    pub circuit_failure_threshold: u32,
    /// How long an open circuit fails calls immediately before one probe is let through.
    /// Default 30.
    pub circuit_open_secs: u64,
}

impl Default for LlmBackendSettings {
    fn default() -> Self {
        LlmBackendSettings {
            base_url: String::new(),
            model: String::new(),
            api_key_env: "EXAMINER_LLM_API_KEY".into(),
            temperature: 0.0,
            max_tokens: 1024,
            timeout_secs: 60,
            concurrency: 16,
            max_retries: 3,
            circuit_failure_threshold: 5,
            circuit_open_secs: 30,
        }
    }
}

// By hand so that a future field holding secret material cannot leak through a derive, and so
// the URL is shown without any userinfo (`http://user:pass@host`).
impl fmt::Debug for LlmBackendSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmBackendSettings")
            .field("base_url", &redact_url(&self.base_url))
            .field("model", &self.model)
            .field("api_key_env", &self.api_key_env)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("timeout_secs", &self.timeout_secs)
            .field("concurrency", &self.concurrency)
            .field("max_retries", &self.max_retries)
            .field("circuit_failure_threshold", &self.circuit_failure_threshold)
            .field("circuit_open_secs", &self.circuit_open_secs)
            .finish()
    }
}

impl LlmBackendSettings {
    /// Checks one role's backend; `role` names it in the error.
    pub fn validate(&self, role: &str) -> Result<(), GradeError> {
        let bad = |msg: String| Err(GradeError::InvalidSettings(format!("{role}: {msg}")));
        let base = self.base_url.trim();
        if base.is_empty() {
            return bad("base_url is empty (e.g. http://127.0.0.1:11434/v1)".into());
        }
        match reqwest::Url::parse(base) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            _ => {
                return bad(format!(
                    "base_url {:?} is not an http(s) URL",
                    redact_url(base)
                ))
            }
        }
        if self.model.trim().is_empty() {
            return bad("model is empty".into());
        }
        if !(self.temperature.is_finite() && (0.0..=2.0).contains(&self.temperature)) {
            return bad(format!(
                "temperature must be in [0, 2], got {}",
                self.temperature
            ));
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1".into());
        }
        if self.timeout_secs == 0 {
            return bad("timeout_secs must be at least 1".into());
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        Ok(())
    }

    /// `{base_url}/chat/completions`, tolerating a trailing slash.
    pub fn chat_url(&self) -> String {
        format!(
            "{}/chat/completions",
            self.base_url.trim().trim_end_matches('/')
        )
    }

    /// The API key from the named environment variable; `None` when unset or empty.
    pub(crate) fn api_key(&self) -> Option<String> {
        let name = self.api_key_env.trim();
        if name.is_empty() {
            return None;
        }
        std::env::var(name)
            .ok()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
    }

    /// "model at url" for errors and logs, never with credentials.
    pub(crate) fn label(&self) -> String {
        format!("{} at {}", self.model, redact_url(&self.base_url))
    }
}

/// The URL without userinfo, for messages; unparseable input is shown as-is only if it has no
/// '@' (which could precede a password).
pub(crate) fn redact_url(raw: &str) -> String {
    match reqwest::Url::parse(raw.trim()) {
        Ok(mut url) => {
            if url.password().is_some() || !url.username().is_empty() {
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.to_string().trim_end_matches('/').to_string()
        }
        Err(_) if raw.contains('@') => "<unparseable URL>".into(),
        Err(_) => raw.to_string(),
    }
}
