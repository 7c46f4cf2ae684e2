//! A real HTTP server in the test process that speaks the chat-completions protocol, scripted
//! per test: a closure decides each reply from the stage asked and the request body.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// The stage a request is for, read from the structured-output schema name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Evaluator,
    Verifier,
    Arbiter,
    Unknown,
}

/// What the fake answers.
pub enum Reply {
    /// A completion whose message content is this JSON.
    Json(Value),
    /// An HTTP error status.
    Status(u16),
}

type Script = dyn Fn(Stage, &Value) -> Reply + Send + Sync;

#[derive(Clone)]
struct FakeState {
    script: Arc<Script>,
    delay: std::time::Duration,
    requests: Arc<Mutex<Vec<(Stage, Value)>>>,
}

pub struct FakeLlm {
    pub address: SocketAddr,
    requests: Arc<Mutex<Vec<(Stage, Value)>>>,
}

fn stage_of(body: &Value) -> Stage {
    match body["response_format"]["json_schema"]["name"].as_str() {
        Some("evaluator_grade") => Stage::Evaluator,
        Some("verifier_check") => Stage::Verifier,
        Some("arbiter_decision") => Stage::Arbiter,
        _ => Stage::Unknown,
    }
}

async fn complete(State(state): State<FakeState>, Json(body): Json<Value>) -> Response {
    let stage = stage_of(&body);
    state.requests.lock().unwrap().push((stage, body.clone()));
    if !state.delay.is_zero() {
        tokio::time::sleep(state.delay).await;
    }
    match (state.script)(stage, &body) {
        Reply::Json(content) => Json(json!({
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content.to_string()}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 40, "total_tokens": 160}
        }))
        .into_response(),
        Reply::Status(code) => (
            StatusCode::from_u16(code).unwrap(),
            Json(json!({"error": {"message": "scripted failure"}})),
        )
            .into_response(),
    }
}

impl FakeLlm {
    pub async fn start(script: impl Fn(Stage, &Value) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_delayed(std::time::Duration::ZERO, script).await
    }

    /// Like [`FakeLlm::start`], answering each request after `delay`.
    pub async fn start_delayed(
        delay: std::time::Duration,
        script: impl Fn(Stage, &Value) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let state = FakeState {
            delay,
            script: Arc::new(script),
            requests: requests.clone(),
        };
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { address, requests }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }

    /// Requests received, in order.
    pub fn requests(&self) -> Vec<(Stage, Value)> {
        self.requests.lock().unwrap().clone()
    }

    pub fn calls(&self, stage: Stage) -> usize {
        self.requests().iter().filter(|(s, _)| *s == stage).count()
    }

    /// Points every grading role of `settings` at this server.
    pub fn configure(&self, settings: &mut examiner::config::Settings) {
        let llm = &mut settings.grading.llm;
        for backend in [&mut llm.evaluator, &mut llm.verifier, &mut llm.arbiter] {
            backend.base_url = self.base_url();
            backend.model = "fake-grader".to_string();
            backend.max_retries = 1;
            backend.timeout_secs = 10;
        }
    }
}

/// All user-message text of a request, where the student's answer sits.
pub fn prompt_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["content"].as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

pub fn evaluator(marks: f64, feedback: &str) -> Reply {
    Reply::Json(json!({
        "marks": marks, "feedback": feedback, "reasoning": "Compared with the key points.",
        "key_points_covered": ["main idea"], "key_points_missed": []
    }))
}

pub fn verifier(agrees: bool, marks: f64) -> Reply {
    Reply::Json(json!({"agrees": agrees, "marks": marks, "reasons": "Checked."}))
}

pub fn arbiter(marks: f64, feedback: &str) -> Reply {
    Reply::Json(json!({"marks": marks, "feedback": feedback, "reasoning": "Weighed both."}))
}
