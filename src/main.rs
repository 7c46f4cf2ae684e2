//! The `examiner` binary: load settings, then run the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;
use examiner::cli::{CatalogCommand, Cli, Command, ConfigCommand, DbCommand, LlmCommand};

/// Grading allocates and frees many small buffers per LLM call (prompts, JSON, HTTP
/// frames) from several threads; mimalloc cut that cost (BENCHMARKS.md, "Evaluate").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    ensure_single_threaded_openmp();
    let cli = Cli::parse();
    if let Command::RenderPdf(args) = &cli.command {
        return examiner::cli::render_pdf(args);
    }
    // Uploaded PDFs render in child processes of this binary (`render-pdf` above).
    if let Some(exe) = running_binary() {
        examiner::ocr::pdf::register_helper_program(exe);
    }
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("examiner: {e:#}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("examiner: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "examiner failed");
            eprintln!("examiner: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, settings: examiner::config::Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { .. } => {
            let listener = tokio::net::TcpListener::bind(settings.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
            let state = examiner::app::build(settings).await?;
            tracing::info!(address = %listener.local_addr()?, "examiner listening");
            examiner::app::serve(listener, state, examiner::app::shutdown_signal()).await?;
            tracing::info!("examiner stopped");
            Ok(ExitCode::SUCCESS)
        }
        Command::Catalog {
            command: CatalogCommand::Import { file },
        } => {
            let catalog = examiner::cli::read_catalog(&file)?;
            let store = examiner::app::open_store(&settings).await?;
            let created = store.import_catalog(&catalog).await?;
            println!(
                "imported {}: {} courses, {} exams, {} question papers, {} users ({created} new records)",
                file.display(),
                catalog.courses.len(),
                catalog.exams.len(),
                catalog.question_papers.len(),
                catalog.users.len(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Llm {
            command: LlmCommand::Check,
        } => examiner::cli::llm_check(&settings).await,
        Command::EvalGrader {
            data,
            mode,
            out,
            plot,
            concurrency,
            without_question,
        } => {
            examiner::cli::eval_grader(
                &settings,
                &data,
                mode.as_deref(),
                out.as_deref(),
                plot.as_deref(),
                concurrency,
                without_question,
            )
            .await
        }
        Command::EvalOcr {
            data,
            engine,
            out,
            concurrency,
        } => examiner::cli::eval_ocr(&settings, &data, &engine, out.as_deref(), concurrency).await,
        Command::Keys { command } => examiner::cli::keys(&settings, command).await,
        Command::Marks {
            question_paper_code,
            format,
            out,
        } => examiner::cli::marks(&settings, &question_paper_code, &format, out.as_deref()).await,
        Command::Moderation {
            question_paper_code,
        } => examiner::cli::moderation(&settings, &question_paper_code).await,
        Command::EraseUser { user_id, yes } => {
            examiner::cli::erase_user(&settings, &user_id, yes).await
        }
        Command::Db {
            command: DbCommand::Copy { to, from },
        } => {
            let from = from.unwrap_or_else(|| settings.database_url());
            let (shown_from, shown_to) = (
                examiner::store::redact_url(&from),
                examiner::store::redact_url(&to),
            );
            eprintln!("copying {shown_from} into {shown_to}");
            let report = examiner::store::copy_records(&from, &to, |table, rows| {
                eprintln!("  {table}: {rows}");
            })
            .await?;
            let total: u64 = report.iter().map(|(_, rows)| rows).sum();
            println!("copied {total} records from {shown_from} into {shown_to}");
            Ok(ExitCode::SUCCESS)
        }
        Command::RenderPdf(args) => Ok(examiner::cli::render_pdf(&args)),
        Command::Config {
            command: ConfigCommand::Show,
        } => {
            let mut shown = settings.clone();
            shown.database_url = examiner::store::redact_url(&shown.database_url);
            println!("{}", toml::to_string_pretty(&shown)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The build this process runs, to start again as its PDF renderer. On Linux that is
/// `/proc/self/exe`, which names the running file even after an upgrade has deleted or
/// replaced it under that path: the renderer then stays the service's own build, speaking its
/// protocol, until the service restarts. Elsewhere, the path the binary was started from.
fn running_binary() -> Option<std::path::PathBuf> {
    let this_process = std::path::Path::new("/proc/self/exe");
    if cfg!(target_os = "linux") && this_process.exists() {
        return Some(this_process.to_path_buf());
    }
    std::env::current_exe().ok()
}

/// Debian's libtesseract uses OpenMP, and libgomp reads `OMP_THREAD_LIMIT` once, when the
/// library is loaded — before `main` runs. Without the limit every page spawns threads that
/// fight the OCR pool for the cores (measured: 5.35 s a page instead of 0.49 s). So when the
/// variable is missing, the binary starts itself again with it set.
///
/// The embedded grader's matrix maths (candle) sizes its thread pool from
/// `RAYON_NUM_THREADS`, read once; each embedding worker must stay on one core for the same
/// reason, so the variable is set the same way.
fn ensure_single_threaded_openmp() {
    if std::env::var_os("OMP_THREAD_LIMIT").is_some()
        && std::env::var_os("RAYON_NUM_THREADS").is_some()
    {
        return;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        if let Ok(exe) = std::env::current_exe() {
            let args: Vec<_> = std::env::args_os().skip(1).collect();
            let error = std::process::Command::new(exe)
                .args(args)
                .env(
                    "OMP_THREAD_LIMIT",
                    std::env::var_os("OMP_THREAD_LIMIT").unwrap_or_else(|| "1".into()),
                )
                .env(
                    "RAYON_NUM_THREADS",
                    std::env::var_os("RAYON_NUM_THREADS").unwrap_or_else(|| "1".into()),
                )
                .exec();
            // exec only returns on failure; carry on slower rather than not at all.
            eprintln!("examiner: warning: could not re-execute with OMP_THREAD_LIMIT=1 ({error}); OCR will be slow");
        }
    }
}

fn init_tracing(log: &examiner::config::LogSettings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // PostgreSQL's notices ("relation _sqlx_migrations already exists, skipping" on every
        // start) are not news; its warnings still are.
        .add_directive(
            "sqlx::postgres::notice=warn"
                .parse()
                .expect("a valid directive"),
        );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
