//! Recognising question-number markers in one line of OCR text.
//!
//! This layer only answers "does a marker-shaped thing start here, and what does it say";
//! whether it really starts an answer is decided by the scanner, which knows the context.

use unicode_normalization::UnicodeNormalization;

use super::number::{parse_top, roman_value, split_first_component, Sub};

/// ASCII whitespace including vertical tab and form feed, which OCR engines emit between blocks.
pub(crate) fn is_space(c: u8) -> bool {
    c == b' ' || (b'\t'..=b'\r').contains(&c)
}

fn is_letter(c: u8) -> bool {
    c.is_ascii_alphabetic()
}

/// Punctuation that may trail a marker and is removed with it: "1.", "Q1:", "1)", "Ans:-".
fn is_trailing_punct(c: u8) -> bool {
    matches!(c, b'.' | b':' | b')' | b'-')
}

/// Characters after which text is arithmetic, not an answer: "Q1 = 100", "2x + 3".
fn is_operator(c: u8) -> bool {
    matches!(
        c,
        b'=' | b'<' | b'>' | b'+' | b'*' | b'/' | b'^' | b'%' | b','
    )
}

/// Words that, right after a marker written without punctuation, show it is prose:
/// "Q1 and Q2 are quantities", "3a or 3b".
const FOLLOW_STOPWORDS: &[&[u8]] = &[
    b"and", b"or", b"to", b"of", b"is", b"are", b"was", b"were", b"has", b"have", b"than",
    b"units", b"nor", b"vs",
];

/// One line (or a catalog string) folded for matching: every non-ASCII character is replaced by
/// its NFKC form (full-width digits and letters, ideographic spaces, "⒈", "ⅱ"), unicode dashes
/// become '-', and `orig` maps each folded byte back to the line's own byte offsets so that
/// answers keep the student's original characters.
pub(crate) struct LineView<'a> {
    pub bytes: &'a [u8],
    map: Option<&'a [u32]>,
    orig_len: usize,
}

impl LineView<'_> {
    /// Byte offset in the original line of folded offset `i` (a character boundary there).
    pub(crate) fn orig(&self, i: usize) -> usize {
        match self.map {
            None => i,
            Some(map) => map.get(i).map_or(self.orig_len, |&o| o as usize),
        }
    }
}

/// Reusable buffers for folding lines, so scanning allocates nothing per line.
#[derive(Default)]
pub(crate) struct Folder {
    bytes: Vec<u8>,
    map: Vec<u32>,
}

impl Folder {
    pub(crate) fn fold<'a>(&'a mut self, line: &'a str) -> LineView<'a> {
        if line.is_ascii() {
            return LineView {
                bytes: line.as_bytes(),
                map: None,
                orig_len: line.len(),
            };
        }
        self.bytes.clear();
        self.map.clear();
        let mut utf8 = [0u8; 4];
        for (offset, c) in line.char_indices() {
            let offset = offset as u32;
            if c.is_ascii() {
                self.bytes.push(c as u8);
                self.map.push(offset);
            } else if matches!(c, '\u{2010}'..='\u{2015}' | '\u{2212}') {
                self.bytes.push(b'-');
                self.map.push(offset);
            } else {
                for folded in std::iter::once(c).nfkc() {
                    for &b in folded.encode_utf8(&mut utf8).as_bytes() {
                        self.bytes.push(b);
                        self.map.push(offset);
                    }
                }
            }
        }
        LineView {
            bytes: &self.bytes,
            map: Some(&self.map),
            orig_len: line.len(),
        }
    }
}

/// What a marker's shape says about how sure we can be it starts an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Prefixed by a question or answer word: "Q1", "Question 2", "Ans 3", "Answer to Q4".
    Strong,
    /// "Ans: 45" / "Answer: 3": as often a final result in a sum as a marker, so it is judged
    /// like a bare number.
    Labelled,
    /// A bare number: "1.", "1)", "(1)", "1.a", "1(a)", "1a)".
    Numbered,
    /// A part alone, resolved under the current question: "(a)", "a)", "(ii)", "ii)".
    SubPart,
    /// "a." / "ii.": too common in prose and lists to trust without the paper's numbers.
    WeakSubPart,
}

/// A part label as written, before context decides what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Label {
    Letter(u8),
    Roman(u8),
    /// "i", "v" or "x": a letter or a roman numeral.
    Either(u8, u8),
}

impl Label {
    fn from_run(run: &[u8]) -> Option<Label> {
        let roman = roman_value(run);
        match (run, roman) {
            ([c], Some(value)) => Some(Label::Either(c.to_ascii_lowercase(), value)),
            ([c], None) => Some(Label::Letter(c.to_ascii_lowercase())),
            (_, Some(value)) => Some(Label::Roman(value)),
            _ => None,
        }
    }

    pub(crate) fn letter(self) -> Option<u8> {
        match self {
            Label::Letter(c) | Label::Either(c, _) => Some(c),
            Label::Roman(_) => None,
        }
    }

    pub(crate) fn roman(self) -> Option<u8> {
        match self {
            Label::Roman(v) | Label::Either(_, v) => Some(v),
            Label::Letter(_) => None,
        }
    }

    /// Whether `self` is the item after `prev` in a lettered or roman sequence.
    pub(crate) fn follows(self, prev: Label) -> bool {
        let letters = matches!((prev.letter(), self.letter()), (Some(p), Some(n)) if n == p + 1);
        let romans = matches!((prev.roman(), self.roman()), (Some(p), Some(n)) if n == p + 1);
        letters || romans
    }
}

/// How the first part after a top-level number was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// "1.a", "1 . a", "1. a)".
    Dotted,
    /// "1(a)", "1 (a)", "1.(a)".
    Paren,
    /// "1a", "1bii".
    Compact,
}

/// First part after the top-level number, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FirstPart {
    Label(Label),
    /// A letter with a roman numeral run on: "1bii".
    LetterRoman(u8, u8),
}

/// A marker-shaped span of a folded line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub form: Form,
    pub start: usize,
    /// End of the marker including trailing punctuation.
    pub end: usize,
    pub top: Option<u32>,
    pub first: Option<FirstPart>,
    pub style: Option<Style>,
    /// Roman part written separately after the first: "(ii)" in "1(a)(ii)".
    pub second: Option<u8>,
    /// Where the first and second parts begin, so a marker can be cut back to its question
    /// when only the question is on the paper ("2(a)" where the paper has just "2").
    pub first_start: usize,
    pub second_start: usize,
    /// Whether trailing punctuation followed the number.
    pub punctuated: bool,
    /// Whether that punctuation contained ')'.
    pub closed: bool,
    /// Prefixed by an answer word only ("Ans 3"), see [`Prefix::answer_only`].
    pub answer_only: bool,
}

/// Where the marker stands, which decides the shapes allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    LineStart,
    MidLine,
}

fn at(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    i
}

fn letter_run_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_letter(b[i]) {
        i += 1;
    }
    i
}

/// `word` (lowercase) at `i`, case-insensitively, not followed by another letter.
fn word_at(b: &[u8], i: usize, word: &[u8]) -> bool {
    b.len() >= i + word.len()
        && b[i..i + word.len()].eq_ignore_ascii_case(word)
        && !is_letter(at(b, i + word.len()))
}

fn first_word<'w>(b: &[u8], i: usize, words: &[&'w [u8]]) -> Option<&'w [u8]> {
    words.iter().copied().find(|w| word_at(b, i, w))
}

/// Separators allowed between prefix words and the number: "Q.1", "Q-1", "Q. No. 1", "Ans:- 2".
fn skip_prefix_separators(b: &[u8], mut i: usize, colon: &mut bool) -> usize {
    while i < b.len() && (is_space(b[i]) || matches!(b[i], b'.' | b':' | b'-' | b'#')) {
        *colon |= b[i] == b':';
        i += 1;
    }
    i
}

const ANSWER_WORDS: &[&[u8]] = &[b"answer", b"ans", b"solution", b"soln", b"sol"];
const CONNECTOR_WORDS: &[&[u8]] = &[b"to", b"of", b"for"];
const QUESTION_WORDS: &[&[u8]] = &[b"question", b"ques", b"que", b"qno", b"qn", b"q"];
const NUMBER_WORDS: &[&[u8]] = &[b"number", b"nos", b"no"];

/// A recognised question/answer prefix.
pub(crate) struct Prefix {
    /// Where the number starts.
    pub end: usize,
    pub form: Form,
    /// An answer word without a question word ("Ans 3", "Solution 2"): such a line can also be
    /// the result of a sum ("Ans. 9").
    pub answer_only: bool,
}

/// "Q", "Q.", "Q. No.", "Question", "Ans", "Answer to Q", "Solution": a prefix directly followed
/// (after separators) by a digit.
pub(crate) fn parse_prefix(b: &[u8], start: usize) -> Option<Prefix> {
    let mut i = start;
    let mut colon = false;
    let answer = first_word(b, i, ANSWER_WORDS);
    if let Some(word) = answer {
        i = skip_prefix_separators(b, i + word.len(), &mut colon);
        if let Some(word) = first_word(b, i, CONNECTOR_WORDS) {
            i = skip_prefix_separators(b, i + word.len(), &mut colon);
        }
    }
    let question = first_word(b, i, QUESTION_WORDS);
    if let Some(word) = question {
        i = skip_prefix_separators(b, i + word.len(), &mut colon);
        if let Some(word) = first_word(b, i, NUMBER_WORDS) {
            i = skip_prefix_separators(b, i + word.len(), &mut colon);
        }
    }
    if answer.is_none() && question.is_none() || !at(b, i).is_ascii_digit() {
        return None;
    }
    // "Ans: 45" without a question word reads as often as a result as a marker.
    let form = if question.is_none() && colon {
        Form::Labelled
    } else {
        Form::Strong
    };
    Some(Prefix {
        end: i,
        form,
        answer_only: question.is_none(),
    })
}

/// A part label after a number or a previous part.
struct Part {
    run_start: usize,
    run_end: usize,
    /// Where the part's own text starts ("(" or the letter).
    start: usize,
    /// End of the part (after ')' for the paren form).
    end: usize,
    style: Style,
}

/// Parses a part label starting at `i` (right after a number or a previous part).
fn parse_part(b: &[u8], i: usize, place: Place, allow_compact: bool) -> Option<Part> {
    let mut j = skip_spaces(b, i);
    let space_before = j > i;
    let mut dotted = false;
    let mut space_after = false;
    if at(b, j) == b'.' {
        dotted = true;
        let k = skip_spaces(b, j + 1);
        space_after = k > j + 1;
        j = k;
    }
    let spaced = space_before || space_after;
    let start = j;
    if at(b, j) == b'(' {
        if place == Place::MidLine && dotted && spaced {
            return None;
        }
        let run_start = skip_spaces(b, j + 1);
        let run_end = letter_run_end(b, run_start);
        let close = skip_spaces(b, run_end);
        if run_end == run_start || at(b, close) != b')' {
            return None;
        }
        return Some(Part {
            run_start,
            run_end,
            start,
            end: close + 1,
            style: Style::Paren,
        });
    }
    if !is_letter(at(b, j)) || (!dotted && !allow_compact) {
        return None;
    }
    let run_end = letter_run_end(b, j);
    let next = at(b, run_end);
    let ok = if !spaced {
        // "1.a", "1a", "1a(ii)": nothing alphanumeric may follow directly.
        !next.is_ascii_alphanumeric()
    } else if place == Place::MidLine {
        false
    } else {
        // After a space the letter could start a word ("1. A company ..."), so require it to be
        // closed off: "1. a)", "1. a. ", or the OCR-spaced "1 . a".
        next == b')'
            || (matches!(next, b'.' | b':')
                && (is_space(at(b, run_end + 1)) || run_end + 1 >= b.len()))
            || (space_before
                && dotted
                && space_after
                && (is_space(next) || next == 0 || is_trailing_punct(next)))
    };
    ok.then_some(Part {
        run_start: j,
        run_end,
        start,
        end: run_end,
        style: if dotted {
            Style::Dotted
        } else {
            Style::Compact
        },
    })
}

/// After the body of a marker: consumes trailing punctuation and checks that what follows is
/// answer text, not more of a number, a word, or arithmetic. Returns (end, punctuated, closed).
fn finish(b: &[u8], body_end: usize, place: Place) -> Option<(usize, bool, bool)> {
    let punct_start = skip_spaces(b, body_end);
    let mut end = punct_start;
    let mut closed = false;
    while end < b.len() && is_trailing_punct(b[end]) {
        closed |= b[end] == b')';
        end += 1;
    }
    let punctuated = end > punct_start;
    if !punctuated {
        end = body_end;
    }
    let next = at(b, end);
    let next_ok = if next == 0 || is_space(next) {
        true
    } else if next.is_ascii_digit() {
        // "1.5", "1.4.2023", "1)2", "1:2", "01-04-2023"
        false
    } else if is_letter(next) || next >= 0x80 || next == b'(' {
        // "Q1.The" (OCR lost the space) is fine; "12th", "1st", "Q1s" are not markers.
        punctuated
    } else {
        false
    };
    if !next_ok {
        return None;
    }
    let after = skip_spaces(b, end);
    if is_operator(at(b, after)) {
        return None;
    }
    // At a line start only a lowercase continuation counts: "Q2 To find the NPV" is a marker.
    if !punctuated
        && (place == Place::MidLine || at(b, after).is_ascii_lowercase())
        && FOLLOW_STOPWORDS.iter().any(|w| word_at(b, after, w))
    {
        return None;
    }
    Some((end, punctuated, closed))
}

/// Parses a marker starting exactly at `start` (the first non-space of a line, or a word start
/// mid-line).
pub(crate) fn parse_marker(b: &[u8], start: usize, place: Place) -> Option<Candidate> {
    let first = at(b, start);
    if first.is_ascii_digit() {
        return parse_numbered(b, start, start, Form::Numbered, place);
    }
    if is_letter(first) {
        if let Some(prefix) = parse_prefix(b, start) {
            if let Some(mut candidate) = parse_numbered(b, start, prefix.end, prefix.form, place) {
                candidate.answer_only = prefix.answer_only;
                return Some(candidate);
            }
        }
    }
    if place == Place::MidLine {
        return None;
    }
    if first == b'(' && at(b, skip_spaces(b, start + 1)).is_ascii_digit() {
        return parse_numbered(b, start, start, Form::Numbered, place);
    }
    parse_subpart(b, start)
}

/// A number, optionally with parts: "1", "1.a", "1(a)(ii)", "(1)", "12bii".
fn parse_numbered(
    b: &[u8],
    start: usize,
    number_start: usize,
    form: Form,
    place: Place,
) -> Option<Candidate> {
    let prefixed = form != Form::Numbered;
    let mut i = number_start;
    let parenthesised = at(b, i) == b'(';
    if parenthesised {
        i = skip_spaces(b, i + 1);
    }
    let digits_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let max_top = if prefixed { super::number::MAX_TOP } else { 99 };
    if i - digits_start > 3 {
        return None;
    }
    let top = parse_top(&b[digits_start..i], max_top)?;
    if parenthesised {
        i = skip_spaces(b, i);
        if at(b, i) != b')' {
            return None;
        }
        i += 1;
    }

    let mut candidate = Candidate {
        form,
        start,
        end: i,
        top: Some(top),
        first: None,
        style: None,
        second: None,
        first_start: i,
        second_start: i,
        punctuated: parenthesised,
        closed: parenthesised,
        answer_only: false,
    };
    let mut body_end = i;
    if let Some(part) = parse_part(b, i, place, !parenthesised) {
        let run = &b[part.run_start..part.run_end];
        let first = match split_first_component(run) {
            Some((Sub::Letter(c), Some(roman))) if part.style == Style::Compact => {
                Some(FirstPart::LetterRoman(c, roman))
            }
            _ => Label::from_run(run).map(FirstPart::Label),
        };
        // A plain "1a" is too easily "3D" or "2x" unless written in lowercase.
        let compact_ok =
            part.style != Style::Compact || prefixed || run.iter().all(u8::is_ascii_lowercase);
        if let (Some(first), true) = (first, compact_ok) {
            candidate.first = Some(first);
            candidate.style = Some(part.style);
            candidate.first_start = part.start;
            body_end = part.end;
            let letter_first = matches!(
                first,
                FirstPart::Label(Label::Letter(_) | Label::Either(..))
            );
            if letter_first {
                if let Some(second) = parse_part(b, body_end, place, false) {
                    if let Some(value) = roman_value(&b[second.run_start..second.run_end]) {
                        candidate.second = Some(value);
                        candidate.second_start = second.start;
                        body_end = second.end;
                    }
                }
            }
        }
    }

    let (end, punctuated, closed) = finish(b, body_end, place)?;
    candidate.end = end;
    candidate.punctuated |= punctuated;
    candidate.closed |= closed;

    if form == Form::Numbered && candidate.first.is_none() && !candidate.punctuated {
        // A bare "3" starts too many lines ("3 marks", "15 March") to be a marker.
        return None;
    }
    if form == Form::Numbered && candidate.first.is_none() {
        // "1-Apr-2023", "2.e.g.": a bare number is a marker when set off by a space, or when
        // OCR lost the space before a sentence ("1.The", "２．Consistency").
        let next = at(b, end);
        let sentence_follows =
            next.is_ascii_uppercase() && matches!(at(b, end.wrapping_sub(1)), b'.' | b')');
        if !(next == 0 || is_space(next) || next == b'(' || sentence_follows) {
            return None;
        }
        // "1 - 2", "1: 2": a dash or colon before a number is arithmetic or a ratio.
        let punct = if punctuated {
            &b[skip_spaces(b, body_end)..end]
        } else {
            &[]
        };
        if !closed
            && !parenthesised
            && !punct.contains(&b'.')
            && at(b, skip_spaces(b, end)).is_ascii_digit()
        {
            return None;
        }
    }
    if place == Place::MidLine && candidate.style == Some(Style::Compact) && !closed {
        // Mid-line "2b" is "type 2b"; only "2b)" is clearly a marker.
        if !prefixed {
            return None;
        }
    }
    Some(candidate)
}

/// A part alone at the start of a line: "(a)", "a)", "( ii )", "ii)", and the weak "a." / "ii.".
fn parse_subpart(b: &[u8], start: usize) -> Option<Candidate> {
    let (run_start, run_end, body_end, form) = if at(b, start) == b'(' {
        let run_start = skip_spaces(b, start + 1);
        let run_end = letter_run_end(b, run_start);
        let close = skip_spaces(b, run_end);
        if at(b, close) != b')' {
            return None;
        }
        (run_start, run_end, close + 1, Form::SubPart)
    } else {
        let run_end = letter_run_end(b, start);
        match at(b, run_end) {
            b')' => (start, run_end, run_end + 1, Form::SubPart),
            b'.' if is_space(at(b, run_end + 1)) || run_end + 1 >= b.len() => {
                (start, run_end, run_end + 1, Form::WeakSubPart)
            }
            _ => return None,
        }
    };
    if run_end == run_start || run_end - run_start > 7 {
        return None;
    }
    let label = Label::from_run(&b[run_start..run_end])?;
    let (end, _, _) = finish(b, body_end, Place::LineStart)?;
    Some(Candidate {
        form,
        start,
        end,
        top: None,
        first: Some(FirstPart::Label(label)),
        style: None,
        second: None,
        first_start: start,
        second_start: start,
        punctuated: true,
        closed: form == Form::SubPart,
        answer_only: false,
    })
}

/// A bare answer label right after a marker ("Q1. Ans: ...", "Q1\nAnswer:-"): the word and its
/// punctuation are part of the marker. Returns the label's end.
pub(crate) fn parse_bare_label(b: &[u8], start: usize) -> Option<usize> {
    let word = first_word(b, start, ANSWER_WORDS)?;
    let after_word = start + word.len();
    let punct_start = skip_spaces(b, after_word);
    let mut end = punct_start;
    while end < b.len() && is_trailing_punct(b[end]) && b[end] != b')' {
        end += 1;
    }
    let next = skip_spaces(b, end);
    if end > punct_start {
        // "Answer:" / "Ans.-" but not "Ans: 45", which is a result.
        return (!at(b, next).is_ascii_digit()).then_some(end);
    }
    if next >= b.len() {
        // The word alone ends the line: "Q1\nAnswer\n...".
        return Some(after_word);
    }
    // Without punctuation only the abbreviation is a label: "Ans The going concern ...", while
    // "Answer is 5" is prose.
    let abbreviation = word != b"answer" && word != b"solution";
    (abbreviation && is_space(at(b, after_word)) && is_letter(at(b, next))).then_some(after_word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<Candidate> {
        parse_marker(s.as_bytes(), 0, Place::LineStart)
    }

    #[test]
    fn folding_maps_back_to_original_offsets() {
        let mut folder = Folder::default();
        let line = "Ｑ１．ａ answer";
        let view = folder.fold(line);
        assert_eq!(view.bytes, b"Q1.a answer");
        assert_eq!(view.orig(4), "Ｑ１．ａ".len());
        assert_eq!(view.orig(view.bytes.len()), line.len());
    }

    #[test]
    fn bare_numbers_need_punctuation() {
        assert!(parse("3 marks").is_none());
        assert!(parse("3. marks").is_some());
        assert!(parse("1 - 2 = -1").is_none());
        assert!(parse("1: 2 ratio").is_none());
        assert!(parse("(1) first").is_some());
    }

    #[test]
    fn labels_after_markers() {
        assert_eq!(parse_bare_label(b"Ans: The", 0), Some(4));
        assert_eq!(parse_bare_label(b"Ans The", 0), Some(3));
        assert_eq!(parse_bare_label(b"Answer is 5", 0), None);
        assert_eq!(parse_bare_label(b"Ans: 45", 0), None);
    }
}
