//! Black-box tests of the running service over HTTP.

mod auth;
mod binary;
mod catalog;
mod crash;
mod evaluate;
mod fake_llm;
mod faults;
mod helpers;
mod injection;
mod listings;
mod local_grading;
mod ops;
mod review;
#[path = "../../src/ocr/testpages.rs"]
mod testpages;
mod upload;
