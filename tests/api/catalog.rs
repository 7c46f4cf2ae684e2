//! Catalog endpoints: creation, idempotency, conflicts, links, validation.

use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_new_user_can_set_up_an_exam_over_http() {
    let app = spawn_app().await;
    let course = json!({"course_code": "CA-FND-2024", "course_name": "CA Foundation"});
    let (status, body, _) = app.post("/courses", &course).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Identical content again succeeds without change.
    let (status, _, _) = app.post("/courses", &course).await;
    assert_eq!(status, StatusCode::OK);
    // Different content under the same key is a conflict.
    let (status, body, content_type) = app
        .post(
            "/courses",
            &json!({"course_code": "CA-FND-2024", "course_name": "Something else"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(content_type, "application/problem+json");
    assert!(body["detail"].as_str().unwrap().contains("CA-FND-2024"));

    let exam = json!({"exam_code": "CA-FO-PAPER1", "course_code": "CA-FND-2024",
                      "exam_name": "Paper 1", "total_exam_marks": 100});
    assert_eq!(app.post("/exams", &exam).await.0, StatusCode::CREATED);

    let paper = json!({
        "question_paper_code": "QP001", "exam_code": "CA-FO-PAPER1",
        "questions": [
            {"question_number": "1(a)", "standard_answer": "Going concern.", "total_marks": 5},
            {"question_number": "Q1b", "standard_answer": "Assets = Liabilities + Capital.", "total_marks": 5}
        ]
    });
    let (status, body, _) = app.post("/question-papers", &paper).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Question numbers are stored in canonical form.
    assert_eq!(body["questions"][0]["question_number"], "1.a");
    assert_eq!(body["questions"][1]["question_number"], "1.b");
    assert_eq!(app.post("/question-papers", &paper).await.0, StatusCode::OK);

    let (status, body, _) = app.get("/question-papers/QP001").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["questions"].as_array().unwrap().len(), 2);
    let (_, body, _) = app.get("/question-papers?exam_code=CA-FO-PAPER1").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (_, body, _) = app.get("/exams?course_code=CA-FND-2024").await;
    assert_eq!(body.as_array().unwrap().len(), 1);
    let (_, body, _) = app.get("/courses").await;
    assert_eq!(body.as_array().unwrap().len(), 1);

    let user = json!({"user_id": "USER123", "name": "Ravi Kumar"});
    assert_eq!(app.post("/users", &user).await.0, StatusCode::CREATED);
    let (status, body, _) = app.get("/users/USER123").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["name"], "Ravi Kumar");
}

#[tokio::test]
async fn links_must_exist_and_input_is_validated() {
    let app = spawn_app().await;
    let (status, body, content_type) = app
        .post(
            "/exams",
            &json!({"exam_code": "E1", "course_code": "NOPE", "exam_name": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/problem+json");
    assert!(body["detail"].as_str().unwrap().contains("NOPE"), "{body}");

    let (status, body, _) = app
        .post("/courses", &json!({"course_code": "", "course_name": "x"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body["detail"].as_str().unwrap().contains("course_code"));

    let (status, body, _) = app
        .post("/courses", &json!({"course_name": "no code"}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("course_code"),
        "{body}"
    );

    let response = app
        .client
        .post(app.url("/courses"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // serde would read an array as the fields in order; the body must be an object.
    let (status, body, content_type) = app.post("/courses", &json!(["C9", "Positional"])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(content_type, "application/problem+json");
    assert!(
        body["detail"].as_str().unwrap().contains("not an array"),
        "{body}"
    );
    let (status, _, _) = app.get("/courses/C9").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was created");

    app.post("/courses", &json!({"course_code": "C", "course_name": "C"}))
        .await;
    app.post(
        "/exams",
        &json!({"exam_code": "E", "course_code": "C", "exam_name": "E"}),
    )
    .await;
    for (paper, needle) in [
        (
            json!({"question_paper_code": "P", "exam_code": "E", "questions": []}),
            "at least one question",
        ),
        (
            json!({"question_paper_code": "P", "exam_code": "E", "questions": [
            {"question_number": "banana", "standard_answer": "a", "total_marks": 1}]}),
            "banana",
        ),
        (
            json!({"question_paper_code": "P", "exam_code": "E", "questions": [
            {"question_number": "1", "standard_answer": "a", "total_marks": -1}]}),
            "total_marks",
        ),
        (
            json!({"question_paper_code": "P", "exam_code": "E", "questions": [
            {"question_number": "1", "standard_answer": "a", "total_marks": 1},
            {"question_number": "Q1", "standard_answer": "b", "total_marks": 1}]}),
            "more than once",
        ),
    ] {
        let (status, body, _) = app.post("/question-papers", &paper).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{paper}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(needle),
            "{needle}: {body}"
        );
    }
    let (status, _, _) = app.get("/question-papers/P").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
