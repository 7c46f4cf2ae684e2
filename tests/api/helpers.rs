//! The test harness: a real service on a random port with a fresh database, a local HTTP
//! server for answer images, pages rendered from known text, and a scripted
//! chat-completions server standing in for LLM backends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ab_glyph::{FontVec, PxScale};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use examiner::config::Settings;
use examiner::model::{ApiKey, Role};
use image::{ImageFormat, Luma};
use serde_json::{json, Value};

/// A running service.
pub struct TestApp {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub state: examiner::app::AppState,
    _data_dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value, String) {
        let response = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request reaches the service");
        split(response).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value, String) {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the service");
        split(response).await
    }

    /// The body of `GET path` as text, whatever its status.
    pub async fn text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the service")
            .text()
            .await
            .expect("a text body")
    }

    /// A new API key of this role (bound to `user_id` for students): the key and its secret.
    pub async fn key(&self, role: Role, user_id: Option<&str>) -> (ApiKey, String) {
        examiner::http::auth::create_key(
            self.state.store.as_ref(),
            role,
            user_id.map(str::to_string),
            None,
        )
        .await
        .expect("key created")
    }

    /// Creates the demo-like catalog used by most tests.
    pub async fn seed_catalog(&self) {
        let catalog: examiner::model::Catalog =
            serde_json::from_value(test_catalog()).expect("test catalog is valid");
        self.state
            .store
            .import_catalog(&catalog)
            .await
            .expect("catalog imports");
    }
}

/// Status, JSON body (Null when not JSON) and content type of a response.
pub async fn split(response: reqwest::Response) -> (StatusCode, Value, String) {
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, body, content_type)
}

/// Settings for a test service: fresh data dir, loopback image server admitted.
pub fn test_settings(data_dir: &std::path::Path) -> Settings {
    let mut settings = Settings {
        data_dir: data_dir.to_path_buf(),
        ..Settings::default()
    };
    settings.fetch.allow_hosts = vec!["127.0.0.1".to_string()];
    settings.fetch.timeout_secs = 10;
    settings.ocr.threads = 2;
    // Most tests exercise workflows, not authentication (tests/api/auth.rs does).
    settings.auth.mode = examiner::config::AuthMode::None;
    settings
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a service with settings adjusted by `adjust`.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("temp dir");
    let mut settings = test_settings(data_dir.path());
    adjust(&mut settings);
    // As the `examiner` binary does for itself: uploaded PDFs render in its child processes.
    examiner::ocr::pdf::register_helper_program(env!("CARGO_BIN_EXE_examiner").into());
    let state = examiner::app::build(settings).await.expect("app builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let serving = state.clone();
    tokio::spawn(async move {
        examiner::app::serve(listener, serving, async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    TestApp {
        address,
        client: reqwest::Client::new(),
        state,
        _data_dir: data_dir,
        shutdown: Some(tx),
    }
}

pub fn test_catalog() -> Value {
    json!({
        "courses": [{"course_code": "CA-FND-2024", "course_name": "CA Foundation"}],
        "exams": [{"exam_code": "CA-FO-PAPER1", "course_code": "CA-FND-2024",
                   "exam_name": "Paper 1", "total_exam_marks": 100}],
        "question_papers": [{
            "question_paper_code": "QP001", "exam_code": "CA-FO-PAPER1",
            "questions": [
                {"question_number": "1.a", "standard_answer": "The going concern concept assumes that a business will continue to operate in the foreseeable future.", "total_marks": 5},
                {"question_number": "1.b", "standard_answer": "The accounting equation is Assets = Liabilities + Capital.", "total_marks": 5},
                {"question_number": "2", "standard_answer": "Capital expenditure gives benefit over many years; revenue expenditure is consumed within the year.", "total_marks": 10}
            ]
        }]
    })
}

/// Served files by name: content type and bytes.
type Files = Arc<Mutex<HashMap<String, (String, Vec<u8>)>>>;

/// A local HTTP server for answer images and misbehaving URLs.
pub struct ImageServer {
    pub address: SocketAddr,
    files: Files,
    pub hits: Arc<Mutex<HashMap<String, usize>>>,
}

#[derive(Clone)]
struct ImageServerState {
    files: Files,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

async fn serve_file(State(state): State<ImageServerState>, Path(name): Path<String>) -> Response {
    *state.hits.lock().unwrap().entry(name.clone()).or_default() += 1;
    let file = state.files.lock().unwrap().get(&name).cloned();
    match file {
        Some((content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn redirect(Path(target): Path<String>) -> Response {
    let location = match target.as_str() {
        "metadata" => "http://169.254.169.254/latest/meta-data/".to_string(),
        "private" => "http://10.0.0.7/page.png".to_string(),
        "loopback" => "http://127.0.0.2:9/page.png".to_string(),
        other => format!("/files/{other}"),
    };
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

async fn failing() -> Response {
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

impl ImageServer {
    pub async fn start() -> Self {
        let files: Files = Arc::new(Mutex::new(HashMap::new()));
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let state = ImageServerState {
            files: files.clone(),
            hits: hits.clone(),
        };
        let app = Router::new()
            .route("/files/{name}", get(serve_file))
            .route("/redirect/{target}", get(redirect))
            .route("/failing", get(failing))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            address,
            files,
            hits,
        }
    }

    /// Serves `bytes` at `/files/{name}` and returns its URL.
    pub fn add(&self, name: &str, content_type: &str, bytes: Vec<u8>) -> String {
        self.files
            .lock()
            .unwrap()
            .insert(name.to_string(), (content_type.to_string(), bytes));
        self.url(&format!("/files/{name}"))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.address, path)
    }

    pub fn hits(&self, name: &str) -> usize {
        self.hits.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

fn font() -> FontVec {
    let path = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("{path} is needed to render test pages (Debian package fonts-dejavu-core, installed by `make`): {e}"));
    FontVec::try_from_vec(bytes).expect("font parses")
}

/// Renders lines of text onto a white page, as a scanner at ~200 dpi would see print.
pub fn render_page(lines: &[&str]) -> image::GrayImage {
    let font = font();
    let scale = PxScale::from(34.0);
    let width = 1654; // A4 at 200 dpi
    let line_height = 52;
    let height = (160 + line_height * lines.len() as u32).max(600);
    let mut page = image::GrayImage::from_pixel(width, height, Luma([255]));
    for (i, line) in lines.iter().enumerate() {
        imageproc::drawing::draw_text_mut(
            &mut page,
            Luma([0]),
            100,
            80 + (i as i32) * line_height as i32,
            scale,
            &font,
            line,
        );
    }
    page
}

pub fn encode(page: &image::GrayImage, format: ImageFormat) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    page.write_to(&mut bytes, format).expect("encodes");
    bytes.into_inner()
}

pub fn png(lines: &[&str]) -> Vec<u8> {
    encode(&render_page(lines), ImageFormat::Png)
}

/// Whitespace-normalised character error rate.
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    examiner::ocr::quality::cer(reference, hypothesis)
}

/// The roles of a stored evaluation item's stages, in order.
pub fn stage_roles(item: &Value) -> Vec<&str> {
    item["stages"]
        .as_array()
        .expect("a stored item lists its stages")
        .iter()
        .map(|s| s["role"].as_str().expect("every stage has a role"))
        .collect()
}

pub fn upload_body(images: &[(&str, &str)]) -> Value {
    json!({
        "user_id": "USER123",
        "course_code": "CA-FND-2024",
        "exam_code": "CA-FO-PAPER1",
        "question_paper_code": "QP001",
        "images": images.iter().map(|(id, url)| json!({"image_id": id, "image_url": url})).collect::<Vec<_>>(),
    })
}

/// Number of stored submissions, read through the API.
pub async fn submission_count(app: &TestApp) -> usize {
    let (status, body, _) = app.get("/student-answers").await;
    assert_eq!(status, StatusCode::OK);
    body.as_array().map_or(0, Vec::len)
}

pub use examiner::store::testing::PostgresSchema;

/// `method path` with `key` as the bearer token and `body` as JSON: the status, the JSON
/// body and the headers.
pub async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut request = app.client.request(method, app.url(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.unwrap();
    let headers = response.headers().clone();
    let (status, body, _) = split(response).await;
    (status, body, headers)
}
