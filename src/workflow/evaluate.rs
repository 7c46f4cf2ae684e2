//! Workflow 2: gather the question-answer pairs to grade, grade them all at once through the
//! configured [`Grader`], total the marks, and store the evaluation.
//!
//! Pairs come either from the request (each with its standard answer and marks) or, when the
//! request has none, from the user's latest stored submission graded against the stored
//! paper. Questions that cannot be graded get null marks and an error — never invented
//! marks — and can be graded again later with [`retry_failed`]. Every evaluation is a new
//! version; older ones are kept.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::grade::{grade_all, grade_into, GradeOutcome, GradeTask, Grader, StageRecord};
use crate::http::ApiError;
use crate::model::{
    flag, EvaluationItem, EvaluationRecord, ItemStatus, NewEvaluation, Question, QuestionPaper,
    Stages,
};
use crate::segment::QuestionNumber;

/// Who is asking, as far as grading is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// May grade against any standard answer (examiners, admins, local development).
    Examiner,
    /// May only grade against the stored paper's answer key.
    Student { user_id: String },
}

/// One pair to grade, as given in a request.
#[derive(Debug, Clone)]
pub struct PairInput {
    pub question_number: QuestionNumber,
    /// The question as set; when left out, the stored paper's.
    pub question_text: Option<String>,
    pub student_answer: String,
    pub standard_answer: Option<String>,
    pub total_marks: Option<f64>,
}

/// A validated evaluation request.
#[derive(Debug, Clone)]
pub struct EvaluateInput {
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    /// `None`: grade the latest stored submission against the stored paper.
    pub qa_pairs: Option<Vec<PairInput>>,
}

/// The one place that decides whether a caller may supply its own answer key. When the
/// paper is stored its standard answers, marks and question texts are authoritative for
/// students (a question text changes what the embedded grader credits, so it is part of the key).
pub fn check_answer_key_authority(
    caller: &Caller,
    paper: Option<&QuestionPaper>,
    pairs: &[PairInput],
) -> Result<(), ApiError> {
    let Caller::Student { .. } = caller else {
        return Ok(());
    };
    let Some(paper) = paper else {
        if pairs.iter().any(|p| {
            p.standard_answer.is_some() || p.total_marks.is_some() || p.question_text.is_some()
        }) {
            return Err(ApiError::Conflict(
                "students may only be graded against a stored question paper; leave out standard_answer, total_marks and question_text".into(),
            ));
        }
        return Ok(());
    };
    for pair in pairs {
        let Some(question) = paper
            .questions
            .iter()
            .find(|q| q.question_number == pair.question_number)
        else {
            return Err(ApiError::Conflict(format!(
                "question {} is not on question paper {}",
                pair.question_number, paper.question_paper_code
            )));
        };
        let answer_differs = pair
            .standard_answer
            .as_deref()
            .is_some_and(|a| a.trim() != question.standard_answer.trim());
        let marks_differ = pair
            .total_marks
            .is_some_and(|m| (m - question.total_marks).abs() > 1e-9);
        if answer_differs || marks_differ {
            return Err(ApiError::Conflict(format!(
                "question {}: the standard answer and marks of stored paper {} are authoritative; the request's differ",
                pair.question_number, paper.question_paper_code
            )));
        }
        let text_differs = pair.question_text.as_deref().is_some_and(|text| {
            question.question_text.as_deref().map(str::trim) != Some(text.trim())
        });
        if text_differs {
            return Err(ApiError::Conflict(format!(
                "question {}: the question text of stored paper {} is authoritative; the request's differs{}",
                pair.question_number,
                paper.question_paper_code,
                if question.question_text.is_none() { " (the paper has none)" } else { "" }
            )));
        }
    }
    Ok(())
}

/// The stored question's text, for a pair graded against `standard_answer` (`None`: the
/// stored one). A pair that brings a standard answer of its own grades another question than
/// the one stored under its number (the spec's example against the demo paper, say), which
/// the stored text would misdescribe to both graders.
fn stored_question_text(stored: &Question, standard_answer: Option<&str>) -> Option<String> {
    let same_question =
        standard_answer.is_none_or(|answer| answer.trim() == stored.standard_answer.trim());
    same_question
        .then(|| stored.question_text.clone())
        .flatten()
}

/// What one evaluation request produced.
pub struct EvaluationResult {
    pub record: EvaluationRecord,
    pub message: String,
}

/// Runs the evaluation workflow and stores its result.
pub async fn evaluate(
    state: &AppState,
    caller: &Caller,
    input: EvaluateInput,
) -> Result<EvaluationResult, ApiError> {
    let store = &state.store;
    let started = std::time::Instant::now();
    let (exam, paper) = store
        .get_exam_and_paper(&input.exam_code, &input.question_paper_code)
        .await?;
    metrics::histogram!("examiner_store_seconds", "op" => "read_paper")
        .record(started.elapsed().as_secs_f64());
    if let Some(paper) = &paper {
        if paper.exam_code != input.exam_code {
            return Err(ApiError::Conflict(format!(
                "question paper {:?} belongs to exam {:?}, not {:?}",
                paper.question_paper_code, paper.exam_code, input.exam_code
            )));
        }
    }
    let marks_step = marks_step(state, paper.as_ref());

    // The items that need no grader (unanswered questions) and the tasks that do, each with
    // its position in the final list.
    let mut fixed: Vec<(usize, EvaluationItem)> = Vec::new();
    let mut tasks: Vec<(usize, GradeTask)> = Vec::new();
    // Positions of answers read with low OCR confidence, flagged for review after grading.
    let mut ocr_flagged: Vec<usize> = Vec::new();
    let mut submission_id = None;

    match &input.qa_pairs {
        Some(pairs) => {
            check_answer_key_authority(caller, paper.as_ref(), pairs)?;
            let mut seen = HashSet::new();
            for (position, pair) in pairs.iter().enumerate() {
                if !seen.insert(pair.question_number.clone()) {
                    return Err(ApiError::Validation(format!(
                        "question {} appears more than once in qa_pairs",
                        pair.question_number
                    )));
                }
                let stored = paper.as_ref().and_then(|p| {
                    p.questions
                        .iter()
                        .find(|q| q.question_number == pair.question_number)
                });
                let standard_answer = match (&pair.standard_answer, stored) {
                    (Some(answer), _) => answer.clone(),
                    (None, Some(q)) => q.standard_answer.clone(),
                    (None, None) => {
                        return Err(ApiError::Validation(format!(
                            "question {}: standard_answer is missing and question paper {:?} has no such question stored",
                            pair.question_number, input.question_paper_code
                        )))
                    }
                };
                let total_marks = match (pair.total_marks, stored) {
                    (Some(marks), _) => marks,
                    (None, Some(q)) => q.total_marks,
                    (None, None) => {
                        return Err(ApiError::Validation(format!(
                            "question {}: total_marks is missing and question paper {:?} has no such question stored",
                            pair.question_number, input.question_paper_code
                        )))
                    }
                };
                tasks.push((
                    position,
                    GradeTask {
                        question_number: pair.question_number.to_string(),
                        question_text: pair.question_text.clone().or_else(|| {
                            stored_question_text(stored?, pair.standard_answer.as_deref())
                        }),
                        student_answer: pair.student_answer.clone(),
                        standard_answer,
                        total_marks,
                        marks_step,
                    },
                ));
            }
        }
        None => {
            let paper = paper.as_ref().ok_or_else(|| {
                ApiError::NotFound(format!(
                    "question paper {:?} does not exist; send qa_pairs with standard answers, or create the paper first",
                    input.question_paper_code
                ))
            })?;
            let submission = store
                .latest_submission(&input.user_id, &input.question_paper_code)
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "user {:?} has no stored answers for question paper {:?}; upload them with POST /upload-exam-answers or send qa_pairs",
                        input.user_id, input.question_paper_code
                    ))
                })?;
            submission_id = Some(submission.submission_id.clone());
            let off_paper: Vec<&QuestionNumber> = submission
                .qa_pairs
                .iter()
                .map(|pair| &pair.question_number)
                .filter(|number| {
                    !paper
                        .questions
                        .iter()
                        .any(|q| q.question_number == **number)
                })
                .collect();
            for (position, question) in paper.questions.iter().enumerate() {
                let answer = submission
                    .qa_pairs
                    .iter()
                    .find(|p| p.question_number == question.question_number);
                if answer.is_some_and(|pair| pair.low_ocr_confidence) {
                    ocr_flagged.push(position);
                }
                match answer {
                    Some(pair) => tasks.push((
                        position,
                        GradeTask {
                            question_number: question.question_number.to_string(),
                            question_text: question.question_text.clone(),
                            student_answer: pair.answer.clone(),
                            standard_answer: question.standard_answer.clone(),
                            total_marks: question.total_marks,
                            marks_step,
                        },
                    )),
                    None => fixed.push((
                        position,
                        not_answered(question, &off_paper, &submission.submission_id),
                    )),
                }
            }
        }
    }

    let grade_tasks: Vec<GradeTask> = tasks.iter().map(|(_, t)| t.clone()).collect();
    let outcomes = grade(state, &grade_tasks).await;
    let mut items: Vec<(usize, EvaluationItem)> = fixed;
    for ((position, task), (outcome, second)) in tasks.into_iter().zip(outcomes) {
        let mut item = item_from_outcome(
            state.settings.grading.review_threshold_fraction,
            &task,
            outcome,
            second,
        )?;
        if ocr_flagged.contains(&position) {
            item.flags.push(LOW_OCR_CONFIDENCE_FLAG.to_string());
        }
        items.push((position, item));
    }
    items.sort_by_key(|(position, _)| *position);
    let items: Vec<EvaluationItem> = items.into_iter().map(|(_, item)| item).collect();

    let question_marks: f64 = items.iter().map(|i| i.total_marks).fold(0.0, |a, b| a + b);
    let total_exam_marks = exam
        .as_ref()
        .and_then(|e| e.total_exam_marks)
        .or_else(|| paper.as_ref().map(QuestionPaper::total_marks))
        .unwrap_or(question_marks);
    let new = summarise(NewEvaluation {
        user_id: input.user_id,
        course_code: input.course_code,
        exam_code: input.exam_code,
        question_paper_code: input.question_paper_code,
        submission_id,
        grader: state.grader.name().to_string(),
        total_exam_marks,
        final_score: 0.0,
        status: String::new(),
        items,
        replaces_version: None,
    });
    store_evaluation(state, new, Change::Grading).await
}

/// The item of a paper's question that the script has no answer numbered for: 0 marks,
/// saying so, and pointing at an answer numbered as its whole or its part (`off_paper`, the
/// script's numbers that are no question of the paper), which was not graded.
fn not_answered(
    question: &Question,
    off_paper: &[&QuestionNumber],
    submission_id: &str,
) -> EvaluationItem {
    let number = &question.question_number;
    let related: Vec<String> = off_paper
        .iter()
        .filter(|other| other.is_ancestor_of(number) || number.is_ancestor_of(other))
        .map(|other| other.to_string())
        .collect();
    let (feedback, flags) = if related.is_empty() {
        (
            "No answer to this question was found in the submitted script.".to_string(),
            Vec::new(),
        )
    } else {
        let (answers, which, they) = if related.len() == 1 {
            (
                "an answer",
                "is not a question of this paper and is not graded",
                "it answers",
            )
        } else {
            (
                "answers",
                "are not questions of this paper and are not graded",
                "they answer",
            )
        };
        (
            format!(
                "No answer numbered {number} was found in the submitted script. It has \
                 {answers} numbered {}, which {which}: an examiner should check whether \
                 {they} this question (GET /student-answers/{submission_id}).",
                related.join(", ")
            ),
            vec![flag::ANSWER_NUMBERED_DIFFERENTLY.to_string()],
        )
    };
    EvaluationItem {
        question_number: number.clone(),
        question_text: question.question_text.clone(),
        student_answer: String::new(),
        standard_answer: question.standard_answer.clone(),
        total_marks: question.total_marks,
        marks_awarded: Some(0.0),
        llm_evaluation: feedback,
        reasoning: None,
        status: ItemStatus::NotAnswered,
        error: None,
        flags,
        final_stage: None,
        stages: Stages::default(),
    }
}

/// Grades again the items of a stored evaluation that could not be graded, keeping the
/// others, and stores the result as a new version.
pub async fn retry_failed(
    state: &AppState,
    mut previous: EvaluationRecord,
) -> Result<EvaluationResult, ApiError> {
    let paper = state
        .store
        .get_question_paper(&previous.question_paper_code)
        .await?;
    let marks_step = marks_step(state, paper.as_ref());
    // Graded again as the first time: with the question's text it was graded with, or for
    // items stored before that was kept, the stored question's.
    let question_text = |item: &EvaluationItem| {
        item.question_text.clone().or_else(|| {
            let stored = paper
                .as_ref()?
                .questions
                .iter()
                .find(|q| q.question_number == item.question_number)?;
            stored_question_text(stored, Some(&item.standard_answer))
        })
    };
    let mut items = std::mem::take(&mut previous.items);
    let failed: Vec<(usize, GradeTask)> = items
        .iter()
        .enumerate()
        .filter(|(_, item)| item.status == ItemStatus::Failed)
        .map(|(position, item)| {
            (
                position,
                GradeTask {
                    question_number: item.question_number.to_string(),
                    question_text: question_text(item),
                    student_answer: item.student_answer.clone(),
                    standard_answer: item.standard_answer.clone(),
                    total_marks: item.total_marks,
                    marks_step,
                },
            )
        })
        .collect();
    let tasks: Vec<GradeTask> = failed.iter().map(|(_, t)| t.clone()).collect();
    let outcomes = grade(state, &tasks).await;
    for ((position, task), (outcome, second)) in failed.into_iter().zip(outcomes) {
        items[position] = item_from_outcome(
            state.settings.grading.review_threshold_fraction,
            &task,
            outcome,
            second,
        )?;
    }
    let mut new = previous.next_version(items);
    new.grader = state.grader.name().to_string();
    store_evaluation(state, summarise(new), Change::Retry).await
}

/// The marks step of the paper: its own when stored, else the default.
pub(super) async fn marks_step_of(
    state: &AppState,
    question_paper_code: &str,
) -> Result<f64, ApiError> {
    let stored = state.store.get_question_paper(question_paper_code).await?;
    Ok(marks_step(state, stored.as_ref()))
}

/// [`marks_step_of`] for a paper already read (`None`: not stored).
fn marks_step(state: &AppState, paper: Option<&QuestionPaper>) -> f64 {
    paper
        .and_then(|paper| paper.marks_step)
        .unwrap_or(state.settings.grading.default_marks_step)
}

/// The embedded grader's second opinion on one question.
#[derive(Debug)]
enum SecondOpinion {
    /// The question is not in the share that gets one, or there is no embedded grader.
    NotAsked,
    Given(GradeOutcome),
    /// Not in by the time the request stopped waiting for it.
    Missing,
    /// For a question worth more than the embedded grader was calibrated on, not in by the
    /// time the marks were: such an estimate decides nothing, so it is not waited for.
    BeyondCalibrationNotIn,
}

/// Grades the tasks with the configured grader and, at the same time, the share of them
/// chosen for the second opinion (when there is one) with it; results in task order.
async fn grade(state: &AppState, tasks: &[GradeTask]) -> Vec<(GradeOutcome, SecondOpinion)> {
    let share = state.settings.grading.second_opinion_fraction;
    let chosen: Vec<usize> = match &state.second_opinion {
        Some(_) => (0..tasks.len())
            .filter(|&i| gets_second_opinion(&tasks[i], share))
            .collect(),
        None => Vec::new(),
    };
    let started = std::time::Instant::now();
    let graded = grade_with_second_opinion(
        state.grader.as_ref(),
        state.second_opinion.as_deref(),
        tasks,
        &chosen,
        state.settings.grading.llm.per_request_concurrency,
        state.settings.grading.second_opinion_wait(),
    )
    .await;
    metrics::histogram!("examiner_grading_seconds").record(started.elapsed().as_secs_f64());
    graded
}

/// Puts each estimate found at its question's index in `opinions`, and `absent` where none
/// was in; returns how many were absent.
fn place(
    opinions: &mut [SecondOpinion],
    indices: &[usize],
    found: Vec<Option<GradeOutcome>>,
    absent: fn() -> SecondOpinion,
) -> u64 {
    let mut absent_count = 0;
    for (&index, outcome) in indices.iter().zip(found) {
        opinions[index] = outcome.map_or_else(
            || {
                absent_count += 1;
                absent()
            },
            SecondOpinion::Given,
        );
    }
    absent_count
}

/// A grader whose every question is graded with [`Grader::grade_in_background`].
struct InBackground<'a>(&'a dyn Grader);

#[async_trait::async_trait]
impl Grader for InBackground<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }

    async fn grade(&self, task: &GradeTask) -> GradeOutcome {
        self.0.grade_in_background(task).await
    }
}

/// Grades `tasks` with `primary` and, at the same time, those at the indices `chosen` with
/// `second`. Once the primary outcomes are in, waits at most `wait` for second opinions still
/// being computed, then gives up on them: the second opinion is advisory, and on a busy
/// machine its CPU queue would otherwise hold every request for seconds (BENCHMARKS.md, "The
/// embedded grader's second opinion"). Estimates for questions beyond `second`'s calibration
/// decide nothing, so they are kept when in by then but never waited for, and are graded in
/// the background, behind the estimates that are waited for. Dropping an
/// unfinished second opinion withdraws its queued embedding work, so a backlog does not
/// outlive the requests that made it.
async fn grade_with_second_opinion(
    primary: &dyn Grader,
    second: Option<&dyn Grader>,
    tasks: &[GradeTask],
    chosen: &[usize],
    concurrency: usize,
    wait: std::time::Duration,
) -> Vec<(GradeOutcome, SecondOpinion)> {
    let Some(second) = second else {
        let outcomes = grade_all(primary, tasks, concurrency).await;
        return outcomes
            .into_iter()
            .map(|outcome| (outcome, SecondOpinion::NotAsked))
            .collect();
    };
    let (decisive, advisory): (Vec<usize>, Vec<usize>) = chosen
        .iter()
        .partition(|&&i| second.calibrated_for(tasks[i].total_marks));
    let picked = |indices: &[usize]| -> Vec<GradeTask> {
        indices.iter().map(|&i| tasks[i].clone()).collect()
    };
    let (decisive_tasks, advisory_tasks) = (picked(&decisive), picked(&advisory));
    let mut decisive_found: Vec<Option<GradeOutcome>> = decisive.iter().map(|_| None).collect();
    let mut advisory_found: Vec<Option<GradeOutcome>> = advisory.iter().map(|_| None).collect();
    let outcomes = {
        let mut primary = std::pin::pin!(grade_all(primary, tasks, concurrency));
        let mut decisive_seconds = std::pin::pin!(grade_into(
            second,
            &decisive_tasks,
            concurrency,
            &mut decisive_found
        ));
        // Nobody waits for these: they must not delay the estimates that are waited for.
        let in_background = InBackground(second);
        let mut advisory_seconds = std::pin::pin!(grade_into(
            &in_background,
            &advisory_tasks,
            concurrency,
            &mut advisory_found
        ));
        let (mut decisive_done, mut advisory_done) = (false, false);
        let outcomes = loop {
            tokio::select! {
                outcomes = &mut primary => break outcomes,
                () = &mut decisive_seconds, if !decisive_done => decisive_done = true,
                () = &mut advisory_seconds, if !advisory_done => advisory_done = true,
            }
        };
        if !decisive_done {
            // Advisory estimates still progress meanwhile, and count if in by the end.
            let _ = tokio::time::timeout(wait, async {
                loop {
                    tokio::select! {
                        () = &mut decisive_seconds => break,
                        () = &mut advisory_seconds, if !advisory_done => advisory_done = true,
                    }
                }
            })
            .await;
        }
        outcomes
    };
    let mut opinions: Vec<SecondOpinion> = tasks.iter().map(|_| SecondOpinion::NotAsked).collect();
    let missing = place(&mut opinions, &decisive, decisive_found, || {
        SecondOpinion::Missing
    });
    let not_waited_for = place(&mut opinions, &advisory, advisory_found, || {
        SecondOpinion::BeyondCalibrationNotIn
    });
    if missing > 0 {
        metrics::counter!("examiner_second_opinions_missing_total").increment(missing);
    }
    if not_waited_for > 0 {
        metrics::counter!("examiner_second_opinions_not_waited_for_total")
            .increment(not_waited_for);
    }
    outcomes.into_iter().zip(opinions).collect()
}

/// Whether a question is in the share (0 to 1) that gets the embedded grader's second
/// opinion. Decided by a hash of what is graded, not at random, so grading the same answer
/// again makes the same choice and a re-evaluation does not gain or lose `needs_review` by
/// chance.
fn gets_second_opinion(task: &GradeTask, share: f64) -> bool {
    if share >= 1.0 {
        return true;
    }
    if share <= 0.0 {
        return false;
    }
    let mut hasher = Sha256::new();
    for part in [
        task.question_text.as_deref().unwrap_or(""),
        &task.standard_answer,
        &task.student_answer,
    ] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(task.total_marks.to_le_bytes());
    let digest = hasher.finalize();
    let draw = u64::from_le_bytes(
        digest[..8]
            .try_into()
            .expect("a SHA-256 digest has 32 bytes"),
    );
    // A uniform draw in [0, 1) with 53 bits, compared with the share.
    ((draw >> 11) as f64 / (1u64 << 53) as f64) < share
}

pub use crate::model::flag::{
    BEYOND_CALIBRATION as BEYOND_CALIBRATION_FLAG, LOW_OCR_CONFIDENCE as LOW_OCR_CONFIDENCE_FLAG,
    NEEDS_REVIEW as NEEDS_REVIEW_FLAG, SECOND_OPINION_MISSING as SECOND_OPINION_MISSING_FLAG,
};

fn item_from_outcome(
    review_threshold_fraction: f64,
    task: &GradeTask,
    mut outcome: GradeOutcome,
    second: SecondOpinion,
) -> Result<EvaluationItem, ApiError> {
    let question_number = QuestionNumber::parse(&task.question_number).ok_or_else(|| {
        ApiError::internal(format!(
            "grader returned bad number {}",
            task.question_number
        ))
    })?;
    match &second {
        SecondOpinion::Missing => outcome.flags.push(SECOND_OPINION_MISSING_FLAG.to_string()),
        // No estimate would have decided a review either way; the flag says why none was.
        SecondOpinion::BeyondCalibrationNotIn => {
            outcome.flags.push(BEYOND_CALIBRATION_FLAG.to_string())
        }
        SecondOpinion::NotAsked | SecondOpinion::Given(_) => {}
    }
    // The second opinion's stages are stored after the grader's, marked as what they are.
    let mut second_stages = Vec::new();
    if let SecondOpinion::Given(second) = second {
        if second.flags.iter().any(|f| f == BEYOND_CALIBRATION_FLAG) {
            // Its estimate for a question this size is no guide (GRADING.md, os_xie2024): a
            // difference from it would ask for reviews at random. Say why none was decided.
            outcome.flags.push(BEYOND_CALIBRATION_FLAG.to_string());
        } else if let (Some(estimate), Some(final_marks)) =
            (second.marks_awarded, outcome.marks_awarded)
        {
            let threshold = review_threshold_fraction * task.total_marks;
            if (estimate - final_marks).abs() > threshold {
                outcome.flags.push(NEEDS_REVIEW_FLAG.to_string());
            }
        }
        for record in &second.stages {
            let mut value = serde_json::to_value(record).map_err(ApiError::internal)?;
            value["role"] = serde_json::Value::String("second_opinion".into());
            second_stages.push(value);
        }
    }
    let stages =
        Stages::encode(&StageList(&outcome.stages, &second_stages)).map_err(ApiError::internal)?;
    let status = if outcome.marks_awarded.is_some() {
        ItemStatus::Graded
    } else {
        ItemStatus::Failed
    };
    let feedback = if outcome.feedback.is_empty() {
        match &outcome.error {
            Some(error) => format!("This answer could not be graded: {error}"),
            None => String::new(),
        }
    } else {
        outcome.feedback
    };
    Ok(EvaluationItem {
        question_number,
        question_text: task.question_text.clone(),
        student_answer: task.student_answer.clone(),
        standard_answer: task.standard_answer.clone(),
        total_marks: task.total_marks,
        marks_awarded: outcome.marks_awarded,
        llm_evaluation: feedback,
        reasoning: outcome.reasoning,
        status,
        error: outcome.error,
        flags: outcome.flags,
        final_stage: outcome.final_stage.map(|stage| {
            serde_json::to_value(stage)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default()
        }),
        stages,
    })
}

/// The grader's stage records, then others already as values: one JSON list.
struct StageList<'a>(&'a [StageRecord], &'a [serde_json::Value]);

impl serde::Serialize for StageList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut list = serializer.serialize_seq(Some(self.0.len() + self.1.len()))?;
        for record in self.0 {
            list.serialize_element(record)?;
        }
        for value in self.1 {
            list.serialize_element(value)?;
        }
        list.end()
    }
}

/// Fills in the final score and status from the items.
pub(super) fn summarise(mut evaluation: NewEvaluation) -> NewEvaluation {
    let graded = evaluation
        .items
        .iter()
        .filter(|i| i.status != ItemStatus::Failed)
        .count();
    let failed = evaluation.items.len() - graded;
    evaluation.final_score = evaluation
        .items
        .iter()
        .filter_map(|i| i.marks_awarded)
        // Not `sum()`: an empty float sum is -0.0, which would print as "-0.0".
        .fold(0.0, |a, b| a + b);
    evaluation.status = if failed == 0 {
        "success"
    } else if graded == 0 {
        "failure"
    } else {
        "partial"
    }
    .to_string();
    evaluation
}

/// What made a stored version: a grading, a retry of its failed questions, an examiner's
/// review, or a student's regrade request. Metrics and logs tell them apart.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change {
    Grading,
    Retry,
    Review,
    RegradeRequest,
}

impl Change {
    fn as_str(self) -> &'static str {
        match self {
            Change::Grading => "grading",
            Change::Retry => "retry",
            Change::Review => "review",
            Change::RegradeRequest => "regrade_request",
        }
    }
}

pub(super) async fn store_evaluation(
    state: &AppState,
    evaluation: NewEvaluation,
    change: Change,
) -> Result<EvaluationResult, ApiError> {
    let failed = evaluation
        .items
        .iter()
        .filter(|i| i.status == ItemStatus::Failed)
        .count();
    let nothing_answered = !evaluation.items.is_empty()
        && evaluation
            .items
            .iter()
            .all(|i| i.status == ItemStatus::NotAnswered);
    let message = match (evaluation.status.as_str(), &evaluation.submission_id) {
        // Most often the script has answers whose question numbers were not recognised.
        ("success", Some(submission_id)) if nothing_answered => format!(
            "The latest upload answers none of the paper's questions, so every question got 0. \
             If the script has answers, their question numbers were not recognised: its text is \
             in unassigned_text of GET /student-answers/{submission_id}."
        ),
        ("success", _) => "Evaluations completed and results returned.".to_string(),
        ("partial", _) => format!(
            "{failed} of {} questions could not be graded; their marks are null and the score counts only graded questions. Retry them with POST /evaluations/{{evaluation_id}}/retry.",
            evaluation.items.len()
        ),
        _ => "No question could be graded because the grading backend failed; nothing was marked. Retry with POST /evaluations/{evaluation_id}/retry.".to_string(),
    };
    let started = std::time::Instant::now();
    let record = state.store.insert_evaluation(evaluation).await?;
    metrics::histogram!("examiner_store_seconds", "op" => "insert_evaluation")
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("examiner_evaluations_total",
        "status" => record.status.clone(), "change" => change.as_str())
    .increment(1);
    // One line per evaluation at `info`; the stages and questions log at `debug`, as a busy
    // server grades thousands of questions a second.
    tracing::info!(
        evaluation_id = %record.evaluation_id,
        version = record.version,
        status = %record.status,
        questions = record.items.len(),
        failed,
        final_score = record.final_score,
        change = change.as_str(),
        "evaluation stored"
    );
    Ok(EvaluationResult { record, message })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Question;

    fn task(answer: &str) -> GradeTask {
        GradeTask {
            question_number: "1".into(),
            question_text: Some("What is a stack?".into()),
            student_answer: answer.into(),
            standard_answer: "A last-in, first-out collection.".into(),
            total_marks: 5.0,
            marks_step: 0.5,
        }
    }

    /// Awards `marks` after `delay`, where `delay` may depend on the question; calibrated on
    /// questions worth at most `calibrated_up_to`.
    struct Slow {
        marks: f64,
        delay: fn(&GradeTask) -> std::time::Duration,
        calibrated_up_to: f64,
    }

    #[async_trait::async_trait]
    impl Grader for Slow {
        fn name(&self) -> &str {
            "slow"
        }
        fn calibrated_for(&self, total_marks: f64) -> bool {
            total_marks <= self.calibrated_up_to
        }
        async fn grade(&self, task: &GradeTask) -> GradeOutcome {
            tokio::time::sleep((self.delay)(task)).await;
            GradeOutcome {
                marks_awarded: Some(self.marks),
                feedback: WAITED_FOR.to_string(),
                ..GradeOutcome::blank()
            }
        }
        async fn grade_in_background(&self, task: &GradeTask) -> GradeOutcome {
            GradeOutcome {
                feedback: IN_BACKGROUND.to_string(),
                ..self.grade(task).await
            }
        }
    }

    /// How [`Slow`] tells which way it was asked.
    const WAITED_FOR: &str = "graded for a caller who waits";
    const IN_BACKGROUND: &str = "graded in the background";

    fn numbered(n: usize) -> Vec<GradeTask> {
        (1..=n)
            .map(|q| GradeTask {
                question_number: q.to_string(),
                ..task(&format!("answer {q}"))
            })
            .collect()
    }

    fn given_marks(opinion: &SecondOpinion) -> Option<f64> {
        match opinion {
            SecondOpinion::Given(outcome) => outcome.marks_awarded,
            _ => None,
        }
    }

    fn given_feedback(opinion: &SecondOpinion) -> Option<&str> {
        match opinion {
            SecondOpinion::Given(outcome) => Some(&outcome.feedback),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn second_opinions_are_waited_for_only_so_long_after_the_marks_are_in() {
        let primary = Slow {
            marks: 3.0,
            delay: |_| std::time::Duration::from_millis(100),
            calibrated_up_to: f64::MAX,
        };
        let second = Slow {
            marks: 1.0,
            delay: |task| match task.question_number.as_str() {
                "1" => std::time::Duration::from_millis(50),
                "2" => std::time::Duration::from_millis(1_500),
                _ => std::time::Duration::from_millis(600),
            },
            calibrated_up_to: f64::MAX,
        };
        let tasks = numbered(4);
        let started = tokio::time::Instant::now();
        let graded = grade_with_second_opinion(
            &primary,
            Some(&second),
            &tasks,
            &[0, 1, 2],
            8,
            std::time::Duration::from_secs(1),
        )
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(600)
                && waited < std::time::Duration::from_millis(1_500),
            "waited for the 600 ms estimate, not the 1.5 s one: {waited:?}"
        );
        let marks: Vec<Option<f64>> = graded.iter().map(|(o, _)| o.marks_awarded).collect();
        assert_eq!(marks, vec![Some(3.0); 4], "every primary outcome is kept");
        assert_eq!(given_marks(&graded[0].1), Some(1.0));
        assert!(
            matches!(graded[1].1, SecondOpinion::Missing),
            "{:?}",
            graded[1].1
        );
        assert_eq!(given_marks(&graded[2].1), Some(1.0));
        assert!(matches!(graded[3].1, SecondOpinion::NotAsked), "not chosen");

        // Waiting 0 keeps only the estimates already in when the marks are.
        let graded = grade_with_second_opinion(
            &primary,
            Some(&second),
            &tasks,
            &[0, 1, 2],
            8,
            std::time::Duration::ZERO,
        )
        .await;
        assert_eq!(given_marks(&graded[0].1), Some(1.0));
        assert!(matches!(graded[1].1, SecondOpinion::Missing));
        assert!(matches!(graded[2].1, SecondOpinion::Missing));

        // Estimates beyond the calibration are kept when in (2 and 3: in during the wait for
        // 1's), but not waited for: 4's would take 1.5 s and is left out.
        let second = Slow {
            marks: 1.0,
            delay: |task| match task.question_number.as_str() {
                "1" => std::time::Duration::from_millis(600),
                "2" => std::time::Duration::from_millis(50),
                "3" => std::time::Duration::from_millis(300),
                _ => std::time::Duration::from_millis(1_500),
            },
            calibrated_up_to: 5.0,
        };
        let mut tasks = numbered(4);
        for beyond in &mut tasks[1..] {
            beyond.total_marks = 10.0;
        }
        let started = tokio::time::Instant::now();
        let graded = grade_with_second_opinion(
            &primary,
            Some(&second),
            &tasks,
            &[0, 1, 2, 3],
            8,
            std::time::Duration::from_secs(1),
        )
        .await;
        let waited = started.elapsed();
        assert!(
            waited >= std::time::Duration::from_millis(600)
                && waited < std::time::Duration::from_millis(1_000),
            "waited for 1's estimate only: {waited:?}"
        );
        assert_eq!(given_marks(&graded[0].1), Some(1.0));
        assert_eq!(given_marks(&graded[1].1), Some(1.0));
        assert_eq!(given_marks(&graded[2].1), Some(1.0));
        // Only the estimate waited for queues with the work others wait for.
        assert_eq!(given_feedback(&graded[0].1), Some(WAITED_FOR));
        assert_eq!(given_feedback(&graded[1].1), Some(IN_BACKGROUND));
        assert_eq!(given_feedback(&graded[2].1), Some(IN_BACKGROUND));
        assert!(
            matches!(graded[3].1, SecondOpinion::BeyondCalibrationNotIn),
            "{:?}",
            graded[3].1
        );
        // With only such questions, the request does not wait at all.
        let started = tokio::time::Instant::now();
        let graded = grade_with_second_opinion(
            &primary,
            Some(&second),
            &tasks[1..],
            &[0, 1, 2],
            8,
            std::time::Duration::from_secs(1),
        )
        .await;
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(100));
        assert_eq!(given_marks(&graded[0].1), Some(1.0), "in before the marks");
        assert!(matches!(graded[1].1, SecondOpinion::BeyondCalibrationNotIn));
        assert!(matches!(graded[2].1, SecondOpinion::BeyondCalibrationNotIn));

        // Without an embedded grader nothing is asked, whatever was chosen.
        let graded =
            grade_with_second_opinion(&primary, None, &tasks, &[0, 1], 8, Default::default()).await;
        assert!(graded
            .iter()
            .all(|(_, opinion)| matches!(opinion, SecondOpinion::NotAsked)));
    }

    #[test]
    fn a_missing_second_opinion_is_flagged_and_a_far_one_asks_for_review() {
        let outcome = |marks: f64| GradeOutcome {
            marks_awarded: Some(marks),
            feedback: "ok".into(),
            ..GradeOutcome::blank()
        };
        let flags = |second: SecondOpinion| {
            item_from_outcome(0.4, &task("answer"), outcome(5.0), second)
                .unwrap()
                .flags
        };
        assert_eq!(
            flags(SecondOpinion::Missing),
            vec![SECOND_OPINION_MISSING_FLAG]
        );
        assert_eq!(
            flags(SecondOpinion::Given(outcome(1.0))),
            vec![NEEDS_REVIEW_FLAG]
        );
        assert!(flags(SecondOpinion::Given(outcome(4.0))).is_empty());
        assert!(flags(SecondOpinion::NotAsked).is_empty());
        assert_eq!(
            flags(SecondOpinion::BeyondCalibrationNotIn),
            vec![BEYOND_CALIBRATION_FLAG],
            "not asked for a review, and not reported missing"
        );
        // An estimate the embedded grader extrapolated decides nothing, and says so.
        let extrapolated = GradeOutcome {
            flags: vec![BEYOND_CALIBRATION_FLAG.to_string()],
            ..outcome(1.0)
        };
        assert_eq!(
            flags(SecondOpinion::Given(extrapolated)),
            vec![BEYOND_CALIBRATION_FLAG]
        );
    }

    #[test]
    fn the_second_opinion_share_is_chosen_by_content() {
        let tasks: Vec<GradeTask> = (0..2000)
            .map(|i| task(&format!("Answer number {i}: items come off the top.")))
            .collect();
        let picked = |share: f64| {
            tasks
                .iter()
                .filter(|t| gets_second_opinion(t, share))
                .count()
        };
        assert_eq!(picked(1.0), tasks.len());
        assert_eq!(picked(0.0), 0);
        // About the share asked for (binomial: ±3 standard deviations is ±58 of 2000 at 0.25).
        let quarter = picked(0.25);
        assert!((442..=558).contains(&quarter), "{quarter} of 2000 at 0.25");
        // The same content always gets the same choice, and a larger share keeps every
        // question a smaller one chose.
        for t in &tasks {
            let small = gets_second_opinion(t, 0.25);
            assert_eq!(small, gets_second_opinion(&t.clone(), 0.25));
            assert!(!small || gets_second_opinion(t, 0.5));
        }
        // What is graded decides, not the question's label.
        for t in &tasks {
            let mut relabelled = t.clone();
            relabelled.question_number = "7b".into();
            assert_eq!(
                gets_second_opinion(t, 0.5),
                gets_second_opinion(&relabelled, 0.5)
            );
        }
    }

    fn paper() -> QuestionPaper {
        QuestionPaper {
            question_paper_code: "QP001".into(),
            exam_code: "E".into(),
            title: None,
            marks_step: None,
            questions: vec![Question {
                question_number: QuestionNumber::parse("1.a").unwrap(),
                question_text: None,
                standard_answer: "Assets = Liabilities + Capital".into(),
                total_marks: 5.0,
            }],
        }
    }

    fn pair(answer: Option<&str>, marks: Option<f64>) -> PairInput {
        PairInput {
            question_number: QuestionNumber::parse("1(a)").unwrap(),
            question_text: None,
            student_answer: "x".into(),
            standard_answer: answer.map(str::to_string),
            total_marks: marks,
        }
    }

    #[test]
    fn students_cannot_bring_their_own_answer_key() {
        let student = Caller::Student {
            user_id: "U1".into(),
        };
        let paper = paper();
        assert!(check_answer_key_authority(&student, Some(&paper), &[pair(None, None)]).is_ok());
        assert!(check_answer_key_authority(
            &student,
            Some(&paper),
            &[pair(Some("Assets = Liabilities + Capital"), Some(5.0))]
        )
        .is_ok());
        let err =
            check_answer_key_authority(&student, Some(&paper), &[pair(Some("anything"), None)])
                .unwrap_err();
        assert!(matches!(err, ApiError::Conflict(_)));
        let err = check_answer_key_authority(&student, Some(&paper), &[pair(None, Some(50.0))])
            .unwrap_err();
        assert!(matches!(err, ApiError::Conflict(_)));
        assert!(check_answer_key_authority(&student, None, &[pair(Some("a"), None)]).is_err());

        // The question's text is part of the key.
        let asking = |text: &str| PairInput {
            question_text: Some(text.into()),
            ..pair(None, None)
        };
        let err = check_answer_key_authority(&student, Some(&paper), &[asking("Define assets.")])
            .unwrap_err();
        assert!(
            matches!(&err, ApiError::Conflict(m) if m.contains("the paper has none")),
            "{err:?}"
        );
        let mut worded = paper.clone();
        worded.questions[0].question_text = Some("State the accounting equation.".into());
        assert!(check_answer_key_authority(
            &student,
            Some(&worded),
            &[asking(" State the accounting equation. ")]
        )
        .is_ok());
        assert!(
            check_answer_key_authority(&student, Some(&worded), &[asking("Define assets.")])
                .is_err()
        );
        assert!(check_answer_key_authority(&student, None, &[asking("Define assets.")]).is_err());
        assert!(check_answer_key_authority(
            &Caller::Examiner,
            Some(&worded),
            &[asking("Anything?")]
        )
        .is_ok());
        assert!(check_answer_key_authority(
            &Caller::Examiner,
            Some(&paper),
            &[pair(Some("anything"), Some(50.0))]
        )
        .is_ok());
    }

    #[test]
    fn a_question_not_answered_points_at_answers_numbered_as_its_whole_or_its_parts() {
        let number = |n: &str| QuestionNumber::parse(n).unwrap();
        let question = Question {
            question_number: number("2"),
            question_text: None,
            standard_answer: "Capital expenditure lasts.".into(),
            total_marks: 10.0,
        };
        let (part_a, part_b, other) = (number("2.a"), number("2.b"), number("3.a"));
        let item = not_answered(&question, &[&part_a, &part_b, &other], "S1");
        assert_eq!(
            item.llm_evaluation,
            "No answer numbered 2 was found in the submitted script. It has answers numbered \
             2.a, 2.b, which are not questions of this paper and are not graded: an examiner \
             should check whether they answer this question (GET /student-answers/S1)."
        );
        assert_eq!(item.flags, [flag::ANSWER_NUMBERED_DIFFERENTLY]);
        assert_eq!(
            (item.marks_awarded, item.status),
            (Some(0.0), ItemStatus::NotAnswered)
        );

        let unrelated = not_answered(&question, &[&other], "S1");
        assert_eq!(
            unrelated.llm_evaluation,
            "No answer to this question was found in the submitted script."
        );
        assert!(unrelated.flags.is_empty());
    }
}
