//! Measuring OCR engines against reference transcripts: `examiner eval-ocr`.
//!
//! Reads a folder in the format of `shared/data/handwriting-dev/` (`transcripts.jsonl`, one
//! `{"id", "image", "text"}` object per line, `image` relative to the folder), reads every page
//! through the same [`PageReader`] the service uses (so decoding and preprocessing are measured
//! too), and reports character and word error rates micro-averaged over the set (total edits
//! over total reference characters or words, whitespace-normalised, punctuation kept) and wall
//! seconds per page. With `concurrency` 1 pages are read one at a time, so `seconds_per_page`
//! is a page's latency; with more, pages overlap on the pool's workers and
//! `pages_per_second` is the throughput. Dev data is read at run time from its path, never
//! compiled in.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::stream::{self, StreamExt, TryStreamExt};

use serde::{Deserialize, Serialize};

use crate::ocr::quality::{levenshtein, normalise};
use crate::ocr::PageReader;

/// One page of a data set.
#[derive(Debug, Clone, Deserialize)]
pub struct OcrSample {
    pub id: String,
    /// Image path, relative to the data folder.
    pub image: PathBuf,
    /// The reference transcript.
    pub text: String,
}

/// How one page was read.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PageScore {
    pub id: String,
    pub cer: f64,
    pub wer: f64,
    pub seconds: f64,
    pub confidence: f64,
    /// The engine whose text was used (in `auto`, Tesseract or PP-OCR).
    pub engine: String,
    /// Why the page has no reading: the engine gave up at its time limit. Such a page is
    /// scored as read empty (every character an error), never left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The figures for one engine over a data set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct OcrReport {
    pub engine: String,
    pub pages: usize,
    pub cer: f64,
    pub wer: f64,
    /// Mean wall time from handing a page to the reader to its text (image file reading
    /// excluded).
    pub seconds_per_page: f64,
    /// Pages read per wall-clock second over the whole run.
    pub pages_per_second: f64,
    /// Pages in flight at once.
    pub concurrency: usize,
    pub per_page: Vec<PageScore>,
}

/// Loads `dir/transcripts.jsonl`.
pub fn load_samples(dir: &Path) -> Result<Vec<OcrSample>, String> {
    let path = dir.join("transcripts.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let samples = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str::<OcrSample>(line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if samples.is_empty() {
        return Err(format!("{} has no pages", path.display()));
    }
    Ok(samples)
}

/// Edit counts of one page: (character edits, reference characters, word edits, reference
/// words), whitespace-normalised.
pub fn edits(reference: &str, hypothesis: &str) -> (usize, usize, usize, usize) {
    let r: Vec<char> = normalise(reference).chars().collect();
    let h: Vec<char> = normalise(hypothesis).chars().collect();
    let rw: Vec<&str> = reference.split_whitespace().collect();
    let hw: Vec<&str> = hypothesis.split_whitespace().collect();
    (
        levenshtein(&r, &h),
        r.len(),
        levenshtein(&rw, &hw),
        rw.len(),
    )
}

/// What an engine made of one page.
struct Reading {
    text: String,
    confidence: f32,
    engine: String,
    error: Option<String>,
}

fn rate(edits: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        edits as f64 / total as f64
    }
}

/// Reads every sample with `reader` and scores it. `engine` names the configuration in the
/// report. A page that cannot be read fails the run: a silent gap would flatter the engine.
/// A page the engine gave up on at its time limit is the engine's failure, so it counts as
/// read empty, with the reason in its [`PageScore::error`].
pub async fn evaluate(
    reader: &dyn PageReader,
    engine: &str,
    dir: &Path,
    samples: &[OcrSample],
    concurrency: usize,
) -> Result<OcrReport, String> {
    let concurrency = concurrency.max(1);
    let mut images = Vec::with_capacity(samples.len());
    for sample in samples {
        let path = dir.join(&sample.image);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        images.push((path, bytes::Bytes::from(bytes)));
    }
    let run_started = Instant::now();
    let pages: Vec<(Reading, f64)> = stream::iter(images)
        .map(|(path, bytes)| async move {
            let started = Instant::now();
            let reading = match reader.read(bytes).await {
                Ok(page) => Reading {
                    text: page.text,
                    confidence: page.confidence,
                    engine: page.engine,
                    error: None,
                },
                Err(e @ crate::ocr::OcrError::TimedOut { .. }) => Reading {
                    text: String::new(),
                    confidence: 0.0,
                    engine: engine.to_string(),
                    error: Some(e.to_string()),
                },
                Err(e) => return Err(format!("{}: {e}", path.display())),
            };
            Ok::<_, String>((reading, started.elapsed().as_secs_f64()))
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let wall = run_started.elapsed().as_secs_f64();

    let mut per_page = Vec::with_capacity(samples.len());
    let (mut char_edits, mut chars, mut word_edits, mut words) = (0, 0, 0, 0);
    let mut seconds = 0.0;
    for (sample, (page, elapsed)) in samples.iter().zip(pages) {
        let (ce, c, we, w) = edits(&sample.text, &page.text);
        char_edits += ce;
        chars += c;
        word_edits += we;
        words += w;
        seconds += elapsed;
        per_page.push(PageScore {
            id: sample.id.clone(),
            cer: rate(ce, c),
            wer: rate(we, w),
            seconds: elapsed,
            confidence: f64::from(page.confidence),
            engine: page.engine,
            error: page.error,
        });
    }
    Ok(OcrReport {
        engine: engine.to_string(),
        pages: samples.len(),
        cer: rate(char_edits, chars),
        wer: rate(word_edits, words),
        seconds_per_page: seconds / samples.len() as f64,
        pages_per_second: if wall > 0.0 {
            samples.len() as f64 / wall
        } else {
            0.0
        },
        concurrency,
        per_page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_whitespace_normalised_and_keep_punctuation() {
        assert_eq!(edits("a  b\nc", "a b c"), (0, 5, 0, 3));
        assert_eq!(edits("end.", "end"), (1, 4, 1, 1));
        assert_eq!(edits("", ""), (0, 0, 0, 0));
    }

    /// Reads a page's bytes as its text, and gives up on pages that say `slow`.
    struct BytesAsText;

    #[async_trait::async_trait]
    impl PageReader for BytesAsText {
        async fn read(
            &self,
            image_bytes: bytes::Bytes,
        ) -> Result<crate::ocr::PageText, crate::ocr::OcrError> {
            let text = String::from_utf8_lossy(&image_bytes).into_owned();
            if text == "slow" {
                return Err(crate::ocr::OcrError::TimedOut {
                    engine: "bytes".into(),
                    limit_secs: 30.0,
                });
            }
            Ok(crate::ocr::PageText {
                text,
                confidence: 1.0,
                engine: "bytes".into(),
                width: 1,
                height: 1,
                decode_ms: 0.0,
                preprocess_ms: 0.0,
                ocr_ms: 0.0,
                rotated_degrees: 0,
                scale: 1.0,
            })
        }
    }

    #[tokio::test]
    async fn a_page_the_engine_gave_up_on_counts_as_read_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "one two").unwrap();
        std::fs::write(dir.path().join("b.txt"), "slow").unwrap();
        let samples = vec![
            OcrSample {
                id: "a".into(),
                image: "a.txt".into(),
                text: "one two".into(),
            },
            OcrSample {
                id: "b".into(),
                image: "b.txt".into(),
                text: "three four".into(),
            },
        ];
        let report = evaluate(&BytesAsText, "bytes", dir.path(), &samples, 2)
            .await
            .expect("a timeout is a result, not a failed run");
        assert_eq!(report.pages, 2);
        // "one two" read exactly; "three four" (10 characters, 2 words) read as nothing.
        assert!((report.cer - 10.0 / 17.0).abs() < 1e-9, "{}", report.cer);
        assert!((report.wer - 0.5).abs() < 1e-9, "{}", report.wer);
        assert_eq!(report.per_page[0].error, None);
        let slow = &report.per_page[1];
        assert_eq!((slow.cer, slow.wer, slow.confidence), (1.0, 1.0, 0.0));
        assert!(slow.error.as_deref().unwrap().contains("limit"), "{slow:?}");
    }

    #[test]
    fn rates_are_micro_averaged() {
        assert_eq!(rate(1, 4), 0.25);
        assert_eq!(rate(0, 0), 0.0);
    }

    /// The whole measurement on a tiny data set: two rendered printed pages read by a real
    /// Tesseract pool, once one at a time and once overlapped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn measures_a_real_engine_on_a_folder_of_pages() {
        use crate::ocr::testpages::{self, Layout};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("images")).unwrap();
        let font = testpages::load_font(testpages::FONT_SANS);
        let mut lines = String::new();
        for i in 0..2 {
            let (page, text) =
                testpages::render(&testpages::page_text(i, 2), &font, Layout::a4(200.0));
            std::fs::write(
                dir.path().join(format!("images/p{i}.png")),
                testpages::png(&page),
            )
            .unwrap();
            let record = serde_json::json!({"id": format!("p{i}"), "image": format!("images/p{i}.png"), "text": text});
            lines.push_str(&format!("{record}\n"));
        }
        std::fs::write(dir.path().join("transcripts.jsonl"), lines).unwrap();
        let samples = load_samples(dir.path()).unwrap();
        let pool = tokio::task::spawn_blocking(|| {
            let config = crate::ocr::PoolConfig {
                threads: 2,
                ..crate::ocr::PoolConfig::default()
            };
            crate::ocr::OcrPool::tesseract(config, "eng", None)
        })
        .await
        .unwrap()
        .expect("tesseract-ocr-eng installed");
        for concurrency in [1, 2] {
            let report = evaluate(&pool, "tesseract", dir.path(), &samples, concurrency)
                .await
                .unwrap();
            assert_eq!((report.engine.as_str(), report.pages), ("tesseract", 2));
            assert!(report.cer < 0.02, "CER {}", report.cer);
            assert!(report.wer < 0.05, "WER {}", report.wer);
            assert!(report.seconds_per_page > 0.0 && report.pages_per_second > 0.0);
            assert_eq!(report.per_page.len(), 2);
            assert!(report
                .per_page
                .iter()
                .all(|p| p.engine.starts_with("tesseract")));
        }
        // A missing image fails the run, naming the file.
        std::fs::remove_file(dir.path().join("images/p1.png")).unwrap();
        let err = evaluate(&pool, "tesseract", dir.path(), &samples, 1)
            .await
            .unwrap_err();
        assert!(err.contains("p1.png"), "{err}");
    }

    #[test]
    fn samples_load_from_jsonl_and_bad_lines_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("transcripts.jsonl"),
            "{\"id\":\"p1\",\"image\":\"images/p1.png\",\"text\":\"Hello\"}\n\n",
        )
        .unwrap();
        let samples = load_samples(dir.path()).unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].image, PathBuf::from("images/p1.png"));

        std::fs::write(dir.path().join("transcripts.jsonl"), "{\"id\":1}\n").unwrap();
        let err = load_samples(dir.path()).unwrap_err();
        assert!(err.contains("transcripts.jsonl:1"), "{err}");

        std::fs::write(dir.path().join("transcripts.jsonl"), "\n").unwrap();
        assert!(load_samples(dir.path()).unwrap_err().contains("no pages"));
    }
}
