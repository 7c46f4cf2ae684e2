//! Evaluating any [`Grader`] against human marks on an ASAG data set (jsonl, one answer a line).
//!
//! Owns the data format ([`AsagItem`]), the human target, and the [`Report`]. Promises: the
//! human target of an answer is its `gold_mark` when the data set gives one (Mohler: the mean of
//! the two graders), otherwise the mean of `human_marks`; answers the grader fails on (no marks)
//! are counted in `failed` and left out of the metrics; `human` compares marker 1 with marker 2
//! on the answers that have at least two human marks; two-class metrics (`accuracy`,
//! `macro_f1`) appear only when every target is 0 or 1 on a 1-mark scale.

use std::path::Path;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::metrics;
use crate::grade::{GradeTask, Grader};

/// One student answer with its human marks (the asag-dev jsonl format).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AsagItem {
    #[serde(default)]
    pub dataset: String,
    pub question_id: String,
    #[serde(default)]
    pub question: String,
    pub reference_answer: String,
    pub student_answer: String,
    pub max_marks: f64,
    pub human_marks: Vec<f64>,
    #[serde(default)]
    pub gold_mark: Option<f64>,
    #[serde(default)]
    pub answer_id: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

impl AsagItem {
    /// The human mark the grader is compared with: `gold_mark` if present, else the mean of
    /// `human_marks` (`None` when there is neither).
    pub fn target(&self) -> Option<f64> {
        self.gold_mark.or_else(|| {
            (!self.human_marks.is_empty())
                .then(|| self.human_marks.iter().sum::<f64>() / self.human_marks.len() as f64)
        })
    }

    /// The grading task for this answer, with [`eval_step`] as the marks step.
    pub fn task(&self) -> GradeTask {
        GradeTask {
            question_number: self.question_id.clone(),
            question_text: (!self.question.trim().is_empty()).then(|| self.question.clone()),
            student_answer: self.student_answer.clone(),
            standard_answer: self.reference_answer.clone(),
            total_marks: self.max_marks,
            marks_step: eval_step(self.max_marks),
        }
    }
}

/// The marks step used when evaluating: 0.5 on scales of 3 marks or more, 0.05 below (so a
/// 1-mark question can still get partial credit that correlation metrics can see).
pub fn eval_step(max_marks: f64) -> f64 {
    if max_marks >= 3.0 {
        0.5
    } else {
        0.05
    }
}

/// Read a jsonl file of [`AsagItem`]s (blank lines skipped).
pub fn load_jsonl(path: impl AsRef<Path>) -> Result<Vec<AsagItem>, String> {
    let p = path.as_ref();
    let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", p.display(), i + 1))
        })
        .collect()
}

/// Agreement figures between two sets of marks.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Metrics {
    pub count: usize,
    pub pearson: Option<f64>,
    pub spearman: Option<f64>,
    pub rmse: Option<f64>,
    pub mae: Option<f64>,
    pub qwk: Option<f64>,
    pub exact: Option<f64>,
    pub within_one: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub macro_f1: Option<f64>,
}

impl Metrics {
    /// All metrics of `pred` against `gold` on a `0..=max_marks` scale.
    pub fn compute(pred: &[f64], gold: &[f64], max_marks: f64) -> Metrics {
        let two_class =
            max_marks <= 1.0 && !gold.is_empty() && gold.iter().all(|g| *g == 0.0 || *g == 1.0);
        Metrics {
            count: pred.len().min(gold.len()),
            pearson: metrics::pearson(pred, gold),
            spearman: metrics::spearman(pred, gold),
            rmse: metrics::rmse(pred, gold),
            mae: metrics::mae(pred, gold),
            qwk: metrics::qwk(pred, gold, max_marks),
            exact: metrics::exact_agreement(pred, gold, max_marks),
            within_one: metrics::within_one(pred, gold, max_marks),
            accuracy: if two_class {
                metrics::accuracy(pred, gold)
            } else {
                None
            },
            macro_f1: if two_class {
                metrics::macro_f1(pred, gold)
            } else {
                None
            },
        }
    }
}

/// The result of an evaluation. Serialises flat: `count`, `pearson`, ... plus `human`, `failed`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Report {
    #[serde(flatten)]
    pub metrics: Metrics,
    /// Human marker 1 vs marker 2, on answers with two or more human marks.
    pub human: Option<Metrics>,
    /// Answers for which the grader gave no marks.
    pub failed: usize,
    /// The highest `max_marks` of the items (the scale of qwk/exact/within-one).
    pub max_marks: f64,
    /// Per scored answer: (predicted, human target), for plots. Not serialised.
    #[serde(skip)]
    pub pairs: Vec<(f64, f64)>,
}

impl Report {
    /// Build a report from per-item predictions (`None` = the grader failed on that item).
    pub fn from_predictions(items: &[AsagItem], predicted: &[Option<f64>]) -> Report {
        let max_marks = items.iter().map(|i| i.max_marks).fold(0.0, f64::max);
        let mut pairs = Vec::new();
        let mut failed = 0;
        for (item, p) in items.iter().zip(predicted) {
            match (p, item.target()) {
                (Some(p), Some(t)) => pairs.push((*p, t)),
                (None, _) => failed += 1,
                _ => {}
            }
        }
        let (pred, gold): (Vec<f64>, Vec<f64>) = pairs.iter().copied().unzip();
        let (h1, h2): (Vec<f64>, Vec<f64>) = items
            .iter()
            .filter(|i| i.human_marks.len() >= 2)
            .map(|i| (i.human_marks[0], i.human_marks[1]))
            .unzip();
        Report {
            metrics: Metrics::compute(&pred, &gold, max_marks),
            human: (!h1.is_empty()).then(|| Metrics::compute(&h1, &h2, max_marks)),
            failed,
            max_marks,
            pairs,
        }
    }
}

/// Grade every item with `grader` (at most `concurrency` at once) and compare with the human
/// target. `progress(done, total)` is called after each answer.
pub async fn evaluate(
    grader: &dyn Grader,
    items: &[AsagItem],
    concurrency: usize,
    progress: impl Fn(usize, usize),
) -> Report {
    let total = items.len();
    let mut done = 0;
    let mut predicted = Vec::with_capacity(total);
    // `buffered` keeps input order, so predictions line up with items.
    let mut stream = futures::stream::iter(items.iter().map(|item| async move {
        let task = item.task();
        grader.grade(&task).await.marks_awarded
    }))
    .buffered(concurrency.max(1));
    while let Some(p) = stream.next().await {
        predicted.push(p);
        done += 1;
        progress(done, total);
    }
    Report::from_predictions(items, &predicted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grade::{GradeOutcome, StageRole};

    fn item(q: &str, marks: Vec<f64>, gold: Option<f64>, answer: &str) -> AsagItem {
        AsagItem {
            dataset: "t".into(),
            question_id: q.into(),
            question: "Q?".into(),
            reference_answer: "ref".into(),
            student_answer: answer.into(),
            max_marks: 5.0,
            human_marks: marks,
            gold_mark: gold,
            answer_id: None,
            label: None,
        }
    }

    /// Gives the answer's length in characters as the mark (fails on "fail").
    struct LenGrader;
    #[async_trait::async_trait]
    impl Grader for LenGrader {
        fn name(&self) -> &str {
            "len"
        }
        async fn grade(&self, task: &GradeTask) -> GradeOutcome {
            let ok = task.student_answer != "fail";
            GradeOutcome {
                marks_awarded: ok.then_some(task.student_answer.len() as f64),
                feedback: String::new(),
                reasoning: None,
                key_points_covered: vec![],
                key_points_missed: vec![],
                error: None,
                flags: vec![],
                final_stage: Some(StageRole::Evaluator),
                stages: vec![],
            }
        }
    }

    #[test]
    fn target_prefers_gold() {
        assert_eq!(item("1", vec![2.0, 4.0], Some(3.5), "").target(), Some(3.5));
        assert_eq!(item("1", vec![2.0, 4.0], None, "").target(), Some(3.0));
        assert_eq!(item("1", vec![], None, "").target(), None);
    }

    #[tokio::test]
    async fn evaluate_reports_metrics_human_and_failures() {
        let items = vec![
            item("1", vec![1.0, 1.0], None, "a"),
            item("1", vec![2.0, 3.0], None, "bb"),
            item("2", vec![3.0, 3.0], None, "ccc"),
            item("2", vec![4.0], None, "fail"),
        ];
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let r = evaluate(&LenGrader, &items, 2, |_, _| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .await;
        assert_eq!(calls.into_inner(), 4);
        assert_eq!(r.failed, 1);
        assert_eq!(r.metrics.count, 3);
        // pred 1,2,3 vs gold 1,2.5,3: errors 0,.5,0 -> mae 1/6.
        assert!((r.metrics.mae.unwrap() - 0.5 / 3.0).abs() < 1e-12);
        let h = r.human.as_ref().unwrap();
        assert_eq!(h.count, 3);
        // marker1 1,2,3 vs marker2 1,3,3: exact (rounded) 2/3.
        assert!((h.exact.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let json = serde_json::to_value(&r).unwrap();
        for k in [
            "count",
            "pearson",
            "spearman",
            "rmse",
            "mae",
            "qwk",
            "exact",
            "within_one",
            "human",
        ] {
            assert!(json.get(k).is_some(), "missing {k}");
        }
        assert!(json.get("accuracy").is_none());
    }

    #[test]
    fn two_class_metrics_only_for_binary_targets() {
        let m = Metrics::compute(&[1.0, 0.0, 0.4], &[1.0, 0.0, 1.0], 1.0);
        assert!((m.accuracy.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(m.macro_f1.is_some());
        assert!(Metrics::compute(&[1.0, 0.0], &[1.0, 0.5], 1.0)
            .accuracy
            .is_none());
    }
}
