//! Crash safety of the real binary: under load (concurrent uploads of rendered pages and
//! concurrent evaluations against a slow LLM), the process is killed with SIGKILL, restarted
//! on the same data directory, and what it stored is checked against what it answered:
//! everything a success response reported is stored exactly, nothing half-written is visible,
//! and the service starts cleanly.
//!
//! Requests in flight at the kill get no response. An upload in flight is either absent or
//! stored whole (its transaction may have committed just before the kill, the response lost).
//! An evaluation in flight is absent: it is stored only when every question is graded, in one
//! transaction at the end, so the kill loses only the grading work; re-running it is one call
//! (`POST /evaluate-answers` again, or `POST /evaluations/{id}/retry` for stored failures).

use std::collections::{BTreeSet, HashMap};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::binary::start_binary;
use crate::fake_llm::{evaluator, verifier, FakeLlm, Reply, Stage};
use crate::helpers::{png, ImageServer};

/// Uploads and evaluations sent at once at the start.
const BURST: [usize; 2] = [20, 10];
/// After the burst, each kind is topped up to keep this many running.
const KEEP_RUNNING: usize = 4;
/// Distinct rendered pages; later uploads reuse them.
const PAGES: usize = 40;
/// At most this many uploads and evaluations in all.
const MAX_REQUESTS: usize = 1000;
const QUESTIONS: [&str; 3] = ["1.a", "1.b", "2.a"];

/// Kills the binary when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sigkill(child: &Child) {
    let status = Command::new("kill")
        .args(["-KILL", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
}

fn page(i: usize) -> Vec<u8> {
    png(&[
        &format!("Name: Student {i}"),
        "1.a The going concern concept assumes the business",
        &format!("will continue for the foreseeable future, roll {i}."),
        &format!("1.b Assets = Liabilities + Capital, entry {i}."),
    ])
}

fn upload_request(i: usize, url: &str) -> Value {
    json!({
        "user_id": format!("CRASH-U{i}"), "course_code": "CA-FND-2024",
        "exam_code": "CA-FO-PAPER1", "question_paper_code": "QP001",
        "images": [{"image_id": "page_1", "image_url": url}],
    })
}

fn evaluate_request(i: usize) -> Value {
    json!({
        "user_id": format!("CRASH-E{i}"), "course_code": "CA-FND-2024",
        "exam_code": "CA-FO-PAPER1", "question_paper_code": "QP001",
        "qa_pairs": QUESTIONS.iter().map(|q| json!({
            "question_number": q,
            "student_answer": format!("Answer {i} to question {q}: the business continues."),
        })).collect::<Vec<_>>(),
    })
}

/// What one request got: a status and body, or no response at all.
#[derive(Debug)]
enum Outcome {
    Answered(u16, Value),
    NoResponse(String),
}

fn pairs_of(list: &Value) -> Vec<(String, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["question_number"].as_str().unwrap().to_string(),
                p["answer"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

async fn get(client: &reqwest::Client, address: &str, path: &str) -> (u16, Value) {
    let response = client
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_nothing_answered_and_leaves_nothing_half_written() {
    let data = tempfile::tempdir().unwrap();
    let images = ImageServer::start().await;
    let urls: Vec<String> = (0..PAGES)
        .map(|i| images.add(&format!("crash-{i}.png"), "image/png", page(i)))
        .collect();
    let llm = FakeLlm::start_delayed(Duration::from_millis(300), |stage, _| match stage {
        Stage::Evaluator => evaluator(3.0, "Partly right."),
        Stage::Verifier => verifier(true, 3.0),
        _ => Reply::Status(500),
    })
    .await;
    let base_url = llm.base_url();
    let envs = [
        ("EXAMINER_FETCH_ALLOW_HOSTS", "127.0.0.1"),
        ("EXAMINER_SEED_CATALOG", "catalog/demo.yaml"),
        ("EXAMINER_LLM_BASE_URL", base_url.as_str()),
        ("EXAMINER_LLM_MODEL", "fake-grader"),
        ("EXAMINER_OCR_THREADS", "2"),
    ];
    let (child, address) = start_binary(data.path(), &envs);
    let child = Running(child);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    // Load: a burst of BURST uploads and BURST evaluations at once, then more as they finish,
    // so that whenever the kill comes some requests of both kinds are running.
    let answered = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let succeeded = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let launch = |kind: usize, i: usize| {
        let (path, body) = if kind == 0 {
            // Uploads after the first PAGES reuse their pages (for other users): their OCR is then
            // memoised, but each is still a whole submission stored in its own transaction.
            ("/upload-exam-answers", upload_request(i, &urls[i % PAGES]))
        } else {
            ("/evaluate-answers", evaluate_request(i))
        };
        let (client, url) = (client.clone(), format!("http://{address}{path}"));
        let (answered, succeeded) = (answered.clone(), succeeded.clone());
        tokio::spawn(async move {
            let outcome = match client.post(url).json(&body).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.json::<Value>().await {
                        Ok(body) => Outcome::Answered(status, body),
                        Err(e) => Outcome::NoResponse(e.to_string()),
                    }
                }
                Err(e) => Outcome::NoResponse(e.to_string()),
            };
            if let Outcome::Answered(status, _) = &outcome {
                answered[kind].fetch_add(1, Ordering::SeqCst);
                if *status == 200 {
                    succeeded[kind].fetch_add(1, Ordering::SeqCst);
                }
            }
            outcome
        })
    };
    let mut tasks = Vec::new();
    for kind in [0, 1] {
        for i in 0..BURST[kind] {
            tasks.push((kind, i, launch(kind, i)));
        }
    }
    let mut launched = BURST;
    let mut last_top_up = [Instant::now(); 2];
    let started = Instant::now();
    // Kill once at least 5 of each kind have succeeded while others of both kinds still run;
    // until then each kind is topped up (one every 100 ms at most) to keep KEEP_RUNNING of it
    // running.
    let answered_at_kill = loop {
        let done = [
            answered[0].load(Ordering::SeqCst),
            answered[1].load(Ordering::SeqCst),
        ];
        if succeeded[0].load(Ordering::SeqCst) >= 5
            && succeeded[1].load(Ordering::SeqCst) >= 5
            && done[0] < launched[0]
            && done[1] < launched[1]
        {
            sigkill(&child.0);
            break done;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "no progress under load: {succeeded:?} of {launched:?}"
        );
        for kind in [0, 1] {
            if done[kind] + KEEP_RUNNING > launched[kind]
                && launched[kind] < MAX_REQUESTS
                && last_top_up[kind].elapsed() >= Duration::from_millis(100)
            {
                last_top_up[kind] = Instant::now();
                tasks.push((kind, launched[kind], launch(kind, launched[kind])));
                launched[kind] += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut child = child;
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");

    let mut outcomes: HashMap<(usize, usize), Outcome> = HashMap::new();
    for (kind, i, task) in tasks {
        outcomes.insert((kind, i), task.await.unwrap());
    }
    let in_flight = [
        launched[0] - answered_at_kill[0],
        launched[1] - answered_at_kill[1],
    ];
    assert!(
        in_flight[0] > 0 && in_flight[1] > 0,
        "the kill must land in the middle of both kinds of work: {in_flight:?} in flight"
    );
    // What a client in flight saw: the connection closed without a response.
    let cut: Vec<&String> = outcomes
        .values()
        .filter_map(|o| match o {
            Outcome::NoResponse(error) => Some(error),
            Outcome::Answered(..) => None,
        })
        .collect();
    assert!(!cut.is_empty());
    eprintln!(
        "crash: {} requests cut by the kill, e.g. {:?}",
        cut.len(),
        cut[0]
    );

    // Restart on the same data directory: it must come up cleanly.
    let (restarted, address) = start_binary(data.path(), &envs);
    let _restarted = Running(restarted);
    let (status, health) = get(&client, &address, "/healthz").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["database"], "ok", "{health}");

    // Every success response is stored exactly as it was reported.
    let mut reported_uploads = 0;
    let mut reported_evaluations = 0;
    let mut lost = Vec::new();
    for ((kind, i), outcome) in &outcomes {
        let Outcome::Answered(200, body) = outcome else {
            continue;
        };
        assert_eq!(body["status"], "success", "{body}");
        if *kind == 0 {
            reported_uploads += 1;
            let id = body["submission_id"].as_str().unwrap();
            let (status, stored) = get(&client, &address, &format!("/student-answers/{id}")).await;
            if status != 200 {
                lost.push(format!("upload {i}: {stored}"));
                continue;
            }
            assert_eq!(pairs_of(&stored["qa_pairs"]), pairs_of(&body["qa_pairs"]));
            assert_eq!(stored["images"].as_array().unwrap().len(), 1);
            assert_eq!(stored["extracted_text"], body["extracted_text"]);
        } else {
            reported_evaluations += 1;
            let id = body["evaluation_id"].as_str().unwrap();
            let (status, stored) = get(&client, &address, &format!("/evaluations/{id}")).await;
            if status != 200 {
                lost.push(format!("evaluation {i}: {stored}"));
                continue;
            }
            let items = stored["items"].as_array().unwrap();
            let reported = body["evaluation"].as_array().unwrap();
            assert_eq!(items.len(), reported.len());
            for (item, sent) in items.iter().zip(reported) {
                assert_eq!(item["question_number"], sent["question_number"]);
                assert_eq!(item["marks_awarded"], sent["marks_awarded"]);
            }
            assert_eq!(stored["final_score"], body["final_score"]);
        }
    }

    // Nothing half-written: every stored submission has its image and both answers, every
    // stored evaluation all its questions with a score that adds up.
    let (_, submissions) = get(&client, &address, "/student-answers?limit=1000").await;
    let submissions = submissions.as_array().unwrap();
    for summary in submissions {
        let id = summary["submission_id"].as_str().unwrap();
        let (_, stored) = get(&client, &address, &format!("/student-answers/{id}")).await;
        assert_eq!(stored["images"].as_array().unwrap().len(), 1, "{stored}");
        assert_eq!(summary["image_count"], 1);
        let numbers: BTreeSet<String> = pairs_of(&stored["qa_pairs"])
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(
            numbers,
            BTreeSet::from(["1.a".to_string(), "1.b".to_string()]),
            "{stored}"
        );
        assert_eq!(summary["question_count"], 2);
    }
    let (_, evaluations) = get(&client, &address, "/evaluations?limit=1000").await;
    let evaluations = evaluations.as_array().unwrap();
    for summary in evaluations {
        let id = summary["evaluation_id"].as_str().unwrap();
        let (_, stored) = get(&client, &address, &format!("/evaluations/{id}")).await;
        let items = stored["items"].as_array().unwrap();
        assert_eq!(items.len(), QUESTIONS.len(), "{stored}");
        let sum: f64 = items
            .iter()
            .filter_map(|i| i["marks_awarded"].as_f64())
            .sum();
        assert_eq!(stored["final_score"].as_f64().unwrap(), sum);
    }
    assert!(
        lost.is_empty(),
        "answered with 200 but not stored: {lost:?}"
    );
    assert!(submissions.len() >= reported_uploads);
    assert!(evaluations.len() >= reported_evaluations);

    // And it works as before.
    let (status, again) = {
        let response = client
            .post(format!("http://{address}/evaluate-answers"))
            .json(&evaluate_request(0))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().await.unwrap(),
        )
    };
    assert_eq!(status, 200, "{again}");

    eprintln!(
        "crash: uploads {} sent, {} answered before the kill ({reported_uploads} with 200), {} in flight; {} stored after restart; lost 0",
        launched[0],
        answered_at_kill[0],
        in_flight[0],
        submissions.len(),
    );
    eprintln!(
        "crash: evaluations {} sent, {} answered before the kill ({reported_evaluations} with 200), {} in flight; {} stored after restart; lost 0",
        launched[1],
        answered_at_kill[1],
        in_flight[1],
        evaluations.len(),
    );
}
