//! PDFs rendered in a child process: the same renderer, run by `examiner render-pdf` (a
//! hidden subcommand), under limits the kernel enforces.
//!
//! The renderer has no limits of its own. In a few megabytes of compressed streams a PDF can
//! declare an image of 60,000 × 60,000 pixels, or a page of millions of drawing operators, and
//! the renderer would allocate gigabytes or spend minutes inside one page (SECURITY.md, "PDF
//! bombs"). In a child process:
//! - its address space is capped (`ocr.pdf_memory_limit_mb`): an allocation past the cap ends
//!   the child, and the upload is refused saying so;
//! - it is killed once it has rendered for longer than the document's time limit, even in the
//!   middle of a page, and its CPU time is capped as well in case this process cannot kill it;
//! - it starts with an empty environment, so no API key reaches the process that parses
//!   untrusted bytes;
//! - whatever it allocated goes back to the system when it exits.
//!
//! The child reads the PDF on stdin and writes frames on stdout: the page count,
//! each page's PNG or a typed page's text, or why it stopped.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{PdfEvent, PdfRenderer, RenderedPage, TypedPage};
use crate::ocr::{DecodeLimits, OcrError};

/// The subcommand the helper program runs as.
pub const SUBCOMMAND: &str = "render-pdf";

static HELPER_PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Names the program that renders PDFs in child processes (`<program> render-pdf`). The
/// `examiner` binary registers itself when it starts; a process that registers none (a
/// library user, the unit tests) renders on its own blocking threads.
pub fn register_helper_program(program: PathBuf) {
    let _ = HELPER_PROGRAM.set(program);
}

/// The program registered with [`register_helper_program`], if any.
pub fn helper_program() -> Option<&'static Path> {
    HELPER_PROGRAM.get().map(PathBuf::as_path)
}

/// How a renderer runs its child processes.
#[derive(Debug, Clone)]
pub struct Isolation {
    pub program: PathBuf,
    /// The child's address space, in bytes (`RLIMIT_AS`).
    pub memory_limit: u64,
}

/// What the helper is asked to do; everything else it needs comes on stdin.
#[derive(Debug, Clone)]
pub struct HelperRequest {
    pub dpi: f32,
    pub limits: DecodeLimits,
    pub max_pages: usize,
    pub time_limit: Duration,
    pub reads_text_layers: bool,
}

const COUNT: u8 = b'N';
const PAGE: u8 = b'P';
const TYPED: u8 = b'T';
const FAILURE: u8 = b'E';
/// A longer failure frame is refused as malformed: its text is one sentence.
const MAX_FAILURE_BYTES: u64 = 64 * 1024;
/// How long past the time limit a child may take to report the limit itself before it is
/// killed (it checks between pages): this, or the limit itself when that is shorter.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// What is kept of the child's stderr: enough for a panic message or an allocation failure.
const STDERR_TAIL_BYTES: usize = 4096;

/// The helper's side: renders the PDF on stdin and writes its frames to stdout. Errors are
/// the pipe's only; what the renderer says goes in a frame.
pub fn run_helper(request: &HelperRequest) -> std::io::Result<()> {
    let mut pdf = Vec::new();
    std::io::stdin().lock().read_to_end(&mut pdf)?;
    let renderer = PdfRenderer::new(request.dpi, request.limits, request.time_limit, 1)
        .reading_text_layers(request.reads_text_layers);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut broken_pipe = None;
    let result =
        renderer.render_blocking(pdf.into(), request.max_pages, |event| {
            match write_event(&mut out, &event) {
                Ok(()) => true,
                Err(e) => {
                    broken_pipe = Some(e);
                    false
                }
            }
        });
    if let Some(e) = broken_pipe {
        return Err(e);
    }
    if let Err(error) = result {
        write_failure(&mut out, &error)?;
    }
    out.flush()
}

fn write_failure(out: &mut impl Write, error: &OcrError) -> std::io::Result<()> {
    let text = serde_json::to_vec(error).map_err(std::io::Error::other)?;
    out.write_all(&[FAILURE])?;
    out.write_all(&(text.len() as u64).to_le_bytes())?;
    out.write_all(&text)
}

fn write_event(out: &mut impl Write, event: &PdfEvent) -> std::io::Result<()> {
    match event {
        PdfEvent::Pages(count) => {
            out.write_all(&[COUNT])?;
            out.write_all(&(*count as u64).to_le_bytes())?;
        }
        PdfEvent::Page(page) => {
            let size = (page.width, page.height, page.dpi);
            write_page_frame(out, PAGE, size, &page.png)?;
        }
        PdfEvent::Typed(page) => {
            let size = (page.width, page.height, page.dpi);
            write_page_frame(out, TYPED, size, page.text.as_bytes())?;
        }
    }
    // Each page as soon as it is done: the reader starts on it while the next renders.
    out.flush()
}

fn write_page_frame(
    out: &mut impl Write,
    tag: u8,
    (width, height, dpi): (u32, u32, f32),
    bytes: &[u8],
) -> std::io::Result<()> {
    out.write_all(&[tag])?;
    out.write_all(&width.to_le_bytes())?;
    out.write_all(&height.to_le_bytes())?;
    out.write_all(&dpi.to_le_bytes())?;
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(bytes)
}

/// One frame from the child.
#[derive(Debug)]
enum Frame {
    Count(usize),
    Page(RenderedPage),
    Typed(TypedPage),
    Failure(OcrError),
}

/// The next frame; `None` at the end of the stream. `max_png` bounds a page's bytes (a typed
/// page's text as well), so a child gone wrong cannot make this process allocate at will.
async fn read_frame(
    from: &mut (impl AsyncRead + Unpin),
    max_png: u64,
) -> std::io::Result<Option<Frame>> {
    let mut tag = [0u8; 1];
    if from.read(&mut tag).await? == 0 {
        return Ok(None);
    }
    let malformed = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let frame = match tag[0] {
        COUNT => Frame::Count(
            usize::try_from(from.read_u64_le().await?)
                .map_err(|_| malformed("a page count past usize".into()))?,
        ),
        PAGE => {
            let (width, height, dpi, png) = read_page_frame(from, max_png, "a page").await?;
            Frame::Page(RenderedPage {
                png: png.into(),
                width,
                height,
                dpi,
            })
        }
        TYPED => {
            let (width, height, dpi, text) = read_page_frame(from, max_png, "a typed page").await?;
            let text = String::from_utf8(text)
                .map_err(|_| malformed("a typed page that is not UTF-8".into()))?;
            Frame::Typed(TypedPage {
                text,
                width,
                height,
                dpi,
            })
        }
        FAILURE => {
            let len = from.read_u64_le().await?;
            if len > MAX_FAILURE_BYTES {
                return Err(malformed(format!("a failure of {len} bytes")));
            }
            let mut text = vec![0u8; len as usize];
            from.read_exact(&mut text).await?;
            Frame::Failure(serde_json::from_slice(&text).map_err(|e| malformed(e.to_string()))?)
        }
        other => return Err(malformed(format!("frame tag {other:#04x}"))),
    };
    Ok(Some(frame))
}

/// The rest of a page's frame after its tag: width, height, resolution and its bytes (at
/// most `max_bytes`, or the frame is refused as malformed).
async fn read_page_frame(
    from: &mut (impl AsyncRead + Unpin),
    max_bytes: u64,
    what: &str,
) -> std::io::Result<(u32, u32, f32, Vec<u8>)> {
    let width = from.read_u32_le().await?;
    let height = from.read_u32_le().await?;
    let dpi = from.read_f32_le().await?;
    let len = from.read_u64_le().await?;
    if len > max_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes"),
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    from.read_exact(&mut bytes).await?;
    Ok((width, height, dpi, bytes))
}

/// Caps the child's address space and CPU time. Runs between fork and exec: only
/// async-signal-safe calls.
fn limit_child(memory: u64, cpu_secs: u64) -> std::io::Result<()> {
    let set = |resource, soft: u64, hard: u64| {
        let limit = libc::rlimit {
            rlim_cur: soft as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct passed by reference.
        if unsafe { libc::setrlimit(resource, &limit) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::RLIMIT_AS, memory, memory)?;
    // The soft limit sends SIGXCPU, which ends the child; the hard one SIGKILL.
    set(libc::RLIMIT_CPU, cpu_secs, cpu_secs.saturating_add(1))
}

impl PdfRenderer {
    /// Renders `bytes` in a child process, sending its events to `events`; the counterpart of
    /// [`PdfRenderer::render_blocking`]. Returns the time the child spent rendering.
    pub(super) async fn render_in_child(
        &self,
        isolation: &Isolation,
        bytes: Bytes,
        max_pages: usize,
        events: &mpsc::Sender<Result<PdfEvent, OcrError>>,
    ) -> (Duration, Result<(), OcrError>) {
        let mut command = tokio::process::Command::new(&isolation.program);
        command
            // The program is usually `/proc/self/exe` (see `main`): process listings and the
            // child's own usage errors name it as what it is.
            .arg0(env!("CARGO_PKG_NAME"))
            .arg(SUBCOMMAND)
            .args(["--dpi", &self.dpi.to_string()])
            .args(["--max-pixels", &self.limits.max_pixels.to_string()])
            .args(["--max-side", &self.limits.max_side.to_string()])
            .args(["--max-pages", &max_pages.to_string()])
            .args([
                "--time-limit-secs",
                &self.time_limit.as_secs_f64().to_string(),
            ])
            .args(["--text-layers", &self.reads_text_layers.to_string()])
            .env_clear()
            // Set, so the helper does not start itself again to set them (see `main`).
            .env("OMP_THREAD_LIMIT", "1")
            .env("RAYON_NUM_THREADS", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let memory = isolation.memory_limit;
        let grace = KILL_GRACE.min(self.time_limit);
        let cpu_secs = self
            .time_limit
            .saturating_add(grace)
            .as_secs()
            .saturating_add(1);
        // SAFETY: `limit_child` makes only async-signal-safe calls (setrlimit).
        unsafe {
            command.pre_exec(move || limit_child(memory, cpu_secs));
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                return (
                    Duration::ZERO,
                    Err(OcrError::EngineInit(format!(
                        "the PDF renderer {} could not start: {e}",
                        isolation.program.display()
                    ))),
                )
            }
        };
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return (
                Duration::ZERO,
                Err(OcrError::EngineInit("the PDF renderer has no pipes".into())),
            );
        };
        // The child reads everything before it writes anything, so this never waits on it;
        // a child that died early closes the pipe, and the error shows in its exit.
        tokio::spawn(async move {
            let _ = stdin.write_all(&bytes).await;
        });
        let stderr_tail = tokio::spawn(async move {
            let mut tail = Vec::new();
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                tail.extend_from_slice(&chunk[..n]);
                let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                tail.drain(..excess);
            }
            String::from_utf8_lossy(&tail).into_owned()
        });
        let max_png = self.limits.max_pixels.saturating_mul(2) + (1 << 20);
        let limit_secs = self.time_limit.as_secs_f64();
        let mut rendering = Duration::ZERO;
        let mut count = None;
        let mut pages_done = 0;
        let ended = loop {
            // Time waiting for the child is time it renders; time waiting for the reader to
            // take a page is not.
            let waiting = Instant::now();
            let budget = self
                .time_limit
                .saturating_sub(rendering)
                .saturating_add(grace);
            let frame = tokio::time::timeout(budget, read_frame(&mut stdout, max_png)).await;
            rendering += waiting.elapsed();
            let event = match frame {
                Err(_) => {
                    let _ = child.start_kill();
                    break Err(OcrError::PdfTimedOut {
                        pages_done,
                        limit_secs,
                    });
                }
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(Frame::Failure(error)))) => break Err(error),
                Ok(Ok(Some(Frame::Count(n)))) => {
                    count = Some(n);
                    PdfEvent::Pages(n)
                }
                Ok(Ok(Some(Frame::Page(page)))) => {
                    pages_done += 1;
                    PdfEvent::Page(page)
                }
                Ok(Ok(Some(Frame::Typed(page)))) => {
                    pages_done += 1;
                    PdfEvent::Typed(page)
                }
                // Cut short: the exit status says why.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
                Ok(Err(e)) => {
                    let _ = child.start_kill();
                    break Err(OcrError::Engine(format!(
                        "the PDF renderer's output was malformed: {e}"
                    )));
                }
            };
            if events.send(Ok(event)).await.is_err() {
                // The reader went away (the upload failed elsewhere): the child is killed
                // when dropped.
                return (rendering, Ok(()));
            }
        };
        let status = child.wait().await;
        let stderr = stderr_tail.await.unwrap_or_default();
        let result = match ended {
            Err(error) => Err(error),
            Ok(()) => match status {
                Ok(status) if status.success() && count == Some(pages_done) => Ok(()),
                Ok(status) => Err(child_failure(
                    status, &stderr, pages_done, limit_secs, memory,
                )),
                Err(e) => Err(OcrError::Engine(format!(
                    "the PDF renderer could not be waited for: {e}"
                ))),
            },
        };
        if let Err(error) = &result {
            if !stderr.trim().is_empty() {
                tracing::debug!(%error, stderr = %stderr.trim(), "the PDF renderer stopped");
            }
        }
        (rendering, result)
    }
}

/// Why a child that reported nothing stopped, from its exit and the end of its stderr.
fn child_failure(
    status: std::process::ExitStatus,
    stderr: &str,
    pages_done: usize,
    limit_secs: f64,
    memory: u64,
) -> OcrError {
    use std::os::unix::process::ExitStatusExt;
    if matches!(status.signal(), Some(libc::SIGXCPU | libc::SIGKILL)) {
        return OcrError::PdfTimedOut {
            pages_done,
            limit_secs,
        };
    }
    // What Rust's allocator prints before aborting when the address space is used up.
    if stderr.contains("memory allocation of") {
        return OcrError::UnreadablePdf(format!(
            "rendering it needs more than the {} MiB of memory a PDF may use \
             (ocr.pdf_memory_limit_mb); its images or drawings are too large",
            memory >> 20
        ));
    }
    OcrError::UnreadablePdf(format!("the renderer stopped on it ({status})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(bytes: &[u8], max_png: u64) -> std::io::Result<Vec<Frame>> {
        let mut from = bytes;
        let mut frames = Vec::new();
        while let Some(frame) = read_frame(&mut from, max_png).await? {
            frames.push(frame);
        }
        Ok(frames)
    }

    #[tokio::test]
    async fn frames_read_back_as_written_and_bad_ones_are_refused() {
        let page = RenderedPage {
            png: Bytes::from_static(b"\x89PNG not really"),
            width: 640,
            height: 480,
            dpi: 212.5,
        };
        let typed = TypedPage {
            text: "1. Dépréciation\n2. ≥ 3".into(),
            width: 2550,
            height: 3300,
            dpi: 300.0,
        };
        let mut written = Vec::new();
        write_event(&mut written, &PdfEvent::Pages(3)).unwrap();
        write_event(&mut written, &PdfEvent::Page(page.clone())).unwrap();
        write_event(&mut written, &PdfEvent::Typed(typed.clone())).unwrap();
        let failure = OcrError::PdfPageTooLarge {
            page: 2,
            width_in: 90.0,
            height_in: 11.0,
        };
        write_failure(&mut written, &failure).unwrap();

        let read = frames(&written, 1 << 20).await.unwrap();
        assert!(matches!(read[0], Frame::Count(3)), "{read:?}");
        let Frame::Page(got) = &read[1] else {
            panic!("{read:?}")
        };
        assert_eq!(
            (&got.png, got.width, got.height, got.dpi),
            (&page.png, 640, 480, 212.5)
        );
        assert!(
            matches!(&read[2], Frame::Typed(got) if *got == typed),
            "{read:?}"
        );
        let Frame::Failure(failure) = read.into_iter().nth(3).unwrap() else {
            panic!("no failure")
        };
        assert!(matches!(failure, OcrError::PdfPageTooLarge { page: 2, .. }));

        // A page longer than allowed is refused before its bytes are read; so is a tag the
        // protocol does not have; a frame cut short is an unexpected end.
        let too_long = frames(&written, 4).await.unwrap_err();
        assert_eq!(
            too_long.kind(),
            std::io::ErrorKind::InvalidData,
            "{too_long}"
        );
        let unknown = frames(b"X", 1 << 20).await.unwrap_err();
        assert_eq!(unknown.kind(), std::io::ErrorKind::InvalidData);
        let mut not_utf8 = vec![TYPED];
        for field in [1u32.to_le_bytes(), 1u32.to_le_bytes(), 72f32.to_le_bytes()] {
            not_utf8.extend_from_slice(&field);
        }
        not_utf8.extend_from_slice(&2u64.to_le_bytes());
        not_utf8.extend_from_slice(b"\xff\xfe");
        let refused = frames(&not_utf8, 1 << 20).await.unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::InvalidData, "{refused}");
        let cut = frames(&written[..20], 1 << 20).await.unwrap_err();
        assert_eq!(cut.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn a_child_that_ran_out_of_memory_or_time_says_so() {
        use std::os::unix::process::ExitStatusExt;
        let gib = 1 << 30;
        let killed = std::process::ExitStatus::from_raw(libc::SIGKILL);
        assert!(matches!(
            child_failure(killed, "", 2, 120.0, gib),
            OcrError::PdfTimedOut { pages_done: 2, .. }
        ));
        let aborted = std::process::ExitStatus::from_raw(libc::SIGABRT);
        let out_of_memory = child_failure(
            aborted,
            "memory allocation of 536870912 bytes failed\n",
            0,
            120.0,
            gib,
        );
        assert!(
            out_of_memory.to_string().contains(
                "more than the 1024 MiB of memory a PDF may use (ocr.pdf_memory_limit_mb)"
            ),
            "{out_of_memory}"
        );
        assert!(matches!(
            child_failure(aborted, "thread panicked", 0, 120.0, gib),
            OcrError::UnreadablePdf(_)
        ));
    }
}
