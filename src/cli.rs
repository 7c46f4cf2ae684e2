//! The `examiner` command line: `serve`, `catalog import`, `llm check`, `config show`.
//! A thin edge: each subcommand loads settings and calls into the library.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::config::{Overrides, Settings};
use crate::model::Catalog;

/// Grades students' exam answer scripts.
#[derive(Debug, Parser)]
#[command(name = "examiner", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every subcommand takes.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// A TOML configuration file.
    #[arg(long, env = "EXAMINER_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the database and other state (default ./data).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start the HTTP service.
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Manage the catalog of courses, exams and question papers.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Check the configured LLM backends.
    Llm {
        #[command(subcommand)]
        command: LlmCommand,
    },
    /// Manage API keys (stored only as hashes; a new key's secret is shown once).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Measure a grader against human marks on a JSONL file of answers (the format of
    /// shared/data/asag-dev): Pearson, Spearman, RMSE, MAE, QWK, agreement, and the same
    /// figures between the human markers.
    EvalGrader {
        /// JSONL with question, reference_answer, student_answer, max_marks, human_marks.
        #[arg(long)]
        data: PathBuf,
        /// `local` or `llm` (default: the service's grading mode).
        #[arg(long)]
        mode: Option<String>,
        /// Also write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Draw predicted against human marks (SVG).
        #[arg(long)]
        plot: Option<PathBuf>,
        /// Answers graded at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Leave the questions' texts out, as the contract's `qa_pairs` do: measures grading
        /// of papers stored without question texts, and of ad hoc requests.
        #[arg(long)]
        without_question: bool,
    },
    /// Measure OCR engines on a folder of page images with reference transcripts (the format
    /// of shared/data/handwriting-dev: transcripts.jsonl with id, image, text): CER, WER and
    /// seconds per page, as JSON (one object for one engine, an array for several).
    EvalOcr {
        /// The folder holding transcripts.jsonl.
        #[arg(long)]
        data: PathBuf,
        /// tesseract, ppocr, auto or vision; repeat or separate with commas for several
        /// (default: the configured ocr.engine).
        #[arg(long, value_delimiter = ',')]
        engine: Vec<String>,
        /// Also write the JSON report here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Pages in flight at once: 1 measures a page's latency; the number of OCR workers
        /// (`ocr.threads`, default one per core) measures throughput.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
    /// Print a question paper's marks sheet: each student's newest evaluation of it, one
    /// row each, with every question's marks (as GET /question-papers/{code}/marks).
    Marks {
        question_paper_code: String,
        /// `csv` (the default) or `json`.
        #[arg(long, default_value = "csv", value_parser = ["csv", "json"])]
        format: String,
        /// Write the sheet to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a question paper's moderation report as JSON: what is left for examiners to
    /// review, and how their marks compare with the graders' (as
    /// GET /question-papers/{code}/moderation).
    Moderation { question_paper_code: String },
    /// Erase everything stored about a user, the records in one transaction: submissions, every
    /// version of their evaluations, the user record, keys bound to the user, replayable
    /// responses and the memo entries those records name (as DELETE /users/{user_id}; a
    /// running service's in-memory replies are out of this command's reach, so with the
    /// service running, erase over HTTP). Prints what was erased, as JSON.
    EraseUser {
        user_id: String,
        /// Required: erasure cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Work on the database as a whole.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Print the settings in force (defaults, file and environment combined) as TOML.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Internal: render the PDF on stdin into page images on stdout. The service runs this
    /// as a child process, under memory and time limits, for each uploaded PDF.
    #[command(name = crate::ocr::pdf::SUBCOMMAND, hide = true)]
    RenderPdf(RenderPdfArgs),
}

/// What the service tells its PDF-rendering child; it reads no settings of its own.
#[derive(Debug, Args)]
pub struct RenderPdfArgs {
    #[arg(long)]
    pub dpi: f32,
    #[arg(long)]
    pub max_pixels: u64,
    #[arg(long)]
    pub max_side: u32,
    #[arg(long)]
    pub max_pages: usize,
    #[arg(long)]
    pub time_limit_secs: f64,
    #[arg(long, action = clap::ArgAction::Set)]
    pub text_layers: bool,
}

/// `examiner render-pdf`: see [`crate::ocr::pdf::run_helper`].
pub fn render_pdf(args: &RenderPdfArgs) -> std::process::ExitCode {
    let request = crate::ocr::pdf::HelperRequest {
        dpi: args.dpi,
        limits: crate::ocr::DecodeLimits {
            max_pixels: args.max_pixels,
            max_side: args.max_side,
        },
        max_pages: args.max_pages,
        time_limit: std::time::Duration::try_from_secs_f64(args.time_limit_secs)
            .unwrap_or(std::time::Duration::MAX),
        reads_text_layers: args.text_layers,
    };
    match crate::ocr::pdf::run_helper(&request) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("examiner render-pdf: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CatalogCommand {
    /// Import courses, exams, question papers and users from a JSON or YAML file, atomically.
    Import { file: PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its secret once.
    Create {
        /// admin, examiner or student.
        #[arg(long)]
        role: String,
        /// For student keys: the user the key acts for.
        #[arg(long)]
        user_id: Option<String>,
        /// A note saying who or what the key is for.
        #[arg(long)]
        label: Option<String>,
    },
    /// List keys (ids, roles, owners; never secrets).
    List,
    /// Revoke a key by its id.
    Revoke { key_id: String },
}

#[derive(Debug, Subcommand)]
pub enum LlmCommand {
    /// Call each configured backend once; report model, latency and structured-output support.
    Check,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy every record (catalog, submissions, evaluations, API keys, idempotency keys) into
    /// another database, e.g. from the embedded SQLite into PostgreSQL. The target is created
    /// and migrated if needed and must hold no records; the copy lands whole or not at all.
    /// Memoised results are not copied (they are a cache).
    Copy {
        /// The database to copy into: `postgres://USER:PASSWORD@HOST:PORT/DATABASE` or
        /// `sqlite://PATH`.
        #[arg(long)]
        to: String,
        /// The database to copy from (default: the configured one).
        #[arg(long)]
        from: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting in force, with defaults filled in, as TOML (API keys are never
    /// part of it: settings name the environment variables that hold them).
    Show,
}

impl Cli {
    /// Settings from all layers, with this command line's flags on top.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let overrides = Overrides {
            listen: match &self.command {
                Command::Serve { listen } => *listen,
                _ => None,
            },
            data_dir: self.global.data_dir.clone(),
        };
        Ok(Settings::load(self.global.config.as_deref(), &overrides)?)
    }
}

/// Reads a catalog file; the format follows the extension (`.json`, `.yaml`/`.yml`).
pub fn read_catalog(path: &Path) -> anyhow::Result<Catalog> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading catalog file {}", path.display()))?;
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let catalog: Catalog = match extension.as_str() {
        "json" => serde_json::from_str(&text)
            .with_context(|| format!("{} is not a valid catalog", path.display()))?,
        "yaml" | "yml" => serde_yaml::from_str(&text)
            .with_context(|| format!("{} is not a valid catalog", path.display()))?,
        other => bail!(
            "catalog file {} has extension {other:?}; use .json, .yaml or .yml",
            path.display()
        ),
    };
    check_catalog(&catalog).with_context(|| format!("catalog file {}", path.display()))?;
    Ok(catalog)
}

/// The same rules the HTTP catalog endpoints apply, for files.
fn check_catalog(catalog: &Catalog) -> anyhow::Result<()> {
    let limits = crate::config::LimitSettings::default();
    let id = |field: &str, value: &str| {
        crate::http::validate::id(field, value, limits.max_id_chars)
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    for course in &catalog.courses {
        id("course_code", &course.course_code)?;
    }
    for exam in &catalog.exams {
        id("exam_code", &exam.exam_code)?;
        id("course_code", &exam.course_code)?;
    }
    for paper in &catalog.question_papers {
        id("question_paper_code", &paper.question_paper_code)?;
        id("exam_code", &paper.exam_code)?;
        if paper.questions.is_empty() {
            bail!(
                "question paper {} has no questions",
                paper.question_paper_code
            );
        }
        let mut seen = std::collections::HashSet::new();
        for q in &paper.questions {
            if !seen.insert(&q.question_number) {
                bail!(
                    "question paper {}: question {} appears more than once",
                    paper.question_paper_code,
                    q.question_number
                );
            }
            if !(q.total_marks.is_finite() && q.total_marks > 0.0) {
                bail!(
                    "question paper {}: question {} needs positive total_marks",
                    paper.question_paper_code,
                    q.question_number
                );
            }
        }
    }
    for user in &catalog.users {
        id("user_id", &user.user_id)?;
    }
    Ok(())
}

/// `examiner llm check`: one call per configured role; exit status 1 when any fails.
pub async fn llm_check(settings: &Settings) -> anyhow::Result<std::process::ExitCode> {
    if !settings.llm_configured() {
        bail!(
            "no LLM backend is configured; set EXAMINER_LLM_BASE_URL (with /v1) and EXAMINER_LLM_MODEL, or the [grading.llm] section of the config file"
        );
    }
    let llm = &settings.grading.llm;
    let mut all_ok = true;
    for (role, backend) in [
        ("evaluator", &llm.evaluator),
        ("verifier", &llm.verifier),
        ("arbiter", &llm.arbiter),
    ] {
        let check = crate::grade::check_backend(backend, llm.lean_http1).await;
        let ok = check.reachable && check.preferred_mode.is_some();
        all_ok &= ok;
        println!(
            "{role:<9} {} model={} served_model={} key={} latency={} json_schema={} json_object={} plain_json={} => {}",
            check.base_url,
            check.model,
            check.served_model.as_deref().unwrap_or("-"),
            if check.api_key_set { "set" } else { "unset" },
            check
                .latency_ms
                .map_or_else(|| "-".to_string(), |ms| format!("{ms}ms")),
            check.json_schema,
            check.json_object,
            check.plain_json,
            match (&check.preferred_mode, ok) {
                (Some(mode), true) => format!("OK (grading will use {mode})"),
                _ => "FAILED".to_string(),
            }
        );
        for error in &check.errors {
            println!("          error: {error}");
        }
    }
    Ok(if all_ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// `examiner marks CODE`.
pub async fn marks(
    settings: &Settings,
    question_paper_code: &str,
    format: &str,
    out: Option<&Path>,
) -> anyhow::Result<std::process::ExitCode> {
    let store = crate::app::open_store(settings).await?;
    let Some(sheet) =
        crate::workflow::marks::marks_sheet(store.as_ref(), question_paper_code).await?
    else {
        bail!(crate::workflow::marks::unknown_paper(question_paper_code));
    };
    // clap admits only `csv` and `json`.
    let text = if format == "json" {
        serde_json::to_string_pretty(&sheet)? + "\n"
    } else {
        crate::workflow::marks::to_csv(&sheet)
    };
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "wrote the marks of {} students to {}",
                sheet.students.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `examiner moderation CODE`.
pub async fn moderation(
    settings: &Settings,
    question_paper_code: &str,
) -> anyhow::Result<std::process::ExitCode> {
    let store = crate::app::open_store(settings).await?;
    let Some(report) =
        crate::workflow::moderation::moderation_report(store.as_ref(), question_paper_code).await?
    else {
        bail!(crate::workflow::marks::unknown_paper(question_paper_code));
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(std::process::ExitCode::SUCCESS)
}

/// `examiner erase-user USER_ID --yes`.
pub async fn erase_user(
    settings: &Settings,
    user_id: &str,
    confirmed: bool,
) -> anyhow::Result<std::process::ExitCode> {
    if !confirmed {
        bail!("erasing {user_id:?} cannot be undone; run again with --yes to erase");
    }
    let store = crate::app::open_store(settings).await?;
    let erasure = store.erase_user(user_id).await?;
    if erasure.is_empty() {
        bail!("nothing is stored about user {user_id:?}");
    }
    println!("{}", serde_json::to_string_pretty(&erasure)?);
    Ok(std::process::ExitCode::SUCCESS)
}

/// `examiner keys ...`.
pub async fn keys(
    settings: &Settings,
    command: KeysCommand,
) -> anyhow::Result<std::process::ExitCode> {
    let store = crate::app::open_store(settings).await?;
    match command {
        KeysCommand::Create {
            role,
            user_id,
            label,
        } => {
            let role = crate::model::Role::parse(&role).ok_or_else(|| {
                anyhow::anyhow!("--role must be admin, examiner or student, not {role:?}")
            })?;
            if let Some(user_id) = &user_id {
                crate::http::validate::id("user_id", user_id, settings.limits.max_id_chars)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            let (key, secret) = crate::http::auth::create_key(store.as_ref(), role, user_id, label)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("created {} key {}", key.role.as_str(), key.key_id);
            println!("{secret}");
            eprintln!("the secret is shown only now; send it as `Authorization: Bearer <key>`");
        }
        KeysCommand::List => {
            for key in store.list_api_keys().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    key.key_id,
                    key.role.as_str(),
                    key.user_id.as_deref().unwrap_or("-"),
                    if key.revoked { "revoked" } else { "active" },
                    key.created_at.to_rfc3339(),
                    key.label.as_deref().unwrap_or("")
                );
            }
        }
        KeysCommand::Revoke { key_id } => {
            if !store.revoke_api_key(&key_id).await? {
                bail!("no active key has the id {key_id:?}");
            }
            println!("revoked {key_id}");
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `examiner eval-ocr`.
pub async fn eval_ocr(
    settings: &Settings,
    data: &Path,
    engines: &[String],
    out: Option<&Path>,
    concurrency: usize,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::config::OcrEngineChoice;
    let samples = crate::quality::ocr_eval::load_samples(data).map_err(|e| anyhow::anyhow!(e))?;
    let choices = if engines.is_empty() {
        vec![settings.ocr.engine]
    } else {
        engines
            .iter()
            .map(|name| match name.trim() {
                "tesseract" => Ok(OcrEngineChoice::Tesseract),
                "ppocr" => Ok(OcrEngineChoice::Ppocr),
                "auto" => Ok(OcrEngineChoice::Auto),
                "vision" => Ok(OcrEngineChoice::Vision),
                other => Err(anyhow::anyhow!(
                    "--engine must be tesseract, ppocr, auto or vision, not {other:?}"
                )),
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let mut reports = Vec::new();
    for choice in choices {
        let mut ocr = settings.ocr.clone();
        ocr.engine = choice;
        if matches!(choice, OcrEngineChoice::Auto | OcrEngineChoice::Ppocr) {
            // `auto` quietly falls back to Tesseract alone when PP-OCR is missing; a
            // measurement must not report that under PP-OCR's name.
            crate::ocr::ppocr::check_files(&ocr.models_dir(), ocr.ort_dylib.as_deref())
                .map_err(|e| anyhow::anyhow!("--engine {}: {e}", choice.as_str()))?;
        }
        if choice == OcrEngineChoice::Vision
            && (ocr.vision.base_url.is_empty() || ocr.vision.model.is_empty())
        {
            bail!("--engine vision needs EXAMINER_VISION_BASE_URL and EXAMINER_VISION_MODEL");
        }
        let (reader, _) = tokio::task::spawn_blocking(move || crate::app::start_ocr(&ocr))
            .await?
            .map_err(|e| anyhow::anyhow!("starting {}: {e}", choice.as_str()))?;
        eprintln!(
            "eval-ocr: {} on {} pages, preprocessing {} ...",
            choice.as_str(),
            samples.len(),
            settings.ocr.preprocess.key()
        );
        let report = crate::quality::ocr_eval::evaluate(
            reader.as_ref(),
            choice.as_str(),
            data,
            &samples,
            concurrency,
        )
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
        eprintln!(
            "eval-ocr: {}: CER {:.1}%, WER {:.1}%, {:.2} s/page, {:.2} pages/s at concurrency {}",
            report.engine,
            report.cer * 100.0,
            report.wer * 100.0,
            report.seconds_per_page,
            report.pages_per_second,
            report.concurrency
        );
        reports.push(report);
    }
    let json = if reports.len() == 1 {
        serde_json::to_string_pretty(&reports[0])?
    } else {
        serde_json::to_string_pretty(&reports)?
    };
    println!("{json}");
    if let Some(out) = out {
        std::fs::write(out, format!("{json}\n"))
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", out.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `examiner eval-grader`.
pub async fn eval_grader(
    settings: &Settings,
    data: &Path,
    mode: Option<&str>,
    out: Option<&Path>,
    plot: Option<&Path>,
    concurrency: usize,
    without_question: bool,
) -> anyhow::Result<std::process::ExitCode> {
    use crate::config::GradingMode;
    let mut settings = settings.clone();
    settings.grading.mode = match mode {
        None => None,
        Some("local") => Some(GradingMode::Local),
        Some("llm") => Some(GradingMode::Llm),
        Some(other) => bail!("--mode must be local or llm, not {other:?}"),
    };
    if settings.grading.mode == Some(GradingMode::Llm) && !settings.llm_configured() {
        bail!("--mode llm needs EXAMINER_LLM_BASE_URL and EXAMINER_LLM_MODEL");
    }
    let mut items = crate::quality::eval::load_jsonl(data).map_err(|e| anyhow::anyhow!(e))?;
    if items.is_empty() {
        bail!("{} has no answers", data.display());
    }
    if without_question {
        for item in &mut items {
            item.question.clear();
        }
    }
    // Replies are memoised in memory only: a measurement must not fill the service's database.
    let (grader, _) = match settings.grading_mode() {
        GradingMode::Local => {
            let dir = settings.grading.local.models_dir();
            let workers = match settings.grading.local.workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            let grader = crate::grade::local::LocalGrader::load(&dir, workers).map_err(|e| {
                anyhow::anyhow!(
                    "loading the embedded grader from {}: {e}; run `make models`",
                    dir.display()
                )
            })?;
            (
                std::sync::Arc::new(grader) as std::sync::Arc<dyn crate::grade::Grader>,
                (),
            )
        }
        GradingMode::Llm => {
            let cache = std::sync::Arc::new(crate::grade::MemoryReplyCache::new());
            let grader = crate::grade::LlmGrader::new(&settings.grading.llm, cache)?;
            (
                std::sync::Arc::new(grader) as std::sync::Arc<dyn crate::grade::Grader>,
                (),
            )
        }
    };
    let started = std::time::Instant::now();
    let total = items.len();
    let report =
        crate::quality::eval::evaluate(grader.as_ref(), &items, concurrency, |done, total| {
            // A one-line progress bar on the terminal; plain lines now and then otherwise.
            let width = 30;
            let filled = done * width / total.max(1);
            if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                eprint!(
                    "\r[{}{}] {done}/{total}",
                    "#".repeat(filled),
                    " ".repeat(width - filled)
                );
                if done == total {
                    eprintln!();
                }
            } else if done == total || done % 100 == 0 {
                eprintln!("graded {done}/{total}");
            }
        })
        .await;
    let seconds = started.elapsed().as_secs_f64();
    let mut json = serde_json::to_value(&report)?;
    json["grader"] = serde_json::Value::String(grader.name().to_string());
    json["seconds"] = serde_json::json!(seconds);
    json["answers_per_second"] = serde_json::json!(total as f64 / seconds.max(1e-9));
    json["question_text"] = serde_json::json!(if without_question {
        "left out"
    } else {
        "as in the data"
    });
    let text = serde_json::to_string_pretty(&json)?;
    println!("{text}");
    if let Some(out) = out {
        std::fs::write(out, &text).with_context(|| format!("writing {}", out.display()))?;
    }
    if let Some(plot) = plot {
        let (predicted, human): (Vec<f64>, Vec<f64>) = report.pairs.iter().copied().unzip();
        crate::quality::plot::write_plot(plot, &predicted, &human, report.max_marks)
            .with_context(|| format!("writing {}", plot.display()))?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
