//! LLM backends failing in the ways real ones do — hanging without an answer, resetting
//! connections, sending garbage, answering 5xx without end — with short timeouts and a small
//! circuit breaker. For each: questions fail with a clear per-question error and null marks,
//! the circuit opens and later calls fail fast (measured), the service's other endpoints keep
//! answering within 100 ms while evaluations are stuck (measured), and grading recovers by
//! itself once the backend heals and `circuit_open_secs` have passed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use examiner::config::Settings;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{spawn_app_with, TestApp};

/// How the backend behaves; switchable while it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Healthy,
    /// Reads the request and never answers.
    Hang,
    /// Reads the request and resets the connection.
    Reset,
    /// 200 with a body that is not a chat completion.
    Garbage,
    /// A well-formed completion whose message is not the JSON asked for.
    GarbageContent,
    /// 503 on every request.
    ServerError,
}

/// A chat-completions server speaking raw HTTP/1.1, so it can also misbehave below HTTP.
pub struct FaultyLlm {
    pub address: std::net::SocketAddr,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
}

impl FaultyLlm {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let requests = Arc::new(AtomicUsize::new(0));
        let (m, r) = (mode.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, m.clone(), r.clone()));
            }
        });
        FaultyLlm {
            address,
            mode,
            requests,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Requests that reached the server (read in full).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.address)
    }
}

/// Reads one request: head and `content-length` body.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(buf[end + 4..end + 4 + length].to_vec());
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn completion(content: &str) -> String {
    json!({
        "id": "chatcmpl-faulty", "object": "chat.completion", "model": "fake-grader",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}]
    })
    .to_string()
}

async fn serve(mut stream: TcpStream, mode: Arc<Mutex<Mode>>, requests: Arc<AtomicUsize>) {
    // Connections are not reused (`connection: close`), so each carries one request.
    let Some(body) = read_request(&mut stream).await else {
        return;
    };
    requests.fetch_add(1, Ordering::SeqCst);
    let mode = *mode.lock().unwrap();
    match mode {
        Mode::Hang => {
            // Holds the connection open, answering nothing, until the client gives up.
            let mut sink = [0u8; 64];
            while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
        }
        Mode::Reset => {
            // SO_LINGER 0 makes the close a TCP RST; with a zero timeout it does not block.
            #[allow(deprecated)]
            let _ = stream.set_linger(Some(Duration::ZERO));
            drop(stream);
        }
        Mode::Garbage => {
            respond(
                &mut stream,
                "200 OK",
                "<html>\u{1}\u{0}garbage {{{ not a completion",
            )
            .await
        }
        Mode::GarbageContent => {
            respond(
                &mut stream,
                "200 OK",
                &completion("Sure! I think it deserves some marks, maybe."),
            )
            .await
        }
        Mode::ServerError => {
            respond(
                &mut stream,
                "503 Service Unavailable",
                r#"{"error": {"message": "overloaded"}}"#,
            )
            .await
        }
        Mode::Healthy => {
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let reply = match request["response_format"]["json_schema"]["name"].as_str() {
                Some("verifier_check") => json!({"agrees": true, "marks": 4, "reasons": "Right."}),
                Some("arbiter_decision") => {
                    json!({"marks": 4, "feedback": "Mostly right.", "reasoning": "Decided."})
                }
                _ => json!({"marks": 4, "feedback": "Mostly right.", "reasoning": "Key points.",
                              "key_points_covered": [], "key_points_missed": []}),
            };
            respond(&mut stream, "200 OK", &completion(&reply.to_string())).await
        }
    }
}

/// The resilience knobs of one backend, set on all three roles (which then share one backend,
/// and so one circuit breaker, as they share one server).
#[derive(Clone, Copy)]
pub struct Resilience {
    pub timeout_secs: u64,
    pub max_retries: u32,
    pub circuit_failure_threshold: u32,
    pub circuit_open_secs: u64,
}

pub fn configure(settings: &mut Settings, base_url: &str, r: Resilience) {
    let llm = &mut settings.grading.llm;
    for backend in [&mut llm.evaluator, &mut llm.verifier, &mut llm.arbiter] {
        backend.base_url = base_url.to_string();
        backend.model = "fake-grader".to_string();
        backend.timeout_secs = r.timeout_secs;
        backend.max_retries = r.max_retries;
        backend.circuit_failure_threshold = r.circuit_failure_threshold;
        backend.circuit_open_secs = r.circuit_open_secs;
    }
    // Recovery must be shown by the backend answering again, not by the memo cache.
    llm.cache = false;
}

const KNOBS: Resilience = Resilience {
    timeout_secs: 1,
    max_retries: 1,
    circuit_failure_threshold: 2,
    circuit_open_secs: 2,
};

/// Two questions, with answers made unique by `tag`.
fn request(tag: usize) -> Value {
    json!({
        "user_id": "USER123", "course_code": "CA-FND-2024", "exam_code": "CA-FO-PAPER1",
        "question_paper_code": "QP-FAULT",
        "qa_pairs": [
            {"question_number": "1", "student_answer": format!("Assets equal liabilities plus capital ({tag})."),
             "standard_answer": "Assets = Liabilities + Capital.", "total_marks": 5},
            {"question_number": "2", "student_answer": format!("The business continues ({tag})."),
             "standard_answer": "A business continues to operate.", "total_marks": 5},
        ]
    })
}

/// Posts an evaluation; returns status, body and how long it took.
async fn evaluate(app: &TestApp, tag: usize) -> (StatusCode, Value, Duration) {
    let started = Instant::now();
    let (status, body, _) = app.post("/evaluate-answers", &request(tag)).await;
    (status, body, started.elapsed())
}

/// Every question failed, with null marks and an error containing `expected`.
fn assert_failed(status: StatusCode, body: &Value, expected: &str) {
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["status"], "failure", "{body}");
    let items = body["evaluation"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    for item in items {
        assert_eq!(item["marks_awarded"], Value::Null, "{item}");
        assert_eq!(item["status"], "failed", "{item}");
        let error = item["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("evaluator stage failed") && error.contains(expected),
            "expected an error mentioning {expected:?}: {item}"
        );
    }
    assert_eq!(body["final_score"], 0.0);
}

fn assert_graded(status: StatusCode, body: &Value) {
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "success", "{body}");
    for item in body["evaluation"].as_array().unwrap() {
        assert_eq!(item["marks_awarded"], 4.0, "{item}");
    }
}

/// Probes `/healthz` and `GET /courses` in turn, `rounds` times; returns the slowest answer.
async fn probe(app: &TestApp, rounds: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..rounds {
        for path in ["/healthz", "/courses"] {
            let started = Instant::now();
            let (status, _, _) = app.get(path).await;
            let took = started.elapsed();
            assert_eq!(status, StatusCode::OK, "{path}");
            slowest = slowest.max(took);
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    slowest
}

/// After healing the backend, polls every 100 ms until a request is graded in full; returns
/// how long that took. Until then calls fail fast on the open circuit; in the moment it
/// half-opens, one call is the probe and calls beside it fail fast too ("partial").
async fn recovery(app: &TestApp, llm: &FaultyLlm, tag: usize) -> Duration {
    llm.set(Mode::Healthy);
    let healed = Instant::now();
    for attempt in 0.. {
        let (status, body, _) = evaluate(app, tag + attempt).await;
        if body["status"] == "success" {
            assert_graded(status, &body);
            return healed.elapsed();
        }
        for item in body["evaluation"].as_array().unwrap() {
            if item["status"] == "failed" {
                let error = item["error"].as_str().unwrap_or_default();
                assert!(error.contains("circuit breaker"), "{item}");
            }
        }
        assert!(
            healed.elapsed() < Duration::from_secs(KNOBS.circuit_open_secs + 2),
            "no recovery {:?} after the backend healed",
            healed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// The circuit is open: a call fails at once without reaching the backend. Returns how long
/// the whole request took and the slowest evaluator stage (the LLM call alone) as stored.
async fn assert_fails_fast(app: &TestApp, llm: &FaultyLlm, tag: usize) -> (Duration, u64) {
    let before = llm.requests();
    let (status, body, took) = evaluate(app, tag).await;
    assert_failed(status, &body, "circuit breaker open");
    assert_eq!(llm.requests(), before, "an open circuit sends nothing");
    // End to end this includes storing the evaluation and the embedded grader's second
    // opinion (CPU work); the LLM stage itself is checked below.
    assert!(
        took < Duration::from_millis(500),
        "fail-fast took {took:?}, the timeout is {}s",
        KNOBS.timeout_secs
    );
    let id = body["evaluation_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/evaluations/{id}")).await;
    let stage_ms = stored["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["stages"][0]["latency_ms"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(stage_ms <= 20, "the refused call took {stage_ms} ms");
    (took, stage_ms)
}

#[tokio::test]
async fn a_hanging_backend_times_out_fails_fast_once_open_and_recovers() {
    let llm = FaultyLlm::start(Mode::Hang).await;
    let app = spawn_app_with(|s| configure(s, &llm.base_url(), KNOBS)).await;
    app.seed_catalog().await;

    // Four evaluations stuck on the hanging backend while the rest of the service is probed.
    let app = Arc::new(app);
    let stuck: Vec<_> = (0..4)
        .map(|tag| {
            let app = app.clone();
            tokio::spawn(async move {
                let result = evaluate(&app, tag).await;
                (result, Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let probing_started = Instant::now();
    let slowest = probe(&app, 10).await;
    let probing_ended = Instant::now();
    let mut slowest_stuck = Duration::ZERO;
    for handle in stuck {
        let ((status, body, took), finished) = handle.await.unwrap();
        assert!(
            finished > probing_ended,
            "the evaluations were still stuck during all the probes"
        );
        assert_failed(status, &body, "timed out after 1s");
        // One attempt, or two with a backoff of at most 250 ms between them.
        assert!(took >= Duration::from_secs(1), "{took:?}");
        assert!(took < Duration::from_millis(2600), "{took:?}");
        slowest_stuck = slowest_stuck.max(took);
    }
    assert!(
        slowest < Duration::from_millis(100),
        "slowest probe {slowest:?} while evaluations hung"
    );

    let fast = assert_fails_fast(&app, &llm, 100).await;
    let healed_after = recovery(&app, &llm, 200).await;
    assert!(healed_after <= Duration::from_secs(KNOBS.circuit_open_secs) + Duration::from_secs(1));
    eprintln!(
        "hang: stuck requests failed after at most {slowest_stuck:?} (timeout {}s); slowest of 20 probes during them {slowest:?} over {:?}; fail-fast {:?} (LLM stage {} ms); recovered {healed_after:?} after healing",
        KNOBS.timeout_secs,
        probing_ended - probing_started,
        fast.0,
        fast.1,
    );
}

#[tokio::test]
async fn reset_connections_and_5xx_open_the_circuit_then_recover() {
    for (mode, expected) in [
        (Mode::Reset, "transport error"),
        (Mode::ServerError, "answered HTTP 503"),
    ] {
        let llm = FaultyLlm::start(mode).await;
        let app = spawn_app_with(|s| configure(s, &llm.base_url(), KNOBS)).await;

        let (status, body, first) = evaluate(&app, 1).await;
        // The breaker may open during this request, so its second question may already see it.
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        let errors: Vec<&str> = body["evaluation"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["error"].as_str().unwrap_or_default())
            .collect();
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{mode:?}: {body}"
        );
        assert!(
            errors
                .iter()
                .all(|e| e.contains(expected) || e.contains("circuit breaker")),
            "{mode:?}: {body}"
        );
        assert!(
            first < Duration::from_secs(1),
            "{mode:?}: fast failures need no timeout: {first:?}"
        );
        let fast = assert_fails_fast(&app, &llm, 2).await;
        let slowest = probe(&app, 3).await;
        assert!(slowest < Duration::from_millis(100), "{slowest:?}");
        let healed_after = recovery(&app, &llm, 10).await;
        eprintln!(
            "{mode:?}: first request failed in {first:?}; fail-fast {:?} (LLM stage {} ms); recovered {healed_after:?} after healing",
            fast.0,
            fast.1
        );
    }
}

#[tokio::test]
async fn garbage_replies_fail_each_question_clearly_without_blocking_recovery() {
    for (mode, expected) in [
        (Mode::Garbage, "malformed response"),
        (Mode::GarbageContent, "invalid reply after one re-ask"),
    ] {
        let llm = FaultyLlm::start(mode).await;
        let app = spawn_app_with(|s| configure(s, &llm.base_url(), KNOBS)).await;
        let mut slowest = Duration::ZERO;
        for tag in 0..3 {
            let (status, body, took) = evaluate(&app, tag).await;
            assert_failed(status, &body, expected);
            slowest = slowest.max(took);
        }
        // A server that answers at all is alive: garbage is not a reason to stop calling it,
        // and every call still reached it.
        assert!(llm.requests() >= 6, "{}", llm.requests());
        assert!(slowest < Duration::from_secs(1), "{mode:?}: {slowest:?}");
        llm.set(Mode::Healthy);
        let (status, body, healed) = evaluate(&app, 10).await;
        assert_graded(status, &body);
        eprintln!(
            "{mode:?}: each request failed within {slowest:?}; healthy again at once ({healed:?})"
        );
    }
}
