//! The three-stage grading process, [`LlmGrader`]: the evaluator marks, the verifier checks,
//! and the arbiter decides when the verifier disagrees, the two marks differ by more than the
//! tolerance, the verifier failed, or the answer was flagged as a possible prompt injection.
//!
//! Promises: the evaluator's marks stand only when the verifier confirmed them; a needed stage
//! that fails leaves `marks_awarded: None` with an error naming the stage (no invented marks,
//! not even 0); an empty answer is a real grade of 0 without any LLM call; every stage
//! attempted is recorded; validated replies are memoised per stage (never failures); all marks
//! are clamped to `[0, total]` and rounded to the step.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use tracing::Instrument;

use super::cache::cache_key;
use super::client::{
    build_http_client, CallStats, ChatBackend, ChatMessage, Completion, Conversation,
};
use super::prompts::{
    arbiter_messages, correction_message, detect_injection, evaluator_messages, verifier_messages,
    TaskText, VerifierView, INJECTION_FLAG, PROMPT_VERSION,
};
use super::replies::{extract_json, ArbiterReply, EvaluatorReply, StageReply, VerifierReply};
use super::settings::{LlmBackendSettings, LlmSettings};
use super::{
    clamp_and_round, GradeError, GradeOutcome, GradeTask, Grader, ReplyCache, StageRecord,
    StageRole,
};

/// An invalid reply is echoed back to the model in the re-ask up to this many characters.
const ECHO_CHARS: usize = 4000;

/// Grades with the three-stage LLM process. Build once and share (`Arc`): the HTTP pool, the
/// per-backend semaphores, circuit breakers and learned structured-output modes live here.
pub struct LlmGrader {
    settings: LlmSettings,
    evaluator: Arc<ChatBackend>,
    verifier: Arc<ChatBackend>,
    arbiter: Arc<ChatBackend>,
    cache: Option<Arc<dyn ReplyCache>>,
}

impl fmt::Debug for LlmGrader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmGrader")
            .field("evaluator", &self.evaluator)
            .field("verifier", &self.verifier)
            .field("arbiter", &self.arbiter)
            .field("tolerance_fraction", &self.settings.tolerance_fraction)
            .field("cache", &self.cache.is_some())
            .finish()
    }
}

impl LlmGrader {
    /// Validates the settings and builds the client. Roles with identical backend settings
    /// share one backend (one semaphore, one circuit breaker), as they share one server.
    /// With `settings.cache == false` the given cache is not used.
    pub fn new(settings: &LlmSettings, cache: Arc<dyn ReplyCache>) -> Result<Self, GradeError> {
        settings.validate()?;
        let http = build_http_client()?;
        let mut made: Vec<(LlmBackendSettings, Arc<ChatBackend>)> = Vec::new();
        let mut backend_for = |s: &LlmBackendSettings| {
            if let Some((_, backend)) = made.iter().find(|(known, _)| known == s) {
                return backend.clone();
            }
            let backend = Arc::new(ChatBackend::new(http.clone(), s, settings.lean_http1));
            made.push((s.clone(), backend.clone()));
            backend
        };
        Ok(LlmGrader {
            evaluator: backend_for(&settings.evaluator),
            verifier: backend_for(&settings.verifier),
            arbiter: backend_for(&settings.arbiter),
            cache: settings.cache.then_some(cache),
            settings: settings.clone(),
        })
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    async fn grade_question(&self, task: &GradeTask) -> GradeOutcome {
        let started = Instant::now();
        if !(task.total_marks.is_finite() && task.total_marks >= 0.0) {
            return GradeOutcome::failed(format!(
                "invalid task: total_marks must be a finite number >= 0, got {}",
                task.total_marks
            ));
        }
        if task.student_answer.trim().is_empty() {
            // A real grade: there is nothing to give credit for.
            let mut outcome = GradeOutcome::blank();
            outcome.marks_awarded = Some(0.0);
            outcome.feedback = "No answer was given, so no marks could be awarded.".into();
            outcome.reasoning = Some("The answer is empty; no model was consulted.".into());
            // Same flag as the local grader, so reports can single out unanswered questions.
            outcome.flags.push(crate::model::flag::EMPTY_ANSWER.into());
            return outcome;
        }
        let step = task.marks_step;
        let clamp = |m: f64| clamp_and_round(m, task.total_marks, step);

        let hits = detect_injection(&task.student_answer);
        let flagged = !hits.is_empty();
        let text = TaskText::new(task);
        let mut outcome = GradeOutcome::blank();
        if flagged {
            tracing::warn!(rules = ?hits, "student answer flagged as possible prompt injection");
            outcome.flags.push(INJECTION_FLAG.to_string());
        }

        let (record, eval) = self
            .run_stage::<EvaluatorReply>(
                StageRole::Evaluator,
                &self.evaluator,
                evaluator_messages(&text, flagged),
                task,
            )
            .await;
        let eval_error = record.error.clone();
        outcome.stages.push(record);
        let Some(eval) = eval else {
            outcome.error = Some(format!(
                "evaluator stage failed: {}",
                eval_error.unwrap_or_else(|| "unknown error".into())
            ));
            return finish(outcome, started);
        };
        let eval_marks = clamp(eval.marks);

        let (record, verdict) = self
            .run_stage::<VerifierReply>(
                StageRole::Verifier,
                &self.verifier,
                verifier_messages(&text, &eval, eval_marks, flagged),
                task,
            )
            .await;
        outcome.stages.push(record);

        // Every reason arbitration is needed; the evaluator stands only when there is none.
        let tolerance = self.settings.tolerance_fraction * task.total_marks;
        let mut why: Vec<String> = Vec::new();
        let verifier_view = match &verdict {
            None => {
                why.push("the second examiner could not produce a result".into());
                VerifierView::Failed
            }
            Some(v) => {
                let marks = clamp(v.marks);
                if !v.agrees {
                    why.push("the second examiner disagreed with the first".into());
                }
                if (marks - eval_marks).abs() > tolerance + 1e-9 {
                    why.push(format!(
                        "the two examiners' marks ({eval_marks} and {marks}) differ by more than {}",
                        clamp_and_round(tolerance, f64::MAX, 0.0)
                    ));
                }
                VerifierView::Replied { reply: v, marks }
            }
        };
        if flagged {
            why.push("automated screening flagged the student's answer as possibly addressing the grader".into());
        }

        if why.is_empty() {
            outcome.marks_awarded = Some(eval_marks);
            outcome.feedback = eval.feedback;
            outcome.reasoning = Some(eval.reasoning);
            outcome.key_points_covered = eval.key_points_covered;
            outcome.key_points_missed = eval.key_points_missed;
            outcome.final_stage = Some(StageRole::Evaluator);
            return finish(outcome, started);
        }

        let why = why.join("; and ");
        let (record, decision) = self
            .run_stage::<ArbiterReply>(
                StageRole::Arbiter,
                &self.arbiter,
                arbiter_messages(&text, &eval, eval_marks, verifier_view, &why, flagged),
                task,
            )
            .await;
        let arbiter_error = record.error.clone();
        outcome.stages.push(record);
        match decision {
            Some(decision) => {
                outcome.marks_awarded = Some(clamp(decision.marks));
                outcome.feedback = decision.feedback;
                outcome.reasoning = Some(decision.reasoning);
                outcome.key_points_covered = eval.key_points_covered;
                outcome.key_points_missed = eval.key_points_missed;
                outcome.final_stage = Some(StageRole::Arbiter);
            }
            None => {
                outcome.error = Some(format!(
                    "arbiter stage failed (it was needed because {why}): {}",
                    arbiter_error.unwrap_or_else(|| "unknown error".into())
                ));
            }
        }
        finish(outcome, started)
    }

    /// Runs one stage: memo lookup, the call, validation with one re-ask, memo store.
    async fn run_stage<T: StageReply>(
        &self,
        role: StageRole,
        backend: &ChatBackend,
        messages: Vec<ChatMessage>,
        task: &GradeTask,
    ) -> (StageRecord, Option<T>) {
        let span = tracing::info_span!("llm_stage", role = role.as_str(), model = backend.model());
        async move {
            let started = Instant::now();
            let mut record = StageRecord {
                role,
                model: backend.model().to_string(),
                prompt_version: PROMPT_VERSION.to_string(),
                reply: None,
                marks: None,
                latency_ms: 0,
                prompt_tokens: None,
                completion_tokens: None,
                cached: false,
                attempts: 0,
                error: None,
                memo_key: None,
            };
            let clamp = |m: f64| clamp_and_round(m, task.total_marks, task.marks_step);

            let mut conversation = Conversation::new(messages);
            let key = self
                .cache
                .as_ref()
                .map(|_| cache_key(role, backend.model(), &conversation));
            if let (Some(cache), Some(key)) = (&self.cache, &key) {
                if let Some(value) = cache.get(key).await {
                    match T::validate(&value) {
                        Ok(reply) => {
                            record.cached = true;
                            record.memo_key = Some(key.clone());
                            record.marks = Some(clamp(reply.marks()));
                            record.reply = Some(reply.to_value());
                            record.latency_ms = started.elapsed().as_millis() as u64;
                            count(role, "cached");
                            tracing::debug!(marks = ?record.marks, "stage served from cache");
                            return (record, Some(reply));
                        }
                        // A stale entry (e.g. written by an older build): ask the model again.
                        Err(e) => tracing::warn!(error = %e, "ignoring invalid cached reply"),
                    }
                }
            }

            let schema = T::schema();
            let mut stats = CallStats::default();
            let mut result: Result<T, (String, &'static str)> =
                Err(("no request was made".into(), "error"));
            for reask in [false, true] {
                let completion = match backend
                    .complete(&conversation, T::SCHEMA_NAME, schema, &mut stats)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        let label = if e.is_circuit_open() { "circuit_open" } else { "error" };
                        result = Err((e.to_string(), label));
                        break;
                    }
                };
                match extract_json(&completion.content).and_then(|v| T::validate(&v)) {
                    Ok(reply) => {
                        result = Ok(reply);
                        break;
                    }
                    Err(problem) => {
                        let problem = explain(problem, &completion);
                        if reask {
                            result = Err((format!("invalid reply after one re-ask: {problem}"), "invalid"));
                            break;
                        }
                        tracing::info!(error = %problem, "invalid reply; asking once more");
                        conversation.push(ChatMessage::assistant(echo(&completion.content)));
                        conversation.push(ChatMessage::user(correction_message(&problem)));
                    }
                }
            }

            let elapsed = started.elapsed();
            record.latency_ms = elapsed.as_millis() as u64;
            record.attempts = stats.attempts;
            record.prompt_tokens = stats.prompt_tokens;
            record.completion_tokens = stats.completion_tokens;
            metrics::histogram!("examiner_llm_seconds", "role" => role.as_str())
                .record(elapsed.as_secs_f64());
            match result {
                Ok(reply) => {
                    let value = reply.to_value();
                    if let (Some(cache), Some(key)) = (&self.cache, key) {
                        cache.put(&key, &value).await;
                        record.memo_key = Some(key);
                    }
                    record.marks = Some(clamp(reply.marks()));
                    record.reply = Some(value);
                    count(role, "ok");
                    tracing::debug!(marks = ?record.marks, attempts = record.attempts, latency_ms = record.latency_ms, "stage done");
                    (record, Some(reply))
                }
                Err((error, label)) => {
                    count(role, label);
                    tracing::warn!(%error, attempts = record.attempts, latency_ms = record.latency_ms, "stage failed");
                    record.error = Some(error);
                    (record, None)
                }
            }
        }
        .instrument(span)
        .await
    }
}

#[async_trait]
impl Grader for LlmGrader {
    fn name(&self) -> &str {
        "llm"
    }

    async fn settle_memo(&self, limit: std::time::Duration) -> bool {
        match &self.cache {
            Some(cache) => cache.settle(limit).await,
            None => true,
        }
    }

    fn forget_memo_in_memory(&self) {
        if let Some(cache) = &self.cache {
            cache.forget_in_memory();
        }
    }

    async fn grade(&self, task: &GradeTask) -> GradeOutcome {
        let span = tracing::info_span!("grade_question", question = %task.question_number);
        self.grade_question(task).instrument(span).await
    }
}

fn count(role: StageRole, outcome: &'static str) {
    metrics::counter!("examiner_llm_calls_total", "role" => role.as_str(), "outcome" => outcome)
        .increment(1);
}

fn finish(outcome: GradeOutcome, started: Instant) -> GradeOutcome {
    tracing::debug!(
        marks = ?outcome.marks_awarded,
        final_stage = ?outcome.final_stage,
        flags = ?outcome.flags,
        error = outcome.error.as_deref().unwrap_or(""),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "question graded"
    );
    outcome
}

/// Adds what the server told us about why a reply may be unusable.
fn explain(problem: String, completion: &Completion) -> String {
    if let Some(refusal) = completion
        .refusal
        .as_deref()
        .filter(|r| !r.trim().is_empty())
    {
        return format!("{problem} (the model refused: {})", echo_short(refusal));
    }
    if completion.finish_reason.as_deref() == Some("length") {
        return format!("{problem} (the reply was cut off at the token limit)");
    }
    problem
}

fn echo(content: &str) -> String {
    if content.trim().is_empty() {
        return "(empty reply)".into();
    }
    content.chars().take(ECHO_CHARS).collect()
}

fn echo_short(text: &str) -> String {
    text.chars().take(200).collect()
}
