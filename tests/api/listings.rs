//! Result listings through HTTP: paging with `Link` headers, the review queue and status
//! filters, problem details for bad query strings, and a paper's marks sheet.

use reqwest::StatusCode;
use serde_json::{json, Value};

use examiner::config::AuthMode;
use examiner::model::Role;

use crate::helpers::{spawn_app, spawn_app_with, TestApp};

/// Stores an evaluation of one question for `user_id` with these flags and status.
async fn store_evaluation(app: &TestApp, user_id: &str, flags: &[&str], status: &str) -> String {
    store_graded(app, user_id, "QP1", flags, status, json!(3.0)).await
}

/// Stores an evaluation of question 1 (5 marks) of `paper` for `user_id`.
pub async fn store_graded(
    app: &TestApp,
    user_id: &str,
    paper: &str,
    flags: &[&str],
    status: &str,
    marks: Value,
) -> String {
    let evaluation: examiner::model::NewEvaluation = serde_json::from_value(json!({
        "user_id": user_id,
        "course_code": "C1",
        "exam_code": "E1",
        "question_paper_code": paper,
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
            "marks_awarded": marks,
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
        // A page of nothing would look like an empty listing.
        ("/evaluations?limit=0", "limit must be at least 1"),
        ("/student-answers?limit=-1", "limit must be at least 1"),
        ("/student-answers?after=no-such-submission", "previous page"),
        ("/exams?course_code=C1&course_code=C2", "course_code"),
        // A misspelt filter would otherwise list everything, as if it matched.
        ("/evaluations?flags=needs_review", "unknown field `flags`"),
        ("/student-answers?user=U1", "unknown field `user`"),
        ("/question-papers?exam=E1", "unknown field `exam`"),
        ("/question-papers/QP1/marks?fmt=csv", "unknown field `fmt`"),
    ];
    for (path, named) in cases {
        let (status, body, content_type) = app.get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(named), "{path}: {detail}");
    }
}

#[tokio::test]
async fn a_paper_marks_sheet_lists_each_students_newest_marks_as_json_or_csv() {
    let app = spawn_app_with(|s| s.auth.mode = AuthMode::ApiKey).await;
    let staff = app.key(Role::Examiner, None).await.1;
    let student = app.key(Role::Student, Some("=cmd")).await.1;
    // Graded ad hoc: the paper itself is not stored, so the columns come from the marks.
    store_graded(&app, "U2", "ADHOC", &[], "success", json!(2.0)).await;
    let newest = store_graded(
        &app,
        "U2",
        "ADHOC",
        &["needs_review"],
        "success",
        json!(4.5),
    )
    .await;
    store_graded(&app, "=cmd", "ADHOC", &[], "partial", Value::Null).await;
    let get = |path: &str, key: &str, accept: Option<&str>| {
        let mut request = app.client.get(app.url(path)).bearer_auth(key);
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        request.send()
    };

    let response = get("/question-papers/ADHOC/marks", &staff, None)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let sheet: Value = response.json().await.unwrap();
    assert_eq!(
        sheet["questions"],
        json!([{"question_number": "1", "total_marks": 5.0}])
    );
    let students = sheet["students"].as_array().unwrap();
    assert_eq!(students.len(), 2, "{sheet}");
    assert_eq!(students[1]["user_id"], "U2");
    assert_eq!(students[1]["evaluation_id"], newest.as_str());
    assert_eq!(students[1]["version"], 2);
    assert_eq!(students[1]["flags"], json!(["needs_review"]));
    assert_eq!(
        students[1]["marks"],
        json!([{"question_number": "1", "total_marks": 5.0, "marks_awarded": 4.5}])
    );

    let response = get("/question-papers/ADHOC/marks", &staff, Some("text/csv"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/csv; charset=utf-8"
    );
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"ADHOC-marks.csv\""
    );
    let csv = response.text().await.unwrap();
    let lines: Vec<&str> = csv.split("\r\n").collect();
    assert_eq!(
        lines[0],
        "user_id,evaluation_id,version,graded_at,status,final_score,total_exam_marks,1 (5),flags"
    );
    // A user id a spreadsheet would run as a formula is written as text; an ungraded
    // question is an empty cell.
    assert!(lines[1].starts_with("'=cmd,"), "{csv}");
    assert!(lines[1].ends_with(",partial,3,5,,"), "{csv}");
    assert!(lines[2].starts_with(&format!("U2,{newest},2,")), "{csv}");
    assert!(lines[2].ends_with(",success,3,5,4.5,needs_review"), "{csv}");
    assert_eq!(lines[3], "", "{csv}");
    assert_eq!(lines.len(), 4, "{csv}");

    let same = get("/question-papers/ADHOC/marks?format=csv", &staff, None)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(same, csv);

    for (path, key, status) in [
        (
            "/question-papers/ADHOC/marks",
            &student,
            StatusCode::FORBIDDEN,
        ),
        ("/question-papers/NOPE/marks", &staff, StatusCode::NOT_FOUND),
        (
            "/question-papers/ADHOC/marks?format=xml",
            &staff,
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let response = get(path, key, None).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}

#[tokio::test]
async fn a_stored_paper_gives_the_marks_sheet_its_columns() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    store_graded(&app, "U1", "QP001", &[], "partial", json!(4.0)).await;
    let (status, sheet, _) = app.get("/question-papers/QP001/marks").await;
    assert_eq!(status, StatusCode::OK);
    let columns: Vec<&str> = sheet["questions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["question_number"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["1.a", "1.b", "2"]);
    let csv = app.text("/question-papers/QP001/marks?format=csv").await;
    let header = csv.lines().next().unwrap();
    assert!(
        header.ends_with(",1.a (5),1.b (5),2 (10),flags"),
        "{header}"
    );
    // The stored question 1 is not on this paper: its marks have no column.
    assert!(
        csv.lines().nth(1).unwrap().ends_with(",partial,3,5,,,,"),
        "{csv}"
    );
}
