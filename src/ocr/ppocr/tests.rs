//! End-to-end tests of the PP-OCRv5 engine with the real models. They need
//! the files `scripts/fetch-ocr-models.sh` installs, found in
//! `$EXAMINER_MODELS_DIR` or `./models`, and fail with a message saying so
//! when they are missing. The page `testdata/handwritten-answer.png` was
//! rendered by the PyPI package `handwriting-generator` 0.1.0 (font
//! "Shadows Into Light", SIL OFL 1.1; `--paper lined --jitter 1.5 --seed 1`),
//! a plumbing test only: real handwriting is measured in OCR.md.

use std::path::PathBuf;

use image::{GrayImage, Luma};

use super::{PpOcrEngine, PpOcrOptions};
use crate::ocr::{cer, OcrEngine};

const PAGE_TEXT: &str = "Question 1. Photosynthesis turns light into chemical energy.\n\
Plants take in carbon dioxide and water and release oxygen.\n\
Question 2. The heart pumps blood around the body.";

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("EXAMINER_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    let det = super::model_dir(&dir).join(super::DET_MODEL);
    assert!(
        det.is_file(),
        "PP-OCR model files are missing: {} not found. Run `scripts/fetch-ocr-models.sh {}` \
         (or set EXAMINER_MODELS_DIR to a directory holding ppocr/ and onnxruntime/)",
        det.display(),
        dir.display()
    );
    dir
}

fn test_page() -> GrayImage {
    // Embedded so the test finds it from any working directory.
    image::load_from_memory(include_bytes!("testdata/handwritten-answer.png"))
        .expect("test page decodes")
        .to_luma8()
}

#[test]
fn reads_a_rendered_handwritten_answer() {
    let mut engine = PpOcrEngine::new(&models_dir(), None).expect("engine starts");
    assert_eq!(engine.name(), "ppocr");
    let page = test_page();
    let r = engine.recognize(&page, None).expect("recognised");
    let e = cer(PAGE_TEXT, &r.text);
    assert!(e <= 0.05, "CER {e:.3} above 5%; read:\n{}", r.text);
    assert!(
        r.confidence > 0.8 && r.confidence <= 1.0,
        "{}",
        r.confidence
    );
    let lines = engine.lines();
    assert!(lines.len() >= 3, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| (0.0..=1.0).contains(&l.confidence) && !l.boxes.is_empty()));
    // Reading order: the first line starts the answer, the last ends it.
    assert!(lines[0].text.starts_with("Question"), "{}", r.text);
    assert!(
        r.text
            .trim_end()
            .trim_end_matches('.')
            .ends_with("the body"),
        "{}",
        r.text
    );
    // The same engine reads a second page (per-page state is reset).
    let again = engine.recognize(&page, None).expect("second page");
    assert_eq!(again.text, r.text);
}

#[test]
fn word_correction_never_changes_the_word_count() {
    let mut engine = PpOcrEngine::new(&models_dir(), None).expect("engine starts");
    let r = engine.recognize(&test_page(), None).expect("recognised");
    for line in engine.lines() {
        assert_eq!(
            line.text.split_whitespace().count(),
            line.raw_text.split_whitespace().count(),
            "{line:?}"
        );
    }
    assert!(!r.text.is_empty());
}

#[test]
fn blank_tiny_and_odd_pages_do_not_fail() {
    let mut engine = PpOcrEngine::with_options(
        &models_dir(),
        None,
        PpOcrOptions {
            use_cls: true,
            ..PpOcrOptions::default()
        },
    )
    .expect("engine starts");
    for page in [
        GrayImage::from_pixel(800, 600, Luma([255])),
        GrayImage::from_pixel(1, 1, Luma([0])),
        GrayImage::new(0, 0),
        GrayImage::from_pixel(3000, 20, Luma([0])),
        GrayImage::from_fn(300, 300, |x, y| Luma([((x * 7 + y * 13) % 256) as u8])),
    ] {
        let r = engine.recognize(&page, None).expect("no error");
        assert!((0.0..=1.0).contains(&r.confidence));
    }
    let blank = engine
        .recognize(&GrayImage::from_pixel(800, 600, Luma([255])), None)
        .unwrap();
    assert_eq!((blank.text.as_str(), blank.confidence), ("", 0.0));
}

#[test]
fn upside_down_page_is_read_with_the_classifier() {
    let mut engine = PpOcrEngine::with_options(
        &models_dir(),
        None,
        PpOcrOptions {
            use_cls: true,
            ..PpOcrOptions::default()
        },
    )
    .expect("engine starts");
    let page = image::imageops::rotate180(&test_page());
    let r = engine.recognize(&page, None).expect("recognised");
    // Lines are turned back, their order stays the page's (bottom first),
    // so compare the bag of words, not the sequence.
    let mut want: Vec<&str> = PAGE_TEXT.split_whitespace().collect();
    let mut got: Vec<&str> = r.text.split_whitespace().collect();
    want.sort();
    got.sort();
    let hits = want.iter().filter(|w| got.binary_search(w).is_ok()).count();
    assert!(
        hits * 10 >= want.len() * 7,
        "{hits}/{}: {}",
        want.len(),
        r.text
    );
}

#[test]
fn missing_models_give_a_clear_error() {
    let dir = std::env::temp_dir().join("ppocr-no-models-here");
    let err = PpOcrEngine::new(&dir, None).err().expect("must fail");
    let msg = err.to_string();
    assert!(msg.contains("fetch-ocr-models.sh"), "{msg}");
}

/// The `auto` pool as the service builds it: Tesseract first, PP-OCRv5 for pages Tesseract
/// reads with confidence under 0.80. The handwriting-style page goes to PP-OCR and is read
/// well; the engine used is reported per page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pool_sends_handwriting_to_ppocr() {
    use crate::ocr::{tesseract_factory, Engines, OcrPool, PoolConfig};
    let config = PoolConfig {
        threads: 1,
        fallback_below: 0.80,
        ..PoolConfig::default()
    };
    let engines = Engines {
        primary: tesseract_factory("eng", None, true, None),
        fallback: Some(super::ppocr_factory(models_dir(), None)),
    };
    let pool = tokio::task::spawn_blocking(move || OcrPool::with_fallback(config, engines))
        .await
        .expect("join")
        .expect("pool starts");
    let png = include_bytes!("testdata/handwritten-answer.png");
    let page = pool
        .recognize(bytes::Bytes::from_static(png))
        .await
        .expect("page read");
    assert_eq!(
        page.engine, "ppocr",
        "Tesseract read it with high confidence?"
    );
    let e = cer(PAGE_TEXT, &page.text);
    assert!(e <= 0.05, "CER {e:.3} above 5%; read:\n{}", page.text);
}

#[test]
fn check_files_names_what_is_missing() {
    let dir = std::env::temp_dir().join("ppocr-check-files-nothing-here");
    let msg = super::check_files(&dir, None).unwrap_err().to_string();
    assert!(
        msg.contains("ppocrv5_det.onnx") && msg.contains("fetch-ocr-models.sh"),
        "{msg}"
    );
    super::check_files(&models_dir(), None).expect("make models installed everything");
}

#[test]
fn pages_turned_a_quarter_or_half_way_are_read_upright() {
    let mut engine = PpOcrEngine::new(&models_dir(), None).expect("engine starts");
    for turned in [
        image::imageops::rotate90(&test_page()),
        image::imageops::rotate180(&test_page()),
    ] {
        let r = engine.recognize(&turned, None).expect("recognised");
        let e = cer(PAGE_TEXT, &r.text);
        assert!(e <= 0.05, "CER {e:.3} above 5%; read:\n{}", r.text);
        assert!(engine.lines()[0].text.starts_with("Question"), "{}", r.text);
    }
}

/// A page Tesseract gives up on (here: a printed page it would read well, under a 1 ms
/// limit) is PP-OCR's in `auto`, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_pool_reads_a_page_tesseract_gave_up_on_with_ppocr() {
    use crate::ocr::testpages::{self, Layout};
    use crate::ocr::{tesseract_factory, Engines, OcrPool, PoolConfig};
    let config = PoolConfig {
        threads: 1,
        fallback_below: 0.80,
        ..PoolConfig::default()
    };
    let engines = Engines {
        primary: tesseract_factory("eng", None, true, Some(std::time::Duration::from_millis(1))),
        fallback: Some(super::ppocr_factory(models_dir(), None)),
    };
    let pool = tokio::task::spawn_blocking(move || OcrPool::with_fallback(config, engines))
        .await
        .expect("join")
        .expect("pool starts");
    let font = testpages::load_font(testpages::FONT_SANS);
    let (page, reference) =
        testpages::render(&testpages::page_text(0, 2), &font, Layout::a4(200.0));
    let page = pool
        .recognize(bytes::Bytes::from(testpages::png(&page)))
        .await
        .expect("page read");
    assert_eq!(page.engine, "ppocr");
    let e = cer(&reference, &page.text);
    assert!(e <= 0.05, "CER {e:.3} above 5%; read:\n{}", page.text);
}
