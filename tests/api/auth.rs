//! Who may do what, per endpoint; rate limits; the in-flight cap; idempotent retries and
//! duplicate uploads.

use examiner::config::AuthMode;
use examiner::model::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::fake_llm::{evaluator, verifier, FakeLlm, Reply, Stage};
use crate::helpers::{png, send, spawn_app_with, split, upload_body, ImageServer, TestApp};

async fn key(app: &TestApp, role: Role, user_id: Option<&str>) -> String {
    app.key(role, user_id).await.1
}

fn grading(stage: Stage, _: &Value) -> Reply {
    match stage {
        Stage::Evaluator => evaluator(3.0, "Partly right."),
        Stage::Verifier => verifier(true, 3.0),
        _ => Reply::Status(500),
    }
}

#[tokio::test]
async fn every_endpoint_enforces_roles() {
    use reqwest::Method as M;
    let llm = FakeLlm::start(grading).await;
    let app = spawn_app_with(|s| {
        s.auth.mode = AuthMode::ApiKey;
        llm.configure(s);
    })
    .await;
    app.seed_catalog().await;
    let admin = key(&app, Role::Admin, None).await;
    let examiner = key(&app, Role::Examiner, None).await;
    let ravi = key(&app, Role::Student, Some("RAVI")).await;
    let asha = key(&app, Role::Student, Some("ASHA")).await;

    // No key, a bad key: 401 with a challenge; problem+json on the catalog.
    let (status, body, headers) = send(&app, M::GET, "/courses", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["detail"].as_str().unwrap().contains("Bearer"));
    assert!(headers.contains_key("www-authenticate"));
    let (status, _, _) = send(&app, M::GET, "/courses", Some("exm_wrong"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // ... and the contract's shape on the workflows.
    let upload = upload_body(&[("img_1", "data:image/png;base64,AAAA")]);
    let (status, body, _) = send(&app, M::POST, "/upload-exam-answers", None, Some(&upload)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status"], "failure");
    // Health, metrics and docs stay open.
    assert_eq!(
        send(&app, M::GET, "/healthz", None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, M::GET, "/openapi.json", None, None).await.0,
        StatusCode::OK
    );

    // Catalog writes: staff only.
    let course = json!({"course_code": "NEW", "course_name": "New"});
    assert_eq!(
        send(&app, M::POST, "/courses", Some(&ravi), Some(&course))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, M::POST, "/courses", Some(&examiner), Some(&course))
            .await
            .0,
        StatusCode::CREATED
    );
    assert_eq!(
        send(&app, M::GET, "/courses", Some(&ravi), None).await.0,
        StatusCode::OK
    );
    // Students never see standard answers.
    let (status, paper, _) = send(&app, M::GET, "/question-papers/QP001", Some(&ravi), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        paper["questions"][0].get("standard_answer").is_none(),
        "{paper}"
    );
    assert!(paper["questions"][0]["total_marks"].is_number());
    let (_, paper, _) = send(
        &app,
        M::GET,
        "/question-papers/QP001",
        Some(&examiner),
        None,
    )
    .await;
    assert!(paper["questions"][0]["standard_answer"].is_string());
    assert_eq!(
        send(&app, M::GET, "/users", Some(&ravi), None).await.0,
        StatusCode::FORBIDDEN
    );

    // Keys: admins only.
    let new_key = json!({"role": "student", "user_id": "NEWBIE"});
    assert_eq!(
        send(&app, M::POST, "/keys", Some(&examiner), Some(&new_key))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, created, _) = send(&app, M::POST, "/keys", Some(&admin), Some(&new_key)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_string();
    assert_eq!(
        send(&app, M::GET, "/student-answers", Some(&secret), None)
            .await
            .0,
        StatusCode::OK
    );
    let (_, listed, _) = send(&app, M::GET, "/keys", Some(&admin), None).await;
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );
    let key_id = created["key_id"].as_str().unwrap();
    assert_eq!(
        send(
            &app,
            M::DELETE,
            &format!("/keys/{key_id}"),
            Some(&admin),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(&app, M::GET, "/student-answers", Some(&secret), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // Acting for another user is a 403; for oneself it works.
    let mut for_asha = upload_body(&[("img_1", "data:image/png;base64,AAAA")]);
    for_asha["user_id"] = json!("ASHA");
    let (status, body, _) = send(
        &app,
        M::POST,
        "/upload-exam-answers",
        Some(&ravi),
        Some(&for_asha),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let evaluate = |user: &str, standard: Option<&str>| {
        let mut pair = json!({"question_number": "1.a", "student_answer": "A business goes on."});
        if let Some(standard) = standard {
            pair["standard_answer"] = json!(standard);
        }
        json!({"user_id": user, "course_code": "CA-FND-2024", "exam_code": "CA-FO-PAPER1",
               "question_paper_code": "QP001", "qa_pairs": [pair]})
    };
    assert_eq!(
        send(
            &app,
            M::POST,
            "/evaluate-answers",
            Some(&ravi),
            Some(&evaluate("ASHA", None))
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    // A student may not bring an answer key that differs from the stored paper.
    let (status, body, _) = send(
        &app,
        M::POST,
        "/evaluate-answers",
        Some(&ravi),
        Some(&evaluate("RAVI", Some("Anything goes."))),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, graded, _) = send(
        &app,
        M::POST,
        "/evaluate-answers",
        Some(&ravi),
        Some(&evaluate("RAVI", None)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{graded}");
    assert_eq!(graded["evaluation"][0]["marks_awarded"], 3.0);
    // Examiners may grade ad hoc with their own answer key.
    let (status, _, _) = send(
        &app,
        M::POST,
        "/evaluate-answers",
        Some(&examiner),
        Some(&evaluate("ASHA", Some("Anything goes."))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // Reading: own results only, others' are 404 (no probing); students see no answer key.
    let id = graded["evaluation_id"].as_str().unwrap();
    let (status, mine, _) = send(
        &app,
        M::GET,
        &format!("/evaluations/{id}"),
        Some(&ravi),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let item = &mine["items"][0];
    assert!(
        item.get("standard_answer").is_none()
            && item.get("reasoning").is_none()
            && item.get("stages").is_none(),
        "{mine}"
    );
    assert!(item["llm_evaluation"].is_string());
    assert_eq!(
        send(
            &app,
            M::GET,
            &format!("/evaluations/{id}"),
            Some(&asha),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    let (_, full, _) = send(
        &app,
        M::GET,
        &format!("/evaluations/{id}"),
        Some(&examiner),
        None,
    )
    .await;
    assert!(full["items"][0]["stages"].is_array());
    let (_, list, _) = send(&app, M::GET, "/evaluations", Some(&asha), None).await;
    let users: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["ASHA"], "only her own");
    let (_, list, _) = send(&app, M::GET, "/evaluations?user_id=RAVI", Some(&asha), None).await;
    assert_eq!(list.as_array().unwrap().len(), 0);
    let (_, list, _) = send(&app, M::GET, "/evaluations", Some(&examiner), None).await;
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(
        send(
            &app,
            M::POST,
            &format!("/evaluations/{id}/retry"),
            Some(&asha),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Reviews (marks by hand) are for examiners, even on a student's own evaluation.
    let review = json!({"questions": [{"question_number": "1.a", "marks_awarded": 2}]});
    let path = format!("/evaluations/{id}/review");
    for (key, expected) in [
        (&ravi, StatusCode::FORBIDDEN),
        (&asha, StatusCode::FORBIDDEN),
        (&examiner, StatusCode::CREATED),
    ] {
        let (status, body, _) = send(&app, M::POST, &path, Some(key), Some(&review)).await;
        assert_eq!(status, expected, "{body}");
    }
    assert_eq!(
        send(&app, M::GET, "/users/RAVI", Some(&asha), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        send(&app, M::GET, "/users/RAVI", Some(&ravi), None).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn students_are_rate_limited_per_key() {
    let app = spawn_app_with(|s| {
        s.auth.mode = AuthMode::ApiKey;
        s.auth.student_rate.per_minute = 60;
        s.auth.student_rate.burst = 3;
    })
    .await;
    let ravi = key(&app, Role::Student, Some("RAVI")).await;
    let asha = key(&app, Role::Student, Some("ASHA")).await;
    let examiner = key(&app, Role::Examiner, None).await;
    for _ in 0..3 {
        assert_eq!(
            send(&app, reqwest::Method::GET, "/courses", Some(&ravi), None)
                .await
                .0,
            StatusCode::OK
        );
    }
    let (status, body, headers) =
        send(&app, reqwest::Method::GET, "/courses", Some(&ravi), None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    assert_eq!(
        send(&app, reqwest::Method::GET, "/courses", Some(&asha), None)
            .await
            .0,
        StatusCode::OK
    );
    for _ in 0..10 {
        assert_eq!(
            send(
                &app,
                reqwest::Method::GET,
                "/courses",
                Some(&examiner),
                None
            )
            .await
            .0,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn saturation_answers_503_instead_of_queueing() {
    // Slow enough that the first request is still in progress when the second arrives.
    let llm = FakeLlm::start_delayed(std::time::Duration::from_millis(300), grading).await;
    let app = spawn_app_with(|s| {
        s.auth.max_in_flight = 1;
        llm.configure(s);
    })
    .await;
    let body = json!({"user_id": "U", "course_code": "C", "exam_code": "E", "question_paper_code": "P",
        "qa_pairs": [{"question_number": "1", "student_answer": "x y z", "standard_answer": "x", "total_marks": 5}]});
    let first = app
        .client
        .post(app.url("/evaluate-answers"))
        .json(&body)
        .send();
    let second = async {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut other = body.clone();
        other["user_id"] = json!("V");
        app.client
            .post(app.url("/evaluate-answers"))
            .json(&other)
            .send()
            .await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap().status(), StatusCode::OK);
    let second = second.unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().contains_key("retry-after"));
    let (_, body, _) = split(second).await;
    assert_eq!(body["status"], "failure");
}

#[tokio::test]
async fn retried_requests_return_the_first_result_without_new_work() {
    let llm = FakeLlm::start(grading).await;
    let app = spawn_app_with(|s| {
        llm.configure(s);
        s.grading.llm.cache = false;
    })
    .await;
    app.seed_catalog().await;
    let body = json!({"user_id": "U", "course_code": "CA-FND-2024", "exam_code": "CA-FO-PAPER1",
        "question_paper_code": "QP001",
        "qa_pairs": [{"question_number": "1.a", "student_answer": "It goes on operating."}]});
    let send_with_key = |key: &'static str, body: Value| {
        app.client
            .post(app.url("/evaluate-answers"))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    let first = send_with_key("retry-1", body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let first_body = first.text().await.unwrap();
    let calls = llm.requests().len();
    assert_eq!(calls, 2);
    let again = send_with_key("retry-1", body.clone()).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again_body: Value = again.json().await.unwrap();
    assert_eq!(
        again_body,
        serde_json::from_str::<Value>(&first_body).unwrap()
    );
    assert_eq!(llm.requests().len(), calls, "no second LLM work");
    let (_, list, _) = app.get("/evaluations").await;
    assert_eq!(list.as_array().unwrap().len(), 1, "stored once");

    let mut changed = body.clone();
    changed["qa_pairs"][0]["student_answer"] = json!("Something else.");
    let reused = send_with_key("retry-1", changed).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Uploads: same key replays; the same images again are recognised by content hash.
    let images = ImageServer::start().await;
    let page = images.add("p.png", "image/png", png(&["1.a The business goes on."]));
    let upload = upload_body(&[("img_1", &page)]);
    let one = app
        .client
        .post(app.url("/upload-exam-answers"))
        .header("Idempotency-Key", "up-1")
        .json(&upload)
        .send()
        .await
        .unwrap();
    let (status, one, _) = split(one).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["duplicate"], false);
    let hits = images.hits("p.png");
    let two = app
        .client
        .post(app.url("/upload-exam-answers"))
        .header("Idempotency-Key", "up-1")
        .json(&upload)
        .send()
        .await
        .unwrap();
    let (_, two, _) = split(two).await;
    assert_eq!(two, one);
    assert_eq!(images.hits("p.png"), hits, "a replay fetches nothing");
    let (status, three, _) = app.post("/upload-exam-answers", &upload).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(three["duplicate"], true);
    assert_eq!(three["submission_id"], one["submission_id"]);
    let (_, submissions, _) = app.get("/student-answers").await;
    assert_eq!(submissions.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_admin_erases_a_user_with_their_keys_and_replayable_responses() {
    use reqwest::Method as M;
    let llm = FakeLlm::start(grading).await;
    let app = spawn_app_with(|s| {
        s.auth.mode = AuthMode::ApiKey;
        llm.configure(s);
    })
    .await;
    let admin = key(&app, Role::Admin, None).await;
    let examiner = key(&app, Role::Examiner, None).await;
    let ravi = key(&app, Role::Student, Some("RAVI")).await;
    let asha = key(&app, Role::Student, Some("ASHA")).await;
    let evaluate = |user: &str| {
        json!({"user_id": user, "course_code": "C1", "exam_code": "E1",
               "question_paper_code": "ADHOC",
               "qa_pairs": [{"question_number": "1", "student_answer": format!("{user}'s answer."),
                             "standard_answer": "The answer.", "total_marks": 5}]})
    };
    let idempotent = |key: &str, body: Value| {
        app.client
            .post(app.url("/evaluate-answers"))
            .bearer_auth(&examiner)
            .header("Idempotency-Key", key.to_string())
            .json(&body)
            .send()
    };
    let first = idempotent("grade-ravi", evaluate("RAVI")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    for user in ["RAVI", "ASHA"] {
        let (status, body, _) = send(
            &app,
            M::POST,
            "/evaluate-answers",
            Some(&examiner),
            Some(&evaluate(user)),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // Each student reads their results: their keys are verified and remembered.
    for student in [&ravi, &asha] {
        let (status, _, _) = send(&app, M::GET, "/evaluations", Some(student), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let path = "/users/RAVI";
    for key in [&ravi, &examiner] {
        let (status, body, _) = send(&app, M::DELETE, path, Some(key), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }

    let (status, erased, _) = send(&app, M::DELETE, path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK, "{erased}");
    assert_eq!(erased["user_id"], "RAVI");
    assert_eq!(erased["user_record"], true);
    assert_eq!(erased["evaluations"], 2);
    assert_eq!(erased["submissions"], 0);
    assert_eq!(erased["api_keys"].as_array().unwrap().len(), 1);
    assert_eq!(erased["replayable_responses"], 1);
    // The evaluator's and the verifier's replies about RAVI's answer, memoised once and
    // served from the memo for the second evaluation.
    assert_eq!(erased["memoised_results"], 2);
    assert_eq!(llm.calls(Stage::Evaluator), 2);

    // The student's key stopped working at once, though it was verified moments ago.
    let (status, _, _) = send(&app, M::GET, "/evaluations", Some(&ravi), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, listed, _) = send(&app, M::GET, "/evaluations", Some(&admin), None).await;
    let users: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["ASHA"]);
    // The kept response went too: the same idempotent request is graded afresh.
    let again = idempotent("grade-ravi", evaluate("RAVI")).await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    assert!(again.headers().get("idempotent-replayed").is_none());
    // By the model: the memo forgot RAVI's answer, in the store and in memory alike, and
    // kept ASHA's.
    assert_eq!(llm.calls(Stage::Evaluator), 3);
    let (status, body, _) = send(
        &app,
        M::POST,
        "/evaluate-answers",
        Some(&examiner),
        Some(&evaluate("ASHA")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(llm.calls(Stage::Evaluator), 3);

    let (status, _, _) = send(&app, M::DELETE, "/users/NOBODY", Some(&admin), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
