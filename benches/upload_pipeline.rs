//! How much of an upload's time is spent outside Tesseract: fetching, decoding,
//! preprocessing, segmenting, storing and HTTP. (A plain `harness = false` main: a page
//! takes about a second, too slow for criterion's sampling to add anything.)
//!
//! For each of 6 distinct dense A4 pages at 200 dpi, alternately:
//! (a) the OCR pool alone recognises the page bytes (decode → preprocess → Tesseract), and
//! (b) the whole service uploads the same page: an HTTP request to `/upload-exam-answers`,
//!     a fetch from a local image server, OCR on the pool, segmentation against the paper's
//!     question numbers, and the SQLite transaction.
//!
//! Both use one OCR worker, so Tesseract's time is the same work in (a) and (b). The time
//! outside Tesseract per page is then (b) − (a) plus (a)'s own decode and preprocessing.
//! Every upload has distinct page bytes, so the OCR memo never answers.
//!
//! Run: `cargo bench --bench upload_pipeline` (`UPLOAD_BENCH_ROUNDS=n`, default 2).

#[path = "../src/ocr/testpages.rs"]
mod testpages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use bytes::Bytes;
use examiner::config::{AuthMode, Settings};
use serde_json::json;
use testpages::Layout;

const PAGES: usize = 6;

type Files = Arc<Mutex<HashMap<String, Bytes>>>;

async fn serve(State(files): State<Files>, Path(name): Path<String>) -> axum::response::Response {
    match files.lock().unwrap().get(&name).cloned() {
        Some(bytes) => ([("content-type", "image/png")], bytes).into_response(),
        None => axum::http::StatusCode::NOT_FOUND.into_response(),
    }
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let rounds: usize = std::env::var("UPLOAD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let font = testpages::load_font(testpages::FONT_SANS);
    // Every upload gets its own bytes, so the OCR memo (keyed by content hash) never answers.
    let pages: Vec<Bytes> = (0..PAGES * rounds)
        .map(|n| {
            let i = n % PAGES;
            let text = format!("Q{} (a) Sheet {n}\n{}", i + 1, testpages::page_text(i, 12));
            let (page, _) = testpages::render(&text, &font, Layout::a4(200.0));
            Bytes::from(testpages::png(&page))
        })
        .collect();

    // The image server.
    let files: Files = Arc::default();
    for (i, page) in pages.iter().enumerate() {
        files
            .lock()
            .unwrap()
            .insert(format!("p{i}.png"), page.clone());
    }
    let images = axum::Router::new()
        .route("/files/{name}", axum::routing::get(serve))
        .with_state(files);
    let image_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let image_address = image_listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(image_listener, images).await.unwrap() });

    // The service, with one OCR worker.
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = Settings {
        data_dir: data_dir.path().to_path_buf(),
        ..Settings::default()
    };
    settings.auth.mode = AuthMode::None;
    settings.fetch.allow_hosts = vec!["127.0.0.1".into()];
    settings.ocr.threads = 1;
    let state = examiner::app::build(settings)
        .await
        .expect("service builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let serving = state.clone();
    tokio::spawn(async move {
        examiner::app::serve(listener, serving, std::future::pending())
            .await
            .unwrap()
    });
    let client = reqwest::Client::new();

    let mut direct_total = 0.0;
    let mut decode_preprocess_total = 0.0;
    let mut pipeline_total = 0.0;
    let mut uploads = 0;
    for round in 0..rounds {
        for i in 0..PAGES {
            let n = round * PAGES + i;
            let page = &pages[n];
            // A paper per upload keeps the memo cache out of the measurement.
            let paper = format!("BENCH-{round}-{i}");
            let catalog: examiner::model::Catalog = serde_json::from_value(json!({
                "courses": [{"course_code": "C", "course_name": "C"}],
                "exams": [{"exam_code": "E", "course_code": "C", "exam_name": "E"}],
                "question_papers": [{"question_paper_code": paper, "exam_code": "E",
                    "questions": [{"question_number": format!("{}.a", i + 1),
                                   "standard_answer": "x", "total_marks": 5}]}]
            }))
            .unwrap();
            state.store.import_catalog(&catalog).await.unwrap();

            let started = Instant::now();
            let direct = state.ocr.read(page.clone()).await.expect("ocr");
            direct_total += started.elapsed().as_secs_f64();
            decode_preprocess_total += (direct.decode_ms + direct.preprocess_ms) / 1000.0;

            // The same bytes as (a): the pool alone does not write the memo.
            let body = json!({
                "user_id": format!("U{round}"), "course_code": "C", "exam_code": "E",
                "question_paper_code": paper,
                "images": [{"image_id": "p", "image_url": format!("http://{image_address}/files/p{n}.png")}]
            });
            let started = Instant::now();
            let response = client
                .post(format!("http://{address}/upload-exam-answers"))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{:?}",
                response.text().await
            );
            let _ = response.bytes().await.unwrap();
            pipeline_total += started.elapsed().as_secs_f64();
            uploads += 1;
        }
    }
    let per_page_pipeline = pipeline_total / uploads as f64;
    let per_page_direct = direct_total / uploads as f64;
    let decode_preprocess = decode_preprocess_total / uploads as f64;
    let outside = (per_page_pipeline - per_page_direct).max(0.0) + decode_preprocess;
    println!(
        "upload pipeline bench: {uploads} uploads of one dense A4 page at 200 dpi, one OCR worker"
    );
    println!(
        "  pool alone (decode+preprocess+tesseract): {:.3} s/page",
        per_page_direct
    );
    println!(
        "  of which decode+preprocess:              {:.4} s/page",
        decode_preprocess
    );
    println!(
        "  whole upload through HTTP:                {:.3} s/page",
        per_page_pipeline
    );
    println!(
        "  outside tesseract: {:.4} s/page = {:.2}% of the upload",
        outside,
        100.0 * outside / per_page_pipeline
    );
}
