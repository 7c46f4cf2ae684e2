//! OCR throughput benchmark (plain `harness = false` main: a page takes ~1 s,
//! too slow for criterion's sampling to add anything). Renders 6 distinct
//! dense A4 exam-answer pages at 200 dpi as PNG, then measures
//! (a) one engine on one thread, page after page, running the same pipeline
//!     as a pool worker (decode → preprocess → Tesseract);
//! (b) the pool on all cores, every page submitted at once;
//! and reports pages/s for both, the speed-up, the share of a page's time
//! spent outside Tesseract (decode + preprocess), and the mean CER. It also
//! measures how much CPU parallelism the machine actually offered (busy
//! loops on 1 vs all cores, before and after), because on a shared machine
//! the pool's speed-up cannot exceed it.
//!
//! Run: `cargo bench --bench ocr` (needs OMP_THREAD_LIMIT=1, set by
//! .cargo/config.toml). `OCR_BENCH_ROUNDS=n` repeats the page set (default 2).

#[path = "../src/ocr/testpages.rs"]
mod testpages;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use examiner::ocr::{
    cer, decode, omp_thread_limit_ok, preprocess, DecodeLimits, OcrEngine, OcrPool, PoolConfig,
    PreprocessOptions, TesseractEngine,
};
use testpages::Layout;

const PAGES: usize = 6;

fn main() {
    if !omp_thread_limit_ok() {
        eprintln!("warning: OMP_THREAD_LIMIT is not 1; figures will be meaningless");
    }
    let rounds: usize = std::env::var("OCR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let parallelism_before = available_parallelism(cores);

    let font = testpages::load_font(testpages::FONT_SANS);
    let pages: Vec<(Bytes, String)> = (0..PAGES)
        .map(|i| {
            let (page, reference) =
                testpages::render(&testpages::page_text(i, 12), &font, Layout::a4(200.0));
            (Bytes::from(testpages::png(&page)), reference)
        })
        .collect();
    let chars: usize = pages.iter().map(|(_, r)| r.len()).sum();
    println!(
        "ocr bench: {PAGES} A4 pages at 200 dpi (1654x2338 PNG, {} chars/page avg), {rounds} round(s), {cores} core(s)",
        chars / PAGES
    );

    // (a) single thread, one engine.
    let mut engine = TesseractEngine::new("eng", None).expect("eng traineddata");
    let limits = DecodeLimits::default();
    let opts = PreprocessOptions::default();
    let run_one = |engine: &mut TesseractEngine, bytes: &[u8]| {
        let t0 = Instant::now();
        let image = decode(bytes, &limits).expect("decode");
        let t1 = Instant::now();
        let prepared = preprocess::prepare(image, &opts);
        let t2 = Instant::now();
        let text = engine
            .recognize(&prepared.image, prepared.ppi)
            .expect("ocr")
            .text;
        let t3 = Instant::now();
        (
            text,
            (t1 - t0).as_secs_f64(),
            (t2 - t1).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
        )
    };
    run_one(&mut engine, &pages[0].0); // warm-up: first page loads models lazily
    let (mut dec, mut pre, mut ocr, mut cer_sum) = (0.0, 0.0, 0.0, 0.0);
    let started = Instant::now();
    for _ in 0..rounds {
        for (bytes, reference) in &pages {
            let (text, d, p, o) = run_one(&mut engine, bytes);
            dec += d;
            pre += p;
            ocr += o;
            cer_sum += cer(reference, &text);
        }
    }
    let single_secs = started.elapsed().as_secs_f64();
    let n = (rounds * PAGES) as f64;
    let single = n / single_secs;
    let outside = (dec + pre) / (dec + pre + ocr);
    println!(
        "single thread: {single:.3} pages/s ({:.0} ms/page: decode {:.0} ms, preprocess {:.0} ms, tesseract {:.0} ms), mean CER {:.3}%",
        1000.0 * single_secs / n,
        1000.0 * dec / n,
        1000.0 * pre / n,
        1000.0 * ocr / n,
        100.0 * cer_sum / n
    );
    println!(
        "outside tesseract (decode + preprocess): {:.1}% of page time",
        100.0 * outside
    );
    drop(engine);

    // (b) the pool on all cores.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let pool =
        Arc::new(OcrPool::tesseract(PoolConfig::default(), "eng", None).expect("pool with eng"));
    let threads = pool.threads();
    let (pool_secs, pool_cer) = rt.block_on(async {
        // Warm-up: one page per worker.
        let warm: Vec<_> = (0..threads)
            .map(|i| {
                let pool = Arc::clone(&pool);
                let bytes = pages[i % PAGES].0.clone();
                tokio::spawn(async move { pool.recognize(bytes).await })
            })
            .collect();
        for w in warm {
            w.await.expect("task").expect("warm-up page");
        }
        let started = Instant::now();
        let mut jobs = Vec::new();
        for _ in 0..rounds {
            for (bytes, reference) in &pages {
                let pool = Arc::clone(&pool);
                let bytes = bytes.clone();
                let reference = reference.clone();
                jobs.push(tokio::spawn(async move {
                    let page = pool.recognize(bytes).await.expect("pool page");
                    cer(&reference, &page.text)
                }));
            }
        }
        let mut cer_sum = 0.0;
        for j in jobs {
            cer_sum += j.await.expect("task");
        }
        (started.elapsed().as_secs_f64(), cer_sum / n)
    });
    let pooled = n / pool_secs;
    println!(
        "pool ({threads} threads): {pooled:.3} pages/s ({:.0} ms/page wall), mean CER {:.3}%",
        1000.0 * pool_secs / n,
        100.0 * pool_cer
    );
    println!("speed-up pool/single: {:.2}x", pooled / single);
    println!(
        "CPU parallelism available (busy loops, {cores} vs 1 thread): {parallelism_before:.2}x before, {:.2}x after",
        available_parallelism(cores)
    );
}

/// Ratio of work done per second by `n` busy threads to one busy thread.
fn available_parallelism(n: usize) -> f64 {
    fn spin() -> f64 {
        let t = Instant::now();
        let mut x = 0u64;
        for i in 0..300_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        std::hint::black_box(x);
        t.elapsed().as_secs_f64()
    }
    let one = spin();
    let t = Instant::now();
    let handles: Vec<_> = (0..n).map(|_| std::thread::spawn(spin)).collect();
    for h in handles {
        let _ = h.join();
    }
    n as f64 * one / t.elapsed().as_secs_f64()
}
