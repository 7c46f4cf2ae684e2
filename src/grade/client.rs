//! The OpenAI-compatible chat-completions client: one pooled `reqwest::Client` (HTTP/1.1 and
//! HTTP/2) shared by all backends of a grader, or for a plain-`http://` backend Examiner's own
//! HTTP/1.1 client ([`Http1Client`], cheaper per call), and per backend a concurrency
//! semaphore, a circuit breaker and the memory of which structured-output mode the server
//! accepts.
//!
//! Promises: transient failures (429, 5xx, timeouts, connection errors, garbled bodies) are
//! retried up to `max_retries` times with exponential backoff and full jitter, honouring
//! `Retry-After` (seconds or HTTP date, capped at 30 s); after `circuit_failure_threshold`
//! consecutive failures the backend fails fast for `circuit_open_secs`, then lets one probe
//! through and closes on its success; a server that rejects `json_schema` is asked again with
//! `json_object`, then with no response format, and later calls start at the mode that worked;
//! the API key is sent only as a sensitive `Authorization` header and appears in no message.
//! Nothing a server sends can cause a panic (bodies are capped at 4 MiB).

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use super::http1::{Http1Client, Http1Error};
use super::prompts::system_prompts;
use super::replies::extract_json;
use super::settings::{redact_url, LlmBackendSettings};
use super::GradeError;

/// Largest response body read; larger ones are treated as malformed.
const MAX_BODY_BYTES: usize = 4 << 20;
/// First backoff ceiling; doubled per retry up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// A server asking for a longer pause than this is still retried after this long.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(30);
/// Error bodies are quoted in messages up to this many characters.
const SNIPPET_CHARS: usize = 300;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChatRole {
    System,
    User,
    Assistant,
}

/// One chat message as sent to the server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub(crate) struct ChatMessage {
    // Declared in sorted order so that serialising a message directly gives the same bytes as
    // serialising it through a `serde_json::Value` (a sorted map), as request bodies and memo
    // keys were built before [`ChatRequest`] and [`Conversation`].
    pub content: String,
    pub role: ChatRole,
}

impl ChatMessage {
    pub(crate) fn system(content: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::System,
            content: content.into(),
        }
    }
    pub(crate) fn user(content: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::User,
            content: content.into(),
        }
    }
    pub(crate) fn assistant(content: impl Into<String>) -> Self {
        ChatMessage {
            role: ChatRole::Assistant,
            content: content.into(),
        }
    }
}

/// A stage's messages together with their JSON array, encoded once: the request body embeds
/// the array as it is and the memo key hashes it, so the prompts are escaped once per call
/// rather than once for the key and again for the body. The roles' system messages never
/// change, so each is encoded once per process and copied in.
#[derive(Debug)]
pub(crate) struct Conversation {
    messages: Vec<ChatMessage>,
    json: Box<RawValue>,
    opening: Option<Opening>,
}

/// A conversation that opens with a role's system message, pre-encoded: which one, and how
/// many bytes of the JSON array are the same in every conversation that opens with it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Opening {
    pub system_prompt: usize,
    pub bytes: usize,
}

impl Conversation {
    pub(crate) fn new(messages: Vec<ChatMessage>) -> Self {
        let (json, opening) = encode_messages(&messages);
        Conversation {
            messages,
            json,
            opening,
        }
    }

    /// Adds a turn (the re-ask after an invalid reply) and encodes the array again.
    pub(crate) fn push(&mut self, message: ChatMessage) {
        self.messages.push(message);
        (self.json, self.opening) = encode_messages(&self.messages);
    }

    /// Set when the array opens with a role's system message: the memo key's hash of that
    /// common start is kept (`cache::cache_key`).
    pub(crate) fn opening(&self) -> Option<Opening> {
        self.opening
    }

    #[cfg(test)]
    pub(crate) fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The messages as a JSON array, byte for byte what serialising them gives.
    pub(crate) fn json(&self) -> &RawValue {
        &self.json
    }
}

fn encode_messages(messages: &[ChatMessage]) -> (Box<RawValue>, Option<Opening>) {
    static SYSTEM: LazyLock<Vec<(&'static str, Box<RawValue>)>> = LazyLock::new(|| {
        system_prompts()
            .iter()
            .map(|prompt| {
                let encoded =
                    serde_json::value::to_raw_value(&ChatMessage::system(prompt.as_str()))
                        .expect("a chat message always serialises");
                (prompt.as_str(), encoded)
            })
            .collect()
    });
    /// A message, or the encoding of an identical one made before.
    #[derive(Serialize)]
    #[serde(untagged)]
    enum Part<'a> {
        Encoded(&'a RawValue),
        Message(&'a ChatMessage),
    }
    let known = |message: &ChatMessage| {
        (message.role == ChatRole::System)
            .then(|| {
                SYSTEM
                    .iter()
                    .position(|(prompt, _)| *prompt == message.content)
            })
            .flatten()
    };
    let parts: Vec<Part<'_>> = messages
        .iter()
        .map(|message| match known(message) {
            Some(at) => Part::Encoded(&SYSTEM[at].1),
            None => Part::Message(message),
        })
        .collect();
    // `to_raw_value` writes the text without parsing it back; it fails only for non-string map
    // keys, which these types do not have.
    let json = serde_json::value::to_raw_value(&parts).expect("chat messages always serialise");
    // "[" and the system message: the same bytes whatever follows.
    let opening = messages.first().and_then(known).map(|at| Opening {
        system_prompt: at,
        bytes: 1 + SYSTEM[at].1.get().len(),
    });
    (json, opening)
}

/// How structured output is requested, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum OutputMode {
    JsonSchema = 0,
    JsonObject = 1,
    Text = 2,
}

impl OutputMode {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => OutputMode::JsonSchema,
            1 => OutputMode::JsonObject,
            _ => OutputMode::Text,
        }
    }
    pub(crate) fn next(self) -> Option<Self> {
        match self {
            OutputMode::JsonSchema => Some(OutputMode::JsonObject),
            OutputMode::JsonObject => Some(OutputMode::Text),
            OutputMode::Text => None,
        }
    }
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OutputMode::JsonSchema => "json_schema",
            OutputMode::JsonObject => "json_object",
            OutputMode::Text => "text",
        }
    }
}

/// Request-parameter quirks learned from 400s (bit flags).
const COMPAT_MAX_COMPLETION_TOKENS: u8 = 1; // newer OpenAI models reject `max_tokens`
const COMPAT_OMIT_TEMPERATURE: u8 = 2; // reasoning models reject a non-default temperature

/// A failed request. Messages name the backend as "model at url" (no credentials).
#[derive(Debug, thiserror::Error)]
pub(crate) enum LlmError {
    #[error("circuit breaker open for {backend} after repeated failures; calls fail fast for another {retry_in_secs}s")]
    CircuitOpen { backend: String, retry_in_secs: u64 },
    #[error("circuit breaker half-open for {backend}: waiting for the probe request to succeed")]
    ProbeInFlight { backend: String },
    #[error("{backend} answered HTTP {status}: {body}")]
    Status {
        backend: String,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("request to {backend} timed out after {secs}s")]
    Timeout { backend: String, secs: u64 },
    #[error("could not connect to {backend}: {detail}")]
    Connect { backend: String, detail: String },
    #[error("transport error with {backend}: {detail}")]
    Transport { backend: String, detail: String },
    #[error("malformed response from {backend}: {detail}")]
    Malformed { backend: String, detail: String },
}

impl LlmError {
    /// Worth retrying, and whether it counts as a backend failure for the circuit breaker
    /// (a 429 shows the server is alive, so it does not).
    fn transient(&self) -> Option<bool> {
        match self {
            LlmError::Status { status, .. } => match *status {
                429 => Some(false),
                408 | 500..=599 => Some(true),
                _ => None,
            },
            LlmError::Timeout { .. } | LlmError::Connect { .. } | LlmError::Transport { .. } => {
                Some(true)
            }
            LlmError::Malformed { .. } => Some(false),
            LlmError::CircuitOpen { .. } | LlmError::ProbeInFlight { .. } => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn is_circuit_open(&self) -> bool {
        matches!(
            self,
            LlmError::CircuitOpen { .. } | LlmError::ProbeInFlight { .. }
        )
    }
}

/// The useful part of a chat completion.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Completion {
    pub content: String,
    pub finish_reason: Option<String>,
    pub refusal: Option<String>,
    pub served_model: Option<String>,
}

/// Per-stage bookkeeping across all requests of the stage.
#[derive(Clone, Debug, Default)]
pub(crate) struct CallStats {
    pub attempts: u32,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

impl CallStats {
    fn add_usage(&mut self, prompt: Option<u64>, completion: Option<u64>) {
        if let Some(p) = prompt {
            self.prompt_tokens = Some(self.prompt_tokens.unwrap_or(0).saturating_add(p));
        }
        if let Some(c) = completion {
            self.completion_tokens = Some(self.completion_tokens.unwrap_or(0).saturating_add(c));
        }
    }
}

/// A chat-completions request body, borrowing the prompts and the schema. Fields are in
/// sorted order and absent ones skipped, so it serialises to exactly the bytes of the
/// `serde_json::Value` (a sorted map) built before, without copying the prompts into one.
#[derive(Serialize, Debug)]
pub(crate) struct ChatRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    messages: &'a RawValue,
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<ResponseFormat<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
}

#[derive(Serialize, Debug)]
struct ResponseFormat<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<JsonSchemaFormat<'a>>,
    #[serde(rename = "type")]
    kind: &'static str,
}

#[derive(Serialize, Debug)]
struct JsonSchemaFormat<'a> {
    name: &'a str,
    schema: &'a Value,
    strict: bool,
}

/// Builds the pooled client shared by a grader's backends.
pub(crate) fn build_http_client() -> Result<reqwest::Client, GradeError> {
    reqwest::Client::builder()
        .user_agent(concat!("examiner-grade/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_keepalive(Duration::from_secs(60))
        .build()
        .map_err(|e| GradeError::HttpClient(e.to_string()))
}

/// The key is held here only; `Debug` shows whether it is set, never its value.
pub(crate) struct ApiKey(pub(crate) Option<String>);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "<set>" } else { "<unset>" })
    }
}

/// One backend: where to send, how many at once, whether it is healthy, what it supports.
pub(crate) struct ChatBackend {
    http: reqwest::Client,
    settings: LlmBackendSettings,
    url: String,
    /// `url` parsed once: parsing it for every call was 1 % of the CPU under load.
    parsed_url: Option<reqwest::Url>,
    /// Examiner's own HTTP/1.1 client, for a plain-`http://` backend (see [`Http1Client`]).
    lean: Option<Http1Client>,
    label: String,
    api_key: ApiKey,
    semaphore: Semaphore,
    breaker: CircuitBreaker,
    mode: AtomicU8,
    compat: AtomicU8,
}

impl fmt::Debug for ChatBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatBackend")
            .field("backend", &self.label)
            .field("api_key", &self.api_key)
            .field(
                "mode",
                &OutputMode::from_u8(self.mode.load(Ordering::Relaxed)),
            )
            .finish_non_exhaustive()
    }
}

impl ChatBackend {
    /// Reads the API key from the environment now, once. With `lean_http1`, a plain-`http://`
    /// backend is called through [`Http1Client`] instead of `http`.
    pub(crate) fn new(
        http: reqwest::Client,
        settings: &LlmBackendSettings,
        lean_http1: bool,
    ) -> Self {
        let url = settings.chat_url();
        let parsed_url = reqwest::Url::parse(&url).ok();
        let lean = parsed_url
            .as_ref()
            .filter(|_| lean_http1)
            .and_then(|url| Http1Client::for_url(url, MAX_BODY_BYTES));
        ChatBackend {
            http,
            url,
            parsed_url,
            lean,
            label: settings.label(),
            api_key: ApiKey(settings.api_key()),
            semaphore: Semaphore::new(settings.concurrency.max(1)),
            breaker: CircuitBreaker::new(
                settings.circuit_failure_threshold,
                Duration::from_secs(settings.circuit_open_secs),
            ),
            mode: AtomicU8::new(OutputMode::JsonSchema as u8),
            compat: AtomicU8::new(0),
            settings: settings.clone(),
        }
    }

    pub(crate) fn model(&self) -> &str {
        &self.settings.model
    }

    /// One logical chat completion with retries, circuit breaking and structured-output
    /// fallback. `stats` accumulates attempts and token usage even when it fails.
    pub(crate) async fn complete(
        &self,
        conversation: &Conversation,
        schema_name: &str,
        schema: &Value,
        stats: &mut CallStats,
    ) -> Result<Completion, LlmError> {
        let learned = OutputMode::from_u8(self.mode.load(Ordering::Relaxed));
        let mut mode = learned;
        let mut retries_left = self.settings.max_retries;
        let mut backoff_step = 0u32;
        let mut last_failure: Option<LlmError> = None;
        loop {
            // Wait for a slot first, then ask the breaker, so a call queued behind a failing
            // burst sees the circuit that burst opened instead of adding to it.
            let permit = self
                .semaphore
                .acquire()
                .await
                .map_err(|_| LlmError::Transport {
                    backend: self.label.clone(),
                    detail: "backend semaphore closed".into(),
                })?;
            let admission = match self.breaker.admit() {
                Ok(admission) => admission,
                // A retry refused because other calls opened the circuit during its backoff
                // reports the failure this call met (a timeout, a 5xx), not only the breaker.
                Err(rejection) => {
                    return Err(match (last_failure, rejection) {
                        (Some(failure), _) => failure,
                        (None, Rejection::Open(left)) => LlmError::CircuitOpen {
                            backend: self.label.clone(),
                            retry_in_secs: left.as_secs_f64().ceil() as u64,
                        },
                        (None, Rejection::Probing) => LlmError::ProbeInFlight {
                            backend: self.label.clone(),
                        },
                    })
                }
            };
            stats.attempts += 1;
            let result = self
                .send_once(conversation, mode, schema_name, schema)
                .await;
            drop(permit);
            let err = match result {
                Ok((completion, prompt, completion_tokens)) => {
                    admission.success();
                    stats.add_usage(prompt, completion_tokens);
                    if mode > learned {
                        // Remember the fallback only once it has worked, so a 400 caused by
                        // something else cannot downgrade the backend for good.
                        self.mode.fetch_max(mode as u8, Ordering::Relaxed);
                        tracing::info!(backend = %self.label, mode = mode.as_str(), "structured output: using fallback mode");
                    }
                    return Ok(completion);
                }
                Err(err) => err,
            };
            if let LlmError::Status { status, body, .. } = &err {
                let compat = self.compat.load(Ordering::Relaxed);
                if let Some(flag) = compat_fix(*status, body, compat) {
                    admission.success();
                    self.compat.fetch_or(flag, Ordering::Relaxed);
                    tracing::info!(backend = %self.label, status, "adjusting request parameters the server rejected");
                    continue;
                }
                if rejects_format(*status, body) {
                    if let Some(next) = mode.next() {
                        admission.success();
                        tracing::info!(backend = %self.label, status, from = mode.as_str(), to = next.as_str(), "structured output rejected; falling back");
                        mode = next;
                        continue;
                    }
                }
            }
            match err.transient() {
                Some(counts_as_failure) => {
                    if counts_as_failure {
                        admission.failure();
                    } else {
                        admission.neutral();
                    }
                    if retries_left == 0 || self.breaker.is_open() {
                        return Err(err);
                    }
                    retries_left -= 1;
                    let delay = backoff_delay(backoff_step, err.retry_after());
                    backoff_step += 1;
                    tracing::warn!(backend = %self.label, error = %err, delay_ms = delay.as_millis() as u64, "LLM request failed; retrying");
                    tokio::time::sleep(delay).await;
                    last_failure = Some(err);
                }
                None => {
                    // A definitive answer (401, 404, 400 in text mode...): the server is alive.
                    admission.success();
                    return Err(err);
                }
            }
        }
    }

    fn request_body<'a>(
        &'a self,
        conversation: &'a Conversation,
        mode: OutputMode,
        schema_name: &'a str,
        schema: &'a Value,
    ) -> ChatRequest<'a> {
        let compat = self.compat.load(Ordering::Relaxed);
        let max_tokens = self.settings.max_tokens;
        let new_param = compat & COMPAT_MAX_COMPLETION_TOKENS != 0;
        ChatRequest {
            max_completion_tokens: new_param.then_some(max_tokens),
            max_tokens: (!new_param).then_some(max_tokens),
            messages: conversation.json(),
            model: &self.settings.model,
            response_format: match mode {
                OutputMode::JsonSchema => Some(ResponseFormat {
                    json_schema: Some(JsonSchemaFormat {
                        name: schema_name,
                        schema,
                        strict: true,
                    }),
                    kind: "json_schema",
                }),
                OutputMode::JsonObject => Some(ResponseFormat {
                    json_schema: None,
                    kind: "json_object",
                }),
                OutputMode::Text => None,
            },
            stream: false,
            temperature: (compat & COMPAT_OMIT_TEMPERATURE == 0)
                .then_some(self.settings.temperature),
        }
    }

    /// One HTTP request; returns the completion and the usage it reported.
    async fn send_once(
        &self,
        conversation: &Conversation,
        mode: OutputMode,
        schema_name: &str,
        schema: &Value,
    ) -> Result<(Completion, Option<u64>, Option<u64>), LlmError> {
        let body = self.request_body(conversation, mode, schema_name, schema);
        if let Some(lean) = &self.lean {
            return self.send_lean(lean, &body).await;
        }
        let request = match &self.parsed_url {
            Some(url) => self.http.post(url.clone()),
            // Unparsable: reqwest reports why, as for any bad URL.
            None => self.http.post(&self.url),
        };
        let mut request = request
            .timeout(Duration::from_secs(self.settings.timeout_secs))
            .json(&body);
        if let Some(key) = &self.api_key.0 {
            request = request.bearer_auth(key); // marked sensitive by reqwest
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(response.headers());
        let bytes = self.read_body(response).await?;
        self.completion_from(status, retry_after, &bytes)
    }

    /// [`Self::send_once`] through Examiner's own HTTP/1.1 client.
    async fn send_lean(
        &self,
        lean: &Http1Client,
        body: &ChatRequest<'_>,
    ) -> Result<(Completion, Option<u64>, Option<u64>), LlmError> {
        let backend = || self.label.clone();
        let bytes = serde_json::to_vec(body).map_err(|e| LlmError::Transport {
            backend: backend(),
            detail: format!("could not encode the request: {e}"),
        })?;
        let timeout = Duration::from_secs(self.settings.timeout_secs);
        let bearer = self.api_key.0.as_deref();
        let reply = tokio::time::timeout(timeout, lean.post_json(&bytes, bearer))
            .await
            .map_err(|_| LlmError::Timeout {
                backend: backend(),
                secs: self.settings.timeout_secs,
            })?
            .map_err(|e| match e {
                Http1Error::Connect(detail) => LlmError::Connect {
                    backend: backend(),
                    detail,
                },
                // Not HTTP, or cut short: a transport fault, worth retrying like a reset.
                Http1Error::Transport(detail) | Http1Error::Malformed(detail) => {
                    LlmError::Transport {
                        backend: backend(),
                        detail,
                    }
                }
                too_large @ Http1Error::TooLarge(_) => LlmError::Malformed {
                    backend: backend(),
                    detail: too_large.to_string(),
                },
            })?;
        let retry_after = retry_after_from(
            reply.retry_after_ms.as_deref(),
            reply.retry_after.as_deref(),
        );
        // The general client would follow a 307/308; this one says where to point instead.
        if let (300..=399, Some(location)) = (reply.status, &reply.location) {
            return Err(LlmError::Status {
                backend: backend(),
                status: reply.status,
                body: snippet(&format!(
                    "redirected to {location}; set the backend's base_url to that address"
                )),
                retry_after: None,
            });
        }
        self.completion_from(reply.status, retry_after, &reply.body)
    }

    fn completion_from(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        bytes: &[u8],
    ) -> Result<(Completion, Option<u64>, Option<u64>), LlmError> {
        if !(200..300).contains(&status) {
            return Err(LlmError::Status {
                backend: self.label.clone(),
                status,
                body: snippet(&String::from_utf8_lossy(bytes)),
                retry_after,
            });
        }
        parse_completion(bytes).map_err(|detail| LlmError::Malformed {
            backend: self.label.clone(),
            detail,
        })
    }

    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, LlmError> {
        let mut buf = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if buf.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(LlmError::Malformed {
                    backend: self.label.clone(),
                    detail: format!("response body exceeds {MAX_BODY_BYTES} bytes"),
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    fn transport_error(&self, e: reqwest::Error) -> LlmError {
        let backend = self.label.clone();
        if e.is_timeout() {
            return LlmError::Timeout {
                backend,
                secs: self.settings.timeout_secs,
            };
        }
        let connect = e.is_connect();
        // The URL is already in `backend` (redacted); drop reqwest's copy.
        let e = e.without_url();
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            detail.push_str(": ");
            detail.push_str(&cause.to_string());
            source = cause.source();
        }
        let detail = snippet(&detail);
        if connect {
            LlmError::Connect { backend, detail }
        } else {
            LlmError::Transport { backend, detail }
        }
    }
}

/// Whether a 400/422 names a request parameter we can adjust; returns the flag to set.
fn compat_fix(status: u16, body: &str, current: u8) -> Option<u8> {
    if !matches!(status, 400 | 422) {
        return None;
    }
    let lower = body.to_lowercase();
    if current & COMPAT_MAX_COMPLETION_TOKENS == 0
        && lower.contains("max_tokens")
        && (lower.contains("max_completion_tokens") || lower.contains("unsupported"))
    {
        return Some(COMPAT_MAX_COMPLETION_TOKENS);
    }
    if current & COMPAT_OMIT_TEMPERATURE == 0
        && lower.contains("temperature")
        && (lower.contains("unsupported")
            || lower.contains("not support")
            || lower.contains("only the default"))
    {
        return Some(COMPAT_OMIT_TEMPERATURE);
    }
    None
}

/// Whether an error response means "this response_format is not supported here": any 400 or
/// 422 (servers rarely say more), or another 4xx that mentions the feature.
fn rejects_format(status: u16, body: &str) -> bool {
    if matches!(status, 400 | 422) {
        return true;
    }
    if !(400..500).contains(&status) || matches!(status, 401 | 403 | 408 | 429) {
        return false;
    }
    let lower = body.to_lowercase();
    [
        "response_format",
        "response format",
        "json_schema",
        "json_object",
        "structured output",
        "guided_json",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

/// A completion with its prompt and completion tokens, or why the body is not one.
pub(crate) type ParsedCompletion = Result<(Completion, Option<u64>, Option<u64>), String>;

/// Extracts content, usage and model from a chat-completion body, tolerating the variations of
/// compatible servers (content as parts, legacy `text`, missing usage).
pub(crate) fn parse_completion(bytes: &[u8]) -> ParsedCompletion {
    read_completion(bytes).unwrap_or_else(|| parse_completion_tree(bytes))
}

/// The fields of a completion body that are read, each kept as its raw text: the rest of the
/// body (ids, timestamps, log-probabilities…) is checked and skipped without being built, and
/// building the whole body as a `Value` tree was 4 % of Examiner's CPU under load
/// (BENCHMARKS.md, step 20).
#[derive(Deserialize)]
struct RawCompletion<'a> {
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default, borrow)]
    choices: Option<&'a RawValue>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    model: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawChoice<'a> {
    #[serde(default, borrow)]
    message: Option<&'a RawValue>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    finish_reason: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawMessage<'a> {
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
    #[serde(default, borrow)]
    refusal: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawUsage<'a> {
    #[serde(default, borrow)]
    prompt_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    completion_tokens: Option<&'a RawValue>,
}

/// [`parse_completion_tree`]'s answer without building the body's tree, or `None` when the
/// body is anything but a JSON object whose read fields each appear once in their object:
/// the tree walk then decides, with its messages. A field of an unexpected type counts as
/// absent, as in the tree walk.
fn read_completion(bytes: &[u8]) -> Option<ParsedCompletion> {
    /// `Some(None)` when `raw` is absent or not a JSON object (a struct would also read an
    /// array), `None` when an object does not read (a field given twice).
    fn object<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<Option<T>> {
        match raw.map(RawValue::get) {
            Some(raw) if raw.starts_with('{') => serde_json::from_str(raw).ok().map(Some),
            _ => Some(None),
        }
    }
    /// A string or a count; anything else reads as absent.
    fn scalar<T: serde::de::DeserializeOwned>(raw: Option<&RawValue>) -> Option<T> {
        serde_json::from_str(raw?.get()).ok()
    }

    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    if bytes[start] != b'{' {
        return None;
    }
    let body: RawCompletion = serde_json::from_slice(bytes).ok()?;
    if let Some(error) = body.error {
        let error: Value = serde_json::from_str(error.get()).ok()?;
        return Some(Err(format!(
            "server reported an error: {}",
            snippet(&error.to_string())
        )));
    }
    let choices: Vec<&RawValue> = body
        .choices
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let Some(choice) = choices.first() else {
        return Some(Err("no choices in the response".to_string()));
    };
    let choice: Option<RawChoice> = object(Some(choice))?;
    let message: Option<RawMessage> = object(choice.as_ref().and_then(|c| c.message))?;
    let content = message.as_ref().and_then(|m| m.content).map(RawValue::get);
    let mut content = match content {
        Some(raw) if raw.starts_with('"') => serde_json::from_str(raw).ok()?,
        // Content as parts is rare: the tree walk's own rule reads them.
        Some(raw) if raw.starts_with('[') => {
            let parts: Vec<Value> = serde_json::from_str(raw).ok()?;
            content_of_parts(&parts)
        }
        _ => String::new(),
    };
    if content.is_empty() {
        if let Some(legacy) = scalar(choice.as_ref().and_then(|c| c.text)) {
            content = legacy;
        }
    }
    let usage: Option<RawUsage> = object(body.usage)?;
    Some(Ok((
        Completion {
            content,
            finish_reason: scalar(choice.as_ref().and_then(|c| c.finish_reason)),
            refusal: scalar(message.as_ref().and_then(|m| m.refusal)),
            served_model: scalar(body.model),
        },
        usage.as_ref().and_then(|u| scalar(u.prompt_tokens)),
        usage.as_ref().and_then(|u| scalar(u.completion_tokens)),
    )))
}

/// The text of content given as parts: each part's `text`, or the part itself when it is a
/// string.
fn content_of_parts(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
        .collect::<Vec<_>>()
        .join("")
}

/// [`parse_completion`] by walking the body as a `Value` tree: the reference for
/// [`read_completion`], and the reader of bodies it leaves alone.
fn parse_completion_tree(bytes: &[u8]) -> ParsedCompletion {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "body is not JSON ({e}): {}",
            snippet(&String::from_utf8_lossy(bytes))
        )
    })?;
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        return Err(format!(
            "server reported an error: {}",
            snippet(&error.to_string())
        ));
    }
    let choice = value
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|choices| choices.first())
        .ok_or_else(|| "no choices in the response".to_string())?;
    let message = choice.get("message");
    let mut content = match message.and_then(|m| m.get("content")) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => content_of_parts(parts),
        _ => String::new(),
    };
    if content.is_empty() {
        if let Some(text) = choice.get("text").and_then(Value::as_str) {
            content = text.to_string();
        }
    }
    let text_of = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let usage = value.get("usage");
    let tokens = |name: &str| usage.and_then(|u| u.get(name)).and_then(Value::as_u64);
    Ok((
        Completion {
            content,
            finish_reason: text_of(choice.get("finish_reason")),
            refusal: text_of(message.and_then(|m| m.get("refusal"))),
            served_model: text_of(value.get("model")),
        },
        tokens("prompt_tokens"),
        tokens("completion_tokens"),
    ))
}

/// `retry-after-ms` (OpenAI) or `Retry-After` as seconds or an HTTP date.
pub(crate) fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    retry_after_from(text("retry-after-ms"), text(RETRY_AFTER.as_str()))
}

/// [`parse_retry_after`] from the two header values.
fn retry_after_from(retry_after_ms: Option<&str>, retry_after: Option<&str>) -> Option<Duration> {
    let as_secs =
        |s: f64| (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s.min(86_400.0)));
    if let Some(ms) = retry_after_ms.and_then(|v| v.trim().parse::<f64>().ok()) {
        return as_secs(ms / 1000.0);
    }
    let raw = retry_after?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return as_secs(secs);
    }
    let when = httpdate::parse_http_date(raw).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Exponential backoff with full jitter, unless the server said how long to wait.
pub(crate) fn backoff_delay(step: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(wait) = retry_after {
        return wait.min(RETRY_AFTER_CAP);
    }
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << step.min(16))
        .min(BACKOFF_MAX);
    let ms = rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// Whitespace-collapsed, length-capped text for error messages.
pub(crate) fn snippet(text: &str) -> String {
    let collapsed = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() <= SNIPPET_CHARS {
        return collapsed;
    }
    let mut cut: String = collapsed.chars().take(SNIPPET_CHARS).collect();
    cut.push('…');
    cut
}

// ---------------------------------------------------------------------------------------------
// Circuit breaker

/// Consecutive-failure circuit breaker: closed → open (fail fast) → half-open (one probe) →
/// closed on the probe's success, open again on its failure.
pub(crate) struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: Mutex<BreakerState>,
}

#[derive(Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

pub(crate) enum Rejection {
    Open(Duration),
    Probing,
}

/// Permission for one request; report how it went. Dropping it unreported (a cancelled call)
/// frees the probe slot so the breaker cannot stick half-open.
pub(crate) struct Admission<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl CircuitBreaker {
    pub(crate) fn new(threshold: u32, open_for: Duration) -> Self {
        CircuitBreaker {
            threshold,
            open_for,
            state: Mutex::new(BreakerState::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BreakerState> {
        // The state stays consistent even if a holder panicked; never propagate poison.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn admit(&self) -> Result<Admission<'_>, Rejection> {
        let admission = |probe| Admission {
            breaker: self,
            probe,
            settled: false,
        };
        if self.threshold == 0 {
            return Ok(admission(false));
        }
        let mut state = self.lock();
        match state.open_until {
            None => Ok(admission(false)),
            Some(until) => {
                let now = Instant::now();
                if now < until {
                    Err(Rejection::Open(until - now))
                } else if state.probing {
                    Err(Rejection::Probing)
                } else {
                    state.probing = true;
                    Ok(admission(true))
                }
            }
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.threshold > 0 && self.lock().open_until.is_some()
    }
}

impl Admission<'_> {
    pub(crate) fn success(mut self) {
        self.settled = true;
        let mut state = self.breaker.lock();
        if state.open_until.is_some() {
            tracing::info!("circuit breaker closed");
        }
        *state = BreakerState::default();
    }

    pub(crate) fn failure(mut self) {
        self.settled = true;
        if self.breaker.threshold == 0 {
            return;
        }
        let mut state = self.breaker.lock();
        state.failures = state.failures.saturating_add(1);
        if self.probe || state.failures >= self.breaker.threshold {
            if state.open_until.is_none() || self.probe {
                tracing::warn!(
                    failures = state.failures,
                    open_secs = self.breaker.open_for.as_secs(),
                    "circuit breaker opened"
                );
            }
            state.open_until = Some(Instant::now() + self.breaker.open_for);
            state.probing = false;
        }
    }

    pub(crate) fn neutral(mut self) {
        self.settled = true;
        if self.probe {
            self.breaker.lock().probing = false;
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.lock().probing = false;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `examiner llm check`

/// What [`check_backend`] found out about one backend.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BackendCheck {
    /// Without credentials.
    pub base_url: String,
    /// As configured.
    pub model: String,
    /// As the server named it in its reply, if it did.
    pub served_model: Option<String>,
    /// Whether the named environment variable holds a key (the key itself is never shown).
    pub api_key_set: bool,
    /// The server answered HTTP at all.
    pub reachable: bool,
    /// Of the first successful completion.
    pub latency_ms: Option<u64>,
    /// `response_format: json_schema` accepted and the reply was the requested JSON.
    pub json_schema: bool,
    /// `response_format: json_object` accepted and the reply was the requested JSON.
    pub json_object: bool,
    /// Without a response format, the reply still contained the requested JSON.
    pub plain_json: bool,
    /// The structured-output mode grading would start with.
    pub preferred_mode: Option<String>,
    pub errors: Vec<String>,
}

/// Probes a backend once per structured-output mode (no retries, no circuit breaker), for
/// `examiner llm check`, through the HTTP client grading would use (`lean_http1`: see
/// [`LlmSettings::lean_http1`](super::LlmSettings::lean_http1)).
pub async fn check_backend(settings: &LlmBackendSettings, lean_http1: bool) -> BackendCheck {
    let mut check = BackendCheck {
        base_url: redact_url(&settings.base_url),
        model: settings.model.clone(),
        served_model: None,
        api_key_set: settings.api_key().is_some(),
        reachable: false,
        latency_ms: None,
        json_schema: false,
        json_object: false,
        plain_json: false,
        preferred_mode: None,
        errors: Vec::new(),
    };
    if let Err(e) = settings.validate("backend") {
        check.errors.push(e.to_string());
        return check;
    }
    let http = match build_http_client() {
        Ok(http) => http,
        Err(e) => {
            check.errors.push(e.to_string());
            return check;
        }
    };
    let backend = ChatBackend::new(http, settings, lean_http1);
    let schema = json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": false
    });
    let messages = Conversation::new(vec![
        ChatMessage::system(
            "You are a connectivity check. Reply with only this JSON object: {\"ok\": true}",
        ),
        ChatMessage::user("Reply with the JSON object {\"ok\": true} and nothing else."),
    ]);
    for mode in [
        OutputMode::JsonSchema,
        OutputMode::JsonObject,
        OutputMode::Text,
    ] {
        // Up to two parameter adjustments (max_completion_tokens, temperature) per mode.
        let mut outcome = None;
        for _ in 0..3 {
            let started = Instant::now();
            match backend
                .send_once(&messages, mode, "connectivity_check", &schema)
                .await
            {
                Ok((completion, _, _)) => {
                    outcome = Some(Ok((completion, started.elapsed())));
                    break;
                }
                Err(LlmError::Status {
                    status, ref body, ..
                }) if compat_fix(status, body, backend.compat.load(Ordering::Relaxed))
                    .is_some() =>
                {
                    check.reachable = true;
                    if let Some(flag) =
                        compat_fix(status, body, backend.compat.load(Ordering::Relaxed))
                    {
                        backend.compat.fetch_or(flag, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    outcome = Some(Err(e));
                    break;
                }
            }
        }
        match outcome {
            Some(Ok((completion, latency))) => {
                check.reachable = true;
                check.latency_ms.get_or_insert(latency.as_millis() as u64);
                if check.served_model.is_none() {
                    check.served_model = completion.served_model.clone();
                }
                let ok = extract_json(&completion.content)
                    .ok()
                    .and_then(|v| v.get("ok").and_then(Value::as_bool))
                    .is_some();
                if ok {
                    match mode {
                        OutputMode::JsonSchema => check.json_schema = true,
                        OutputMode::JsonObject => check.json_object = true,
                        OutputMode::Text => check.plain_json = true,
                    }
                    check
                        .preferred_mode
                        .get_or_insert_with(|| mode.as_str().to_string());
                } else {
                    check.errors.push(format!(
                        "{}: the reply was not the requested JSON: {}",
                        mode.as_str(),
                        snippet(&completion.content)
                    ));
                }
            }
            Some(Err(e)) => {
                if matches!(e, LlmError::Status { .. }) {
                    check.reachable = true;
                }
                check.errors.push(format!("{}: {e}", mode.as_str()));
            }
            None => check
                .errors
                .push(format!("{}: request parameters rejected", mode.as_str())),
        }
    }
    check
}

#[cfg(test)]
mod request_body_tests {
    use super::*;
    use crate::grade::prompts::system_prompt;

    /// The body as it was built before [`ChatRequest`]: through a `serde_json::Value`.
    fn value_body(
        backend: &ChatBackend,
        messages: &[ChatMessage],
        mode: OutputMode,
        schema_name: &str,
        schema: &Value,
    ) -> Value {
        let compat = backend.compat.load(Ordering::Relaxed);
        let mut body = json!({
            "model": backend.settings.model,
            "messages": messages,
            "stream": false,
        });
        if compat & COMPAT_OMIT_TEMPERATURE == 0 {
            body["temperature"] = json!(backend.settings.temperature);
        }
        if compat & COMPAT_MAX_COMPLETION_TOKENS != 0 {
            body["max_completion_tokens"] = json!(backend.settings.max_tokens);
        } else {
            body["max_tokens"] = json!(backend.settings.max_tokens);
        }
        match mode {
            OutputMode::JsonSchema => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": schema_name, "strict": true, "schema": schema},
                });
            }
            OutputMode::JsonObject => body["response_format"] = json!({"type": "json_object"}),
            OutputMode::Text => {}
        }
        body
    }

    #[test]
    fn bodies_are_byte_identical_to_the_value_encoding() {
        let settings = LlmBackendSettings {
            base_url: "http://127.0.0.1:9/v1".into(),
            model: "grader-7b".into(),
            temperature: 0.2,
            ..LlmBackendSettings::default()
        };
        let backend = ChatBackend::new(build_http_client().unwrap(), &settings, true);
        // An ad hoc system message, and a role's own (copied in pre-encoded).
        let message_sets = [
            vec![
                ChatMessage::system("Grade. \"Quoted\" <b>text</b> and ünïcödé\n"),
                ChatMessage::user("Answer: 4"),
                ChatMessage::assistant("{\"marks\": 1}"),
            ],
            vec![
                ChatMessage::system(system_prompt(super::super::StageRole::Arbiter)),
                ChatMessage::user("Answer: \"4\"\n"),
            ],
        ];
        let schema = json!({"type": "object", "properties": {"marks": {"type": "number"}},
                            "required": ["marks"], "additionalProperties": false});
        for messages in message_sets {
            let conversation = Conversation::new(messages.clone());
            for compat in 0..4u8 {
                backend.compat.store(compat, Ordering::Relaxed);
                for mode in [
                    OutputMode::JsonSchema,
                    OutputMode::JsonObject,
                    OutputMode::Text,
                ] {
                    let direct = serde_json::to_vec(&backend.request_body(
                        &conversation,
                        mode,
                        "evaluator_grade",
                        &schema,
                    ))
                    .unwrap();
                    let via_value = serde_json::to_vec(&value_body(
                        &backend,
                        &messages,
                        mode,
                        "evaluator_grade",
                        &schema,
                    ))
                    .unwrap();
                    assert_eq!(
                        String::from_utf8(direct).unwrap(),
                        String::from_utf8(via_value).unwrap(),
                        "compat {compat}, mode {mode:?}"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod completion_reading_tests {
    use super::*;
    use proptest::prelude::*;

    /// Any JSON value, its object keys mostly the names the reader looks for.
    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z{}\\[\\]\"\\\\é\n ]{0,12}".prop_map(Value::from),
        ];
        let key = prop_oneof![
            3 => prop::sample::select(vec![
                "error", "choices", "usage", "model", "message", "text", "finish_reason",
                "content", "refusal", "prompt_tokens", "completion_tokens", "type",
            ])
            .prop_map(str::to_string),
            1 => "[a-z]{1,6}",
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(key.clone(), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A completion's shape with any value, or none, in each place the reader looks; now and
    /// then an object's values come as a list in its fields' order, which a struct would
    /// read positionally.
    fn completion_shaped() -> impl Strategy<Value = Value> {
        let slot = || prop::option::of(json());
        let places = (
            (slot(), slot(), slot(), slot()),
            (slot(), slot(), slot()),
            (slot(), slot(), slot()),
        );
        (places, prop::array::uniform4(prop::bool::weighted(0.15))).prop_map(|(places, listed)| {
            let ((content, refusal, text, finish), (prompt, completion, model), (error, total, id)) =
                places;
            let object = |listed: bool, fields: Vec<(&str, Option<Value>)>| {
                let present = fields.into_iter().filter_map(|(k, v)| Some((k.to_string(), v?)));
                if listed {
                    Value::Array(present.map(|(_, v)| v).collect())
                } else {
                    Value::Object(present.collect())
                }
            };
            let message = object(listed[0], vec![("content", content), ("refusal", refusal)]);
            let choice = object(
                listed[1],
                vec![
                    ("message", Some(message)),
                    ("text", text),
                    ("finish_reason", finish),
                ],
            );
            let usage = object(
                listed[2],
                vec![
                    ("prompt_tokens", prompt),
                    ("completion_tokens", completion),
                    ("total_tokens", total),
                ],
            );
            object(
                listed[3],
                vec![
                    ("choices", Some(Value::Array(vec![choice]))),
                    ("usage", Some(usage)),
                    ("model", model),
                    ("error", error),
                    ("id", id),
                ],
            )
        })
    }

    proptest! {
        /// A JSON object (keys once each) is always read directly, as the tree walk reads it;
        /// anything else is read by the tree walk.
        #[test]
        fn any_json_is_read_as_the_tree_walk_reads_it(
            body in prop_oneof![json(), completion_shaped()],
        ) {
            let bytes = serde_json::to_vec(&body).unwrap();
            let direct = read_completion(&bytes);
            prop_assert_eq!(direct.is_some(), body.is_object());
            prop_assert_eq!(parse_completion(&bytes), parse_completion_tree(&bytes));
        }
    }

    /// Bodies the direct reader must read itself, each as the tree walk does.
    const READ_DIRECTLY: &[&str] = &[
        r#"{"id":"c1","object":"chat.completion","created":1,"model":"m-1","choices":[{"index":0,"message":{"role":"assistant","content":"{\"marks\": 4}","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":812,"completion_tokens":64,"total_tokens":876},"system_fingerprint":"fp"}"#,
        " \n {\"choices\": [{\"message\": {\"content\": \"caf\\u00e9 \\\"quoted\\\"\\n\"}}]} ",
        r#"{"choices": [{"message": {"content": [{"type": "text", "text": "{\"a\""}, ": 1}", {"type": "image"}]}}]}"#,
        r#"{"choices": [{"text": "legacy", "finish_reason": "length"}], "model": 7}"#,
        r#"{"choices": [{"message": {"content": ""}, "text": "legacy too"}]}"#,
        r#"{"choices": [{"message": {"content": null, "refusal": "I can't help"}}], "usage": {"prompt_tokens": -1, "completion_tokens": 2.5}}"#,
        r#"{"choices": [{"message": {"content": 12}}], "usage": {"prompt_tokens": 18446744073709551615, "completion_tokens": 1e2}}"#,
        r#"{"choices": [{"message": "flat"}], "usage": [1, 2]}"#,
        r#"{"choices": ["not an object"], "usage": "none"}"#,
        r#"{"choices": [[{"message": {"content": "inside an array"}}]]}"#,
        r#"{"choices": {"0": {"message": {"content": "keyed"}}}}"#,
        r#"{"choices": []}"#,
        "{}",
        r#"{"error": {"message": "model crashed", "code": 500}}"#,
        r#"{"error": "overloaded", "choices": [{"message": {"content": "x"}}]}"#,
        r#"{"error": null, "choices": [{"message": {"content": "error is null"}}]}"#,
        r#"{"ch\u006fices": [{"message": {"content": "escaped key"}}]}"#,
    ];

    /// Bodies it leaves to the tree walk.
    const LEFT_TO_THE_TREE: &[&str] = &[
        "<html>502 Bad Gateway</html>",
        "",
        "\u{0}\u{1}\u{2}",
        "[1, 2]",
        r#"[{"message": {"content": "positional"}}]"#,
        r#""a string""#,
        r#"{"choices": [{"message": {"content": "unterminated"}}]"#,
        r#"{"choices": [{"message": {"content": "trailing"}}]} x"#,
        r#"{"model": "a", "model": "b", "choices": [{"message": {"content": "twice"}}]}"#,
        r#"{"choices": [{"message": {"content": "first", "content": "second"}}]}"#,
        r#"{"choices": [{"text": "a", "text": "b"}]}"#,
        r#"{"choices": [{"message": {"content": "x"}}], "usage": {"prompt_tokens": 1, "prompt_tokens": 2}}"#,
    ];

    #[test]
    fn the_direct_reader_answers_as_the_tree_walk() {
        for body in READ_DIRECTLY {
            assert_eq!(
                read_completion(body.as_bytes()),
                Some(parse_completion_tree(body.as_bytes())),
                "{body}"
            );
        }
        for body in LEFT_TO_THE_TREE {
            assert_eq!(read_completion(body.as_bytes()), None, "{body}");
            assert_eq!(
                parse_completion(body.as_bytes()),
                parse_completion_tree(body.as_bytes()),
                "{body}"
            );
        }
    }

    #[test]
    fn the_direct_reader_reads_what_matters() {
        let (completion, prompt, completion_tokens) =
            parse_completion(READ_DIRECTLY[0].as_bytes()).unwrap();
        assert_eq!(completion.content, r#"{"marks": 4}"#);
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(completion.served_model.as_deref(), Some("m-1"));
        assert_eq!(completion.refusal, None);
        assert_eq!((prompt, completion_tokens), (Some(812), Some(64)));
        let parts = parse_completion(READ_DIRECTLY[2].as_bytes()).unwrap().0;
        assert_eq!(parts.content, r#"{"a": 1}"#);
        let error = parse_completion(READ_DIRECTLY[13].as_bytes()).unwrap_err();
        assert!(error.contains("model crashed"), "{error}");
        // The tree walk takes the later of two keys; the direct reader must not take either.
        let twice = parse_completion(LEFT_TO_THE_TREE[9].as_bytes()).unwrap().0;
        assert_eq!(twice.content, "second");
    }
}
