//! Workflow 1 end to end: rendered pages served over HTTP, uploaded, recognised,
//! segmented, stored and read back; and bad input refused with nothing stored.

use base64::Engine as _;
use examiner::ocr::pdf::{Isolation, PdfEvent, PdfRenderer, DEFAULT_DPI};
use examiner::ocr::DecodeLimits;
use examiner::store::OCR_MEMO;
use image::ImageFormat;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::helpers::{
    cer, encode, png, render_page, spawn_app, spawn_app_with, submission_count, upload_body,
    ImageServer,
};
use crate::testpages::{drawn_pdf, scanned_pdf, typed_lines, typed_pdf};

const PAGE_ONE: &[&str] = &[
    "Name: Ravi Kumar   Roll No. 4521",
    "Q1 (a) The going concern concept assumes that a business",
    "will continue to operate in the foreseeable future.",
    "(b) The accounting equation is Assets = Liabilities + Capital.",
];
const PAGE_TWO: &[&str] = &[
    "Every transaction affects both sides of the equation.",
    "Q2 Capital expenditure gives benefit over many years,",
    "while revenue expenditure is consumed within the year.",
];

fn pairs(body: &Value) -> Vec<(String, String)> {
    body["qa_pairs"]
        .as_array()
        .expect("qa_pairs is a list")
        .iter()
        .map(|p| {
            (
                p["question_number"].as_str().unwrap().to_string(),
                p["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn printed_pages_become_stored_question_answer_pairs() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let one = images.add("p1.png", "image/png", png(PAGE_ONE));
    let two = images.add(
        "p2.jpg",
        "image/jpeg",
        encode(&render_page(PAGE_TWO), ImageFormat::Jpeg),
    );

    let (status, body, content_type) = app
        .post(
            "/upload-exam-answers",
            &upload_body(&[("img_1", &one), ("img_2", &two)]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(content_type, "application/json");
    assert_eq!(body["status"], "success");
    assert_eq!(body["user_id"], "USER123");
    assert_eq!(body["course_code"], "CA-FND-2024");
    assert_eq!(body["exam_code"], "CA-FO-PAPER1");
    assert_eq!(body["question_paper_code"], "QP001");
    assert_eq!(
        body["message"],
        "Question-answer pairs extracted and saved successfully."
    );

    let found = pairs(&body);
    let numbers: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(numbers, ["1.a", "1.b", "2"], "{body}");
    let expected = [
        "The going concern concept assumes that a business will continue to operate in the foreseeable future.",
        // The continuation on page 2 belongs to the question in progress.
        "The accounting equation is Assets = Liabilities + Capital. Every transaction affects both sides of the equation.",
        "Capital expenditure gives benefit over many years, while revenue expenditure is consumed within the year.",
    ];
    for ((number, answer), expected) in found.iter().zip(expected) {
        let rate = cer(expected, answer);
        assert!(
            rate < 0.02,
            "{number}: CER {rate:.3}\n  got: {answer}\n want: {expected}"
        );
    }
    assert!(
        body["unassigned_text"]
            .as_str()
            .unwrap()
            .contains("Ravi Kumar"),
        "text before the first question is kept: {body}"
    );
    assert!(body["extracted_text"]
        .as_str()
        .unwrap()
        .contains("going concern"));
    let submission_id = body["submission_id"].as_str().unwrap().to_string();

    // Read back what was stored.
    let (status, list, _) = app
        .get("/student-answers?user_id=USER123&question_paper_code=QP001")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["submission_id"], submission_id.as_str());
    assert_eq!(list[0]["question_count"], 3);
    let (status, stored, _) = app.get(&format!("/student-answers/{submission_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pairs(&stored), found);
    let stored_images = stored["images"].as_array().unwrap();
    assert_eq!(stored_images.len(), 2);
    assert_eq!(stored_images[0]["image_id"], "img_1");
    assert_eq!(stored_images[1]["media_type"], "image/jpeg");
    assert_eq!(
        stored_images[0]["content_sha256"].as_str().unwrap().len(),
        64
    );
    assert!(stored_images[0]["ocr_confidence"].as_f64().unwrap() > 0.5);
    // Each image keeps the key of its memoised text, so an erasure finds it.
    let record = app
        .state
        .store
        .get_submission(&submission_id)
        .await
        .unwrap()
        .unwrap();
    for image in &record.images {
        let key = image.ocr_memo_key.as_deref().expect("a memo key");
        assert!(key.ends_with(&image.content_sha256), "{key}");
        let memoised = app.state.store.cache_get(OCR_MEMO, key).await.unwrap();
        let memoised: Value = serde_json::from_str(&memoised.expect("memoised")).unwrap();
        // A document's entry is the list of its pages: one for an image.
        assert_eq!(memoised.as_array().map(Vec::len), Some(1), "{key}");
        assert_eq!(memoised[0]["text"], image.ocr_text.as_str(), "{key}");
    }
    // Printed pages stay with Tesseract in `auto`, and every pair carries the confidence and
    // engine of the pages it was read from.
    for pair in body["qa_pairs"].as_array().unwrap() {
        assert_eq!(pair["ocr_engine"], "tesseract:eng", "{pair}");
        assert!(pair["ocr_confidence"].as_f64().unwrap() > 0.8, "{pair}");
        assert_eq!(pair["low_ocr_confidence"], false, "{pair}");
    }
    for pair in stored["qa_pairs"].as_array().unwrap() {
        assert_eq!(pair["ocr_engine"], "tesseract:eng", "{pair}");
        assert_eq!(pair["low_ocr_confidence"], false, "{pair}");
    }
    // The user was registered on first use.
    assert_eq!(app.get("/users/USER123").await.0, StatusCode::OK);

    // The same page again is recognised from the memo, not OCRed again, with the same text.
    let (status, again, _) = app
        .post("/upload-exam-answers", &upload_body(&[("img_1", &one)]))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["extracted_text"], stored_images[0]["ocr_text"]);
}

#[tokio::test]
async fn a_scanned_pdf_is_read_page_by_page() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    // Two pages scanned at 200 dpi into one PDF, as an office scanner sends a script.
    let scan = scanned_pdf(&[
        (render_page(PAGE_ONE), 200.0),
        (render_page(PAGE_TWO), 200.0),
    ]);
    let url = images.add("script.pdf", "application/pdf", scan.clone());

    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("script", &url)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = pairs(&body);
    let numbers: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(numbers, ["1.a", "1.b", "2"], "{body}");
    // 1.b runs on from page 1 to page 2, as it does across two images.
    let expected = "The accounting equation is Assets = Liabilities + Capital. Every transaction affects both sides of the equation.";
    let rate = cer(expected, &found[1].1);
    assert!(rate < 0.02, "CER {rate:.3}: {}", found[1].1);
    for pair in body["qa_pairs"].as_array().unwrap() {
        assert_eq!(pair["ocr_engine"], "tesseract:eng", "{pair}");
        assert!(pair["ocr_confidence"].as_f64().unwrap() > 0.8, "{pair}");
    }
    assert_eq!(body["pages"][0]["media_type"], "application/pdf", "{body}");
    assert_eq!(body["pages"][0]["page_count"], 2, "{body}");

    // Stored as one image of two pages, rendered at 300 dpi (A4 width: 2481 pixels).
    let id = body["submission_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/student-answers/{id}")).await;
    let stored_images = stored["images"].as_array().unwrap();
    assert_eq!(stored_images.len(), 1, "{stored}");
    let image = &stored_images[0];
    assert_eq!(image["image_id"], "script");
    assert_eq!(image["media_type"], "application/pdf");
    assert_eq!(image["page_count"], 2);
    assert_eq!(image["byte_size"], scan.len());
    assert_eq!(image["width"], 2481);
    let (_, listed, _) = app
        .get("/student-answers?user_id=USER123&question_paper_code=QP001")
        .await;
    assert_eq!(
        (&listed[0]["image_count"], &listed[0]["page_count"]),
        (&json!(1), &json!(2)),
        "{listed}"
    );
    let text = image["ocr_text"].as_str().unwrap();
    assert!(
        text.contains("going concern") && text.contains("Capital expenditure"),
        "both pages' text: {text}"
    );
    // The pages' texts are memoised together under the document's hash (and the resolution),
    // so erasing the user finds them.
    let record = app.state.store.get_submission(id).await.unwrap().unwrap();
    let sha = &record.images[0].content_sha256;
    let key = record.images[0].ocr_memo_key.clone().expect("a memo key");
    assert!(key.ends_with(&format!("pdf300+text:{sha}")), "{key}");
    let memoised = app.state.store.cache_get(OCR_MEMO, &key).await.unwrap();
    let memoised: Value = serde_json::from_str(&memoised.expect("memoised")).unwrap();
    assert_eq!(memoised.as_array().map(Vec::len), Some(2), "{memoised}");

    // A memoised PDF is served from the memo without being rendered: these bytes would not
    // render, but their entry is there.
    let unrenderable = b"%PDF-1.7\n% only its memo entry can be read".to_vec();
    let unrenderable_sha = hex::encode(sha2::Sha256::digest(&unrenderable));
    let fabricated = json!([
        {"text": "1.a Read from the memo.", "confidence": 0.9, "engine": "tesseract:eng", "width": 10, "height": 10},
        {"text": "Q2 Page two, also from the memo.", "confidence": 0.8, "engine": "tesseract:eng", "width": 10, "height": 10}
    ]);
    app.state
        .store
        .cache_put(
            OCR_MEMO,
            &key.replace(sha.as_str(), &unrenderable_sha),
            &fabricated.to_string(),
        )
        .await
        .unwrap();
    let memo_url = images.add("memoised.pdf", "application/pdf", unrenderable);
    let mut other = upload_body(&[("script", &memo_url)]);
    other["user_id"] = "USER456".into();
    let (status, again, _) = app.post("/upload-exam-answers", &other).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        pairs(&again),
        [
            ("1.a".to_string(), "Read from the memo.".to_string()),
            ("2".to_string(), "Page two, also from the memo.".to_string())
        ]
    );
    let id = again["submission_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/student-answers/{id}")).await;
    assert_eq!(stored["images"][0]["page_count"], 2, "{stored}");
    assert_eq!(
        stored["images"][0]["ocr_confidence"], 0.8,
        "the lower page's"
    );
}

#[tokio::test]
async fn a_typed_pdf_is_read_from_its_text() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    // A script typed in a word processor and saved as PDF: its words are in the file.
    let lines: Vec<&str> = PAGE_ONE.iter().chain(PAGE_TWO).copied().collect();
    let typed = typed_pdf(&typed_lines(&lines), None);
    let url = images.add("typed.pdf", "application/pdf", typed);

    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("script", &url)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        pairs(&body),
        [
            ("1.a".to_string(), "The going concern concept assumes that a business\nwill continue to operate in the foreseeable future.".to_string()),
            ("1.b".to_string(), "The accounting equation is Assets = Liabilities + Capital.\nEvery transaction affects both sides of the equation.".to_string()),
            ("2".to_string(), "Capital expenditure gives benefit over many years,\nwhile revenue expenditure is consumed within the year.".to_string()),
        ],
        "exactly as typed: {body}"
    );
    assert_eq!(body["unassigned_text"], PAGE_ONE[0], "{body}");
    assert_eq!(body["extracted_text"], lines.join("\n"), "{body}");
    for pair in body["qa_pairs"].as_array().unwrap() {
        assert_eq!(pair["ocr_engine"], "pdf-text", "{pair}");
        assert_eq!(pair["ocr_confidence"], 1.0, "{pair}");
        assert_eq!(pair["low_ocr_confidence"], false, "{pair}");
    }
    assert_eq!(body["pages"][0]["ocr_engine"], "pdf-text", "{body}");
    assert_eq!(body["pages"][0]["page_count"], 1, "{body}");
    let id = body["submission_id"].as_str().unwrap();
    let record = app.state.store.get_submission(id).await.unwrap().unwrap();
    let key = record.images[0].ocr_memo_key.clone().expect("a memo key");
    assert!(key.contains(":pdf300+text:"), "{key}");

    // With text layers off the same file is rendered and read by OCR, under its own memo key.
    let ocr_only = spawn_app_with(|s| s.ocr.pdf_text_layers = false).await;
    ocr_only.seed_catalog().await;
    let (status, body, _) = ocr_only
        .post("/upload-exam-answers", &upload_body(&[("script", &url)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["pages"][0]["ocr_engine"], "tesseract:eng", "{body}");
    let found = pairs(&body);
    assert_eq!(found.len(), 3, "{body}");
    let id = body["submission_id"].as_str().unwrap();
    let record = ocr_only
        .state
        .store
        .get_submission(id)
        .await
        .unwrap()
        .unwrap();
    let key = record.images[0].ocr_memo_key.clone().expect("a memo key");
    assert!(key.contains(":pdf300:"), "{key}");
}

#[tokio::test]
async fn pdf_pages_count_towards_the_page_limit_and_bad_pdfs_are_refused() {
    let app = spawn_app_with(|s| s.limits.max_pages = 2).await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let scan = scanned_pdf(&[
        (render_page(PAGE_ONE), 200.0),
        (render_page(PAGE_TWO), 200.0),
    ]);
    let pdf = images.add("script.pdf", "application/pdf", scan);
    let page = images.add(
        "p3.png",
        "image/png",
        png(&["Q3 Accruals match costs to revenue."]),
    );
    assert_refused(
        &app,
        &upload_body(&[("script", &pdf), ("page_3", &page)]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "limits.max_pages",
    )
    .await;
    let junk = images.add(
        "junk.pdf",
        "application/pdf",
        b"%PDF-1.7\nnot really".to_vec(),
    );
    assert_refused(
        &app,
        &upload_body(&[("junk", &junk)]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a readable PDF",
    )
    .await;
    // Within the limit the same scan is read.
    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("script", &pdf)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A page of `fills` rectangles each covering it: a few kilobytes of PDF that the renderer
/// turns into about 140 KB of memory and 0.45 ms of work per rectangle.
fn overdrawn_pdf(fills: usize) -> Vec<u8> {
    drawn_pdf(&"0 0 612 792 re f\n".repeat(fills))
}

/// A renderer at the default resolution and caps, on this process's threads.
fn pdf_renderer(time_limit: std::time::Duration) -> PdfRenderer {
    PdfRenderer::new(DEFAULT_DPI, DecodeLimits::default(), time_limit, 1)
}

/// `renderer` rendering in child processes of the `examiner` binary, as the service does.
fn in_child(renderer: PdfRenderer) -> PdfRenderer {
    renderer.isolated(Isolation {
        program: env!("CARGO_BIN_EXE_examiner").into(),
        memory_limit: 1 << 30,
    })
}

#[tokio::test]
async fn a_pdf_renders_in_a_child_process_as_it_does_in_this_one() {
    let scan = scanned_pdf(&[
        (render_page(PAGE_ONE), 200.0),
        (render_page(PAGE_TWO), 200.0),
    ]);
    let typed = typed_pdf(&typed_lines(PAGE_ONE), None);
    let renderer = || pdf_renderer(std::time::Duration::from_secs(60));
    let events = |renderer: PdfRenderer, pdf: Vec<u8>| async move {
        let mut events = renderer.render(pdf.into(), 10).await;
        let mut seen = Vec::new();
        while let Some(event) = events.recv().await {
            seen.push(match event.expect("renders") {
                PdfEvent::Pages(n) => format!("{n} pages"),
                PdfEvent::Page(page) => format!(
                    "{}x{} at {} dpi, PNG sha256 {}",
                    page.width,
                    page.height,
                    page.dpi,
                    hex::encode(sha2::Sha256::digest(&page.png))
                ),
                PdfEvent::Typed(page) => format!(
                    "typed {}x{} at {} dpi: {}",
                    page.width, page.height, page.dpi, page.text
                ),
            });
        }
        seen
    };
    let isolated = in_child(renderer());
    assert!(isolated.is_isolated());
    let in_child = events(isolated.clone(), scan.clone()).await;
    assert_eq!(in_child.len(), 3, "{in_child:?}");
    assert_eq!(in_child, events(renderer(), scan).await);
    // A typed page's text comes through the child's pipe as it is read here.
    let typed_in_child = events(isolated.clone(), typed.clone()).await;
    assert_eq!(
        typed_in_child,
        [
            "1 pages".to_string(),
            format!("typed 2550x3300 at 300 dpi: {}", PAGE_ONE.join("\n"))
        ]
    );
    assert_eq!(typed_in_child, events(renderer(), typed.clone()).await);
    // Told not to read text layers, the child renders the typed page too.
    let rendered = events(isolated.reading_text_layers(false), typed).await;
    assert!(
        rendered[1].starts_with("2550x3300 at 300 dpi, PNG"),
        "{rendered:?}"
    );
}

/// A long document whose pages OCR takes slowly: the child waits to hand each page over, and
/// that waiting is not rendering time, in the child's own check as in this process's.
#[tokio::test]
async fn a_child_waiting_for_its_pages_to_be_taken_is_not_timed_out() {
    // Noise, so each rendered page's PNG is far larger than a pipe's buffer and the child
    // blocks writing it until the page is taken.
    let mut state = 0x2545_f491_u32;
    let noise = image::GrayImage::from_fn(600, 600, |_, _| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        image::Luma([(state >> 24) as u8])
    });
    // Two pages wait in this process (the channel and the page in hand); the child's check
    // before each page after them comes after the reader has taken one more.
    let pdf = scanned_pdf(&vec![(noise, 200.0); 8]);
    // The eight pages cost about 1 s of CPU to render on a 2-core machine of this project's
    // kind, and six of them took over 1 s of wall time beside other work: the limit leaves
    // room for that.
    let renderer = in_child(pdf_renderer(std::time::Duration::from_secs(3)));
    let mut events = renderer.render(pdf.into(), 10).await;
    let mut pages = 0;
    while let Some(event) = events.recv().await {
        if let PdfEvent::Page(page) = event.expect("no time limit is reached") {
            assert!(page.png.len() > 256 * 1024, "{} bytes", page.png.len());
            pages += 1;
            // OCR of the page: 1 s each. By the child's check before its last page it has
            // waited about 5 s to hand pages over, past the 3 s limit for rendering.
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    assert_eq!(pages, 8);
}

#[tokio::test]
async fn a_pdf_that_needs_too_much_memory_or_time_is_refused_and_the_service_carries_on() {
    let images = ImageServer::start().await;
    let scan = images.add(
        "script.pdf",
        "application/pdf",
        scanned_pdf(&[(render_page(PAGE_ONE), 200.0)]),
    );
    let overdrawn = images.add("overdrawn.pdf", "application/pdf", overdrawn_pdf(8_000));
    let app = spawn_app_with(|s| s.ocr.pdf_memory_limit_mb = 512).await;
    app.seed_catalog().await;
    assert_refused(
        &app,
        &upload_body(&[("overdrawn", &overdrawn)]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "more than the 512 MiB of memory a PDF may use (ocr.pdf_memory_limit_mb)",
    )
    .await;
    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("script", &scan)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Within the memory allowed but slow: stopped inside its one page.
    let slow = images.add("slow.pdf", "application/pdf", overdrawn_pdf(3_000));
    // A renderer that checks its time only between pages would finish this page and
    // succeed; the refusal is the child killed in the middle of it.
    let app = spawn_app_with(|s| s.ocr.pdf_time_limit_secs = 0.25).await;
    app.seed_catalog().await;
    assert_refused(
        &app,
        &upload_body(&[("slow", &slow)]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "ocr.pdf_time_limit_secs",
    )
    .await;
}

#[tokio::test]
async fn data_urls_are_accepted() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    let encoded = base64::engine::general_purpose::STANDARD.encode(png(&[
        "1.a Going concern means the business continues.",
        "1.b Assets equal liabilities plus capital.",
    ]));
    let url = format!("data:image/png;base64,{encoded}");
    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("img_1", &url)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let numbers: Vec<String> = pairs(&body).into_iter().map(|(n, _)| n).collect();
    assert_eq!(numbers, ["1.a", "1.b"]);
    let id = body["submission_id"].as_str().unwrap();
    let (_, stored, _) = app.get(&format!("/student-answers/{id}")).await;
    let stored_url = stored["images"][0]["image_url"].as_str().unwrap();
    assert!(
        stored_url.starts_with("data:image/png;sha256="),
        "{stored_url}"
    );
}

/// Asserts a failure in the contract's shape and that nothing was stored.
async fn assert_refused(
    app: &crate::helpers::TestApp,
    body: &Value,
    expected: StatusCode,
    needle: &str,
) {
    let (status, answer, content_type) = app.post("/upload-exam-answers", body).await;
    assert_eq!(status, expected, "{answer}");
    assert_eq!(content_type, "application/json");
    assert_eq!(answer["status"], "failure", "{answer}");
    let message = answer["message"].as_str().expect("message");
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "message {message:?} should mention {needle:?}"
    );
    assert_eq!(answer["detail"], answer["message"]);
    assert!(answer["type"].is_string() && answer["title"].is_string());
    assert_eq!(submission_count(app).await, 0, "nothing may be stored");
}

#[tokio::test]
async fn bad_uploads_are_refused_clearly_and_store_nothing() {
    let app = spawn_app_with(|s| {
        s.fetch.max_image_bytes = 300_000;
        s.ocr.max_pixels = 20_000_000;
    })
    .await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let good = images.add("good.png", "image/png", png(&["1.a fine"]));
    let html = images.add(
        "page.html",
        "text/html",
        b"<!doctype html><html><body>not an image</body></html>".to_vec(),
    );
    let big = images.add("big.bmp", "image/bmp", {
        let page = image::GrayImage::from_pixel(800, 800, image::Luma([200]));
        encode(&page, ImageFormat::Bmp)
    });
    let bomb = images.add("bomb.png", "image/png", bomb_png(100_000, 100_000));

    // Unknown paper, course, exam: 404 naming which.
    let mut body = upload_body(&[("img_1", &good)]);
    body["question_paper_code"] = json!("QP999");
    assert_refused(
        &app,
        &body,
        StatusCode::NOT_FOUND,
        "question paper \"QP999\"",
    )
    .await;
    let mut body = upload_body(&[("img_1", &good)]);
    body["course_code"] = json!("NOPE");
    assert_refused(&app, &body, StatusCode::NOT_FOUND, "course \"NOPE\"").await;
    let mut body = upload_body(&[("img_1", &good)]);
    body["exam_code"] = json!("NOPE");
    assert_refused(&app, &body, StatusCode::NOT_FOUND, "exam \"NOPE\"").await;

    // Missing fields, empty and oversized lists, bad ids.
    assert_refused(
        &app,
        &json!({"user_id": "U"}),
        StatusCode::UNPROCESSABLE_ENTITY,
        "missing field",
    )
    .await;
    let body = upload_body(&[]);
    assert_refused(
        &app,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "at least one image",
    )
    .await;
    let many: Vec<(String, String)> = (0..51).map(|i| (format!("i{i}"), good.clone())).collect();
    let many_refs: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    assert_refused(
        &app,
        &upload_body(&many_refs),
        StatusCode::UNPROCESSABLE_ENTITY,
        "at most 50",
    )
    .await;
    let mut body = upload_body(&[("img_1", &good)]);
    body["user_id"] = json!("");
    assert_refused(&app, &body, StatusCode::UNPROCESSABLE_ENTITY, "user_id").await;
    let mut body = upload_body(&[("img_1", &good)]);
    body["user_id"] = json!("x".repeat(65));
    assert_refused(&app, &body, StatusCode::UNPROCESSABLE_ENTITY, "limit is 64").await;

    // Malformed JSON.
    let response = app
        .client
        .post(app.url("/upload-exam-answers"))
        .header("content-type", "application/json")
        .body("{\"user_id\": ")
        .send()
        .await
        .unwrap();
    let (status, answer, _) = crate::helpers::split(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["status"], "failure");

    // URLs that do not give a usable image. One good page beside a bad one: all or nothing.
    let missing = images.url("/files/missing.png");
    assert_refused(
        &app,
        &upload_body(&[("img_1", &good), ("img_2", &missing)]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "HTTP 404",
    )
    .await;
    assert_refused(
        &app,
        &upload_body(&[("img_1", &html)]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "text/html",
    )
    .await;
    assert_refused(
        &app,
        &upload_body(&[("img_1", &big)]),
        StatusCode::PAYLOAD_TOO_LARGE,
        "300000-byte limit",
    )
    .await;
    assert_refused(
        &app,
        &upload_body(&[("img_1", &bomb)]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "pixels",
    )
    .await;
    let failing = images.url("/failing");
    assert_refused(
        &app,
        &upload_body(&[("img_1", &failing)]),
        StatusCode::BAD_GATEWAY,
        "HTTP 503",
    )
    .await;
    assert_refused(
        &app,
        &upload_body(&[("img_1", "ftp://example.com/a.png")]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "scheme",
    )
    .await;
    assert_refused(
        &app,
        &upload_body(&[("img_1", "not a url")]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a valid URL",
    )
    .await;
    assert_refused(
        &app,
        &upload_body(&[("img_1", "data:image/png;base64,@@@")]),
        StatusCode::UNPROCESSABLE_ENTITY,
        "base64",
    )
    .await;

    // Redirects to private and metadata addresses are refused even from an allowed host.
    for target in ["metadata", "private", "loopback"] {
        let url = images.url(&format!("/redirect/{target}"));
        assert_refused(
            &app,
            &upload_body(&[("img_1", &url)]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "non-public",
        )
        .await;
    }
    assert!(images.hits("good.png") > 0);
}

#[tokio::test]
async fn loopback_and_private_urls_are_refused_without_the_allow_list() {
    let app = spawn_app_with(|s| s.fetch.allow_hosts.clear()).await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let page = images.add("p.png", "image/png", png(&["1.a text"]));
    let port = images.address.port();
    for url in [
        page.clone(),
        format!("http://localhost:{port}/files/p.png"),
        format!("http://127.1:{port}/files/p.png"),
        format!("http://0x7f.1:{port}/files/p.png"),
        format!("http://2130706433:{port}/files/p.png"),
        format!("http://[::ffff:127.0.0.1]:{port}/files/p.png"),
        format!("http://[::1]:{port}/files/p.png"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.1.2.3/a.png".to_string(),
    ] {
        assert_refused(
            &app,
            &upload_body(&[("img_1", &url)]),
            StatusCode::UNPROCESSABLE_ENTITY,
            "non-public",
        )
        .await;
    }
    assert_eq!(images.hits("p.png"), 0, "the service never connected");
}

/// A valid PNG header that declares an enormous image over a tiny body.
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        out.extend_from_slice(&crc32(&crc_input).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // 8-bit grayscale
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_harm() {
    let app = spawn_app().await;
    // In an ignored field, so serde has to walk the nesting to skip it.
    let nested = format!(
        "{{\"ignored\": {}{}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for path in ["/upload-exam-answers", "/evaluate-answers", "/courses"] {
        let response = app
            .client
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(nested.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert!(status.is_client_error(), "{path}: {status}");
        assert!(body["detail"].is_string(), "{path}: {body}");
    }
    // Skipping the nesting is iterative in serde_json and values are never parsed into
    // recursive types beyond its 128-level limit, so nothing overflowed: the service is up.
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(submission_count(&app).await, 0);
}

/// A service that reads pages with the vision model `fake-vision` at `vision`, its backend
/// settings adjusted by `adjust`.
async fn spawn_vision_app(
    vision: &crate::fake_llm::FakeLlm,
    adjust: impl FnOnce(&mut examiner::grade::LlmBackendSettings),
) -> crate::helpers::TestApp {
    let base_url = vision.base_url();
    spawn_app_with(move |s| {
        s.ocr.engine = examiner::config::OcrEngineChoice::Vision;
        s.ocr.vision.base_url = base_url;
        s.ocr.vision.model = "fake-vision".into();
        adjust(&mut s.ocr.vision);
    })
    .await
}

/// `ocr.engine = "vision"`: pages go to a vision LLM over the chat-completions API (here a real
/// HTTP server in the test process) as base64 image parts, and its verbatim transcription is
/// segmented and stored like any other, with its engine and confidence on every pair.
#[tokio::test]
async fn the_vision_backend_reads_pages_through_the_chat_api() {
    use crate::fake_llm::{FakeLlm, Reply};
    let vision = FakeLlm::start(|_, _| {
        Reply::Json(json!({
            "text": "Name: Ravi Kumar\n1.a Going concern means the business continues.\n1.b Assets = Liabilities + Capital",
            "confidence": 0.62
        }))
    })
    .await;
    let app = spawn_vision_app(&vision, |v| v.max_retries = 1).await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let page = png(PAGE_ONE);
    let url = images.add("p1.png", "image/png", page.clone());

    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("img_1", &url)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let found = pairs(&body);
    assert_eq!(
        found,
        vec![
            (
                "1.a".to_string(),
                "Going concern means the business continues.".to_string()
            ),
            (
                "1.b".to_string(),
                "Assets = Liabilities + Capital".to_string()
            ),
        ]
    );
    for pair in body["qa_pairs"].as_array().unwrap() {
        assert_eq!(pair["ocr_engine"], "vision:fake-vision", "{pair}");
        assert_eq!(pair["ocr_confidence"], 0.62, "{pair}");
        // 0.62 is under the default threshold of 0.80.
        assert_eq!(pair["low_ocr_confidence"], true, "{pair}");
    }

    // The page itself was sent, as a data URL in an image part.
    let requests = vision.requests();
    assert_eq!(requests.len(), 1);
    let content = requests[0].1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .find(|part| part["type"] == "image_url")
        .cloned()
        .expect("an image part");
    let data_url = content["image_url"]["url"].as_str().unwrap();
    let encoded = data_url
        .strip_prefix("data:image/png;base64,")
        .expect("a PNG data URL");
    let sent = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(sent, page);

    // An image that is not one never reaches the model.
    let html = images.add("page.html", "text/html", b"<html>nope</html>".to_vec());
    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("img_1", &html)]))
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    assert_eq!(vision.requests().len(), 1);
}

/// A vision backend that fails is named as the culprit (502 with what it answered, then 503
/// with `Retry-After` once its circuit breaker opens), and the upload stores nothing.
#[tokio::test]
async fn a_failing_vision_backend_is_a_clear_502_then_a_fast_503() {
    use crate::fake_llm::{FakeLlm, Reply};
    let vision = FakeLlm::start(|_, _| Reply::Status(503)).await;
    let app = spawn_vision_app(&vision, |v| {
        v.max_retries = 0;
        v.circuit_failure_threshold = 1;
        v.circuit_open_secs = 60;
    })
    .await;
    app.seed_catalog().await;
    let images = ImageServer::start().await;
    let url = images.add("p1.png", "image/png", png(PAGE_ONE));

    let (status, body, _) = app
        .post("/upload-exam-answers", &upload_body(&[("img_1", &url)]))
        .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["status"], "failure", "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("img_1") && detail.contains("HTTP 503") && detail.contains("fake-vision"),
        "{detail}"
    );
    assert_eq!(vision.requests().len(), 1);

    // The circuit is open now: the next upload fails at once, without asking the backend.
    let response = app
        .client
        .post(app.url("/upload-exam-answers"))
        .json(&upload_body(&[("img_1", &url)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{body}"
    );
    assert_eq!(vision.requests().len(), 1);
    assert_eq!(submission_count(&app).await, 0);
}
