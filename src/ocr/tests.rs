//! End-to-end tests of the OCR module: decoding safety, preprocessing, and
//! real Tesseract runs through the pool on rendered exam pages with known
//! text (CER < 2%), plus pool mechanics with fake engines (concurrency,
//! overload, panics, shutdown, span propagation).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use image::{DynamicImage, GrayImage, ImageFormat, Luma, Rgb, RgbImage};

use super::preprocess::{median_glyph_height, prepare, resample, rotate_upright};
use super::testpages::{self, Layout};
use super::*;

// ---------------------------------------------------------------- helpers

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
    out
}

/// A ~60-byte PNG whose header declares `width` x `height` 8-bit gray pixels.
fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]); // depth 8, gray, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    // A tiny zlib stream (empty stored block), then the end.
    png.extend(png_chunk(
        b"IDAT",
        &[0x78, 0x01, 0x01, 0x00, 0x00, 0xFF, 0xFF, 0, 0, 0, 1],
    ));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).expect("in-memory encode");
    out.into_inner()
}

fn small_png(width: u32, height: u32) -> Bytes {
    Bytes::from(testpages::png(&GrayImage::from_pixel(
        width,
        height,
        Luma([255]),
    )))
}

fn font() -> ab_glyph::FontVec {
    testpages::load_font(testpages::FONT_SANS)
}

fn tesseract_pool(threads: usize) -> OcrPool {
    let config = PoolConfig {
        threads,
        ..PoolConfig::default()
    };
    OcrPool::tesseract(config, "eng", None).expect("tesseract-ocr-eng installed")
}

fn assert_cer(reference: &str, got: &str, max: f64, what: &str) -> f64 {
    let c = cer(reference, got);
    assert!(
        c < max,
        "{what}: CER {:.2}% >= {:.2}%\n--- expected\n{reference}\n--- got\n{got}",
        c * 100.0,
        max * 100.0
    );
    c
}

// ------------------------------------------------------------ environment

#[test]
fn omp_thread_limit_is_one_in_test_process() {
    assert_eq!(std::env::var("OMP_THREAD_LIMIT").as_deref(), Ok("1"));
    assert!(omp_thread_limit_ok());
}

// ----------------------------------------------------------------- decode

#[test]
fn bomb_png_is_refused_from_header() {
    let bomb = bomb_png(100_000, 100_000);
    assert!(bomb.len() < 100);
    let t = Instant::now();
    let err = decode(&bomb, &DecodeLimits::default()).expect_err("bomb must be refused");
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "took {:?}",
        t.elapsed()
    );
    match err {
        OcrError::TooManyPixels { width, height, max } => {
            assert_eq!((width, height, max), (100_000, 100_000, 40_000_000));
        }
        other => panic!("expected TooManyPixels, got {other:?}"),
    }
    assert!(err_is_bad_input(&bomb));
}

fn err_is_bad_input(bytes: &[u8]) -> bool {
    decode(bytes, &DecodeLimits::default()).is_err_and(|e| e.is_bad_input())
}

#[test]
fn long_strip_is_refused_by_side_limit() {
    let strip = bomb_png(30_000, 10);
    match decode(&strip, &DecodeLimits::default()) {
        Err(OcrError::SideTooLong {
            width: 30_000,
            height: 10,
            max_side: 20_000,
        }) => {}
        other => panic!("expected SideTooLong, got {other:?}"),
    }
}

#[test]
fn html_and_other_non_images_are_unsupported() {
    let html = b"<!DOCTYPE html><html><body>404 Not Found</body></html>";
    assert_eq!(sniff(html), None);
    assert!(matches!(
        decode(html, &DecodeLimits::default()),
        Err(OcrError::UnsupportedFormat)
    ));
    for junk in [
        &b""[..],
        b"%PDF-1.7\n",
        b"BM but just text, not a bitmap",
        b"\x89PN",
    ] {
        assert_eq!(sniff(junk), None, "{junk:?}");
        assert!(matches!(
            decode(junk, &DecodeLimits::default()),
            Err(OcrError::UnsupportedFormat)
        ));
    }
}

#[test]
fn truncated_png_is_corrupt() {
    let (page, _) = testpages::render("Q1 (a) truncated", &font(), Layout::a4(50.0));
    let png = testpages::png(&page);
    for cut in [png.len() / 2, 40] {
        match decode(&png[..cut], &DecodeLimits::default()) {
            Err(OcrError::Corrupt(msg)) => assert!(!msg.is_empty()),
            other => panic!("cut at {cut}: expected Corrupt, got {other:?}"),
        }
    }
}

#[test]
fn all_supported_formats_sniff_and_decode() {
    let mut rgb = RgbImage::from_pixel(40, 30, Rgb([250, 250, 250]));
    for x in 5..35 {
        rgb.put_pixel(x, 15, Rgb([0, 0, 0]));
    }
    let img = DynamicImage::ImageRgb8(rgb);
    for format in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Tiff,
        ImageFormat::WebP,
        ImageFormat::Bmp,
        ImageFormat::Gif,
    ] {
        let bytes = encode(&img, format);
        assert_eq!(sniff(&bytes), Some(format), "{format:?}");
        let decoded = decode(&bytes, &DecodeLimits::default()).expect("decodes");
        assert_eq!((decoded.width(), decoded.height()), (40, 30), "{format:?}");
        let luma = decoded.to_luma8();
        assert!(luma.get_pixel(20, 15).0[0] < 80, "{format:?}: line lost");
        assert!(
            luma.get_pixel(20, 5).0[0] > 200,
            "{format:?}: background lost"
        );
    }
}

#[test]
fn gif_decodes_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::{Delay, Frame, Rgba, RgbaImage};
    let mut bytes = Vec::new();
    {
        let mut enc = GifEncoder::new(&mut bytes);
        let black = RgbaImage::from_pixel(16, 8, Rgba([0, 0, 0, 255]));
        let white = RgbaImage::from_pixel(16, 8, Rgba([255, 255, 255, 255]));
        let delay = Delay::from_numer_denom_ms(100, 1);
        enc.encode_frames([
            Frame::from_parts(black, 0, 0, delay),
            Frame::from_parts(white, 0, 0, delay),
        ])
        .expect("gif encode");
    }
    let img = decode(&bytes, &DecodeLimits::default()).expect("gif decodes");
    assert_eq!((img.width(), img.height()), (16, 8));
    assert!(
        img.to_luma8().pixels().all(|p| p.0[0] < 10),
        "not the first (black) frame"
    );
}

#[test]
fn jpeg_exif_orientation_is_applied() {
    // A 60x20 JPEG tagged "rotate 90° clockwise to display" (EXIF 6).
    let img = GrayImage::from_fn(60, 20, |x, _| Luma([if x < 10 { 0 } else { 255 }]));
    let tagged = testpages::with_exif_orientation(&testpages::jpeg(&img, 95), 6);
    let out = decode(&tagged, &DecodeLimits::default()).expect("decodes");
    assert_eq!(
        (out.width(), out.height()),
        (20, 60),
        "EXIF rotation not applied"
    );
    // The dark left band is now the top band.
    let l = out.to_luma8();
    assert!(l.get_pixel(10, 2).0[0] < 60 && l.get_pixel(10, 50).0[0] > 200);
}

// ------------------------------------------------------------- preprocess

#[test]
fn glyph_height_tracks_resolution() {
    let font = font();
    let text = testpages::page_text(0, 4);
    let mut last = 0.0;
    for dpi in [75.0, 150.0, 300.0] {
        let (page, _) = testpages::render(&text, &font, Layout::a4(dpi));
        let h = median_glyph_height(&page).expect("text page");
        let expected = dpi * preprocess::GLYPH_HEIGHT_AT_300_DPI / 300.0;
        assert!(
            (h - expected).abs() <= expected * 0.25 + 1.0,
            "{dpi} dpi: {h} vs {expected}"
        );
        assert!(h > last);
        last = h;
    }
    assert_eq!(
        median_glyph_height(&GrayImage::from_pixel(500, 500, Luma([255]))),
        None
    );
    assert_eq!(
        median_glyph_height(&GrayImage::from_pixel(500, 500, Luma([0]))),
        None
    );
}

#[test]
fn prepare_scales_small_and_huge_text_and_leaves_normal_text() {
    let font = font();
    let text = testpages::page_text(1, 4);
    let opts = PreprocessOptions::default();
    for (dpi, lo, hi) in [(75.0, 2.0, 3.0), (200.0, 1.0, 1.0), (600.0, 0.3, 0.36)] {
        let (page, _) = testpages::render(&text, &font, Layout::a4(dpi));
        let (w, h) = page.dimensions();
        let p = prepare(DynamicImage::ImageLuma8(page), &opts);
        assert!((lo..=hi).contains(&p.scale), "{dpi} dpi: scale {}", p.scale);
        assert_eq!(p.image.width(), (w as f32 * p.scale).round() as u32);
        assert_eq!(p.image.height(), (h as f32 * p.scale).round() as u32);
        let ppi = p.ppi.expect("measured");
        assert!((150..=260).contains(&ppi), "{dpi} dpi: ppi {ppi}");
    }
    // No text: untouched, resolution unknown; colour input becomes gray.
    let photo = DynamicImage::ImageRgb8(RgbImage::from_pixel(300, 200, Rgb([10, 200, 30])));
    let p = prepare(photo, &opts);
    assert_eq!(
        (p.scale, p.ppi, p.image.dimensions()),
        (1.0, None, (300, 200))
    );
}

#[test]
fn automatic_lighting_and_denoising_run_only_on_pages_that_need_them() {
    let (page, _) = testpages::render(&testpages::page_text(2, 4), &font(), Layout::a4(150.0));
    let auto = PreprocessOptions {
        enhance: EnhanceSteps {
            perspective: false,
            lighting: StepMode::Auto,
            deskew: false,
            denoise: StepMode::Auto,
        },
        ..PreprocessOptions::default()
    };
    let clean = prepare(DynamicImage::ImageLuma8(page.clone()), &auto);
    assert!(!clean.enhanced.lighting && !clean.enhanced.denoised);
    assert!(clean.enhanced.lighting_spread.expect("measured") < 12.0);
    assert!(clean.enhanced.noise_level.expect("measured") < 2.0);
    assert_eq!(clean.image, page, "a clean page is left as it is");

    // Lit from the left: the paper falls to 40% brightness at the right edge.
    let width = page.width() as f32;
    let shadowed = GrayImage::from_fn(page.width(), page.height(), |x, y| {
        let light = 1.0 - 0.6 * x as f32 / width;
        Luma([(f32::from(page.get_pixel(x, y).0[0]) * light) as u8])
    });
    let lit = prepare(DynamicImage::ImageLuma8(shadowed), &auto);
    assert!(lit.enhanced.lighting, "{:?}", lit.enhanced);
    assert!(!lit.enhanced.denoised, "{:?}", lit.enhanced);

    // Sensor noise: every pixel off by up to ±40 levels (a fixed pseudo-random sequence).
    let mut state = 0x2545_f491_u32;
    let noisy = GrayImage::from_fn(page.width(), page.height(), |x, y| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let offset = (state % 81) as i32 - 40;
        Luma([(i32::from(page.get_pixel(x, y).0[0]) + offset).clamp(0, 255) as u8])
    });
    let filtered = prepare(DynamicImage::ImageLuma8(noisy), &auto);
    assert!(filtered.enhanced.denoised, "{:?}", filtered.enhanced);
    assert!(!filtered.enhanced.lighting, "{:?}", filtered.enhanced);
}

#[test]
fn enhancement_steps_are_written_off_on_or_auto() {
    let steps: EnhanceSteps =
        serde_json::from_str(r#"{"lighting": "auto", "denoise": true, "deskew": false}"#)
            .expect("parses");
    assert_eq!(
        (steps.lighting, steps.denoise),
        (StepMode::Auto, StepMode::On)
    );
    assert_eq!(steps.key(), "perspective+lighting:auto+denoise");
    let steps: EnhanceSteps = serde_json::from_str(r#"{"lighting": "OFF"}"#).expect("parses");
    assert_eq!(steps.lighting, StepMode::Off);
    let err = serde_json::from_str::<EnhanceSteps>(r#"{"lighting": "sometimes"}"#).unwrap_err();
    assert!(err.to_string().contains("auto"), "{err}");
    assert_eq!(
        serde_json::to_value(EnhanceSteps::default()).unwrap()["lighting"],
        "auto"
    );
}

#[test]
fn enhancement_leaves_clean_pages_alone_and_straightens_tilted_ones() {
    let font = font();
    let (page, _) = testpages::render(&testpages::page_text(2, 4), &font, Layout::a4(150.0));
    let all = EnhanceSteps {
        perspective: true,
        lighting: StepMode::On,
        deskew: true,
        denoise: StepMode::On,
    };
    let opts = PreprocessOptions {
        enhance: all,
        ..PreprocessOptions::default()
    };
    let clean = prepare(DynamicImage::ImageLuma8(page.clone()), &opts);
    assert!(!clean.enhanced.warped, "a flat page is never warped");
    assert_eq!(clean.enhanced.deskewed_degrees, None);
    assert!(clean.enhanced.lighting && clean.enhanced.denoised);
    assert_eq!(clean.image.dimensions(), page.dimensions());

    let tilted = enhance::rotate(&page, 3.0);
    let straightened = prepare(DynamicImage::ImageLuma8(tilted), &opts);
    let degrees = straightened.enhanced.deskewed_degrees.expect("tilt found");
    assert!((degrees - 3.0).abs() < 0.3, "{degrees}");

    // With every step off nothing runs and nothing is reported.
    let off = EnhanceSteps {
        perspective: false,
        lighting: StepMode::Off,
        deskew: false,
        denoise: StepMode::Off,
    };
    let plain = prepare(
        DynamicImage::ImageLuma8(page.clone()),
        &PreprocessOptions {
            enhance: off,
            ..PreprocessOptions::default()
        },
    );
    assert_eq!(plain.enhanced, preprocess::Enhanced::default());
    assert_eq!(plain.image, page);

    // A straightened page is larger than the tilted one, but never beyond the pixel cap.
    let (small, _) = testpages::render(&testpages::page_text(3, 4), &font, Layout::a4(100.0));
    let cap = u64::from(small.width()) * u64::from(small.height());
    let capped = prepare(
        DynamicImage::ImageLuma8(enhance::rotate(&small, -4.0)),
        &PreprocessOptions {
            enhance: all,
            max_output_pixels: cap,
            rescale: false,
            ..PreprocessOptions::default()
        },
    );
    assert!(capped.enhanced.deskewed_degrees.is_some());
    let (w, h) = capped.image.dimensions();
    assert!(u64::from(w) * u64::from(h) <= cap, "{w}x{h}");
}

#[test]
fn resample_keeps_flat_areas_and_sizes() {
    let flat = GrayImage::from_pixel(97, 41, Luma([200]));
    for (w, h) in [(300, 120), (33, 14), (97, 41), (1, 1)] {
        let out = resample(&flat, w, h);
        assert_eq!(out.dimensions(), (w, h));
        assert!(out.pixels().all(|p| p.0[0] == 200), "{w}x{h}");
    }
    // A black/white edge stays an edge (values within range, monotone).
    let edge = GrayImage::from_fn(20, 4, |x, _| Luma([if x < 10 { 0 } else { 255 }]));
    let up = resample(&edge, 80, 16);
    assert!(up.get_pixel(0, 8).0[0] < 10 && up.get_pixel(79, 8).0[0] > 245);
}

#[test]
fn rotate_upright_undoes_quarter_turns() {
    let img = GrayImage::from_fn(7, 3, |x, y| Luma([(x * 10 + y) as u8]));
    use image::imageops::{rotate180, rotate270, rotate90};
    assert_eq!(rotate_upright(rotate90(&img), 90), img);
    assert_eq!(rotate_upright(rotate180(&img), 180), img);
    assert_eq!(rotate_upright(rotate270(&img), 270), img);
    assert_eq!(rotate_upright(img.clone(), 0), img);
}

// ------------------------------------------------------- OCR (Tesseract)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reads_rendered_png_pages() {
    let pool = Arc::new(tesseract_pool(2));
    let sans = font();
    let serif = testpages::load_font(testpages::FONT_SERIF);
    let mut jobs = Vec::new();
    for i in 0..3 {
        let f = if i == 2 { &serif } else { &sans };
        let (page, reference) =
            testpages::render(&testpages::page_text(i, 5), f, Layout::a4(200.0));
        assert!(reference.lines().count() >= 15);
        let size = page.dimensions();
        let bytes = Bytes::from(testpages::png(&page));
        let pool = Arc::clone(&pool);
        jobs.push(tokio::spawn(async move {
            (pool.recognize(bytes).await, reference, size)
        }));
    }
    for (i, job) in jobs.into_iter().enumerate() {
        let (result, reference, size) = job.await.expect("task");
        let page = result.expect("page OCR");
        assert_cer(&reference, &page.text, 0.02, &format!("page {i}"));
        assert!(wer(&reference, &page.text) < 0.05);
        assert_eq!(page.engine, "tesseract:eng");
        assert_eq!((page.width, page.height), size);
        assert!(page.confidence > 0.8, "confidence {}", page.confidence);
        assert_eq!(page.rotated_degrees, 0);
        assert!(page.ocr_ms > 0.0 && page.decode_ms > 0.0);
    }
}

#[tokio::test]
async fn pool_reads_jpeg_page() {
    let pool = tesseract_pool(1);
    let (page, reference) =
        testpages::render(&testpages::page_text(4, 4), &font(), Layout::a4(200.0));
    let jpeg = testpages::jpeg(&page, 80);
    assert_eq!(sniff(&jpeg), Some(ImageFormat::Jpeg));
    let got = pool.recognize(Bytes::from(jpeg)).await.expect("jpeg OCR");
    assert_cer(&reference, &got.text, 0.02, "jpeg");
}

#[tokio::test]
async fn small_low_res_image_is_upscaled_and_read() {
    // A 468x216 crop at 72 dpi: glyphs ~6 px high.
    let layout = Layout {
        dpi: 72.0,
        points: 11.0,
        page_in: (6.5, 3.0),
        margin_in: 0.2,
        leading: 1.35,
    };
    let (page, reference) = testpages::render(&testpages::page_text(3, 3), &font(), layout);
    // Baseline: the same image straight into Tesseract.
    let mut raw = TesseractEngine::new("eng", None).expect("eng");
    let raw_cer = cer(&reference, &raw.recognize(&page, None).expect("raw").text);

    let pool = tesseract_pool(1);
    let got = pool
        .recognize(Bytes::from(testpages::png(&page)))
        .await
        .expect("OCR");
    assert!(got.scale > 2.0, "scale {}", got.scale);
    let c = assert_cer(&reference, &got.text, 0.02, "low-res");
    assert!(c < raw_cer, "upscaling did not help: {c} vs raw {raw_cer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upside_down_and_sideways_pages_are_turned() {
    let mut probe = TesseractEngine::new("eng", None).expect("eng");
    if let Err(e) = probe.enable_orientation_detection(None) {
        panic!("orientation detection needs osd.traineddata: {e}");
    }
    drop(probe);
    let pool = Arc::new(tesseract_pool(2));
    let (page, reference) =
        testpages::render(&testpages::page_text(2, 4), &font(), Layout::a4(200.0));
    let mut jobs = Vec::new();
    for (deg, img) in [
        (180u16, image::imageops::rotate180(&page)),
        (270, image::imageops::rotate270(&page)),
    ] {
        let pool = Arc::clone(&pool);
        let bytes = Bytes::from(testpages::png(&img));
        jobs.push((
            deg,
            tokio::spawn(async move { pool.recognize(bytes).await }),
        ));
    }
    for (deg, job) in jobs {
        let got = job.await.expect("task").expect("OCR");
        // Rotated 270° clockwise must be turned back 270° counter-clockwise.
        assert_eq!(got.rotated_degrees, deg);
        assert_cer(&reference, &got.text, 0.02, &format!("rotated {deg}"));
    }
}

#[tokio::test]
async fn bad_input_through_pool_is_reported() {
    let pool = tesseract_pool(1);
    let html = Bytes::from_static(b"<html><body>Access denied</body></html>");
    assert!(matches!(
        pool.recognize(html).await,
        Err(OcrError::UnsupportedFormat)
    ));
    let bomb = Bytes::from(bomb_png(100_000, 100_000));
    assert!(matches!(
        pool.recognize(bomb).await,
        Err(OcrError::TooManyPixels { .. })
    ));
    // The worker is still fine afterwards.
    let blank = pool
        .recognize(small_png(200, 100))
        .await
        .expect("blank page");
    assert_eq!(blank.text, "");
    // Nothing read is reported as no confidence, so `auto` hands such pages to PP-OCR.
    assert_eq!(blank.confidence, 0.0);
}

#[test]
fn pool_start_fails_cleanly_on_missing_language() {
    let err = OcrPool::tesseract(PoolConfig::default(), "eng+zzz", None)
        .err()
        .expect("zzz does not exist");
    let msg = err.to_string();
    assert!(matches!(err, OcrError::EngineInit(_)), "{msg}");
    assert!(
        msg.contains("zzz.traineddata") && msg.contains("tesseract-ocr-zzz"),
        "{msg}"
    );
}

// ------------------------------------------------ pool with fake engines

/// Reports the page width as text after an optional delay; panics on width
/// 13; blocks while `gate` holds a receiver and the page is 77 wide.
struct FakeEngine {
    delay: Duration,
    started: Option<std_mpsc::Sender<String>>,
    gate: Option<Arc<Mutex<std_mpsc::Receiver<()>>>>,
    drops: Arc<AtomicUsize>,
}

impl OcrEngine for FakeEngine {
    fn name(&self) -> &str {
        "fake"
    }
    fn recognize(&mut self, page: &GrayImage, _ppi: Option<u32>) -> Result<Recognized, OcrError> {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        if let Some(s) = &self.started {
            let _ = s.send(thread.clone());
        }
        if page.width() == 13 {
            panic!("fake engine exploded");
        }
        if page.width() == 77 {
            if let Some(gate) = &self.gate {
                let _ = gate.lock().expect("gate").recv();
            }
        }
        std::thread::sleep(self.delay);
        Ok(Recognized {
            text: format!("{} {thread}", page.width()),
            confidence: 1.0,
        })
    }
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

struct Fakes {
    created: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
    started: std_mpsc::Receiver<String>,
    gate: std_mpsc::Sender<()>,
}

fn fake_pool(threads: usize, capacity: usize, delay: Duration) -> (OcrPool, Fakes) {
    let created = Arc::new(AtomicUsize::new(0));
    let drops = Arc::new(AtomicUsize::new(0));
    let (started_tx, started) = std_mpsc::channel();
    let (gate, gate_rx) = std_mpsc::channel();
    let gate_rx = Arc::new(Mutex::new(gate_rx));
    let started_tx = Arc::new(Mutex::new(started_tx));
    let factory: EngineFactory = {
        let created = Arc::clone(&created);
        let drops = Arc::clone(&drops);
        Arc::new(move || {
            created.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(FakeEngine {
                delay,
                started: Some(started_tx.lock().expect("tx").clone()),
                gate: Some(Arc::clone(&gate_rx)),
                drops: Arc::clone(&drops),
            }) as Box<dyn OcrEngine>)
        })
    };
    let config = PoolConfig {
        threads,
        queue_capacity: capacity,
        ..PoolConfig::default()
    };
    let pool = OcrPool::new(config, factory).expect("fake pool");
    (
        pool,
        Fakes {
            created,
            drops,
            started,
            gate,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pages_run_concurrently_on_both_workers() {
    let (pool, _fakes) = fake_pool(2, 0, Duration::from_millis(400));
    assert_eq!(pool.threads(), 2);
    assert_eq!(pool.capacity(), 8);
    let t = Instant::now();
    let (a, b) = tokio::join!(
        pool.recognize(small_png(30, 10)),
        pool.recognize(small_png(31, 10))
    );
    let elapsed = t.elapsed();
    let (a, b) = (a.expect("a"), b.expect("b"));
    let thread_a = a.text.split(' ').nth(1).expect("thread").to_owned();
    let thread_b = b.text.split(' ').nth(1).expect("thread").to_owned();
    assert!(thread_a.starts_with("ocr-") && thread_b.starts_with("ocr-"));
    assert_ne!(thread_a, thread_b, "both pages ran on one worker");
    assert!(
        elapsed < Duration::from_millis(750),
        "not concurrent: {elapsed:?}"
    );
    assert_eq!(a.engine, "fake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_recognize_is_overloaded_when_queue_is_full() {
    let (pool, fakes) = fake_pool(1, 1, Duration::ZERO);
    let pool = Arc::new(pool);
    // Job A occupies the only worker (blocked on the gate)...
    let a = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.recognize(small_png(77, 10)).await }
    });
    let started = tokio::task::spawn_blocking(move || {
        let name = fakes.started.recv_timeout(Duration::from_secs(10));
        (name, fakes)
    });
    let (name, fakes) = started.await.expect("join");
    assert!(name.is_ok(), "worker never started job A");
    // ...job B fills the queue of one...
    let b = tokio::spawn({
        let pool = Arc::clone(&pool);
        async move { pool.try_recognize(small_png(20, 10)).await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while pool.queue_depth() < 1 {
        assert!(Instant::now() < deadline, "job B never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...so C is refused at once.
    let t = Instant::now();
    let c = pool.try_recognize(small_png(21, 10)).await;
    assert!(matches!(c, Err(OcrError::Overloaded)), "{c:?}");
    assert!(t.elapsed() < Duration::from_millis(100));

    fakes.gate.send(()).expect("release A");
    assert_eq!(
        a.await.expect("a").expect("A ok").text.split(' ').next(),
        Some("77")
    );
    assert_eq!(
        b.await.expect("b").expect("B ok").text.split(' ').next(),
        Some("20")
    );
    assert_eq!(pool.queue_depth(), 0);
}

#[tokio::test]
async fn panicking_engine_is_replaced() {
    let (pool, fakes) = fake_pool(1, 0, Duration::ZERO);
    assert_eq!(fakes.created.load(Ordering::SeqCst), 1);
    let boom = pool.recognize(small_png(13, 10)).await;
    match boom {
        Err(OcrError::EnginePanicked(msg)) => assert!(msg.contains("exploded"), "{msg}"),
        other => panic!("expected EnginePanicked, got {other:?}"),
    }
    assert_eq!(
        fakes.created.load(Ordering::SeqCst),
        2,
        "engine not recreated"
    );
    assert_eq!(
        fakes.drops.load(Ordering::SeqCst),
        1,
        "old engine not dropped"
    );
    let ok = pool
        .recognize(small_png(40, 10))
        .await
        .expect("pool still works");
    assert!(ok.text.starts_with("40 ocr-0"));
}

#[test]
fn dropping_the_pool_stops_and_joins_workers() {
    let (pool, fakes) = fake_pool(2, 0, Duration::ZERO);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let page = rt
        .block_on(pool.recognize(small_png(25, 10)))
        .expect("page");
    assert!(page.text.starts_with("25 "));
    drop(pool); // sync context: joins
    assert_eq!(fakes.drops.load(Ordering::SeqCst), 2, "engines not dropped");

    let (pool, fakes) = fake_pool(2, 0, Duration::ZERO);
    pool.shutdown();
    assert_eq!(fakes.drops.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn dropping_the_pool_inside_a_runtime_does_not_block_or_panic() {
    let (pool, fakes) = fake_pool(2, 0, Duration::ZERO);
    pool.recognize(small_png(25, 10)).await.expect("page");
    drop(pool); // detaches; threads exit on their own
    let deadline = Instant::now() + Duration::from_secs(5);
    while fakes.drops.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "workers did not exit");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn pool_start_reports_factory_failure() {
    let factory: EngineFactory = Arc::new(|| Err(OcrError::EngineInit("no such engine".into())));
    let config = PoolConfig {
        threads: 2,
        ..PoolConfig::default()
    };
    match OcrPool::new(config, factory) {
        Err(OcrError::EngineInit(msg)) => assert_eq!(msg, "no such engine"),
        other => panic!("expected EngineInit, got {:?}", other.map(|_| ())),
    }
}

/// Records which thread entered which span.
struct SpanLog {
    next: AtomicUsize,
    entered: Mutex<Vec<(u64, String)>>,
}

impl tracing::Subscriber for SpanLog {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(self.next.fetch_add(1, Ordering::SeqCst) as u64 + 1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, span: &tracing::span::Id) {
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        self.entered
            .lock()
            .expect("log")
            .push((span.into_u64(), thread));
    }
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn worker_enters_the_callers_span() {
    // `recognize` passes `Span::current()` to `recognize_in`; a subscriber
    // able to answer `current_span` needs tracing-core types, so the span is
    // handed over directly here and the test checks the worker side.
    let (pool, _fakes) = fake_pool(1, 0, Duration::ZERO);
    let log = Arc::new(SpanLog {
        next: AtomicUsize::new(0),
        entered: Mutex::new(Vec::new()),
    });
    let dispatch = tracing::Dispatch::new(Arc::clone(&log));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let span = tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("grade_script", script = 42)
    });
    let span_id = span.id().expect("enabled span").into_u64();
    rt.block_on(pool.recognize_in(small_png(22, 10), span, true, None))
        .expect("page");
    let entered = log.entered.lock().expect("log");
    assert!(
        entered.iter().any(|(id, t)| *id == span_id && t == "ocr-0"),
        "worker did not enter the caller's span: {entered:?}"
    );
}

// ------------------------------------------------------------ measurement

/// Reproduces the numbers quoted in `preprocess.rs` (not an acceptance test;
/// takes ~1 min in release):
/// `cargo test --release --lib -- --ignored preprocess_measurements --nocapture`
#[test]
#[ignore = "measurement, run by hand"]
fn preprocess_measurements() {
    let font = font();
    let mut engine = TesseractEngine::new("eng", None).expect("eng");
    engine.enable_orientation_detection(None).expect("osd");
    let opts = PreprocessOptions::default();
    println!("dpi   raw CER   raw s | scale  prepared CER  prepared s (incl. preprocessing)");
    for dpi in [60.0f32, 75.0, 100.0, 130.0, 200.0, 300.0, 600.0] {
        let (page, reference) =
            testpages::render(&testpages::page_text(0, 12), &font, Layout::a4(dpi));
        let t = Instant::now();
        let raw = engine.recognize(&page, None).expect("raw");
        let raw_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let prepared = prepare(DynamicImage::ImageLuma8(page), &opts);
        let got = engine
            .recognize(&prepared.image, prepared.ppi)
            .expect("prepared");
        let prep_s = t.elapsed().as_secs_f64();
        println!(
            "{dpi:>4} {:>8.3}% {raw_s:>6.2} | {:>5.2} {:>12.3}% {prep_s:>10.2}",
            100.0 * cer(&reference, &raw.text),
            prepared.scale,
            100.0 * cer(&reference, &got.text)
        );
    }
    println!("rotation  confidence  CER      OSD (degrees, confidence)  OSD s");
    let (page, reference) =
        testpages::render(&testpages::page_text(1, 12), &font, Layout::a4(200.0));
    for deg in [0u16, 90, 180, 270] {
        let turned = match deg {
            90 => image::imageops::rotate90(&page),
            180 => image::imageops::rotate180(&page),
            270 => image::imageops::rotate270(&page),
            _ => page.clone(),
        };
        let got = engine.recognize(&turned, Some(200)).expect("ocr");
        let t = Instant::now();
        let osd = engine.detect_orientation(&turned, Some(200)).expect("osd");
        println!(
            "{deg:>8} {:>11.2} {:>6.3}%  {:?}  {:.2}",
            got.confidence,
            100.0 * cer(&reference, &got.text),
            osd.map(|o| (o.degrees, o.confidence)),
            t.elapsed().as_secs_f64()
        );
    }
}

/// Reads the vocabulary it was given for the page as the page's text.
struct VocabularyEngine {
    words: Option<Arc<Vocabulary>>,
}

impl OcrEngine for VocabularyEngine {
    fn name(&self) -> &str {
        "vocabulary"
    }
    fn recognize(&mut self, _page: &GrayImage, _ppi: Option<u32>) -> Result<Recognized, OcrError> {
        Ok(Recognized {
            text: self
                .words
                .as_ref()
                .map(|w| w.words().join(" "))
                .unwrap_or_default(),
            confidence: 1.0,
        })
    }
    fn set_vocabulary(&mut self, words: Option<Arc<Vocabulary>>) {
        self.words = words;
    }
}

#[test]
fn each_page_reaches_the_engine_with_its_own_vocabulary() {
    let factory: EngineFactory =
        Arc::new(|| Ok(Box::new(VocabularyEngine { words: None }) as Box<dyn OcrEngine>));
    let config = PoolConfig {
        threads: 1,
        ..PoolConfig::default()
    };
    let pool = OcrPool::new(config, factory).expect("pool");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let words = Arc::new(Vocabulary::from_texts([
        "Debit the cash account.",
        "Credit: sales (2024); the a",
    ]));
    let page = rt
        .block_on(pool.read_with(small_png(30, 10), Some(words)))
        .unwrap();
    assert_eq!(page.text, "account cash credit debit sales the");
    // The next page of another upload gets none of them.
    let page = rt.block_on(pool.read(small_png(30, 10))).unwrap();
    assert_eq!(page.text, "");
}

/// An engine that always reads the same text with the same confidence, counting its pages.
struct FixedEngine {
    name: &'static str,
    text: &'static str,
    confidence: f32,
    pages: Arc<AtomicUsize>,
}

impl OcrEngine for FixedEngine {
    fn name(&self) -> &str {
        self.name
    }
    fn recognize(&mut self, _page: &GrayImage, _ppi: Option<u32>) -> Result<Recognized, OcrError> {
        self.pages.fetch_add(1, Ordering::SeqCst);
        Ok(Recognized {
            text: self.text.to_string(),
            confidence: self.confidence,
        })
    }
}

fn fixed(
    name: &'static str,
    text: &'static str,
    confidence: f32,
    pages: &Arc<AtomicUsize>,
) -> EngineFactory {
    let pages = Arc::clone(pages);
    Arc::new(move || {
        Ok(Box::new(FixedEngine {
            name,
            text,
            confidence,
            pages: Arc::clone(&pages),
        }) as Box<dyn OcrEngine>)
    })
}

fn fallback_pool(primary_confidence: f32, fallback: EngineFactory) -> (OcrPool, Arc<AtomicUsize>) {
    let primary_pages = Arc::new(AtomicUsize::new(0));
    let config = PoolConfig {
        threads: 1,
        fallback_below: 0.80,
        ..PoolConfig::default()
    };
    let engines = Engines {
        primary: fixed("print", "printed text", primary_confidence, &primary_pages),
        fallback: Some(fallback),
    };
    let pool = OcrPool::with_fallback(config, engines).expect("pool");
    (pool, primary_pages)
}

#[tokio::test]
async fn confident_pages_keep_the_primary_reading_and_never_start_the_fallback() {
    let created = Arc::new(AtomicUsize::new(0));
    let fallback: EngineFactory = {
        let created = Arc::clone(&created);
        Arc::new(move || {
            created.fetch_add(1, Ordering::SeqCst);
            Err(OcrError::EngineInit("must not be created".into()))
        })
    };
    let (pool, primary_pages) = fallback_pool(0.96, fallback);
    let page = pool.recognize(small_png(30, 10)).await.expect("page");
    assert_eq!(page.text, "printed text");
    assert_eq!(page.engine, "print");
    assert_eq!(primary_pages.load(Ordering::SeqCst), 1);
    assert_eq!(
        created.load(Ordering::SeqCst),
        0,
        "fallback engine is created lazily"
    );
}

#[tokio::test]
async fn poorly_read_pages_go_to_the_fallback_engine() {
    let fallback_pages = Arc::new(AtomicUsize::new(0));
    let (pool, _) = fallback_pool(
        0.45,
        fixed("hand", "handwritten text", 0.97, &fallback_pages),
    );
    for _ in 0..2 {
        let page = pool.recognize(small_png(30, 10)).await.expect("page");
        assert_eq!(page.text, "handwritten text");
        assert_eq!(page.engine, "hand");
        assert!((page.confidence - 0.97).abs() < 1e-6);
    }
    assert_eq!(fallback_pages.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_fallback_that_cannot_start_leaves_the_primary_reading() {
    let fallback: EngineFactory = Arc::new(|| Err(OcrError::EngineInit("models missing".into())));
    let (pool, primary_pages) = fallback_pool(0.45, fallback);
    for _ in 0..2 {
        let page = pool.recognize(small_png(30, 10)).await.expect("page");
        assert_eq!(page.text, "printed text");
        assert_eq!(page.engine, "print");
    }
    assert_eq!(primary_pages.load(Ordering::SeqCst), 2);
}

// ------------------------------------------------------------- time limit

#[test]
fn tesseract_gives_up_on_a_page_at_its_time_limit_and_reads_the_next() {
    let (page, reference) =
        testpages::render(&testpages::page_text(0, 6), &font(), Layout::a4(200.0));
    let mut engine = TesseractEngine::new("eng", None).expect("eng");
    engine.set_time_limit(Some(Duration::from_millis(1)));
    let err = engine
        .recognize(&page, Some(200))
        .expect_err("a page of text takes Tesseract longer than 1 ms");
    assert!(matches!(err, OcrError::TimedOut { .. }), "{err}");
    assert!(err.is_bad_input(), "the same page would time out again");
    assert!(
        err.to_string().contains("ocr.tesseract_time_limit_secs"),
        "{err}"
    );
    engine.set_time_limit(Some(tesseract::DEFAULT_TIME_LIMIT));
    let read = engine
        .recognize(&page, Some(200))
        .expect("within the limit");
    assert_cer(&reference, &read.text, 0.02, "the page after a timeout");
}

/// An engine that always gives up at its time limit, counting its pages.
struct GivesUpEngine {
    pages: Arc<AtomicUsize>,
}

impl OcrEngine for GivesUpEngine {
    fn name(&self) -> &str {
        "slow"
    }
    fn recognize(&mut self, _page: &GrayImage, _ppi: Option<u32>) -> Result<Recognized, OcrError> {
        self.pages.fetch_add(1, Ordering::SeqCst);
        Err(OcrError::TimedOut {
            engine: "slow".into(),
            limit_secs: 0.5,
        })
    }
}

fn gives_up(pages: &Arc<AtomicUsize>) -> EngineFactory {
    let pages = Arc::clone(pages);
    Arc::new(move || {
        Ok(Box::new(GivesUpEngine {
            pages: Arc::clone(&pages),
        }) as Box<dyn OcrEngine>)
    })
}

fn gives_up_pool(fallback: Option<EngineFactory>) -> (OcrPool, Arc<AtomicUsize>) {
    let pages = Arc::new(AtomicUsize::new(0));
    let config = PoolConfig {
        threads: 1,
        fallback_below: 0.80,
        ..PoolConfig::default()
    };
    let engines = Engines {
        primary: gives_up(&pages),
        fallback,
    };
    (
        OcrPool::with_fallback(config, engines).expect("pool"),
        pages,
    )
}

#[tokio::test]
async fn a_page_the_primary_engine_gave_up_on_is_read_by_the_fallback() {
    let fallback_pages = Arc::new(AtomicUsize::new(0));
    let (pool, primary_pages) = gives_up_pool(Some(fixed(
        "hand",
        "handwritten text",
        0.97,
        &fallback_pages,
    )));
    let page = pool.recognize(small_png(30, 10)).await.expect("page");
    assert_eq!(
        (page.text.as_str(), page.engine.as_str()),
        ("handwritten text", "hand")
    );
    // Read once: no orientation check or second try on a page the engine gave up on.
    assert_eq!(primary_pages.load(Ordering::SeqCst), 1);
    assert_eq!(fallback_pages.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_page_no_engine_could_read_in_time_is_an_error_not_an_empty_page() {
    let (pool, _) = gives_up_pool(None);
    let err = pool.recognize(small_png(30, 10)).await.unwrap_err();
    assert!(matches!(err, OcrError::TimedOut { .. }), "{err}");

    let cannot_start: EngineFactory =
        Arc::new(|| Err(OcrError::EngineInit("models missing".into())));
    let (pool, _) = gives_up_pool(Some(cannot_start));
    let err = pool.recognize(small_png(30, 10)).await.unwrap_err();
    assert!(matches!(err, OcrError::TimedOut { .. }), "{err}");

    let fails: EngineFactory = Arc::new(|| {
        Ok(Box::new(GivesUpEngine {
            pages: Arc::new(AtomicUsize::new(0)),
        }) as Box<dyn OcrEngine>)
    });
    let (pool, _) = gives_up_pool(Some(fails));
    let err = pool.recognize(small_png(30, 10)).await.unwrap_err();
    assert!(matches!(err, OcrError::TimedOut { .. }), "{err}");
}

/// Prints what `lighting = "auto"` and `denoise = "auto"` measure on every page of the data
/// folders named in `ENHANCE_SIGNAL_DIRS` (space-separated, `transcripts.jsonl` format), after
/// the default perspective step, as the service measures them. Quoted in OCR.md:
/// `ENHANCE_SIGNAL_DIRS="…" cargo test --release --lib -- --ignored enhancement_signals --nocapture`
#[test]
#[ignore = "measurement, run by hand"]
fn enhancement_signals() {
    let dirs = std::env::var("ENHANCE_SIGNAL_DIRS").expect("ENHANCE_SIGNAL_DIRS");
    let steps = EnhanceSteps {
        lighting: StepMode::Auto,
        denoise: StepMode::Auto,
        ..EnhanceSteps::default()
    };
    for dir in dirs.split_whitespace() {
        let dir = std::path::Path::new(dir);
        let list = std::fs::read_to_string(dir.join("transcripts.jsonl")).expect("transcripts");
        let mut rows = Vec::new();
        for line in list.lines().filter(|l| !l.trim().is_empty()) {
            let record: serde_json::Value = serde_json::from_str(line).expect("json");
            let bytes = std::fs::read(dir.join(record["image"].as_str().expect("image")))
                .expect("image file");
            let image = decode::decode(&bytes, &decode::DecodeLimits::default()).expect("decode");
            let (_, done) = preprocess::enhance_page(image.into_luma8(), &steps);
            rows.push(format!(
                "{} spread {:.0}{} noise {:.1}{}",
                record["id"].as_str().unwrap_or("?"),
                done.lighting_spread.unwrap_or(f32::NAN),
                if done.lighting { "*" } else { "" },
                done.noise_level.unwrap_or(f32::NAN),
                if done.denoised { "*" } else { "" },
            ));
        }
        println!("{}: {}", dir.display(), rows.join(", "));
    }
}

/// Reads poorly, says the page is upside down, then gives up on the turned page.
struct TurnedThenSlowEngine {
    reads: Arc<AtomicUsize>,
}

impl OcrEngine for TurnedThenSlowEngine {
    fn name(&self) -> &str {
        "turned-then-slow"
    }
    fn recognize(&mut self, _page: &GrayImage, _ppi: Option<u32>) -> Result<Recognized, OcrError> {
        if self.reads.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            return Ok(Recognized {
                text: "first reading".into(),
                confidence: 0.3,
            });
        }
        Err(OcrError::TimedOut {
            engine: "turned-then-slow".into(),
            limit_secs: 0.5,
        })
    }
    fn detect_orientation(
        &mut self,
        _page: &GrayImage,
        _ppi: Option<u32>,
    ) -> Result<Option<Orientation>, OcrError> {
        Ok(Some(Orientation {
            degrees: 180,
            confidence: 10.0,
        }))
    }
}

#[tokio::test]
async fn a_turned_page_that_cannot_be_read_in_time_keeps_the_first_reading() {
    let config = PoolConfig {
        threads: 1,
        ..PoolConfig::default()
    };
    let reads = Arc::new(AtomicUsize::new(0));
    let factory: EngineFactory = {
        let reads = Arc::clone(&reads);
        Arc::new(move || {
            Ok(Box::new(TurnedThenSlowEngine {
                reads: Arc::clone(&reads),
            }) as Box<dyn OcrEngine>)
        })
    };
    let pool = OcrPool::new(config, factory).expect("pool");
    let page = pool.recognize(small_png(30, 10)).await.expect("a reading");
    assert_eq!(reads.load(Ordering::SeqCst), 2, "the turned page was tried");
    assert_eq!(page.text, "first reading");
    assert_eq!(page.rotated_degrees, 0);
}
