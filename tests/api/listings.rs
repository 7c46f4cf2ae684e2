//! Result listings through HTTP: paging with `Link` headers, the review queue and status
//! filters, and problem details for bad query strings.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, TestApp};

/// Stores an evaluation of one question for `user_id` with these flags and status.
async fn store_evaluation(app: &TestApp, user_id: &str, flags: &[&str], status: &str) -> String {
    let evaluation: examiner::model::NewEvaluation = serde_json::from_value(json!({
        "user_id": user_id,
        "course_code": "C1",
        "exam_code": "E1",
        "question_paper_code": "QP1",
        "submission_id": null,
        "grader": "llm",
        "total_exam_marks": 5.0,
        "final_score": 3.0,
        "status": status,
        "items": [{
            "question_number": "1",
            "student_answer": "an answer",
            "standard_answer": "the answer",
            "total_marks": 5.0,
            "marks_awarded": 3.0,
            "llm_evaluation": "feedback",
            "reasoning": null,
            "status": "graded",
            "error": null,
            "flags": flags,
            "final_stage": "evaluator",
            "stages": []
        }]
    }))
    .unwrap();
    app.state
        .store
        .insert_evaluation(evaluation)
        .await
        .unwrap()
        .evaluation_id
}

/// The `rel="next"` target of a response's `Link` header, if any.
fn next_link(response: &reqwest::Response) -> Option<String> {
    let link = response.headers().get("link")?.to_str().unwrap();
    let target = link.strip_prefix('<')?.split_once(">; rel=\"next\"")?.0;
    Some(target.to_string())
}

/// Follows `Link` headers from `path` to the last page; returns the ids listed and the
/// number of pages.
async fn follow(app: &TestApp, path: &str, id_field: &str) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut next = Some(path.to_string());
    while let Some(path) = next {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        next = next_link(&response);
        let page: Vec<Value> = response.json().await.unwrap();
        ids.extend(
            page.iter()
                .map(|e| e[id_field].as_str().unwrap().to_string()),
        );
        pages += 1;
        assert!(pages <= 10, "the links never end");
    }
    (ids, pages)
}

#[tokio::test]
async fn evaluations_page_through_links_and_filter_by_flag_and_status() {
    let app = spawn_app().await;
    let mut stored = Vec::new();
    for n in 0..5 {
        let flags: &[&str] = if n % 2 == 0 { &["needs_review"] } else { &[] };
        let status = if n == 4 { "partial" } else { "success" };
        stored.push(store_evaluation(&app, "U1", flags, status).await);
    }
    store_evaluation(&app, "U2", &["needs_review"], "success").await;
    let newest_first: Vec<String> = stored.iter().rev().cloned().collect();

    let (ids, pages) = follow(&app, "/evaluations?user_id=U1&limit=2", "evaluation_id").await;
    assert_eq!(ids, newest_first);
    assert_eq!(pages, 3, "2 + 2 + 1");

    // The review queue: only evaluations with a question flagged `needs_review`, each
    // summary saying so.
    let (ids, _) = follow(
        &app,
        "/evaluations?user_id=U1&flag=needs_review&limit=1",
        "evaluation_id",
    )
    .await;
    assert_eq!(
        ids,
        [stored[4].clone(), stored[2].clone(), stored[0].clone()]
    );
    let (_, queue, _) = app
        .get("/evaluations?flag=needs_review&question_paper_code=QP1")
        .await;
    let queue = queue.as_array().unwrap();
    assert_eq!(queue.len(), 4);
    assert!(queue.iter().all(|e| e["flags"] == json!(["needs_review"])));

    let (_, partial, _) = app.get("/evaluations?status=partial").await;
    assert_eq!(partial.as_array().unwrap().len(), 1);
    assert_eq!(partial[0]["evaluation_id"], stored[4].as_str());

    // A page that is not full has no link.
    let response = app
        .client
        .get(app.url("/evaluations?limit=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(next_link(&response), None);
}

#[tokio::test]
async fn bad_listing_queries_are_problem_details() {
    let app = spawn_app().await;
    let cases = [
        ("/evaluations?limit=ten", "limit"),
        ("/evaluations?status=done", "status"),
        ("/evaluations?flag=needs_reveiw", "needs_review"),
        ("/evaluations?after=no-such-evaluation", "previous page"),
        ("/student-answers?limit=-x", "limit"),
        ("/student-answers?after=no-such-submission", "previous page"),
        ("/exams?course_code=C1&course_code=C2", "course_code"),
    ];
    for (path, named) in cases {
        let (status, body, content_type) = app.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(named), "{path}: {detail}");
    }
}
