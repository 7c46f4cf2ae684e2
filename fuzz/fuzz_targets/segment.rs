//! Segmentation of OCR text into question-answer pairs, and question-number parsing.
//!
//! Input: UTF-8 (lossy). When the first byte is odd, the first line is the paper's question
//! numbers, comma-separated (any order, duplicates allowed, as a catalog might hold them);
//! pages are separated by form feeds. Checks what `examiner::segment` promises for any input:
//! no panic, no text invented, answers non-empty and tidy, canonical numbers that are fixed
//! points of `QuestionNumber::parse` and survive JSON, and with the paper's numbers only
//! numbers of the paper (or their parents) as pairs.
#![no_main]

use std::collections::HashSet;

use examiner::segment::{segment, QuestionNumber};
use libfuzzer_sys::fuzz_target;

fn non_space(s: &str) -> usize {
    s.chars().filter(|c| !c.is_whitespace()).count()
}

fn check_number(raw: &str) -> Option<QuestionNumber> {
    let number = QuestionNumber::parse(raw)?;
    let canonical = number.as_str();
    assert_eq!(
        QuestionNumber::parse(canonical).as_ref(),
        Some(&number),
        "canonical form {canonical:?} of {raw:?} is not a fixed point"
    );
    assert_eq!(number.to_string(), canonical);
    let json = serde_json::to_string(&number).expect("serialises");
    let back: QuestionNumber = serde_json::from_str(&json).expect("its own JSON parses");
    assert_eq!(back, number);
    // The parent chain ends, each parent is an ancestor, and paper order puts parents first.
    let mut depth = 0;
    let mut up = number.parent();
    while let Some(parent) = up {
        assert!(parent.is_ancestor_of(&number));
        assert!(parent < number, "{parent} sorts after its part {number}");
        assert_eq!(parent.top_level(), number.top_level());
        depth += 1;
        assert!(depth <= 2, "{number} has more than three levels");
        up = parent.parent();
    }
    assert!(!number.is_ancestor_of(&number));
    Some(number)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let (known, script) = if flags & 1 == 1 {
        let (line, script) = text.split_once('\n').unwrap_or((&text, ""));
        let known: Vec<QuestionNumber> = line.split(',').filter_map(check_number).collect();
        (Some(known), script)
    } else {
        (None, &*text)
    };
    // Every line of the script is also tried as a question number on its own.
    for line in script.lines().take(64) {
        check_number(line);
    }
    let pages: Vec<&str> = script.split('\u{c}').collect();
    let seg = segment(&pages, known.as_deref());

    let joined = pages.join("\n");
    let out_chars = non_space(&seg.unassigned_text)
        + seg
            .pairs
            .iter()
            .map(|p| non_space(&p.answer))
            .sum::<usize>();
    assert!(
        out_chars <= non_space(&joined),
        "segmentation invented text"
    );
    assert_eq!(seg.unassigned_text.trim(), seg.unassigned_text);
    let input_tokens: Vec<&str> = joined.split_whitespace().collect();
    let unassigned: Vec<&str> = seg.unassigned_text.split_whitespace().collect();
    assert!(
        input_tokens.starts_with(&unassigned),
        "unassigned_text is not the start of the script"
    );

    let mut seen = HashSet::new();
    for pair in &seg.pairs {
        assert!(!pair.answer.is_empty());
        assert_eq!(pair.answer.trim(), pair.answer);
        assert!(!pair.answer.contains("\n\n\n"));
        assert!(
            seen.insert(pair.question_number.clone()),
            "{} twice",
            pair.question_number
        );
        let number = check_number(pair.question_number.as_str()).expect("pair numbers parse");
        assert_eq!(number, pair.question_number);
        if let Some(known) = known.as_deref().filter(|k| !k.is_empty()) {
            assert!(
                known
                    .iter()
                    .any(|k| *k == number || number.is_ancestor_of(k)),
                "{number} is neither on the paper nor the parent of a question on it"
            );
        }
    }
    assert_eq!(
        seg.answer(&QuestionNumber::parse("1").unwrap()).is_some(),
        seg.pairs.iter().any(|p| p.question_number.as_str() == "1")
    );
});
