//! Typed settings, loaded once at start: embedded defaults, then a TOML file, then
//! environment variables, then command-line flags (each layer overrides the one before).
//!
//! Every setting has a default that works on a developer's machine, so `examiner serve`
//! with no configuration starts a usable service. Any setting can be overridden from the
//! environment as `EXAMINER_<SECTION>__<KEY>` (for example `EXAMINER_FETCH__MAX_IMAGES=10`);
//! the commonly used ones also have short names documented in the README (`EXAMINER_LISTEN`,
//! `EXAMINER_LLM_BASE_URL`, ...). Secrets are never stored here: settings name the
//! environment variable that holds a key, so printing the settings never leaks one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::grade::{LlmBackendSettings, LlmSettings};

/// Everything the service can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where the service listens; `EXAMINER_LISTEN` / `--listen`.
    pub listen: SocketAddr,
    /// Directory for the embedded database and other state; `EXAMINER_DATA_DIR` / `--data-dir`.
    pub data_dir: PathBuf,
    /// Database URL: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST:PORT/DATABASE`;
    /// empty means SQLite at `<data_dir>/examiner.db`.
    pub database_url: String,
    /// Connections a PostgreSQL store keeps open at most; `EXAMINER_DATABASE_MAX_CONNECTIONS`.
    pub database_max_connections: u32,
    /// Memoised results kept (LLM stage replies, OCR page texts) before the oldest are
    /// deleted; `EXAMINER_MEMO_MAX_ENTRIES`. About 1 KB each.
    pub memo_max_entries: u64,
    /// A catalog file (JSON or YAML) imported at start when the database has no courses yet.
    pub seed_catalog: Option<PathBuf>,
    pub server: ServerSettings,
    pub fetch: FetchSettings,
    pub ocr: OcrSettings,
    pub limits: LimitSettings,
    pub grading: GradingSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: String::new(),
            database_max_connections: crate::store::DEFAULT_MAX_CONNECTIONS,
            memo_max_entries: crate::store::DEFAULT_MEMO_MAX_ENTRIES,
            seed_catalog: None,
            server: ServerSettings::default(),
            fetch: FetchSettings::default(),
            ocr: OcrSettings::default(),
            limits: LimitSettings::default(),
            grading: GradingSettings::default(),
            auth: AuthSettings::default(),
            log: LogSettings::default(),
        }
    }
}

/// HTTP server behaviour.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Largest accepted request body, in bytes (images are fetched by URL, so bodies are small;
    /// `data:` URLs count against this cap).
    pub max_body_bytes: usize,
    /// Upper bound on the time one request may take end to end.
    pub request_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests after SIGINT/SIGTERM.
    pub shutdown_grace_secs: u64,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 * 1024 * 1024,
            request_timeout_secs: 600,
            shutdown_grace_secs: 30,
        }
    }
}

/// Fetching answer images from the URLs users give.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FetchSettings {
    /// Host names or IP addresses admitted even though they are loopback/private
    /// (`EXAMINER_FETCH_ALLOW_HOSTS`, comma-separated). For local setups and tests.
    pub allow_hosts: Vec<String>,
    /// Admit every non-public address. Only for closed networks.
    pub allow_private_networks: bool,
    pub connect_timeout_secs: u64,
    /// Time limit for one image, headers and body.
    pub timeout_secs: u64,
    pub max_redirects: usize,
    /// Largest accepted image, in bytes.
    pub max_image_bytes: u64,
    /// Largest total of all images of one request, in bytes.
    pub max_request_bytes: u64,
    /// Most images fetched at once across the whole service.
    pub concurrency: usize,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            allow_hosts: Vec::new(),
            allow_private_networks: false,
            connect_timeout_secs: 10,
            timeout_secs: 30,
            max_redirects: 5,
            max_image_bytes: 20 * 1024 * 1024,
            max_request_bytes: 200 * 1024 * 1024,
            concurrency: 32,
        }
    }
}

/// Which OCR engine reads the pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OcrEngineChoice {
    /// Tesseract only: exact and fast on print, poor on handwriting.
    Tesseract,
    /// PP-OCRv5 only (ONNX Runtime): for scripts known to be handwritten.
    Ppocr,
    /// Tesseract first; pages it reads with confidence under
    /// `ocr.auto_fallback_below` are read again by PP-OCRv5 (OCR.md has the numbers).
    Auto,
    /// A vision LLM over the OpenAI-compatible chat API (`ocr.vision`).
    Vision,
}

impl OcrEngineChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tesseract => "tesseract",
            Self::Ppocr => "ppocr",
            Self::Auto => "auto",
            Self::Vision => "vision",
        }
    }
}

/// Optical character recognition.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OcrSettings {
    /// `tesseract`, `ppocr`, `auto` or `vision`. Default `auto`.
    pub engine: OcrEngineChoice,
    /// In `auto`: Tesseract confidence under which a page goes to PP-OCRv5. Default 0.80,
    /// between print (>= 0.96) and handwriting (<= 0.67) as measured in OCR.md.
    pub auto_fallback_below: f64,
    /// Question-answer pairs read with confidence under this are flagged
    /// `low_ocr_confidence` for review. Default 0.80.
    pub low_confidence_below: f64,
    /// Where PP-OCR's models, ONNX Runtime and the lexicon live (`ppocr/`, `onnxruntime/`,
    /// `lexicon/` inside); unset: `$EXAMINER_MODELS_DIR`, else `./models`. `make` fetches them.
    pub models_dir: Option<PathBuf>,
    /// The ONNX Runtime shared library; unset: `$ORT_DYLIB_PATH`, else the one in
    /// `<models_dir>/onnxruntime/`.
    pub ort_dylib: Option<PathBuf>,
    /// The vision-LLM backend for `engine = "vision"` (same fields as an LLM role).
    pub vision: LlmBackendSettings,
    /// Pages sent to the vision backend are scaled down so their longer side is at most
    /// this many pixels (0: sent at their own size). Default 2048.
    pub vision_max_side: u32,
    /// Tesseract language codes joined by `+` (`eng`, `eng+hin`).
    pub languages: String,
    /// Worker threads, each with its own engine; 0 means one per CPU core.
    pub threads: usize,
    /// Pages waiting for a worker before new ones are refused (0: 4 per thread).
    pub queue_capacity: usize,
    /// Largest decoded image, in pixels (decompression-bomb guard).
    pub max_pixels: u64,
    /// Tesseract's tessdata directory; empty means the system default.
    pub tessdata_dir: Option<PathBuf>,
    /// Seconds Tesseract may spend reading one page (0: no limit). Default 30. In `auto` a
    /// page it gives up on goes to PP-OCR; with `engine = "tesseract"` it is refused (422).
    pub tesseract_time_limit_secs: f64,
    /// Resolution, in dots per inch, at which the pages of an uploaded PDF are rendered for
    /// OCR (100–600). Default 300. A page that would break `max_pixels` is rendered at the
    /// most it allows.
    pub pdf_dpi: f32,
    /// Seconds one PDF may take to render, all its pages together; time a rendered page
    /// waits for OCR to take it does not count. Default 120. The service renders in a child
    /// process, which is killed at the limit even in the middle of a page.
    pub pdf_time_limit_secs: f64,
    /// Memory one PDF's rendering may use, in MiB (the child process's address space; at
    /// least 512). Default 2048. A PDF that needs more (an image of 60,000 × 60,000 pixels
    /// compressed into a few megabytes, say) is refused with 422.
    pub pdf_memory_limit_mb: u64,
    /// Whether a PDF page that is plainly typed (a script saved from a word processor) is
    /// read from its own text rather than rendered and read by OCR. Default true. Pages
    /// with scans, drawn handwriting or hidden text are read by OCR either way
    /// (`ocr::pdf::text_layer`).
    pub pdf_text_layers: bool,
    /// Page enhancement before the engines read (`ocr.preprocess.perspective`, `lighting`,
    /// `deskew`, `denoise`; environment `EXAMINER_OCR__PREPROCESS__DESKEW=true` and so on).
    /// Defaults are the measured choice in OCR.md ("Page enhancement").
    pub preprocess: crate::ocr::EnhanceSteps,
}

impl Default for OcrSettings {
    fn default() -> Self {
        Self {
            engine: OcrEngineChoice::Auto,
            auto_fallback_below: 0.80,
            low_confidence_below: 0.80,
            models_dir: None,
            ort_dylib: None,
            vision: LlmBackendSettings::default(),
            vision_max_side: crate::ocr::vision::DEFAULT_MAX_SIDE,
            languages: "eng".to_string(),
            threads: 0,
            queue_capacity: 0,
            max_pixels: 40_000_000,
            tessdata_dir: None,
            tesseract_time_limit_secs: crate::ocr::tesseract::DEFAULT_TIME_LIMIT.as_secs_f64(),
            pdf_dpi: crate::ocr::pdf::DEFAULT_DPI,
            pdf_time_limit_secs: crate::ocr::pdf::DEFAULT_TIME_LIMIT.as_secs_f64(),
            pdf_memory_limit_mb: crate::ocr::pdf::DEFAULT_MEMORY_LIMIT_MB,
            pdf_text_layers: true,
            preprocess: crate::ocr::EnhanceSteps::default(),
        }
    }
}

impl OcrSettings {
    /// Tesseract's time limit per page (`None`: unlimited).
    pub fn tesseract_time_limit(&self) -> Option<std::time::Duration> {
        (self.tesseract_time_limit_secs > 0.0)
            .then(|| std::time::Duration::from_secs_f64(self.tesseract_time_limit_secs))
    }

    /// Where PP-OCR's files are looked for.
    pub fn models_dir(&self) -> PathBuf {
        self.models_dir
            .clone()
            .unwrap_or_else(crate::embed::default_models_dir)
    }

    /// The number of OCR worker threads to start.
    pub fn worker_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// Caps on what one request may contain.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Most images in one upload.
    pub max_images: usize,
    /// Most pages read in one upload: an image is one page, a PDF as many as it has.
    pub max_pages: usize,
    /// Longest identifier (user, course, exam, paper, image ids), in characters.
    pub max_id_chars: usize,
    /// Longest free text (a student or standard answer, a question), in characters.
    pub max_text_chars: usize,
    /// Most questions in one paper or one evaluation request.
    pub max_questions: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_images: 50,
            max_pages: 100,
            max_id_chars: 64,
            max_text_chars: 20_000,
            max_questions: 200,
        }
    }
}

/// Which grader marks answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GradingMode {
    /// The three-stage LLM process (evaluator, verifier, arbiter).
    Llm,
    /// The embedded grader: sentence embeddings on the CPU, no network.
    Local,
}

/// The embedded grader.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalGraderSettings {
    /// Where the models live (`all-minilm-l6-v2/` inside); unset: `$EXAMINER_MODELS_DIR`,
    /// else `./models`. `make` fetches the model there.
    pub model_dir: Option<PathBuf>,
    /// Embedding worker threads; 0 means one per CPU core.
    pub workers: usize,
}

impl LocalGraderSettings {
    pub fn models_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(crate::embed::default_models_dir)
    }
}

/// The longest regrade window that can be set: ten years.
const MAX_REGRADE_WINDOW_DAYS: u32 = 3_650;

/// Grading settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradingSettings {
    /// `llm` or `local`; unset: `llm` when an LLM backend is configured, else `local`.
    pub mode: Option<GradingMode>,
    /// Marks granularity used when a paper does not set its own.
    pub default_marks_step: f64,
    /// In `llm` mode the embedded grader gives a second opinion; when the two differ by more
    /// than this fraction of the question's marks, the question is flagged `needs_review`.
    pub review_threshold_fraction: f64,
    /// Share of questions (0 to 1) that get the embedded grader's second opinion in `llm`
    /// mode. Its CPU per answer (tens of milliseconds) caps 2 cores at a few scripts a
    /// second whatever the LLM does; a lower share raises that cap. The questions are chosen
    /// by their content, so a re-evaluation makes the same choice. 0 turns the second
    /// opinion off (the model is then not loaded in `llm` mode).
    pub second_opinion_fraction: f64,
    /// How long a request waits, once its LLM stages are done, for second opinions still
    /// being computed. Questions whose estimate is not in by then are stored without it and
    /// flagged `second_opinion_missing`; their queued work is withdrawn. 0: never wait.
    /// Estimates for questions beyond the embedded grader's calibration decide nothing, so
    /// they are never waited for.
    pub second_opinion_wait_secs: f64,
    /// Days after a student's first evaluation of a paper during which they may ask for a
    /// regrade of it (`POST /evaluations/{id}/regrade-request`); staff may ask on their behalf
    /// at any time. 0: no limit.
    pub regrade_window_days: u32,
    pub llm: LlmSettings,
    pub local: LocalGraderSettings,
}

impl GradingSettings {
    /// `second_opinion_wait_secs` as a duration (validated finite and in range at start).
    pub fn second_opinion_wait(&self) -> std::time::Duration {
        std::time::Duration::try_from_secs_f64(self.second_opinion_wait_secs).unwrap_or_default()
    }
}

impl Default for GradingSettings {
    fn default() -> Self {
        Self {
            mode: None,
            default_marks_step: 0.5,
            review_threshold_fraction: 0.4,
            second_opinion_fraction: 1.0,
            second_opinion_wait_secs: 1.0,
            regrade_window_days: 0,
            llm: LlmSettings::default(),
            local: LocalGraderSettings::default(),
        }
    }
}

/// How callers prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthMode {
    /// Every request but health, metrics and docs needs `Authorization: Bearer <key>`.
    #[serde(rename = "api-key")]
    ApiKey,
    /// No authentication: every caller has full rights. Refused unless listening on loopback.
    #[serde(rename = "none")]
    None,
}

/// A token bucket: `per_minute` requests on average, up to `burst` at once; 0 = unlimited.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

/// Authentication, authorisation and abuse limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    pub mode: AuthMode,
    /// Per-key limit for student keys.
    pub student_rate: RateLimit,
    /// Per-key limit for examiner keys (unlimited by default).
    pub examiner_rate: RateLimit,
    /// Per-key limit for admin keys (unlimited by default).
    pub admin_rate: RateLimit,
    /// Workflow requests (uploads, evaluations) in progress at once, service-wide; more are
    /// answered 503 with Retry-After instead of queueing without bound.
    pub max_in_flight: usize,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::ApiKey,
            student_rate: RateLimit {
                per_minute: 60,
                burst: 30,
            },
            examiner_rate: RateLimit::default(),
            admin_rate: RateLimit::default(),
            max_in_flight: 256,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for people, `json` for log collectors.
    pub format: String,
    /// A `tracing` filter (`info`, `examiner=debug,tower_http=info`); `RUST_LOG` wins when set.
    pub filter: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: "text".to_string(),
            filter: "info".to_string(),
        }
    }
}

/// A configuration problem, reported before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

/// Short environment names for the settings people set most, mapped to their place.
const ENV_ALIASES: &[(&str, &str)] = &[
    ("EXAMINER_LISTEN", "listen"),
    ("EXAMINER_DATA_DIR", "data_dir"),
    ("EXAMINER_DATABASE_URL", "database_url"),
    (
        "EXAMINER_DATABASE_MAX_CONNECTIONS",
        "database_max_connections",
    ),
    ("EXAMINER_MEMO_MAX_ENTRIES", "memo_max_entries"),
    ("EXAMINER_SEED_CATALOG", "seed_catalog"),
    ("EXAMINER_FETCH_ALLOW_HOSTS", "fetch.allow_hosts"),
    ("EXAMINER_OCR_LANGUAGES", "ocr.languages"),
    ("EXAMINER_OCR_THREADS", "ocr.threads"),
    ("EXAMINER_OCR_ENGINE", "ocr.engine"),
    ("EXAMINER_VISION_BASE_URL", "ocr.vision.base_url"),
    ("EXAMINER_VISION_MODEL", "ocr.vision.model"),
    ("EXAMINER_VISION_API_KEY_ENV", "ocr.vision.api_key_env"),
    ("EXAMINER_GRADING_MODE", "grading.mode"),
    ("EXAMINER_LOG_FORMAT", "log.format"),
    ("EXAMINER_AUTH_MODE", "auth.mode"),
];

/// LLM roles, each configurable as `EXAMINER_<ROLE>_<FIELD>`.
const LLM_ROLES: &[&str] = &["evaluator", "verifier", "arbiter"];
/// Backend fields settable per role and, for all roles at once, as `EXAMINER_LLM_<FIELD>`.
const LLM_FIELDS: &[&str] = &[
    "base_url",
    "model",
    "api_key_env",
    "temperature",
    "max_tokens",
    "timeout_secs",
    "concurrency",
];

impl Settings {
    /// Loads settings: defaults < `config_file` < environment < `overrides`.
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(config_file, &env, overrides)
    }

    /// [`Settings::load`] with an explicit environment, so tests need not mutate the process's.
    pub fn load_from(
        config_file: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut tree = toml::Value::try_from(Settings::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = config_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
            let file: toml::Value = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
            merge(&mut tree, file);
            // Validate the file on its own so its errors name the file, not the environment.
            let _: Settings =
                tree.clone()
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })?;
        }
        apply_env(&mut tree, env)?;
        let mut settings: Settings =
            tree.try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    name: "EXAMINER_*".to_string(),
                    message: e.to_string(),
                })?;
        if let Some(listen) = overrides.listen {
            settings.listen = listen;
        }
        if let Some(dir) = &overrides.data_dir {
            settings.data_dir = dir.clone();
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.max_images", self.limits.max_images as f64),
            ("limits.max_pages", self.limits.max_pages as f64),
            ("ocr.pdf_time_limit_secs", self.ocr.pdf_time_limit_secs),
            ("limits.max_id_chars", self.limits.max_id_chars as f64),
            ("limits.max_text_chars", self.limits.max_text_chars as f64),
            ("limits.max_questions", self.limits.max_questions as f64),
            ("fetch.max_image_bytes", self.fetch.max_image_bytes as f64),
            (
                "fetch.max_request_bytes",
                self.fetch.max_request_bytes as f64,
            ),
            ("fetch.concurrency", self.fetch.concurrency as f64),
            ("fetch.timeout_secs", self.fetch.timeout_secs as f64),
            ("ocr.max_pixels", self.ocr.max_pixels as f64),
            ("memo_max_entries", self.memo_max_entries as f64),
            (
                "database_max_connections",
                f64::from(self.database_max_connections),
            ),
            (
                "grading.default_marks_step",
                self.grading.default_marks_step,
            ),
        ];
        for (name, value) in positive {
            if value.is_nan() || value <= 0.0 {
                return Err(ConfigError::Invalid(format!("{name} must be positive")));
            }
        }
        if self.auth.mode == AuthMode::None && !self.listen.ip().is_loopback() {
            return Err(ConfigError::Invalid(format!(
                "auth.mode = \"none\" gives every caller full rights, so it is only allowed when listening on a loopback address, not {}",
                self.listen
            )));
        }
        if self.grading.mode == Some(GradingMode::Llm) && !self.llm_configured() {
            return Err(ConfigError::Invalid(
                "grading.mode = \"llm\" needs a backend: set EXAMINER_LLM_BASE_URL and EXAMINER_LLM_MODEL".into(),
            ));
        }
        let review = self.grading.review_threshold_fraction;
        if !(review.is_finite() && review > 0.0) {
            return Err(ConfigError::Invalid(
                "grading.review_threshold_fraction must be a positive number".into(),
            ));
        }
        let share = self.grading.second_opinion_fraction;
        if !(0.0..=1.0).contains(&share) {
            return Err(ConfigError::Invalid(format!(
                "grading.second_opinion_fraction must be between 0 (off) and 1 (every question), not {share}"
            )));
        }
        let wait = self.grading.second_opinion_wait_secs;
        if !(wait.is_finite() && (0.0..=3600.0).contains(&wait)) {
            return Err(ConfigError::Invalid(format!(
                "grading.second_opinion_wait_secs must be between 0 and 3600 seconds, not {wait}"
            )));
        }
        let window = self.grading.regrade_window_days;
        if window > MAX_REGRADE_WINDOW_DAYS {
            return Err(ConfigError::Invalid(format!(
                "grading.regrade_window_days must be at most {MAX_REGRADE_WINDOW_DAYS} (0: no limit), not {window}"
            )));
        }
        let dpi = self.ocr.pdf_dpi;
        if !(crate::ocr::pdf::MIN_DPI..=600.0).contains(&dpi) {
            return Err(ConfigError::Invalid(format!(
                "ocr.pdf_dpi must be between {} and 600, not {dpi}",
                crate::ocr::pdf::MIN_DPI
            )));
        }
        let memory = self.ocr.pdf_memory_limit_mb;
        if memory < crate::ocr::pdf::MIN_MEMORY_LIMIT_MB {
            return Err(ConfigError::Invalid(format!(
                "ocr.pdf_memory_limit_mb must be at least {}, not {memory}",
                crate::ocr::pdf::MIN_MEMORY_LIMIT_MB
            )));
        }
        if self.auth.max_in_flight == 0 {
            return Err(ConfigError::Invalid(
                "auth.max_in_flight must be positive".into(),
            ));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log.format must be \"text\" or \"json\", not {:?}",
                self.log.format
            )));
        }
        for (name, value) in [
            ("ocr.auto_fallback_below", self.ocr.auto_fallback_below),
            ("ocr.low_confidence_below", self.ocr.low_confidence_below),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ConfigError::Invalid(format!(
                    "{name} must be between 0 and 1, not {value}"
                )));
            }
        }
        if self.ocr.engine == OcrEngineChoice::Vision
            && (self.ocr.vision.base_url.trim().is_empty()
                || self.ocr.vision.model.trim().is_empty())
        {
            return Err(ConfigError::Invalid(
                "ocr.engine = \"vision\" needs a backend: set ocr.vision.base_url and ocr.vision.model (EXAMINER_VISION_BASE_URL, EXAMINER_VISION_MODEL)".into(),
            ));
        }
        let limit = self.ocr.tesseract_time_limit_secs;
        if !(limit.is_finite() && (0.0..=86_400.0).contains(&limit)) {
            return Err(ConfigError::Invalid(format!(
                "ocr.tesseract_time_limit_secs must be between 0 (no limit) and 86400 seconds, not {limit}"
            )));
        }
        if self.ocr.languages.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "ocr.languages must name at least one language".into(),
            ));
        }
        Ok(())
    }

    /// How the store is opened.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            memo_max_entries: self.memo_max_entries,
            max_connections: self.database_max_connections,
        }
    }

    /// The database URL in force: the configured one, or SQLite in the data directory.
    pub fn database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("examiner.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// The grader in force: the configured mode, else `llm` when a backend is configured.
    pub fn grading_mode(&self) -> GradingMode {
        self.grading.mode.unwrap_or(if self.llm_configured() {
            GradingMode::Llm
        } else {
            GradingMode::Local
        })
    }

    /// Whether an LLM backend has been configured (a base URL and a model for the evaluator).
    pub fn llm_configured(&self) -> bool {
        let evaluator: &LlmBackendSettings = &self.grading.llm.evaluator;
        !evaluator.base_url.trim().is_empty() && !evaluator.model.trim().is_empty()
    }
}

/// Deep-merges `overlay` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(base), toml::Value::Table(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

fn apply_env(tree: &mut toml::Value, env: &[(String, String)]) -> Result<(), ConfigError> {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());

    // Shared LLM defaults first, so a per-role variable set below wins over them.
    for field in LLM_FIELDS {
        let name = format!("EXAMINER_LLM_{}", field.to_uppercase());
        if let Some(value) = lookup(&name) {
            for role in LLM_ROLES {
                set_path(tree, &format!("grading.llm.{role}.{field}"), value, &name)?;
            }
        }
    }
    for role in LLM_ROLES {
        for field in LLM_FIELDS {
            let name = format!("EXAMINER_{}_{}", role.to_uppercase(), field.to_uppercase());
            if let Some(value) = lookup(&name) {
                set_path(tree, &format!("grading.llm.{role}.{field}"), value, &name)?;
            }
        }
    }
    for (name, path) in ENV_ALIASES {
        if let Some(value) = lookup(name) {
            set_path(tree, path, value, name)?;
        }
    }
    // The generic form reaches every setting: EXAMINER_FETCH__MAX_IMAGES -> fetch.max_images.
    for (name, value) in env {
        if let Some(rest) = name.strip_prefix("EXAMINER_") {
            if rest.contains("__") {
                let path = rest.to_lowercase().replace("__", ".");
                set_path(tree, &path, value, name)?;
            }
        }
    }
    Ok(())
}

/// Sets `path` (dotted) in `tree` from an environment string, typed like the default it
/// replaces: numbers and booleans parse, lists split on commas.
fn set_path(tree: &mut toml::Value, path: &str, raw: &str, name: &str) -> Result<(), ConfigError> {
    let env_error = |message: String| ConfigError::Env {
        name: name.to_string(),
        message,
    };
    let mut node = tree;
    let parts: Vec<&str> = path.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node
            .as_table_mut()
            .ok_or_else(|| env_error(format!("{path} is not a setting")))?;
        if i + 1 == parts.len() {
            let value = match table.get(*part) {
                Some(toml::Value::Integer(_)) => toml::Value::Integer(
                    raw.trim()
                        .parse()
                        .map_err(|_| env_error(format!("expected a whole number, got {raw:?}")))?,
                ),
                Some(toml::Value::Float(_)) => toml::Value::Float(
                    raw.trim()
                        .parse()
                        .map_err(|_| env_error(format!("expected a number, got {raw:?}")))?,
                ),
                Some(toml::Value::Boolean(_)) => {
                    toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
                        "1" | "true" | "yes" | "on" => true,
                        "0" | "false" | "no" | "off" => false,
                        _ => return Err(env_error(format!("expected true or false, got {raw:?}"))),
                    })
                }
                Some(toml::Value::Array(_)) => toml::Value::Array(
                    raw.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(|s| toml::Value::String(s.to_string()))
                        .collect(),
                ),
                Some(toml::Value::Table(_)) => {
                    return Err(env_error(format!("{path} is a section, not a setting")))
                }
                // Strings, and optional settings absent from the defaults.
                _ => toml::Value::String(raw.to_string()),
            };
            table.insert((*part).to_string(), value);
            return Ok(());
        }
        node = table
            .entry((*part).to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// One value read from the settings with one environment variable set, or the error
    /// loading them gave.
    fn with_env<T>(name: &str, value: &str, read: impl Fn(&Settings) -> T) -> Result<T, String> {
        Settings::load_from(None, &env(&[(name, value)]), &Overrides::default())
            .map(|s| read(&s))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(settings.limits.max_images, 50);
        assert_eq!(settings.fetch.max_image_bytes, 20 * 1024 * 1024);
        assert!(settings.database_url().starts_with("sqlite://"));
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("examiner.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\n[fetch]\nmax_redirects = 2\ntimeout_secs = 7\n",
        )
        .unwrap();
        let vars = env(&[
            ("EXAMINER_FETCH__TIMEOUT_SECS", "9"),
            ("EXAMINER_FETCH_ALLOW_HOSTS", "127.0.0.1, localhost"),
        ]);
        let settings = Settings::load_from(Some(&file), &vars, &Overrides::default()).unwrap();
        assert_eq!(settings.listen.port(), 9000);
        assert_eq!(settings.fetch.max_redirects, 2);
        assert_eq!(settings.fetch.timeout_secs, 9);
        assert_eq!(settings.fetch.allow_hosts, vec!["127.0.0.1", "localhost"]);

        let vars = env(&[("EXAMINER_LISTEN", "127.0.0.1:9100")]);
        let settings = Settings::load_from(Some(&file), &vars, &Overrides::default()).unwrap();
        assert_eq!(settings.listen.port(), 9100);
        let flags = Overrides {
            listen: Some("127.0.0.1:9200".parse().unwrap()),
            data_dir: None,
        };
        let settings = Settings::load_from(Some(&file), &vars, &flags).unwrap();
        assert_eq!(settings.listen.port(), 9200);
    }

    #[test]
    fn llm_shared_defaults_and_role_overrides() {
        let vars = env(&[
            ("EXAMINER_LLM_BASE_URL", "http://127.0.0.1:11434/v1"),
            ("EXAMINER_LLM_MODEL", "qwen2.5"),
            ("EXAMINER_ARBITER_MODEL", "qwen2.5-72b"),
        ]);
        let settings = Settings::load_from(None, &vars, &Overrides::default()).unwrap();
        assert!(settings.llm_configured());
        assert_eq!(settings.grading.llm.evaluator.model, "qwen2.5");
        assert_eq!(settings.grading.llm.verifier.model, "qwen2.5");
        assert_eq!(settings.grading.llm.arbiter.model, "qwen2.5-72b");
        assert_eq!(
            settings.grading.llm.verifier.base_url,
            "http://127.0.0.1:11434/v1"
        );
    }

    #[test]
    fn tesseract_time_limit() {
        let limit = |value: &str| {
            with_env("EXAMINER_OCR__TESSERACT_TIME_LIMIT_SECS", value, |s| {
                s.ocr.tesseract_time_limit()
            })
        };
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(
            defaults.ocr.tesseract_time_limit(),
            Some(std::time::Duration::from_secs(30))
        );
        assert_eq!(
            limit("2.5").unwrap(),
            Some(std::time::Duration::from_millis(2500))
        );
        assert_eq!(limit("0").unwrap(), None);
        for bad in ["-1", "NaN", "1e9"] {
            let err = limit(bad).unwrap_err();
            assert!(
                err.contains("ocr.tesseract_time_limit_secs"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn vision_page_size() {
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(defaults.ocr.vision_max_side, 2048);
        let vars = env(&[("EXAMINER_OCR__VISION_MAX_SIDE", "1568")]);
        let settings = Settings::load_from(None, &vars, &Overrides::default()).unwrap();
        assert_eq!(settings.ocr.vision_max_side, 1568);
        let vars = env(&[("EXAMINER_OCR__VISION_MAX_SIDE", "-1")]);
        let err = Settings::load_from(None, &vars, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("vision_max_side"), "{err}");
    }

    #[test]
    fn second_opinion_wait() {
        let wait = |value: &str| {
            with_env("EXAMINER_GRADING__SECOND_OPINION_WAIT_SECS", value, |s| {
                s.grading.second_opinion_wait()
            })
        };
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(
            defaults.grading.second_opinion_wait(),
            std::time::Duration::from_secs(1)
        );
        assert_eq!(wait("0.25").unwrap(), std::time::Duration::from_millis(250));
        assert_eq!(wait("0").unwrap(), std::time::Duration::ZERO);
        for bad in ["-1", "NaN", "86400"] {
            let err = wait(bad).unwrap_err();
            assert!(
                err.contains("grading.second_opinion_wait_secs must be between 0 and 3600"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn pdf_pages() {
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(defaults.ocr.pdf_dpi, 300.0);
        assert_eq!(defaults.ocr.pdf_time_limit_secs, 120.0);
        assert!(defaults.ocr.pdf_text_layers);
        assert_eq!(defaults.limits.max_pages, 100);
        let text_layers = |value: &str| {
            with_env("EXAMINER_OCR__PDF_TEXT_LAYERS", value, |s| {
                s.ocr.pdf_text_layers
            })
        };
        assert!(!text_layers("false").unwrap());
        let dpi = |value: &str| with_env("EXAMINER_OCR__PDF_DPI", value, |s| s.ocr.pdf_dpi);
        assert_eq!(dpi("200").unwrap(), 200.0);
        for bad in ["99", "601", "NaN"] {
            let err = dpi(bad).unwrap_err();
            assert!(
                err.contains("ocr.pdf_dpi must be between 100 and 600"),
                "{bad}: {err}"
            );
        }
        let pages =
            |value: &str| with_env("EXAMINER_LIMITS__MAX_PAGES", value, |s| s.limits.max_pages);
        assert_eq!(pages("20").unwrap(), 20);
        assert!(pages("0")
            .unwrap_err()
            .contains("limits.max_pages must be positive"));
        let time = |value: &str| {
            with_env("EXAMINER_OCR__PDF_TIME_LIMIT_SECS", value, |s| {
                s.ocr.pdf_time_limit_secs
            })
        };
        assert_eq!(time("30").unwrap(), 30.0);
        assert!(time("0")
            .unwrap_err()
            .contains("ocr.pdf_time_limit_secs must be positive"));
        let memory = |value: &str| {
            with_env("EXAMINER_OCR__PDF_MEMORY_LIMIT_MB", value, |s| {
                s.ocr.pdf_memory_limit_mb
            })
        };
        assert_eq!(memory("1024").unwrap(), 1024);
        assert!(memory("100")
            .unwrap_err()
            .contains("ocr.pdf_memory_limit_mb must be at least 512, not 100"));
    }

    #[test]
    fn regrade_window() {
        let window = |value: &str| {
            with_env("EXAMINER_GRADING__REGRADE_WINDOW_DAYS", value, |s| {
                s.grading.regrade_window_days
            })
        };
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(
            defaults.grading.regrade_window_days, 0,
            "no limit by default"
        );
        assert_eq!(window("14").unwrap(), 14);
        let err = window("3651").unwrap_err();
        assert!(
            err.contains("grading.regrade_window_days must be at most 3650"),
            "{err}"
        );
        assert!(window("-1").is_err());
    }

    #[test]
    fn second_opinion_share() {
        let share = |value: &str| {
            with_env("EXAMINER_GRADING__SECOND_OPINION_FRACTION", value, |s| {
                s.grading.second_opinion_fraction
            })
        };
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(defaults.grading.second_opinion_fraction, 1.0);
        assert_eq!(share("0.25").unwrap(), 0.25);
        assert_eq!(share("0").unwrap(), 0.0);
        for bad in ["1.5", "-0.1", "NaN"] {
            let err = share(bad).unwrap_err();
            assert!(
                err.contains("grading.second_opinion_fraction must be between 0"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn lean_http_client_switch() {
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert!(defaults.grading.llm.lean_http1);
        let vars = env(&[("EXAMINER_GRADING__LLM__LEAN_HTTP1", "false")]);
        let settings = Settings::load_from(None, &vars, &Overrides::default()).unwrap();
        assert!(!settings.grading.llm.lean_http1);
    }

    #[test]
    fn database_pool_bound() {
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(defaults.store_options().max_connections, 16);
        let vars = env(&[("EXAMINER_DATABASE_MAX_CONNECTIONS", "64")]);
        let settings = Settings::load_from(None, &vars, &Overrides::default()).unwrap();
        assert_eq!(settings.store_options().max_connections, 64);
        let vars = env(&[("EXAMINER_DATABASE_MAX_CONNECTIONS", "0")]);
        let err = Settings::load_from(None, &vars, &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("database_max_connections"),
            "{err}"
        );
    }

    #[test]
    fn memo_bound() {
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(defaults.store_options().memo_max_entries, 1_000_000);
        let vars = env(&[("EXAMINER_MEMO_MAX_ENTRIES", "5000")]);
        let settings = Settings::load_from(None, &vars, &Overrides::default()).unwrap();
        assert_eq!(settings.store_options().memo_max_entries, 5_000);
        let vars = env(&[("EXAMINER_MEMO_MAX_ENTRIES", "0")]);
        let err = Settings::load_from(None, &vars, &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("memo_max_entries"), "{err}");
    }

    #[test]
    fn auth_none_only_on_loopback() {
        let vars = env(&[("EXAMINER_AUTH_MODE", "none")]);
        let settings = Settings::load_from(None, &vars, &Overrides::default()).unwrap();
        assert_eq!(settings.auth.mode, AuthMode::None);
        let flags = Overrides {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            data_dir: None,
        };
        let err = Settings::load_from(None, &vars, &flags).unwrap_err();
        assert!(err.to_string().contains("loopback"), "{err}");
        let settings = Settings::load_from(None, &[], &flags).unwrap();
        assert_eq!(settings.auth.mode, AuthMode::ApiKey);
    }

    #[test]
    fn bad_values_are_reported_with_their_source() {
        let err = Settings::load_from(
            None,
            &env(&[("EXAMINER_FETCH__MAX_IMAGE_BYTES", "lots")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("EXAMINER_FETCH__MAX_IMAGE_BYTES"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[fetch]\nno_such_setting = 1\n").unwrap();
        let err = Settings::load_from(Some(&file), &[], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("bad.toml"), "{err}");

        let err = Settings::load_from(
            None,
            &env(&[("EXAMINER_LIMITS__MAX_IMAGES", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("limits.max_images"));
    }

    #[test]
    fn preprocessing_steps_come_from_file_and_environment() {
        let defaults = Settings::load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(defaults.ocr.preprocess, crate::ocr::EnhanceSteps::default());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("examiner.toml");
        std::fs::write(
            &file,
            "[ocr.preprocess]\ndeskew = false\nlighting = true\nperspective = true\n",
        )
        .unwrap();
        let vars = env(&[
            ("EXAMINER_OCR__PREPROCESS__PERSPECTIVE", "false"),
            ("EXAMINER_OCR__PREPROCESS__DENOISE", "on"),
        ]);
        let s = Settings::load_from(Some(&file), &vars, &Overrides::default()).unwrap();
        let steps = s.ocr.preprocess;
        assert!(!steps.deskew && !steps.perspective);
        use crate::ocr::StepMode;
        assert_eq!(
            (steps.lighting, steps.denoise),
            (StepMode::On, StepMode::On)
        );
        let vars = env(&[("EXAMINER_OCR__PREPROCESS__LIGHTING", "auto")]);
        let s = Settings::load_from(None, &vars, &Overrides::default()).unwrap();
        assert_eq!(s.ocr.preprocess.lighting, StepMode::Auto);
        assert_ne!(steps, defaults.ocr.preprocess);

        std::fs::write(&file, "[ocr.preprocess]\ndeskw = true\n").unwrap();
        let err = Settings::load_from(Some(&file), &[], &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("deskw"), "{err}");
    }
}
