//! The calibration of the local grader: how features become a mark fraction.
//!
//! Owns the versioned JSON format of `calibration/local-grader-v2.json` (fitted by
//! `quality::calibrate`, see GRADING.md) and its evaluation. Promises: [`Calibration::fraction`]
//! is always in [0, 1]; a file that names an unknown feature or has no profile is rejected at
//! load time, not at grading time. The default calibration is compiled into the binary.

use serde::{Deserialize, Serialize};

use super::features::Features;

/// The calibration shipped with the service (compiled in).
pub const DEFAULT_CALIBRATION_JSON: &str =
    include_str!("../../../calibration/local-grader-v2.json");

/// How the weighted sum of features becomes a fraction of the marks.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Link {
    /// fraction = clamp(sum, 0, 1)
    Linear,
    /// fraction = 1 / (1 + exp(-sum))
    Logistic,
}

/// One standardised feature term: weight × (value − mean) / scale.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Term {
    pub feature: String,
    pub mean: f64,
    pub scale: f64,
    pub weight: f64,
}

/// An off-topic guard: the fraction is multiplied by a ramp that is 0 when `feature` is below
/// `zero_below` and 1 above `full_above`. Fitted so that almost no real answer is touched while
/// most answers written for other questions are (real marked data has too few off-topic answers
/// for the regression to learn this itself).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Gate {
    pub feature: String,
    pub zero_below: f64,
    pub full_above: f64,
}

impl Gate {
    /// The multiplier in [0, 1].
    pub fn factor(&self, f: &Features) -> f64 {
        let x = f.get(&self.feature).unwrap_or(self.full_above);
        if x >= self.full_above {
            1.0
        } else if x <= self.zero_below {
            0.0
        } else {
            (x - self.zero_below) / (self.full_above - self.zero_below)
        }
    }
}

/// Whether a profile is for questions graded with their question text or without it.
///
/// Without the question the features change meaning, not only value: nothing is demoted as
/// "restating the question", so an answer that repeats the question's subject looks closer to
/// the standard answer than it is. Such answers need weights fitted on that same view of the
/// data (GRADING.md, "Without the question's text").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuestionText {
    /// Used either way (calibration files from before the distinction).
    #[default]
    Any,
    /// Only when the question's text is known.
    Given,
    /// Only when it is not: ad hoc grading, or a stored paper without question texts.
    Missing,
}

impl QuestionText {
    fn accepts(self, question_given: bool) -> bool {
        match self {
            QuestionText::Any => true,
            QuestionText::Given => question_given,
            QuestionText::Missing => !question_given,
        }
    }
}

/// A fitted model for questions whose total marks fall in `[min_marks, max_marks]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub min_marks: f64,
    pub max_marks: f64,
    /// Whether it is for questions with or without their text.
    #[serde(default, skip_serializing_if = "is_any")]
    pub question_text: QuestionText,
    /// The largest mark scale among the answers it was fitted on. Its marks for a question
    /// worth more are an extrapolation, and are flagged as one
    /// ([`crate::model::flag::BEYOND_CALIBRATION`]). Absent: no limit is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fitted_max_marks: Option<f64>,
    pub link: Link,
    pub intercept: f64,
    pub terms: Vec<Term>,
    /// Optional off-topic guard applied after the link.
    #[serde(default)]
    pub gate: Option<Gate>,
    /// What it was fitted on (informational).
    #[serde(default)]
    pub fitted_on: String,
}

fn is_any(q: &QuestionText) -> bool {
    *q == QuestionText::Any
}

/// A versioned calibration file.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Calibration {
    /// Recorded as the stage's `prompt_version`, so every mark names the calibration it used.
    pub version: String,
    /// The embedding model the features were measured with.
    pub embedding_model: String,
    #[serde(default)]
    pub description: String,
    /// Tried in order; the first whose mark range holds the question's total, and which is
    /// for questions with (or without) their text as this one is, is used; when none holds the
    /// total, the last one that fits the question text.
    pub profiles: Vec<Profile>,
    /// Cross-validated figures recorded by the fitting run (informational).
    #[serde(default)]
    pub cv: serde_json::Value,
}

impl Calibration {
    /// Parse and validate a calibration file's text.
    pub fn from_json(text: &str) -> Result<Calibration, String> {
        let c: Calibration =
            serde_json::from_str(text).map_err(|e| format!("calibration JSON: {e}"))?;
        if c.profiles.is_empty() {
            return Err("calibration has no profiles".into());
        }
        let probe = Features::default();
        for p in &c.profiles {
            if let Some(g) = &p.gate {
                if probe.get(&g.feature).is_none()
                    || g.zero_below.partial_cmp(&g.full_above) != Some(std::cmp::Ordering::Less)
                {
                    return Err(format!("calibration profile {:?}: bad gate {g:?}", p.name));
                }
            }
            for t in &p.terms {
                if probe.get(&t.feature).is_none() {
                    return Err(format!(
                        "calibration profile {:?} uses unknown feature {:?}",
                        p.name, t.feature
                    ));
                }
                if !(t.scale.is_finite()
                    && t.scale > 0.0
                    && t.weight.is_finite()
                    && t.mean.is_finite())
                {
                    return Err(format!(
                        "calibration profile {:?}: bad term {:?}",
                        p.name, t.feature
                    ));
                }
            }
        }
        Ok(c)
    }

    /// Load from a file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Calibration, String> {
        let p = path.as_ref();
        let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
        Calibration::from_json(&text)
    }

    /// The compiled-in default.
    pub fn embedded() -> Calibration {
        Calibration::from_json(DEFAULT_CALIBRATION_JSON)
            .expect("the shipped calibration file is valid")
    }

    /// The profile used for a question worth `total_marks`, graded with its question text
    /// (`question_given`) or without it.
    pub fn profile(&self, total_marks: f64, question_given: bool) -> &Profile {
        let mut fitting = self
            .profiles
            .iter()
            .filter(|p| p.question_text.accepts(question_given));
        fitting
            .clone()
            .find(|p| total_marks >= p.min_marks && total_marks <= p.max_marks)
            .or_else(|| fitting.next_back())
            .unwrap_or_else(|| self.profiles.last().expect("validated non-empty"))
    }

    /// The mark fraction in [0, 1] for these features.
    pub fn fraction(&self, f: &Features, total_marks: f64, question_given: bool) -> f64 {
        self.profile(total_marks, question_given).fraction(f)
    }
}

impl Profile {
    /// Whether a question worth `total_marks` lies beyond the mark scales it was fitted on.
    pub fn extrapolates_to(&self, total_marks: f64) -> bool {
        self.fitted_max_marks
            .is_some_and(|fitted| total_marks > fitted + 1e-9)
    }

    /// The linear score before the link.
    pub fn score(&self, f: &Features) -> f64 {
        self.intercept
            + self
                .terms
                .iter()
                .map(|t| t.weight * (f.get(&t.feature).unwrap_or(t.mean) - t.mean) / t.scale)
                .sum::<f64>()
    }

    /// The mark fraction in [0, 1].
    pub fn fraction(&self, f: &Features) -> f64 {
        let s = self.score(f);
        let mut x = match self.link {
            Link::Linear => s,
            Link::Logistic => 1.0 / (1.0 + (-s).exp()),
        };
        if let Some(g) = &self.gate {
            x *= g.factor(f);
        }
        if x.is_finite() {
            x.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_calibration_is_valid() {
        let c = Calibration::embedded();
        assert!(!c.version.is_empty());
        let f = Features::default();
        for total in [1.0, 3.0, 5.0, 16.0] {
            for question_given in [true, false] {
                let x = c.fraction(&f, total, question_given);
                assert!((0.0..=1.0).contains(&x));
            }
        }
    }

    #[test]
    fn rejects_unknown_features() {
        let bad = r#"{"version":"x","embedding_model":"m","profiles":[{"name":"p","min_marks":0,"max_marks":9,
            "link":"linear","intercept":0,"terms":[{"feature":"nope","mean":0,"scale":1,"weight":1}]}]}"#;
        assert!(Calibration::from_json(bad).unwrap_err().contains("nope"));
    }

    #[test]
    fn linear_and_logistic_links() {
        let f = Features {
            sim_whole: 0.5,
            ..Features::default()
        };
        let mut p = Profile {
            name: "p".into(),
            min_marks: 0.0,
            max_marks: 10.0,
            question_text: QuestionText::Any,
            fitted_max_marks: Some(5.0),
            link: Link::Linear,
            intercept: 0.1,
            terms: vec![Term {
                feature: "sim_whole".into(),
                mean: 0.0,
                scale: 0.5,
                weight: 0.4,
            }],
            gate: None,
            fitted_on: String::new(),
        };
        assert!((p.fraction(&f) - 0.5).abs() < 1e-12);
        p.link = Link::Logistic;
        assert!((p.fraction(&f) - 1.0 / (1.0 + (-0.5f64).exp())).abs() < 1e-12);
        p.intercept = 100.0;
        assert_eq!(p.fraction(&f), 1.0);
        p.gate = Some(Gate {
            feature: "sim_whole".into(),
            zero_below: 0.2,
            full_above: 0.6,
        });
        assert!((p.fraction(&f) - 0.75).abs() < 1e-12);
        assert!(!p.extrapolates_to(5.0));
        assert!(p.extrapolates_to(5.5));
        p.fitted_max_marks = None;
        assert!(!p.extrapolates_to(100.0));
    }

    #[test]
    fn the_shipped_profiles_know_the_scales_they_were_fitted_on() {
        let c = Calibration::embedded();
        let fitted: Vec<_> = c
            .profiles
            .iter()
            .map(|p| (p.name.as_str(), p.question_text, p.fitted_max_marks))
            .collect();
        assert_eq!(
            fitted,
            [
                ("short-with-question", QuestionText::Given, Some(3.0)),
                ("long-with-question", QuestionText::Given, Some(5.0)),
                ("short-without-question", QuestionText::Missing, Some(3.0)),
                ("long-without-question", QuestionText::Missing, Some(5.0)),
            ]
        );
        for question_given in [true, false] {
            assert!(!c.profile(5.0, question_given).extrapolates_to(5.0));
            assert!(c.profile(16.0, question_given).extrapolates_to(16.0));
        }
    }

    #[test]
    fn profiles_are_chosen_by_marks_and_by_whether_the_question_is_known() {
        let profile = |name: &str, min_marks: f64, max_marks: f64, question_text| Profile {
            name: name.into(),
            min_marks,
            max_marks,
            question_text,
            fitted_max_marks: None,
            link: Link::Linear,
            intercept: 0.0,
            terms: Vec::new(),
            gate: None,
            fitted_on: String::new(),
        };
        let c = Calibration {
            version: "v".into(),
            embedding_model: "m".into(),
            description: String::new(),
            profiles: vec![
                profile("short given", 0.0, 3.0, QuestionText::Given),
                profile("long given", 3.5, 10.0, QuestionText::Given),
                profile("short missing", 0.0, 3.0, QuestionText::Missing),
                profile("long missing", 3.5, 10.0, QuestionText::Missing),
            ],
            cv: serde_json::Value::Null,
        };
        let chosen = |total, given| c.profile(total, given).name.clone();
        assert_eq!(chosen(2.0, true), "short given");
        assert_eq!(chosen(2.0, false), "short missing");
        assert_eq!(chosen(5.0, true), "long given");
        assert_eq!(chosen(5.0, false), "long missing");
        // Outside every range: the last profile of the right view.
        assert_eq!(chosen(3.2, true), "long given");
        assert_eq!(chosen(30.0, false), "long missing");

        // A file from before the distinction: its profiles serve both views.
        let old = r#"{"version":"x","embedding_model":"m","profiles":[
            {"name":"short","min_marks":0,"max_marks":3,"link":"linear","intercept":0,"terms":[]},
            {"name":"long","min_marks":3.5,"max_marks":9,"link":"linear","intercept":0,"terms":[]}]}"#;
        let old = Calibration::from_json(old).unwrap();
        assert_eq!(old.profiles[0].question_text, QuestionText::Any);
        for given in [true, false] {
            assert_eq!(old.profile(1.0, given).name, "short");
            assert_eq!(old.profile(5.0, given).name, "long");
        }
        // Written back, "any" is left out, so such files stay as they were.
        assert!(!serde_json::to_string(&old.profiles[0])
            .unwrap()
            .contains("question_text"));
    }
}
