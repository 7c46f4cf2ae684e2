//! Workflow 2 end to end through HTTP, with a scripted chat-completions server as every
//! LLM backend.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_llm::{arbiter, evaluator, prompt_text, verifier, FakeLlm, Reply, Stage};
use crate::helpers::{png, spawn_app_with, stage_roles, upload_body, ImageServer, PostgresSchema};

/// The request body of the contract's example, verbatim.
fn spec_example() -> Value {
    json!({
      "user_id": "USER123",
      "course_code": "CA-FND-2024",
      "exam_code": "CA-FO-PAPER1",
      "question_paper_code": "QP001",
      "qa_pairs": [
        {
          "question_number": "1.a",
          "student_answer": "FastAPI is a modern, fast web framework.",
          "standard_answer": "FastAPI is a high-performance web framework for building APIs.",
          "total_marks": 10
        },
        {
          "question_number": "1.b",
          "student_answer": "OCR is Optical Character Recognition.",
          "standard_answer": "OCR is a technology that converts different types of documents into editable data.",
          "total_marks": 10
        }
      ]
    })
}

/// Evaluator gives 9 to the FastAPI answer and 6 to the OCR one; the verifier agrees.
fn agreeing(stage: Stage, body: &Value) -> Reply {
    let fastapi = prompt_text(body).contains("FastAPI is a modern");
    let marks = if fastapi { 9.0 } else { 6.0 };
    match stage {
        Stage::Evaluator => evaluator(
            marks,
            if fastapi {
                "The student's answer closely matches the standard answer."
            } else {
                "The student's answer is partially correct but lacks detail."
            },
        ),
        Stage::Verifier => verifier(true, marks),
        _ => Reply::Status(500),
    }
}

#[tokio::test]
async fn the_spec_example_is_graded_with_two_calls_per_question() {
    spec_example_is_graded(None).await;
}

#[tokio::test]
async fn the_spec_example_is_graded_and_stored_on_postgres() {
    if let Some(schema) = PostgresSchema::create().await {
        spec_example_is_graded(Some(&schema.url)).await;
        schema.drop_schema().await;
    }
}

/// The contract's example, on the given database (`None`: the embedded SQLite).
/// A backend that answers 500 to the prompts `down_for` picks until the outage ends, and
/// `grading` to the rest.
struct Outage(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Outage {
    async fn start(
        down_for: impl Fn(&str) -> bool + Send + Sync + 'static,
        grading: impl Fn(Stage, &Value) -> Reply + Send + Sync + 'static,
    ) -> (FakeLlm, Outage) {
        let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = over.clone();
        let llm = FakeLlm::start(move |stage, body| {
            if !seen.load(std::sync::atomic::Ordering::SeqCst) && down_for(&prompt_text(body)) {
                return Reply::Status(500);
            }
            grading(stage, body)
        })
        .await;
        (llm, Outage(over))
    }

    /// Ends the outage and retries evaluation `id`, which must succeed: its response, and the
    /// text of every prompt the retry sent.
    async fn end_and_retry(
        &self,
        app: &crate::helpers::TestApp,
        llm: &FakeLlm,
        id: &str,
    ) -> (Value, Vec<String>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        let before = llm.requests().len();
        let (status, retried, _) = app
            .post(&format!("/evaluations/{id}/retry"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{retried}");
        let prompts = llm.requests()[before..]
            .iter()
            .map(|(_, request)| prompt_text(request))
            .collect();
        (retried, prompts)
    }
}

async fn spec_example_is_graded(database_url: Option<&str>) {
    let llm = FakeLlm::start(agreeing).await;
    let app = spawn_app_with(|s| {
        llm.configure(s);
        s.database_url = database_url.unwrap_or_default().to_string();
    })
    .await;

    let (status, body, content_type) = app.post("/evaluate-answers", &spec_example()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(body["status"], "success");
    assert_eq!(body["user_id"], "USER123");
    assert_eq!(body["course_code"], "CA-FND-2024");
    assert_eq!(body["exam_code"], "CA-FO-PAPER1");
    assert_eq!(body["question_paper_code"], "QP001");
    assert_eq!(
        body["message"],
        "Evaluations completed and results returned."
    );
    // No exam is stored here, so the exam's marks are the sum of the questions'.
    assert_eq!(body["total_exam_marks"], 20.0);
    assert_eq!(body["final_score"], 15.0);
    let items = body["evaluation"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["question_number"], "1.a");
    assert_eq!(items[0]["marks_awarded"], 9.0);
    assert_eq!(items[0]["total_marks"], 10.0);
    assert_eq!(
        items[0]["llm_evaluation"],
        "The student's answer closely matches the standard answer."
    );
    assert_eq!(items[1]["question_number"], "1.b");
    assert_eq!(items[1]["marks_awarded"], 6.0);
    assert_eq!(llm.calls(Stage::Evaluator), 2);
    assert_eq!(llm.calls(Stage::Verifier), 2);
    assert_eq!(llm.calls(Stage::Arbiter), 0);

    // Stored, with every stage, and listed.
    let id = body["evaluation_id"].as_str().unwrap();
    let (status, stored, _) = app.get(&format!("/evaluations/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stored["version"], 1);
    let stages = stored["items"][0]["stages"].as_array().unwrap();
    // The questions are worth more than the embedded grader was calibrated on: its estimate
    // decides no review, so it is stored beside the LLM stages only when it is in by the
    // time their marks are (not waited for), and the flag says so.
    let roles = stage_roles(&stored["items"][0]);
    assert_eq!(roles[..2], ["evaluator", "verifier"]);
    assert!(
        roles[2..].is_empty() || roles[2..] == ["second_opinion"],
        "{roles:?}"
    );
    for item in [&items[0], &items[1], &stored["items"][0]] {
        assert_eq!(item["flags"], json!(["beyond_calibration"]), "{item}");
    }
    assert_eq!(stages[0]["model"], "fake-grader");
    assert_eq!(stages[0]["prompt_tokens"], 120);
    assert_eq!(stages[1]["role"], "verifier");
    assert_eq!(stored["items"][0]["final_stage"], "evaluator");

    // Grading the same answers again costs no LLM call (memoised) and is a new version.
    let (status, again, _) = app.post("/evaluate-answers", &spec_example()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["final_score"], 15.0);
    assert_eq!(again["version"], 2);
    assert_eq!(
        llm.requests().len(),
        4,
        "no second call for identical answers"
    );
    let (_, list, _) = app
        .get("/evaluations?user_id=USER123&question_paper_code=QP001")
        .await;
    assert_eq!(list.as_array().unwrap().len(), 2, "old versions are kept");
}

#[tokio::test]
async fn a_zero_second_opinion_share_leaves_the_llm_stages_alone() {
    let llm = FakeLlm::start(agreeing).await;
    let app = spawn_app_with(|s| {
        llm.configure(s);
        s.grading.second_opinion_fraction = 0.0;
    })
    .await;
    let (status, body, _) = app.post("/evaluate-answers", &spec_example()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["final_score"], 15.0);
    let id = body["evaluation_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/evaluations/{id}")).await;
    for item in stored["items"].as_array().unwrap() {
        assert_eq!(stage_roles(item), ["evaluator", "verifier"], "{item}");
        // Not even the flag a second opinion beyond its calibration leaves.
        assert_eq!(item["flags"], json!([]), "{item}");
    }
}

#[tokio::test]
async fn disagreement_goes_to_the_arbiter_whose_marks_stand() {
    let llm = FakeLlm::start(|stage, _| match stage {
        Stage::Evaluator => evaluator(9.0, "Generous."),
        Stage::Verifier => verifier(false, 4.0),
        Stage::Arbiter => arbiter(5.5, "Partly right: the purpose of APIs is missing."),
        Stage::Unknown => Reply::Status(400),
    })
    .await;
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let (status, body, _) = app.post("/evaluate-answers", &spec_example()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["evaluation"][0]["marks_awarded"], 5.5);
    assert_eq!(
        body["evaluation"][0]["llm_evaluation"],
        "Partly right: the purpose of APIs is missing."
    );
    assert_eq!(body["final_score"], 11.0);
    assert_eq!(llm.calls(Stage::Arbiter), 2);
}

#[tokio::test]
async fn a_failing_backend_never_invents_marks_and_failures_can_be_retried() {
    let (llm, outage) = Outage::start(|prompt| prompt.contains("OCR is Optical"), agreeing).await;
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let (status, body, _) = app.post("/evaluate-answers", &spec_example()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "partial");
    assert_eq!(body["evaluation"][0]["marks_awarded"], 9.0);
    assert_eq!(body["evaluation"][1]["marks_awarded"], Value::Null);
    assert_eq!(body["evaluation"][1]["status"], "failed");
    assert!(body["evaluation"][1]["error"].as_str().unwrap().len() > 5);
    assert_eq!(body["final_score"], 9.0, "only graded questions count");

    let id = body["evaluation_id"].as_str().unwrap();
    let (retried, _) = outage.end_and_retry(&app, &llm, id).await;
    assert_eq!(retried["status"], "success");
    assert_eq!(retried["version"], 2);
    assert_eq!(retried["evaluation"][1]["marks_awarded"], 6.0);
    assert_eq!(retried["final_score"], 15.0);
}

/// An evaluator giving 4 marks and a verifier agreeing.
fn four_of_five(stage: Stage, _: &Value) -> Reply {
    match stage {
        Stage::Evaluator => evaluator(4.0, "Mostly right."),
        Stage::Verifier => verifier(true, 4.0),
        _ => Reply::Status(400),
    }
}

/// A service grading with `llm`, its test catalog's question 1.a stored as `question`.
async fn app_asking(llm: &FakeLlm, question: &str) -> crate::helpers::TestApp {
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let mut catalog = crate::helpers::test_catalog();
    catalog["question_papers"][0]["questions"][0]["question_text"] = json!(question);
    let catalog: examiner::model::Catalog = serde_json::from_value(catalog).unwrap();
    app.state.store.import_catalog(&catalog).await.unwrap();
    app
}

#[tokio::test]
async fn a_retry_grades_with_the_stored_question_text_as_the_first_attempt_did() {
    const QUESTION: &str = "Explain the going concern concept.";
    let (llm, outage) = Outage::start(|_| true, four_of_five).await;
    let app = app_asking(&llm, QUESTION).await;

    let body = json!({"user_id": "USER123", "course_code": "CA-FND-2024", "exam_code": "CA-FO-PAPER1",
        "question_paper_code": "QP001",
        "qa_pairs": [{"question_number": "1.a", "student_answer": "The business is assumed to keep operating."}]});
    let (status, failed, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{failed}");
    assert!(!llm.requests().is_empty());
    assert!(llm
        .requests()
        .iter()
        .all(|(_, request)| prompt_text(request).contains(QUESTION)));

    let id = failed["evaluation_id"].as_str().unwrap();
    let (retried, prompts) = outage.end_and_retry(&app, &llm, id).await;
    assert_eq!(retried["evaluation"][0]["marks_awarded"], 4.0);
    assert_eq!(prompts.len(), 2, "evaluator and verifier");
    for prompt in &prompts {
        assert!(
            prompt.contains(QUESTION),
            "the retry's prompt names the question: {prompt}"
        );
    }
}

#[tokio::test]
async fn a_stored_question_text_is_used_only_for_the_stored_question() {
    const QUESTION: &str = "Explain the going concern concept.";
    let llm = FakeLlm::start(four_of_five).await;
    let app = app_asking(&llm, QUESTION).await;
    let stored_answer = crate::helpers::test_catalog()["question_papers"][0]["questions"][0]
        ["standard_answer"]
        .clone();

    // Each case grades question 1.a once: whether its prompts name the stored question.
    let cases = [
        ("the stored standard answer", json!(null), true),
        ("the same standard answer sent", stored_answer, true),
        // Another question under the same number, as the spec's example against the demo paper.
        (
            "a standard answer of its own",
            json!("FastAPI is a web framework for building APIs."),
            false,
        ),
    ];
    for (n, (case, standard_answer, names_it)) in cases.into_iter().enumerate() {
        // A different answer each time, so that no prompt is answered from the memo.
        let mut pair = json!({"question_number": "1.a",
            "student_answer": format!("It keeps operating ({n}).")});
        if !standard_answer.is_null() {
            pair["standard_answer"] = standard_answer;
        }
        let body = json!({"user_id": "USER123", "course_code": "CA-FND-2024",
            "exam_code": "CA-FO-PAPER1", "question_paper_code": "QP001", "qa_pairs": [pair]});
        let before = llm.requests().len();
        let (status, graded, _) = app.post("/evaluate-answers", &body).await;
        assert_eq!(status, StatusCode::OK, "{case}: {graded}");
        let prompts = &llm.requests()[before..];
        assert_eq!(prompts.len(), 2, "{case}");
        for (_, request) in prompts {
            assert_eq!(prompt_text(request).contains(QUESTION), names_it, "{case}");
        }
    }
}

#[tokio::test]
async fn a_request_gives_questions_their_text_and_a_retry_keeps_it() {
    const QUESTION: &str = "What is FastAPI, and what is it for?";
    let (llm, outage) =
        Outage::start(|prompt| prompt.contains("FastAPI is a modern"), agreeing).await;
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let mut body = spec_example();
    body["qa_pairs"][0]["question_text"] = json!(QUESTION);
    body["qa_pairs"][1]["question_text"] = json!("  ");
    let (status, partial, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::OK, "{partial}");
    assert_eq!(partial["status"], "partial");
    let asked = |request: &Value| prompt_text(request).contains(QUESTION);
    let requests = llm.requests();
    let (fastapi, ocr): (Vec<_>, Vec<_>) = requests
        .iter()
        .map(|(_, request)| request)
        .partition(|request| prompt_text(request).contains("FastAPI is a modern"));
    assert!(!fastapi.is_empty() && fastapi.iter().all(|r| asked(r)));
    assert!(
        !ocr.is_empty() && !ocr.iter().any(|r| asked(r)),
        "a blank text is none"
    );

    let id = partial["evaluation_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/evaluations/{id}")).await;
    assert_eq!(stored["items"][0]["question_text"], QUESTION, "{stored}");
    assert_eq!(stored["items"][1]["question_text"], Value::Null, "{stored}");

    // No paper is stored: the retry has the text only from the stored evaluation.
    let (retried, prompts) = outage.end_and_retry(&app, &llm, id).await;
    assert_eq!(retried["evaluation"][0]["marks_awarded"], 9.0);
    assert_eq!(prompts.len(), 2, "evaluator and verifier");
    assert!(prompts.iter().all(|prompt| prompt.contains(QUESTION)));
    let (_, stored, _) = app
        .get(&format!(
            "/evaluations/{}",
            retried["evaluation_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stored["items"][0]["question_text"], QUESTION, "{stored}");

    // Only as text.
    let mut bad = spec_example();
    bad["qa_pairs"][0]["question_text"] = json!(42);
    let (status, refused, _) = app.post("/evaluate-answers", &bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("qa_pairs[0].question_text"),
        "{refused}"
    );
}

#[tokio::test]
async fn an_examiner_marks_by_hand_what_no_grader_could() {
    let llm = FakeLlm::start(|stage, body| {
        if prompt_text(body).contains("OCR is Optical") {
            return Reply::Status(500);
        }
        agreeing(stage, body)
    })
    .await;
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let (_, body, _) = app.post("/evaluate-answers", &spec_example()).await;
    assert_eq!(body["status"], "partial", "{body}");
    let id = body["evaluation_id"].as_str().unwrap();
    let calls = llm.requests().len();

    let (status, reviewed, _) = app
        .post(
            &format!("/evaluations/{id}/review"),
            &json!({"questions": [{"question_number": "1.b", "marks_awarded": 5.5}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{reviewed}");
    assert_eq!(reviewed["status"], "success");
    assert_eq!(reviewed["final_score"], 14.5);
    let item = &reviewed["items"][1];
    assert_eq!(item["status"], "graded");
    assert_eq!(item["error"], Value::Null);
    assert_eq!(item["llm_evaluation"], "Marked by an examiner.");
    assert_eq!(stage_roles(item).last(), Some(&"examiner"), "{item}");
    assert_eq!(reviewed["items"][0], {
        let (_, first, _) = app.get(&format!("/evaluations/{id}")).await;
        first["items"][0].clone()
    });
    assert_eq!(llm.requests().len(), calls, "a review calls no grader");
}

#[tokio::test]
async fn nothing_graded_is_a_failure_with_502() {
    let llm = FakeLlm::start(|_, _| Reply::Status(500)).await;
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let (status, body, _) = app.post("/evaluate-answers", &spec_example()).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["status"], "failure");
    assert_eq!(body["final_score"], 0.0);
    assert!(body["evaluation"]
        .as_array()
        .unwrap()
        .iter()
        .all(|i| i["marks_awarded"].is_null()));
}

#[tokio::test]
async fn stored_answers_are_graded_against_the_stored_paper() {
    stored_answers_are_graded(None).await;
}

#[tokio::test]
async fn stored_answers_are_uploaded_and_graded_on_postgres() {
    if let Some(schema) = PostgresSchema::create().await {
        stored_answers_are_graded(Some(&schema.url)).await;
        schema.drop_schema().await;
    }
}

/// Upload, then grade the stored answers, on the given database (`None`: SQLite).
async fn stored_answers_are_graded(database_url: Option<&str>) {
    let llm = FakeLlm::start(|stage, body| {
        let text = prompt_text(body);
        let marks = if text.contains("going concern") {
            4.0
        } else {
            7.0
        };
        match stage {
            Stage::Evaluator => evaluator(marks, "Graded."),
            Stage::Verifier => verifier(true, marks),
            _ => Reply::Status(500),
        }
    })
    .await;
    let app = spawn_app_with(|s| {
        llm.configure(s);
        s.database_url = database_url.unwrap_or_default().to_string();
    })
    .await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let page = images.add(
        "p.png",
        "image/png",
        png(&[
            "1.a The going concern concept means the business will go on.",
            "Q2 Capital expenditure benefits many years.",
        ]),
    );
    let (status, uploaded, _) = app
        .post("/upload-exam-answers", &upload_body(&[("img_1", &page)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");

    let request = json!({"user_id": "USER123", "course_code": "CA-FND-2024",
                         "exam_code": "CA-FO-PAPER1", "question_paper_code": "QP001"});
    let (status, body, _) = app.post("/evaluate-answers", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["total_exam_marks"], 100.0, "from the exam record");
    let items = body["evaluation"].as_array().unwrap();
    let numbers: Vec<&str> = items
        .iter()
        .map(|i| i["question_number"].as_str().unwrap())
        .collect();
    assert_eq!(numbers, ["1.a", "1.b", "2"]);
    assert_eq!(items[0]["marks_awarded"], 4.0);
    assert_eq!(items[1]["marks_awarded"], 0.0);
    assert_eq!(items[1]["status"], "not_answered");
    assert_eq!(
        items[1]["llm_evaluation"],
        "No answer to this question was found in the submitted script."
    );
    assert_eq!(items[1]["flags"], json!([]), "{body}");
    assert_eq!(items[2]["marks_awarded"], 7.0);
    assert_eq!(body["final_score"], 11.0);
    assert_eq!(
        body["message"],
        "Evaluations completed and results returned."
    );
    let (_, stored, _) = app
        .get(&format!(
            "/evaluations/{}",
            body["evaluation_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(stored["submission_id"], uploaded["submission_id"]);

    // Without an upload there is nothing to grade.
    let mut other = request.clone();
    other["user_id"] = json!("NOBODY");
    let (status, body, _) = app.post("/evaluate-answers", &other).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], "failure");

    // A script whose question numbers were not recognised: every question gets 0, and the
    // message says where its text went.
    let unnumbered = images.add(
        "unnumbered.png",
        "image/png",
        png(&["The going concern concept means the business will go on."]),
    );
    let mut upload = upload_body(&[("img_1", &unnumbered)]);
    upload["user_id"] = json!("USER7");
    let (status, uploaded, _) = app.post("/upload-exam-answers", &upload).await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    assert_eq!(uploaded["qa_pairs"], json!([]), "{uploaded}");
    let mut request = request.clone();
    request["user_id"] = json!("USER7");
    let (status, body, _) = app.post("/evaluate-answers", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["final_score"], 0.0);
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("answers none of the paper's questions")
            && message.contains(&format!(
                "unassigned_text of GET /student-answers/{}",
                uploaded["submission_id"].as_str().unwrap()
            )),
        "{message}"
    );

    // A script numbered differently from the paper: its "Q1" for the paper's 1.a and 1.b.
    // That answer matches no question and is not graded, and the questions it may answer
    // say so and ask for an examiner. (Its "2.a" is read as the paper's 2, which has no
    // parts.)
    let renumbered = images.add(
        "renumbered.png",
        "image/png",
        png(&[
            "Q1 The going concern concept means the business will go on.",
            "2.a Capital expenditure benefits many years.",
        ]),
    );
    let mut upload = upload_body(&[("img_1", &renumbered)]);
    upload["user_id"] = json!("USER8");
    let (status, uploaded, _) = app.post("/upload-exam-answers", &upload).await;
    assert_eq!(status, StatusCode::OK, "{uploaded}");
    let submission_id = uploaded["submission_id"].as_str().unwrap();
    request["user_id"] = json!("USER8");
    let (status, body, _) = app.post("/evaluate-answers", &request).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["final_score"], 7.0, "{body}");
    let items = body["evaluation"].as_array().unwrap();
    assert_eq!(items[2]["question_number"], "2", "{body}");
    assert_eq!(items[2]["marks_awarded"], 7.0, "{body}");
    let told: Vec<(&str, &str)> = items[..2]
        .iter()
        .map(|i| {
            assert_eq!(i["status"], "not_answered", "{i}");
            assert_eq!(i["flags"], json!(["answer_numbered_differently"]), "{i}");
            (
                i["question_number"].as_str().unwrap(),
                i["llm_evaluation"].as_str().unwrap(),
            )
        })
        .collect();
    let expected = |number: &str, other: &str| {
        format!(
            "No answer numbered {number} was found in the submitted script. It has an answer \
             numbered {other}, which is not a question of this paper and is not graded: an \
             examiner should check whether it answers this question \
             (GET /student-answers/{submission_id})."
        )
    };
    assert_eq!(
        told,
        [
            ("1.a", expected("1.a", "1").as_str()),
            ("1.b", expected("1.b", "1").as_str()),
        ]
    );
    // The review queue finds them by the flag.
    let (status, listed, _) = app
        .get("/evaluations?user_id=USER8&flag=answer_numbered_differently")
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test]
async fn invalid_evaluation_requests_are_refused() {
    let llm = FakeLlm::start(agreeing).await;
    let app = spawn_app_with(|s| llm.configure(s)).await;
    let mut body = spec_example();
    body["qa_pairs"][0]["question_number"] = json!("banana");
    let (status, answer, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["message"].as_str().unwrap().contains("banana"));

    let mut body = spec_example();
    body["qa_pairs"][1]["question_number"] = json!("1(a)");
    let (status, answer, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("more than once"));

    let mut body = spec_example();
    body["qa_pairs"][0]["total_marks"] = json!(-5);
    let (status, _, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    let mut body = spec_example();
    body["qa_pairs"][0]
        .as_object_mut()
        .unwrap()
        .remove("standard_answer");
    let (status, answer, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(answer["message"]
        .as_str()
        .unwrap()
        .contains("standard_answer"));
    assert_eq!(llm.requests().len(), 0, "nothing was graded");
}

/// Both workflow endpoints answer a body they cannot take in the contract's failure shape,
/// like their other errors: not axum's plain-text refusal. Every 413 names the limit.
#[tokio::test]
async fn bodies_the_workflows_cannot_take_are_refused_in_the_contracts_shape() {
    let llm = FakeLlm::start(agreeing).await;
    let app = spawn_app_with(|s| {
        llm.configure(s);
        s.server.max_body_bytes = 4096;
    })
    .await;
    let mut oversized = spec_example();
    oversized["qa_pairs"][0]["student_answer"] = json!("going concern ".repeat(400));
    for path in ["/evaluate-answers", "/upload-exam-answers"] {
        let (status, body, content_type) = app.post(path, &oversized).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(content_type, "application/json", "{path}");
        assert_eq!(body["status"], "failure", "{path}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("larger than the 4096 bytes the service accepts (server.max_body_bytes)"),
            "{path}: {body}"
        );

        let (status, body, _) = app.post(path, &json!(["USER123", "CA-FND-2024"])).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(body["status"], "failure", "{path}");
        assert!(
            body["message"].as_str().unwrap().contains("not an array"),
            "{path}: {body}"
        );
    }

    // The other endpoints say the same in problem details.
    let course = json!({"course_code": "BIG", "course_name": "x".repeat(5000)});
    let (status, body, content_type) = app.post("/courses", &course).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(content_type, "application/problem+json");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("larger than the 4096 bytes"),
        "{body}"
    );

    // A field of the wrong type is named with its place in the body.
    let mut body = spec_example();
    body["qa_pairs"][1]["total_marks"] = json!("five");
    let (status, answer, _) = app.post("/evaluate-answers", &body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("qa_pairs[1].total_marks"),
        "{answer}"
    );
    assert_eq!(llm.requests().len(), 0, "nothing was graded");
}
