//! The OCR engine abstraction. An engine turns one upright-or-not grayscale
//! page into text. Engines are stateful, not thread-safe and usually not
//! `Send` (Tesseract's handle is a raw pointer), so the pool creates each one
//! *inside* its worker thread and never moves it; the trait therefore does not
//! require `Send`. Tests substitute fake engines through the same trait.

use std::sync::Arc;

use image::GrayImage;
use sha2::{Digest, Sha256};

use super::OcrError;

/// Words a page is likely to contain: the question paper's questions and standard answers,
/// for an upload to a stored paper. Engines that correct words with a lexicon may use them as
/// extra lexicon words; they never add a word to a page (PP-OCR only chooses among spellings
/// of a word it read unsure, one for one).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vocabulary {
    words: Vec<String>,
}

impl Vocabulary {
    /// The distinct lower-case words (letters and inner apostrophes, two letters or more)
    /// of `texts`, sorted.
    pub fn from_texts<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut words: Vec<String> = texts
            .into_iter()
            .flat_map(|t| t.split(|c: char| !(c.is_alphabetic() || c == '\'')))
            .map(|w| w.trim_matches('\'').to_lowercase())
            .filter(|w| w.chars().count() >= 2)
            .collect();
        words.sort_unstable();
        words.dedup();
        Self { words }
    }

    pub fn words(&self) -> &[String] {
        &self.words
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// A short hash of the words, for cache keys (a different vocabulary may read differently).
    pub fn digest(&self) -> String {
        let mut hasher = Sha256::new();
        for w in &self.words {
            hasher.update(w.as_bytes());
            hasher.update(b"\n");
        }
        hex::encode(&hasher.finalize()[..8])
    }
}

/// Text recognised on one page.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recognized {
    /// UTF-8 text in reading order, lines separated by `\n`. Empty for a
    /// blank page.
    pub text: String,
    /// Mean word confidence in `0.0..=1.0`; 0.0 when no word was found.
    pub confidence: f32,
}

/// A page orientation found by an engine: how far the page content is
/// rotated, clockwise, from upright.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orientation {
    /// 0, 90, 180 or 270: the page must be turned this far *counter-clockwise*
    /// to be upright (equivalently: the text appears rotated this far
    /// clockwise).
    pub degrees: u16,
    /// Engine-specific confidence; for Tesseract OSD, the margin of the best
    /// orientation over the runner-up (values above ~2 are reliable).
    pub confidence: f32,
}

/// An OCR engine bound to the thread that created it.
pub trait OcrEngine {
    /// Short stable name, used as the `engine` metrics label and in
    /// [`super::PageText::engine`], e.g. `"tesseract:eng"`.
    fn name(&self) -> &str;

    /// Recognises the text of one page. `ppi` is the page's resolution in
    /// pixels per inch if known (after any scaling), which engines use to
    /// size layout heuristics.
    fn recognize(&mut self, page: &GrayImage, ppi: Option<u32>) -> Result<Recognized, OcrError>;

    /// Detects whether the page is rotated by a multiple of 90°. `Ok(None)`
    /// means "cannot tell" (too little text, or unsupported by the engine);
    /// the default implementation always says so.
    fn detect_orientation(
        &mut self,
        _page: &GrayImage,
        _ppi: Option<u32>,
    ) -> Result<Option<Orientation>, OcrError> {
        Ok(None)
    }

    /// Words the next pages are likely to contain (`None`: none known). Set before every
    /// page; engines without word correction ignore it.
    fn set_vocabulary(&mut self, _words: Option<Arc<Vocabulary>>) {}
}

impl<E: OcrEngine + ?Sized> OcrEngine for Box<E> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn recognize(&mut self, page: &GrayImage, ppi: Option<u32>) -> Result<Recognized, OcrError> {
        (**self).recognize(page, ppi)
    }
    fn detect_orientation(
        &mut self,
        page: &GrayImage,
        ppi: Option<u32>,
    ) -> Result<Option<Orientation>, OcrError> {
        (**self).detect_orientation(page, ppi)
    }
    fn set_vocabulary(&mut self, words: Option<Arc<Vocabulary>>) {
        (**self).set_vocabulary(words)
    }
}
