//! Grading with LLMs: the [`Grader`] trait the rest of the service marks answers through, its
//! data types, and [`LlmGrader`], the three-stage process (evaluator → verifier → arbiter on
//! disagreement) over any OpenAI-compatible chat-completions backend (OpenAI, vLLM, Ollama,
//! llama.cpp's server, gateways).
//!
//! What this module promises: marks are never invented (a question that could not be graded has
//! `marks_awarded: None` and an `error` naming the stage that failed), every awarded mark lies in
//! `[0, total_marks]` on the `marks_step` grid, every stage attempted leaves a [`StageRecord`],
//! student text is treated as untrusted data (delimited, neutralised, screened for prompt
//! injection), and no server reply can make it panic.

mod cache;
mod client;
mod http1;
pub mod local;
mod process;
mod prompts;
mod replies;
mod settings;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use cache::{flush_reply_writes, MemoryReplyCache, NoCache, StoreReplyCache};
pub use client::{check_backend, BackendCheck};
pub use process::LlmGrader;
pub use prompts::{detect_injection, INJECTION_FLAG, PROMPT_VERSION};
// The vision OCR backend speaks the same protocol: it reuses the completion parsing, the
// retry timing and the message snippets rather than keeping copies.
pub(crate) use client::{
    backoff_delay, parse_completion, parse_retry_after, snippet, ApiKey, CircuitBreaker,
    Completion, OutputMode, Rejection,
};
pub(crate) use replies::extract_json;
pub use settings::{LlmBackendSettings, LlmSettings};

/// One question of one script to be marked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct GradeTask {
    /// As segmented from the script (e.g. "3b"); shown to the model, so it is sanitised there.
    pub question_number: String,
    /// The question itself, when the paper provides it (trusted).
    pub question_text: Option<String>,
    /// The student's answer (untrusted: it may contain text aimed at the grader).
    pub student_answer: String,
    /// The examiner's standard answer / marking scheme (trusted).
    pub standard_answer: String,
    /// Maximum marks for the question.
    pub total_marks: f64,
    /// Granularity of awarded marks, e.g. 0.5; `<= 0` means no rounding.
    pub marks_step: f64,
}

/// The three stages of the grading process.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[serde(rename_all = "snake_case")]
pub enum StageRole {
    Evaluator,
    Verifier,
    Arbiter,
}

impl StageRole {
    /// The snake_case name, as serialised and used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            StageRole::Evaluator => "evaluator",
            StageRole::Verifier => "verifier",
            StageRole::Arbiter => "arbiter",
        }
    }
}

impl std::fmt::Display for StageRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The audit record of one stage attempted for one question.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StageRecord {
    pub role: StageRole,
    pub model: String,
    pub prompt_version: String,
    /// The validated structured reply, as the model gave it (marks not yet clamped).
    pub reply: Option<serde_json::Value>,
    /// The reply's marks clamped to `[0, total]` and rounded to the step.
    pub marks: Option<f64>,
    pub latency_ms: u64,
    /// Summed over every HTTP request of the stage, when the server reports usage.
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// The reply came from the memo cache (no LLM call).
    pub cached: bool,
    /// HTTP requests sent for this stage: transport retries, structured-output fallbacks and
    /// the one re-ask after an invalid reply all count; 0 when cached.
    pub attempts: u32,
    pub error: Option<String>,
    /// The content address of the reply in the memo (`cache::cache_key`), so that erasing
    /// the student's data deletes it there too. Absent when nothing was memoised: the memo
    /// is off, the stage failed, the embedded grader (which memoises nothing), and stages
    /// stored before addresses were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memo_key: Option<String>,
}

/// The result of grading one question.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct GradeOutcome {
    /// `None` = could not be graded; never invented.
    pub marks_awarded: Option<f64>,
    /// Student-facing, from the stage whose marks stand (empty when none does).
    pub feedback: String,
    /// Examiner-facing, from the stage whose marks stand.
    pub reasoning: Option<String>,
    /// From the evaluator (the arbiter does not re-list key points).
    pub key_points_covered: Vec<String>,
    pub key_points_missed: Vec<String>,
    pub error: Option<String>,
    /// e.g. [`INJECTION_FLAG`].
    pub flags: Vec<String>,
    pub final_stage: Option<StageRole>,
    pub stages: Vec<StageRecord>,
}

impl GradeOutcome {
    /// An outcome that awards nothing and explains why (used when grading could not happen).
    pub fn failed(error: impl Into<String>) -> Self {
        GradeOutcome {
            error: Some(error.into()),
            ..GradeOutcome::blank()
        }
    }

    /// Nothing awarded and no error yet: the starting point of a grading run.
    pub(crate) fn blank() -> Self {
        GradeOutcome {
            marks_awarded: None,
            feedback: String::new(),
            reasoning: None,
            key_points_covered: Vec::new(),
            key_points_missed: Vec::new(),
            error: None,
            flags: Vec::new(),
            final_stage: None,
            stages: Vec::new(),
        }
    }
}

/// Anything that can mark one question.
#[async_trait]
pub trait Grader: Send + Sync {
    fn name(&self) -> &str;
    async fn grade(&self, task: &GradeTask) -> GradeOutcome;
    /// Whether this grader was calibrated on questions worth `total_marks`; beyond that its
    /// marks are an extrapolation, which as a second opinion decides nothing.
    fn calibrated_for(&self, _total_marks: f64) -> bool {
        true
    }
    /// [`Grader::grade`] for an estimate nobody waits for (a request stores it if it is in by
    /// the time the request is done): a grader whose work queues may let it wait behind work
    /// somebody waits for. By default the same as `grade`.
    async fn grade_in_background(&self, task: &GradeTask) -> GradeOutcome {
        self.grade(task).await
    }
    /// Writes the replies this grader queued for the store's memo; false if that did not
    /// finish within `limit`. Erasing a user's data runs it before deleting memo entries from
    /// the store, so none lands after, and [`Grader::forget_memo_in_memory`] after.
    async fn settle_memo(&self, _limit: std::time::Duration) -> bool {
        true
    }
    /// Drops the replies held in memory in front of the store's memo.
    fn forget_memo_in_memory(&self) {}
}

/// Content-addressed memo of validated stage replies (the store implements it with SQLite).
#[async_trait]
pub trait ReplyCache: Send + Sync {
    async fn get(&self, key: &str) -> Option<serde_json::Value>;
    async fn put(&self, key: &str, value: &serde_json::Value);
    /// Writes the replies queued for the store; false if that did not finish within `limit`.
    async fn settle(&self, _limit: std::time::Duration) -> bool {
        true
    }
    /// Drops the replies held in memory (for a cache with no store behind it, all of them).
    fn forget_in_memory(&self) {}
}

/// Errors constructing a grader (grading itself reports failures in [`GradeOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum GradeError {
    #[error("invalid LLM settings: {0}")]
    InvalidSettings(String),
    #[error("could not build the HTTP client: {0}")]
    HttpClient(String),
}

/// Clamps `marks` to `[0, total]` and rounds to the nearest multiple of `step`
/// (half away from zero), never rounding above `total`.
///
/// Non-finite `marks` are returned unchanged (NaN stays NaN): a non-finite mark is an invalid
/// reply, which callers must reject before this point rather than silently turning it into 0.
/// A non-positive or non-finite `step` means no rounding; a negative `total` is treated as 0.
pub fn clamp_and_round(marks: f64, total: f64, step: f64) -> f64 {
    if !marks.is_finite() {
        return marks;
    }
    let total = if total.is_finite() {
        total.max(0.0)
    } else {
        0.0
    };
    let clamped = marks.clamp(0.0, total);
    if !(step.is_finite() && step > 0.0) {
        return tidy(clamped);
    }
    let mut rounded = (clamped / step).round() * step;
    if rounded > total + 1e-9 {
        // total is not on the step grid (e.g. 7.25 in steps of 0.5): take the grid point below.
        rounded = (total / step + 1e-9).floor() * step;
    }
    tidy(rounded.clamp(0.0, total))
}

/// Removes binary floating-point noise (0.30000000000000004 → 0.3) so stored marks read cleanly.
fn tidy(x: f64) -> f64 {
    let t = (x * 1e6).round() / 1e6;
    if t == 0.0 {
        0.0 // no negative zero
    } else {
        t
    }
}

type GradeFuture<'a> = Pin<Box<dyn Future<Output = GradeOutcome> + Send + 'a>>;

/// Grades all tasks concurrently, at most `per_request_concurrency` at a time (so one huge
/// script cannot starve other requests; the per-backend semaphores bound the total), and
/// returns the outcomes in input order.
pub async fn grade_all(
    grader: &dyn Grader,
    tasks: &[GradeTask],
    per_request_concurrency: usize,
) -> Vec<GradeOutcome> {
    let mut results: Vec<Option<GradeOutcome>> = tasks.iter().map(|_| None).collect();
    grade_into(grader, tasks, per_request_concurrency, &mut results).await;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| GradeOutcome::failed("internal error: question not graded")))
        .collect()
}

/// [`grade_all`], writing each outcome into `results` (same length as `tasks`) as soon as
/// it is in, so a caller that stops waiting (drops this future) keeps the ones finished.
///
/// Runs inside the caller's task (a sliding window of futures polled together) so it can borrow
/// `grader` and `tasks` without `'static` bounds.
pub async fn grade_into(
    grader: &dyn Grader,
    tasks: &[GradeTask],
    per_request_concurrency: usize,
    results: &mut [Option<GradeOutcome>],
) {
    let limit = per_request_concurrency.max(1);
    let mut next = 0usize;
    let mut active: Vec<(usize, GradeFuture<'_>)> = Vec::with_capacity(limit.min(tasks.len()));
    std::future::poll_fn(|cx| loop {
        while active.len() < limit && next < tasks.len() {
            active.push((next, grader.grade(&tasks[next])));
            next += 1;
        }
        let mut progressed = false;
        let mut i = 0;
        while i < active.len() {
            if let Poll::Ready(outcome) = active[i].1.as_mut().poll(cx) {
                let (index, _) = active.swap_remove(i);
                results[index] = Some(outcome);
                progressed = true;
            } else {
                i += 1;
            }
        }
        if active.is_empty() && next >= tasks.len() {
            return Poll::Ready(());
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await
}
