//! The embedded grader: out of the box with no LLM configured, and as the second opinion
//! that flags LLM marks for review.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_llm::{evaluator, prompt_text, verifier, FakeLlm, Reply, Stage};
use crate::helpers::{png, spawn_app, spawn_app_with, upload_body, ImageServer};

fn request(pairs: Value) -> Value {
    json!({"user_id": "USER123", "course_code": "CA-FND-2024", "exam_code": "CA-FO-PAPER1",
           "question_paper_code": "QP001", "qa_pairs": pairs})
}

const STANDARD: &str = "The going concern concept assumes that a business will continue to operate for the foreseeable future and has no intention or need to liquidate. Because of it, assets are recorded at cost and depreciated over their useful life.";

#[tokio::test]
async fn with_no_llm_the_embedded_grader_marks_answers() {
    let app = spawn_app().await;
    let (_, health, _) = app.get("/healthz").await;
    assert_eq!(health["grader"], "local", "{health}");

    let pair = |n: &str, answer: &str| json!({"question_number": n, "student_answer": answer, "standard_answer": STANDARD, "total_marks": 10});
    let body = request(json!([
        pair("1", "Going concern assumes the business will continue operating in the foreseeable future without any need to liquidate, so assets are shown at cost less depreciation over their useful life."),
        pair("2", "A business exists."),
        pair("3", "The mitochondria is the powerhouse of the cell."),
        pair("4", ""),
    ]));
    let (status, graded, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::OK, "{graded}");
    assert_eq!(graded["status"], "success");
    let marks: Vec<f64> = graded["evaluation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["marks_awarded"].as_f64().expect("graded"))
        .collect();
    for m in &marks {
        assert!((0.0..=10.0).contains(m), "{marks:?}");
        assert_eq!((m * 2.0).fract(), 0.0, "rounded to half marks: {marks:?}");
    }
    assert!(
        marks[0] > marks[1],
        "the full answer beats the vague one: {marks:?}"
    );
    assert!(marks[0] > marks[2], "and the unrelated one: {marks:?}");
    assert_eq!(marks[3], 0.0, "an empty answer gets nothing");
    let feedback = graded["evaluation"][0]["llm_evaluation"].as_str().unwrap();
    assert!(!feedback.is_empty());
    let total: f64 = marks.iter().sum();
    assert_eq!(graded["final_score"].as_f64().unwrap(), total);
}

#[tokio::test]
async fn the_embedded_grader_marks_with_the_question_text_when_the_request_gives_it() {
    let app = spawn_app().await;
    let answer = "Going concern means the business is expected to keep operating.";
    let body = request(json!([
        {"question_number": "1", "question_text": "Explain the going concern concept.",
         "student_answer": answer, "standard_answer": STANDARD, "total_marks": 5},
        {"question_number": "2", "student_answer": answer, "standard_answer": STANDARD, "total_marks": 5},
    ]));
    let (status, graded, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::OK, "{graded}");
    let id = graded["evaluation_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/evaluations/{id}")).await;
    let profile = |n: usize| stored["items"][n]["stages"][0]["reply"]["profile"].clone();
    assert_eq!(profile(0), "long-with-question", "{stored}");
    assert_eq!(profile(1), "long-without-question", "{stored}");
    let reasoning = |n: usize| {
        stored["items"][n]["reasoning"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(!reasoning(0).contains("without the question's text"));
    assert!(reasoning(1).contains("without the question's text"));
}

#[tokio::test]
async fn llm_marks_far_from_the_embedded_estimate_are_flagged_for_review() {
    // An evaluator that gives full marks to everything, and a verifier that agrees.
    let llm = FakeLlm::start(|stage, body| {
        let full = if prompt_text(body).contains("Maximum marks: 5.") {
            5.0
        } else {
            10.0
        };
        match stage {
            Stage::Evaluator => evaluator(full, "Excellent."),
            Stage::Verifier => verifier(true, full),
            _ => Reply::Status(500),
        }
    })
    .await;
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let unrelated = "The mitochondria is the powerhouse of the cell.";
    let body = request(json!([
        {"question_number": "1", "student_answer": unrelated, "standard_answer": STANDARD, "total_marks": 5},
        {"question_number": "2", "student_answer": unrelated, "standard_answer": STANDARD, "total_marks": 10},
    ]));
    let (status, graded, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::OK, "{graded}");
    let item = |n: usize| graded["evaluation"][n].clone();
    assert_eq!(item(0)["marks_awarded"], 5.0, "the LLM's marks stand");
    assert_eq!(item(0)["flags"], json!(["needs_review"]), "{graded}");
    // Worth more than the embedded grader was calibrated on: its estimate decides nothing,
    // and is not waited for, so it is never reported missing.
    assert_eq!(item(1)["marks_awarded"], 10.0, "{graded}");
    assert_eq!(item(1)["flags"], json!(["beyond_calibration"]), "{graded}");
    let id = graded["evaluation_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/evaluations/{id}")).await;
    let second = |n: usize| {
        stored["items"][n]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["role"] == "second_opinion")
            .cloned()
    };
    let estimate = second(0).expect("the estimate is stored beside the LLM stages");
    assert!(estimate["marks"].as_f64().unwrap() <= 3.0, "{estimate}");
    // Stored when it was in by the time the LLM's marks were.
    if let Some(estimate) = second(1) {
        assert!(estimate["marks"].as_f64().is_some(), "{estimate}");
    }
    // The first estimate was waited for, the second queued in the background.
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for priority in ["normal", "background"] {
        let series = format!("examiner_embed_jobs_queued{{priority=\"{priority}\"}}");
        assert!(metrics.contains(&series), "{series} in {metrics}");
    }
}

/// Answers read with low OCR confidence are flagged on the stored pair and, when the stored
/// upload is graded, on the evaluation item, so review starts with them.
#[tokio::test]
async fn answers_read_with_low_ocr_confidence_are_flagged_through_to_grading() {
    // Printed pages read at about 0.95: a threshold above that marks them all.
    let app = spawn_app_with(|s| s.ocr.low_confidence_below = 0.999).await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let page = images.add(
        "p1.png",
        "image/png",
        png(&[
            "1.a The going concern concept assumes that a business will continue.",
            "1.b Assets = Liabilities + Capital.",
        ]),
    );
    let (status, uploaded, _) = app
        .post("/upload-exam-answers", &upload_body(&[("img_1", &page)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    let pairs = uploaded["qa_pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 2, "{uploaded}");
    assert!(
        pairs.iter().all(|p| p["low_ocr_confidence"] == true),
        "{uploaded}"
    );

    let body = json!({"user_id": "USER123", "course_code": "CA-FND-2024",
                      "exam_code": "CA-FO-PAPER1", "question_paper_code": "QP001"});
    let (status, graded, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::OK, "{graded}");
    for item in graded["evaluation"].as_array().unwrap() {
        let flags = item["flags"].as_array().unwrap();
        let answered = item["question_number"] != "2";
        assert_eq!(
            flags.contains(&json!("low_ocr_confidence")),
            answered,
            "{item}"
        );
    }
}
