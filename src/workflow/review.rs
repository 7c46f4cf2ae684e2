//! An examiner's review: marks set by hand on some questions of an evaluation — typically
//! those flagged `needs_review`, or ones no grader could mark — stored as a new version of
//! the student's evaluation, so the grader's version stays as it was.
//!
//! A review is made from one version and is refused when a newer one has been stored since
//! (another review, a retry, a new grading): the examiner saw marks that no longer stand.
//!
//! Students ask for a review of a question with a regrade request: a new version whose
//! question carries the flag `regrade_requested` and the student's comment, which puts it in
//! the review queue; the examiner's review settles it.

use chrono::Utc;
use serde_json::json;

use crate::app::AppState;
use crate::grade::clamp_and_round;
use crate::http::ApiError;
use crate::model::{flag, stage_role, EvaluationItem, EvaluationRecord, ItemStatus};
use crate::segment::QuestionNumber;

use super::evaluate::{marks_step_of, store_evaluation, summarise, Change, EvaluationResult};

/// The marks an examiner gives one question.
#[derive(Debug, Clone)]
pub struct ReviewedQuestion {
    pub question_number: QuestionNumber,
    pub marks_awarded: f64,
    /// Student-facing feedback; the grader's stays when none is given and it had marked
    /// the question.
    pub feedback: Option<String>,
    /// Examiner-facing: why the marks were changed.
    pub note: Option<String>,
}

/// A validated review request.
#[derive(Debug, Clone)]
pub struct Review {
    /// Who reviewed: the API key's id, or `None` when authentication is off.
    pub reviewer: Option<String>,
    pub questions: Vec<ReviewedQuestion>,
}

/// A student's request that an examiner look at the marks of one question again.
#[derive(Debug, Clone)]
pub struct RegradeRequest {
    /// The API key's id, or `None` when authentication is off.
    pub requested_by: Option<String>,
    pub question_number: QuestionNumber,
    /// Why the student thinks the marks are wrong.
    pub comment: String,
    /// Made by staff on the student's behalf: not bound by `grading.regrade_window_days`.
    pub on_behalf: bool,
}

/// Flags the question of the stored evaluation `previous` for an examiner's review with
/// the student's comment, as the student's newest version; its marks do not change.
pub async fn request_regrade(
    state: &AppState,
    mut previous: EvaluationRecord,
    request: RegradeRequest,
) -> Result<EvaluationResult, ApiError> {
    if !request.on_behalf {
        check_regrade_window(state, &previous).await?;
    }
    let mut items = std::mem::take(&mut previous.items);
    let number = &request.question_number;
    let position = position_of(&items, number)?;
    let item = &mut items[position];
    if item.flags.iter().any(|f| f == flag::REGRADE_REQUESTED) {
        return Err(ApiError::Conflict(format!(
            "a regrade of question {number} is already requested and waits for an examiner"
        )));
    }
    let record = json!({
        "role": stage_role::REGRADE_REQUEST,
        "requested_by": request.requested_by,
        "requested_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "marks": item.marks_awarded,
        "comment": request.comment,
    });
    push_stage(item, record)?;
    item.flags.push(flag::REGRADE_REQUESTED.to_string());
    let new = summarise(previous.next_version(items));
    store_evaluation(state, new, Change::RegradeRequest).await
}

/// Refuses a student's request once `grading.regrade_window_days` have passed since their
/// first evaluation of the paper: when marks were first there for them to see. Later
/// versions (retries, reviews, requests) do not extend it.
async fn check_regrade_window(
    state: &AppState,
    evaluation: &EvaluationRecord,
) -> Result<(), ApiError> {
    let days = state.settings.grading.regrade_window_days;
    if days == 0 {
        return Ok(());
    }
    let first = state
        .store
        .first_evaluated_at(&evaluation.user_id, &evaluation.question_paper_code)
        .await?
        .unwrap_or(evaluation.created_at);
    let closed_at = first + chrono::Duration::days(i64::from(days));
    if Utc::now() > closed_at {
        return Err(ApiError::Conflict(format!(
            "regrade requests on paper {} closed at {}, {days} days after the first marks \
             (grading.regrade_window_days); an examiner can still review the question",
            evaluation.question_paper_code,
            closed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )));
    }
    Ok(())
}

fn push_stage(item: &mut EvaluationItem, record: serde_json::Value) -> Result<(), ApiError> {
    match item.stages.to_value() {
        serde_json::Value::Array(mut stages) => {
            stages.push(record);
            item.stages = serde_json::Value::Array(stages).into();
            Ok(())
        }
        other => Err(ApiError::internal(format!(
            "question {}: stored stages are not a list: {other}",
            item.question_number
        ))),
    }
}

/// Feedback for a question the grader had not marked, when the examiner gives none.
const MARKED_BY_EXAMINER: &str = "Marked by an examiner.";

/// Applies the review to the stored evaluation `previous` and stores the result as its
/// student's newest version.
pub async fn review(
    state: &AppState,
    mut previous: EvaluationRecord,
    review: Review,
) -> Result<EvaluationResult, ApiError> {
    let marks_step = marks_step_of(state, &previous.question_paper_code).await?;
    let mut items = std::mem::take(&mut previous.items);
    let positions = positions_of(&items, &review.questions)?;
    let reviewed_at = Utc::now();
    let reviewed = review.questions.len() as u64;
    for (question, position) in review.questions.into_iter().zip(positions) {
        let item = &mut items[position];
        check_marks(&question, item.total_marks, marks_step)?;
        apply(item, question, review.reviewer.as_deref(), reviewed_at)?;
    }
    let new = summarise(previous.next_version(items));
    let result = store_evaluation(state, new, Change::Review).await?;
    metrics::counter!("examiner_reviewed_questions_total").increment(reviewed);
    Ok(result)
}

/// Where each reviewed question is among the evaluation's items; every question must be
/// there, once.
fn positions_of(
    items: &[EvaluationItem],
    questions: &[ReviewedQuestion],
) -> Result<Vec<usize>, ApiError> {
    if questions.is_empty() {
        return Err(ApiError::Validation(
            "questions is empty; name at least one question to mark".into(),
        ));
    }
    let mut positions = Vec::with_capacity(questions.len());
    for (index, question) in questions.iter().enumerate() {
        let number = &question.question_number;
        if questions[..index]
            .iter()
            .any(|earlier| &earlier.question_number == number)
        {
            return Err(ApiError::Validation(format!(
                "question {number} is given twice"
            )));
        }
        positions.push(position_of(items, number)?);
    }
    Ok(positions)
}

/// Where question `number` is among the evaluation's items.
fn position_of(items: &[EvaluationItem], number: &QuestionNumber) -> Result<usize, ApiError> {
    items
        .iter()
        .position(|item| &item.question_number == number)
        .ok_or_else(|| {
            let known: Vec<&str> = items.iter().map(|i| i.question_number.as_str()).collect();
            ApiError::Validation(format!(
                "question {number} is not in this evaluation; its questions are {}",
                known.join(", ")
            ))
        })
}

/// An examiner's marks are taken as given, so they must already be what the paper allows:
/// within `[0, total]` and on its marks step (or the full marks, which may be off the step).
fn check_marks(question: &ReviewedQuestion, total: f64, step: f64) -> Result<(), ApiError> {
    let marks = question.marks_awarded;
    let number = &question.question_number;
    if !marks.is_finite() || marks < 0.0 || marks > total + 1e-9 {
        return Err(ApiError::Validation(format!(
            "question {number}: marks_awarded {marks} is outside 0 to {total}"
        )));
    }
    // On the grid the graders' marks are rounded to; full marks count even when off it.
    let on_step = (clamp_and_round(marks, total, step) - marks).abs() < 1e-9;
    if !(on_step || (marks - total).abs() < 1e-9) {
        return Err(ApiError::Validation(format!(
            "question {number}: marks_awarded {marks} is not a multiple of the paper's marks step {step}"
        )));
    }
    Ok(())
}

fn apply(
    item: &mut EvaluationItem,
    question: ReviewedQuestion,
    reviewer: Option<&str>,
    reviewed_at: chrono::DateTime<Utc>,
) -> Result<(), ApiError> {
    // What asked for this review, so moderation can tell how often each reason was right.
    let settled: Vec<&String> = item
        .flags
        .iter()
        .filter(|raised| flag::SETTLED_BY_REVIEW.contains(&raised.as_str()))
        .collect();
    let record = json!({
        "role": stage_role::EXAMINER,
        "reviewer": reviewer,
        "reviewed_at": reviewed_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "marks": question.marks_awarded,
        "previous_marks": item.marks_awarded,
        "previous_stage": item.final_stage,
        "settled_flags": settled,
        "feedback": question.feedback,
        "note": question.note,
    });
    push_stage(item, record)?;
    item.llm_evaluation = match question.feedback {
        Some(feedback) => feedback,
        None if item.status == ItemStatus::Graded => std::mem::take(&mut item.llm_evaluation),
        None => MARKED_BY_EXAMINER.to_string(),
    };
    item.marks_awarded = Some(question.marks_awarded);
    item.reasoning = question.note;
    item.status = ItemStatus::Graded;
    item.error = None;
    item.final_stage = Some(stage_role::EXAMINER.to_string());
    item.flags
        .retain(|raised| !flag::SETTLED_BY_REVIEW.contains(&raised.as_str()));
    if !item.flags.iter().any(|raised| raised == flag::REVIEWED) {
        item.flags.push(flag::REVIEWED.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(
        number: &str,
        marks: Option<f64>,
        status: ItemStatus,
        flags: &[&str],
    ) -> EvaluationItem {
        EvaluationItem {
            question_number: QuestionNumber::parse(number).unwrap(),
            question_text: None,
            student_answer: "answer".into(),
            standard_answer: "standard".into(),
            total_marks: 5.0,
            marks_awarded: marks,
            llm_evaluation: "grader feedback".into(),
            reasoning: Some("grader reasoning".into()),
            status,
            error: (status == ItemStatus::Failed).then(|| "backend failed".to_string()),
            flags: flags.iter().map(|f| f.to_string()).collect(),
            final_stage: marks.map(|_| "evaluator".to_string()),
            stages: json!([{"role": "evaluator"}]).into(),
        }
    }

    fn question(number: &str, marks: f64) -> ReviewedQuestion {
        ReviewedQuestion {
            question_number: QuestionNumber::parse(number).unwrap(),
            marks_awarded: marks,
            feedback: None,
            note: None,
        }
    }

    fn refusal(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        match result {
            Err(ApiError::Validation(detail)) => detail,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn questions_must_be_in_the_evaluation_once() {
        let items = vec![
            item("1.a", Some(2.0), ItemStatus::Graded, &[]),
            item("2", Some(1.0), ItemStatus::Graded, &[]),
        ];
        assert_eq!(
            positions_of(&items, &[question("2", 1.0), question("1.a", 1.0)]).unwrap(),
            vec![1, 0]
        );
        let unknown = refusal(positions_of(&items, &[question("3", 1.0)]));
        assert!(unknown.contains("question 3 is not in this evaluation; its questions are 1.a, 2"));
        let twice = refusal(positions_of(
            &items,
            &[question("2", 1.0), question("2", 0.0)],
        ));
        assert!(twice.contains("question 2 is given twice"), "{twice}");
        assert!(refusal(positions_of(&items, &[])).contains("questions is empty"));
    }

    #[test]
    fn marks_must_be_within_the_question_and_on_the_papers_step() {
        for fine in [0.0, 2.5, 5.0] {
            check_marks(&question("1", fine), 5.0, 0.5).unwrap();
        }
        for out in [-0.5, 5.5, f64::NAN, f64::INFINITY] {
            let detail = refusal(check_marks(&question("1", out), 5.0, 0.5));
            assert!(detail.contains("is outside 0 to 5"), "{detail}");
        }
        let off = refusal(check_marks(&question("1", 2.25), 5.0, 0.5));
        assert!(
            off.contains("not a multiple of the paper's marks step 0.5"),
            "{off}"
        );
        // Full marks off the step grid are still full marks.
        check_marks(&question("1", 7.25), 7.25, 0.5).unwrap();
        check_marks(&question("1", 7.0), 7.25, 0.5).unwrap();
    }

    #[test]
    fn a_review_replaces_the_marks_settles_the_flags_and_keeps_the_grader_stages() {
        let mut flagged = item(
            "1",
            Some(4.0),
            ItemStatus::Graded,
            &[
                flag::NEEDS_REVIEW,
                flag::POSSIBLE_PROMPT_INJECTION,
                flag::BEYOND_CALIBRATION,
            ],
        );
        let mut given = question("1", 1.5);
        given.note = Some("copied from the textbook".into());
        apply(&mut flagged, given, Some("key-1"), Utc::now()).unwrap();
        assert_eq!(flagged.marks_awarded, Some(1.5));
        assert_eq!(flagged.llm_evaluation, "grader feedback");
        assert_eq!(
            flagged.reasoning.as_deref(),
            Some("copied from the textbook")
        );
        assert_eq!(flagged.final_stage.as_deref(), Some("examiner"));
        assert_eq!(
            flagged.flags,
            vec![flag::POSSIBLE_PROMPT_INJECTION, flag::REVIEWED]
        );
        let stages = flagged.stages.list();
        assert_eq!(stages.len(), 2);
        assert_eq!(stages[0]["role"], "evaluator");
        assert_eq!(stages[1]["role"], "examiner");
        assert_eq!(stages[1]["reviewer"], "key-1");
        assert_eq!(stages[1]["marks"], 1.5);
        assert_eq!(stages[1]["previous_marks"], 4.0);
        assert_eq!(stages[1]["previous_stage"], "evaluator");
        assert_eq!(
            stages[1]["settled_flags"],
            json!([flag::NEEDS_REVIEW, flag::BEYOND_CALIBRATION])
        );

        let mut failed = item("2", None, ItemStatus::Failed, &[flag::GRADER_ERROR]);
        apply(&mut failed, question("2", 3.0), None, Utc::now()).unwrap();
        assert_eq!(failed.status, ItemStatus::Graded);
        assert_eq!(failed.error, None);
        assert_eq!(failed.llm_evaluation, MARKED_BY_EXAMINER);
        assert_eq!(failed.flags, vec![flag::REVIEWED]);
        assert_eq!(
            failed.stages.list()[1]["previous_marks"],
            serde_json::Value::Null
        );
        assert_eq!(
            failed.stages.list()[1]["settled_flags"],
            json!([flag::GRADER_ERROR])
        );

        let mut again = failed.clone();
        let mut second = question("2", 2.0);
        second.feedback = Some("Half of the method is right.".into());
        apply(&mut again, second, None, Utc::now()).unwrap();
        assert_eq!(again.llm_evaluation, "Half of the method is right.");
        assert_eq!(
            again.flags,
            vec![flag::REVIEWED],
            "the flag is not repeated"
        );
        assert_eq!(again.stages.list().len(), 3);
        assert_eq!(
            again.stages.list()[2]["settled_flags"],
            json!([]),
            "the examiner's own initiative"
        );
    }
}
