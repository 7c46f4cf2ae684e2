//! Throughput of the embedded offline grader (harness = false; run with
//! `cargo bench --bench local_grader`).
//!
//! Measures, on synthetic fifty-word answers (no dev data involved): (1) raw embedding
//! throughput of the [`EmbedPool`] (sentences/s), (2) end-to-end [`LocalGrader`] throughput
//! (answers/s) with the standard answer's embeddings cached after the first answer. Needs the
//! model files in `$EXAMINER_MODELS_DIR` or `./models` (`scripts/fetch-model.sh models`).
//! `BENCH_WORKERS` (default 2) and `BENCH_ANSWERS` (default 300) adjust the run.

use std::sync::Arc;
use std::time::Instant;

use examiner::embed::{default_models_dir, EmbedPool, Embedder, Priority};
use examiner::grade::local::LocalGrader;
use examiner::grade::{GradeTask, Grader};
use futures::StreamExt;

const WORDS: &[&str] = &[
    "a",
    "stack",
    "stores",
    "items",
    "so",
    "that",
    "the",
    "last",
    "one",
    "pushed",
    "is",
    "first",
    "popped",
    "while",
    "queue",
    "removes",
    "them",
    "in",
    "order",
    "they",
    "arrived",
    "both",
    "can",
    "be",
    "built",
    "on",
    "arrays",
    "or",
    "linked",
    "lists",
    "and",
    "operations",
    "take",
    "constant",
    "time",
    "when",
    "implemented",
    "well",
    "pointer",
    "to",
    "top",
    "front",
    "rear",
    "element",
    "overflow",
    "underflow",
    "happens",
    "if",
    "full",
    "empty",
];

/// A deterministic pseudo-random fifty-word answer (a linear congruential generator picks words).
fn answer(seed: u64) -> String {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(50);
    for i in 0..50 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[(x >> 33) as usize % WORDS.len()];
        out.push(if i % 12 == 11 {
            format!("{w}.")
        } else {
            w.to_string()
        });
    }
    out.join(" ")
}

/// CPU seconds used by this process so far (user + system), from /proc (Linux); `None` elsewhere.
/// The machine is shared with other builds, so wall-clock figures alone understate throughput;
/// answers per CPU-second × cores is what an otherwise idle machine would do.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn report(what: &str, n: usize, wall: f64, cpu: Option<f64>, workers: usize) {
    let cores = std::thread::available_parallelism()
        .map_or(1, |c| c.get())
        .min(workers);
    match cpu {
        Some(c) if c > 0.0 => println!(
            "{what}: {n} in {wall:.2}s wall = {:.1}/s; {c:.2} CPU-s = {:.1}/s per core, {:.1}/s on {cores} idle cores",
            n as f64 / wall,
            n as f64 / c,
            n as f64 / c * cores as f64
        ),
        _ => println!("{what}: {n} in {wall:.2}s wall = {:.1}/s", n as f64 / wall),
    }
}

fn main() {
    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let n: usize = std::env::var("BENCH_ANSWERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let dir = default_models_dir();
    let embedder = Arc::new(Embedder::load(&dir).unwrap_or_else(|e| {
        panic!(
            "benchmark needs the model in {} ({e}); run scripts/fetch-model.sh models",
            dir.display()
        )
    }));
    let pool = Arc::new(EmbedPool::new(embedder, workers, 1, workers * 4).expect("pool"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let answers: Vec<String> = (0..n as u64).map(answer).collect();

    rt.block_on(async {
        // Warm up (allocators, caches).
        for a in answers.iter().take(4) {
            pool.embed(Priority::Normal, vec![a.clone()]).await.expect("embed");
        }
        let t = Instant::now();
        let c0 = cpu_seconds();
        let done: Vec<_> = futures::stream::iter(answers.iter().map(|a| pool.embed(Priority::Normal, vec![a.clone()])))
            .buffer_unordered(workers * 2)
            .collect()
            .await;
        assert!(done.iter().all(Result::is_ok));
        let cpu = cpu_seconds().zip(c0).map(|(a, b)| a - b);
        report("embedding (fifty-word texts)", n, t.elapsed().as_secs_f64(), cpu, workers);

        let grader = LocalGrader::new(pool.clone());
        let task = |a: &String| GradeTask {
            question_number: "1".into(),
            question_text: Some("What is the difference between a stack and a queue?".into()),
            student_answer: a.clone(),
            standard_answer: "A stack is last in, first out: the most recently added item is removed first. \
                              A queue is first in, first out: items are removed in the order they were added."
                .into(),
            total_marks: 5.0,
            marks_step: 0.5,
        };
        grader.grade(&task(&answers[0])).await; // embeds and caches the standard answer
        let t = Instant::now();
        let c0 = cpu_seconds();
        let outcomes: Vec<_> = futures::stream::iter(answers.iter().map(|a| {
            let g = &grader;
            let tk = task(a);
            async move { g.grade(&tk).await }
        }))
        .buffer_unordered(workers * 4)
        .collect()
        .await;
        assert!(outcomes.iter().all(|o| o.marks_awarded.is_some()));
        let cpu = cpu_seconds().zip(c0).map(|(a, b)| a - b);
        report("grading (fifty-word answers)", n, t.elapsed().as_secs_f64(), cpu, workers);
    });
}
