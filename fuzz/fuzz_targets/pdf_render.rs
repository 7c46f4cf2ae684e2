//! A PDF given where a page image is expected: parsing and rendering it page by page into
//! the images OCR reads, as the service's rendering child process does
//! (`ocr::pdf::PdfRenderer::render_blocking`).
//!
//! Checks, for any bytes: nothing comes out but a page count, pages and the documented
//! errors; a panic inside the PDF library is caught and reported as an unreadable PDF (what
//! the service does); the count comes first and is within the page limit, and at most that
//! many pages follow; every page respects the pixel and side caps, is rendered at a
//! resolution between `MIN_DPI` and the one asked for, and its PNG decodes to the size it
//! states. Hangs and runaway allocation are libFuzzer's timeout and RSS limit: in the service
//! the child process's time and memory limits stop them (SECURITY.md, "PDF bombs").
#![no_main]

use std::sync::Once;
use std::time::Duration;

use examiner::ocr::pdf::{PdfEvent, PdfRenderer, DEFAULT_DPI, MIN_DPI};
use examiner::ocr::{decode, DecodeLimits, OcrError};
use libfuzzer_sys::fuzz_target;

/// Small caps, so a page costs little to render and the fuzzer reaches the caps' checks.
const LIMITS: DecodeLimits = DecodeLimits {
    max_pixels: 1 << 20,
    max_side: 4096,
};
const MAX_PAGES: usize = 4;

static PANICS_UNWIND: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    // libFuzzer's hook aborts on any panic, even one the renderer catches; the service
    // catches the PDF library's panics, so here they unwind too. A panic the renderer does
    // not catch still fails the run: libfuzzer-sys aborts on a panic out of this closure.
    PANICS_UNWIND.call_once(|| drop(std::panic::take_hook()));
    let renderer = PdfRenderer::new(DEFAULT_DPI, LIMITS, Duration::from_secs(20), 1);
    let mut count = None;
    let mut pages = 0;
    let result = renderer.render_blocking(data.to_vec().into(), MAX_PAGES, |event| {
        match event {
            PdfEvent::Pages(n) => {
                assert!(count.is_none() && pages == 0, "the count comes first, once");
                assert!((1..=MAX_PAGES).contains(&n), "{n} pages let through");
                count = Some(n);
            }
            PdfEvent::Page(page) => {
                pages += 1;
                assert!(pages <= count.expect("a page before the count"));
                let (w, h) = (page.width, page.height);
                assert!(w > 0 && h > 0);
                assert!(u64::from(w) * u64::from(h) <= LIMITS.max_pixels, "{w}x{h}");
                assert!(w <= LIMITS.max_side && h <= LIMITS.max_side, "{w}x{h}");
                assert!(
                    page.dpi >= MIN_DPI && page.dpi <= DEFAULT_DPI * 1.001,
                    "rendered at {} dpi",
                    page.dpi
                );
                let image = decode(&page.png, &LIMITS).expect("a rendered page decodes");
                assert_eq!((image.width(), image.height()), (w, h));
            }
            PdfEvent::Typed(page) => {
                pages += 1;
                assert!(pages <= count.expect("a page before the count"));
                assert!(!page.text.trim().is_empty(), "a typed page with no text");
                assert!(page.width > 0 && page.height > 0);
            }
        }
        true
    });
    match result {
        Ok(()) => assert_eq!(Some(pages), count, "every page of the count"),
        // The file before its count; a page on which the library failed after it.
        Err(OcrError::UnreadablePdf(_)) => assert!(count.map_or(true, |n| pages < n)),
        Err(OcrError::EncryptedPdf) => assert!(count.is_none()),
        Err(OcrError::TooManyPages { pages, left }) => {
            assert!(count.is_none() && left == MAX_PAGES && pages > left)
        }
        Err(OcrError::PdfPageTooLarge { page, .. }) => {
            assert!(page == pages + 1 && page <= count.expect("a page after the count"))
        }
        Err(OcrError::PdfTimedOut { pages_done, .. }) => {
            assert!(pages_done == pages && count.is_some_and(|n| pages < n))
        }
        Err(other) => panic!("rendering cannot fail with {other:?}"),
    }
});
