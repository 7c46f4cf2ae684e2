//! Load benchmark of `POST /evaluate-answers` against the real `examiner serve` binary.
//!
//! The bench process holds two things, each on its own Tokio runtime with named threads so
//! their CPU can be told apart: a minimal fake chat-completions server (`fake-llm`) that
//! answers every call after a fixed delay D with a valid reply for the stage asked (read from
//! `response_format.json_schema.name`), and a closed-loop load generator (`loadgen`): N workers,
//! each sending requests of 8 questions back to back. Every request carries distinct student
//! answers, so the LLM reply memo never hits and every question costs real calls.
//!
//! Examiner runs as a child process with a fresh data directory per scenario; its CPU time is
//! read from `/proc/<pid>/stat` (utime + stime) at the start and end of the measurement window,
//! and divided by the LLM calls the fake received in that window.
//!
//! Run: `cargo bench --bench evaluate_load` (see BENCHMARKS.md). Environment knobs:
//! - `EVAL_LOAD_SCENARIOS`: comma-separated subset of `c1,c100,c100-arbiter,c1000`, or
//!   `custom` (then `EVAL_LOAD_CONCURRENCY`, `EVAL_LOAD_DELAY_MS`, `EVAL_LOAD_ARBITER=1`);
//! - `EVAL_LOAD_SECS` / `EVAL_LOAD_WARMUP_SECS`: measurement / warm-up seconds per scenario;
//! - `EVAL_LOAD_QUESTIONS`: questions per request (default 8);
//! - `EVAL_LOAD_MARKS`: marks per question (default 5; above 5, the embedded grader's second
//!   opinion is beyond its calibration and not waited for), or a comma-separated list the
//!   questions take in turn (`5,10`: odd questions 5 marks, even ones 10);
//! - `EVAL_LOAD_CACHE=0`: run Examiner with `EXAMINER_GRADING__LLM__CACHE=false`;
//! - `EVAL_LOAD_LEAN_HTTP1=0|1`: run Examiner with `grading.llm.lean_http1` off or on (its own
//!   HTTP/1.1 client or the general one for the plain-HTTP fake; unset: the binary's default);
//! - `EVAL_LOAD_RUST_LOG`: Examiner's `RUST_LOG` (default: unset, i.e. its `info` default);
//! - `EVAL_LOAD_PERF=DIR`: `perf record` Examiner during each measurement window into DIR;
//! - `EVAL_LOAD_FLOOR=1`: after each scenario, replay the request bodies Examiner sent from a
//!   bare HTTP client (reqwest), then from raw TCP connections with no HTTP library, at the same
//!   calls in flight, and report their CPU per call (the client and transport floors);
//! - `EVAL_LOAD_KEEP=1`: keep each scenario's data directory (database, Examiner's log);
//! - `EVAL_LOAD_EXAMINER=PATH`: run another `examiner` binary (e.g. an older build, for A/B);
//! - `EVAL_LOAD_SECOND_OPINION=SHARE`: let Examiner load the embedded grader from
//!   `$EXAMINER_MODELS_DIR` (default `./models`) for its second opinion on that share of the
//!   questions (`1`: every one; `grading.second_opinion_fraction`); off by default, so the bench
//!   measures the three-stage LLM process alone;
//! - `EVAL_LOAD_POSTGRES_URL=postgres://…`: store into PostgreSQL (a fresh schema of that
//!   database per scenario, dropped afterwards unless `EVAL_LOAD_KEEP`) instead of SQLite, and
//!   report the CPU of the server's processes (every process named `postgres`) beside Examiner's.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use serde_json::json;

// ---------------------------------------------------------------------------------------------
// Scenarios and options

#[derive(Clone, Debug)]
struct Scenario {
    name: String,
    concurrency: usize,
    delay: Duration,
    /// The verifier always disagrees, so every question goes to the arbiter.
    arbiter: bool,
    warmup: Duration,
    measure: Duration,
}

impl Scenario {
    fn new(name: &str, concurrency: usize, delay_ms: u64, arbiter: bool, secs: (u64, u64)) -> Self {
        Scenario {
            name: name.to_string(),
            concurrency,
            delay: Duration::from_millis(delay_ms),
            arbiter,
            warmup: Duration::from_secs(secs.0),
            measure: Duration::from_secs(secs.1),
        }
    }

    /// The LLM critical path of one request.
    fn ideal(&self) -> Duration {
        self.delay * if self.arbiter { 3 } else { 2 }
    }
}

struct Options {
    questions: usize,
    marks: Arc<[u64]>,
    cache: bool,
    rust_log: Option<String>,
    perf_dir: Option<String>,
    /// The models directory and the share of questions, when the embedded grader's second
    /// opinion is wanted.
    second_opinion: Option<(String, f64)>,
    /// After each scenario, measure the client floor (`run_floor`).
    floor: bool,
    /// `grading.llm.lean_http1`, when chosen (unset: the binary's default, so an older build
    /// without the setting still starts).
    lean_http1: Option<bool>,
    /// Store into a fresh schema of this PostgreSQL database instead of SQLite.
    postgres: Option<String>,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn scenarios() -> Vec<Scenario> {
    let all = vec![
        Scenario::new("c1", 1, 200, false, (2, 15)),
        Scenario::new("c100", 100, 200, false, (3, 20)),
        Scenario::new("c100-arbiter", 100, 200, true, (3, 20)),
        Scenario::new("c1000", 1000, 2000, false, (10, 40)),
    ];
    let wanted = std::env::var("EVAL_LOAD_SCENARIOS").unwrap_or_default();
    let mut chosen: Vec<Scenario> = if wanted.trim().is_empty() {
        all
    } else {
        let mut chosen = Vec::new();
        for name in wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "custom" {
                chosen.push(Scenario::new(
                    "custom",
                    env_u64("EVAL_LOAD_CONCURRENCY").unwrap_or(10) as usize,
                    env_u64("EVAL_LOAD_DELAY_MS").unwrap_or(200),
                    env_u64("EVAL_LOAD_ARBITER").unwrap_or(0) != 0,
                    (3, 20),
                ));
            } else if let Some(s) = all.iter().find(|s| s.name == name) {
                chosen.push(s.clone());
            } else {
                panic!(
                    "unknown scenario {name:?}; choose from c1, c100, c100-arbiter, c1000, custom"
                );
            }
        }
        chosen
    };
    for s in &mut chosen {
        if let Some(secs) = env_u64("EVAL_LOAD_SECS") {
            s.measure = Duration::from_secs(secs.max(1));
        }
        if let Some(secs) = env_u64("EVAL_LOAD_WARMUP_SECS") {
            s.warmup = Duration::from_secs(secs);
        }
    }
    chosen
}

// ---------------------------------------------------------------------------------------------
// The fake chat-completions server

const EVALUATOR: usize = 0;
const VERIFIER: usize = 1;
const ARBITER: usize = 2;
const OTHER: usize = 3;

struct FakeLlm {
    delay_ms: AtomicU64,
    disagree: AtomicBool,
    calls: [AtomicU64; 4],
    evaluator: Bytes,
    agree: Bytes,
    disagree_reply: Bytes,
    arbiter: Bytes,
    /// The first request body seen per stage: what the client floor replays.
    captured: [OnceLock<Bytes>; 4],
}

fn completion(content: serde_json::Value) -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "model": "fake-grader",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content.to_string()}}],
            "usage": {"prompt_tokens": 900, "completion_tokens": 120, "total_tokens": 1020}
        }))
        .expect("static reply serialises"),
    )
}

impl FakeLlm {
    fn new() -> Self {
        FakeLlm {
            delay_ms: AtomicU64::new(200),
            disagree: AtomicBool::new(false),
            calls: Default::default(),
            evaluator: completion(json!({
                "marks": 4,
                "feedback": "The answer states the concept correctly but leaves out one feature.",
                "reasoning": "Compared with the key points of the standard answer.",
                "key_points_covered": ["definition", "consequence for asset values"],
                "key_points_missed": ["no intention to liquidate"]
            })),
            agree: completion(json!({
                "agrees": true, "marks": 4, "reasons": "The grading matches the standard answer."
            })),
            disagree_reply: completion(json!({
                "agrees": false, "marks": 2, "reasons": "The answer misses the main feature."
            })),
            arbiter: completion(json!({
                "marks": 3,
                "feedback": "Partly correct: the concept is stated but not fully explained.",
                "reasoning": "Weighed the evaluator's and the verifier's views."
            })),
            captured: Default::default(),
        }
    }

    fn calls(&self) -> [u64; 4] {
        std::array::from_fn(|i| self.calls[i].load(Ordering::Relaxed))
    }
}

/// The stage, from the schema name. Requests are compact JSON, so the quoted name can only
/// appear as the `json_schema.name` value (quotes inside prompt strings are escaped).
fn stage_of(body: &[u8]) -> usize {
    let Ok(text) = std::str::from_utf8(body) else {
        return OTHER;
    };
    if text.contains(r#""name":"evaluator_grade""#) {
        EVALUATOR
    } else if text.contains(r#""name":"verifier_check""#) {
        VERIFIER
    } else if text.contains(r#""name":"arbiter_decision""#) {
        ARBITER
    } else {
        OTHER
    }
}

async fn complete(State(fake): State<Arc<FakeLlm>>, body: Bytes) -> Response {
    let stage = stage_of(&body);
    fake.captured[stage].get_or_init(|| body.clone());
    drop(body);
    fake.calls[stage].fetch_add(1, Ordering::Relaxed);
    let delay = Duration::from_millis(fake.delay_ms.load(Ordering::Relaxed));
    tokio::time::sleep(delay).await;
    let reply = match stage {
        EVALUATOR => fake.evaluator.clone(),
        VERIFIER if fake.disagree.load(Ordering::Relaxed) => fake.disagree_reply.clone(),
        VERIFIER => fake.agree.clone(),
        ARBITER => fake.arbiter.clone(),
        _ => return (StatusCode::BAD_REQUEST, "unknown stage").into_response(),
    };
    ([(header::CONTENT_TYPE, "application/json")], reply).into_response()
}

async fn start_fake(fake: Arc<FakeLlm>) -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind fake LLM");
    // Examiner opens up to 8 connections per request in flight at once; a deep backlog keeps
    // the first burst from overflowing the accept queue.
    let listener = socket.listen(16_384).expect("listen");
    let address = listener.local_addr().expect("local address");
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(fake);
    tokio::spawn(async move { axum::serve(listener, app).await.expect("fake LLM serves") });
    address
}

// ---------------------------------------------------------------------------------------------
// CPU accounting

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// utime + stime, in seconds, from a `/proc/.../stat` file.
fn stat_cpu(path: &Path) -> Option<f64> {
    stat_seconds(path, 11..13)
}

/// The sum of the given fields (counted after the command name) of a `/proc/.../stat` file,
/// in seconds: 11..13 is utime and stime, 13..15 the same of the children already reaped.
fn stat_seconds(path: &Path, fields: std::ops::Range<usize>) -> Option<f64> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let values: Vec<&str> = rest.split_whitespace().collect();
    let mut ticks = 0.0;
    for field in fields {
        ticks += values.get(field)?.parse::<f64>().ok()?;
    }
    Some(ticks / clk_tck())
}

/// CPU seconds of every process named `name`, with that of their children already reaped
/// (a PostgreSQL backend that exited is counted in the postmaster's).
fn processes_cpu(name: &str) -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut total = 0.0;
    for entry in dir.flatten() {
        let path = entry.path();
        if std::fs::read_to_string(path.join("comm")).map_or(true, |comm| comm.trim() != name) {
            continue;
        }
        total += stat_seconds(&path.join("stat"), 11..15).unwrap_or(0.0);
    }
    total
}

/// Per thread: (name without trailing digits, CPU seconds).
type Threads = HashMap<String, (String, f64)>;

fn threads_of(pid: &str) -> Threads {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let name = name
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
            .to_string();
        if let Some(cpu) = stat_cpu(&path.join("stat")) {
            out.insert(
                entry.file_name().to_string_lossy().into_owned(),
                (name, cpu),
            );
        }
    }
    out
}

/// CPU used per thread name between two snapshots (threads that exited in between are lost).
fn threads_delta(before: &Threads, after: &Threads) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (tid, (name, cpu)) in after {
        let base = before.get(tid).map_or(0.0, |(_, c)| *c);
        *out.entry(name.clone()).or_insert(0.0) += cpu - base;
    }
    out
}

fn self_rusage_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn raise_fd_limit() -> u64 {
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
        limit.rlim_cur as u64
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The machine's CPU time from `/proc/stat`, in seconds: (busy, steal). Steal is time the
/// hypervisor gave this VM's CPUs to someone else; on a shared host it moves the tail.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let at = |i: usize| fields.get(i).copied().unwrap_or(0.0) / clk_tck();
    // user nice system idle iowait irq softirq steal
    let busy = at(0) + at(1) + at(2) + at(5) + at(6);
    (busy, at(7))
}

struct Snapshot {
    at: Instant,
    /// The PostgreSQL server's processes, when Examiner stores there.
    postgres_cpu: f64,
    machine: (f64, f64),
    examiner_cpu: f64,
    examiner_threads: Threads,
    bench_cpu: f64,
    bench_threads: Threads,
    calls: [u64; 4],
    metrics: String,
}

// ---------------------------------------------------------------------------------------------
// Examiner as a child process

struct Examiner {
    child: Child,
    base: String,
    authorization: String,
    _data: tempfile::TempDir,
    db: std::path::PathBuf,
    log: std::path::PathBuf,
    /// The PostgreSQL schema stored into, when not SQLite.
    schema: Option<examiner::store::testing::PostgresSchema>,
}

impl Examiner {
    /// The examiner binary with the bench's environment: the fake as every role's backend,
    /// room for every call at once, and the chosen cache and log settings.
    fn command(
        data: &Path,
        fake: SocketAddr,
        opts: &Options,
        database_url: Option<&str>,
    ) -> Command {
        let binary = std::env::var("EVAL_LOAD_EXAMINER")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_examiner").to_string());
        let mut cmd = Command::new(binary);
        for (name, _) in std::env::vars() {
            if name.starts_with("EXAMINER_") || name == "RUST_LOG" {
                cmd.env_remove(name);
            }
        }
        cmd.arg("--data-dir")
            .arg(data.join("data"))
            .env("OMP_THREAD_LIMIT", "1")
            .env("EXAMINER_LLM_BASE_URL", format!("http://{fake}/v1"))
            .env("EXAMINER_LLM_MODEL", "fake-grader")
            // All roles share one backend (identical settings): room for every call at once.
            .env("EXAMINER_LLM_CONCURRENCY", "16384")
            .env("EXAMINER_LLM_TIMEOUT_SECS", "60")
            .env(
                "EXAMINER_GRADING__LLM__PER_REQUEST_CONCURRENCY",
                opts.questions.to_string(),
            )
            .env(
                "EXAMINER_GRADING__LLM__CACHE",
                if opts.cache { "true" } else { "false" },
            )
            // The service-wide cap on workflow requests in progress (default 256) would answer
            // 503 at 1000 concurrent; the benchmark measures latency with everything admitted.
            .env("EXAMINER_AUTH__MAX_IN_FLIGHT", "4096")
            // In `llm` mode the embedded grader gives a second opinion on every question by
            // default; it is measured only when asked for (EVAL_LOAD_SECOND_OPINION).
            .env(
                "EXAMINER_GRADING__SECOND_OPINION_FRACTION",
                opts.second_opinion
                    .as_ref()
                    .map_or("0".to_string(), |(_, share)| share.to_string()),
            )
            .env(
                "EXAMINER_GRADING__LOCAL__MODEL_DIR",
                match &opts.second_opinion {
                    Some((models, _)) => models.clone(),
                    None => data.join("no-models").display().to_string(),
                },
            )
            .stdin(Stdio::null());
        if let Some(filter) = &opts.rust_log {
            cmd.env("RUST_LOG", filter);
        }
        if let Some(lean) = opts.lean_http1 {
            cmd.env("EXAMINER_GRADING__LLM__LEAN_HTTP1", lean.to_string());
        }
        if let Some(url) = database_url {
            cmd.env("EXAMINER_DATABASE_URL", url);
        }
        cmd
    }

    fn start(fake: SocketAddr, opts: &Options) -> Examiner {
        let mut data = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("EVAL_LOAD_KEEP").is_some() {
            data.disable_cleanup(true);
            eprintln!("keeping {}", data.path().display());
        }
        let schema = opts.postgres.as_ref().map(|base| {
            let base = base.clone();
            let schema = on_own_runtime(async move {
                examiner::store::testing::PostgresSchema::create_in(&base, "examiner_bench").await
            });
            eprintln!("storing into PostgreSQL schema {}", schema.name());
            schema
        });
        let database_url = schema.as_ref().map(|s| s.url.as_str());
        // Requests authenticate as an examiner, as a grading client would in production.
        let created = Self::command(data.path(), fake, opts, database_url)
            .args([
                "keys",
                "create",
                "--role",
                "examiner",
                "--label",
                "evaluate_load",
            ])
            .stderr(Stdio::null())
            .output()
            .expect("run examiner keys create");
        assert!(created.status.success(), "examiner keys create failed");
        let secret = String::from_utf8_lossy(&created.stdout)
            .lines()
            .nth(1)
            .expect("the secret is printed on the second line")
            .trim()
            .to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = data.path().join("examiner.log");
        let child = Self::command(data.path(), fake, opts, database_url)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start examiner");
        let db = data.path().join("data").join("examiner.db");
        Examiner {
            child,
            base: format!("http://127.0.0.1:{port}"),
            authorization: format!("Bearer {secret}"),
            _data: data,
            db,
            log,
            schema,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                panic!("examiner exited early ({status}):\n{log}");
            }
            if let Ok(resp) = client.get(format!("{}/healthz", self.base)).send().await {
                if resp.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "examiner did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(schema) = self.schema.take() {
            if std::env::var_os("EVAL_LOAD_KEEP").is_some() {
                eprintln!("keeping PostgreSQL schema {}", schema.name());
            } else {
                on_own_runtime(schema.drop_schema());
            }
        }
    }
}

/// Runs a future to completion on a runtime of its own, on a thread of its own (so it may be
/// called from anywhere, a Tokio context included).
fn on_own_runtime<T: Send + 'static>(
    future: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("the PostgreSQL setup thread")
}

/// The memo's database file beside the main one (`store::sqlite::memo_path`); older builds
/// kept the memo in the main file.
fn memo_db(db: &Path) -> std::path::PathBuf {
    db.with_file_name("examiner-memo.db")
}

/// What the whole run (warm-up, window and drain) left in the databases.
async fn count_rows(db: &Path) -> String {
    use sqlx::ConnectOptions;
    let mut parts = Vec::new();
    for file in [db.to_path_buf(), memo_db(db)] {
        if !file.is_file() {
            continue;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&file)
            .read_only(true);
        let Ok(mut conn) = options.connect().await else {
            parts.push(format!("{} unreadable", file.display()));
            continue;
        };
        for table in [
            "evaluations",
            "evaluation_items",
            "memo_log",
            "cache_entries",
        ] {
            let count: Result<i64, _> =
                sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
                    .fetch_one(&mut conn)
                    .await;
            if let Ok(count) = count {
                parts.push(format!("{table} {count}"));
            }
        }
    }
    parts.join(", ")
}

async fn scrape(client: &reqwest::Client, base: &str) -> String {
    match client.get(format!("{base}/metrics")).send().await {
        Ok(resp) => resp.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Sum of a Prometheus series' samples whose line contains `filter`.
fn metric(text: &str, name: &str, filter: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with(name)
                && matches!(l.as_bytes().get(name.len()), Some(b'{') | Some(b' '))
                && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Samples of a Prometheus histogram whose line contains `filter`, at or below bucket `le`.
fn bucket(text: &str, name: &str, filter: &str, le: f64) -> f64 {
    let le = format!("le=\"{le}\"");
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(filter) && l.contains(&le))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The bucket bounds Examiner's histograms use (`app::metrics_handle`).
const BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

// ---------------------------------------------------------------------------------------------
// Load generator

const STANDARD: [&str; 4] = [
    "The going concern concept assumes that a business will continue to operate for the foreseeable future, with neither the intention nor the necessity to liquidate or curtail its operations materially. Assets are therefore recorded at cost less depreciation rather than at their break-up value.",
    "The accounting equation states that assets equal liabilities plus capital. Every transaction affects at least two accounts so that the equation always balances; for example, introducing cash as capital increases both cash and capital.",
    "Depreciation is the systematic allocation of the depreciable amount of an asset over its useful life. It is charged because assets lose value through use, passage of time and obsolescence, and matching requires the cost to be spread over the periods that benefit.",
    "A trial balance is a statement of the debit and credit balances of all ledger accounts on a date. It checks the arithmetical accuracy of posting but does not reveal errors of principle, omission or compensating errors.",
];

const ANSWERS: [&str; 4] = [
    "Going concern means the business is expected to continue its operations in the foreseeable future and is not going to close down, so the assets are shown at cost less depreciation and not at what they would fetch if sold today.",
    "Assets = Liabilities + Capital. Each transaction has two effects that keep both sides equal, e.g. when the owner brings cash, cash goes up and capital goes up by the same amount.",
    "Depreciation is the fall in the value of a fixed asset because of wear and tear and time. It is charged every year so that the cost of the machine is spread over the years in which it is used.",
    "A trial balance lists all the debit and credit balances from the ledger to check that the totals agree. Even when it agrees some errors like omission or wrong account can remain.",
];

/// What each request grades: how many questions, and the marks they are worth in turn.
#[derive(Clone)]
struct Script {
    questions: usize,
    marks: Arc<[u64]>,
}

/// `EVAL_LOAD_MARKS`: one number, or a list the questions take in turn; 5 when unset.
fn marks_in_turn() -> Arc<[u64]> {
    let Ok(list) = std::env::var("EVAL_LOAD_MARKS") else {
        return Arc::from([5]);
    };
    list.split(',')
        .map(|m| match m.trim().parse::<u64>() {
            Ok(marks) if marks > 0 => marks,
            _ => {
                eprintln!("EVAL_LOAD_MARKS: {m:?} is not a positive whole number (in {list:?})");
                std::process::exit(2);
            }
        })
        .collect()
}

fn request_body(worker: usize, seq: u64, script: &Script) -> String {
    let pairs: Vec<serde_json::Value> = (0..script.questions)
        .map(|q| {
            json!({
                "question_number": (q + 1).to_string(),
                "student_answer": format!(
                    "{} (Script {worker}-{seq}, answer {}.)",
                    ANSWERS[q % ANSWERS.len()],
                    q + 1
                ),
                "standard_answer": STANDARD[q % STANDARD.len()],
                "total_marks": script.marks[q % script.marks.len()]
            })
        })
        .collect();
    json!({
        "user_id": format!("BENCH-U{worker}"),
        "course_code": "BENCH-COURSE",
        "exam_code": "BENCH-EXAM",
        "question_paper_code": "BENCH-QP",
        "qa_pairs": pairs
    })
    .to_string()
}

struct Sample {
    end: Instant,
    latency: Duration,
    ok: bool,
}

async fn worker(
    id: usize,
    client: reqwest::Client,
    url: String,
    authorization: String,
    script: Script,
    start_at: Instant,
    stop_at: Instant,
) -> (Vec<Sample>, Option<String>) {
    tokio::time::sleep_until(start_at.into()).await;
    let mut samples = Vec::new();
    let mut first_error = None;
    let mut seq = 0u64;
    while Instant::now() < stop_at {
        let body = request_body(id, seq, &script);
        seq += 1;
        let started = Instant::now();
        let result = client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, &authorization)
            .body(body)
            .send()
            .await;
        let error = match result {
            Ok(resp) => {
                let status = resp.status();
                match resp.bytes().await {
                    Ok(body) if status.is_success() => {
                        let text = String::from_utf8_lossy(&body);
                        if text.contains(r#""status":"success""#) {
                            None
                        } else {
                            Some(format!("HTTP {status}: {}", snippet(&text)))
                        }
                    }
                    Ok(body) => Some(format!(
                        "HTTP {status}: {}",
                        snippet(&String::from_utf8_lossy(&body))
                    )),
                    Err(e) => Some(format!("reading the body: {e}")),
                }
            }
            Err(e) => Some(format!("request failed: {e}")),
        };
        let ok = error.is_none();
        samples.push(Sample {
            end: Instant::now(),
            latency: started.elapsed(),
            ok,
        });
        if let Some(error) = error {
            first_error.get_or_insert(error);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    (samples, first_error)
}

fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}

// ---------------------------------------------------------------------------------------------
// One scenario

struct Outcome {
    scenario: Scenario,
    requests: usize,
    errors: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    rps: f64,
    calls: u64,
    examiner_cpu: f64,
    bench_cpu: f64,
    loadgen_cpu: f64,
    fake_cpu: f64,
}

impl Outcome {
    fn us_per_call(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.examiner_cpu / self.calls as f64 * 1e6
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn run_scenario(
    sc: &Scenario,
    fake: &Arc<FakeLlm>,
    fake_addr: SocketAddr,
    loadgen: &tokio::runtime::Runtime,
    opts: &Options,
) -> Outcome {
    eprintln!(
        "\n=== {}: {} concurrent, D = {} ms{}, warm-up {} s, measured {} s (load average {}) ===",
        sc.name,
        sc.concurrency,
        sc.delay.as_millis(),
        if sc.arbiter {
            ", every question to the arbiter"
        } else {
            ""
        },
        sc.warmup.as_secs(),
        sc.measure.as_secs(),
        load_average()
    );
    fake.delay_ms
        .store(sc.delay.as_millis() as u64, Ordering::Relaxed);
    fake.disagree.store(sc.arbiter, Ordering::Relaxed);

    let mut examiner = Examiner::start(fake_addr, opts);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .timeout(Duration::from_secs(300))
        .tcp_nodelay(true)
        .build()
        .expect("load generator client");
    loadgen.block_on(examiner.wait_ready(&client));
    let pid = examiner.pid();

    let t0 = Instant::now();
    let measure_from = t0 + sc.warmup;
    let measure_to = measure_from + sc.measure;
    // Spread the workers' first requests over one ideal latency so arrivals are even.
    let stagger = sc.ideal().min(sc.warmup / 2);
    let url = format!("{}/evaluate-answers", examiner.base);
    let handles: Vec<_> = (0..sc.concurrency)
        .map(|i| {
            let start_at = t0 + stagger.mul_f64(i as f64 / sc.concurrency as f64);
            loadgen.spawn(worker(
                i,
                client.clone(),
                url.clone(),
                examiner.authorization.clone(),
                Script {
                    questions: opts.questions,
                    marks: opts.marks.clone(),
                },
                start_at,
                measure_to,
            ))
        })
        .collect();

    let snapshot = || {
        let at = Instant::now();
        let examiner_cpu = stat_cpu(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0.0);
        let examiner_threads = threads_of(&pid);
        let bench_cpu = self_rusage_cpu();
        let bench_threads = threads_of("self");
        let calls = fake.calls();
        let metrics = loadgen.block_on(scrape(&client, &examiner.base));
        Snapshot {
            at,
            postgres_cpu: if opts.postgres.is_some() {
                processes_cpu("postgres")
            } else {
                0.0
            },
            machine: machine_cpu(),
            examiner_cpu,
            examiner_threads,
            bench_cpu,
            bench_threads,
            calls,
            metrics,
        }
    };
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let before = snapshot();
    let perf = opts.perf_dir.as_ref().map(|dir| {
        let _ = std::fs::create_dir_all(dir);
        Command::new("perf")
            .args(["record", "-F", "499", "-g", "-o"])
            .arg(format!("{dir}/{}.perf.data", sc.name))
            .args(["-p", &pid, "--", "sleep"])
            .arg(format!("{}", sc.measure.as_secs().saturating_sub(1).max(1)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("perf")
    });
    std::thread::sleep(measure_to.saturating_duration_since(Instant::now()));
    let after = snapshot();
    if let Some(mut perf) = perf {
        let _ = perf.wait();
    }

    // Drain: every worker finishes its request in flight.
    let mut samples = Vec::new();
    let mut first_error = None;
    for handle in handles {
        let (s, e) = loadgen.block_on(handle).expect("worker");
        samples.extend(s);
        if first_error.is_none() {
            first_error = e;
        }
    }
    examiner.stop();

    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.end >= before.at && s.end < after.at)
        .collect();
    let errors = window.iter().filter(|s| !s.ok).count();
    let mut latencies: Vec<Duration> = window.iter().map(|s| s.latency).collect();
    latencies.sort();
    let secs = (after.at - before.at).as_secs_f64();
    let calls_by_stage: [u64; 4] = std::array::from_fn(|i| after.calls[i] - before.calls[i]);
    let calls: u64 = calls_by_stage.iter().sum();
    let bench_threads = threads_delta(&before.bench_threads, &after.bench_threads);
    let outcome = Outcome {
        scenario: sc.clone(),
        requests: window.len(),
        errors,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        rps: (window.len() - errors) as f64 / secs,
        calls,
        examiner_cpu: after.examiner_cpu - before.examiner_cpu,
        bench_cpu: after.bench_cpu - before.bench_cpu,
        loadgen_cpu: bench_threads.get("loadgen").copied().unwrap_or(0.0),
        fake_cpu: bench_threads.get("fake-llm").copied().unwrap_or(0.0),
    };

    // Details: where Examiner's CPU went by thread, what it saw, what it stored.
    let metric_delta = |name: &str, filter: &str| {
        metric(&after.metrics, name, filter) - metric(&before.metrics, name, filter)
    };
    let stage_mean = metric_delta("examiner_llm_seconds_sum", "")
        / metric_delta("examiner_llm_seconds_count", "").max(1.0);
    let http_mean = metric_delta("examiner_http_request_seconds_sum", "evaluate-answers")
        / metric_delta("examiner_http_request_seconds_count", "evaluate-answers").max(1.0);
    let mean_of = |name: &str, filter: &str| {
        metric_delta(&format!("{name}_sum"), filter)
            / metric_delta(&format!("{name}_count"), filter).max(1.0)
    };
    let grading_mean = mean_of("examiner_grading_seconds", "");
    let read_mean = mean_of("examiner_store_seconds", "read_paper");
    let insert_mean = mean_of("examiner_store_seconds", "insert_evaluation");
    // The tail: how many inserts and LLM stages took long enough to matter.
    let over = |name: &str, filter: &str, le: f64| {
        let count = metric_delta(&format!("{name}_count"), filter);
        let at_most = bucket(&after.metrics, &format!("{name}_bucket"), filter, le)
            - bucket(&before.metrics, &format!("{name}_bucket"), filter, le);
        format!("{:.0} of {count:.0}", count - at_most)
    };
    let stage_bound = BUCKETS
        .into_iter()
        .find(|b| *b >= 1.2 * sc.delay.as_secs_f64())
        .unwrap_or(60.0);
    let examiner_threads = threads_delta(&before.examiner_threads, &after.examiner_threads);
    let log_bytes = std::fs::metadata(&examiner.log).map_or(0, |m| m.len());
    let db_bytes: u64 = [examiner.db.clone(), memo_db(&examiner.db)]
        .iter()
        .flat_map(|file| ["", "-wal"].map(|suffix| format!("{}{suffix}", file.display())))
        .filter_map(|file| std::fs::metadata(file).ok().map(|m| m.len()))
        .sum();
    println!(
        "{}: {} requests in {:.1} s ({} failed), {} LLM calls (evaluator {}, verifier {}, arbiter {}, unknown {}) = {:.1} per request",
        sc.name,
        outcome.requests,
        secs,
        errors,
        calls,
        calls_by_stage[EVALUATOR],
        calls_by_stage[VERIFIER],
        calls_by_stage[ARBITER],
        calls_by_stage[OTHER],
        calls as f64 / outcome.requests.max(1) as f64
    );
    if let Some(error) = &first_error {
        println!("  first error: {error}");
    }
    println!(
        "  latency p50 {} p99 {} max {} (ideal {}, p99/ideal {:.3}); {:.1} req/s (closed-loop ideal {:.1})",
        ms(outcome.p50),
        ms(outcome.p99),
        ms(outcome.max),
        ms(sc.ideal()),
        outcome.p99.as_secs_f64() / sc.ideal().as_secs_f64(),
        outcome.rps,
        sc.concurrency as f64 / sc.ideal().as_secs_f64()
    );
    println!(
        "  Examiner saw: mean LLM stage {:.1} ms (D = {} ms), mean /evaluate-answers {:.1} ms = paper read {:.1} + grading {:.1} + evaluation insert {:.1} + the rest",
        stage_mean * 1e3,
        sc.delay.as_millis(),
        http_mean * 1e3,
        read_mean * 1e3,
        grading_mean * 1e3,
        insert_mean * 1e3
    );
    println!(
        "  tail: evaluation inserts over 25 / 50 / 100 ms: {} / {} / {}; LLM stages over {} ms: {} (evaluator {}, verifier {}, arbiter {})",
        over("examiner_store_seconds", "insert_evaluation", 0.025),
        over("examiner_store_seconds", "insert_evaluation", 0.05),
        over("examiner_store_seconds", "insert_evaluation", 0.1),
        stage_bound * 1e3,
        over("examiner_llm_seconds", "", stage_bound),
        over("examiner_llm_seconds", "role=\"evaluator\"", stage_bound),
        over("examiner_llm_seconds", "role=\"verifier\"", stage_bound),
        over("examiner_llm_seconds", "role=\"arbiter\"", stage_bound)
    );
    if opts.second_opinion.is_some() {
        println!(
            "  second opinion: {:.0} questions left without it (second_opinion_missing), {:.0} beyond the calibration and not waited for, {:.0} queued embedding jobs withdrawn",
            metric_delta("examiner_second_opinions_missing_total", ""),
            metric_delta("examiner_second_opinions_not_waited_for_total", ""),
            metric_delta("examiner_embed_jobs_withdrawn_total", "")
        );
    }
    println!(
        "  Examiner CPU {:.2} s = {:.1}% of one core = {:.1} µs per LLM call; by thread: {}",
        outcome.examiner_cpu,
        outcome.examiner_cpu / secs * 100.0,
        outcome.us_per_call(),
        examiner_threads
            .iter()
            .filter(|(_, cpu)| **cpu > 0.0)
            .map(|(name, cpu)| format!("{name} {cpu:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  bench process CPU {:.2} s ({:.1}% of one core): load generator {:.2} s ({:.1} µs per request), fake LLM {:.2} s ({:.1} µs per call), other {:.2} s",
        outcome.bench_cpu,
        outcome.bench_cpu / secs * 100.0,
        outcome.loadgen_cpu,
        outcome.loadgen_cpu / outcome.requests.max(1) as f64 * 1e6,
        outcome.fake_cpu,
        outcome.fake_cpu / calls.max(1) as f64 * 1e6,
        outcome.bench_cpu - outcome.loadgen_cpu - outcome.fake_cpu
    );
    if opts.postgres.is_some() {
        let server = after.postgres_cpu - before.postgres_cpu;
        println!(
            "  PostgreSQL server CPU {:.2} s = {:.1}% of one core = {:.1} µs per LLM call (Examiner and server together {:.1} µs)",
            server,
            server / secs * 100.0,
            server / calls.max(1) as f64 * 1e6,
            (outcome.examiner_cpu + server) / calls.max(1) as f64 * 1e6
        );
    }
    let machine_busy = after.machine.0 - before.machine.0;
    let steal = after.machine.1 - before.machine.1;
    println!(
        "  machine: {:.2} s of CPU busy, {:.2} s stolen by the hypervisor ({:.1}% of the window's CPU time; above a few per cent the run says more about the host than about Examiner)",
        machine_busy,
        steal,
        steal / (secs * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64) * 100.0
    );
    let databases = if opts.postgres.is_some() {
        "in PostgreSQL".to_string()
    } else {
        let rows = loadgen.block_on(count_rows(&examiner.db));
        format!(
            "{:.1} MiB after the run ({rows})",
            db_bytes as f64 / 1048576.0
        )
    };
    println!(
        "  Examiner log {:.1} KiB ({:.0} B per request), databases {databases}; load average now {}",
        log_bytes as f64 / 1024.0,
        log_bytes as f64 / samples.len().max(1) as f64,
        load_average()
    );
    outcome
}

// ---------------------------------------------------------------------------------------------
// The client floor: what one LLM call costs any HTTP client on this machine

/// CPU per call of a bare client making the calls Examiner made, with nothing else to do.
struct Floor {
    calls: u64,
    cpu: f64,
}

impl Floor {
    fn us_per_call(&self) -> f64 {
        self.cpu / self.calls.max(1) as f64 * 1e6
    }
}

/// Which bare client replays the calls.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FloorClient {
    /// reqwest configured as Examiner's: what any chat-completions client built on the usual
    /// Rust HTTP stack costs.
    Reqwest,
    /// One kept-alive Tokio `TcpStream` per chain writing prebuilt request bytes and framing
    /// the reply by `Content-Length`, no JSON at all: what the transport itself costs.
    RawTcp,
}

impl FloorClient {
    fn label(self) -> &'static str {
        match self {
            FloorClient::Reqwest => "client floor (reqwest)",
            FloorClient::RawTcp => "transport floor (raw TCP)",
        }
    }
}

/// One chain of calls, as one question's stages are: send, wait for the reply, send the next.
/// Per call it does what any chat-completions client must: serialise the request, send it,
/// read the reply and parse it and the JSON inside its content.
async fn floor_worker(
    client: reqwest::Client,
    url: String,
    bodies: Arc<Vec<serde_json::Value>>,
    start_at: Instant,
    stop_at: Instant,
    calls: Arc<AtomicU64>,
) {
    tokio::time::sleep_until(start_at.into()).await;
    let mut next = 0usize;
    while Instant::now() < stop_at {
        let body = &bodies[next % bodies.len()];
        next += 1;
        let reply = async {
            let response = client.post(&url).json(body).send().await.ok()?;
            let bytes = response.bytes().await.ok()?;
            let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            let content = value["choices"][0]["message"]["content"].as_str()?;
            serde_json::from_str::<serde_json::Value>(content).ok()
        }
        .await;
        if reply.is_none() {
            panic!("client floor: the fake LLM did not answer a replayed request");
        }
        calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// The same chain of calls with no HTTP library: each request is bytes built once, written on
/// the chain's own connection; the reply is read until its head and `Content-Length` bytes
/// of body have arrived. Nothing any real client can skip is left out but the parsing.
async fn raw_floor_worker(
    addr: SocketAddr,
    requests: Arc<Vec<Vec<u8>>>,
    start_at: Instant,
    stop_at: Instant,
    calls: Arc<AtomicU64>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tokio::time::sleep_until(start_at.into()).await;
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("transport floor: connect to the fake LLM");
    stream.set_nodelay(true).expect("nodelay");
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut next = 0usize;
    while Instant::now() < stop_at {
        stream
            .write_all(&requests[next % requests.len()])
            .await
            .expect("transport floor: write");
        next += 1;
        buf.clear();
        let mut framed: Option<usize> = None;
        loop {
            if buf.capacity() == buf.len() {
                buf.reserve(16 * 1024);
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .expect("transport floor: read");
            assert!(n > 0, "transport floor: the fake LLM closed the connection");
            if framed.is_none() {
                framed = reply_length(&buf);
            }
            if framed.is_some_and(|total| buf.len() >= total) {
                break;
            }
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "transport floor: the fake LLM did not answer a replayed request"
        );
        calls.fetch_add(1, Ordering::Relaxed);
    }
}

/// The whole reply's length (head and body) once its head has arrived.
fn reply_length(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let length = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())
                .flatten()
        })
        .expect("transport floor: the fake LLM's reply has a Content-Length");
    Some(head_end + length)
}

/// Replays the request bodies the fake captured from Examiner, at the scenario's number of
/// calls in flight (concurrency × questions) and D, from a runtime of its own with as many
/// threads as Examiner's (`floor`), with Examiner stopped. Its CPU per call is the floor under
/// Examiner's own µs-per-call figure.
fn run_floor(
    sc: &Scenario,
    fake: &Arc<FakeLlm>,
    fake_addr: SocketAddr,
    opts: &Options,
    kind: FloorClient,
) -> Floor {
    let stages: &[usize] = if sc.arbiter {
        &[EVALUATOR, VERIFIER, ARBITER]
    } else {
        &[EVALUATOR, VERIFIER]
    };
    let captured: Vec<Bytes> = stages
        .iter()
        .map(|&stage| {
            fake.captured[stage]
                .get()
                .expect("the scenario's Examiner run made a call of every stage")
                .clone()
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .thread_name("floor")
        .enable_all()
        .build()
        .expect("floor runtime");
    let chains = sc.concurrency * opts.questions;
    let calls = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let measure_from = t0 + sc.warmup;
    let measure_to = measure_from + sc.measure;
    let stagger = sc.delay.min(sc.warmup / 2);
    let start_of = |i: usize| t0 + stagger.mul_f64(i as f64 / chains as f64);
    let handles: Vec<_> = match kind {
        FloorClient::Reqwest => {
            let bodies: Vec<serde_json::Value> = captured
                .iter()
                .map(|raw| serde_json::from_slice(raw).expect("Examiner sent JSON"))
                .collect();
            let bodies = Arc::new(bodies);
            // As Examiner's client (`build_http_client`): pooled, HTTP/1.1 to a plain-HTTP server.
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .pool_idle_timeout(Duration::from_secs(90))
                .tcp_keepalive(Duration::from_secs(60))
                .build()
                .expect("floor client");
            let url = format!("http://{fake_addr}/v1/chat/completions");
            (0..chains)
                .map(|i| {
                    runtime.spawn(floor_worker(
                        client.clone(),
                        url.clone(),
                        bodies.clone(),
                        start_of(i),
                        measure_to,
                        calls.clone(),
                    ))
                })
                .collect()
        }
        FloorClient::RawTcp => {
            let requests: Vec<Vec<u8>> = captured
                .iter()
                .map(|body| {
                    let mut request = format!(
                        "POST /v1/chat/completions HTTP/1.1\r\nhost: {fake_addr}\r\ncontent-type: application/json\r\naccept: */*\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    request.extend_from_slice(body);
                    request
                })
                .collect();
            let requests = Arc::new(requests);
            (0..chains)
                .map(|i| {
                    runtime.spawn(raw_floor_worker(
                        fake_addr,
                        requests.clone(),
                        start_of(i),
                        measure_to,
                        calls.clone(),
                    ))
                })
                .collect()
        }
    };
    std::thread::sleep(measure_from.saturating_duration_since(Instant::now()));
    let (calls_before, threads_before) = (calls.load(Ordering::Relaxed), threads_of("self"));
    std::thread::sleep(measure_to.saturating_duration_since(Instant::now()));
    let (calls_after, threads_after) = (calls.load(Ordering::Relaxed), threads_of("self"));
    for handle in handles {
        runtime.block_on(handle).expect("floor worker");
    }
    let floor = Floor {
        calls: calls_after - calls_before,
        cpu: threads_delta(&threads_before, &threads_after)
            .get("floor")
            .copied()
            .unwrap_or(0.0),
    };
    println!(
        "  {}: {chains} chains of calls replaying Examiner's request bodies, {} calls in {:.1} s, {:.2} s of CPU = {:.1} µs per call",
        kind.label(),
        floor.calls,
        sc.measure.as_secs_f64(),
        floor.cpu,
        floor.us_per_call()
    );
    floor
}

fn main() {
    // `cargo test --all-targets` runs bench targets too (without `--bench`): a multi-minute
    // load run does not belong in the test suite, so it only runs under `cargo bench` or when
    // scenarios are chosen explicitly.
    if !std::env::args().any(|a| a == "--bench")
        && std::env::var_os("EVAL_LOAD_SCENARIOS").is_none()
    {
        println!("evaluate_load: skipped (run it with `cargo bench --bench evaluate_load`)");
        return;
    }
    let fd_limit = raise_fd_limit();
    let opts = Options {
        questions: env_u64("EVAL_LOAD_QUESTIONS").unwrap_or(8).max(1) as usize,
        marks: marks_in_turn(),
        cache: env_u64("EVAL_LOAD_CACHE").unwrap_or(1) != 0,
        rust_log: std::env::var("EVAL_LOAD_RUST_LOG").ok(),
        perf_dir: std::env::var("EVAL_LOAD_PERF").ok(),
        floor: env_u64("EVAL_LOAD_FLOOR").unwrap_or(0) != 0,
        lean_http1: env_u64("EVAL_LOAD_LEAN_HTTP1").map(|v| v != 0),
        postgres: std::env::var("EVAL_LOAD_POSTGRES_URL").ok(),
        second_opinion: std::env::var("EVAL_LOAD_SECOND_OPINION")
            .ok()
            .and_then(|share| share.parse::<f64>().ok())
            .filter(|&share| share > 0.0)
            .map(|share| {
                let dir = std::env::var("EXAMINER_MODELS_DIR").unwrap_or_else(|_| "models".into());
                let dir = std::fs::canonicalize(&dir)
                    .unwrap_or_else(|_| dir.into())
                    .display()
                    .to_string();
                (dir, share.min(1.0))
            }),
    };
    let scenarios = scenarios();
    let need = scenarios
        .iter()
        .map(|s| s.concurrency * (opts.questions + 1) + 256)
        .max()
        .unwrap_or(0) as u64;
    if fd_limit < need {
        eprintln!(
            "warning: open-file limit {fd_limit} is below the ~{need} this run needs; raise it with `ulimit -n`"
        );
    }
    let fake_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-llm")
        .enable_all()
        .build()
        .expect("fake runtime");
    let loadgen = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
        .expect("loadgen runtime");
    let fake = Arc::new(FakeLlm::new());
    let fake_addr = fake_rt.block_on(start_fake(fake.clone()));
    println!(
        "evaluate_load: {} questions of {} marks per request, reply cache {}, embedded grader's second opinion {}, Examiner RUST_LOG {}, open-file limit {fd_limit}, {} cores",
        opts.questions,
        opts.marks.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        if opts.cache { "on (answers all distinct)" } else { "off" },
        opts.second_opinion
            .as_ref()
            .map_or("off".to_string(), |(dir, share)| format!("on for {share} of questions ({dir})")),
        opts.rust_log.as_deref().unwrap_or("unset (info)"),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let outcomes: Vec<(Outcome, Option<[Floor; 2]>)> = scenarios
        .iter()
        .map(|sc| {
            let outcome = run_scenario(sc, &fake, fake_addr, &loadgen, &opts);
            let floors = opts.floor.then(|| {
                [FloorClient::Reqwest, FloorClient::RawTcp]
                    .map(|kind| run_floor(sc, &fake, fake_addr, &opts, kind))
            });
            (outcome, floors)
        })
        .collect();

    println!("\n| scenario | concurrency | D | ideal | p50 | p99 | max | req/s | LLM calls | Examiner CPU s | µs per call | bench CPU s (loadgen / fake) | client floor µs/call (reqwest / raw TCP) | p99 ≤ 1.1× ideal | < 50 µs/call |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (o, floor) in &outcomes {
        let sc = &o.scenario;
        let loaded = sc.concurrency > 1;
        let latency_ok = o.p99.as_secs_f64() <= 1.1 * sc.ideal().as_secs_f64();
        println!(
            "| {} | {} | {} ms | {} | {} | {} | {} | {:.1} | {} | {:.2} | {:.1} | {:.2} ({:.2} / {:.2}) | {} | {} | {} |",
            sc.name,
            sc.concurrency,
            sc.delay.as_millis(),
            ms(sc.ideal()),
            ms(o.p50),
            ms(o.p99),
            ms(o.max),
            o.rps,
            o.calls,
            o.examiner_cpu,
            o.us_per_call(),
            o.bench_cpu,
            o.loadgen_cpu,
            o.fake_cpu,
            floor.as_ref().map_or("–".to_string(), |[reqwest, raw]| format!(
                "{:.1} / {:.1}",
                reqwest.us_per_call(),
                raw.us_per_call()
            )),
            match (loaded, latency_ok) {
                (false, true) => "yes (not a target)",
                (false, false) => "no (not a target)",
                (true, true) => "yes",
                (true, false) => "**no**",
            },
            if o.us_per_call() < 50.0 { "yes" } else { "**no**" },
        );
        if o.errors > 0 {
            println!(
                "|  | {} of {} requests failed |  |  |  |  |  |  |  |  |  |  |  |  |  |",
                o.errors, o.requests
            );
        }
    }
}
