//! What reading a PDF adds before OCR: rendering one scanned A4 page (a 200 dpi JPEG, as
//! office scanners write them) at 150, 200 and 300 dpi into the grayscale PNG the OCR pool
//! decodes, on one thread. Compare with Tesseract's ≈ 1.2 s per page (`cargo bench --bench
//! ocr`) to see the share. Then the same page at 300 dpi as the service renders it, in a
//! child process of the `examiner` binary (`ocr::pdf::isolated`): the difference is what
//! starting the child and passing the page through a pipe cost.
//!
//! Run: `cargo bench --bench pdf_render`.

#[path = "../src/ocr/testpages.rs"]
mod testpages;

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use examiner::ocr::pdf::{Isolation, PdfEvent, PdfRenderer, DEFAULT_DPI, DEFAULT_TIME_LIMIT};
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
            b.iter(|| read(&renderer, &scan))
        });
    }
    // What looking for a text layer first adds to a scanned page.
    let without_text =
        PdfRenderer::new(DEFAULT_DPI, DecodeLimits::default(), DEFAULT_TIME_LIMIT, 1)
            .reading_text_layers(false);
    group.bench_function("a4_scan_at_300_dpi_text_layers_off", |b| {
        b.iter(|| read(&without_text, &scan))
    });
    // A typed Letter page of 40 lines: read from its text, and rendered for OCR instead.
    let line = "2.a The accounting equation is Assets = Liabilities + Capital, always.";
    let typed = bytes::Bytes::from(testpages::typed_pdf(
        &testpages::typed_lines(&[line; 40]),
        None,
    ));
    for reads_text in [true, false] {
        let renderer =
            PdfRenderer::new(DEFAULT_DPI, DecodeLimits::default(), DEFAULT_TIME_LIMIT, 1)
                .reading_text_layers(reads_text);
        let name = if reads_text {
            "letter_typed_page_read_from_its_text"
        } else {
            "letter_typed_page_rendered_at_300_dpi"
        };
        group.bench_function(name, |b| b.iter(|| read(&renderer, &typed)));
    }
    let isolated = PdfRenderer::new(DEFAULT_DPI, DecodeLimits::default(), DEFAULT_TIME_LIMIT, 1)
        .isolated(Isolation {
            program: env!("CARGO_BIN_EXE_examiner").into(),
            memory_limit: examiner::ocr::pdf::DEFAULT_MEMORY_LIMIT_MB << 20,
        });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    group.bench_function("a4_scan_at_300_dpi_in_a_child_process", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut events = isolated.render(scan.clone(), 1).await;
                let mut png_bytes = 0;
                while let Some(event) = events.recv().await {
                    if let PdfEvent::Page(page) = event.expect("renders") {
                        png_bytes = page.png.len();
                    }
                }
                black_box(png_bytes)
            })
        })
    });
    group.finish();
}

/// Reads the one-page `pdf` in this process; the bytes of what came out (the page's PNG, or a
/// typed page's text).
fn read(renderer: &PdfRenderer, pdf: &bytes::Bytes) -> usize {
    let mut read = 0;
    renderer
        .render_blocking(pdf.clone(), 1, |event| {
            match event {
                PdfEvent::Page(page) => read = page.png.len(),
                PdfEvent::Typed(page) => read = page.text.len(),
                PdfEvent::Pages(_) => {}
            }
            true
        })
        .expect("renders");
    black_box(read)
}

criterion_group!(benches, render_page);
criterion_main!(benches);
