//! Assembling the service: the shared [`AppState`] built once from settings, and running
//! the HTTP server until a shutdown signal, letting in-flight requests finish.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::config::{GradingMode, OcrSettings};
use crate::fetch::{HttpFetcher, ImageSource};
use crate::grade::{Grader, LlmGrader, ReplyCache, StoreReplyCache};
use crate::ocr::{DecodeLimits, Engines, OcrPool, PageReader, PoolConfig};
use crate::store::Store;

/// Everything a request handler needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Settings in force, validated at start.
    pub settings: Arc<Settings>,
    /// Where everything is persisted.
    pub store: Arc<dyn Store>,
    /// Fetches answer images from URLs.
    pub images: Arc<dyn ImageSource>,
    /// Reads page images: the OCR worker pool (one engine per thread) or a vision LLM.
    pub ocr: Arc<dyn PageReader>,
    /// Identifies the OCR configuration in memoised results, so changing the engine or its
    /// languages does not serve stale text.
    pub ocr_cache_key: String,
    /// Renders uploaded PDFs page by page for [`AppState::ocr`].
    pub pdf: crate::ocr::pdf::PdfRenderer,
    /// Marks answers.
    pub grader: Arc<dyn Grader>,
    /// In `llm` mode, the embedded grader's independent estimate, for review flags.
    pub second_opinion: Option<Arc<dyn Grader>>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Per-key token buckets.
    pub rate_limiter: Arc<crate::http::auth::RateLimiter>,
    /// API keys verified in the last few seconds.
    pub api_keys: Arc<crate::http::auth::KeyMemo>,
    /// Caps workflow requests in progress (`auth.max_in_flight`); taken without waiting.
    pub work_permits: Arc<tokio::sync::Semaphore>,
}

/// The process-wide metrics recorder; installed once even when tests build many apps.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0,
                ])
                .expect("static bucket list is valid")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding program's); then our
            // handle renders only what we record through it, which is still correct.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Stands in when the configured grader cannot work (its model files are missing), so
/// grading fails with instructions instead of the service refusing to start — uploads and
/// results still work.
struct UnavailableGrader {
    reason: String,
}

#[async_trait]
impl Grader for UnavailableGrader {
    fn name(&self) -> &str {
        "unavailable"
    }

    async fn grade(&self, _task: &crate::grade::GradeTask) -> crate::grade::GradeOutcome {
        crate::grade::GradeOutcome::failed(self.reason.clone())
    }
}

/// Loads the embedded grader from the configured models directory.
fn load_local_grader(settings: &Settings) -> Result<Arc<dyn Grader>, String> {
    let dir = settings.grading.local.models_dir();
    let workers = match settings.grading.local.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    crate::grade::local::LocalGrader::load(&dir, workers)
        .map(|grader| Arc::new(grader) as Arc<dyn Grader>)
        .map_err(|e| {
            format!(
                "the embedded grader's model could not be loaded from {}: {e}; fetch it with `make models` (scripts/fetch-model.sh {})",
                dir.display(),
                dir.display()
            )
        })
}

/// The grader that marks, and the optional second opinion.
pub type Graders = (Arc<dyn Grader>, Option<Arc<dyn Grader>>);

/// The graders the settings ask for: the one that marks, and in `llm` mode the embedded
/// grader's second opinion when its model is available.
pub fn build_graders(settings: &Settings, store: Arc<dyn Store>) -> anyhow::Result<Graders> {
    match settings.grading_mode() {
        GradingMode::Llm => {
            let cache: Arc<dyn ReplyCache> = if settings.grading.llm.cache {
                Arc::new(StoreReplyCache::new(store))
            } else {
                Arc::new(crate::grade::NoCache)
            };
            let grader = LlmGrader::new(&settings.grading.llm, cache)
                .context("configuring the LLM grader")?;
            let second = if settings.grading.second_opinion_fraction <= 0.0 {
                tracing::info!("the embedded grader's second opinion is off (grading.second_opinion_fraction = 0)");
                None
            } else {
                match load_local_grader(settings) {
                    Ok(local) => Some(local),
                    Err(reason) => {
                        tracing::warn!(%reason, "grading without the embedded grader's second opinion");
                        None
                    }
                }
            };
            Ok((Arc::new(grader), second))
        }
        GradingMode::Local => match load_local_grader(settings) {
            Ok(local) => Ok((local, None)),
            Err(reason) => {
                tracing::error!(%reason, "grading is unavailable");
                Ok((Arc::new(UnavailableGrader { reason }), None))
            }
        },
    }
}

/// Opens the configured store; an error names the database, its password hidden.
pub async fn open_store(settings: &Settings) -> anyhow::Result<Arc<dyn Store>> {
    let url = settings.database_url();
    crate::store::open_with(&url, &settings.store_options())
        .await
        .with_context(|| format!("opening the database {}", crate::store::redact_url(&url)))
}

/// Builds the application state: opens the store, starts the OCR workers, sets up the
/// grader, and seeds the catalog on first start.
pub async fn build(settings: Settings) -> anyhow::Result<AppState> {
    let settings = Arc::new(settings);
    let store = open_store(&settings).await?;
    if let Some(seed) = &settings.seed_catalog {
        seed_catalog(store.as_ref(), seed).await?;
    }
    let images: Arc<dyn ImageSource> =
        Arc::new(HttpFetcher::new(&settings.fetch).context("configuring the image fetcher")?);
    let (ocr, ocr_cache_key) = start_ocr(&settings.ocr).context("starting OCR")?;
    let pdf = crate::ocr::pdf::PdfRenderer::new(
        settings.ocr.pdf_dpi,
        decode_limits(&settings.ocr),
        std::time::Duration::try_from_secs_f64(settings.ocr.pdf_time_limit_secs)
            .unwrap_or(std::time::Duration::MAX),
        settings.ocr.worker_threads(),
    )
    .reading_text_layers(settings.ocr.pdf_text_layers);
    let pdf = match crate::ocr::pdf::helper_program() {
        Some(program) => pdf.isolated(crate::ocr::pdf::Isolation {
            program: program.to_path_buf(),
            memory_limit: settings.ocr.pdf_memory_limit_mb.saturating_mul(1 << 20),
        }),
        None => {
            tracing::info!("PDFs render on this process's threads (no helper program registered)");
            pdf
        }
    };
    let (grader, second_opinion) = build_graders(&settings, store.clone())?;
    if settings.auth.mode == crate::config::AuthMode::ApiKey {
        ensure_first_admin_key(store.as_ref()).await?;
    } else {
        tracing::warn!(
            "auth.mode = \"none\": every caller has full rights (allowed only because {} is a loopback address)",
            settings.listen
        );
    }
    tracing::info!(grader = grader.name(), ocr = %ocr_cache_key, "service assembled");
    let work_permits = Arc::new(tokio::sync::Semaphore::new(settings.auth.max_in_flight));
    Ok(AppState {
        work_permits,
        settings,
        store,
        images,
        ocr,
        ocr_cache_key,
        pdf,
        grader,
        second_opinion,
        metrics: metrics_handle(),
        rate_limiter: Arc::default(),
        api_keys: Arc::default(),
    })
}

/// Bumped whenever decoding or preprocessing changes what OCR reads, so memoised page texts
/// from the old pipeline are not served.
const OCR_PIPELINE_VERSION: &str = "p1";

/// Starts the OCR backend the settings describe. Returns it with the key that identifies its
/// configuration in memoised page texts, so changing engine or languages serves no stale text.
pub fn start_ocr(
    settings: &OcrSettings,
) -> Result<(Arc<dyn PageReader>, String), crate::ocr::OcrError> {
    use crate::config::OcrEngineChoice;
    use crate::ocr::ppocr;

    let config = PoolConfig {
        threads: settings.worker_threads(),
        queue_capacity: settings.queue_capacity,
        decode: decode_limits(settings),
        preprocess: crate::ocr::PreprocessOptions {
            enhance: settings.preprocess,
            ..crate::ocr::PreprocessOptions::default()
        },
        ..PoolConfig::default()
    };
    let models_dir = settings.models_dir();
    let ort = settings.ort_dylib.clone();
    // Enhancement changes the page the engines read, so it is part of the key.
    let version = format!("{OCR_PIPELINE_VERSION}:{}", settings.preprocess.key());
    let tesseract_key = format!("tesseract:{}:{version}", settings.languages);
    let ppocr_key = format!("ppocr:v5:{version}");
    match settings.engine {
        OcrEngineChoice::Tesseract => {
            let factory = crate::ocr::tesseract_factory(
                &settings.languages,
                settings.tessdata_dir.clone(),
                config.preprocess.fix_orientation,
                settings.tesseract_time_limit(),
            );
            Ok((Arc::new(OcrPool::new(config, factory)?), tesseract_key))
        }
        OcrEngineChoice::Ppocr => {
            ppocr::check_files(&models_dir, ort.as_deref())?;
            let config = PoolConfig {
                uses_vocabulary: true,
                ..config
            };
            let pool = OcrPool::new(config, ppocr::ppocr_factory(models_dir, ort))?;
            Ok((Arc::new(pool), ppocr_key))
        }
        OcrEngineChoice::Auto => {
            let primary = crate::ocr::tesseract_factory(
                &settings.languages,
                settings.tessdata_dir.clone(),
                config.preprocess.fix_orientation,
                settings.tesseract_time_limit(),
            );
            if let Err(e) = ppocr::check_files(&models_dir, ort.as_deref()) {
                tracing::warn!(
                    error = %e,
                    "ocr.engine = \"auto\" without PP-OCR: handwritten pages will be read by Tesseract alone (run `make models`)"
                );
                return Ok((Arc::new(OcrPool::new(config, primary)?), tesseract_key));
            }
            let config = PoolConfig {
                fallback_below: settings.auto_fallback_below as f32,
                uses_vocabulary: true,
                ..config
            };
            let engines = Engines {
                primary,
                fallback: Some(ppocr::ppocr_factory(models_dir, ort)),
            };
            let pool = OcrPool::with_fallback(config, engines)?;
            let key = format!(
                "auto:{}:{}:{version}",
                settings.languages, settings.auto_fallback_below
            );
            Ok((Arc::new(pool), key))
        }
        OcrEngineChoice::Vision => {
            let reader =
                crate::ocr::vision::VisionOcr::new(&settings.vision, decode_limits(settings))?
                    .with_max_side(settings.vision_max_side);
            // The server decides what a model name means; its address is part of the key, and
            // so is the size pages are sent at.
            let key = format!(
                "vision:{}:{}:{}:{OCR_PIPELINE_VERSION}",
                settings.vision.base_url, settings.vision.model, settings.vision_max_side
            );
            Ok((Arc::new(reader), key))
        }
    }
}

fn decode_limits(settings: &OcrSettings) -> DecodeLimits {
    DecodeLimits {
        max_pixels: settings.max_pixels,
        ..DecodeLimits::default()
    }
}

/// A fresh installation has no keys and so no way in: create the first admin key and
/// show its secret once, on standard output (not the log, which may be shipped elsewhere).
async fn ensure_first_admin_key(store: &dyn Store) -> anyhow::Result<()> {
    if !store.list_api_keys().await?.is_empty() {
        return Ok(());
    }
    let (key, secret) = crate::http::auth::create_key(
        store,
        crate::model::Role::Admin,
        None,
        Some("first admin key, created at first start".into()),
    )
    .await
    .map_err(|e| anyhow::anyhow!("creating the first admin key: {e}"))?;
    println!(
        "\nNo API keys existed, so an admin key was created ({}). It is shown only this once:\n\n    {secret}\n\nSend it as `Authorization: Bearer <key>`. Create more with `examiner keys create --role admin|examiner|student`.\n",
        key.key_id
    );
    tracing::info!(key_id = %key.key_id, "created the first admin key");
    Ok(())
}

/// Imports the seed catalog when the database has no courses yet.
async fn seed_catalog(store: &dyn Store, path: &std::path::Path) -> anyhow::Result<()> {
    if !store.list_courses().await?.is_empty() {
        return Ok(());
    }
    let catalog = crate::cli::read_catalog(path)?;
    let created = store
        .import_catalog(&catalog)
        .await
        .with_context(|| format!("importing the seed catalog {}", path.display()))?;
    tracing::info!(path = %path.display(), created, "seed catalog imported");
    Ok(())
}

/// Serves HTTP on `listener` until `shutdown` resolves, then waits up to the grace period
/// for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let grace = Duration::from_secs(state.settings.server.shutdown_grace_secs);
    let app = crate::http::router(state);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        tracing::info!("shutdown requested; finishing in-flight requests");
        let _ = stopping_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    tokio::select! {
        result = server => result.context("server task failed")?.context("server failed")?,
        () = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period");
        }
    }
    crate::grade::flush_reply_writes(REPLY_FLUSH_LIMIT).await;
    Ok(())
}

/// How long shutdown waits for queued LLM replies to reach the store.
const REPLY_FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OcrEngineChoice;

    #[test]
    fn only_readers_that_correct_words_ask_for_the_papers_vocabulary() {
        let mut settings = OcrSettings {
            threads: 1,
            engine: OcrEngineChoice::Tesseract,
            ..OcrSettings::default()
        };
        let (reader, key) = start_ocr(&settings).expect("Tesseract starts");
        assert!(key.starts_with("tesseract:"));
        assert!(
            !reader.uses_vocabulary(),
            "Tesseract ignores the vocabulary"
        );

        // `make test` installs PP-OCR's models first; the default engine falls back to it.
        settings.engine = OcrEngineChoice::Auto;
        let (reader, key) = start_ocr(&settings).expect("auto starts");
        assert!(key.starts_with("auto:"), "PP-OCR models missing? key {key}");
        assert!(reader.uses_vocabulary());
    }
}
