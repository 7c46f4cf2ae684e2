//! The OCR worker pool: N OS threads, each owning one engine created inside
//! it, fed by one bounded queue. Owns the page pipeline (decode → preprocess
//! → OCR, and for poorly read pages: orientation check → turn → OCR again),
//! which runs entirely on pool threads so async callers never block the
//! executor. Promises: at most `queue_capacity` pages wait;
//! [`OcrPool::recognize`] waits for room, [`OcrPool::try_recognize`] fails
//! fast with [`OcrError::Overloaded`]; a panic while handling a page becomes
//! an error reply (and a panicking engine is replaced), never a dead worker;
//! work runs inside the caller's `tracing` span; dropping the pool closes the
//! queue and the workers exit after their current page (joined when dropped
//! outside an async runtime, detached inside one so the executor never
//! blocks); pages still queued then get [`OcrError::ShuttingDown`].
//!
//! `catch_unwind` covers Rust panics (decoder, preprocessing, engine
//! wrappers); a C++ abort inside libtesseract still ends the process.
//!
//! Metrics: `examiner_ocr_pages_total{engine}` (counter),
//! `examiner_ocr_seconds{engine}` (histogram of worker time per page),
//! `examiner_ocr_queue_depth` (gauge), `examiner_ocr_errors_total{kind}`,
//! `examiner_ocr_engine_restarts_total`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tracing::Span;

use super::decode::{decode, DecodeLimits};
use super::engine::{OcrEngine, Vocabulary};
use super::preprocess::{prepare, rotate_upright, PreprocessOptions};
use super::tesseract::TesseractEngine;
use super::{omp_thread_limit_ok, OcrError};

/// Creates one engine; called on each worker thread (and again after a panic).
pub type EngineFactory = Arc<dyn Fn() -> Result<Box<dyn OcrEngine>, OcrError> + Send + Sync>;

/// Pool settings. `0` means "default" for the two sizes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// Worker threads (one engine each). Default: available cores.
    pub threads: usize,
    /// Pages allowed to wait for a worker. Default: 4 × threads.
    pub queue_capacity: usize,
    pub decode: DecodeLimits,
    pub preprocess: PreprocessOptions,
    /// With a fallback engine ([`OcrPool::with_fallback`]): pages the primary
    /// engine reads with a confidence below this (after any turn) are read
    /// again by the fallback engine, whose text is used. 0 never falls back.
    pub fallback_below: f32,
    /// Whether an engine of the pool corrects words against the vocabulary offered with a
    /// page (PP-OCR does, Tesseract does not). Callers that memoise page texts key them by
    /// the vocabulary only when it can change what is read.
    pub uses_vocabulary: bool,
}

/// The primary engine of a pool and, optionally, the engine that reads the
/// pages the primary one reads poorly (Tesseract, then PP-OCR for
/// handwriting). The fallback engine is created on a worker the first time
/// that worker needs it, so printed-only workloads never pay for it.
#[derive(Clone)]
pub struct Engines {
    pub primary: EngineFactory,
    pub fallback: Option<EngineFactory>,
}

/// The result for one page.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PageText {
    pub text: String,
    /// Mean word confidence, 0..=1.
    pub confidence: f32,
    /// Engine name, e.g. `"tesseract:eng"`.
    pub engine: String,
    /// Decoded image size (after EXIF orientation, before preprocessing).
    pub width: u32,
    pub height: u32,
    pub decode_ms: f64,
    /// Grayscale, rescale and rotation.
    pub preprocess_ms: f64,
    /// Time inside the engine (recognition, plus orientation detection and a
    /// second recognition for pages that needed turning).
    pub ocr_ms: f64,
    /// Quarter turns undone before recognition, in degrees (0 if upright).
    pub rotated_degrees: u16,
    /// Scale factor applied to the page before recognition.
    pub scale: f32,
}

type Reply = oneshot::Sender<Result<PageText, OcrError>>;

struct Job {
    bytes: Bytes,
    span: Span,
    vocabulary: Option<Arc<Vocabulary>>,
    reply: Reply,
}

struct Shared {
    depth: AtomicUsize,
    shutdown: AtomicBool,
}

/// A bounded pool of OCR worker threads. Cheap to share behind an `Arc`.
pub struct OcrPool {
    tx: Option<mpsc::Sender<Job>>,
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    capacity: usize,
    uses_vocabulary: bool,
}

impl OcrPool {
    /// Starts the workers and waits until every one has created its engine,
    /// so a missing language pack fails here, at startup, not on the first
    /// page. Blocks for engine start-up (~0.2 s per Tesseract engine, created
    /// one at a time): call it at startup or from `spawn_blocking`.
    pub fn new(config: PoolConfig, factory: EngineFactory) -> Result<Self, OcrError> {
        Self::with_fallback(
            config,
            Engines {
                primary: factory,
                fallback: None,
            },
        )
    }

    /// Like [`OcrPool::new`], with a fallback engine for pages the primary
    /// engine reads with confidence below `config.fallback_below`. Only the
    /// primary engines are created (and checked) here.
    pub fn with_fallback(config: PoolConfig, engines: Engines) -> Result<Self, OcrError> {
        let fallback_failed = Arc::new(AtomicBool::new(false));
        if !omp_thread_limit_ok() {
            tracing::warn!(
                "OMP_THREAD_LIMIT is not 1: libtesseract's OpenMP threads will oversubscribe \
                 the CPU (measured 7-11x slower per page); start the process with OMP_THREAD_LIMIT=1"
            );
        }
        let threads = if config.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.threads
        };
        let capacity = if config.queue_capacity == 0 {
            threads * 4
        } else {
            config.queue_capacity
        };
        let (tx, rx) = mpsc::channel::<Job>(capacity);
        let rx = Arc::new(Mutex::new(rx));
        let shared = Arc::new(Shared {
            depth: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let uses_vocabulary = config.uses_vocabulary;
        let config = Arc::new(config);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<String, OcrError>>();

        let mut workers = Vec::with_capacity(threads);
        for i in 0..threads {
            let worker = Worker {
                rx: Arc::clone(&rx),
                shared: Arc::clone(&shared),
                config: Arc::clone(&config),
                factory: Arc::clone(&engines.primary),
                fallback_factory: engines.fallback.clone(),
                fallback_failed: Arc::clone(&fallback_failed),
            };
            let ready = ready_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ocr-{i}"))
                .spawn(move || worker.run(ready));
            match spawned {
                Ok(handle) => workers.push(handle),
                Err(e) => {
                    drop(tx);
                    join_all(workers);
                    return Err(OcrError::EngineInit(format!(
                        "cannot spawn OCR thread: {e}"
                    )));
                }
            }
        }
        drop(ready_tx);

        let mut engine_name = String::new();
        let mut failure = None;
        for _ in 0..threads {
            match ready_rx.recv() {
                Ok(Ok(name)) => engine_name = name,
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => {
                    failure = failure.or(Some(OcrError::EngineInit("OCR thread died".into())))
                }
            }
        }
        if let Some(e) = failure {
            shared.shutdown.store(true, Ordering::SeqCst);
            drop(tx);
            join_all(workers);
            return Err(e);
        }
        metrics::gauge!("examiner_ocr_queue_depth").set(0.0);
        tracing::info!(threads, capacity, engine = %engine_name, "OCR pool started");
        Ok(Self {
            tx: Some(tx),
            shared,
            workers,
            threads,
            capacity,
            uses_vocabulary,
        })
    }

    /// See [`PoolConfig::uses_vocabulary`].
    pub fn uses_vocabulary(&self) -> bool {
        self.uses_vocabulary
    }

    /// A pool of [`TesseractEngine`]s for `languages` (e.g. `"eng"`), with
    /// orientation detection when `config.preprocess.fix_orientation` and
    /// `osd.traineddata` is installed (otherwise a warning, and rotated pages
    /// are read as they are).
    pub fn tesseract(
        config: PoolConfig,
        languages: &str,
        datapath: Option<PathBuf>,
    ) -> Result<Self, OcrError> {
        let factory = tesseract_factory(
            languages,
            datapath,
            config.preprocess.fix_orientation,
            Some(super::tesseract::DEFAULT_TIME_LIMIT),
        );
        Self::new(config, factory)
    }

    /// OCRs one image, waiting for queue space if the pool is busy.
    pub async fn recognize(&self, image_bytes: Bytes) -> Result<PageText, OcrError> {
        self.recognize_in(image_bytes, Span::current(), true, None)
            .await
    }

    /// [`OcrPool::recognize`] with the words the page is likely to contain, offered to the
    /// engines for word correction (see [`Vocabulary`]).
    pub async fn recognize_with(
        &self,
        image_bytes: Bytes,
        vocabulary: Option<Arc<Vocabulary>>,
    ) -> Result<PageText, OcrError> {
        self.recognize_in(image_bytes, Span::current(), true, vocabulary)
            .await
    }

    /// OCRs one image, failing at once with [`OcrError::Overloaded`] when
    /// the queue is full instead of waiting for room (for request paths that
    /// should shed load with a 503).
    pub async fn try_recognize(&self, image_bytes: Bytes) -> Result<PageText, OcrError> {
        self.recognize_in(image_bytes, Span::current(), false, None)
            .await
    }

    /// Queues a page to be processed inside `span` (the caller's, so worker
    /// logs stay attributed to the request).
    pub(super) async fn recognize_in(
        &self,
        bytes: Bytes,
        span: Span,
        wait_for_room: bool,
        vocabulary: Option<Arc<Vocabulary>>,
    ) -> Result<PageText, OcrError> {
        let tx = self.tx.as_ref().ok_or(OcrError::ShuttingDown)?;
        let permit = if wait_for_room {
            tx.reserve().await.map_err(|_| OcrError::ShuttingDown)?
        } else {
            tx.try_reserve().map_err(|e| match e {
                mpsc::error::TrySendError::Full(()) => {
                    metrics::counter!("examiner_ocr_errors_total", "kind" => "overloaded")
                        .increment(1);
                    OcrError::Overloaded
                }
                mpsc::error::TrySendError::Closed(()) => OcrError::ShuttingDown,
            })?
        };
        let (reply, answer) = oneshot::channel();
        // Count before sending: a worker can only dequeue (and decrement)
        // after `send`, so the counter never underflows.
        let depth = self.shared.depth.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::gauge!("examiner_ocr_queue_depth").set(depth as f64);
        permit.send(Job {
            bytes,
            span,
            vocabulary,
            reply,
        });
        // Dropped sender = worker gone or pool shut down before reaching us.
        answer.await.map_err(|_| OcrError::ShuttingDown)?
    }

    /// Number of worker threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queue capacity (pages that may wait for a worker).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pages currently waiting for a worker.
    pub fn queue_depth(&self) -> usize {
        self.shared.depth.load(Ordering::SeqCst)
    }

    /// Stops accepting work and waits for the workers to finish their current
    /// page and exit. Blocks: in async code call it from `spawn_blocking`.
    pub fn shutdown(mut self) {
        let workers = self.close();
        join_all(workers);
    }

    fn close(&mut self) -> Vec<JoinHandle<()>> {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.tx = None; // closes the queue: idle workers wake up and exit
        std::mem::take(&mut self.workers)
    }
}

impl Drop for OcrPool {
    fn drop(&mut self) {
        let workers = self.close();
        if workers.is_empty() {
            return;
        }
        // Joining means waiting for in-flight pages (up to seconds): fine in
        // sync code, but it would stall an async executor thread, so there
        // the threads are detached; they exit on their own after one page.
        if tokio::runtime::Handle::try_current().is_ok() {
            tracing::debug!("OCR pool dropped in async context; detaching workers");
        } else {
            join_all(workers);
        }
    }
}

/// Makes [`TesseractEngine`]s for `languages` (e.g. `"eng"`), with orientation
/// detection when `osd` and `osd.traineddata` is installed (otherwise a
/// warning, once, and rotated pages are read as they are), giving up on a page
/// after `time_limit` ([`TesseractEngine::set_time_limit`]).
pub fn tesseract_factory(
    languages: &str,
    datapath: Option<PathBuf>,
    osd: bool,
    time_limit: Option<Duration>,
) -> EngineFactory {
    let languages = languages.to_owned();
    let warned = Arc::new(AtomicBool::new(false));
    Arc::new(move || {
        let mut engine = TesseractEngine::new(&languages, datapath.as_deref())?;
        engine.set_time_limit(time_limit);
        if osd {
            if let Err(e) = engine.enable_orientation_detection(datapath.as_deref()) {
                if !warned.swap(true, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "OCR orientation detection disabled");
                }
            }
        }
        Ok(Box::new(engine) as Box<dyn OcrEngine>)
    })
}

fn join_all(workers: Vec<JoinHandle<()>>) {
    for w in workers {
        // A worker only ends by returning; a join error would mean a panic
        // escaped catch_unwind, already reported by the panic hook.
        let _ = w.join();
    }
}

struct Worker {
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    shared: Arc<Shared>,
    config: Arc<PoolConfig>,
    factory: EngineFactory,
    fallback_factory: Option<EngineFactory>,
    /// Set once a fallback engine failed to start: logged once, and pages
    /// keep the primary engine's text instead of failing.
    fallback_failed: Arc<AtomicBool>,
}

impl Worker {
    fn run(self, ready: std::sync::mpsc::Sender<Result<String, OcrError>>) {
        let mut fallback: Option<Box<dyn OcrEngine>> = None;
        let mut engine = match self.create_engine() {
            Ok(engine) => {
                let _ = ready.send(Ok(engine.name().to_owned()));
                Some(engine)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        drop(ready);

        loop {
            // One worker at a time waits on the queue; the lock is held only
            // while waiting, never while working, so it cannot be poisoned
            // by a page.
            let job = {
                let mut rx = self.rx.lock().unwrap_or_else(|e| e.into_inner());
                rx.blocking_recv()
            };
            let Some(job) = job else { break };
            let depth = self.shared.depth.fetch_sub(1, Ordering::SeqCst) - 1;
            metrics::gauge!("examiner_ocr_queue_depth").set(depth as f64);
            if self.shared.shutdown.load(Ordering::SeqCst) {
                continue; // dropping the reply tells the caller ShuttingDown
            }
            if job.reply.is_closed() {
                continue; // caller gave up (timeout, disconnect): skip the work
            }
            let span = job.span.clone();
            let _entered = span.enter();
            let result = self.handle(&mut engine, &mut fallback, &job.bytes, &job.vocabulary);
            if let Err(e) = &result {
                metrics::counter!("examiner_ocr_errors_total", "kind" => e.kind()).increment(1);
                tracing::debug!(error = %e, "OCR page failed");
            }
            let _ = job.reply.send(result);
        }
    }

    fn create_engine(&self) -> Result<Box<dyn OcrEngine>, OcrError> {
        Self::create_with(&self.factory)
    }

    fn create_with(factory: &EngineFactory) -> Result<Box<dyn OcrEngine>, OcrError> {
        match catch_unwind(AssertUnwindSafe(|| factory())) {
            Ok(result) => result,
            Err(panic) => Err(OcrError::EngineInit(format!(
                "engine factory panicked: {}",
                panic_message(&*panic)
            ))),
        }
    }

    /// The fallback engine of this worker, created on first use; `None` when
    /// there is none or it cannot start.
    fn fallback_engine<'a>(
        &self,
        slot: &'a mut Option<Box<dyn OcrEngine>>,
    ) -> Option<&'a mut Box<dyn OcrEngine>> {
        let factory = self.fallback_factory.as_ref()?;
        if slot.is_none() {
            if self.fallback_failed.load(Ordering::Relaxed) {
                return None;
            }
            match Self::create_with(factory) {
                Ok(engine) => *slot = Some(engine),
                Err(e) => {
                    if !self.fallback_failed.swap(true, Ordering::SeqCst) {
                        tracing::error!(error = %e, "fallback OCR engine cannot start; poorly read pages keep the primary engine's text");
                    }
                    return None;
                }
            }
        }
        slot.as_mut()
    }

    fn handle(
        &self,
        slot: &mut Option<Box<dyn OcrEngine>>,
        fallback_slot: &mut Option<Box<dyn OcrEngine>>,
        bytes: &[u8],
        vocabulary: &Option<Arc<Vocabulary>>,
    ) -> Result<PageText, OcrError> {
        let started = Instant::now();
        // Decoding untrusted bytes is where third-party panics are likeliest;
        // catch them separately so they do not cost an engine restart.
        let t = Instant::now();
        let limits = self.config.decode;
        let image = catch_unwind(AssertUnwindSafe(|| decode(bytes, &limits))).map_err(|p| {
            OcrError::Corrupt(format!("decoder panicked: {}", panic_message(&*p)))
        })??;
        let (width, height) = (image.width(), image.height());
        let decode_ms = ms(t);

        let t = Instant::now();
        let opts = self.config.preprocess;
        let prepared = catch_unwind(AssertUnwindSafe(|| prepare(image, &opts))).map_err(|p| {
            OcrError::Engine(format!("preprocessing panicked: {}", panic_message(&*p)))
        })?;
        let mut preprocess_ms = ms(t);

        if slot.is_none() {
            *slot = Some(self.create_engine()?);
        }
        let Some(engine) = slot.as_mut() else {
            return Err(OcrError::EngineInit("no engine".into()));
        };
        let t = Instant::now();
        let ppi = prepared.ppi;
        // A page the primary engine gave up on (time limit) is the fallback engine's to read,
        // when there is one; the error stands only if that engine cannot read it either.
        let may_fall_back = self.fallback_factory.is_some() && self.config.fallback_below > 0.0;
        let mut primary_timed_out = None;
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let page = prepared.image;
            // Set for every page, so one upload's paper never leaks into the next page.
            engine.set_vocabulary(vocabulary.clone());
            let first = match engine.recognize(&page, ppi) {
                Err(e @ OcrError::TimedOut { .. }) if may_fall_back => {
                    primary_timed_out = Some(e);
                    let nothing = super::engine::Recognized {
                        text: String::new(),
                        confidence: 0.0,
                    };
                    return Ok((nothing, 0, 0.0, page));
                }
                other => other?,
            };
            // Orientation check only for poorly read pages: upright pages
            // (confidence ~0.94) pay nothing, upside-down ones read ~0.41.
            if !opts.fix_orientation || first.confidence >= opts.orientation_check_below {
                return Ok((first, 0, 0.0, page));
            }
            let turn = match engine.detect_orientation(&page, ppi)? {
                Some(o) if o.degrees != 0 && o.confidence >= opts.min_orientation_confidence => {
                    o.degrees
                }
                _ => return Ok((first, 0, 0.0, page)),
            };
            let t = Instant::now();
            let upright = rotate_upright(page, turn);
            let rotate_ms = ms(t);
            let second = match engine.recognize(&upright, ppi) {
                Ok(second) => second,
                // The first reading stands: a turn that cannot be read in time is no better.
                Err(OcrError::TimedOut { .. }) => {
                    let page = rotate_upright(upright, (360 - turn) % 360);
                    return Ok((first, 0, rotate_ms, page));
                }
                Err(e) => return Err(e),
            };
            // Trust the turn only if it actually reads better.
            if second.confidence > first.confidence {
                Ok::<_, OcrError>((second, turn, rotate_ms, upright))
            } else {
                Ok((
                    first,
                    0,
                    rotate_ms,
                    rotate_upright(upright, (360 - turn) % 360),
                ))
            }
        }));
        let (recognized, rotated_degrees, rotate_ms, page) = match outcome {
            Ok(result) => result?,
            Err(panic) => {
                let msg = panic_message(&*panic);
                tracing::error!(panic = %msg, "OCR engine panicked; replacing it");
                metrics::counter!("examiner_ocr_engine_restarts_total").increment(1);
                // The engine's state is suspect: drop it (its destructor may
                // panic too) and build a fresh one now, so the next page does
                // not pay for it.
                let old = slot.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(old)));
                match self.create_engine() {
                    Ok(fresh) => *slot = Some(fresh),
                    Err(e) => tracing::error!(error = %e, "could not recreate OCR engine"),
                }
                return Err(OcrError::EnginePanicked(msg));
            }
        };
        let mut engine_name = engine.name().to_owned();
        let mut recognized = recognized;
        if recognized.confidence < self.config.fallback_below {
            if let Some(fallback) = self.fallback_engine(fallback_slot) {
                // Whatever the fallback engine makes of the page, it is no longer the primary
                // engine's timeout that decides it...
                let timed_out = primary_timed_out.take();
                let read = catch_unwind(AssertUnwindSafe(|| {
                    fallback.set_vocabulary(vocabulary.clone());
                    fallback.recognize(&page, ppi)
                }));
                match read {
                    Ok(Ok(better)) => {
                        if let Some(e) = &timed_out {
                            tracing::info!(error = %e, "page read by the fallback engine instead");
                        }
                        tracing::debug!(
                            primary_confidence = recognized.confidence,
                            fallback_confidence = better.confidence,
                            "page read again by the fallback engine"
                        );
                        recognized = better;
                        engine_name = fallback.name().to_owned();
                    }
                    // The primary engine's reading is still a reading: keep it.
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "fallback OCR engine failed on a page");
                        // ...unless there was none.
                        primary_timed_out = timed_out;
                    }
                    Err(panic) => {
                        tracing::error!(panic = %panic_message(&*panic), "fallback OCR engine panicked; replacing it");
                        metrics::counter!("examiner_ocr_engine_restarts_total").increment(1);
                        let old = fallback_slot.take();
                        let _ = catch_unwind(AssertUnwindSafe(move || drop(old)));
                        primary_timed_out = timed_out;
                    }
                }
            }
        }
        if let Some(e) = primary_timed_out {
            return Err(e);
        }
        let ocr_ms = ms(t) - rotate_ms;
        preprocess_ms += rotate_ms;

        let total = started.elapsed().as_secs_f64();
        metrics::counter!("examiner_ocr_pages_total", "engine" => engine_name.clone()).increment(1);
        metrics::histogram!("examiner_ocr_seconds", "engine" => engine_name.clone()).record(total);
        tracing::debug!(
            width,
            height,
            decode_ms,
            preprocess_ms,
            ocr_ms,
            scale = prepared.scale,
            warped = prepared.enhanced.warped,
            deskewed_degrees = prepared.enhanced.deskewed_degrees,
            lighting = prepared.enhanced.lighting,
            lighting_spread = prepared.enhanced.lighting_spread,
            denoised = prepared.enhanced.denoised,
            noise_level = prepared.enhanced.noise_level,
            rotated_degrees,
            confidence = recognized.confidence,
            "OCR page done"
        );
        Ok(PageText {
            text: recognized.text,
            confidence: recognized.confidence,
            engine: engine_name,
            width,
            height,
            decode_ms,
            preprocess_ms,
            ocr_ms,
            rotated_degrees,
            scale: prepared.scale,
        })
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
