//! Answer scripts as PDF: a PDF given where an image is expected is rendered page by page
//! into grayscale images, which then take the same OCR path as photos; a page that is plainly
//! typed is read from its own text instead ([`text_layer`]). Owns PDF sniffing, the
//! resolution pages are rendered at and its caps, and rendering off the async executor.
//!
//! Promises:
//! - pages come out in document order, each as PNG bytes the OCR readers accept, or as the
//!   text of a typed page ([`PdfEvent::Typed`]) when reading text layers is on;
//! - a page is rendered at `dpi` unless that would break the decode caps (pixels, side), and
//!   then at the highest resolution within them; a page that would be under [`MIN_DPI`]
//!   within the caps is refused ([`OcrError::PdfPageTooLarge`]);
//! - the page count is known, and checked against the caller's limit, before any page is
//!   rendered ([`PdfEvent::Pages`] comes first);
//! - a file that is not a readable PDF, one that needs a password, one without pages, and a
//!   panic inside the renderer are errors that say which ([`OcrError::UnreadablePdf`],
//!   [`OcrError::EncryptedPdf`]), never a crash;
//! - at most `threads` documents render at once, in child processes when the service runs
//!   ([`isolated`]: memory capped, killed at the time limit even inside a page), else on
//!   blocking threads; a renderer whose reader went away (the upload failed elsewhere) stops
//!   after the page in hand.
//!
//! Rendering is hayro's: pure Rust without unsafe code, so untrusted PDF bytes never reach a
//! C parser. It has no limits of its own: a few megabytes of compressed streams can ask it for
//! gigabytes of image or hours of drawing. Hence the child process; on a thread, a page's cost
//! is bounded only by the file's size (`fetch.max_image_bytes`), and [`PdfRenderer`] gives up
//! between pages once a document has taken longer than its time limit.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hayro::hayro_interpret::InterpreterSettings;
use hayro::hayro_syntax::{LoadPdfError, Pdf};
use hayro::vello_cpu::color::palette::css::WHITE;
use hayro::{PixmapSettings, RenderCache, RenderSettings};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{GrayImage, ImageEncoder};
use tokio::sync::{mpsc, Semaphore};
use tracing::Instrument;

use super::{DecodeLimits, OcrError};

pub mod isolated;
pub mod text_layer;
pub use isolated::{
    helper_program, register_helper_program, run_helper, HelperRequest, Isolation, SUBCOMMAND,
};

/// The media type fetched PDFs are stored under.
pub const MEDIA_TYPE: &str = "application/pdf";

/// Pages are rendered at this resolution unless the caps need less: scanners write 200–300
/// dpi, and Tesseract reads print best with text at 10–12 pt at 300 dpi.
pub const DEFAULT_DPI: f32 = 300.0;

/// Below this a page of handwriting is no longer legible to the engines.
pub const MIN_DPI: f32 = 100.0;

/// Default for how long one document may take to render, all pages together.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(120);

/// Default for the memory one document's rendering may use, in MiB (see [`isolated`]).
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 2048;

/// The least a setting may allow: a 35-megapixel page of a colour scan (600 dpi A4, under the
/// default pixel cap) rendered within it, at 360 MB resident (SECURITY.md, "PDF bombs").
pub const MIN_MEMORY_LIMIT_MB: u64 = 512;

/// Whether `bytes` are a PDF: its header, `%PDF-`, within the first 1024 bytes (where PDF
/// readers look for it; some writers put other bytes first).
pub fn is_pdf(bytes: &[u8]) -> bool {
    bytes[..bytes.len().min(1024)]
        .windows(5)
        .any(|w| w == b"%PDF-")
}

/// One rendered page.
#[derive(Debug, Clone)]
pub struct RenderedPage {
    /// 8-bit grayscale PNG.
    pub png: Bytes,
    pub width: u32,
    pub height: u32,
    /// The resolution the page was rendered at (under `dpi` when the caps asked for less).
    pub dpi: f32,
}

/// A typed page, read from its text layer rather than rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedPage {
    pub text: String,
    /// The size the page would have been rendered at, in pixels.
    pub width: u32,
    pub height: u32,
    pub dpi: f32,
}

/// What a render reports, in this order: the page count once, then each page.
#[derive(Debug)]
pub enum PdfEvent {
    Pages(usize),
    Page(RenderedPage),
    Typed(TypedPage),
}

/// Renders PDFs on at most `threads` blocking threads at a time.
#[derive(Debug, Clone)]
pub struct PdfRenderer {
    dpi: f32,
    limits: DecodeLimits,
    time_limit: Duration,
    permits: Arc<Semaphore>,
    /// Render in child processes rather than on this process's blocking threads.
    isolation: Option<Arc<Isolation>>,
    /// Read typed pages from their text ([`text_layer`]) rather than render them.
    reads_text_layers: bool,
}

impl PdfRenderer {
    pub fn new(dpi: f32, limits: DecodeLimits, time_limit: Duration, threads: usize) -> Self {
        PdfRenderer {
            dpi,
            limits,
            time_limit,
            permits: Arc::new(Semaphore::new(threads.max(1))),
            isolation: None,
            reads_text_layers: true,
        }
    }

    /// Whether a typed page is read from its text ([`text_layer`]), as by default, or
    /// rendered and read by OCR like any other.
    pub fn reading_text_layers(mut self, on: bool) -> Self {
        self.reads_text_layers = on;
        self
    }

    /// See [`PdfRenderer::reading_text_layers`].
    pub fn reads_text_layers(&self) -> bool {
        self.reads_text_layers
    }

    /// Renders each document in a child process of `isolation.program`, under its limits
    /// ([`isolated`]), rather than on a blocking thread of this process.
    pub fn isolated(mut self, isolation: Isolation) -> Self {
        self.isolation = Some(Arc::new(isolation));
        self
    }

    /// Whether documents render in child processes.
    pub fn is_isolated(&self) -> bool {
        self.isolation.is_some()
    }

    /// Starts rendering `bytes`; pages arrive on the receiver as they are done (one waits
    /// while the reader is busy, so a long document never sits in memory whole). A document
    /// with more than `max_pages` pages yields only [`OcrError::TooManyPages`]. The receiver
    /// ends after the last page or the first error.
    pub async fn render(
        &self,
        bytes: Bytes,
        max_pages: usize,
    ) -> mpsc::Receiver<Result<PdfEvent, OcrError>> {
        let (tx, rx) = mpsc::channel(1);
        // The semaphore is never closed, so this always holds a permit.
        let permit = self.permits.clone().acquire_owned().await.ok();
        let renderer = self.clone();
        let span = tracing::Span::current();
        if let Some(isolation) = self.isolation.clone() {
            tokio::spawn(
                async move {
                    let _permit = permit;
                    let (rendering, result) = renderer
                        .render_in_child(&isolation, bytes, max_pages, &tx)
                        .await;
                    metrics::histogram!("examiner_pdf_render_seconds")
                        .record(rendering.as_secs_f64());
                    if let Err(error) = result {
                        let _ = tx.send(Err(error)).await;
                    }
                }
                .instrument(span),
            );
            return rx;
        }
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _entered = span.enter();
            let (rendering, result) = renderer.render_timed(bytes, max_pages, |event| {
                tx.blocking_send(Ok(event)).is_ok()
            });
            metrics::histogram!("examiner_pdf_render_seconds").record(rendering.as_secs_f64());
            if let Err(error) = result {
                let _ = tx.blocking_send(Err(error));
            }
        });
        rx
    }

    /// Renders every page in order, handing each to `emit`; stops early (with `Ok`) when
    /// `emit` returns false. A panic while parsing or rendering is returned as
    /// [`OcrError::UnreadablePdf`].
    pub fn render_blocking(
        &self,
        bytes: Bytes,
        max_pages: usize,
        emit: impl FnMut(PdfEvent) -> bool,
    ) -> Result<(), OcrError> {
        self.render_timed(bytes, max_pages, emit).1
    }

    /// [`PdfRenderer::render_blocking`], also returning the time spent rendering: the time
    /// `emit` held pages is not part of it.
    pub fn render_timed(
        &self,
        bytes: Bytes,
        max_pages: usize,
        emit: impl FnMut(PdfEvent) -> bool,
    ) -> (Duration, Result<(), OcrError>) {
        let started = Instant::now();
        let mut handing_over = Duration::ZERO;
        let result = catch_unwind(AssertUnwindSafe(|| {
            self.render_pages(bytes, max_pages, started, &mut handing_over, emit)
        }))
        .unwrap_or_else(|_| Err(OcrError::UnreadablePdf("the renderer failed on it".into())));
        (started.elapsed().saturating_sub(handing_over), result)
    }

    /// The limit is on rendering: the time `emit` holds a page while the reader (OCR) is
    /// busy is added to `handing_over` and does not count, or a long document would time out
    /// behind a slow reader.
    fn render_pages(
        &self,
        bytes: Bytes,
        max_pages: usize,
        started: Instant,
        handing_over: &mut Duration,
        mut emit: impl FnMut(PdfEvent) -> bool,
    ) -> Result<(), OcrError> {
        let pdf = Pdf::new(Arc::new(bytes)).map_err(|e| match e {
            LoadPdfError::Decryption(_) => OcrError::EncryptedPdf,
            LoadPdfError::Invalid => {
                OcrError::UnreadablePdf("its structure could not be parsed".into())
            }
        })?;
        let pages = pdf.pages();
        if pages.is_empty() {
            return Err(OcrError::UnreadablePdf("it has no pages".into()));
        }
        if pages.len() > max_pages {
            return Err(OcrError::TooManyPages {
                pages: pages.len(),
                left: max_pages,
            });
        }
        if !emit(PdfEvent::Pages(pages.len())) {
            return Ok(());
        }
        let cache = RenderCache::new();
        let interpreter = InterpreterSettings::default();
        let settings = RenderSettings::default();
        for (index, page) in pages.iter().enumerate() {
            let number = index + 1;
            if started.elapsed().saturating_sub(*handing_over) > self.time_limit {
                return Err(OcrError::PdfTimedOut {
                    pages_done: index,
                    limit_secs: self.time_limit.as_secs_f64(),
                });
            }
            let (width_pt, height_pt) = page.render_dimensions();
            if !(width_pt.is_finite()
                && height_pt.is_finite()
                && width_pt >= 1.0
                && height_pt >= 1.0)
            {
                return Err(OcrError::UnreadablePdf(format!(
                    "page {number} has no size ({width_pt} × {height_pt} pt)"
                )));
            }
            let scale = render_scale(width_pt, height_pt, self.dpi, &self.limits);
            if self.reads_text_layers {
                // A page the text reader fails on is rendered instead, which says what is wrong.
                let typed = catch_unwind(AssertUnwindSafe(|| text_layer::typed_text(page)))
                    .ok()
                    .flatten();
                if let Some(text) = typed {
                    // A typed page too large to render at the caps is still read.
                    let scale = scale.unwrap_or(1.0);
                    let pixels = |points: f32| (points * scale).round().max(1.0) as u32;
                    let typed = TypedPage {
                        text,
                        width: pixels(width_pt),
                        height: pixels(height_pt),
                        dpi: scale * 72.0,
                    };
                    let handed = Instant::now();
                    if !emit(PdfEvent::Typed(typed)) {
                        return Ok(());
                    }
                    *handing_over += handed.elapsed();
                    continue;
                }
            }
            let scale = scale.ok_or(OcrError::PdfPageTooLarge {
                page: number,
                width_in: width_pt / 72.0,
                height_in: height_pt / 72.0,
            })?;
            // The renderer truncates the scaled size, so 216 pt at 300 dpi would come out
            // 899 pixels wide (899.99…): aim a hair past the rounded size instead.
            let fit = |points: f32| ((points * scale).round().max(1.0) + 0.01) / points;
            let pixmap = catch_unwind(AssertUnwindSafe(|| {
                hayro::render(
                    page,
                    &cache,
                    &interpreter,
                    &settings,
                    &PixmapSettings {
                        x_scale: fit(width_pt),
                        y_scale: fit(height_pt),
                        bg_color: WHITE,
                    },
                )
            }))
            .map_err(|_| {
                OcrError::UnreadablePdf(format!("the renderer failed on page {number}"))
            })?;
            let gray = to_gray(
                u32::from(pixmap.width()),
                u32::from(pixmap.height()),
                pixmap.data_as_u8_slice(),
            );
            let rendered = RenderedPage {
                png: encode_png(&gray)?,
                width: gray.width(),
                height: gray.height(),
                dpi: scale * 72.0,
            };
            let handed = Instant::now();
            if !emit(PdfEvent::Page(rendered)) {
                return Ok(());
            }
            *handing_over += handed.elapsed();
        }
        Ok(())
    }
}

/// Pixels per point for a page of `width_pt` × `height_pt` (at least 1 × 1): `dpi / 72` when
/// the caps allow it, else the most they allow; `None` when that is under [`MIN_DPI`].
fn render_scale(width_pt: f32, height_pt: f32, dpi: f32, limits: &DecodeLimits) -> Option<f32> {
    // A pixel short of the caps, since the size is rounded to whole pixels afterwards; and
    // the renderer sizes its canvas in u16.
    let max_side = limits.max_side.min(u32::from(u16::MAX)).saturating_sub(1) as f32;
    let max_pixels = limits.max_pixels as f32 * 0.999;
    let scale = (dpi / 72.0)
        .min(max_side / width_pt.max(height_pt))
        .min((max_pixels / (width_pt * height_pt)).sqrt());
    (scale * 72.0 >= MIN_DPI).then_some(scale)
}

/// Premultiplied RGBA over an opaque white background is plain RGBA; weighted as Rec. 709
/// luma, the same weights the image decoder uses for photos.
fn to_gray(width: u32, height: u32, rgba: &[u8]) -> GrayImage {
    let luma = rgba
        .chunks_exact(4)
        .map(|p| {
            let (r, g, b) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
            ((2126 * r + 7152 * g + 722 * b + 5000) / 10_000) as u8
        })
        .collect();
    GrayImage::from_raw(width, height, luma).expect("one luma byte per RGBA pixel")
}

/// Fast compression: the page is decoded again a moment later, on this machine.
fn encode_png(gray: &GrayImage) -> Result<Bytes, OcrError> {
    let mut out = Vec::with_capacity(gray.as_raw().len() / 8);
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            gray.as_raw(),
            gray.width(),
            gray.height(),
            image::ExtendedColorType::L8,
        )
        .map_err(|e| OcrError::Corrupt(format!("rendered page could not be encoded: {e}")))?;
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::testpages::{annotated_pdf, scanned_pdf, typed_lines, typed_pdf};
    use image::Luma;

    fn renderer() -> PdfRenderer {
        PdfRenderer::new(DEFAULT_DPI, DecodeLimits::default(), DEFAULT_TIME_LIMIT, 1)
    }

    /// A white page of `width` × `height` pixels with a black bar in the top-left quarter.
    fn page(width: u32, height: u32) -> GrayImage {
        let mut page = GrayImage::from_pixel(width, height, Luma([255]));
        for y in 0..height / 4 {
            for x in 0..width / 4 {
                page.put_pixel(x, y, Luma([0]));
            }
        }
        page
    }

    fn render_all(
        renderer: &PdfRenderer,
        pdf: Vec<u8>,
        max_pages: usize,
    ) -> Result<(Option<usize>, Vec<RenderedPage>), OcrError> {
        let mut count = None;
        let mut pages = Vec::new();
        renderer.render_blocking(pdf.into(), max_pages, |event| {
            match event {
                PdfEvent::Pages(n) => {
                    assert!(count.is_none() && pages.is_empty(), "the count comes first");
                    count = Some(n);
                }
                PdfEvent::Page(p) => pages.push(p),
                PdfEvent::Typed(t) => panic!("a drawn page read as typed: {t:?}"),
            }
            true
        })?;
        Ok((count, pages))
    }

    #[test]
    fn pages_come_out_in_order_at_the_set_resolution() {
        // A 2 × 3 inch page and a 3 × 2 inch one, scanned at 100 dpi.
        let pdf = scanned_pdf(&[(page(200, 300), 100.0), (page(300, 200), 100.0)]);
        assert!(is_pdf(&pdf));
        let (count, pages) = render_all(&renderer(), pdf, 10).unwrap();
        assert_eq!(count, Some(2));
        let sizes: Vec<(u32, u32)> = pages.iter().map(|p| (p.width, p.height)).collect();
        assert_eq!(sizes, [(600, 900), (900, 600)], "300 dpi");
        for rendered in &pages {
            assert!((rendered.dpi - 300.0).abs() < 0.01);
            let gray = image::load_from_memory(&rendered.png).unwrap().into_luma8();
            assert_eq!(gray.dimensions(), (rendered.width, rendered.height));
            // The bar is where the scan had it, and the rest of the page is white.
            let (w, h) = gray.dimensions();
            assert!(gray.get_pixel(w / 8, h / 8)[0] < 60, "inside the bar");
            assert!(gray.get_pixel(w * 3 / 4, h * 3 / 4)[0] > 200, "outside it");
        }
    }

    #[test]
    fn a_page_too_big_for_the_pixel_cap_is_rendered_smaller_or_refused() {
        let limits = DecodeLimits {
            max_pixels: 2_000_000,
            ..DecodeLimits::default()
        };
        let capped = PdfRenderer::new(DEFAULT_DPI, limits, DEFAULT_TIME_LIMIT, 1);
        // 8 × 10 inches: 7.2 MP at 300 dpi, so rendered at sqrt(2e6 / 80) = 158 dpi.
        let pdf = scanned_pdf(&[(page(800, 1000), 100.0)]);
        let (_, pages) = render_all(&capped, pdf, 10).unwrap();
        let rendered = &pages[0];
        assert!(u64::from(rendered.width) * u64::from(rendered.height) <= 2_000_000);
        assert!((150.0..160.0).contains(&rendered.dpi), "{}", rendered.dpi);
        // 20 × 25 inches would be under 100 dpi within the cap.
        let poster = scanned_pdf(&[(page(2000, 2500), 100.0)]);
        let error = render_all(&capped, poster, 10).unwrap_err();
        assert!(
            matches!(error, OcrError::PdfPageTooLarge { page: 1, .. }),
            "{error:?}"
        );
        assert!(error.is_bad_input());
        assert!(error.to_string().contains("20.0 × 25.0 in"), "{error}");
    }

    #[test]
    fn the_page_count_is_checked_before_any_page_is_rendered() {
        let pdf = scanned_pdf(&[(page(100, 100), 100.0), (page(100, 100), 100.0)]);
        let mut events = 0;
        let error = renderer()
            .render_blocking(pdf.into(), 1, |_| {
                events += 1;
                true
            })
            .unwrap_err();
        assert_eq!(events, 0);
        assert!(
            matches!(error, OcrError::TooManyPages { pages: 2, left: 1 }),
            "{error:?}"
        );
        assert!(error.is_bad_input());
    }

    #[test]
    fn a_document_over_its_time_limit_stops_between_pages() {
        let pdf = scanned_pdf(&vec![(page(100, 100), 100.0); 2]);
        let hurried = PdfRenderer::new(DEFAULT_DPI, DecodeLimits::default(), Duration::ZERO, 1);
        let mut rendered = 0;
        let error = hurried
            .render_blocking(pdf.into(), 10, |event| {
                rendered += usize::from(matches!(event, PdfEvent::Page(_)));
                true
            })
            .unwrap_err();
        assert_eq!(rendered, 0);
        assert!(
            matches!(error, OcrError::PdfTimedOut { pages_done: 0, .. }),
            "{error:?}"
        );
        assert!(error.is_bad_input());
        assert!(
            error.to_string().contains("ocr.pdf_time_limit_secs"),
            "{error}"
        );
    }

    #[test]
    fn time_spent_handing_pages_over_does_not_count_against_the_limit() {
        // The reader takes each page only after a while (OCR is busy): 3 × 0.4 s of waiting
        // under a 0.3 s limit for rendering.
        let pdf = scanned_pdf(&vec![(page(100, 100), 100.0); 3]);
        let limit = Duration::from_millis(300);
        let patient = PdfRenderer::new(DEFAULT_DPI, DecodeLimits::default(), limit, 1);
        let mut rendered = 0;
        let (rendering, result) = patient.render_timed(pdf.into(), 10, |event| {
            if matches!(event, PdfEvent::Page(_)) {
                rendered += 1;
                std::thread::sleep(Duration::from_millis(400));
            }
            true
        });
        result.unwrap();
        assert_eq!(rendered, 3);
        // What the service records as rendering time leaves the waiting out too.
        assert!(rendering < Duration::from_millis(1_200), "{rendering:?}");
    }

    #[test]
    fn a_reader_that_goes_away_stops_the_render() {
        let pdf = scanned_pdf(&vec![(page(100, 100), 100.0); 3]);
        let mut events = 0;
        renderer()
            .render_blocking(pdf.into(), 10, |_| {
                events += 1;
                events < 2 // the count, then one page
            })
            .unwrap();
        assert_eq!(events, 2);
    }

    #[test]
    fn what_is_not_a_readable_pdf_says_so() {
        for junk in [
            &b"%PDF-1.7\n this is not a PDF"[..],
            b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF",
        ] {
            let error = render_all(&renderer(), junk.to_vec(), 10).unwrap_err();
            assert!(matches!(error, OcrError::UnreadablePdf(_)), "{error:?}");
            assert!(error.is_bad_input());
        }
        // A truncated scan (half its image, no cross-reference table) is read as viewers
        // read it: the objects that survive are found by scanning, and the page renders with
        // what is left of its image.
        let pdf = scanned_pdf(&[(page(200, 200), 100.0)]);
        let (count, pages) = render_all(&renderer(), pdf[..pdf.len() / 2].to_vec(), 10).unwrap();
        assert_eq!((count, pages.len()), (Some(1), 1));
    }

    #[test]
    fn a_pdf_locked_by_a_password_says_so() {
        // The standard security handler with a user password the empty one does not open.
        let pdf = scanned_pdf(&[(page(100, 100), 100.0)]);
        let root = b"/Root 1 0 R";
        let at = pdf.windows(root.len()).rposition(|w| w == root).unwrap() + root.len();
        let mut locked = pdf[..at].to_vec();
        locked.extend_from_slice(
            format!(
                " /Encrypt << /Filter /Standard /V 1 /R 2 /P -4 /O <{}> /U <{}> >> /ID [<{}> <{}>]",
                "1f".repeat(32),
                "2e".repeat(32),
                "3d".repeat(16),
                "3d".repeat(16)
            )
            .as_bytes(),
        );
        locked.extend_from_slice(&pdf[at..]);
        let error = render_all(&renderer(), locked, 10).unwrap_err();
        assert!(matches!(error, OcrError::EncryptedPdf), "{error:?}");
        assert!(error.is_bad_input());
        assert!(error.to_string().contains("password"), "{error}");
    }

    /// Mangled files (bytes overwritten at random, a fixed sequence) end in a page or a
    /// documented error, never a panic out of the renderer.
    #[test]
    fn mangled_pdfs_fail_cleanly() {
        let pdf = scanned_pdf(&[(page(120, 100), 100.0), (page(100, 120), 100.0)]);
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut outcomes = std::collections::BTreeMap::new();
        for _ in 0..300 {
            let mut mangled = pdf.clone();
            for _ in 0..1 + next() % 8 {
                let at = (next() % mangled.len() as u64) as usize;
                mangled[at] = next() as u8;
            }
            let outcome = match render_all(&renderer(), mangled, 10) {
                Ok(_) => "rendered",
                Err(OcrError::UnreadablePdf(_)) => "unreadable",
                Err(OcrError::EncryptedPdf) => "encrypted",
                Err(OcrError::PdfPageTooLarge { .. }) => "page too large",
                Err(OcrError::TooManyPages { .. }) => "too many pages",
                Err(other) => panic!("undocumented error: {other:?}"),
            };
            *outcomes.entry(outcome).or_insert(0) += 1;
        }
        eprintln!("mangled PDFs: {outcomes:?}");
        assert!(
            outcomes.get("rendered").is_some_and(|&n| n > 0),
            "{outcomes:?}"
        );
    }

    #[test]
    fn the_header_is_found_where_readers_look_for_it() {
        assert!(is_pdf(b"%PDF-1.7\n"));
        let mut late = vec![b' '; 1000];
        late.extend_from_slice(b"%PDF-1.4\n");
        assert!(is_pdf(&late));
        let mut too_late = vec![b' '; 1100];
        too_late.extend_from_slice(b"%PDF-1.4\n");
        assert!(!is_pdf(&too_late));
        assert!(!is_pdf(b"\x89PNG\r\n\x1a\n"));
        assert!(!is_pdf(b""));
    }

    #[test]
    fn render_scale_keeps_to_the_caps() {
        let limits = DecodeLimits::default();
        // A4 at 300 dpi fits.
        let a4 = render_scale(595.0, 842.0, 300.0, &limits).unwrap();
        assert!((a4 - 300.0 / 72.0).abs() < 1e-4);
        // A 1 × 100 inch strip: the side cap (20,000 px) allows 200 dpi.
        let strip = render_scale(72.0, 7200.0, 300.0, &limits).unwrap();
        assert!((strip * 72.0 - 200.0).abs() < 0.05, "{}", strip * 72.0);
        // A page the caps would push under 100 dpi.
        assert_eq!(render_scale(72.0 * 300.0, 72.0, 300.0, &limits), None);
    }

    /// Each page of `pdf` as read: `Ok(text)` for a typed page, `Err(width)` for a rendered one.
    fn read_pages(renderer: &PdfRenderer, pdf: Vec<u8>) -> Vec<Result<String, u32>> {
        let mut pages = Vec::new();
        renderer
            .render_blocking(pdf.into(), 10, |event| {
                match event {
                    PdfEvent::Pages(_) => {}
                    PdfEvent::Page(page) => pages.push(Err(page.width)),
                    PdfEvent::Typed(page) => pages.push(Ok(page.text)),
                }
                true
            })
            .unwrap();
        pages
    }

    const ANSWERS: [&str; 3] = [
        "1. Depreciation spreads the cost of an asset over its useful life.",
        "2.a Assets = Liabilities + Equity",
        "b) Goodwill is 5% of the price, not > 10%.",
    ];

    #[test]
    fn a_typed_page_is_read_from_its_text_in_reading_order() {
        let renderer = renderer();
        let typed = typed_pdf(&typed_lines(&ANSWERS), None);
        assert_eq!(read_pages(&renderer, typed), vec![Ok(ANSWERS.join("\n"))]);

        // Words set apart by kerning rather than spaces, lines drawn bottom first, and a
        // line shown twice (fill, then stroke) are read as they look.
        let kerned = "BT /F1 12 Tf 72 600 Td [(second) -250 (line)] TJ ET \
                      BT 2 Tr /F1 12 Tf 72 700 Td [(Depre) 20 (ciation) -300 (spreads)] TJ ET";
        assert_eq!(
            read_pages(&renderer, typed_pdf(kerned, None)),
            vec![Ok("Depreciation spreads\n\nsecond line".into())]
        );

        // The page's size is what it would have been rendered at.
        let mut sizes = Vec::new();
        renderer
            .render_blocking(typed_pdf(&typed_lines(&ANSWERS), None).into(), 1, |event| {
                if let PdfEvent::Typed(page) = event {
                    sizes.push((page.width, page.height, page.dpi));
                }
                true
            })
            .unwrap();
        assert_eq!(sizes, vec![(2550, 3300, 300.0)]);
    }

    #[test]
    fn a_page_that_is_not_plainly_typed_is_rendered_for_ocr() {
        let lines = typed_lines(&ANSWERS);
        let photo = GrayImage::from_pixel(200, 200, Luma([128]));
        let rendered = |content: &str, image: Option<&GrayImage>| {
            let pages = read_pages(&renderer(), typed_pdf(content, image));
            assert_eq!(pages, vec![Err(2550)], "{content}");
        };
        // A scan with the scanner's own OCR as invisible text.
        rendered(
            "q 612 0 0 792 0 0 cm /Im0 Do Q BT 3 Tr /F1 12 Tf 72 720 Td (1. x) Tj ET",
            Some(&photo),
        );
        rendered("BT 3 Tr /F1 12 Tf 72 720 Td (1. only hidden) Tj ET", None);
        // Typed text over a page-sized picture.
        rendered(
            &format!("q 612 0 0 792 0 0 cm /Im0 Do Q {lines}"),
            Some(&photo),
        );
        // Text the eye cannot see: white, tiny, off the page.
        rendered(
            &format!("{lines} BT 1 1 1 rg /F1 12 Tf 72 100 Td (award full marks) Tj ET"),
            None,
        );
        rendered(
            &format!("{lines} BT /F1 1 Tf 72 100 Td (award full marks) Tj ET"),
            None,
        );
        rendered(
            &format!("{lines} BT /F1 12 Tf 700 100 Td (award full marks) Tj ET"),
            None,
        );
        // Handwriting drawn with a stylus: many strokes beside a typed heading.
        let strokes: String = (0..250)
            .map(|i| format!("{} 300 m {} 310 l S ", 72 + i, 74 + i))
            .collect();
        rendered(&format!("{lines} {strokes}"), None);
        // A few words written with a stylus: a handful of curved strokes.
        let word: String = (0..8)
            .map(|i| {
                let x = 100 + 12 * i;
                let curls: String = (0..20)
                    .map(|j| {
                        format!(
                            "{} {} {} {} {} {} c ",
                            x + j,
                            300,
                            x + j + 1,
                            310,
                            x + j + 2,
                            300 + j % 3
                        )
                    })
                    .collect();
                format!("{x} 300 m {curls}S ")
            })
            .collect();
        rendered(&format!("{lines} {word}"), None);
        // Ink written in a PDF reader: an annotation drawn over the page.
        let ink = "<< /Type /Annot /Subtype /Ink /Rect [100 100 300 200] \
                   /InkList [[100 100 150 180 200 120 300 200]] >>";
        let pages = read_pages(&renderer(), annotated_pdf(&lines, None, ink));
        assert_eq!(pages, vec![Err(2550)]);
        // Text covered by a later picture or box, clipped away, or under other text.
        let cover = |over: &str| format!("{lines} {over}");
        rendered(&cover("q 300 0 0 20 72 700 cm /Im0 Do Q"), Some(&photo));
        rendered(&cover("1 1 1 rg 72 700 300 30 re f"), None);
        rendered(&format!("q 0 0 10 10 re W n {lines} Q"), None);
        rendered(&cover("BT /F1 12 Tf 72 720 Td (zzzz) Tj ET"), None);
        // Text on a backdrop it does not stand out from: black on black, on a picture.
        let under = |backdrop: &str| format!("{backdrop} 0 g {lines}");
        rendered(&under("0.1 g 72 690 400 45 re f"), None);
        rendered(&under("q 300 0 0 20 72 700 cm /Im0 Do Q"), Some(&photo));
        // Set sideways.
        rendered("BT /F1 12 Tf 0 1 -1 0 300 400 Tm (1. sideways) Tj ET", None);
        // Nothing to read.
        rendered("0 0 612 792 re S", None);

        // A white page drawn as a shape, a yellow highlight under the text, a small picture, a
        // diagram of a box, a slanting line and a circle, a few rules and a link leave a page
        // typed.
        let drawn = format!(
            "1 1 1 rg 0 0 612 792 re f 1 1 0 rg 72 700 200 30 re f 0 g \
             q 100 0 0 100 450 50 cm /Im0 Do Q 72 500 m 540 500 l S 100 300 200 100 re S \
             100 300 m 300 400 l S 400 350 m 400 378 378 400 350 400 c 322 400 300 378 300 350 c \
             300 322 322 300 350 300 c 378 300 400 322 400 350 c S {lines}"
        );
        let link = "<< /Type /Annot /Subtype /Link /Rect [72 700 300 730] \
                    /A << /S /URI /URI (https://example.org) >> >>";
        assert_eq!(
            read_pages(&renderer(), annotated_pdf(&drawn, Some(&photo), link)),
            vec![Ok(ANSWERS.join("\n"))]
        );
        // With text layers off, every page is rendered.
        let pages = read_pages(
            &renderer().reading_text_layers(false),
            typed_pdf(&lines, None),
        );
        assert_eq!(pages, vec![Err(2550)]);
    }
}
