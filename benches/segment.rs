//! Segmentation throughput on a realistic ~1 MB answer script, with and without the paper's
//! question numbers.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use examiner::segment::{segment, QuestionNumber};

/// One question's worth of answer text in the styles students use: parts, roman sub-parts,
/// numbered points, journal entries, amounts, dates, percentages and OCR's curly quotes.
fn answer_block(question: usize) -> String {
    format!(
        "Q{question}. (a) The “going concern” concept assumes that the business will continue \
for the foreseeable future, so assets are shown at cost less depreciation (AS 1, IAS 1).
Features of the concept:
1. Entity continues its operations
2. No intention or necessity to liquidate
3. Financial statements are prepared on this basis
(b) Journal entries in the books of M/s Ravi Traders
01.04.2023  Cash A/c                 Dr.   1,50,000
              To Capital A/c                      1,50,000
(Being capital introduced in the business)
15.04.2023  Purchases A/c            Dr.     20,000
              To Cash A/c                            20,000
(i) Depreciation @ 10% p.a. on ₹ 2,00,000 = ₹ 20,000
(ii) Interest on capital @ 6% = 9,000 as per Section 2(b) of the deed.
Ans: Net profit = 1,20,000 - 29,000 = 91,000
(c) As discussed in Q1 above, the accounting equation is Assets = Liabilities + Capital. \
1.5 times the current ratio of 2:1 is considered ideal; see page 3.

"
    )
}

/// About 1 MB of script split into pages of ~40 lines, as OCR returns them per image.
fn script() -> (Vec<String>, Vec<QuestionNumber>) {
    let mut text = String::from("Name: Ravi Kumar  Roll No 1234\nCA Foundation – Paper 1\n\n");
    let mut known = Vec::new();
    let mut question = 1;
    while text.len() < 1_000_000 {
        text.push_str(&answer_block(question));
        for part in ["a", "b", "b.i", "b.ii", "c"] {
            known.extend(QuestionNumber::parse(&format!("{question}.{part}")));
        }
        question += 1;
    }
    let lines: Vec<&str> = text.lines().collect();
    let pages = lines.chunks(40).map(|page| page.join("\n")).collect();
    (pages, known)
}

fn segment_throughput(c: &mut Criterion) {
    let (pages, known) = script();
    let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
    let bytes: usize = pages.iter().map(|page| page.len() + 1).sum();

    let mut group = c.benchmark_group("segment_throughput");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.sample_size(20);
    group.bench_function("without_paper", |b| {
        b.iter(|| segment(black_box(&pages), None))
    });
    group.bench_function("with_paper", |b| {
        b.iter(|| segment(black_box(&pages), Some(black_box(&known))))
    });
    group.finish();
}

criterion_group!(benches, segment_throughput);
criterion_main!(benches);
