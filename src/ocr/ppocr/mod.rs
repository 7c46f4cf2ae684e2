//! PP-OCRv5 (PaddleOCR, mobile det + rec, optional cls) run through ONNX
//! Runtime via the `ort` crate: the second local OCR engine, much better
//! than Tesseract on handwriting (see OCR.md for the measurements).
//!
//! Owns: locating the model files and the ONNX Runtime library, one ONNX
//! session per model per engine (single-threaded: the pool runs one engine
//! per thread, and two single-threaded workers beat one two-threaded one),
//! and the page pipeline: detection ([`det`]) → reading order and line
//! assembly ([`order`]) → rotated crops narrowed to the line body and
//! height-normalised ([`rec`]) → optional 180° line classifier ([`cls`]) →
//! batched recognition → greedy CTC decoding → word correction with a
//! lexicon ([`lexicon`], only when its file is present).
//!
//! Promises: [`PpOcrEngine::new`] fails with [`OcrError::EngineInit`] naming
//! the missing file and the script that fetches it; recognition never
//! panics on any image (errors from the runtime become [`OcrError::Engine`]);
//! lines come top to bottom (columns left to right), joined with `\n`;
//! [`Recognized::confidence`] is the mean line confidence in `0..=1`, and
//! per-line text, confidence and boxes of the last page stay available
//! through [`PpOcrEngine::lines`].
//!
//! Runtime discovery: the ONNX Runtime shared library is loaded once per
//! process, from the first of: the `ort_dylib` argument, `$ORT_DYLIB_PATH`,
//! `MODELS_DIR/onnxruntime/libonnxruntime.so*` (what
//! `scripts/fetch-ocr-models.sh` installs). Later engines reuse it.

pub mod cls;
pub mod det;
pub mod lexicon;
pub mod order;
pub mod rec;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use image::GrayImage;
use ort::session::Session;
use ort::value::Tensor;

use self::det::{DbParams, RotRect};
use self::lexicon::{CorrectionParams, LetterClasses, Lexicon};
use self::rec::{Charset, REC_HEIGHT};
use super::{OcrEngine, OcrError, Recognized};

/// File names inside `MODELS_DIR/ppocr/`.
pub const DET_MODEL: &str = "ppocrv5_det.onnx";
pub const REC_MODEL: &str = "ppocrv5_rec.onnx";
pub const CLS_MODEL: &str = "ppocrv5_cls.onnx";
pub const KEYS_FILE: &str = "ppocr_keys_v5.txt";
/// Lexicon file inside `MODELS_DIR/lexicon/`.
pub const LEXICON_FILE: &str = "en_wordfreq.tsv";

const FETCH_HINT: &str = "run scripts/fetch-ocr-models.sh MODELS_DIR";

/// Pipeline settings. The defaults are the best measured on the handwriting
/// dev set (OCR.md has the table).
#[derive(Debug, Clone, PartialEq)]
pub struct PpOcrOptions {
    /// Longer side of the detector's input, in pixels (multiple of 32).
    pub det_limit: u32,
    pub db: DbParams,
    /// Keep this many times the height of a line's main body around it
    /// before scaling to 48 px (see [`rec::body_band`]); `None` keeps the
    /// detector's whole box.
    pub body_band: Option<f32>,
    /// Rows with at least this fraction of the densest row's ink are body.
    pub body_frac: f32,
    /// Merge boxes of one line whose gap is below this many line heights
    /// into one crop before recognition; `None` recognises each box alone.
    pub merge_gap: Option<f32>,
    /// Run the 180° line classifier (needs `ppocrv5_cls.onnx`).
    pub use_cls: bool,
    /// Crops per recognition batch (crops of similar width are batched).
    pub rec_batch: usize,
    /// Widest recognition input, pixels at height 48.
    pub max_rec_width: u32,
    /// Correct unsure words with the lexicon when its file exists.
    pub use_lexicon: bool,
    /// Attach stand-alone closing punctuation to the word before it
    /// ("chaos ." → "chaos."): writers leave a gap before a full stop that
    /// the recogniser turns into a space, which English text does not have.
    pub attach_punctuation: bool,
    pub correction: CorrectionParams,
    /// Pages read with a confidence under this are read again turned by 180°, 90° and 270°,
    /// and the most confident reading is kept. Measured on the handwriting dev set: upright
    /// pages read at 0.91-1.00; turned by 90° at 0.00-0.17, by 180° at 0.48-0.77 (OCR.md).
    /// 0 turns this off.
    pub turn_below: f32,
    /// A turned reading replaces the upright one only when it is this much more confident.
    pub turn_margin: f32,
}

impl Default for PpOcrOptions {
    fn default() -> Self {
        Self {
            det_limit: 960,
            db: DbParams::default(),
            body_band: Some(3.0),
            body_frac: 0.35,
            merge_gap: Some(2.0),
            use_cls: false,
            rec_batch: 1,
            max_rec_width: 3072,
            use_lexicon: true,
            attach_punctuation: true,
            correction: CorrectionParams::default(),
            turn_below: 0.85,
            turn_margin: 0.05,
        }
    }
}

/// One recognised line.
#[derive(Debug, Clone, PartialEq)]
pub struct PpLine {
    /// Text after word correction.
    pub text: String,
    /// Text as decoded, before word correction.
    pub raw_text: String,
    /// Mean probability of the decoded characters, `0..=1`.
    pub confidence: f32,
    /// The recognised boxes of the line (page pixels), left to right.
    pub boxes: Vec<RotRect>,
    /// Words replaced by lexicon correction.
    pub corrected_words: usize,
}

/// Time spent per stage on the last page, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PpTimings {
    pub det_ms: f64,
    pub crop_ms: f64,
    pub cls_ms: f64,
    pub rec_ms: f64,
    pub post_ms: f64,
}

/// The PP-OCRv5 engine. One per worker thread.
pub struct PpOcrEngine {
    det: Session,
    rec: Session,
    cls: Option<Session>,
    charset: Charset,
    letters: LetterClasses,
    lexicon: Option<Arc<Lexicon>>,
    /// The question paper's words for the pages being read, and the lexicon made of them.
    paper: Option<(Arc<super::Vocabulary>, Lexicon)>,
    opts: PpOcrOptions,
    lines: Vec<PpLine>,
    timings: PpTimings,
}

/// Where the model files are: `dir/ppocr/` when it exists there, else `dir`.
pub fn model_dir(models_dir: &Path) -> PathBuf {
    let sub = models_dir.join("ppocr");
    if sub.join(DET_MODEL).is_file() {
        sub
    } else {
        models_dir.to_path_buf()
    }
}

/// The ONNX Runtime library to load: `explicit`, else `$ORT_DYLIB_PATH`,
/// else the newest `libonnxruntime.so*` in `MODELS_DIR/onnxruntime/`.
pub fn find_ort_dylib(models_dir: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let dir = models_dir.join("onnxruntime");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
        })
        .collect();
    found.sort();
    found.pop()
}

static RUNTIME: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Loads ONNX Runtime from `path` once per process. Later calls succeed
/// without reloading (the first library loaded stays in use).
pub fn init_runtime(path: &Path) -> Result<(), OcrError> {
    let mut loaded = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if loaded.is_some() {
        return Ok(());
    }
    if !path.is_file() {
        return Err(OcrError::EngineInit(format!(
            "ONNX Runtime library {} not found ({FETCH_HINT}, or set ORT_DYLIB_PATH)",
            path.display()
        )));
    }
    // `ort` resolves relative paths against the executable's directory;
    // make it absolute so the path we checked is the path it loads.
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let builder = ort::init_from(&abs).map_err(|e| {
        OcrError::EngineInit(format!(
            "cannot load ONNX Runtime from {}: {e}",
            abs.display()
        ))
    })?;
    // `false` only means an environment existed already; it is still usable.
    let _ = builder.with_name("examiner-ppocr").commit();
    *loaded = Some(abs);
    Ok(())
}

fn session(path: &Path) -> Result<Session, OcrError> {
    if !path.is_file() {
        return Err(OcrError::EngineInit(format!(
            "PP-OCR model {} not found ({FETCH_HINT})",
            path.display()
        )));
    }
    let err = |e: String| OcrError::EngineInit(format!("cannot load {}: {e}", path.display()));
    Session::builder()
        .map_err(|e| err(e.to_string()))?
        .with_intra_threads(1)
        .map_err(|e| err(e.to_string()))?
        .with_inter_threads(1)
        .map_err(|e| err(e.to_string()))?
        // Spinning threads would burn the core the other worker needs.
        .with_intra_op_spinning(false)
        .map_err(|e| err(e.to_string()))?
        .with_log_level(ort::logging::LogLevel::Error)
        .map_err(|e| err(e.to_string()))?
        .commit_from_file(path)
        .map_err(|e| err(e.to_string()))
}

static LEXICONS: Mutex<Vec<(PathBuf, u16, Arc<Lexicon>)>> = Mutex::new(Vec::new());

/// Loads (once per process and path) the lexicon engines share.
fn shared_lexicon(path: &Path, max_cb: u16) -> Result<Arc<Lexicon>, OcrError> {
    let mut cache = LEXICONS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, lex)) = cache.iter().find(|(p, cb, _)| p == path && *cb == max_cb) {
        return Ok(Arc::clone(lex));
    }
    let lex = Arc::new(Lexicon::load(path, max_cb).map_err(OcrError::EngineInit)?);
    cache.push((path.to_path_buf(), max_cb, Arc::clone(&lex)));
    Ok(lex)
}

impl PpOcrEngine {
    /// Creates an engine with [`PpOcrOptions::default`]. `models_dir` holds
    /// `ppocr/` (models and keys), optionally `lexicon/` and `onnxruntime/`;
    /// `ort_dylib` overrides where ONNX Runtime is loaded from.
    pub fn new(models_dir: &Path, ort_dylib: Option<&Path>) -> Result<Self, OcrError> {
        Self::with_options(models_dir, ort_dylib, PpOcrOptions::default())
    }

    /// Creates an engine with explicit options.
    pub fn with_options(
        models_dir: &Path,
        ort_dylib: Option<&Path>,
        opts: PpOcrOptions,
    ) -> Result<Self, OcrError> {
        let dir = model_dir(models_dir);
        let keys_path = dir.join(KEYS_FILE);
        let keys = std::fs::read_to_string(&keys_path).map_err(|e| {
            OcrError::EngineInit(format!(
                "cannot read {}: {e} ({FETCH_HINT})",
                keys_path.display()
            ))
        })?;
        let charset = Charset::from_keys(&keys);
        if charset.len() < 3 {
            return Err(OcrError::EngineInit(format!(
                "{} holds no character classes",
                keys_path.display()
            )));
        }
        for f in [DET_MODEL, REC_MODEL] {
            if !dir.join(f).is_file() {
                return Err(OcrError::EngineInit(format!(
                    "PP-OCR model {} not found ({FETCH_HINT})",
                    dir.join(f).display()
                )));
            }
        }
        let dylib = find_ort_dylib(models_dir, ort_dylib).ok_or_else(|| {
            OcrError::EngineInit(format!(
                "ONNX Runtime library not found in {} ({FETCH_HINT}, or set ORT_DYLIB_PATH)",
                models_dir.join("onnxruntime").display()
            ))
        })?;
        init_runtime(&dylib)?;
        let det = session(&dir.join(DET_MODEL))?;
        let rec = session(&dir.join(REC_MODEL))?;
        let cls = if opts.use_cls {
            Some(session(&dir.join(CLS_MODEL))?)
        } else {
            None
        };
        let lexicon_path = models_dir.join("lexicon").join(LEXICON_FILE);
        let lexicon = if opts.use_lexicon && lexicon_path.is_file() {
            Some(shared_lexicon(&lexicon_path, opts.correction.max_cb)?)
        } else {
            None
        };
        let letters = LetterClasses::new(&charset);
        Ok(Self {
            det,
            rec,
            cls,
            charset,
            letters,
            lexicon,
            paper: None,
            opts,
            lines: Vec::new(),
            timings: PpTimings::default(),
        })
    }

    /// Lines of the last page read (empty before the first page or after an
    /// error).
    pub fn lines(&self) -> &[PpLine] {
        &self.lines
    }

    /// Stage timings of the last page.
    pub fn timings(&self) -> PpTimings {
        self.timings
    }

    /// True when word correction is active (lexicon found and enabled).
    pub fn has_lexicon(&self) -> bool {
        self.lexicon.is_some()
    }

    pub fn options(&self) -> &PpOcrOptions {
        &self.opts
    }

    /// Reads one page into lines (also kept for [`Self::lines`]).
    pub fn read_page(&mut self, page: &GrayImage) -> Result<Vec<PpLine>, OcrError> {
        self.lines.clear();
        self.timings = PpTimings::default();
        if page.width() < 4 || page.height() < 4 {
            return Ok(Vec::new());
        }
        let t = Instant::now();
        let rects = self.detect(page)?;
        self.timings.det_ms = ms(t);

        let t = Instant::now();
        let mut units: Vec<(usize, RotRect)> = Vec::new(); // (line, rect)
        let line_order = order::reading_order(&rects);
        for (li, line) in line_order.iter().enumerate() {
            match self.opts.merge_gap {
                Some(gap) => {
                    for r in order::merge_line(&rects, line, gap) {
                        units.push((li, r));
                    }
                }
                None => units.extend(line.iter().filter_map(|&i| rects.get(i).map(|r| (li, *r)))),
            }
        }
        let mut crops: Vec<GrayImage> = units
            .iter()
            .map(|(_, r)| {
                let crop = rec::crop_rotated(page, r);
                match self
                    .opts
                    .body_band
                    .and_then(|f| rec::body_band(&crop, f, self.opts.body_frac))
                {
                    Some((top, bottom)) => {
                        image::imageops::crop_imm(&crop, 0, top, crop.width(), bottom - top)
                            .to_image()
                    }
                    None => crop,
                }
            })
            .collect();
        self.timings.crop_ms = ms(t);

        if self.cls.is_some() {
            let t = Instant::now();
            self.classify(&mut crops)?;
            self.timings.cls_ms = ms(t);
        }

        let t = Instant::now();
        let decoded = self.recognize_crops(&crops)?;
        self.timings.rec_ms = ms(t);

        let t = Instant::now();
        let mut lines: Vec<PpLine> = Vec::new();
        let mut current: Option<usize> = None;
        for ((li, rect), (text, raw, conf, fixed)) in units.iter().zip(decoded) {
            if text.trim().is_empty() {
                continue;
            }
            if current != Some(*li) {
                lines.push(PpLine {
                    text: String::new(),
                    raw_text: String::new(),
                    confidence: 0.0,
                    boxes: Vec::new(),
                    corrected_words: 0,
                });
                current = Some(*li);
            }
            if let Some(line) = lines.last_mut() {
                if !line.text.is_empty() {
                    line.text.push(' ');
                    line.raw_text.push(' ');
                }
                line.text.push_str(&text);
                line.raw_text.push_str(&raw);
                // Weighted by characters so a stray one-letter box does not
                // count as much as a long line.
                let n = raw.chars().count().max(1) as f32;
                line.confidence += conf * n;
                line.boxes.push(*rect);
                line.corrected_words += fixed;
            }
        }
        for line in &mut lines {
            if self.opts.attach_punctuation {
                line.text = attach_punctuation(&line.text);
            }
            let n = line
                .raw_text
                .chars()
                .filter(|c| !c.is_whitespace())
                .count()
                .max(1) as f32;
            line.confidence = (line.confidence / n).clamp(0.0, 1.0);
        }
        self.timings.post_ms = ms(t);
        self.lines = lines.clone();
        Ok(lines)
    }

    /// Runs the detector and returns text boxes in page coordinates.
    fn detect(&mut self, page: &GrayImage) -> Result<Vec<RotRect>, OcrError> {
        let (w, h) = det::det_input_size(page.width(), page.height(), self.opts.det_limit);
        let input = det::det_tensor(page, (w, h));
        let tensor = Tensor::from_array(([1usize, 3, h as usize, w as usize], input))
            .map_err(|e| OcrError::Engine(format!("det input: {e}")))?;
        let outputs = self
            .det
            .run(ort::inputs![tensor])
            .map_err(|e| OcrError::Engine(format!("det: {e}")))?;
        let (shape, prob) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| OcrError::Engine(format!("det output: {e}")))?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        let (mh, mw) = match dims.as_slice() {
            [_, _, mh, mw] | [_, mh, mw] => (*mh as usize, *mw as usize),
            _ => return Err(OcrError::Engine(format!("det output shape {dims:?}"))),
        };
        let sx = page.width() as f32 / mw.max(1) as f32;
        let sy = page.height() as f32 / mh.max(1) as f32;
        let plane = mh.saturating_mul(mw);
        let prob = prob.get(..plane).unwrap_or(&[]);
        Ok(det::boxes_from_prob(prob, mw, mh, &self.opts.db, sx, sy)
            .into_iter()
            .map(|b| b.rect)
            .collect())
    }

    /// Turns crops the classifier finds upside down.
    fn classify(&mut self, crops: &mut [GrayImage]) -> Result<(), OcrError> {
        let Some(cls) = self.cls.as_mut() else {
            return Ok(());
        };
        let plane = (cls::CLS_HEIGHT * cls::CLS_WIDTH) as usize;
        const BATCH: usize = 8;
        for chunk in crops.chunks_mut(BATCH) {
            let mut input = vec![0f32; chunk.len() * 3 * plane];
            for (crop, dst) in chunk.iter().zip(input.chunks_exact_mut(3 * plane)) {
                cls::write_cls_input(crop, dst);
            }
            let shape = [
                chunk.len(),
                3,
                cls::CLS_HEIGHT as usize,
                cls::CLS_WIDTH as usize,
            ];
            let tensor = Tensor::from_array((shape, input))
                .map_err(|e| OcrError::Engine(format!("cls input: {e}")))?;
            let outputs = cls
                .run(ort::inputs![tensor])
                .map_err(|e| OcrError::Engine(format!("cls: {e}")))?;
            let (_, probs) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| OcrError::Engine(format!("cls output: {e}")))?;
            for (crop, p) in chunk.iter_mut().zip(probs.chunks_exact(2)) {
                if cls::is_upside_down(p, 0.9) {
                    image::imageops::rotate180_in_place(crop);
                }
            }
        }
        Ok(())
    }

    /// Recognises crops; per crop: (corrected text, raw text, confidence,
    /// words corrected).
    fn recognize_crops(
        &mut self,
        crops: &[GrayImage],
    ) -> Result<Vec<(String, String, f32, usize)>, OcrError> {
        let mut out = vec![(String::new(), String::new(), 0.0, 0); crops.len()];
        let widths: Vec<u32> = crops
            .iter()
            .map(|c| rec::rec_width(c, self.opts.max_rec_width))
            .collect();
        let mut idx: Vec<usize> = (0..crops.len()).collect();
        idx.sort_by_key(|&i| widths[i]);
        let classes_expected = self.charset.len();
        for batch in idx.chunks(self.opts.rec_batch.max(1)) {
            let stride = batch.iter().map(|&i| widths[i]).max().unwrap_or(8) as usize;
            let plane = REC_HEIGHT as usize * stride;
            // Pad with white (1.0 after normalisation): the page colour.
            let mut input = vec![1f32; batch.len() * 3 * plane];
            for (&i, dst) in batch.iter().zip(input.chunks_exact_mut(3 * plane)) {
                rec::write_rec_input(&crops[i], widths[i], stride, dst);
            }
            let tensor = Tensor::from_array(([batch.len(), 3, REC_HEIGHT as usize, stride], input))
                .map_err(|e| OcrError::Engine(format!("rec input: {e}")))?;
            let outputs = self
                .rec
                .run(ort::inputs![tensor])
                .map_err(|e| OcrError::Engine(format!("rec: {e}")))?;
            let (shape, probs) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| OcrError::Engine(format!("rec output: {e}")))?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            let [n, frames, classes] = dims.as_slice() else {
                return Err(OcrError::Engine(format!("rec output shape {dims:?}")));
            };
            let (n, frames, classes) = (*n as usize, *frames as usize, *classes as usize);
            if classes != classes_expected || n != batch.len() {
                return Err(OcrError::Engine(format!(
                    "rec output has {classes} classes for {n} crops; the keys file has \
                     {classes_expected} classes for {} crops (model and {KEYS_FILE} do not match)",
                    batch.len()
                )));
            }
            let per = frames * classes;
            for (k, &i) in batch.iter().enumerate() {
                let Some(p) = probs.get(k * per..(k + 1) * per) else {
                    continue;
                };
                let d = rec::ctc_greedy(p, frames, classes, &self.charset);
                let (text, fixed) = match &self.lexicon {
                    Some(lex) => lexicon::correct_line(
                        &d,
                        p,
                        frames,
                        classes,
                        &self.charset,
                        &self.letters,
                        lex,
                        self.paper.as_ref().map(|(_, paper)| paper),
                        &self.opts.correction,
                    ),
                    None => (d.text.clone(), 0),
                };
                out[i] = (text, d.text, d.confidence, fixed);
            }
        }
        Ok(out)
    }
}

/// Removes the space before a token made only of closing punctuation
/// (`. , ; : ! ? )`), so "chaos ." becomes "chaos.". Never removes or adds
/// any other character.
pub fn attach_punctuation(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for (k, tok) in line.split(' ').enumerate() {
        let closing = !tok.is_empty() && tok.chars().all(|c| ".,;:!?)".contains(c));
        // A closing token joins the previous one; anything else keeps its space.
        if k > 0 && (!closing || out.is_empty()) {
            out.push(' ');
        }
        out.push_str(tok);
    }
    out
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// Makes [`PpOcrEngine`]s with the default options for a pool: one engine,
/// with its own single-threaded ONNX sessions, per worker thread.
pub fn ppocr_factory(models_dir: PathBuf, ort_dylib: Option<PathBuf>) -> super::EngineFactory {
    Arc::new(move || {
        let engine = PpOcrEngine::new(&models_dir, ort_dylib.as_deref())?;
        Ok(Box::new(engine) as Box<dyn OcrEngine>)
    })
}

/// Checks, without loading anything, that the files an engine needs are
/// where [`PpOcrEngine::new`] will look, so a misconfigured service fails (or
/// warns) at start instead of on the first handwritten page.
pub fn check_files(models_dir: &Path, ort_dylib: Option<&Path>) -> Result<(), OcrError> {
    let dir = model_dir(models_dir);
    for f in [DET_MODEL, REC_MODEL, KEYS_FILE] {
        if !dir.join(f).is_file() {
            return Err(OcrError::EngineInit(format!(
                "PP-OCR file {} not found ({FETCH_HINT})",
                dir.join(f).display()
            )));
        }
    }
    match find_ort_dylib(models_dir, ort_dylib) {
        Some(p) if p.is_file() => Ok(()),
        Some(p) => Err(OcrError::EngineInit(format!(
            "ONNX Runtime library {} not found ({FETCH_HINT}, or set ORT_DYLIB_PATH)",
            p.display()
        ))),
        None => Err(OcrError::EngineInit(format!(
            "ONNX Runtime library not found in {} ({FETCH_HINT}, or set ORT_DYLIB_PATH)",
            models_dir.join("onnxruntime").display()
        ))),
    }
}

impl OcrEngine for PpOcrEngine {
    fn name(&self) -> &str {
        "ppocr"
    }

    fn set_vocabulary(&mut self, words: Option<Arc<super::Vocabulary>>) {
        let same = match (&self.paper, &words) {
            (Some((current, _)), Some(new)) => Arc::ptr_eq(current, new) || **current == **new,
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        let cb = self.opts.correction.paper_cb;
        self.paper = words.filter(|w| !w.is_empty()).map(|w| {
            let lexicon = Lexicon::from_entries(w.words().iter().map(|s| (s.as_str(), cb)), cb);
            (w, lexicon)
        });
    }

    fn recognize(&mut self, page: &GrayImage, _ppi: Option<u32>) -> Result<Recognized, OcrError> {
        let upright = self.read_whole(page)?;
        if upright.confidence >= self.opts.turn_below {
            return Ok(upright);
        }
        // A turned page reads with low confidence (or not at all), so the quarter turns are
        // tried and the clearly most confident reading wins. Upright pages pay nothing.
        let upright_lines = self.lines.clone();
        let mut best: Option<(Recognized, Vec<PpLine>)> = None;
        for turned in [
            image::imageops::rotate180(page),
            image::imageops::rotate90(page),
            image::imageops::rotate270(page),
        ] {
            let reading = self.read_whole(&turned)?;
            let clearer = reading.confidence > upright.confidence + self.opts.turn_margin;
            if clearer
                && best
                    .as_ref()
                    .is_none_or(|(b, _)| reading.confidence > b.confidence)
            {
                best = Some((reading, self.lines.clone()));
            }
        }
        match best {
            Some((reading, lines)) => {
                self.lines = lines;
                Ok(reading)
            }
            None => {
                self.lines = upright_lines;
                Ok(upright)
            }
        }
    }
}

impl PpOcrEngine {
    /// Reads `page` as it is: lines joined with `\n`, confidence the mean line confidence.
    fn read_whole(&mut self, page: &GrayImage) -> Result<Recognized, OcrError> {
        let lines = self.read_page(page)?;
        let confidence = if lines.is_empty() {
            0.0
        } else {
            lines.iter().map(|l| l.confidence).sum::<f32>() / lines.len() as f32
        };
        let text = lines
            .iter()
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        Ok(Recognized { text, confidence })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod unit_tests {
    #[test]
    fn attach_punctuation_only_moves_spaces() {
        use super::attach_punctuation as a;
        assert_eq!(a("chaos , like the Congo ."), "chaos, like the Congo.");
        assert_eq!(a("fastest ? That"), "fastest? That");
        assert_eq!(a(". starts"), ". starts");
        assert_eq!(a("a - b"), "a - b");
        assert_eq!(a("it's (so) ."), "it's (so).");
        assert_eq!(a(""), "");
    }
}
