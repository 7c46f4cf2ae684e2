//! What reading a PDF adds before OCR: rendering one scanned A4 page (a 200 dpi JPEG, as
//! office scanners write them) at 150, 200 and 300 dpi into the grayscale PNG the OCR pool
//! decodes, on one thread. Compare with Tesseract's ≈ 1.2 s per page (`cargo bench --bench
//! ocr`) to see the share.
//!
//! Run: `cargo bench --bench pdf_render`.

#[path = "../src/ocr/testpages.rs"]
mod testpages;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use examiner::ocr::pdf::{PdfEvent, PdfRenderer, DEFAULT_TIME_LIMIT};
use examiner::ocr::DecodeLimits;
use testpages::Layout;

fn render_page(c: &mut Criterion) {
    let font = testpages::load_font(testpages::FONT_SANS);
    let text = format!("Q1 (a) Scanned sheet\n{}", testpages::page_text(0, 12));
    let (page, _) = testpages::render(&text, &font, Layout::a4(200.0));
    let scan = bytes::Bytes::from(testpages::scanned_pdf(&[(page, 200.0)]));
    let mut group = c.benchmark_group("pdf_render");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Elements(1));
    for dpi in [150.0, 200.0, 300.0] {
        let renderer = PdfRenderer::new(dpi, DecodeLimits::default(), DEFAULT_TIME_LIMIT, 1);
        group.bench_function(format!("a4_scan_at_{dpi}_dpi"), |b| {
            b.iter(|| {
                let mut png_bytes = 0;
                renderer
                    .render_blocking(scan.clone(), 1, |event| {
                        if let PdfEvent::Page(page) = event {
                            png_bytes = page.png.len();
                        }
                        true
                    })
                    .expect("renders");
                black_box(png_bytes)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, render_page);
criterion_main!(benches);
