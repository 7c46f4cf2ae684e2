//! What the SQLite store serves from memory ([`crate::store::known`]), shown against rows
//! changed behind its back.

use super::SqliteStore;
use crate::model::{Course, Exam, NewEvaluation, Question, QuestionPaper};
use crate::segment::QuestionNumber;
use crate::store::{Store, StoreOptions};

async fn open(dir: &tempfile::TempDir) -> SqliteStore {
    let path = dir.path().join("examiner.db");
    SqliteStore::open(path.to_str().unwrap(), &StoreOptions::default())
        .await
        .unwrap()
}

async fn catalog(store: &SqliteStore) -> (Exam, QuestionPaper) {
    let course = Course {
        course_code: "C".into(),
        course_name: "Course".into(),
        description: None,
    };
    let exam = Exam {
        exam_code: "E".into(),
        course_code: "C".into(),
        exam_name: "Exam".into(),
        total_exam_marks: Some(10.0),
    };
    let paper = QuestionPaper {
        question_paper_code: "QP".into(),
        exam_code: "E".into(),
        title: None,
        marks_step: None,
        questions: vec![Question {
            question_number: QuestionNumber::parse("1").unwrap(),
            question_text: None,
            standard_answer: "the standard answer".into(),
            total_marks: 10.0,
        }],
    };
    store.put_course(&course).await.unwrap();
    store.put_exam(&exam).await.unwrap();
    store.put_question_paper(&paper).await.unwrap();
    (exam, paper)
}

async fn sql(store: &SqliteStore, statement: &str) {
    sqlx::query(statement)
        .execute(&mut *store.writer.acquire().await.unwrap())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_record_found_once_is_served_from_memory_and_absence_is_not_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    assert_eq!(store.get_question_paper("QP").await.unwrap(), None);
    assert_eq!(store.get_exam("E").await.unwrap(), None);
    // Stored by another process: seen at once, since "absent" was not remembered.
    let (exam, paper) = catalog(&open(&dir).await).await;
    assert_eq!(
        store.get_question_paper("QP").await.unwrap(),
        Some(paper.clone())
    );
    assert_eq!(store.get_exam("E").await.unwrap(), Some(exam.clone()));
    // Rows changed behind the store's back (nothing in Examiner does this) are not read
    // again, which shows the second read came from memory.
    sql(&store, "UPDATE questions SET standard_answer = 'edited'").await;
    sql(&store, "UPDATE exams SET exam_name = 'edited'").await;
    assert_eq!(store.get_question_paper("QP").await.unwrap(), Some(paper));
    assert_eq!(store.get_exam("E").await.unwrap(), Some(exam));
    let fresh = open(&dir).await;
    let read = fresh.get_question_paper("QP").await.unwrap().unwrap();
    assert_eq!(read.questions[0].standard_answer, "edited");
}

fn evaluation(user_id: &str) -> NewEvaluation {
    NewEvaluation {
        user_id: user_id.into(),
        course_code: "C".into(),
        exam_code: "E".into(),
        question_paper_code: "QP".into(),
        submission_id: None,
        grader: "llm".into(),
        total_exam_marks: 10.0,
        final_score: 0.0,
        status: "success".into(),
        items: vec![],
        replaces_version: None,
    }
}

async fn user_stored(store: &SqliteStore, user_id: &str) -> bool {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut *store.reader.acquire().await.unwrap())
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn a_remembered_user_found_erased_is_registered_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir).await;
    store.insert_evaluation(evaluation("U1")).await.unwrap();
    assert!(user_stored(&store, "U1").await);
    // Erased by another process: this one remembers U1, so its next evaluation skips the
    // registration, finds the user missing, and stores it with the user registered again.
    let other = open(&dir).await;
    assert!(other.erase_user("U1").await.unwrap().user_record);
    assert!(!user_stored(&store, "U1").await);
    let again = store.insert_evaluation(evaluation("U1")).await.unwrap();
    assert_eq!(
        again.version, 1,
        "nothing of the erased user is left to count on"
    );
    assert!(user_stored(&store, "U1").await);
}
