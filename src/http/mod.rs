//! The HTTP edge: routes, request parsing, and operational endpoints. Handlers are thin —
//! they validate what arrives and call the workflows; all status-code decisions live in
//! [`error`].

pub mod auth;
mod body;
pub mod catalog;
mod envelope;
pub mod error;
pub mod keys;
pub mod marks;
mod ops;
pub mod review;
pub mod validate;
pub mod workflows;

use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

pub use body::ApiJson;
pub use error::{ApiError, SpecError};

use crate::app::AppState;

/// Query-string extractor whose rejections are problem details.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The OpenAPI description, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Examiner",
        description = "Grades students' exam answer scripts: upload answer images (OCR and question-answer segmentation), then evaluate the answers with a three-stage LLM process or the embedded grader."
    ),
    paths(
        workflows::upload_exam_answers,
        workflows::evaluate_answers,
        workflows::retry_evaluation,
        review::review_evaluation,
        review::request_regrade,
        workflows::list_student_answers,
        workflows::get_student_answers,
        workflows::list_evaluations,
        workflows::get_evaluation,
        marks::marks_sheet,
        marks::moderation_report,
        catalog::create_course,
        catalog::list_courses,
        catalog::get_course,
        catalog::create_exam,
        catalog::list_exams,
        catalog::get_exam,
        catalog::create_question_paper,
        catalog::list_question_papers,
        catalog::get_question_paper,
        catalog::create_user,
        catalog::list_users,
        catalog::get_user,
        catalog::erase_user,
        keys::create,
        keys::list,
        keys::revoke,
        ops::healthz,
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "workflows", description = "The two core workflows (fixed contract)"),
        (name = "catalog", description = "Courses, exams, question papers and users"),
        (name = "results", description = "Stored submissions and evaluations"),
        (name = "keys", description = "API keys (admin)"),
        (name = "ops", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-key scheme so the interactive docs offer an "Authorize" button.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Builds the service's router.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.server.max_body_bytes;
    let timeout = Duration::from_secs(state.settings.server.request_timeout_secs);
    Router::new()
        .route("/upload-exam-answers", post(workflows::upload_exam_answers))
        .route("/evaluate-answers", post(workflows::evaluate_answers))
        .route("/student-answers", get(workflows::list_student_answers))
        .route(
            "/student-answers/{submission_id}",
            get(workflows::get_student_answers),
        )
        .route("/evaluations", get(workflows::list_evaluations))
        .route(
            "/evaluations/{evaluation_id}",
            get(workflows::get_evaluation),
        )
        .route(
            "/evaluations/{evaluation_id}/retry",
            post(workflows::retry_evaluation),
        )
        .route(
            "/evaluations/{evaluation_id}/review",
            post(review::review_evaluation),
        )
        .route(
            "/evaluations/{evaluation_id}/regrade-request",
            post(review::request_regrade),
        )
        .route(
            "/courses",
            get(catalog::list_courses).post(catalog::create_course),
        )
        .route("/courses/{course_code}", get(catalog::get_course))
        .route(
            "/exams",
            get(catalog::list_exams).post(catalog::create_exam),
        )
        .route("/exams/{exam_code}", get(catalog::get_exam))
        .route(
            "/question-papers",
            get(catalog::list_question_papers).post(catalog::create_question_paper),
        )
        .route(
            "/question-papers/{question_paper_code}",
            get(catalog::get_question_paper),
        )
        .route(
            "/question-papers/{question_paper_code}/marks",
            get(marks::marks_sheet),
        )
        .route(
            "/question-papers/{question_paper_code}/moderation",
            get(marks::moderation_report),
        )
        .route(
            "/users",
            get(catalog::list_users).post(catalog::create_user),
        )
        .route(
            "/users/{user_id}",
            get(catalog::get_user).delete(catalog::erase_user),
        )
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/{key_id}", axum::routing::delete(keys::revoke))
        .route("/healthz", get(ops::healthz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/docs", get(ops::docs))
        .route("/docs/", get(ops::docs))
        .route("/docs/swagger-ui-bundle.js", get(ops::swagger_js))
        .route("/docs/swagger-ui.css", get(ops::swagger_css))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(middleware::from_fn(record_metrics))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Counts requests and their latency per route (the matched pattern, so ids do not
/// explode the label space).
async fn record_metrics(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("examiner_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status).increment(1);
    metrics::histogram!("examiner_http_request_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
