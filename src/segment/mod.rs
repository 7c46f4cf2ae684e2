//! Segmentation owns splitting the OCR text of a student's answer script into question–answer
//! pairs by the question numbers the student wrote, and the canonical [`QuestionNumber`]. It is
//! pure (no I/O), never panics, never drops text (whatever is not a recognised marker ends up
//! in an answer or in `unassigned_text`), and runs in one linear pass.
//!
//! What it promises:
//! - **Markers.** Recognised case-insensitively after NFKC folding (full-width `１．ａ`, `Ｑ２`):
//!   prefixed forms `Q1`, `Q.1`, `Q 1(b)`, `Q.No.1`, `Question 2`, `Ans 3`, `Ans. 2(b)`,
//!   `Answer to Q4`, `Solution 5`; bare numbers `1.`, `1)`, `(1)`, `1.a`, `1(a)`, `1 (a)`, `1a)`,
//!   `1.(a)`, `1 . a`, `1(a)(ii)`; and parts alone at the start of a line (or right after a
//!   marker), `(a)`, `a)`, `(ii)`, `ii)`, resolved under the question in progress (after `Q2`,
//!   `(b)` is `2.b`; after `2.b`, `(ii)` is `2.b.ii`). A second-level `(i)` is the letter after
//!   `h` (or when the paper has a lettered `.i`), a roman numeral otherwise; with the paper's
//!   numbers the reading on the paper wins. A bare `Ans:`/`Answer:` right after a marker is
//!   part of it.
//! - **Where.** Markers are chiefly at the start of a line. Mid-line (OCR running answers
//!   together) only prefixed forms and two-level numbers (`1.a`, `1(a)`, `1a)`) count, and not
//!   after a reference word ("Section 2(b)", "as in Q1", "Art. 21(a)"). Nowhere does a marker
//!   run into arithmetic ("Q1 = 100", "2x + 3"), and "1.5", "Rs. 2,00,000", "20%", "1.4.2023",
//!   "12th", "3 marks", "IAS 1" or "page 3" are never markers.
//! - **With the paper's numbers** (`known`): a marker counts only if it is a question of the
//!   paper or the parent of one ("1." sets the context for a following "(a)"), and only going
//!   forward in paper order; anything else is a numbered list inside an answer and stays in
//!   the text. A prefixed marker going back is a student returning to a question and counts (at
//!   a line start, or mid-line after a sentence end). A line-start "2(a)" where the paper lists
//!   "2" without parts is the marker "2", and "(a)" stays in the answer.
//! - **Without them**, by analogy: bare numbers and parts count only going forward in paper
//!   order (a list restarting at "1." or "(i)" inside an answer stays in it), prefixed markers
//!   may also go back, `a.`/`ii.` never count, and "Ans: 45" counts only within the current or
//!   the next question.
//! - **Lists.** Once a bare number or a part was judged a list item, the item after it ("2."
//!   after "1.", "(b)" after "(a)") is one too, until a marker is accepted. Without the paper,
//!   a bare number or part on the line after answer text ending in ':' ("Features:") starts a
//!   list.
//! - **Results.** "Ans. 9" alone on a line, followed by another question's marker or by
//!   nothing, is the result of a sum and stays in the answer.
//! - **Text.** Pages are joined with a newline, so an answer continues across pages. Text
//!   before the first marker is returned trimmed in `unassigned_text`. Answers keep the
//!   student's characters (folding is only for matching) minus the marker and its trailing
//!   `. : ) -`; they are trimmed, lose trailing spaces, and runs of blank lines become one.
//!   A question answered twice is one pair, its answers joined with a newline; pairs are in
//!   order of first appearance; a marker with no text (e.g. "Q1" right before "(a)") makes no
//!   pair, while a parent marker with text keeps it.

mod marker;
mod number;
mod scan;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use self::number::{ParseQuestionNumberError, QuestionNumber};
use self::scan::{scan, Boundary, Paper};

/// One question's answer text, as the student wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QaPair {
    pub question_number: QuestionNumber,
    pub answer: String,
    /// Indexes of the pages the answer's text was read from, ascending, so each pair can
    /// carry the OCR confidence of its own pages.
    pub pages: Vec<usize>,
}

/// The result of segmenting a script.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segmentation {
    /// In order of first appearance.
    pub pairs: Vec<QaPair>,
    /// Text before the first marker, trimmed; empty when there is none.
    pub unassigned_text: String,
}

impl Segmentation {
    /// The answer to `number`, if the script has one.
    pub fn answer(&self, number: &QuestionNumber) -> Option<&str> {
        self.pairs
            .iter()
            .find(|pair| pair.question_number == *number)
            .map(|pair| pair.answer.as_str())
    }
}

/// Splits a script into question–answer pairs.
///
/// `pages` is the OCR text of each image in the order given; `known` is the question paper's
/// numbers in paper order when the paper is known. See the module docs for the rules.
pub fn segment(pages: &[&str], known: Option<&[QuestionNumber]>) -> Segmentation {
    let text = pages.join("\n");
    let boundaries = find_boundaries(&text, known);
    assemble(&text, &boundaries, &page_starts(pages))
}

/// Where each page begins in the pages joined with `\n`, in bytes.
fn page_starts(pages: &[&str]) -> Vec<usize> {
    let mut starts = Vec::with_capacity(pages.len());
    let mut offset = 0;
    for page in pages {
        starts.push(offset);
        offset += page.len() + 1;
    }
    starts
}

/// The pages holding non-blank text within `text[start..end]`; `starts` are the byte offsets
/// where each page begins in `text`.
fn pages_of(text: &str, start: usize, end: usize, starts: &[usize]) -> Vec<usize> {
    let mut found = Vec::new();
    for (page, &page_start) in starts.iter().enumerate() {
        let page_end = starts.get(page + 1).map_or(text.len(), |&next| next);
        let (from, to) = (start.max(page_start), end.min(page_end));
        if from < to && !text[from..to].trim().is_empty() {
            found.push(page);
        }
    }
    found
}

fn find_boundaries(text: &str, known: Option<&[QuestionNumber]>) -> Vec<Boundary> {
    let paper = known.filter(|numbers| !numbers.is_empty()).map(Paper::new);
    scan(text, paper.as_ref())
}

fn assemble(text: &str, boundaries: &[Boundary], starts: &[usize]) -> Segmentation {
    let first_start = boundaries.first().map_or(text.len(), |b| b.start);
    let mut unassigned_text = String::new();
    append_cleaned(&mut unassigned_text, &text[..first_start]);

    let mut pairs: Vec<QaPair> = Vec::new();
    let mut index: HashMap<_, usize> = HashMap::new();
    for (i, boundary) in boundaries.iter().enumerate() {
        let end = boundaries.get(i + 1).map_or(text.len(), |next| next.start);
        let answer = &text[boundary.end..end];
        if answer.trim().is_empty() {
            continue;
        }
        let key = boundary.num.key();
        let pages = pages_of(text, boundary.end, end, starts);
        match index.get(&key) {
            Some(&at) => {
                append_cleaned(&mut pairs[at].answer, answer);
                let merged = &mut pairs[at].pages;
                merged.extend(pages);
                merged.sort_unstable();
                merged.dedup();
            }
            None => {
                index.insert(key, pairs.len());
                let mut cleaned = String::with_capacity(answer.len());
                append_cleaned(&mut cleaned, answer);
                pairs.push(QaPair {
                    question_number: QuestionNumber::from_num(boundary.num),
                    answer: cleaned,
                    pages,
                });
            }
        }
    }
    Segmentation {
        pairs,
        unassigned_text,
    }
}

/// Appends `raw` trimmed, with trailing spaces removed from each line and runs of blank lines
/// collapsed to one, after a newline when `out` already has text.
fn append_cleaned(out: &mut String, raw: &str) {
    let raw = raw.trim();
    if raw.is_empty() {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    let mut blank_before = false;
    let mut first = true;
    for line in raw.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_before = true;
            continue;
        }
        if !first {
            out.push('\n');
            if blank_before {
                out.push('\n');
            }
        }
        out.push_str(line);
        first = false;
        blank_before = false;
    }
}
