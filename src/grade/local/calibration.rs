//! The calibration of the local grader: how features become a mark fraction.
//!
//! Owns the versioned JSON format of `calibration/local-grader-v1.json` (fitted by
//! `quality::calibrate`, see GRADING.md) and its evaluation. Promises: [`Calibration::fraction`]
//! is always in [0, 1]; a file that names an unknown feature or has no profile is rejected at
//! load time, not at grading time. The default calibration is compiled into the binary.

use serde::{Deserialize, Serialize};

use super::features::Features;

/// The calibration shipped with the service (compiled in).
pub const DEFAULT_CALIBRATION_JSON: &str =
    include_str!("../../../calibration/local-grader-v1.json");

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

/// A fitted model for questions whose total marks fall in `[min_marks, max_marks]`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Profile {
    pub name: String,
    pub min_marks: f64,
    pub max_marks: f64,
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

/// A versioned calibration file.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Calibration {
    /// Recorded as the stage's `prompt_version`, so every mark names the calibration it used.
    pub version: String,
    /// The embedding model the features were measured with.
    pub embedding_model: String,
    #[serde(default)]
    pub description: String,
    /// Tried in order; the first whose mark range holds the question's total is used, and the
    /// last one when none does.
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

    /// The profile used for a question worth `total_marks`.
    pub fn profile(&self, total_marks: f64) -> &Profile {
        self.profiles
            .iter()
            .find(|p| total_marks >= p.min_marks && total_marks <= p.max_marks)
            .unwrap_or_else(|| self.profiles.last().expect("validated non-empty"))
    }

    /// The mark fraction in [0, 1] for these features.
    pub fn fraction(&self, f: &Features, total_marks: f64) -> f64 {
        self.profile(total_marks).fraction(f)
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
            let x = c.fraction(&f, total);
            assert!((0.0..=1.0).contains(&x));
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
            .map(|p| (p.name.as_str(), p.fitted_max_marks))
            .collect();
        assert_eq!(fitted, [("short", Some(3.0)), ("long", Some(5.0))]);
        assert!(!c.profile(5.0).extrapolates_to(5.0));
        assert!(c.profile(16.0).extrapolates_to(16.0));
    }
}
