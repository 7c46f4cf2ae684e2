//! Health, metrics, OpenAPI and docs.

use reqwest::StatusCode;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_metrics_openapi_and_docs_answer() {
    let app = spawn_app().await;
    let (status, body, _) = app.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"], "ok");
    // The test process gets the OpenMP limit from .cargo/config.toml, as the binary gives
    // it to itself; without it OCR workers fight over the cores.
    assert_eq!(body["omp_thread_limit"], "1");

    let (status, body, _) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/upload-exam-answers",
        "/evaluate-answers",
        "/question-papers",
        "/question-papers/{question_paper_code}/marks",
        "/evaluations/{evaluation_id}/review",
        "/evaluations/{evaluation_id}/regrade-request",
        "/question-papers/{question_paper_code}/moderation",
        "/healthz",
    ] {
        assert!(body["paths"][path].is_object(), "openapi lists {path}");
    }
    assert!(body["paths"]["/users/{user_id}"]["delete"].is_object());
    let review = &body["paths"]["/evaluations/{evaluation_id}/review"]["post"];
    assert!(review["responses"]["409"].is_object(), "{review}");
    assert!(
        body["components"]["schemas"]["ReviewRequest"].is_object(),
        "the review body is described"
    );

    let docs = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    assert!(html.contains("/docs/swagger-ui-bundle.js"));
    let js = app
        .client
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.text().await.unwrap().len() > 100_000);

    app.get("/courses").await;
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("examiner_http_requests_total"), "{text}");

    let (status, body, content_type) = app.get("/no/such/thing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(content_type, "application/problem+json");
    assert!(body["detail"].is_string());
}
