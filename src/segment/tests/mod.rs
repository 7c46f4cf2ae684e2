//! Unit, script and property tests of the segmentation module.

mod parse;
mod props;
mod scripts;

use super::*;

pub(super) fn q(s: &str) -> QuestionNumber {
    QuestionNumber::parse(s).unwrap_or_else(|| panic!("bad number {s:?}"))
}

pub(super) fn numbers(list: &[&str]) -> Vec<QuestionNumber> {
    list.iter().map(|s| q(s)).collect()
}

/// Asserts the exact unassigned text and the exact (number, answer) pairs in order.
pub(super) fn check(seg: &Segmentation, unassigned: &str, expected: &[(&str, &str)]) {
    let got: Vec<(&str, &str)> = seg
        .pairs
        .iter()
        .map(|p| (p.question_number.as_str(), p.answer.as_str()))
        .collect();
    assert_eq!(got, expected, "pairs");
    assert_eq!(seg.unassigned_text, unassigned, "unassigned text");
}

#[test]
fn pairs_know_the_pages_their_answers_came_from() {
    let pages = [
        "Name: Asha\nQ1. Going concern\nassumes continuity.",
        "more on going concern\nQ2. Assets = Liabilities + Capital",
        "   \n",
        "Q1. (continued) accruals too",
    ];
    let seg = segment(&pages, None);
    let by_number: Vec<(String, Vec<usize>)> = seg
        .pairs
        .iter()
        .map(|p| (p.question_number.to_string(), p.pages.clone()))
        .collect();
    assert_eq!(
        by_number,
        vec![("1".to_string(), vec![0, 1, 3]), ("2".to_string(), vec![1])]
    );
}
