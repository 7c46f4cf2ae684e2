//! The real `examiner` binary: OpenMP limit, catalog import, serving, graceful shutdown.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;

/// Starts `examiner serve` on a random port and returns it with its address.
pub fn start_binary(data_dir: &std::path::Path, envs: &[(&str, &str)]) -> (Child, String) {
    start_program(env!("CARGO_BIN_EXE_examiner").as_ref(), data_dir, envs)
}

/// [`start_binary`] with the `examiner` binary at `program`.
fn start_program(
    program: &std::path::Path,
    data_dir: &std::path::Path,
    envs: &[(&str, &str)],
) -> (Child, String) {
    let mut command = Command::new(program);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        // The binary must give itself the limit; do not inherit the test's.
        .env_remove("OMP_THREAD_LIMIT")
        .env("RUST_LOG", "info")
        .env("EXAMINER_OCR_THREADS", "1")
        .env("EXAMINER_AUTH_MODE", "none")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("binary starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !sent {
                if let Some(rest) = line.split("address=").nth(1) {
                    let address = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(address.to_string());
                    sent = true;
                }
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the binary logs its listening address");
    (child, address)
}

fn terminate(child: &Child) {
    // kill(1) is on every Debian machine and spares the tests a libc dependency.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

/// Sends SIGTERM and checks that the service exits cleanly.
async fn stops_cleanly(mut child: Child) {
    terminate(&child);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[tokio::test]
async fn the_binary_limits_openmp_imports_catalogs_and_shuts_down_gracefully() {
    let data = tempfile::tempdir().unwrap();
    let import = Command::new(env!("CARGO_BIN_EXE_examiner"))
        .args(["catalog", "import", "catalog/demo.yaml", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("import runs");
    assert!(import.status.success(), "{import:?}");
    let printed = String::from_utf8_lossy(&import.stdout);
    assert!(printed.contains("1 question papers"), "{printed}");

    // The marks sheet of a paper nobody has been graded on yet: its columns only.
    let marks = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_examiner"))
            .arg("marks")
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let sheet = marks(&["QP001"]);
    assert!(sheet.status.success(), "{sheet:?}");
    assert_eq!(
        String::from_utf8_lossy(&sheet.stdout),
        "user_id,evaluation_id,version,graded_at,status,final_score,total_exam_marks,\
         1.a (5),1.b (5),2.a (10),2.b (10),3 (10),4 (10),flags\r\n"
    );
    let missing = marks(&["NOPE"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("\"NOPE\" does not exist"));
    let moderation = |paper: &str| {
        Command::new(env!("CARGO_BIN_EXE_examiner"))
            .args(["moderation", paper, "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap()
    };
    // A stored paper nobody has been graded on: an empty report.
    let empty = moderation("QP001");
    assert!(empty.status.success(), "{empty:?}");
    let report: serde_json::Value = serde_json::from_slice(&empty.stdout).unwrap();
    assert_eq!(report["students"], 0);
    assert_eq!(report["agreement"]["reviewed"], 0);
    let unknown = moderation("NOPE");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("\"NOPE\" does not exist"),
        "{unknown:?}"
    );
    let erase = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_examiner"))
            .arg("erase-user")
            .args(args)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap()
    };
    let unconfirmed = erase(&["U1"]);
    assert_eq!(unconfirmed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unconfirmed.stderr).contains("run again with --yes"));
    let nobody = erase(&["U1", "--yes"]);
    assert_eq!(nobody.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("nothing is stored about user \"U1\""));
    let wrong = marks(&["QP001", "--format", "xml"]);
    assert_eq!(wrong.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("[possible values: csv, json]"));

    let bad = Command::new(env!("CARGO_BIN_EXE_examiner"))
        .args(["catalog", "import", "Cargo.toml", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains(".json, .yaml or .yml"));

    let (child, address) = start_binary(data.path(), &[]);
    let client = reqwest::Client::new();
    let health: serde_json::Value = client
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["omp_thread_limit"], "1", "{health}");
    let paper = client
        .get(format!("http://{address}/question-papers/QP001"))
        .send()
        .await
        .unwrap();
    assert_eq!(paper.status(), StatusCode::OK);

    stops_cleanly(child).await;
}

/// An upgrade replaces the binary under a running service: the service must go on rendering
/// PDFs with its own build, not fail to start the file that is gone, nor start the new one.
#[tokio::test]
async fn pdfs_still_render_after_the_running_binary_is_deleted_or_replaced() {
    use base64::Engine as _;
    let installed = tempfile::tempdir().unwrap();
    let program = installed.path().join("examiner");
    std::fs::copy(env!("CARGO_BIN_EXE_examiner"), &program).unwrap();
    let data = tempfile::tempdir().unwrap();
    let import = Command::new(&program)
        .args(["catalog", "import", "catalog/demo.yaml", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("import runs");
    assert!(import.status.success(), "{import:?}");
    let (child, address) = start_program(&program, data.path(), &[]);

    let client = reqwest::Client::new();
    // A different page each time: the OCR memo would answer a repeated one without rendering.
    let upload_is_read = |user: &'static str, when: &'static str| {
        let scan = crate::testpages::scanned_pdf(&[(
            crate::helpers::render_page(&[&format!("Q1 The going concern concept, said {user}.")]),
            200.0,
        )]);
        let url = format!(
            "data:application/pdf;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(scan)
        );
        let mut body = crate::helpers::upload_body(&[("scan", &url)]);
        body["user_id"] = user.into();
        let request = client
            .post(format!("http://{address}/upload-exam-answers"))
            .json(&body)
            .send();
        async move {
            let (status, body, _) = crate::helpers::split(request.await.unwrap()).await;
            assert_eq!(status, StatusCode::OK, "{when}: {body}");
            assert_eq!(
                body["qa_pairs"][0]["question_number"], "1",
                "{when}: {body}"
            );
        }
    };
    upload_is_read("U1", "as installed").await;

    std::fs::remove_file(&program).unwrap();
    upload_is_read("U2", "after the binary was deleted").await;

    // A different program now answers to the old name: the service must not start it.
    std::fs::write(&program, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    upload_is_read("U3", "after the binary was replaced").await;

    stops_cleanly(child).await;
}

#[test]
fn a_database_that_cannot_be_reached_is_reported_once() {
    // Port 1 on loopback: nothing listens there, so the connection is refused at once.
    let output = Command::new(env!("CARGO_BIN_EXE_examiner"))
        .args(["catalog", "import", "catalog/demo.yaml"])
        .env(
            "EXAMINER_DATABASE_URL",
            "postgres://examiner:hunter2@127.0.0.1:1/test",
        )
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reported = stderr
        .lines()
        .find(|line| line.starts_with("examiner: "))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(reported.contains("database error"), "{reported}");
    assert!(reported.contains("refused"), "{reported}");
    assert_eq!(
        reported.matches("refused").count(),
        1,
        "the cause is said once: {reported}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn bad_configuration_is_reported_before_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_examiner"))
        .args(["config", "show"])
        .env("EXAMINER_LIMITS__MAX_IMAGES", "many")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("EXAMINER_LIMITS__MAX_IMAGES"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_examiner"))
        .args(["config", "show"])
        .env("EXAMINER_LLM_API_KEY", "sk-secret-value")
        .output()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("[fetch]"));
    assert!(
        !stdout.contains("sk-secret-value"),
        "keys are never printed"
    );
}

#[tokio::test]
async fn llm_check_reports_each_backend() {
    let llm = crate::fake_llm::FakeLlm::start(|_, _| {
        crate::fake_llm::Reply::Json(serde_json::json!({"ok": true}))
    })
    .await;
    let base_url = llm.base_url();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_examiner"))
            .args(["llm", "check"])
            .env("EXAMINER_LLM_BASE_URL", base_url)
            .env("EXAMINER_LLM_MODEL", "fake-grader")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for role in ["evaluator", "verifier", "arbiter"] {
        assert!(stdout.contains(role), "{stdout}");
    }
    assert!(stdout.contains("json_schema=true"), "{stdout}");
    assert!(llm.requests().len() >= 3);

    let unconfigured = Command::new(env!("CARGO_BIN_EXE_examiner"))
        .args(["llm", "check"])
        .env_remove("EXAMINER_LLM_BASE_URL")
        .output()
        .unwrap();
    assert!(!unconfigured.status.success());
    assert!(String::from_utf8_lossy(&unconfigured.stderr).contains("EXAMINER_LLM_BASE_URL"));
}

#[test]
fn eval_grader_measures_the_embedded_grader_with_and_without_question_texts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("answers.jsonl");
    // Made-up answers to two questions, each marked by two humans.
    let standard = "A stack removes the most recently added item first; a queue removes the oldest item first.";
    let other = "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen.";
    let rows = [
        (
            "q1",
            "How do a stack and a queue differ?",
            standard,
            "A stack takes the newest item off first and a queue the oldest.",
            [5.0, 4.0],
        ),
        (
            "q1",
            "How do a stack and a queue differ?",
            standard,
            "Both hold items.",
            [1.0, 2.0],
        ),
        (
            "q1",
            "How do a stack and a queue differ?",
            standard,
            "I like football.",
            [0.0, 0.0],
        ),
        (
            "q2",
            "What does photosynthesis do?",
            other,
            "Plants use light to make glucose and oxygen from water and carbon dioxide.",
            [5.0, 5.0],
        ),
        (
            "q2",
            "What does photosynthesis do?",
            other,
            "It happens in plants.",
            [2.0, 1.0],
        ),
        (
            "q2",
            "What does photosynthesis do?",
            other,
            "A queue removes the oldest item first.",
            [0.0, 1.0],
        ),
    ];
    let lines: Vec<String> = rows
        .iter()
        .map(|(q, question, reference, answer, marks)| {
            serde_json::json!({"question_id": q, "question": question, "reference_answer": reference,
                "student_answer": answer, "max_marks": 5, "human_marks": marks})
            .to_string()
        })
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();

    let run = |extra: &[&str], out: &std::path::Path| {
        let output = Command::new(env!("CARGO_BIN_EXE_examiner"))
            .args(["eval-grader", "--mode", "local", "--data"])
            .arg(&data)
            .arg("--out")
            .arg(out)
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(stderr.contains("graded 6/6"), "progress is shown: {stderr}");
        let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap();
        assert_eq!(printed, written, "--out holds what was printed");
        printed
    };
    let with_text = run(&[], &dir.path().join("with.json"));
    let without_text = run(&["--without-question"], &dir.path().join("without.json"));
    for (report, question_text) in [(&with_text, "as in the data"), (&without_text, "left out")] {
        assert_eq!(report["count"], 6, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
        assert_eq!(report["question_text"], question_text, "{report}");
        let r = report["pearson"].as_f64().expect("a correlation");
        assert!(r > 0.5, "good answers get more marks: {report}");
        for key in ["spearman", "rmse", "mae", "qwk", "exact", "within_one"] {
            assert!(report[key].is_number(), "{key}: {report}");
        }
        assert!(report["human"]["pearson"].is_number(), "{report}");
    }

    let output = Command::new(env!("CARGO_BIN_EXE_examiner"))
        .args(["eval-grader", "--mode", "local", "--data"])
        .arg(dir.path().join("missing.jsonl"))
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("missing.jsonl"), "{stderr}");
}
