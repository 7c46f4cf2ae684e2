//! Moderation of a question paper: how the marks of its graded scripts stand — what is still
//! waiting for an examiner, and how far the graders' marks moved where examiners marked by
//! hand. It is the production counterpart of `quality::eval`: the same comparison with
//! human markers, on this installation's own scripts.
//!
//! Examiners mostly review questions the grader flagged, so the agreement here describes
//! the doubtful questions, not all of them: it is a floor, not an estimate of the rest.

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::{flag, ModerationItem};
use crate::quality::metrics;
use crate::segment::QuestionNumber;
use crate::store::{Store, StoreError};

/// A paper's moderation report, over each student's newest evaluation of it.
#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct ModerationReport {
    pub question_paper_code: String,
    /// Students with an evaluation of the paper.
    pub students: usize,
    /// Questions in their newest evaluations.
    pub questions: usize,
    /// Questions with no marks: no grader could mark them and no examiner has yet.
    pub unmarked: usize,
    /// Questions no examiner has marked yet, by the review flags they carry
    /// (`needs_review`, `second_opinion_missing`, `grader_error`,
    /// `possible_prompt_injection`, ...): what is left to look at.
    pub open_flags: BTreeMap<String, usize>,
    /// Graders' against examiners' marks on every question examiners marked.
    pub agreement: Agreement,
    /// The same by what asked for the review: each flag the review settled
    /// (`needs_review`, `regrade_requested`, `grader_error`, ...), or `examiner_choice`
    /// when none did. Shows how often each reason for review was right.
    pub by_reason: BTreeMap<String, Agreement>,
    /// The same per question, in question-number order.
    pub by_question: Vec<QuestionModeration>,
}

/// The reason of a review no flag asked for.
pub const EXAMINER_CHOICE: &str = "examiner_choice";

#[derive(Debug, Serialize, ToSchema, PartialEq)]
pub struct QuestionModeration {
    #[schema(value_type = String, example = "1.a")]
    pub question_number: QuestionNumber,
    /// Null when students were graded on it out of different marks (ad hoc answer keys).
    pub total_marks: Option<f64>,
    /// Students whose newest evaluation has the question.
    pub students: usize,
    /// Mean marks as a share of the question's marks (0 to 1), over the marked ones.
    pub mean_share: Option<f64>,
    pub agreement: Agreement,
}

/// How examiners' marks compare with the graders' on the questions they marked.
#[derive(Debug, Default, Serialize, ToSchema, PartialEq)]
pub struct Agreement {
    /// Questions an examiner marked.
    pub reviewed: usize,
    /// Of those, the ones the grader had marked too (the rest it had failed on): the
    /// figures below are over these.
    pub compared: usize,
    /// The examiner gave more marks than the grader.
    pub raised: usize,
    /// The examiner gave fewer.
    pub lowered: usize,
    pub unchanged: usize,
    /// Mean of examiner minus grader marks, as a share of the question's marks (−1 to 1):
    /// below 0 when graders were too generous.
    pub mean_change_share: Option<f64>,
    /// Mean absolute difference as a share of the question's marks.
    pub mean_abs_change_share: Option<f64>,
    /// Pearson r between graders' and examiners' marks (as shares); null below two
    /// comparisons or when either side gave all the same.
    pub pearson: Option<f64>,
}

/// The moderation report of `question_paper_code` (empty for a stored paper nobody has been
/// graded on yet); `None` when neither the paper nor any evaluation of it is stored.
pub async fn moderation_report(
    store: &dyn Store,
    question_paper_code: &str,
) -> Result<Option<ModerationReport>, StoreError> {
    let items = store.moderation_items(question_paper_code).await?;
    if items.is_empty()
        && store
            .get_question_paper(question_paper_code)
            .await?
            .is_none()
    {
        return Ok(None);
    }
    Ok(Some(report(question_paper_code, &items)))
}

fn report(question_paper_code: &str, items: &[ModerationItem]) -> ModerationReport {
    let mut students: Vec<&str> = items.iter().map(|i| i.user_id.as_str()).collect();
    students.sort_unstable();
    students.dedup();
    let mut open_flags = BTreeMap::new();
    for item in items.iter().filter(|i| !i.reviewed) {
        for raised in &item.flags {
            // Facts about how an answer was graded are not open questions.
            if raised != flag::OFFLINE_LOCAL_GRADER {
                *open_flags.entry(raised.clone()).or_insert(0) += 1;
            }
        }
    }
    let mut per_question: BTreeMap<&QuestionNumber, Vec<&ModerationItem>> = BTreeMap::new();
    for item in items {
        per_question
            .entry(&item.question_number)
            .or_default()
            .push(item);
    }
    let by_question = per_question
        .into_iter()
        .map(|(number, items)| {
            let first_total = items[0].total_marks;
            let shares: Vec<f64> = items
                .iter()
                .filter_map(|i| i.marks_awarded.map(|m| m / i.total_marks))
                .collect();
            QuestionModeration {
                question_number: number.clone(),
                total_marks: items
                    .iter()
                    .all(|i| i.total_marks == first_total)
                    .then_some(first_total),
                students: items.len(),
                mean_share: mean(&shares),
                agreement: agreement(items.iter().copied()),
            }
        })
        .collect();
    let mut reasons: BTreeMap<&str, Vec<&ModerationItem>> = BTreeMap::new();
    for item in items.iter().filter(|i| i.reviewed) {
        if item.review_reasons.is_empty() {
            reasons.entry(EXAMINER_CHOICE).or_default().push(item);
        }
        for reason in &item.review_reasons {
            reasons.entry(reason.as_str()).or_default().push(item);
        }
    }
    let by_reason = reasons
        .into_iter()
        .map(|(reason, items)| (reason.to_string(), agreement(items.into_iter())))
        .collect();
    ModerationReport {
        question_paper_code: question_paper_code.to_string(),
        students: students.len(),
        questions: items.len(),
        unmarked: items.iter().filter(|i| i.marks_awarded.is_none()).count(),
        open_flags,
        agreement: agreement(items.iter()),
        by_reason,
        by_question,
    }
}

fn agreement<'a>(items: impl Iterator<Item = &'a ModerationItem>) -> Agreement {
    let mut result = Agreement::default();
    let (mut grader, mut examiner) = (Vec::new(), Vec::new());
    for item in items.filter(|i| i.reviewed) {
        result.reviewed += 1;
        let (Some(before), Some(after)) = (item.grader_marks, item.marks_awarded) else {
            continue;
        };
        result.compared += 1;
        match after.partial_cmp(&before) {
            Some(std::cmp::Ordering::Greater) => result.raised += 1,
            Some(std::cmp::Ordering::Less) => result.lowered += 1,
            _ => result.unchanged += 1,
        }
        grader.push(before / item.total_marks);
        examiner.push(after / item.total_marks);
    }
    let changes: Vec<f64> = examiner.iter().zip(&grader).map(|(e, g)| e - g).collect();
    let absolute: Vec<f64> = changes.iter().map(|c| c.abs()).collect();
    result.mean_change_share = mean(&changes);
    result.mean_abs_change_share = mean(&absolute);
    result.pearson = metrics::pearson(&grader, &examiner);
    result
}

fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(
        user: &str,
        number: &str,
        total: f64,
        marks: Option<f64>,
        flags: &[&str],
        review: Option<(Option<f64>, &[&str])>,
    ) -> ModerationItem {
        ModerationItem {
            user_id: user.into(),
            question_number: QuestionNumber::parse(number).unwrap(),
            total_marks: total,
            marks_awarded: marks,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            reviewed: review.is_some(),
            grader_marks: review.and_then(|(marks, _)| marks),
            review_reasons: review
                .map(|(_, reasons)| reasons.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default(),
        }
    }

    #[test]
    fn the_report_counts_what_is_open_and_compares_reviewed_marks() {
        let items = vec![
            // U1: question 1 lowered by the examiner from 8 to 4 of 10; 2 not reviewed.
            item(
                "U1",
                "1",
                10.0,
                Some(4.0),
                &["reviewed"],
                Some((Some(8.0), &["needs_review"])),
            ),
            item("U1", "2", 5.0, Some(5.0), &["offline_local_grader"], None),
            // U2: question 1 left for review; 2 failed, then marked by the examiner.
            item("U2", "1", 10.0, Some(9.0), &["needs_review"], None),
            item(
                "U2",
                "2",
                5.0,
                Some(2.5),
                &["reviewed"],
                Some((None, &["grader_error"])),
            ),
            // U3: question 1 raised from 2 to 6 of 10; 2 failed and still unmarked.
            item(
                "U3",
                "1",
                10.0,
                Some(6.0),
                &["reviewed"],
                Some((Some(2.0), &[])),
            ),
            item("U3", "2", 4.0, None, &["grader_error"], None),
        ];
        let report = report("QP1", &items);
        assert_eq!(report.students, 3);
        assert_eq!(report.questions, 6);
        assert_eq!(report.unmarked, 1);
        assert_eq!(
            report.open_flags,
            BTreeMap::from([
                ("grader_error".to_string(), 1),
                ("needs_review".to_string(), 1)
            ])
        );
        let all = &report.agreement;
        assert_eq!((all.reviewed, all.compared), (3, 2));
        assert_eq!((all.raised, all.lowered, all.unchanged), (1, 1, 0));
        // Changes of −0.4 and +0.4 of the marks.
        assert!(all.mean_change_share.unwrap().abs() < 1e-12);
        assert!((all.mean_abs_change_share.unwrap() - 0.4).abs() < 1e-12);
        // Two points going opposite ways: r = −1.
        assert!((all.pearson.unwrap() + 1.0).abs() < 1e-12);

        let reasons: Vec<(&str, usize, usize)> = report
            .by_reason
            .iter()
            .map(|(reason, a)| (reason.as_str(), a.reviewed, a.lowered))
            .collect();
        assert_eq!(
            reasons,
            [
                (EXAMINER_CHOICE, 1, 0),
                ("grader_error", 1, 0),
                ("needs_review", 1, 1)
            ]
        );

        let numbers: Vec<&str> = report
            .by_question
            .iter()
            .map(|q| q.question_number.as_str())
            .collect();
        assert_eq!(numbers, ["1", "2"]);
        let first = &report.by_question[0];
        assert_eq!(first.total_marks, Some(10.0));
        assert_eq!(first.students, 3);
        assert!((first.mean_share.unwrap() - 19.0 / 30.0).abs() < 1e-12);
        assert_eq!(first.agreement.compared, 2);
        let second = &report.by_question[1];
        assert_eq!(second.total_marks, None, "graded out of 5 and of 4");
        assert_eq!(
            (second.agreement.reviewed, second.agreement.compared),
            (1, 0)
        );
        assert_eq!(second.agreement.mean_change_share, None);
        assert_eq!(second.agreement.pearson, None);
        assert!((second.mean_share.unwrap() - 0.75).abs() < 1e-12);
    }
}
