//! The request parsers of the HTTP edge: JSON bodies into the workflow request types and a
//! question paper, then the edge's validators on what they hold.
//!
//! Checks, for any bytes: no panic (serde_json's recursion limit holds for deep nesting);
//! every id the validator accepts is non-empty, bounded and made of the allowed characters;
//! every text it accepts is bounded and NUL-free; accepted marks are finite, non-negative and
//! bounded; a parsed question paper serialises back to JSON that parses to the same paper
//! (question numbers in canonical form).
#![no_main]

use examiner::http::validate;
use examiner::http::workflows::{EvaluateRequest, UploadRequest};
use examiner::model::QuestionPaper;
use examiner::segment::QuestionNumber;
use libfuzzer_sys::fuzz_target;

const MAX_ID: usize = 64;
const MAX_TEXT: usize = 2000;

fn check_id(value: &str) {
    if validate::id("id", value, MAX_ID).is_ok() {
        assert!(!value.is_empty() && value.chars().count() <= MAX_ID);
        assert!(
            value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:@+".contains(c)),
            "accepted id {value:?}"
        );
    }
}

fn check_text(value: &str) {
    if validate::text("text", value, MAX_TEXT).is_ok() {
        assert!(value.chars().count() <= MAX_TEXT && !value.contains('\0'));
    }
}

fn check_marks(value: f64) {
    if validate::marks("marks", value).is_ok() {
        assert!(
            value.is_finite() && value >= 0.0 && value <= 1_000_000.0,
            "{value}"
        );
    }
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fuzz_target!(|data: &[u8]| {
    if let Ok(upload) = serde_json::from_slice::<UploadRequest>(data) {
        for id in [
            &upload.user_id,
            &upload.course_code,
            &upload.exam_code,
            &upload.question_paper_code,
        ] {
            check_id(id);
        }
        for image in &upload.images {
            check_id(&image.image_id);
            check_text(&image.image_url);
        }
    }
    if let Ok(evaluate) = serde_json::from_slice::<EvaluateRequest>(data) {
        check_id(&evaluate.user_id);
        check_id(&evaluate.question_paper_code);
        for pair in evaluate.qa_pairs.iter().flatten() {
            if let Some(number) = QuestionNumber::parse(&pair.question_number) {
                assert_eq!(QuestionNumber::parse(number.as_str()), Some(number));
            }
            check_text(&pair.student_answer);
            for text in [&pair.standard_answer, &pair.question_text].into_iter().flatten() {
                check_text(text);
            }
            if let Some(marks) = pair.total_marks {
                check_marks(marks);
            }
        }
    }
    if let Ok(paper) = serde_json::from_slice::<QuestionPaper>(data) {
        check_id(&paper.question_paper_code);
        if let Some(step) = paper.marks_step {
            check_marks(step);
        }
        let json = serde_json::to_string(&paper).expect("a parsed paper serialises");
        let back: QuestionPaper = serde_json::from_str(&json).expect("a paper's own JSON parses");
        assert_eq!(back.question_paper_code, paper.question_paper_code);
        assert_eq!(back.title, paper.title);
        assert_eq!(back.questions.len(), paper.questions.len());
        for (a, b) in paper.questions.iter().zip(&back.questions) {
            assert_eq!(a.question_number, b.question_number);
            assert_eq!(a.standard_answer, b.standard_answer);
            assert_eq!(a.question_text, b.question_text);
            assert!(
                close(a.total_marks, b.total_marks),
                "{} vs {}",
                a.total_marks,
                b.total_marks
            );
            check_marks(a.total_marks);
        }
        let _ = paper.total_marks();
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_id(text);
        check_text(text);
        if let Ok(marks) = text.trim().parse::<f64>() {
            check_marks(marks);
        }
    }
});
