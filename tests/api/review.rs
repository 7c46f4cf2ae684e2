//! An examiner's review through HTTP: marks set by hand on flagged questions, stored as a new
//! version that empties the review queue, and every way a review is refused.

use reqwest::{Method as M, StatusCode};
use serde_json::{json, Value};

use examiner::config::AuthMode;
use examiner::model::Role;

use crate::helpers::{send, spawn_app, spawn_app_with, TestApp};
use crate::listings::store_graded;

async fn review(app: &TestApp, id: &str, body: Value) -> (StatusCode, Value, String) {
    app.post(&format!("/evaluations/{id}/review"), &body).await
}

async fn listed(app: &TestApp, query: &str) -> Vec<(String, i64)> {
    let (status, body, _) = app.get(&format!("/evaluations?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user_id"].as_str().unwrap().to_string(),
                e["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_review_empties_the_review_queue_and_shows_on_the_marks_sheet() {
    let app = spawn_app().await;
    let u1 = store_graded(&app, "U1", "QP1", &["needs_review"], "success", json!(4.5)).await;
    store_graded(&app, "U2", "QP1", &["needs_review"], "success", json!(1.0)).await;
    assert_eq!(listed(&app, "flag=needs_review&latest=true").await.len(), 2);

    let (status, reviewed, content_type) = review(
        &app,
        &u1,
        json!({"questions": [{"question_number": "1", "marks_awarded": 2,
                              "feedback": "Right idea, but the definition is incomplete.",
                              "note": "The grader missed that the key term is wrong."}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reviewed}");
    assert_eq!(content_type, "application/json");
    assert_eq!(reviewed["version"], 2);
    assert_eq!(reviewed["user_id"], "U1");
    assert_eq!(reviewed["final_score"], 2.0);
    assert_eq!(reviewed["status"], "success");
    let item = &reviewed["items"][0];
    assert_eq!(item["marks_awarded"], 2.0);
    assert_eq!(
        item["llm_evaluation"],
        "Right idea, but the definition is incomplete."
    );
    assert_eq!(
        item["reasoning"],
        "The grader missed that the key term is wrong."
    );
    assert_eq!(item["final_stage"], "examiner");
    assert_eq!(item["flags"], json!(["reviewed"]));
    let stage = item["stages"].as_array().unwrap().last().unwrap();
    assert_eq!(stage["role"], "examiner");
    assert_eq!(stage["previous_marks"], 4.5);
    assert_eq!(stage["reviewer"], Value::Null, "authentication is off");

    // The stored version is the one answered, and the grader's version is kept as it was.
    let new_id = reviewed["evaluation_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/evaluations/{new_id}")).await;
    assert_eq!(stored, reviewed);
    let (_, old, _) = app.get(&format!("/evaluations/{u1}")).await;
    assert_eq!(old["items"][0]["marks_awarded"], 4.5);
    assert_eq!(old["items"][0]["flags"], json!(["needs_review"]));

    // The queue of newest versions has only U2 left; every version is still listed.
    assert_eq!(
        listed(&app, "flag=needs_review&latest=true").await,
        vec![("U2".to_string(), 1)]
    );
    assert_eq!(listed(&app, "flag=needs_review").await.len(), 2);
    assert_eq!(
        listed(&app, "flag=reviewed").await,
        vec![("U1".to_string(), 2)]
    );
    assert_eq!(
        listed(&app, "user_id=U1&latest=true").await,
        vec![("U1".to_string(), 2)]
    );
    let (_, sheet, _) = app.get("/question-papers/QP1/marks").await;
    let row = sheet["students"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["user_id"] == "U1")
        .unwrap()
        .clone();
    assert_eq!(row["version"], 2, "{sheet}");
    assert_eq!(row["marks"][0]["marks_awarded"], 2.0);
    assert_eq!(row["flags"], json!(["reviewed"]));

    // Moderation: U2 is still waiting; the one review lowered 4.5 of 5 to 2.
    let (status, moderation, _) = app.get("/question-papers/QP1/moderation").await;
    assert_eq!(status, StatusCode::OK, "{moderation}");
    assert_eq!(moderation["students"], 2);
    assert_eq!(moderation["questions"], 2);
    assert_eq!(moderation["open_flags"], json!({"needs_review": 1}));
    let agreement = &moderation["agreement"];
    assert_eq!(agreement["reviewed"], 1);
    assert_eq!(agreement["compared"], 1);
    assert_eq!(agreement["lowered"], 1);
    assert_eq!(agreement["mean_change_share"], -0.5);
    assert_eq!(agreement["pearson"], Value::Null, "one comparison");
    assert_eq!(moderation["by_reason"]["needs_review"]["lowered"], 1);
    assert_eq!(
        moderation["by_reason"].as_object().unwrap().len(),
        1,
        "{moderation}"
    );
    assert_eq!(moderation["by_question"][0]["question_number"], "1");
    assert_eq!(moderation["by_question"][0]["total_marks"], 5.0);
    let (status, problem, _) = app.get("/question-papers/NOPE/moderation").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("\"NOPE\" does not exist and no evaluation of it is stored"),
        "{problem}"
    );

    // Metrics tell a review from a grading.
    let metrics = app.text("/metrics").await;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("examiner_evaluations_total{") && l.contains("change=\"review\"")
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_next_page_of_the_queue_keeps_to_newest_versions() {
    let app = spawn_app().await;
    for user in ["U1", "U2", "U3"] {
        store_graded(&app, user, "QP1", &["needs_review"], "success", json!(3.0)).await;
    }
    let response = app
        .client
        .get(app.url("/evaluations?flag=needs_review&latest=true&limit=2"))
        .send()
        .await
        .unwrap();
    let link = response.headers()["link"].to_str().unwrap().to_string();
    assert!(
        link.contains("flag=needs_review&latest=true&limit=2&after="),
        "{link}"
    );
}

#[tokio::test]
async fn only_the_newest_version_can_be_reviewed_or_retried() {
    let app = spawn_app().await;
    let first = store_graded(&app, "U1", "QP1", &[], "success", json!(3.0)).await;
    let body = json!({"questions": [{"question_number": "1", "marks_awarded": 4}]});
    let (status, second, _) = review(&app, &first, body.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second_id = second["evaluation_id"].as_str().unwrap();

    let (status, problem, content_type) = review(&app, &first, body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("version 1 is not the newest: version 2")
            && detail.contains(&format!("read evaluation {second_id}")),
        "{detail}"
    );
    let (status, retried, _) = app
        .post(&format!("/evaluations/{first}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{retried}");
    assert_eq!(listed(&app, "user_id=U1").await.len(), 2, "nothing stored");

    // The newest can be reviewed again, from its own marks.
    let (status, third, _) = review(
        &app,
        second_id,
        json!({"questions": [{"question_number": "1", "marks_awarded": 3.5}]}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    assert_eq!(third["version"], 3);
    let stages = third["items"][0]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "one examiner stage per review");
    assert_eq!(stages[1]["previous_marks"], 4.0);
    assert_eq!(stages[1]["previous_stage"], "examiner");
}

#[tokio::test]
async fn bad_reviews_are_refused_with_problem_details_and_store_nothing() {
    let app = spawn_app().await;
    let id = store_graded(&app, "U1", "QP1", &[], "success", json!(3.0)).await;
    let one = |question: Value| json!({"questions": [question]});
    let cases = [
        (
            one(json!({"question_number": "2", "marks_awarded": 1})),
            "question 2 is not in this evaluation; its questions are 1",
        ),
        (
            one(json!({"question_number": "1", "marks_awarded": 6})),
            "marks_awarded 6 is outside 0 to 5",
        ),
        (
            one(json!({"question_number": "1", "marks_awarded": -1})),
            "is outside 0 to 5",
        ),
        (
            one(json!({"question_number": "1", "marks_awarded": 2.25})),
            "not a multiple of the paper's marks step 0.5",
        ),
        (
            json!({"questions": [{"question_number": "1", "marks_awarded": 1},
                                 {"question_number": "1", "marks_awarded": 2}]}),
            "question 1 is given twice",
        ),
        (json!({"questions": []}), "questions is empty"),
        (
            one(json!({"question_number": "one", "marks_awarded": 1})),
            "\"one\" is not a question number",
        ),
        (
            one(json!({"question_number": "1", "marks": 1})),
            "unknown field `marks`",
        ),
        (
            one(json!({"question_number": "1", "marks_awarded": 1, "note": "x".repeat(20_001)})),
            "question 1: note is 20001 characters long",
        ),
    ];
    // All well-formed JSON that does not make a review: 422.
    for (body, detail) in cases {
        let (status, problem, content_type) = review(&app, &id, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(content_type, "application/problem+json");
        let said = problem["detail"].as_str().unwrap();
        assert!(said.contains(detail), "{body}: {said}");
    }
    let (status, problem, _) = review(
        &app,
        "no-such-evaluation",
        json!({"questions": [{"question_number": "1", "marks_awarded": 1}]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(
        listed(&app, "").await.len(),
        1,
        "no refused review was stored"
    );
}

#[tokio::test]
async fn students_cannot_review_and_reviews_name_the_examiners_key() {
    let app = spawn_app_with(|s| s.auth.mode = AuthMode::ApiKey).await;
    let (examiner_key, examiner) = app.key(Role::Examiner, None).await;
    let student = app.key(Role::Student, Some("U1")).await.1;
    let id = store_graded(&app, "U1", "QP1", &["needs_review"], "success", json!(3.0)).await;
    let review = async |key: &str| {
        let body = json!({"questions": [{"question_number": "1", "marks_awarded": 5}]});
        let path = format!("/evaluations/{id}/review");
        send(&app, M::POST, &path, Some(key), Some(&body)).await
    };
    let (status, problem, _) = review(&student).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let moderation = "/question-papers/QP1/moderation";
    let (status, _, _) = send(&app, M::GET, moderation, Some(&student), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, reviewed, _) = review(&examiner).await;
    assert_eq!(status, StatusCode::CREATED, "{reviewed}");
    let stage = reviewed["items"][0]["stages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(stage["reviewer"], examiner_key.key_id.as_str());

    // The student sees the examiner's marks and feedback, not the examiner's note or stages.
    let new_id = reviewed["evaluation_id"].as_str().unwrap();
    let path = format!("/evaluations/{new_id}");
    let (status, seen, _) = send(&app, M::GET, &path, Some(&student), None).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["items"][0]["marks_awarded"], 5.0);
    assert!(seen["items"][0].get("stages").is_none());
    assert!(seen["items"][0].get("reasoning").is_none());
}

#[tokio::test]
async fn a_students_regrade_request_joins_the_queue_until_an_examiner_reviews_it() {
    let app = spawn_app_with(|s| s.auth.mode = AuthMode::ApiKey).await;
    let (examiner_key, examiner) = app.key(Role::Examiner, None).await;
    let (student_key, student) = app.key(Role::Student, Some("U1")).await;
    let other = app.key(Role::Student, Some("U2")).await.1;
    let id = store_graded(&app, "U1", "QP1", &[], "success", json!(2.0)).await;
    let regrade = async |key: &str, id: &str, body: &Value| {
        let path = format!("/evaluations/{id}/regrade-request");
        send(&app, M::POST, &path, Some(key), Some(body)).await
    };
    let read = async |key: &str, path: &str| send(&app, M::GET, path, Some(key), None).await.1;
    let ask = json!({"question_number": "1", "comment": "  My second paragraph was not marked.  "});

    // Someone else's evaluation is not there for another student.
    let (status, _, _) = regrade(&other, &id, &ask).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (body, detail) in [
        (
            json!({"question_number": "1", "comment": " "}),
            "comment is empty",
        ),
        (
            json!({"question_number": "1", "comment": "x".repeat(2_001)}),
            "comment is 2001 characters long; the limit is 2000",
        ),
        (
            json!({"question_number": "7", "comment": "please"}),
            "question 7 is not in this evaluation",
        ),
    ] {
        let (status, problem, _) = regrade(&student, &id, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(detail),
            "{problem}"
        );
    }

    let (status, requested, headers) = regrade(&student, &id, &ask).await;
    assert_eq!(status, StatusCode::CREATED, "{requested}");
    assert_eq!(requested["version"], 2);
    let item = &requested["items"][0];
    assert_eq!(item["marks_awarded"], 2.0, "the marks stay until reviewed");
    assert_eq!(item["flags"], json!(["regrade_requested"]));
    assert!(item.get("stages").is_none(), "students see no stages");
    // But they see what they asked, and that it waits.
    let mine = &item["regrade_requests"];
    assert_eq!(mine.as_array().unwrap().len(), 1, "{item}");
    assert_eq!(mine[0]["comment"], "My second paragraph was not marked.");
    assert_eq!(mine[0]["marks_at_request"], 2.0);
    assert!(mine[0]["requested_at"].is_string(), "{mine}");
    assert_eq!(mine[0]["reviewed_at"], Value::Null);
    assert!(mine[0].get("requested_by").is_none(), "{mine}");
    let requested_id = requested["evaluation_id"].as_str().unwrap().to_string();

    assert_eq!(
        headers["location"],
        format!("/evaluations/{requested_id}").as_str()
    );

    let (status, problem, _) = regrade(&student, &requested_id, &ask).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("already requested and waits for an examiner"),
        "{problem}"
    );
    let (status, _, _) = regrade(&student, &id, &ask).await;
    assert_eq!(status, StatusCode::CONFLICT, "an old version");

    // The examiner sees the request in the queue, with the comment and who asked.
    let queue = async || read(&examiner, "/evaluations?flag=regrade_requested&latest=true").await;
    let waiting = queue().await;
    assert_eq!(waiting.as_array().unwrap().len(), 1, "{waiting}");
    assert_eq!(waiting[0]["evaluation_id"], requested_id.as_str());
    let full = read(&examiner, &format!("/evaluations/{requested_id}")).await;
    let stage = full["items"][0]["stages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(stage["role"], "regrade_request");
    assert_eq!(stage["comment"], "My second paragraph was not marked.");
    assert_eq!(stage["requested_by"], student_key.key_id.as_str());
    assert_eq!(stage["marks"], 2.0);

    let review = json!({"questions": [{"question_number": "1", "marks_awarded": 3.5,
                                       "feedback": "The second paragraph earns 1.5 more."}]});
    let path = format!("/evaluations/{requested_id}/review");
    let (status, reviewed, _) = send(&app, M::POST, &path, Some(&examiner), Some(&review)).await;
    assert_eq!(status, StatusCode::CREATED, "{reviewed}");
    assert_eq!(reviewed["items"][0]["flags"], json!(["reviewed"]));
    assert_eq!(
        reviewed["items"][0]["stages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["reviewer"],
        examiner_key.key_id.as_str()
    );
    assert_eq!(queue().await, json!([]));
    let reviewed_id = reviewed["evaluation_id"].as_str().unwrap();
    // The student sees the review's time beside the request, and the examiner's feedback.
    let seen = read(&student, &format!("/evaluations/{reviewed_id}")).await;
    let item = &seen["items"][0];
    assert_eq!(item["marks_awarded"], 3.5);
    assert_eq!(
        item["llm_evaluation"],
        "The second paragraph earns 1.5 more."
    );
    let answered = &item["regrade_requests"][0];
    assert_eq!(
        answered["reviewed_at"],
        reviewed["items"][0]["stages"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()["reviewed_at"]
    );
    assert!(answered["reviewed_at"].is_string(), "{answered}");
    // And may ask again about the reviewed marks.
    let (status, _, _) = regrade(&student, reviewed_id, &ask).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn regrade_requests_close_with_the_window_but_staff_may_still_ask() {
    let app = spawn_app_with(|s| {
        s.auth.mode = AuthMode::ApiKey;
        s.grading.regrade_window_days = 14;
    })
    .await;
    let examiner = app.key(Role::Examiner, None).await.1;
    let late = app.key(Role::Student, Some("U1")).await.1;
    let prompt = app.key(Role::Student, Some("U2")).await.1;
    let regrade = async |key: &str, id: &str| {
        let body = json!({"question_number": "1", "comment": "Please look again."});
        let path = format!("/evaluations/{id}/regrade-request");
        send(&app, M::POST, &path, Some(key), Some(&body)).await
    };
    let old = store_graded(&app, "U1", "QP1", &[], "success", json!(2.0)).await;
    let recent = store_graded(&app, "U2", "QP1", &[], "success", json!(2.0)).await;
    // U1's marks came out 15 days ago (a second version since does not extend the window).
    let newer = store_graded(&app, "U1", "QP1", &[], "success", json!(2.5)).await;
    let database = app.state.settings.data_dir.join("examiner.db");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", database.display()))
        .await
        .unwrap();
    let first = chrono::Utc::now() - chrono::Duration::days(15);
    sqlx::query("UPDATE evaluations SET created_at = $1 WHERE evaluation_id = $2")
        .bind(first.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .bind(&old)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let (status, problem, _) = regrade(&late, &newer).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("regrade requests on paper QP1 closed at")
            && detail.contains("14 days after the first marks"),
        "{detail}"
    );
    // Staff may ask on the student's behalf; another student within the window may ask.
    let (status, body, _) = regrade(&examiner, &newer).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body, _) = regrade(&prompt, &recent).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
