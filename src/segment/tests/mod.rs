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
