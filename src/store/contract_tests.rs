//! One test story for every backend: each scenario runs against SQLite in a temp dir and
//! against PostgreSQL in a fresh schema ([`PostgresSchema`]; skipped, with a notice, when
//! `EXAMINER_TEST_POSTGRES_URL` is unset).

use std::sync::Arc;

use super::testing::PostgresSchema;
use super::{open_with, Filter, Store, StoreError, StoreOptions, Written};
use crate::model::{
    ApiKey, Catalog, Course, EvaluationItem, Exam, IdempotencyState, ItemStatus, NewEvaluation,
    Question, QuestionPaper, Role, StoredQaPair, Submission, SubmissionImage, User,
};
use crate::segment::QuestionNumber;
use chrono::{SubsecRound, Utc};

/// A store under test and what must be cleaned up after it.
struct Backend {
    store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
    schema: Option<PostgresSchema>,
}

impl Backend {
    async fn sqlite(options: &StoreOptions) -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("examiner.db").display());
        Backend {
            store: open_with(&url, options).await.unwrap(),
            _dir: Some(dir),
            schema: None,
        }
    }

    async fn postgres(options: &StoreOptions) -> Option<Backend> {
        let schema = PostgresSchema::create().await?;
        Some(Backend {
            store: open_with(&schema.url, options).await.unwrap(),
            _dir: None,
            schema: Some(schema),
        })
    }

    async fn finish(self) {
        drop(self.store);
        if let Some(schema) = self.schema {
            schema.drop_schema().await;
        }
    }
}

/// Runs `$story(store)` as one test per backend.
macro_rules! on_every_backend {
    ($story:ident) => {
        on_every_backend!($story, StoreOptions::default());
    };
    ($story:ident, $options:expr) => {
        mod $story {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let backend = Backend::sqlite(&$options).await;
                super::$story(backend.store.as_ref()).await;
                backend.finish().await;
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(backend) = Backend::postgres(&$options).await {
                    super::$story(backend.store.as_ref()).await;
                    backend.finish().await;
                }
            }
        }
    };
}

/// Options with the memo bounded at `entries`.
fn memo_bound(entries: u64) -> StoreOptions {
    StoreOptions {
        memo_max_entries: entries,
        ..StoreOptions::default()
    }
}

fn api_key(key_id: &str, role: Role, user_id: Option<&str>) -> ApiKey {
    ApiKey {
        key_id: key_id.into(),
        role,
        user_id: user_id.map(str::to_string),
        label: None,
        created_at: Utc::now().trunc_subsecs(6),
        revoked: false,
    }
}

fn course(code: &str) -> Course {
    Course {
        course_code: code.into(),
        course_name: format!("Course {code}"),
        description: Some("a course".into()),
    }
}

fn exam(code: &str, course_code: &str) -> Exam {
    Exam {
        exam_code: code.into(),
        course_code: course_code.into(),
        exam_name: format!("Exam {code}"),
        total_exam_marks: Some(20.0),
    }
}

fn number(text: &str) -> QuestionNumber {
    QuestionNumber::parse(text).unwrap()
}

fn paper(code: &str, exam_code: &str) -> QuestionPaper {
    QuestionPaper {
        question_paper_code: code.into(),
        exam_code: exam_code.into(),
        title: Some("Paper".into()),
        marks_step: Some(0.5),
        questions: vec![
            Question {
                question_number: number("1.a"),
                question_text: Some("Define going concern.".into()),
                standard_answer: "A business continues to operate.".into(),
                total_marks: 5.0,
            },
            Question {
                question_number: number("2"),
                question_text: None,
                standard_answer: "Assets equal liabilities plus capital.".into(),
                total_marks: 15.0,
            },
        ],
    }
}

fn user(id: &str) -> User {
    User {
        user_id: id.into(),
        name: Some(format!("Student {id}")),
        email: None,
    }
}

async fn catalog(store: &dyn Store) {
    assert_eq!(
        store.put_course(&course("C1")).await.unwrap(),
        Written::Created
    );
    assert_eq!(
        store.put_course(&course("C1")).await.unwrap(),
        Written::Unchanged
    );
    let mut changed = course("C1");
    changed.course_name = "Renamed".into();
    assert!(matches!(
        store.put_course(&changed).await,
        Err(StoreError::Conflict { kind: "course", .. })
    ));
    assert!(matches!(
        store.put_exam(&exam("E1", "NO-SUCH-COURSE")).await,
        Err(StoreError::MissingLink { kind: "course", .. })
    ));
    assert_eq!(
        store.put_exam(&exam("E1", "C1")).await.unwrap(),
        Written::Created
    );
    assert!(matches!(
        store
            .put_question_paper(&paper("QP1", "NO-SUCH-EXAM"))
            .await,
        Err(StoreError::MissingLink { kind: "exam", .. })
    ));
    assert_eq!(
        store.put_question_paper(&paper("QP1", "E1")).await.unwrap(),
        Written::Created
    );
    assert_eq!(
        store.put_question_paper(&paper("QP1", "E1")).await.unwrap(),
        Written::Unchanged
    );
    let mut other = paper("QP1", "E1");
    other.questions[1].total_marks = 10.0;
    assert!(matches!(
        store.put_question_paper(&other).await,
        Err(StoreError::Conflict {
            kind: "question paper",
            ..
        })
    ));
    assert_eq!(store.put_user(&user("U1")).await.unwrap(), Written::Created);

    assert_eq!(store.get_course("C1").await.unwrap(), Some(course("C1")));
    assert_eq!(store.get_exam("E1").await.unwrap(), Some(exam("E1", "C1")));
    assert_eq!(
        store.get_question_paper("QP1").await.unwrap(),
        Some(paper("QP1", "E1"))
    );
    assert_eq!(store.get_user("U1").await.unwrap(), Some(user("U1")));
    assert_eq!(store.get_course("C9").await.unwrap(), None);
    assert_eq!(store.get_question_paper("QP9").await.unwrap(), None);
    assert_eq!(store.list_courses().await.unwrap(), vec![course("C1")]);
    assert_eq!(store.list_exams(Some("C1")).await.unwrap().len(), 1);
    assert!(store.list_exams(Some("C9")).await.unwrap().is_empty());
    assert_eq!(
        store.list_question_papers(None).await.unwrap(),
        vec![paper("QP1", "E1")]
    );
    assert_eq!(store.list_users().await.unwrap(), vec![user("U1")]);

    // An import is one transaction: a conflict anywhere stores none of it.
    let mut import = Catalog {
        courses: vec![course("C2"), course("C1")],
        exams: vec![exam("E2", "C2")],
        question_papers: vec![paper("QP2", "E2")],
        users: vec![user("U2")],
    };
    import.courses[1].course_name = "Renamed".into();
    assert!(store.import_catalog(&import).await.is_err());
    assert_eq!(store.get_course("C2").await.unwrap(), None);
    assert_eq!(store.get_question_paper("QP2").await.unwrap(), None);
    import.courses[1] = course("C1");
    assert_eq!(store.import_catalog(&import).await.unwrap(), 4);
    assert_eq!(store.import_catalog(&import).await.unwrap(), 0);
    assert_eq!(
        store.list_question_papers(Some("E2")).await.unwrap().len(),
        1
    );
}
on_every_backend!(catalog);

/// The exam and the paper read together are what the two reads give apart: each absent or
/// present on its own, the questions in the paper's order, a paper without questions, and a
/// paper of another exam as it is (the workflows refuse that pair, not the store).
async fn exam_and_paper_read_together(store: &dyn Store) {
    assert_eq!(
        store.get_exam_and_paper("E1", "QP1").await.unwrap(),
        (None, None)
    );
    store.put_course(&course("C1")).await.unwrap();
    store.put_exam(&exam("E1", "C1")).await.unwrap();
    store.put_exam(&exam("E2", "C1")).await.unwrap();
    assert_eq!(
        store.get_exam_and_paper("E1", "QP1").await.unwrap(),
        (Some(exam("E1", "C1")), None)
    );
    let mut unordered = paper("QP1", "E1");
    unordered
        .questions
        .insert(0, unordered.questions[1].clone());
    unordered.questions[0].question_number = number("3");
    store.put_question_paper(&unordered).await.unwrap();
    let mut empty = paper("QP2", "E2");
    empty.questions.clear();
    empty.title = None;
    empty.marks_step = None;
    store.put_question_paper(&empty).await.unwrap();

    assert_eq!(
        store.get_exam_and_paper("E1", "QP1").await.unwrap(),
        (Some(exam("E1", "C1")), Some(unordered.clone()))
    );
    assert_eq!(
        store.get_exam_and_paper("E9", "QP1").await.unwrap(),
        (None, Some(unordered.clone()))
    );
    assert_eq!(
        store.get_exam_and_paper("E1", "QP2").await.unwrap(),
        (Some(exam("E1", "C1")), Some(empty.clone()))
    );
    for (exam_code, paper_code) in [("E1", "QP1"), ("E2", "QP2"), ("E1", "QP9")] {
        assert_eq!(
            store
                .get_exam_and_paper(exam_code, paper_code)
                .await
                .unwrap(),
            (
                store.get_exam(exam_code).await.unwrap(),
                store.get_question_paper(paper_code).await.unwrap()
            ),
            "{exam_code} {paper_code}"
        );
    }
}
on_every_backend!(exam_and_paper_read_together);

/// Codes list in the order of their bytes on every backend, whatever the database's
/// collation: upper case before lower, punctuation where its byte puts it.
async fn codes_list_in_byte_order(store: &dyn Store) {
    let codes = ["b", "C", "a-2", "a1", "A", "_x", "Z"];
    for code in codes {
        store.put_course(&course(code)).await.unwrap();
        store.put_user(&user(code)).await.unwrap();
    }
    let mut expected: Vec<&str> = codes.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let listed: Vec<String> = store
        .list_courses()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.course_code)
        .collect();
    assert_eq!(listed, expected);
    let listed: Vec<String> = store
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user_id)
        .collect();
    assert_eq!(listed, expected);
}
on_every_backend!(codes_list_in_byte_order);

/// The database here may well be created with a byte-order collation, under which the
/// story above passes anyway; so the schema itself is checked.
#[tokio::test]
async fn postgres_text_columns_compare_as_bytes() {
    let Some(backend) = Backend::postgres(&StoreOptions::default()).await else {
        return;
    };
    let schema = backend.schema.as_ref().unwrap();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url)
        .await
        .unwrap();
    let other: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, collation_name::text
           FROM information_schema.columns
          WHERE table_schema = current_schema() AND data_type = 'text'
            AND table_name NOT LIKE '\\_sqlx%'
            AND collation_name IS DISTINCT FROM 'C'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(other.is_empty(), "columns not in byte order: {other:?}");
    drop(conn);
    backend.finish().await;
}

fn submission(id: &str, user_id: &str, at_offset_secs: i64) -> Submission {
    Submission {
        submission_id: id.into(),
        user_id: user_id.into(),
        course_code: "C1".into(),
        exam_code: "E1".into(),
        question_paper_code: "QP1".into(),
        images: vec![
            SubmissionImage {
                image_id: format!("{id}-img"),
                image_url: "https://example.org/page1.png".into(),
                content_sha256: "ab".repeat(32),
                media_type: "image/png".into(),
                byte_size: 1234,
                width: 800,
                height: 600,
                ocr_text: "1.a going concern\n2 assets".into(),
                ocr_confidence: 0.91,
                ocr_engine: "tesseract".into(),
                ocr_memo_key: Some(format!("tesseract:{}", "ab".repeat(32))),
                page_count: 1,
            },
            SubmissionImage {
                // A scanned PDF: its page count comes back as stored.
                image_id: format!("{id}-scan"),
                image_url: "https://example.org/scan.pdf".into(),
                content_sha256: "cd".repeat(32),
                media_type: "application/pdf".into(),
                byte_size: 98765,
                width: 2480,
                height: 3508,
                ocr_text: "3 liabilities".into(),
                ocr_confidence: 0.88,
                ocr_engine: "tesseract".into(),
                ocr_memo_key: Some(format!("tesseract:{}", "cd".repeat(32))),
                page_count: 3,
            },
        ],
        extracted_text: "1.a going concern\n2 assets".into(),
        unassigned_text: String::new(),
        qa_pairs: vec![
            StoredQaPair {
                question_number: number("1.a"),
                answer: "going concern".into(),
                ocr_confidence: Some(0.91),
                ocr_engine: Some("tesseract".into()),
                low_ocr_confidence: false,
            },
            StoredQaPair {
                question_number: number("2"),
                answer: "assets".into(),
                ocr_confidence: None,
                ocr_engine: None,
                low_ocr_confidence: true,
            },
        ],
        // Stored to the microsecond.
        created_at: Utc::now().trunc_subsecs(6) + chrono::Duration::seconds(at_offset_secs),
    }
}

/// Course C1, exam E1 and paper QP1, with these users.
fn one_paper(users: Vec<User>) -> Catalog {
    Catalog {
        courses: vec![course("C1")],
        exams: vec![exam("E1", "C1")],
        question_papers: vec![paper("QP1", "E1")],
        users,
    }
}

async fn submissions(store: &dyn Store) {
    store.import_catalog(&one_paper(vec![])).await.unwrap();
    let first = submission("S1", "U7", 0);
    let second = submission("S2", "U7", 1);
    store.insert_submission(&first, "digest-1").await.unwrap();
    store.insert_submission(&second, "digest-2").await.unwrap();
    // The user was registered by the upload.
    assert_eq!(store.get_user("U7").await.unwrap().unwrap().user_id, "U7");
    assert_eq!(
        store.get_submission("S1").await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.get_submission("S9").await.unwrap(), None);
    assert_eq!(
        store.latest_submission("U7", "QP1").await.unwrap(),
        Some(second.clone())
    );
    assert_eq!(store.latest_submission("U8", "QP1").await.unwrap(), None);
    assert_eq!(
        store
            .find_submission_by_images("U7", "QP1", "digest-1")
            .await
            .unwrap(),
        Some(first)
    );
    assert_eq!(
        store
            .find_submission_by_images("U7", "QP1", "digest-3")
            .await
            .unwrap(),
        None
    );
    let listed = store
        .list_submissions(&Filter {
            user_id: Some("U7".into()),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|s| (
                s.submission_id.as_str(),
                s.image_count,
                s.page_count,
                s.question_count
            ))
            .collect::<Vec<_>>(),
        // An image and a PDF of three pages each.
        vec![("S2", 2, 4, 2), ("S1", 2, 4, 2)]
    );
    let limited = store
        .list_submissions(&Filter {
            limit: 1,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    // A duplicate id stores nothing more, not even its images.
    assert!(store
        .insert_submission(&submission("S1", "U7", 5), "digest-9")
        .await
        .is_err());
    assert_eq!(
        store
            .find_submission_by_images("U7", "QP1", "digest-9")
            .await
            .unwrap(),
        None
    );
}
on_every_backend!(submissions);

fn evaluation(user_id: &str, items: usize) -> NewEvaluation {
    NewEvaluation {
        user_id: user_id.into(),
        course_code: "C1".into(),
        exam_code: "E1".into(),
        question_paper_code: "QP1".into(),
        submission_id: None,
        grader: "llm".into(),
        total_exam_marks: 20.0,
        final_score: 3.5,
        status: "partial".into(),
        items: (0..items)
            .map(|n| EvaluationItem {
                question_number: number(&format!("{}", n + 1)),
                question_text: (n % 2 == 0)
                    .then(|| format!("What is asked in question {}?", n + 1)),
                student_answer: format!("answer {n} with 'quotes' and \"doubles\" and ünïcode"),
                standard_answer: "standard".into(),
                total_marks: 5.0,
                marks_awarded: (n % 2 == 0).then_some(3.5),
                llm_evaluation: format!("feedback {n}"),
                reasoning: None,
                status: if n % 2 == 0 {
                    ItemStatus::Graded
                } else {
                    ItemStatus::Failed
                },
                error: (n % 2 == 1).then(|| "the evaluator timed out".to_string()),
                flags: vec!["possible_prompt_injection".into()],
                final_stage: Some("arbiter".into()),
                stages: serde_json::json!([{"role": "evaluator", "marks": n}]).into(),
            })
            .collect(),
        replaces_version: None,
    }
}

async fn evaluations(store: &dyn Store) {
    let first = store.insert_evaluation(evaluation("U1", 3)).await.unwrap();
    let second = store.insert_evaluation(evaluation("U1", 1)).await.unwrap();
    let other = store.insert_evaluation(evaluation("U2", 0)).await.unwrap();
    assert_eq!((first.version, second.version, other.version), (1, 2, 1));
    let read = store
        .get_evaluation(&first.evaluation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read.items, evaluation("U1", 3).items);
    assert_eq!(read.status, "partial");
    assert_eq!(read.created_at, first.created_at);
    assert_eq!(store.get_evaluation("nope").await.unwrap(), None);
    let listed = store
        .list_evaluations(&Filter {
            user_id: Some("U1".into()),
            question_paper_code: Some("QP1".into()),
            limit: 10,
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![2, 1]
    );
    // Users graded for the first time are registered.
    assert!(store.get_user("U2").await.unwrap().is_some());
    // The first version's time, whatever came after it.
    let at = |user: &'static str, paper: &'static str| store.first_evaluated_at(user, paper);
    assert_eq!(at("U1", "QP1").await.unwrap(), Some(first.created_at));
    assert_eq!(at("U2", "QP1").await.unwrap(), Some(other.created_at));
    assert_eq!(at("U1", "QP9").await.unwrap(), None);
    assert_eq!(at("U9", "QP1").await.unwrap(), None);

    // Concurrent evaluations of one paper each get their own version.
    let writes = (0..8).map(|_| store.insert_evaluation(evaluation("U3", 2)));
    assert_eq!(versions_stored(writes).await, (1..=8).collect::<Vec<_>>());
}

/// The versions evaluations stored at once were given, in order.
async fn versions_stored(
    writes: impl Iterator<
        Item = impl std::future::Future<Output = Result<crate::model::EvaluationRecord, StoreError>>,
    >,
) -> Vec<i64> {
    let mut versions: Vec<i64> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|stored| stored.unwrap().version)
        .collect();
    versions.sort_unstable();
    versions
}
on_every_backend!(evaluations);

/// A retry or a review is made from one version and is stored only while that version is
/// the newest: of several made from the same version at once, one is stored.
async fn changes_are_stored_only_on_the_newest_version(store: &dyn Store) {
    let first = store.insert_evaluation(evaluation("U1", 1)).await.unwrap();
    let mut change = evaluation("U1", 1);
    change.replaces_version = Some(first.version);
    let second = store.insert_evaluation(change.clone()).await.unwrap();
    assert_eq!(second.version, 2);
    let other = store.insert_evaluation(evaluation("U2", 1)).await.unwrap();

    match store.insert_evaluation(change).await {
        Err(StoreError::Superseded {
            based_on: 1,
            newest_version: 2,
            newest_id,
        }) => assert_eq!(newest_id, second.evaluation_id),
        other => panic!("expected Superseded, got {other:?}"),
    }

    let mut from_second = evaluation("U1", 1);
    from_second.replaces_version = Some(2);
    let outcomes =
        futures::future::join_all((0..6).map(|_| store.insert_evaluation(from_second.clone())))
            .await;
    let stored: Vec<i64> = outcomes
        .iter()
        .filter_map(|outcome| outcome.as_ref().ok().map(|e| e.version))
        .collect();
    assert_eq!(stored, vec![3], "{outcomes:?}");
    for outcome in &outcomes {
        if let Err(error) = outcome {
            assert!(
                matches!(
                    error,
                    StoreError::Superseded {
                        based_on: 2,
                        newest_version: 3,
                        ..
                    }
                ),
                "{error:?}"
            );
        }
    }

    // Nothing of a refused change was kept; `latest` lists each student's newest only.
    let all = Filter {
        limit: 100,
        ..Filter::default()
    };
    let versions = |listed: Vec<crate::model::EvaluationSummary>| {
        let mut found: Vec<(String, i64)> =
            listed.into_iter().map(|e| (e.user_id, e.version)).collect();
        found.sort();
        found
    };
    assert_eq!(
        versions(store.list_evaluations(&all).await.unwrap()),
        vec![
            ("U1".into(), 1),
            ("U1".into(), 2),
            ("U1".into(), 3),
            ("U2".into(), other.version)
        ]
    );
    let latest = Filter {
        latest: true,
        ..all
    };
    assert_eq!(
        versions(store.list_evaluations(&latest).await.unwrap()),
        vec![("U1".into(), 3), ("U2".into(), 1)]
    );
}
on_every_backend!(changes_are_stored_only_on_the_newest_version);

/// Moderation reads each student's newest evaluation, and for reviewed questions the marks
/// that stood before the first review.
async fn moderation_items_come_from_newest_versions(store: &dyn Store) {
    store.insert_evaluation(evaluation("U2", 2)).await.unwrap();
    store.insert_evaluation(evaluation("U1", 1)).await.unwrap();
    let mut reviewed = evaluation("U1", 2);
    reviewed.items[0].final_stage = Some("examiner".into());
    reviewed.items[0].marks_awarded = Some(1.0);
    reviewed.items[0].stages = serde_json::json!([
        {"role": "evaluator", "marks": 4.0},
        {"role": "examiner", "marks": 2.0, "previous_marks": 3.5,
         "settled_flags": ["regrade_requested"]},
        {"role": "examiner", "marks": 1.0, "previous_marks": 2.0}
    ])
    .into();
    reviewed.items[1].final_stage = Some("examiner".into());
    reviewed.items[1].stages =
        serde_json::json!([{"role": "examiner", "previous_marks": null}]).into();
    store.insert_evaluation(reviewed).await.unwrap();
    let items = store.moderation_items("QP1").await.unwrap();
    let seen: Vec<String> = items
        .iter()
        .map(|i| {
            format!(
                "{} {} reviewed={} grader={:?} marks={:?}",
                i.user_id, i.question_number, i.reviewed, i.grader_marks, i.marks_awarded
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            "U1 1 reviewed=true grader=Some(3.5) marks=Some(1.0)",
            "U1 2 reviewed=true grader=None marks=None",
            "U2 1 reviewed=false grader=None marks=Some(3.5)",
            "U2 2 reviewed=false grader=None marks=None",
        ]
    );
    assert_eq!(items[0].review_reasons, vec!["regrade_requested"]);
    assert!(items[1].review_reasons.is_empty());
    assert_eq!(items[2].flags, vec!["possible_prompt_injection"]);
    assert!(store.moderation_items("NOPE").await.unwrap().is_empty());
}
on_every_backend!(moderation_items_come_from_newest_versions);

/// Erasing a user removes every record about them, keeps everyone else's, and leaves the
/// user free to come back as new.
async fn erasing_a_user_removes_everything_about_them(store: &dyn Store) {
    store.import_catalog(&one_paper(vec![])).await.unwrap();
    let person = |id: &str| User {
        user_id: id.into(),
        name: Some(format!("{id} Name")),
        email: Some(format!("{id}@example.org")),
    };
    store.put_user(&person("U1")).await.unwrap();
    store.put_user(&person("U2")).await.unwrap();
    // Each page's text and each stage's reply memoised under a key of its own; the user's
    // two evaluations share their replies' keys, so those are memoised twice.
    for (id, user) in [("S1", "U1"), ("S2", "U1"), ("S3", "U2")] {
        let mut stored = submission(id, user, 0);
        stored.images[0].ocr_memo_key = Some(format!("ocr-{id}"));
        store.insert_submission(&stored, id).await.unwrap();
        store
            .cache_put(super::OCR_MEMO, &format!("ocr-{id}"), "page text")
            .await
            .unwrap();
    }
    let mut evaluation_ids = Vec::new();
    for user in ["U1", "U1", "U2"] {
        let mut new = evaluation(user, 2);
        for (n, item) in new.items.iter_mut().enumerate() {
            item.stages = serde_json::json!([
                {"role": "evaluator", "memo_key": format!("llm-{user}-{n}")},
                {"role": "examiner"}
            ])
            .into();
            store
                .cache_put(super::LLM_MEMO, &format!("llm-{user}-{n}"), "{}")
                .await
                .unwrap();
        }
        let stored = store.insert_evaluation(new).await.unwrap();
        evaluation_ids.push(stored.evaluation_id);
    }
    store
        .cache_put(super::LLM_MEMO, "unrelated", "{}")
        .await
        .unwrap();
    for (key_id, role, user) in [
        ("K-U1", Role::Student, Some("U1")),
        ("K-U2", Role::Student, Some("U2")),
        ("K-EX", Role::Examiner, None),
    ] {
        store
            .create_api_key(&api_key(key_id, role, user), &format!("hash-{key_id}"))
            .await
            .unwrap();
    }
    // Replayable responses: about U1 by an examiner's key and by U1's own key; about U2.
    for (scope, key, user) in [
        ("K-EX", "r1", "U1"),
        ("K-U1", "r2", "U1"),
        ("K-EX", "r3", "U2"),
    ] {
        store
            .idempotency_begin(scope, "/upload-exam-answers", key, "h", 600)
            .await
            .unwrap();
        store
            .idempotency_complete(scope, "/upload-exam-answers", key, 200, "{}", user)
            .await
            .unwrap();
    }

    let erased = store.erase_user("U1").await.unwrap();
    assert_eq!(
        erased,
        crate::model::Erasure {
            user_id: "U1".into(),
            user_record: true,
            submissions: 2,
            evaluations: 2,
            api_keys: vec!["K-U1".into()],
            replayable_responses: 2,
            memoised_results: 4,
        }
    );
    for (namespace, key) in [
        (super::OCR_MEMO, "ocr-S1"),
        (super::OCR_MEMO, "ocr-S2"),
        (super::LLM_MEMO, "llm-U1-0"),
        (super::LLM_MEMO, "llm-U1-1"),
    ] {
        assert_eq!(
            store.cache_get(namespace, key).await.unwrap(),
            None,
            "{key}"
        );
    }
    for (namespace, key) in [
        (super::OCR_MEMO, "ocr-S3"),
        (super::LLM_MEMO, "llm-U2-0"),
        (super::LLM_MEMO, "llm-U2-1"),
        (super::LLM_MEMO, "unrelated"),
    ] {
        assert!(
            store.cache_get(namespace, key).await.unwrap().is_some(),
            "{key}"
        );
    }

    assert_eq!(store.get_user("U1").await.unwrap(), None);
    assert_eq!(store.get_submission("S1").await.unwrap(), None);
    assert_eq!(store.get_submission("S2").await.unwrap(), None);
    assert_eq!(
        store.get_evaluation(&evaluation_ids[0]).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_evaluation(&evaluation_ids[1]).await.unwrap(),
        None
    );
    let of_u1 = Filter {
        user_id: Some("U1".into()),
        limit: 100,
        ..Filter::default()
    };
    assert!(store.list_submissions(&of_u1).await.unwrap().is_empty());
    assert!(store.list_evaluations(&of_u1).await.unwrap().is_empty());
    assert!(store
        .moderation_items("QP1")
        .await
        .unwrap()
        .iter()
        .all(|i| i.user_id == "U2"));
    assert_eq!(store.find_api_key("hash-K-U1").await.unwrap(), None);
    let replay = |scope: &'static str, key: &'static str| {
        store.idempotency_begin(scope, "/upload-exam-answers", key, "h", 600)
    };
    assert_eq!(replay("K-EX", "r1").await.unwrap(), IdempotencyState::Fresh);
    assert_eq!(replay("K-U1", "r2").await.unwrap(), IdempotencyState::Fresh);

    // Everyone else's records are as they were.
    assert_eq!(store.get_user("U2").await.unwrap(), Some(person("U2")));
    assert!(store.get_submission("S3").await.unwrap().is_some());
    assert!(store
        .get_evaluation(&evaluation_ids[2])
        .await
        .unwrap()
        .is_some());
    assert!(store.find_api_key("hash-K-U2").await.unwrap().is_some());
    assert!(store.find_api_key("hash-K-EX").await.unwrap().is_some());
    assert!(matches!(
        replay("K-EX", "r3").await.unwrap(),
        IdempotencyState::Completed { .. }
    ));

    // Nothing is left to erase; the user can come back and is registered as new.
    assert!(store.erase_user("U1").await.unwrap().is_empty());
    let back = store.insert_evaluation(evaluation("U1", 1)).await.unwrap();
    assert_eq!(back.version, 1);
    assert_eq!(
        store.get_user("U1").await.unwrap().map(|u| u.name),
        Some(None),
        "registered afresh, without the erased name"
    );
}
on_every_backend!(erasing_a_user_removes_everything_about_them);

/// Follows a listing page by page: each page goes on after the last id of the one before.
async fn all_pages<T>(
    filter: &Filter,
    list: impl AsyncFn(&Filter) -> Result<Vec<T>, StoreError>,
    id: impl Fn(&T) -> String,
) -> Vec<String> {
    let mut seen = Vec::new();
    let mut filter = filter.clone();
    loop {
        let page = list(&filter).await.unwrap();
        seen.extend(page.iter().map(&id));
        if (page.len() as i64) < filter.limit {
            return seen;
        }
        filter.after = page.last().map(&id);
    }
}

/// Listings page through every record once, newest first, and filter evaluations by status
/// and by the flags of their questions.
async fn listings_page_and_filter(store: &dyn Store) {
    store.import_catalog(&one_paper(vec![])).await.unwrap();
    let mut inserted = Vec::new();
    for n in 0..7 {
        let mut new = evaluation(if n % 2 == 0 { "U1" } else { "U2" }, 2);
        new.status = if n < 5 { "success" } else { "partial" }.into();
        for item in &mut new.items {
            item.flags = match n {
                1 => vec!["needs_review".into()],
                2 => vec!["needs_review".into(), "low_ocr_confidence".into()],
                // A flag whose name only differs where `_` would match any character.
                3 => vec!["needsXreview".into()],
                _ => Vec::new(),
            };
        }
        inserted.push(store.insert_evaluation(new).await.unwrap().evaluation_id);
    }
    let newest_first: Vec<String> = inserted.iter().rev().cloned().collect();
    let evaluations = async |f: &Filter| store.list_evaluations(f).await;
    let by_id = |e: &crate::model::EvaluationSummary| e.evaluation_id.clone();
    let pages = |limit| Filter {
        limit,
        ..Filter::default()
    };
    for limit in [1, 2, 3, 7, 100] {
        assert_eq!(
            all_pages(&pages(limit), evaluations, by_id).await,
            newest_first,
            "pages of {limit}"
        );
    }
    let of_user = Filter {
        user_id: Some("U1".into()),
        ..pages(2)
    };
    let of_u1: Vec<String> = newest_first.iter().step_by(2).cloned().collect();
    assert_eq!(all_pages(&of_user, evaluations, by_id).await, of_u1);

    // A cursor outside the listing is refused, not taken as "nothing more".
    for (filter, after) in [
        (pages(2), "no-such-id"),
        (of_user.clone(), inserted[1].as_str()),
    ] {
        let err = store
            .list_evaluations(&Filter {
                after: Some(after.into()),
                ..filter
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::UnknownCursor {
                    kind: "evaluation",
                    ..
                }
            ),
            "{err}"
        );
    }

    let flagged = Filter {
        flag: Some("needs_review".into()),
        ..pages(1)
    };
    assert_eq!(
        all_pages(&flagged, evaluations, by_id).await,
        vec![inserted[2].clone(), inserted[1].clone()]
    );
    let listed = store.list_evaluations(&pages(100)).await.unwrap();
    let flags_of = |id: &str| {
        listed
            .iter()
            .find(|e| e.evaluation_id == id)
            .unwrap()
            .flags
            .clone()
    };
    assert_eq!(
        flags_of(&inserted[2]),
        ["low_ocr_confidence", "needs_review"]
    );
    assert_eq!(flags_of(&inserted[1]), ["needs_review"]);
    assert!(flags_of(&inserted[0]).is_empty());
    let partial = Filter {
        status: Some("partial".into()),
        ..pages(100)
    };
    assert_eq!(
        all_pages(&partial, evaluations, by_id).await,
        vec![inserted[6].clone(), inserted[5].clone()]
    );

    let first = submission("S1", "U7", 0);
    let mut tied = submission("S2", "U7", 0);
    tied.created_at = first.created_at;
    for (n, record) in [first, tied, submission("S3", "U7", 1)].iter().enumerate() {
        store
            .insert_submission(record, &format!("d{n}"))
            .await
            .unwrap();
    }
    let submissions = async |f: &Filter| store.list_submissions(f).await;
    let by_submission = |s: &crate::model::SubmissionSummary| s.submission_id.clone();
    // S1 and S2 share a timestamp: the id breaks the tie, so neither is skipped or repeated.
    assert_eq!(
        all_pages(&pages(1), submissions, by_submission).await,
        ["S3", "S2", "S1"]
    );
    let err = store
        .list_submissions(&Filter {
            user_id: Some("U8".into()),
            after: Some("S1".into()),
            ..pages(1)
        })
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        StoreError::UnknownCursor {
            kind: "submission",
            ..
        }
    ));
}
on_every_backend!(listings_page_and_filter);

/// The marks sheet holds each student's newest evaluation of the paper, by user id, with
/// every question's marks and the flags raised.
async fn marks_sheet(store: &dyn Store) {
    store.import_catalog(&one_paper(vec![])).await.unwrap();
    assert!(store.marks_sheet("QP1").await.unwrap().is_empty());
    store.insert_evaluation(evaluation("U2", 2)).await.unwrap();
    let newest_u2 = store.insert_evaluation(evaluation("U2", 3)).await.unwrap();
    let mut clean = evaluation("U1", 1);
    clean.items[0].flags.clear();
    let u1 = store.insert_evaluation(clean).await.unwrap();
    let mut elsewhere = evaluation("U3", 1);
    elsewhere.question_paper_code = "QP9".into();
    store.insert_evaluation(elsewhere).await.unwrap();

    let sheet = store.marks_sheet("QP1").await.unwrap();
    let rows: Vec<(&str, i64, usize)> = sheet
        .iter()
        .map(|r| {
            (
                r.evaluation.evaluation_id.as_str(),
                r.evaluation.version,
                r.marks.len(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (u1.evaluation_id.as_str(), 1, 1),
            (newest_u2.evaluation_id.as_str(), 2, 3)
        ]
    );
    let marks: Vec<(String, Option<f64>)> = sheet[1]
        .marks
        .iter()
        .map(|m| (m.question_number.to_string(), m.marks_awarded))
        .collect();
    assert_eq!(
        marks,
        [
            ("1".to_string(), Some(3.5)),
            ("2".to_string(), None),
            ("3".to_string(), Some(3.5))
        ]
    );
    assert!(sheet[0].evaluation.flags.is_empty());
    assert_eq!(sheet[1].evaluation.flags, ["possible_prompt_injection"]);
    assert_eq!(store.marks_sheet("QP9").await.unwrap().len(), 1);
}
on_every_backend!(marks_sheet);

async fn memo(store: &dyn Store) {
    assert_eq!(store.cache_get("llm", "k1").await.unwrap(), None);
    store.cache_put("llm", "k1", "v1").await.unwrap();
    assert_eq!(
        store.cache_get("llm", "k1").await.unwrap().as_deref(),
        Some("v1")
    );
    // Namespaces are apart; a later value supersedes, also within one batch.
    assert_eq!(store.cache_get("ocr", "k1").await.unwrap(), None);
    let batch = vec![
        ("k1".to_string(), "v1-new".to_string()),
        ("k2".to_string(), "first".to_string()),
        ("k2".to_string(), "second".to_string()),
    ];
    store.cache_put_many("llm", &batch).await.unwrap();
    assert_eq!(
        store.cache_get("llm", "k1").await.unwrap().as_deref(),
        Some("v1-new")
    );
    assert_eq!(
        store.cache_get("llm", "k2").await.unwrap().as_deref(),
        Some("second")
    );
    store.cache_put_many("llm", &[]).await.unwrap();

    // Many lookups at once (PostgreSQL answers them in batches) each get their own answer.
    let lookups = ["k1", "k2", "absent", "k1"]
        .iter()
        .cycle()
        .take(200)
        .map(|key| store.cache_get("llm", key));
    let answers = futures::future::join_all(lookups).await;
    for (n, answer) in answers.into_iter().enumerate() {
        let expected = [Some("v1-new"), Some("second"), None, Some("v1-new")][n % 4];
        assert_eq!(answer.unwrap().as_deref(), expected, "lookup {n}");
    }

    // Bounded at 100 entries: the oldest go, the newest stay.
    let entries: Vec<(String, String)> = (0..250)
        .map(|n| (format!("bulk-{n}"), format!("value-{n}")))
        .collect();
    for chunk in entries.chunks(50) {
        store.cache_put_many("ocr", chunk).await.unwrap();
    }
    assert_eq!(store.cache_get("ocr", "bulk-0").await.unwrap(), None);
    assert_eq!(
        store.cache_get("ocr", "bulk-249").await.unwrap().as_deref(),
        Some("value-249")
    );
    let mut kept = 0;
    for (key, _) in &entries {
        kept += usize::from(store.cache_get("ocr", key).await.unwrap().is_some());
    }
    assert!((50..=100).contains(&kept), "{kept} entries kept");
}
on_every_backend!(memo, memo_bound(100));

async fn api_keys(store: &dyn Store) {
    let key = ApiKey {
        label: Some("phone".into()),
        ..api_key("K1", Role::Student, Some("U1"))
    };
    store.create_api_key(&key, "hash-1").await.unwrap();
    assert!(store.create_api_key(&key, "hash-1").await.is_err());
    assert_eq!(
        store.find_api_key("hash-1").await.unwrap(),
        Some(key.clone())
    );
    assert_eq!(store.find_api_key("hash-2").await.unwrap(), None);
    assert!(store.revoke_api_key("K1").await.unwrap());
    assert!(!store.revoke_api_key("K1").await.unwrap());
    assert_eq!(store.find_api_key("hash-1").await.unwrap(), None);
    let listed = store.list_api_keys().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].revoked);
    store.ping().await.unwrap();
}
on_every_backend!(api_keys);

async fn idempotency(store: &dyn Store) {
    let begin = |hash: &'static str, stale: i64| {
        store.idempotency_begin("U1", "/evaluate-answers", "key-1", hash, stale)
    };
    assert_eq!(begin("h1", 600).await.unwrap(), IdempotencyState::Fresh);
    assert_eq!(
        begin("h1", 600).await.unwrap(),
        IdempotencyState::InProgress
    );
    assert_eq!(begin("h2", 600).await.unwrap(), IdempotencyState::Mismatch);
    // A claim older than the stale bound is taken over.
    assert_eq!(begin("h1", -1).await.unwrap(), IdempotencyState::Fresh);
    store
        .idempotency_complete(
            "U1",
            "/evaluate-answers",
            "key-1",
            201,
            "{\"ok\":true}",
            "U1",
        )
        .await
        .unwrap();
    assert_eq!(
        begin("h1", 600).await.unwrap(),
        IdempotencyState::Completed {
            status: 201,
            body: "{\"ok\":true}".into()
        }
    );
    // A released claim lets the request run again; a completed one is never released.
    store
        .idempotency_release("U1", "/evaluate-answers", "key-1")
        .await
        .unwrap();
    assert!(matches!(
        begin("h1", 600).await.unwrap(),
        IdempotencyState::Completed { .. }
    ));
    let other = || store.idempotency_begin("U2", "/upload-exam-answers", "key-1", "h", 600);
    assert_eq!(other().await.unwrap(), IdempotencyState::Fresh);
    store
        .idempotency_release("U2", "/upload-exam-answers", "key-1")
        .await
        .unwrap();
    assert_eq!(other().await.unwrap(), IdempotencyState::Fresh);
}
on_every_backend!(idempotency);

/// Two instances of the service on one PostgreSQL database: what one stores, the other
/// reads, and concurrent evaluations of one paper from both are all kept, numbered apart.
#[tokio::test]
async fn two_instances_share_one_postgres_database() {
    let Some(schema) = PostgresSchema::create().await else {
        return;
    };
    let options = StoreOptions::default();
    let first = open_with(&schema.url, &options).await.unwrap();
    // The second start finds the schema migrated and leaves it be.
    let second = open_with(&schema.url, &options).await.unwrap();
    first.put_course(&course("C1")).await.unwrap();
    assert_eq!(second.get_course("C1").await.unwrap(), Some(course("C1")));
    first.cache_put("llm", "k", "paid for once").await.unwrap();
    assert_eq!(
        second.cache_get("llm", "k").await.unwrap().as_deref(),
        Some("paid for once")
    );
    // The second now answers misses from memory for a while; what the first stores later is
    // found once the second reads in what was stored since.
    assert_eq!(second.cache_get("llm", "k2").await.unwrap(), None);
    first.cache_put("llm", "k2", "later").await.unwrap();
    assert_eq!(
        eventually(second.as_ref(), "k2").await.as_deref(),
        Some("later")
    );
    let writes = (0..12).map(|n| {
        let store = if n % 2 == 0 { &first } else { &second };
        store.insert_evaluation(evaluation("U1", 1))
    });
    assert_eq!(versions_stored(writes).await, (1..=12).collect::<Vec<_>>());
    drop((first, second));
    schema.drop_schema().await;
}

/// Looks `key` up in namespace `llm` until it is found or three seconds have passed.
async fn eventually(store: &dyn Store, key: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let found = store.cache_get("llm", key).await.unwrap();
        if found.is_some() || std::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Memo ids are taken at insert and seen at commit, so a writer may commit an entry under a
/// lower id after a reader has read in a higher one; the reader still finds it.
#[tokio::test]
async fn a_postgres_memo_entry_committed_late_under_a_lower_id_is_found() {
    let Some(schema) = PostgresSchema::create().await else {
        return;
    };
    let options = StoreOptions::default();
    let reader = open_with(&schema.url, &options).await.unwrap();
    let writer = open_with(&schema.url, &options).await.unwrap();
    let mut slow = <sqlx::PgConnection as sqlx::Connection>::connect(&schema.url)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query(
        "INSERT INTO memo (namespace, key, value, created_at, address)
         VALUES ('llm', 'slow', 'committed late', '2026-01-01T00:00:00Z', $1)",
    )
    .bind(super::sql_store::memo_address("llm", "slow") as i64)
    .execute(&mut slow)
    .await
    .unwrap();
    writer
        .cache_put("llm", "fast", "committed first")
        .await
        .unwrap();
    assert_eq!(
        eventually(reader.as_ref(), "fast").await.as_deref(),
        Some("committed first")
    );
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
    assert_eq!(
        eventually(reader.as_ref(), "slow").await.as_deref(),
        Some("committed late")
    );
    drop((reader, writer, slow));
    schema.drop_schema().await;
}

/// An entry served while among the oldest is kept; entries of its age not served go first.
async fn memo_keeps_what_is_used(store: &dyn Store) {
    let batch = |range: std::ops::Range<usize>| {
        range
            .map(|n| (format!("k{n}"), format!("v{n}")))
            .collect::<Vec<_>>()
    };
    store.cache_put_many("ns", &batch(0..6)).await.unwrap();
    assert_eq!(
        store.cache_get("ns", "k0").await.unwrap().as_deref(),
        Some("v0")
    );
    store.cache_put_many("ns", &batch(6..10)).await.unwrap();
    store.cache_put_many("ns", &batch(10..14)).await.unwrap();
    assert_eq!(
        store.cache_get("ns", "k0").await.unwrap().as_deref(),
        Some("v0"),
        "the entry in use was trimmed"
    );
    assert_eq!(store.cache_get("ns", "k1").await.unwrap(), None);
    assert_eq!(
        store.cache_get("ns", "k13").await.unwrap().as_deref(),
        Some("v13")
    );
}
on_every_backend!(memo_keeps_what_is_used, memo_bound(10));

/// Fills a store with one of every kind of record.
async fn fill(store: &dyn Store) {
    store
        .import_catalog(&one_paper(vec![user("U1")]))
        .await
        .unwrap();
    store
        .insert_submission(&submission("S1", "U1", 0), "digest-1")
        .await
        .unwrap();
    let mut graded = evaluation("U1", 3);
    graded.submission_id = Some("S1".into());
    store.insert_evaluation(graded).await.unwrap();
    store.insert_evaluation(evaluation("U1", 2)).await.unwrap();
    store
        .create_api_key(&api_key("K1", Role::Examiner, None), "hash-1")
        .await
        .unwrap();
    store
        .idempotency_begin("U1", "/evaluate-answers", "key-1", "h1", 600)
        .await
        .unwrap();
    store
        .idempotency_complete("U1", "/evaluate-answers", "key-1", 200, "{}", "U1")
        .await
        .unwrap();
    store.cache_put("llm", "k", "not copied").await.unwrap();
}

/// What a reader of the store sees, for comparing two stores.
async fn contents(store: &dyn Store) -> serde_json::Value {
    let all = Filter {
        limit: 1000,
        ..Filter::default()
    };
    let mut evaluations = Vec::new();
    for summary in store.list_evaluations(&all).await.unwrap() {
        let record = store.get_evaluation(&summary.evaluation_id).await.unwrap();
        evaluations.push(serde_json::to_value(record).unwrap());
    }
    serde_json::json!({
        "courses": store.list_courses().await.unwrap(),
        "exams": store.list_exams(None).await.unwrap(),
        "papers": store.list_question_papers(None).await.unwrap(),
        "users": store.list_users().await.unwrap(),
        "submissions": store.list_submissions(&all).await.unwrap(),
        "submission": store.get_submission("S1").await.unwrap(),
        "by_images": store.find_submission_by_images("U1", "QP1", "digest-1").await.unwrap(),
        "evaluations": evaluations,
        "keys": store.list_api_keys().await.unwrap(),
        "key": store.find_api_key("hash-1").await.unwrap(),
        "replay": format!("{:?}", store
            .idempotency_begin("U1", "/evaluate-answers", "key-1", "h1", 600)
            .await
            .unwrap()),
    })
}

/// Copies a filled database of `from`'s kind into an empty one of `to`'s kind and compares
/// what readers see in both.
async fn copies_whole(from: &str, to: &str) {
    let source = open_with(from, &StoreOptions::default()).await.unwrap();
    fill(source.as_ref()).await;
    let mut heard = Vec::new();
    let report = super::copy_records(from, to, |table, rows| heard.push((table, rows)))
        .await
        .unwrap();
    assert_eq!(report, heard);
    let count = |name: &str| report.iter().find(|(t, _)| *t == name).unwrap().1;
    assert_eq!(count("evaluation_items"), 5);
    assert_eq!(count("questions"), 2);
    let target = open_with(to, &StoreOptions::default()).await.unwrap();
    assert_eq!(
        contents(target.as_ref()).await,
        contents(source.as_ref()).await
    );
    // Versions go on from the copied ones; memoised results stay behind.
    assert_eq!(
        target
            .insert_evaluation(evaluation("U1", 1))
            .await
            .unwrap()
            .version,
        3
    );
    assert_eq!(target.cache_get("llm", "k").await.unwrap(), None);
    // A second copy finds the target holding records and changes nothing.
    let before = contents(target.as_ref()).await;
    let err = super::copy_records(from, to, |_, _| {}).await.unwrap_err();
    assert!(err.to_string().contains("already holds records"), "{err}");
    assert_eq!(contents(target.as_ref()).await, before);
    assert!(super::copy_records(from, from, |_, _| {}).await.is_err());
    let missing = super::copy_records("sqlite:///nonexistent/examiner.db", to, |_, _| {})
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("no database at"), "{missing}");
}

#[tokio::test]
async fn sqlite_is_copied_to_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    copies_whole(&url("from.db"), &url("to.db")).await;
}

#[tokio::test]
async fn sqlite_is_copied_to_postgres_and_back() {
    let Some(schema) = PostgresSchema::create().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let url = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    copies_whole(&url("from.db"), &schema.url).await;
    let back = PostgresSchema::create().await.unwrap();
    // PostgreSQL to SQLite, from a fresh source so the fill is the only content.
    copies_whole(&back.url, &url("back.db")).await;
    schema.drop_schema().await;
    back.drop_schema().await;
}
