//! Examiner grades students' exam answer scripts.
//!
//! The pipeline, one module per stage: [`fetch`] answer images from the URLs given, [`ocr`]
//! them on a pool of worker threads, [`segment`] the text into question-answer pairs,
//! [`grade`] each answer against the standard answer, and [`store`] everything. The
//! [`workflow`] module strings the stages together for the two core workflows; [`http`] and
//! [`cli`] are thin edges on top, and [`app`] assembles the running service.

pub mod app;
pub mod cli;
pub mod config;
pub mod embed;
pub mod fetch;
pub mod grade;
pub mod http;
pub mod model;
pub mod ocr;
pub mod quality;
pub mod segment;
pub mod store;
pub mod workflow;
