//! Records the process has already read or written, served from memory.
//!
//! Exams, question papers and users are never changed once stored — a write of different
//! content is a conflict — and nothing deletes exams or papers, so one found once is the
//! record for good, whichever process wrote it. Users can be erased: the process that erases
//! one forgets it, and a write that relies on a remembered user checks that it is still
//! stored (`sql::insert_evaluation`), so another process's memory is corrected on first use.
//! Every graded script reads its exam and paper and registers its user; from memory that is
//! three round trips to the database fewer per request (on SQLite each a wake-up of a
//! connection's thread: BENCHMARKS.md, step 17). Absence is never remembered: a record
//! missing now may be written a moment later.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::model::{Exam, QuestionPaper};

/// Records remembered per kind; past this a kind starts over (rarely: a deployment with
/// more papers than this grades few scripts per paper, so the memory buys little there).
const CAPACITY: usize = 10_000;

#[derive(Default)]
pub(super) struct Known {
    exams: Mutex<HashMap<String, Exam>>,
    papers: Mutex<HashMap<String, QuestionPaper>>,
    users: Mutex<HashMap<String, ()>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn remember<T>(map: &Mutex<HashMap<String, T>>, key: &str, value: &T)
where
    T: Clone,
{
    let mut map = lock(map);
    if map.len() >= CAPACITY && !map.contains_key(key) {
        map.clear();
    }
    map.insert(key.to_string(), value.clone());
}

impl Known {
    pub(super) fn exam(&self, code: &str) -> Option<Exam> {
        lock(&self.exams).get(code).cloned()
    }

    pub(super) fn remember_exam(&self, exam: &Exam) {
        remember(&self.exams, &exam.exam_code, exam);
    }

    pub(super) fn paper(&self, code: &str) -> Option<QuestionPaper> {
        lock(&self.papers).get(code).cloned()
    }

    pub(super) fn remember_paper(&self, paper: &QuestionPaper) {
        remember(&self.papers, &paper.question_paper_code, paper);
    }

    /// True when `user_id` is certainly stored.
    pub(super) fn has_user(&self, user_id: &str) -> bool {
        lock(&self.users).contains_key(user_id)
    }

    /// After the user was erased, or found erased.
    pub(super) fn forget_user(&self, user_id: &str) {
        lock(&self.users).remove(user_id);
    }

    /// Only after the write that stored the user has committed.
    pub(super) fn remember_user(&self, user_id: &str) {
        remember(&self.users, user_id, &());
    }
}
