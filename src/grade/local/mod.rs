//! The embedded offline grader: marks answers in-process on the CPU, with no LLM and no network.
//!
//! Owns [`LocalGrader`], an implementation of [`Grader`] that compares the student's answer with
//! the standard answer through sentence embeddings (all-MiniLM-L6-v2, via [`crate::embed`]) and
//! content-word overlap, and maps those features to a mark with a calibration fitted on human
//! marks (`calibration/local-grader-v2.json`, compiled in). Promises: marks are always within
//! `[0, total_marks]` on the `marks_step` grid; an empty answer gets 0 with feedback saying so;
//! feedback names the standard answer's key points that were covered and missed; every outcome
//! carries one Evaluator [`StageRecord`] with the features as `reply` and the calibration
//! version as `prompt_version`; the model runs on the [`EmbedPool`] workers, never on the async
//! executor; a question's standard answer is embedded once and then served from a bounded cache.

pub mod calibration;
pub mod features;
pub mod text;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{clamp_and_round, GradeOutcome, GradeTask, Grader, StageRecord, StageRole};
use crate::embed::{cosine, EmbedError, EmbedPool, Embedder, Priority};

pub use calibration::Calibration;
pub use features::{Features, KeyPointMatch};

use features::{compute, prepare_tokens, reference_words, KeyPoint, Reference, Student};
use text::{answer_words, content_bigrams, content_words, shorten, split_pieces, Abbreviations};

/// Recorded as the stage's model.
pub const MODEL_NAME: &str = "local:all-minilm-l6-v2";
/// Standard answers kept embedded; a school's exam has far fewer questions than this.
const REFERENCE_CACHE: usize = 512;
/// Key points are shortened to this many words in feedback.
const FEEDBACK_WORDS: usize = 12;

/// How the student's sentences are embedded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// One model run over the whole answer; each sentence's vector is the mean of its tokens
    /// (in context). About half the cost of `Separate`, same accuracy on the dev data.
    Spans,
    /// Each sentence embedded on its own, plus the whole answer.
    Separate,
}

/// The offline grader. Create once and share (it is `Send + Sync`).
pub struct LocalGrader {
    pool: Arc<EmbedPool>,
    calibration: Calibration,
    pooling: Pooling,
    name: String,
    cache: Mutex<RefCache>,
}

impl LocalGrader {
    /// A grader on an existing embedding pool, with the compiled-in calibration.
    pub fn new(pool: Arc<EmbedPool>) -> LocalGrader {
        LocalGrader::with_calibration(pool, Calibration::embedded())
    }

    /// A grader with a given calibration (e.g. loaded with [`Calibration::load`]).
    pub fn with_calibration(pool: Arc<EmbedPool>, calibration: Calibration) -> LocalGrader {
        LocalGrader {
            pool,
            calibration,
            pooling: Pooling::Spans,
            name: "local".to_string(),
            cache: Mutex::new(RefCache::default()),
        }
    }

    /// Convenience: load the model from `models_dir` and start `workers` single-threaded
    /// embedding workers (2 on a 2-core machine).
    pub fn load(models_dir: impl AsRef<Path>, workers: usize) -> Result<LocalGrader, EmbedError> {
        let embedder = Arc::new(Embedder::load(models_dir)?);
        let pool = Arc::new(EmbedPool::new(embedder, workers, 1, workers * 4)?);
        Ok(LocalGrader::new(pool))
    }

    /// Choose how student sentences are embedded (default [`Pooling::Spans`]).
    pub fn with_pooling(mut self, pooling: Pooling) -> LocalGrader {
        self.pooling = pooling;
        self
    }

    /// The calibration in use.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// How well the answer matches each key point of the standard answer, as the feedback
    /// sees it (for measuring the feedback's claims against human marks).
    pub async fn key_point_matches(
        &self,
        task: &GradeTask,
    ) -> Result<Vec<KeyPointMatch>, EmbedError> {
        Ok(self.measure(task, Priority::Normal).await?.1)
    }

    /// Measure the features of an answer (empty answers included; no calibration applied).
    pub async fn features(&self, task: &GradeTask) -> Result<Features, EmbedError> {
        Ok(self.measure(task, Priority::Normal).await?.0)
    }

    async fn measure(
        &self,
        task: &GradeTask,
        priority: Priority,
    ) -> Result<(Features, Vec<KeyPointMatch>), EmbedError> {
        let reference = self.reference(task, priority).await?;
        let student = self
            .student(&task.student_answer, &reference.question_words, priority)
            .await?;
        Ok(compute(&reference, &student))
    }

    async fn reference(
        &self,
        task: &GradeTask,
        priority: Priority,
    ) -> Result<Arc<Reference>, EmbedError> {
        let question = task
            .question_text
            .as_deref()
            .filter(|q| !q.trim().is_empty());
        let key = format!("{}\u{1f}{}", question.unwrap_or(""), task.standard_answer);
        if let Some(r) = self.cache.lock().expect("cache lock").get(&key) {
            return Ok(r);
        }
        let split = split_pieces(&task.standard_answer);
        let key_point_spans: Vec<(usize, usize)> = if split.is_empty() {
            vec![(0, task.standard_answer.len())]
        } else {
            split.iter().map(|p| (p.start, p.end)).collect()
        };
        let mut pieces: Vec<String> = split.into_iter().map(|p| p.text).collect();
        if pieces.is_empty() {
            pieces.push(task.standard_answer.trim().to_string());
        }
        // One batch: the whole standard answer (with its word pieces), each key point on its
        // own, and the question.
        let mut items: Vec<(String, Vec<(usize, usize)>)> =
            vec![(task.standard_answer.clone(), Vec::new())];
        items.extend(pieces.iter().map(|p| (p.clone(), Vec::new())));
        if let Some(q) = question {
            items.push((q.to_string(), Vec::new()));
        }
        let mut out = self
            .pool
            .embed_with_spans(priority, items)
            .await?
            .into_iter();
        let standard = out.next().expect("standard answer vector");
        let kp_vecs: Vec<Vec<f32>> = out.by_ref().take(pieces.len()).map(|e| e.whole).collect();
        let q = out.next().map(|e| e.whole);
        let (words, question_words) = reference_words(question, &task.standard_answer);
        let key_points = pieces
            .into_iter()
            .zip(kp_vecs)
            .map(|(text, embedding)| {
                let words = content_words(&text);
                let abbreviations = Abbreviations::of(&text);
                KeyPoint {
                    text,
                    embedding,
                    words,
                    abbreviations,
                }
            })
            .collect();
        let question_sim = q
            .as_ref()
            .map_or(0.0, |q| cosine(q, &standard.whole) as f64);
        let tokens = prepare_tokens(&task.standard_answer, standard.tokens, &question_words);
        let r = Arc::new(Reference {
            all_words: content_words(&task.standard_answer),
            bigrams: content_bigrams(&task.standard_answer),
            key_points,
            whole: standard.whole,
            question: q,
            words,
            question_words,
            tokens,
            question_sim,
            key_point_spans,
        });
        self.cache.lock().expect("cache lock").put(key, r.clone());
        Ok(r)
    }

    async fn student(
        &self,
        answer: &str,
        question_words: &HashSet<String>,
        priority: Priority,
    ) -> Result<Student, EmbedError> {
        let pieces = split_pieces(answer);
        let (words, bigrams, abbreviations) = answer_words(answer);
        match self.pooling {
            Pooling::Spans => {
                let spans: Vec<(usize, usize)> = pieces.iter().map(|p| (p.start, p.end)).collect();
                let mut r = self
                    .pool
                    .embed_with_spans(priority, vec![(answer.to_string(), spans)])
                    .await?;
                let r = r.pop().expect("one result");
                let mut with_vecs = Vec::with_capacity(pieces.len());
                let mut cut_off = Vec::new();
                for (p, v) in pieces.into_iter().zip(r.spans) {
                    match v {
                        Some(v) => with_vecs.push((p, v)),
                        None => cut_off.push(p),
                    }
                }
                // Sentences past the model's 256-token window get their own model run.
                if !cut_off.is_empty() {
                    let vecs = self
                        .pool
                        .embed(priority, cut_off.iter().map(|p| p.text.clone()).collect())
                        .await?;
                    with_vecs.extend(cut_off.into_iter().zip(vecs));
                }
                Ok(Student {
                    pieces: with_vecs,
                    whole: r.whole,
                    words,
                    tokens: prepare_tokens(answer, r.tokens, question_words),
                    bigrams,
                    abbreviations,
                })
            }
            Pooling::Separate => {
                let mut items = vec![(answer.to_string(), Vec::new())];
                items.extend(pieces.iter().map(|p| (p.text.clone(), Vec::new())));
                let mut out = self
                    .pool
                    .embed_with_spans(priority, items)
                    .await?
                    .into_iter();
                let whole = out.next().expect("whole vector");
                Ok(Student {
                    pieces: pieces.into_iter().zip(out.map(|e| e.whole)).collect(),
                    whole: whole.whole,
                    words,
                    tokens: prepare_tokens(answer, whole.tokens, question_words),
                    bigrams,
                    abbreviations,
                })
            }
        }
    }

    /// Grades `task` with its model runs queued at `priority`.
    async fn grade_at(&self, task: &GradeTask, priority: Priority) -> GradeOutcome {
        let started = Instant::now();
        let total = task.total_marks.max(0.0);
        if is_non_answer(&task.student_answer) {
            let marks = clamp_and_round(0.0, total, task.marks_step);
            let reply = serde_json::json!({"empty_answer": true});
            return GradeOutcome {
                marks_awarded: Some(marks),
                feedback: "No answer was given, so no marks could be awarded.".to_string(),
                reasoning: Some("The answer is empty.".to_string()),
                key_points_covered: Vec::new(),
                key_points_missed: Vec::new(),
                error: None,
                flags: vec![crate::model::flag::EMPTY_ANSWER.to_string()],
                final_stage: Some(StageRole::Evaluator),
                stages: vec![self.stage(Some(reply), Some(marks), started, None)],
            };
        }
        let result = async {
            let reference = self.reference(task, priority).await?;
            let student = self
                .student(&task.student_answer, &reference.question_words, priority)
                .await?;
            Ok::<_, EmbedError>((reference, student))
        }
        .await;
        let (reference, student) = match result {
            Ok(x) => x,
            Err(e) => {
                let msg = format!("local grader could not embed the answer: {e}");
                return GradeOutcome {
                    marks_awarded: None,
                    feedback: String::new(),
                    reasoning: None,
                    key_points_covered: Vec::new(),
                    key_points_missed: Vec::new(),
                    error: Some(msg.clone()),
                    flags: vec![crate::model::flag::GRADER_ERROR.to_string()],
                    final_stage: Some(StageRole::Evaluator),
                    stages: vec![self.stage(None, None, started, Some(msg))],
                };
            }
        };
        let (features, matches) = compute(&reference, &student);
        let profile = self
            .calibration
            .profile(total, reference.question.is_some());
        let fraction = profile.fraction(&features);
        let marks = clamp_and_round(fraction * total, total, task.marks_step);

        let covered: Vec<String> = matches
            .iter()
            .filter(|m| m.covered)
            .map(|m| shorten(&reference.key_points[m.index].text, FEEDBACK_WORDS))
            .collect();
        let missed: Vec<String> = matches
            .iter()
            .filter(|m| !m.covered)
            .map(|m| shorten(&reference.key_points[m.index].text, FEEDBACK_WORDS))
            .collect();
        let feedback = feedback_text(&covered, &missed, marks, total);
        let mut reasoning = reasoning_text(&features, &matches, fraction);
        if reference.question.is_none() {
            reasoning.push_str(
                " Graded without the question's text (the request sent none and no stored question \
                 applied): the marks come from the profile fitted that way, which agrees less \
                 with human markers; send question_text, or store the question with its text, \
                 for better estimates.",
            );
        }
        let extrapolated = profile.extrapolates_to(total);
        if let (true, Some(fitted)) = (extrapolated, profile.fitted_max_marks) {
            reasoning.push_str(&format!(
                " The calibration was fitted on questions worth at most {} marks; this one is \
                 worth {}, so the marks are an extrapolation: review them.",
                fmt_marks(fitted),
                fmt_marks(total)
            ));
        }
        let mut reply = serde_json::to_value(&features).unwrap_or_default();
        if let Some(o) = reply.as_object_mut() {
            o.insert("fraction".into(), serde_json::json!(fraction));
            o.insert("profile".into(), serde_json::json!(profile.name));
        }
        // Tells reviewers this mark came from the offline model, not an LLM.
        let mut flags = vec![crate::model::flag::OFFLINE_LOCAL_GRADER.to_string()];
        if profile
            .gate
            .as_ref()
            .is_some_and(|g| g.factor(&features) < 1.0)
        {
            flags.push(crate::model::flag::POSSIBLY_OFF_TOPIC.to_string());
        }
        if extrapolated {
            flags.push(crate::model::flag::BEYOND_CALIBRATION.to_string());
        }
        GradeOutcome {
            marks_awarded: Some(marks),
            feedback,
            reasoning: Some(reasoning),
            key_points_covered: covered,
            key_points_missed: missed,
            error: None,
            flags,
            final_stage: Some(StageRole::Evaluator),
            stages: vec![self.stage(Some(reply), Some(marks), started, None)],
        }
    }

    fn stage(
        &self,
        reply: Option<serde_json::Value>,
        marks: Option<f64>,
        started: Instant,
        error: Option<String>,
    ) -> StageRecord {
        StageRecord {
            role: StageRole::Evaluator,
            model: MODEL_NAME.to_string(),
            prompt_version: self.calibration.version.clone(),
            reply,
            marks,
            latency_ms: started.elapsed().as_millis() as u64,
            prompt_tokens: None,
            completion_tokens: None,
            cached: false,
            attempts: 1,
            error,
            memo_key: None,
        }
    }
}

/// True for an answer that says nothing: no letters or digits, or only a stock non-answer such
/// as "not answered", "I don't know", "n/a" (these get 0 like an empty answer; without this rule
/// a lenient calibration would give them a few marks for being short and on no topic at all).
pub fn is_non_answer(s: &str) -> bool {
    const NON_ANSWERS: &[&str] = &[
        "not answered",
        "no answer",
        "none",
        "n a",
        "na",
        "nothing",
        "idk",
        "i dont know",
        "i do not know",
        "dont know",
        "do not know",
        "no idea",
        "i have no idea",
        "pass",
        "skip",
        "keine ahnung",
        "weiß nicht",
        "weiss nicht",
        "ich weiß es nicht",
        "ich weiss es nicht",
        "keine antwort",
    ];
    let normal: String = s
        .to_lowercase()
        .chars()
        .filter(|c| !matches!(c, '\'' | '’'))
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let normal = normal.split_whitespace().collect::<Vec<_>>().join(" ");
    normal.is_empty() || NON_ANSWERS.contains(&normal.as_str())
}

#[async_trait::async_trait]
impl Grader for LocalGrader {
    fn name(&self) -> &str {
        &self.name
    }

    fn calibrated_for(&self, total_marks: f64) -> bool {
        let total = total_marks.max(0.0);
        // Both views of a mark range are fitted on the same answers, so either tells.
        !self.calibration.profile(total, true).extrapolates_to(total)
    }

    async fn grade(&self, task: &GradeTask) -> GradeOutcome {
        self.grade_at(task, Priority::Normal).await
    }

    async fn grade_in_background(&self, task: &GradeTask) -> GradeOutcome {
        self.grade_at(task, Priority::Background).await
    }
}

fn fmt_marks(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn feedback_text(covered: &[String], missed: &[String], marks: f64, total: f64) -> String {
    let mut out = format!("{} of {} marks. ", fmt_marks(marks), fmt_marks(total));
    if covered.is_empty() {
        // The marks come from the answer as a whole; matching points one by one is stricter
        // (GRADING.md, "Feedback"), so a well-marked answer can match none of them.
        out.push_str(if marks * 2.0 > total {
            "Your answer is close to the standard answer as a whole, but none of its points \
             could be matched one by one. "
        } else {
            "Your answer does not clearly match the expected points. "
        });
    } else {
        out.push_str("Your answer covers: ");
        out.push_str(&point_list(covered));
        out.push(' ');
    }
    if missed.is_empty() {
        out.push_str("All the expected points are addressed.");
    } else {
        out.push_str("Missing or unclear: ");
        out.push_str(&point_list(missed));
    }
    out
}

/// Key points as one sentence: "a; b; c." Each point is a sentence of the standard answer,
/// so its own closing punctuation is dropped rather than doubled, and a point shortened with
/// an ellipsis ends the list without a full stop after it.
fn point_list(points: &[String]) -> String {
    let trimmed: Vec<&str> = points
        .iter()
        .map(|p| p.trim_end().trim_end_matches(['.', ';', ',', ':']))
        .collect();
    let mut out = trimmed.join("; ");
    if !out.ends_with(['…', '?', '!']) {
        out.push('.');
    }
    out
}

fn reasoning_text(f: &Features, matches: &[KeyPointMatch], fraction: f64) -> String {
    format!(
        "Offline model: {} of {} key points matched (mean best sentence similarity {:.2}), \
         whole-answer similarity {:.2}, {:.0}% of the standard answer's content words used; \
         calibrated to {:.0}% of the marks.",
        matches.iter().filter(|m| m.covered).count(),
        matches.len(),
        f.align_recall,
        f.sim_whole,
        f.lex_recall * 100.0,
        fraction * 100.0
    )
}

/// A small least-recently-used map from standard answer to its embedded reference.
#[derive(Default)]
struct RefCache {
    map: HashMap<String, (Arc<Reference>, u64)>,
    tick: u64,
}

impl RefCache {
    fn get(&mut self, key: &str) -> Option<Arc<Reference>> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(key).map(|(r, t)| {
            *t = tick;
            r.clone()
        })
    }

    fn put(&mut self, key: String, r: Arc<Reference>) {
        self.tick += 1;
        if self.map.len() >= REFERENCE_CACHE && !self.map.contains_key(&key) {
            // O(n) eviction is fine at this size and keeps the code dependency-free.
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            {
                self.map.remove(&oldest);
            }
        }
        self.map.insert(key, (r, self.tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embed::default_models_dir;
    use crate::model::flag;
    use std::sync::OnceLock;

    fn grader() -> &'static LocalGrader {
        static G: OnceLock<LocalGrader> = OnceLock::new();
        G.get_or_init(|| {
            let dir = default_models_dir();
            let dir = if dir.is_relative() {
                Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)
            } else {
                dir
            };
            LocalGrader::load(&dir, 2).unwrap_or_else(|e| {
                panic!(
                    "the embedding model is needed for this test and was not found in {} ({e}). \
                     Run `scripts/fetch-model.sh models` or set EXAMINER_MODELS_DIR.",
                    dir.display()
                )
            })
        })
    }

    fn task(answer: &str) -> GradeTask {
        GradeTask {
            question_number: "1".into(),
            question_text: Some("What is the difference between a stack and a queue?".into()),
            student_answer: answer.into(),
            standard_answer: "A stack is last in, first out: the most recently added item is removed first. \
                              A queue is first in, first out: items are removed in the order they were added."
                .into(),
            total_marks: 5.0,
            marks_step: 0.5,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn better_answers_get_more_marks() {
        let g = grader();
        let answers = [
            "A stack removes the last item added first (LIFO), while a queue removes items in the order they arrived (FIFO).",
            "A stack is LIFO.",
            "Both are data structures that hold data.",
            "I do not know, maybe something about cooking pasta.",
        ];
        let mut marks = Vec::new();
        for a in answers {
            let o = g.grade(&task(a)).await;
            let m = o.marks_awarded.expect("marks");
            assert!((0.0..=5.0).contains(&m), "{m}");
            assert!(
                (m / 0.5 - (m / 0.5).round()).abs() < 1e-9,
                "on the step grid: {m}"
            );
            assert_eq!(o.final_stage, Some(StageRole::Evaluator));
            assert_eq!(o.stages.len(), 1);
            assert_eq!(o.stages[0].model, MODEL_NAME);
            assert!(o.stages[0]
                .reply
                .as_ref()
                .unwrap()
                .get("align_recall")
                .is_some());
            assert!(!o.feedback.is_empty());
            marks.push(m);
        }
        // The complete answer gets the most, the unrelated one the least. (The short correct half
        // answer and the vague one are not ordered reliably, and the lenient 0-5 profile does not
        // zero unrelated answers: see GRADING.md, known weaknesses.)
        assert!(
            marks[0] >= 4.0 && marks[0] > marks[1] && marks[0] > marks[2],
            "{marks:?}"
        );
        assert!(
            marks[3] <= 2.0 && marks[3] < marks[1] && marks[3] < marks[2],
            "{marks:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_question_without_its_text_is_marked_by_the_profile_fitted_that_way() {
        let answer = "A stack removes the newest item first; a queue removes the oldest first.";
        let profile_of = |o: &GradeOutcome| {
            o.stages[0].reply.as_ref().unwrap()["profile"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let with_text = grader().grade(&task(answer)).await;
        let mut bare = task(answer);
        bare.question_text = None;
        let without_text = grader().grade(&bare).await;
        assert_eq!(profile_of(&with_text), "long-with-question");
        assert_eq!(profile_of(&without_text), "long-without-question");
        let says_so = |o: &GradeOutcome| {
            o.reasoning
                .as_deref()
                .unwrap()
                .contains("Graded without the question's text")
        };
        assert!(!says_so(&with_text));
        assert!(says_so(&without_text));
        // A blank text is no text.
        bare.question_text = Some("  ".into());
        assert_eq!(
            profile_of(&grader().grade(&bare).await),
            "long-without-question"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn marks_for_a_question_worth_more_than_the_calibration_saw_are_flagged() {
        let answer = "A stack removes the newest item first; a queue removes the oldest first.";
        let within = grader().grade(&task(answer)).await;
        assert!(
            !within.flags.iter().any(|f| f == flag::BEYOND_CALIBRATION),
            "{within:?}"
        );
        let larger = grader()
            .grade(&GradeTask {
                total_marks: 16.0,
                ..task(answer)
            })
            .await;
        let marks = larger.marks_awarded.expect("still marked");
        assert!((0.0..=16.0).contains(&marks), "{marks}");
        assert_eq!(
            larger.flags,
            [flag::OFFLINE_LOCAL_GRADER, flag::BEYOND_CALIBRATION],
            "{larger:?}"
        );
        let reasoning = larger.reasoning.clone().unwrap_or_default();
        assert!(
            reasoning.contains("fitted on questions worth at most 5 marks; this one is worth 16"),
            "{reasoning}"
        );
        // Known before grading, so a request need not wait for such an estimate.
        assert!(grader().calibrated_for(5.0) && grader().calibrated_for(1.0));
        assert!(!grader().calibrated_for(5.5) && !grader().calibrated_for(16.0));
        // As a second opinion nobody waits for, it queues behind other work but is the same.
        let in_background = grader()
            .grade_in_background(&GradeTask {
                total_marks: 16.0,
                ..task(answer)
            })
            .await;
        assert_eq!(in_background.marks_awarded, Some(marks));
        assert_eq!(in_background.reasoning, larger.reasoning);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feedback_names_key_points() {
        let o = grader()
            .grade(&task(
                "A stack is last in first out, the newest item comes off first.",
            ))
            .await;
        assert!(
            o.key_points_covered.iter().any(|k| k.contains("stack")),
            "{o:?}"
        );
        assert!(
            o.key_points_missed.iter().any(|k| k.contains("queue")),
            "{o:?}"
        );
        assert!(o.feedback.contains("Missing or unclear"), "{}", o.feedback);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feedback_does_not_credit_a_point_the_answer_only_names() {
        // Expanding the acronym is on topic but says nothing of what OCR does.
        let task = GradeTask {
            question_number: "1.b".into(),
            question_text: None,
            student_answer: "OCR is Optical Character Recognition.".into(),
            standard_answer:
                "OCR is a technology that converts different types of documents into editable data."
                    .into(),
            total_marks: 10.0,
            marks_step: 0.5,
        };
        let o = grader().grade(&task).await;
        assert!(o.key_points_covered.is_empty(), "{o:?}");
        assert_eq!(o.key_points_missed.len(), 1, "{o:?}");
        assert!(
            !o.feedback.contains("All the expected points"),
            "{}",
            o.feedback
        );
        // Saying what the standard answer says covers it.
        let task = GradeTask {
            student_answer: "OCR is a technology that converts various kinds of documents, such as scans, into editable data.".into(),
            ..task
        };
        let o = grader().grade(&task).await;
        assert_eq!(o.key_points_covered.len(), 1, "{o:?}");
        assert!(o.key_points_missed.is_empty(), "{o:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn feedback_credits_an_acronym_the_answer_spells_out() {
        let task = GradeTask {
            question_number: "2".into(),
            question_text: None,
            student_answer: "A stack is last in first out: the last item pushed is popped first."
                .into(),
            standard_answer:
                "A stack is a LIFO structure: the last element pushed is the first popped.".into(),
            total_marks: 5.0,
            marks_step: 0.5,
        };
        let o = grader().grade(&task).await;
        assert_eq!(o.key_points_covered.len(), 2, "{o:?}");
        assert!(o.key_points_missed.is_empty(), "{o:?}");
    }

    #[test]
    fn feedback_punctuates_key_points_once() {
        let points = |list: &[&str]| list.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        let text = feedback_text(
            &points(&["A stack is LIFO.", "Push adds on top"]),
            &points(&["A queue is FIFO, the oldest item…"]),
            2.5,
            5.0,
        );
        assert_eq!(
            text,
            "2.5 of 5 marks. Your answer covers: A stack is LIFO; Push adds on top. \
             Missing or unclear: A queue is FIFO, the oldest item…"
        );
        // No point matched: whether the marks say the answer is close overall decides the
        // sentence, so a well-marked answer is not told it matches nothing.
        let missed = points(&["OCR converts documents into editable data."]);
        assert_eq!(
            feedback_text(&[], &missed, 9.0, 10.0),
            "9 of 10 marks. Your answer is close to the standard answer as a whole, but none of \
             its points could be matched one by one. Missing or unclear: OCR converts documents \
             into editable data."
        );
        assert_eq!(
            feedback_text(&[], &missed, 5.0, 10.0),
            "5 of 10 marks. Your answer does not clearly match the expected points. Missing or \
             unclear: OCR converts documents into editable data."
        );
        let text = feedback_text(&points(&["Is it LIFO?"]), &[], 5.0, 5.0);
        assert_eq!(
            text,
            "5 of 5 marks. Your answer covers: Is it LIFO? All the expected points are addressed."
        );
    }

    #[test]
    fn recognises_non_answers() {
        for a in [
            "",
            " \n",
            "...",
            "Not answered.",
            "I don't know",
            "IDK!",
            "n/a",
            "Keine Ahnung",
        ] {
            assert!(is_non_answer(a), "{a:?}");
        }
        for a in [
            "none of the above is true because",
            "a stack",
            "0",
            "Na+ ions",
        ] {
            assert!(!is_non_answer(a), "{a:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn empty_answer_gets_zero() {
        for a in ["", "   \n ", "...", "not answered"] {
            let o = grader().grade(&task(a)).await;
            assert_eq!(o.marks_awarded, Some(0.0));
            assert!(o.feedback.contains("No answer"));
            assert_eq!(o.stages.len(), 1);
        }
    }

    #[test]
    fn cache_is_bounded_lru() {
        let mut c = RefCache::default();
        let r = Arc::new(Reference {
            key_points: vec![],
            whole: vec![],
            question: None,
            words: Default::default(),
            question_words: Default::default(),
            tokens: vec![],
            question_sim: 0.0,
            key_point_spans: vec![],
            all_words: Default::default(),
            bigrams: Default::default(),
        });
        for i in 0..REFERENCE_CACHE {
            c.put(format!("k{i}"), r.clone());
        }
        assert!(c.get("k0").is_some()); // k0 is now the most recently used
        c.put("new".into(), r.clone());
        assert_eq!(c.map.len(), REFERENCE_CACHE);
        assert!(c.get("k0").is_some() && c.get("k1").is_none());
    }
}
