//! OCR for answer-script pages: bytes of a photo or scan in, text out.
//! Owns image decoding with safety caps ([`decode`]), measured preprocessing
//! ([`preprocess`]), the two local engines behind the [`OcrEngine`] trait
//! (Tesseract, [`tesseract`], for print; PP-OCRv5, [`ppocr`], for
//! handwriting), the bounded pool of blocking worker threads that
//! keeps all of that CPU work off the async executor ([`OcrPool`]),
//! CER/WER measures ([`quality`]) and the vision-LLM backend ([`vision`]),
//! which reads pages over the network instead of on the pool. Depends only on
//! external crates, except the vision backend, which reuses the LLM backend
//! settings and JSON extraction of [`crate::grade`].
//!
//! Pipeline per page, all on a pool thread: sniff + decode (caps checked from
//! the header, EXIF orientation applied) → grayscale → page enhancement
//! ([`enhance`]: by default a photographed sheet is flattened and a tilted
//! page straightened) → rescale text to a
//! 16 px median glyph height (11 pt at 200 dpi) when it is far from it →
//! Tesseract; pages read with low confidence get Tesseract's orientation
//! detection and, if turned, a second read; in `auto` mode, pages Tesseract
//! still reads with confidence under 0.80 (handwriting: 0.29-0.67, print:
//! 0.96, OCR.md), or that it reads as nothing at all, are read again by
//! PP-OCRv5, whose text is used; an upload to a stored paper offers the
//! paper's words to PP-OCR's word correction ([`Vocabulary`]).
//!
//! Deployment note: Debian's libtesseract uses OpenMP, which spawns threads
//! per page that fight the pool (measured 5.35 s/page instead of 0.49 s)
//! unless `OMP_THREAD_LIMIT=1` is set in the environment *before the library
//! loads*; see [`omp_thread_limit_ok`].

pub mod decode;
pub mod engine;
pub mod enhance;
pub mod pdf;
pub mod pool;
pub mod ppocr;
pub mod preprocess;
pub mod quality;
pub mod tesseract;
pub mod vision;

#[cfg(test)]
pub(crate) mod testpages;
#[cfg(test)]
mod tests;

pub use decode::{decode, sniff, DecodeLimits};
pub use engine::{OcrEngine, Orientation, Recognized, Vocabulary};
pub use pool::{tesseract_factory, EngineFactory, Engines, OcrPool, PageText, PoolConfig};
pub use preprocess::{EnhanceSteps, Prepared, PreprocessOptions, StepMode};
pub use quality::{cer, wer};
pub use tesseract::{PageSegMode, TesseractEngine};

/// Reads the text of one page image: the seam between the upload workflow and
/// whichever OCR backend is configured (the local pool, or a vision LLM).
#[async_trait::async_trait]
pub trait PageReader: Send + Sync {
    /// Decodes (with the safety caps) and reads one image.
    async fn read(&self, image_bytes: bytes::Bytes) -> Result<PageText, OcrError>;

    /// Like [`PageReader::read`], offering the words the page is likely to contain (see
    /// [`Vocabulary`]) to readers that can use them; the others just read.
    async fn read_with(
        &self,
        image_bytes: bytes::Bytes,
        _vocabulary: Option<std::sync::Arc<Vocabulary>>,
    ) -> Result<PageText, OcrError> {
        self.read(image_bytes).await
    }

    /// Whether [`PageReader::read_with`]'s vocabulary can change what is read, so memoised
    /// page texts must be keyed by it.
    fn uses_vocabulary(&self) -> bool {
        false
    }
}

#[async_trait::async_trait]
impl PageReader for OcrPool {
    async fn read(&self, image_bytes: bytes::Bytes) -> Result<PageText, OcrError> {
        self.recognize(image_bytes).await
    }

    async fn read_with(
        &self,
        image_bytes: bytes::Bytes,
        vocabulary: Option<std::sync::Arc<Vocabulary>>,
    ) -> Result<PageText, OcrError> {
        self.recognize_with(image_bytes, vocabulary).await
    }

    fn uses_vocabulary(&self) -> bool {
        OcrPool::uses_vocabulary(self)
    }
}

#[async_trait::async_trait]
impl PageReader for vision::VisionOcr {
    async fn read(&self, image_bytes: bytes::Bytes) -> Result<PageText, OcrError> {
        vision::VisionOcr::read(self, image_bytes).await
    }
}

/// Everything that can go wrong between image bytes and text. Serialisable, so the process
/// that renders a PDF can report its error to the service ([`pdf::isolated`]).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum OcrError {
    /// The bytes are not PNG, JPEG, TIFF, WebP, BMP or GIF (e.g. an HTML
    /// error page), or use a variant of those the decoder cannot read.
    #[error("unsupported image format (expected PNG, JPEG, TIFF, WebP, BMP or GIF)")]
    UnsupportedFormat,
    /// The image declares more pixels than allowed; refused from the header.
    #[error("image is {width}x{height} pixels, more than the limit of {max} pixels")]
    TooManyPixels { width: u32, height: u32, max: u64 },
    /// One side is longer than allowed; refused from the header.
    #[error("image is {width}x{height} pixels; sides are limited to {max_side} pixels")]
    SideTooLong {
        width: u32,
        height: u32,
        max_side: u32,
    },
    /// The image is truncated or malformed.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// The engine could not start (missing traineddata, bad language code).
    #[error("OCR engine could not start: {0}")]
    EngineInit(String),
    /// The engine failed on this page.
    #[error("OCR engine failed: {0}")]
    Engine(String),
    /// A remote OCR backend (the vision LLM) failed: HTTP errors, timeouts and invalid
    /// replies after its retries. The fault is upstream, and the message says which.
    #[error("{0}")]
    Backend(String),
    /// A remote OCR backend is failing and its circuit breaker is open: pages fail fast
    /// until `retry_in_secs` have passed.
    #[error("{detail}")]
    BackendUnavailable { detail: String, retry_in_secs: u64 },
    /// The engine panicked on this page; the pool replaced it.
    #[error("OCR engine panicked: {0}")]
    EnginePanicked(String),
    /// The engine gave up on the page at its time limit (Tesseract on a page of noise can
    /// otherwise spend minutes on it). Retrying the same bytes takes as long again.
    #[error(
        "reading the page took {engine} longer than its limit of {limit_secs} s \
         (ocr.tesseract_time_limit_secs); a sharper, evenly lit scan or photo reads faster"
    )]
    TimedOut { engine: String, limit_secs: f64 },
    /// A PDF that could not be parsed or rendered; the text says what was wrong.
    #[error("not a readable PDF: {0}")]
    UnreadablePdf(String),
    /// A PDF that needs a password to open.
    #[error("a password-protected PDF; upload it without the password, or as page images")]
    EncryptedPdf,
    /// A document with more pages than the upload has left (`limits.max_pages`).
    #[error(
        "has {pages} page(s), more than the {left} left of the upload's page limit \
         (limits.max_pages; every page of a PDF counts)"
    )]
    TooManyPages { pages: usize, left: usize },
    /// A PDF page so large that within `ocr.max_pixels` it would render under
    /// [`pdf::MIN_DPI`].
    #[error(
        "PDF page {page} is {width_in:.1} × {height_in:.1} in, too large to render at \
         a legible resolution (100 dpi) within ocr.max_pixels"
    )]
    PdfPageTooLarge {
        page: usize,
        width_in: f32,
        height_in: f32,
    },
    /// Rendering a PDF took longer than `ocr.pdf_time_limit_secs`.
    #[error(
        "rendering the PDF took longer than {limit_secs} s (ocr.pdf_time_limit_secs); \
         {pages_done} pages were done"
    )]
    PdfTimedOut { pages_done: usize, limit_secs: f64 },
    /// The pool's queue is full (from [`OcrPool::try_recognize`]); retry later.
    #[error("OCR queue is full")]
    Overloaded,
    /// The pool is shutting down or its workers are gone.
    #[error("OCR pool is shut down")]
    ShuttingDown,
}

impl OcrError {
    /// A short stable label, the `kind` of `examiner_ocr_errors_total`: the same for every
    /// engine, so one dashboard covers them all.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnsupportedFormat => "unsupported_format",
            Self::TooManyPixels { .. } | Self::SideTooLong { .. } => "too_large",
            Self::Corrupt(_) => "corrupt",
            Self::UnreadablePdf(_) => "unreadable_pdf",
            Self::EncryptedPdf => "encrypted_pdf",
            Self::TooManyPages { .. } => "too_many_pages",
            Self::PdfPageTooLarge { .. } => "too_large",
            Self::PdfTimedOut { .. } => "timed_out",
            Self::EngineInit(_) => "engine_init",
            Self::Engine(_) => "engine",
            Self::Backend(_) => "backend",
            Self::BackendUnavailable { .. } => "backend_unavailable",
            Self::EnginePanicked(_) => "engine_panic",
            Self::TimedOut { .. } => "timed_out",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// True when the image itself is at fault (the client should get a 4xx,
    /// and retrying the same bytes cannot help).
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Self::UnsupportedFormat
                | Self::TooManyPixels { .. }
                | Self::SideTooLong { .. }
                | Self::Corrupt(_)
                | Self::TimedOut { .. }
                | Self::UnreadablePdf(_)
                | Self::EncryptedPdf
                | Self::TooManyPages { .. }
                | Self::PdfPageTooLarge { .. }
                | Self::PdfTimedOut { .. }
        )
    }

    /// True when a remote backend is at fault: the caller gets a 502 or 503 that says
    /// what the backend did, and the same upload may succeed later.
    pub fn is_upstream(&self) -> bool {
        matches!(self, Self::Backend(_) | Self::BackendUnavailable { .. })
    }
}

/// True when `OMP_THREAD_LIMIT=1` is set in this process's environment.
///
/// Debian's libtesseract is built with OpenMP; without the limit every page
/// spawns one OpenMP thread per core, so N pool threads oversubscribe the CPU
/// N-fold (measured: 5.35 s/page instead of 0.49 s). libgomp reads the
/// variable once, when the library loads, so it must be set before the
/// process starts (the binary re-execs itself with it); setting it later
/// from Rust has no effect. [`OcrPool::new`] warns when this is false.
pub fn omp_thread_limit_ok() -> bool {
    std::env::var("OMP_THREAD_LIMIT").is_ok_and(|v| v.trim() == "1")
}
