//! Measuring graders against human marks.
//!
//! Owns the agreement metrics ([`metrics`]), the evaluation runner over ASAG data sets
//! ([`eval`]), the predicted-vs-human scatter plot ([`plot`]), the fitting of the local
//! grader's calibration with grouped cross-validation ([`calibrate`]), and OCR error rates
//! against reference transcripts ([`ocr_eval`]). Promises: metrics are pure
//! functions; evaluation works with any [`crate::grade::Grader`]; dev data is read at run time
//! from its path, never compiled in.

pub mod calibrate;
pub mod eval;
pub mod metrics;
pub mod ocr_eval;
pub mod plot;

#[cfg(test)]
mod fit_run;
