//! Workflow 1: answer images → fetched → recognised → split into question-answer pairs →
//! stored as one submission.
//!
//! Every image of a request starts fetching at once; each goes to the OCR pool the moment
//! its bytes arrive, so page 2 is downloading while page 1 is being recognised. A PDF (a
//! scanned script) is rendered page by page, and each page goes to the OCR pool as soon as
//! it is rendered. OCR results are memoised by the document's content hash. Every page
//! counts towards `limits.max_pages`. The first failure cancels the rest and nothing is
//! stored: a submission is written whole, in one transaction, or not at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;
use futures::future::{try_join_all, Either};
use futures::stream::{FuturesOrdered, StreamExt};
use futures::TryFutureExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::app::AppState;
use crate::fetch::{FetchedImage, RequestBudget};
use crate::http::ApiError;
use crate::model::{QuestionPaper, StoredQaPair, Submission, SubmissionImage};
use crate::ocr::pdf::{self, PdfEvent};
use crate::ocr::{OcrError, PageText, Vocabulary};
use crate::segment::segment;
use crate::store::OCR_MEMO;

/// One image reference of an upload.
#[derive(Debug, Clone)]
pub struct ImageRef {
    pub image_id: String,
    pub image_url: String,
}

/// A validated upload request.
#[derive(Debug, Clone)]
pub struct UploadInput {
    pub user_id: String,
    pub course_code: String,
    pub exam_code: String,
    pub question_paper_code: String,
    pub images: Vec<ImageRef>,
}

/// What OCR read from one image, as memoised by content hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CachedPage {
    text: String,
    confidence: f64,
    engine: String,
    width: u32,
    height: u32,
}

impl From<PageText> for CachedPage {
    fn from(page: PageText) -> Self {
        Self {
            text: page.text,
            // Engines report f32; widened as is it would print as 0.6200000047683716.
            confidence: (f64::from(page.confidence) * 1e4).round() / 1e4,
            engine: page.engine,
            width: page.width,
            height: page.height,
        }
    }
}

/// Checks that the course, exam and paper exist and link up; returns the paper.
pub async fn resolve_paper(
    state: &AppState,
    course_code: &str,
    exam_code: &str,
    question_paper_code: &str,
) -> Result<QuestionPaper, ApiError> {
    let store = &state.store;
    let (course, (exam, paper)) = tokio::try_join!(
        store.get_course(course_code),
        store.get_exam_and_paper(exam_code, question_paper_code),
    )?;
    if course.is_none() {
        return Err(ApiError::NotFound(format!(
            "course {course_code:?} does not exist; create it with POST /courses"
        )));
    }
    let exam = exam.ok_or_else(|| {
        ApiError::NotFound(format!(
            "exam {exam_code:?} does not exist; create it with POST /exams"
        ))
    })?;
    let paper = paper.ok_or_else(|| {
        ApiError::NotFound(format!(
            "question paper {question_paper_code:?} does not exist; create it with POST /question-papers"
        ))
    })?;
    if exam.course_code != course_code {
        return Err(ApiError::Conflict(format!(
            "exam {exam_code:?} belongs to course {:?}, not {course_code:?}",
            exam.course_code
        )));
    }
    if paper.exam_code != exam_code {
        return Err(ApiError::Conflict(format!(
            "question paper {question_paper_code:?} belongs to exam {:?}, not {exam_code:?}",
            paper.exam_code
        )));
    }
    Ok(paper)
}

/// What an upload produced.
pub struct UploadOutcome {
    pub submission: Submission,
    /// The same images were uploaded before by this user for this paper; `submission` is
    /// that earlier one and nothing new was stored.
    pub duplicate: bool,
}

/// Pages an upload may still read (`limits.max_pages`), shared by its documents.
#[derive(Debug)]
struct PageBudget {
    left: AtomicUsize,
}

impl PageBudget {
    fn new(pages: usize) -> Self {
        PageBudget {
            left: AtomicUsize::new(pages),
        }
    }

    fn left(&self) -> usize {
        self.left.load(Ordering::SeqCst)
    }

    fn take(&self, pages: usize) -> Result<(), OcrError> {
        self.left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(pages)
            })
            .map(|_| ())
            .map_err(|left| OcrError::TooManyPages { pages, left })
    }
}

/// A fetched image or PDF, what OCR read on each of its pages, and where that is memoised.
struct Document {
    fetched: FetchedImage,
    pages: Vec<CachedPage>,
    memo_key: String,
}

/// What the OCR memo holds for a document: the list of its pages. Entries written before
/// PDFs were read are an image's one page.
#[derive(Deserialize)]
#[serde(untagged)]
enum MemoisedPages {
    Pages(Vec<CachedPage>),
    Page(CachedPage),
}

impl MemoisedPages {
    fn into_pages(self) -> Vec<CachedPage> {
        match self {
            MemoisedPages::Pages(pages) => pages,
            MemoisedPages::Page(page) => vec![page],
        }
    }
}

/// Identifies a set of images by their content hashes, in order.
fn images_digest(documents: &[Document]) -> String {
    let mut hasher = Sha256::new();
    for Document { fetched, .. } in documents {
        hasher.update(fetched.sha256.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())
}

/// Runs the whole upload workflow and returns the stored submission.
pub async fn upload(state: &AppState, input: UploadInput) -> Result<UploadOutcome, ApiError> {
    let paper = resolve_paper(
        state,
        &input.course_code,
        &input.exam_code,
        &input.question_paper_code,
    )
    .await?;

    let memo = OcrMemo::for_paper(state, &paper);
    let budget = Arc::new(RequestBudget::new(state.settings.fetch.max_request_bytes));
    let pages_left = PageBudget::new(state.settings.limits.max_pages);
    let documents = try_join_all(input.images.iter().enumerate().map(|(index, image)| {
        let budget = budget.clone();
        let memo = &memo;
        let pages_left = &pages_left;
        let span = tracing::info_span!("page", index, image_id = %image.image_id);
        async move {
            let fetched = state
                .images
                .fetch(&image.image_url, &budget)
                .instrument(tracing::info_span!("fetch"))
                .await
                .map_err(|error| ApiError::Fetch {
                    image_id: image.image_id.clone(),
                    error,
                })?;
            let memo_key = memo.key_of(&fetched);
            let pages = recognise(state, &fetched, memo, &memo_key, pages_left)
                .await
                .map_err(|error| ApiError::Ocr {
                    image_id: image.image_id.clone(),
                    error,
                })?;
            Ok::<_, ApiError>(Document {
                fetched,
                pages,
                memo_key,
            })
        }
        .instrument(span)
    }))
    .await?;

    let digest = images_digest(&documents);
    if let Some(existing) = state
        .store
        .find_submission_by_images(&input.user_id, &input.question_paper_code, &digest)
        .await?
    {
        metrics::counter!("examiner_duplicate_uploads_total").increment(1);
        return Ok(UploadOutcome {
            submission: existing,
            duplicate: true,
        });
    }

    let started = Instant::now();
    let pages: Vec<&CachedPage> = documents.iter().flat_map(|d| &d.pages).collect();
    let texts: Vec<&str> = pages.iter().map(|page| page.text.as_str()).collect();
    let known = paper.question_numbers();
    let segmented = segment(&texts, Some(&known));
    tracing::debug!(
        pairs = segmented.pairs.len(),
        elapsed_us = started.elapsed().as_micros() as u64,
        "segmented"
    );

    let images = input
        .images
        .iter()
        .zip(&documents)
        .map(|(image, document)| {
            let Document {
                fetched,
                pages,
                memo_key,
            } = document;
            let (confidence, engine) = reading_of(pages.iter());
            SubmissionImage {
                image_id: image.image_id.clone(),
                image_url: fetched.stored_url.clone(),
                content_sha256: fetched.sha256.clone(),
                media_type: fetched.media_type.to_string(),
                byte_size: fetched.bytes.len() as i64,
                page_count: pages.len() as i64,
                width: pages.first().map_or(0, |p| i64::from(p.width)),
                height: pages.first().map_or(0, |p| i64::from(p.height)),
                ocr_text: pages
                    .iter()
                    .map(|p| p.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n"),
                ocr_confidence: confidence.unwrap_or(0.0),
                ocr_engine: engine.unwrap_or_default(),
                ocr_memo_key: Some(memo_key.clone()),
            }
        })
        .collect();
    let submission = Submission {
        submission_id: uuid::Uuid::now_v7().to_string(),
        user_id: input.user_id,
        course_code: input.course_code,
        exam_code: input.exam_code,
        question_paper_code: input.question_paper_code,
        images,
        extracted_text: texts.join("\n"),
        unassigned_text: segmented.unassigned_text,
        qa_pairs: segmented
            .pairs
            .into_iter()
            .map(|pair| {
                let (ocr_confidence, ocr_engine) = pair_confidence(&pages, &pair.pages);
                StoredQaPair {
                    question_number: pair.question_number,
                    answer: pair.answer,
                    low_ocr_confidence: ocr_confidence
                        .is_some_and(|c| c < state.settings.ocr.low_confidence_below),
                    ocr_confidence,
                    ocr_engine,
                }
            })
            .collect(),
        created_at: Utc::now(),
    };
    state
        .store
        .insert_submission(&submission, &digest)
        .instrument(tracing::info_span!("store"))
        .await?;
    metrics::counter!("examiner_submissions_total").increment(1);
    Ok(UploadOutcome {
        submission,
        duplicate: false,
    })
}

/// The confidence of a pair: the lowest of its pages' (a pair is only as legible as its worst
/// page), and the engine that read them, `"mixed"` when several did.
fn pair_confidence(pages: &[&CachedPage], indexes: &[usize]) -> (Option<f64>, Option<String>) {
    reading_of(indexes.iter().filter_map(|&i| pages.get(i).copied()))
}

/// The lowest confidence of `pages` and the engine that read them (`"mixed"` for several);
/// `None`s for no pages.
fn reading_of<'a>(pages: impl Iterator<Item = &'a CachedPage>) -> (Option<f64>, Option<String>) {
    let read: Vec<&CachedPage> = pages.collect();
    let confidence = read.iter().map(|p| p.confidence).reduce(f64::min);
    let engine = read.first().map(|first| {
        if read.iter().all(|p| p.engine == first.engine) {
            first.engine.clone()
        } else {
            "mixed".to_string()
        }
    });
    (confidence, engine)
}

/// The words of a paper's questions and standard answers: PP-OCR's word correction may choose
/// them for words it read unsure (never adding any), so a student's "depreciatoin" read
/// unsure becomes the paper's "depreciation".
pub fn paper_vocabulary(paper: &QuestionPaper) -> Vocabulary {
    Vocabulary::from_texts(paper.questions.iter().flat_map(|q| {
        q.question_text
            .as_deref()
            .into_iter()
            .chain([q.standard_answer.as_str()])
    }))
}

/// What one upload's pages are read with, and the memo key prefix that identifies it: the
/// engine configuration and, when the reader corrects words against it, the paper's
/// vocabulary. A reader that ignores the vocabulary (Tesseract alone) shares its memo across
/// papers, so the same image uploaded for another paper is not read again.
#[derive(Debug)]
struct OcrMemo {
    vocabulary: Option<Arc<Vocabulary>>,
    prefix: String,
    /// What a PDF's pages are rendered at, which their texts depend on too.
    pdf_dpi: f32,
    /// Whether typed PDF pages are read from their text; their texts depend on it.
    pdf_text_layers: bool,
}

impl OcrMemo {
    fn for_paper(state: &AppState, paper: &QuestionPaper) -> Self {
        OcrMemo {
            pdf_dpi: state.settings.ocr.pdf_dpi,
            pdf_text_layers: state.pdf.reads_text_layers(),
            ..Self::new(&state.ocr_cache_key, state.ocr.uses_vocabulary(), paper)
        }
    }

    fn new(engine_key: &str, uses_vocabulary: bool, paper: &QuestionPaper) -> Self {
        let vocabulary = uses_vocabulary
            .then(|| paper_vocabulary(paper))
            .filter(|v| !v.is_empty())
            .map(Arc::new);
        let prefix = match &vocabulary {
            Some(v) => format!("{engine_key}:w{}", v.digest()),
            None => engine_key.to_string(),
        };
        OcrMemo {
            vocabulary,
            prefix,
            pdf_dpi: pdf::DEFAULT_DPI,
            pdf_text_layers: true,
        }
    }

    fn key(&self, image_sha256: &str) -> String {
        format!("{}:{image_sha256}", self.prefix)
    }

    /// The memo key of a fetched document: an image's by its hash, a PDF's by its hash, the
    /// resolution its pages are rendered at and whether typed pages are read from their text.
    fn key_of(&self, fetched: &FetchedImage) -> String {
        if fetched.media_type == pdf::MEDIA_TYPE {
            let text = if self.pdf_text_layers { "+text" } else { "" };
            self.key(&format!("pdf{}{text}:{}", self.pdf_dpi, fetched.sha256))
        } else {
            self.key(&fetched.sha256)
        }
    }
}

/// Rendered pages of a PDF waiting for the OCR pool at most: the renderer waits beyond it,
/// so a long PDF never sits in memory whole.
const PDF_PAGES_AHEAD: usize = 4;

/// OCR of one fetched document (one page for an image, every page of a PDF in order),
/// memoised under `key` ([`OcrMemo::key_of`]). Its pages are taken from `pages_left` whether
/// read or memoised.
async fn recognise(
    state: &AppState,
    fetched: &FetchedImage,
    memo: &OcrMemo,
    key: &str,
    pages_left: &PageBudget,
) -> Result<Vec<CachedPage>, OcrError> {
    match state.store.cache_get(OCR_MEMO, key).await {
        Ok(Some(json)) => {
            let cached = serde_json::from_str(&json).map(MemoisedPages::into_pages);
            match cached {
                Ok(pages) if !pages.is_empty() => {
                    pages_left.take(pages.len())?;
                    metrics::counter!("examiner_ocr_cache_hits_total").increment(1);
                    return Ok(pages);
                }
                Ok(_) => tracing::warn!("ignoring an empty OCR cache entry"),
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable OCR cache entry"),
            }
        }
        Ok(None) => {}
        // The cache only saves work; a failing read must not fail the upload.
        Err(e) => tracing::warn!(error = %e, "OCR cache read failed"),
    }
    let pages = if fetched.media_type == pdf::MEDIA_TYPE {
        read_pdf(state, fetched, memo, pages_left)
            .instrument(tracing::info_span!("pdf"))
            .await?
    } else {
        pages_left.take(1)?;
        let page: CachedPage = state
            .ocr
            .read_with(fetched.bytes.clone(), memo.vocabulary.clone())
            .instrument(tracing::info_span!("ocr"))
            .await?
            .into();
        vec![page]
    };
    match serde_json::to_string(&pages) {
        Ok(json) => {
            if let Err(e) = state.store.cache_put(OCR_MEMO, key, &json).await {
                tracing::warn!(error = %e, "OCR cache write failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "OCR result not cacheable"),
    }
    Ok(pages)
}

/// Renders a PDF and reads its pages as they come: page 2 is being rendered while page 1 is
/// read, and up to [`PDF_PAGES_AHEAD`] rendered pages wait for the OCR pool.
async fn read_pdf(
    state: &AppState,
    fetched: &FetchedImage,
    memo: &OcrMemo,
    pages_left: &PageBudget,
) -> Result<Vec<CachedPage>, OcrError> {
    let mut events = state
        .pdf
        .render(fetched.bytes.clone(), pages_left.left())
        .await;
    let mut reading = FuturesOrdered::new();
    let mut pages = Vec::new();
    let mut expected = None;
    let mut rendering = true;
    while rendering || !reading.is_empty() {
        tokio::select! {
            event = events.recv(), if rendering && reading.len() < PDF_PAGES_AHEAD => match event {
                None => rendering = false,
                Some(Err(error)) => return Err(error),
                Some(Ok(PdfEvent::Pages(count))) => {
                    pages_left.take(count)?;
                    expected = Some(count);
                    tracing::debug!(pages = count, "rendering PDF");
                }
                Some(Ok(PdfEvent::Page(page))) => {
                    metrics::counter!("examiner_pdf_pages_total", "read" => "ocr").increment(1);
                    reading.push_back(Either::Left(
                        state
                            .ocr
                            .read_with(page.png, memo.vocabulary.clone())
                            .map_ok(CachedPage::from)
                            .instrument(tracing::info_span!("ocr", page = pages.len() + reading.len() + 1)),
                    ));
                }
                Some(Ok(PdfEvent::Typed(page))) => {
                    metrics::counter!("examiner_pdf_pages_total", "read" => "text").increment(1);
                    // Behind the pages before it, so pages stay in document order.
                    reading.push_back(Either::Right(std::future::ready(Ok(CachedPage {
                        text: page.text,
                        confidence: 1.0,
                        engine: pdf::text_layer::ENGINE.to_string(),
                        width: page.width,
                        height: page.height,
                    }))));
                }
            },
            Some(read) = reading.next(), if !reading.is_empty() => {
                pages.push(read?);
            }
        }
    }
    // The renderer ends its channel early only by reporting why; this says so if it did not.
    if expected != Some(pages.len()) {
        return Err(OcrError::UnreadablePdf(format!(
            "rendering stopped after {} of {} pages",
            pages.len(),
            expected.map_or_else(|| "its".to_string(), |n| n.to_string())
        )));
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Question;
    use crate::segment::QuestionNumber;

    fn paper(code: &str, standard_answer: &str) -> QuestionPaper {
        QuestionPaper {
            question_paper_code: code.into(),
            exam_code: "E".into(),
            title: None,
            marks_step: None,
            questions: vec![Question {
                question_number: QuestionNumber::parse("1").unwrap(),
                question_text: Some("Define depreciation.".into()),
                standard_answer: standard_answer.into(),
                total_marks: 5.0,
            }],
        }
    }

    /// Two papers with no words in common.
    fn two_papers() -> (QuestionPaper, QuestionPaper) {
        (
            paper(
                "QP-A",
                "Depreciation spreads the cost of an asset over its life.",
            ),
            paper("QP-B", "Goodwill is the value of a business's reputation."),
        )
    }

    #[test]
    fn a_pdfs_memo_key_names_its_resolution_and_entries_of_either_shape_are_read() {
        let (a, _) = two_papers();
        let memo = OcrMemo {
            pdf_dpi: 200.0,
            ..OcrMemo::new("tesseract:eng:p1", false, &a)
        };
        let fetched = |media_type| FetchedImage {
            bytes: bytes::Bytes::new(),
            media_type,
            sha256: "abc".into(),
            stored_url: String::new(),
        };
        assert_eq!(memo.key_of(&fetched("image/png")), "tesseract:eng:p1:abc");
        assert_eq!(
            memo.key_of(&fetched(pdf::MEDIA_TYPE)),
            "tesseract:eng:p1:pdf200+text:abc"
        );
        let ocr_only = OcrMemo {
            pdf_text_layers: false,
            ..memo
        };
        assert_eq!(
            ocr_only.key_of(&fetched(pdf::MEDIA_TYPE)),
            "tesseract:eng:p1:pdf200:abc"
        );
        let page =
            r#"{"text":"1.a x","confidence":0.9,"engine":"tesseract:eng","width":1,"height":2}"#;
        let read = |json: &str| {
            serde_json::from_str::<MemoisedPages>(json)
                .unwrap()
                .into_pages()
        };
        // Written before PDFs were read: one page on its own.
        let old = read(page);
        assert_eq!(
            (old.len(), old[0].text.as_str(), old[0].height),
            (1, "1.a x", 2)
        );
        let list = read(&format!("[{page},{page}]"));
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn the_page_budget_refuses_what_would_go_over_and_keeps_what_is_left() {
        let budget = PageBudget::new(5);
        budget.take(1).unwrap();
        budget.take(3).unwrap();
        let error = budget.take(2).unwrap_err();
        assert!(
            matches!(error, OcrError::TooManyPages { pages: 2, left: 1 }),
            "{error:?}"
        );
        assert!(error.to_string().contains("limits.max_pages"), "{error}");
        assert_eq!(budget.left(), 1, "a refused document takes nothing");
        budget.take(1).unwrap();
        assert_eq!(budget.left(), 0);
    }

    #[test]
    fn a_reader_that_ignores_the_vocabulary_shares_its_memo_across_papers() {
        let (a, b) = two_papers();
        let (memo_a, memo_b) = (
            OcrMemo::new("tesseract:eng:p1", false, &a),
            OcrMemo::new("tesseract:eng:p1", false, &b),
        );
        assert!(memo_a.vocabulary.is_none());
        assert_eq!(memo_a.key("abc"), "tesseract:eng:p1:abc");
        assert_eq!(memo_a.key("abc"), memo_b.key("abc"));
    }

    #[test]
    fn a_reader_that_corrects_words_keys_its_memo_by_the_papers_words() {
        let (a, b) = two_papers();
        let a_again = paper("QP-A2", &a.questions[0].standard_answer);
        let memo = |p: &QuestionPaper| OcrMemo::new("auto:eng:0.8:p1", true, p);
        assert!(memo(&a).vocabulary.is_some());
        assert_ne!(memo(&a).key("abc"), memo(&b).key("abc"));
        // Same words, same reading: another paper with them shares the entries.
        assert_eq!(memo(&a).key("abc"), memo(&a_again).key("abc"));
        assert_ne!(memo(&a).key("abc"), memo(&a).key("abd"));
        // A paper without words to offer reads as the plain engine does.
        let empty = QuestionPaper {
            questions: vec![],
            ..a.clone()
        };
        assert!(memo(&empty).vocabulary.is_none());
        assert_eq!(memo(&empty).key("abc"), "auto:eng:0.8:p1:abc");
    }
}
