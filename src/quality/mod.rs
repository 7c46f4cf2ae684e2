//! Measuring graders against human marks.
//!
//! Owns the agreement metrics ([`metrics`]), the evaluation runner over ASAG data sets
//! ([`eval`]), the predicted-vs-human scatter plot ([`plot`]) and the fitting of the local
//! grader's calibration with grouped cross-validation ([`calibrate`]). Promises: metrics are pure
//! functions; evaluation works with any [`crate::grade::Grader`]; dev data is read at run time
//! from its path, never compiled in.

pub mod calibrate;
pub mod eval;
pub mod metrics;
pub mod plot;

#[cfg(test)]
mod fit_run;
