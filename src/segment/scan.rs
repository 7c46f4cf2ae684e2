//! Deciding which marker-shaped spans really start an answer, in one pass over the text.

use std::collections::{HashMap, HashSet};

use super::marker::{
    is_space, parse_bare_label, parse_marker, Candidate, FirstPart, Folder, Form, Label, LineView,
    Place,
};
use super::number::{Key, Num, QuestionNumber, Sub};

/// The question paper's numbers, indexed for the scanner.
pub(crate) struct Paper {
    /// Position in paper order: `4 * index + 3` for a listed number; a parent that is not itself
    /// listed sits just before its first part, at `4 * index + 1` for a question and
    /// `4 * index + 2` for a lettered part, so "2 < 2.a < 2.a.i".
    positions: HashMap<Key, u32>,
    /// Letter parts that have roman parts under them ("2.i" when the paper has "2.i.ii"): such
    /// an "i" is a letter.
    has_parts: HashSet<Key>,
}

impl Paper {
    pub(crate) fn new(known: &[QuestionNumber]) -> Paper {
        let mut positions = HashMap::with_capacity(known.len() * 2);
        let mut has_parts = HashSet::new();
        for (index, number) in known.iter().enumerate() {
            positions
                .entry(number.key())
                .or_insert(4 * index as u32 + 3);
        }
        for (index, number) in known.iter().enumerate() {
            let parent = number.parent();
            let grandparent = parent.as_ref().and_then(QuestionNumber::parent);
            if let (Some(parent), Some(grandparent)) = (&parent, &grandparent) {
                has_parts.insert(parent.key());
                positions
                    .entry(parent.key())
                    .or_insert(4 * index as u32 + 2);
                positions
                    .entry(grandparent.key())
                    .or_insert(4 * index as u32 + 1);
            } else if let Some(parent) = &parent {
                positions
                    .entry(parent.key())
                    .or_insert(4 * index as u32 + 1);
            }
        }
        Paper {
            positions,
            has_parts,
        }
    }

    fn position(&self, num: Num) -> Option<u32> {
        self.positions.get(&num.key()).copied()
    }

    /// Whether the paper lists `num` itself, not only parts of it.
    fn is_listed(&self, num: Num) -> bool {
        self.position(num).is_some_and(|position| position % 4 == 3)
    }
}

/// An accepted marker: the span `start..end` of the joined text is removed, and the text up to
/// the next boundary is the answer to `num`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Boundary {
    pub start: usize,
    pub end: usize,
    pub num: Num,
}

/// Words that make a following number a reference rather than a marker: "Section 2(b)",
/// "as in Q1", "IAS 1", "Article 21(a)", "quantity Q2". Not after a sentence end
/// ("... as above. Ans 4").
#[rustfmt::skip]
const REFERENCE_WORDS: &[&str] = &[
    "in", "of", "to", "see", "refer", "per", "from", "and", "or", "with", "under", "on", "at", "by",
    "for", "as", "than", "like", "the", "this", "that", "same", "previous", "above", "below",
    "also", "is", "was", "section", "sections", "article", "rule", "rules", "clause", "schedule",
    "paragraph", "regulation", "chapter", "part", "note", "notes", "page", "item", "equation",
    "ias", "ifrs", "figure", "table", "vide", "illustration", "example", "case", "step",
    "sub-section", "subsection", "act", "r/w", "read", "unit", "module", "lesson", "exercise",
    "quantity", "price", "demand", "supply", "output", "point", "curve", "level", "between",
    "where", "when", "then", "if", "order", "no", "q", "qn", "que", "ques", "question", "ans",
    "answer",
];

/// Abbreviations that make a following number a reference even with their dot: "Sec. 2(b)",
/// "Art. 21(a)", "p. 3", "Fig. 1(a)".
const REFERENCE_ABBREVIATIONS: &[&str] = &[
    "s", "ss", "sec", "secs", "art", "arts", "cl", "sch", "para", "paras", "reg", "ch", "chap",
    "r", "no", "nos", "p", "pg", "pp", "eq", "eqn", "fig", "figs", "ex", "illus", "vol", "u/s",
    "viz", "q", "qn", "ques", "ans", "i.e", "e.g", "cf", "ref",
];

struct Scanner<'p, 't> {
    paper: Option<&'p Paper>,
    /// The whole text, to look ahead past a line.
    text: &'t str,
    /// Offset of the line after the one being scanned.
    next_line: usize,
    /// The question in progress and its paper position (0 without a paper).
    current: Option<(Num, u32)>,
    /// Last bare number that was judged a list item in an answer: "2." after it is one too.
    plain_list: Option<u32>,
    /// Last part label judged a list item: "(b)" after "(a)" is one too.
    sub_list: Option<Label>,
    /// A marker ended its line, so an "Ans:" starting the next text line belongs to it.
    label_pending: bool,
    /// The last line with text ended in ':' ("Features:", "Essentials are as follows:-"),
    /// so a bare number or part on the next one starts a list.
    after_colon: bool,
    boundaries: Vec<Boundary>,
}

/// Finds the accepted markers of `text` (the pages joined with '\n'), in order.
pub(crate) fn scan(text: &str, paper: Option<&Paper>) -> Vec<Boundary> {
    let mut scanner = Scanner {
        paper,
        text,
        next_line: 0,
        current: None,
        plain_list: None,
        sub_list: None,
        label_pending: false,
        after_colon: false,
        boundaries: Vec::new(),
    };
    let mut folder = Folder::default();
    let mut offset = 0;
    for line in text.split('\n') {
        let view = folder.fold(line);
        scanner.next_line = offset + line.len() + 1;
        scanner.line(&view, offset);
        offset = scanner.next_line;
    }
    scanner.boundaries
}

type Interpretations = ([(Num, usize); 3], usize);

impl Scanner<'_, '_> {
    fn line(&mut self, view: &LineView<'_>, offset: usize) {
        let b = view.bytes;
        let start = skip_spaces(b, 0);
        if start == b.len() {
            return;
        }
        let mut i = start + 1;
        // Where the line's own text starts, after any accepted marker.
        let mut text_start = 0;
        let line_start = parse_marker(b, start, Place::LineStart)
            .and_then(|candidate| self.consider(&candidate, Place::LineStart, b));
        if let Some((num, position, end)) = line_start {
            i = self.accept(num, position, view, offset, start, end);
            text_start = i;
        } else if std::mem::take(&mut self.label_pending) {
            if let Some(end) = parse_bare_label(b, start) {
                if let Some(last) = self.boundaries.last_mut() {
                    last.end = offset + view.orig(end);
                }
                i = end;
                text_start = i;
            }
        }
        while i < b.len() {
            if is_space(b[i - 1]) && could_start_midline_marker(b[i]) {
                if let Some(candidate) = parse_marker(b, i, Place::MidLine) {
                    if let Some((num, position, end)) = self.consider(&candidate, Place::MidLine, b)
                    {
                        i = self.accept(num, position, view, offset, i, end).max(i + 1);
                        text_start = i;
                        continue;
                    }
                }
            }
            i += 1;
        }
        let text = &b[text_start.min(b.len())..];
        let text = text.trim_ascii_end();
        let text = text.strip_suffix(b"-").unwrap_or(text);
        self.after_colon = text.ends_with(b":");
    }

    /// Records an accepted marker at folded offsets `start..end`, and any part written right
    /// after it on the same line ("Q1) a) ...", "2: (b) ..."), and returns where scanning
    /// continues: after them and a bare "Ans:" label that follows.
    fn accept(
        &mut self,
        mut num: Num,
        mut position: u32,
        view: &LineView<'_>,
        offset: usize,
        mut start: usize,
        mut end: usize,
    ) -> usize {
        let b = view.bytes;
        loop {
            let next = skip_spaces(b, end);
            let label_end = parse_bare_label(b, next);
            self.label_pending = next == b.len();
            self.after_colon = false;
            self.current = Some((num, position));
            self.boundaries.push(Boundary {
                start: offset + view.orig(start),
                end: offset + view.orig(label_end.unwrap_or(end)),
                num,
            });
            if let Some(label_end) = label_end {
                return label_end;
            }
            let chained = parse_marker(b, next, Place::LineStart)
                .filter(|part| part.form == Form::SubPart)
                .and_then(|part| self.consider(&part, Place::LineStart, b));
            let Some((part_num, part_position, part_end)) = chained else {
                return end;
            };
            (num, position, start, end) = (part_num, part_position, next, part_end);
        }
    }

    /// Decides whether `candidate` starts an answer: the number and paper position it stands
    /// for, and where the removed marker text ends. Keeps the list-item memory up to date.
    fn consider(
        &mut self,
        candidate: &Candidate,
        place: Place,
        b: &[u8],
    ) -> Option<(Num, u32, usize)> {
        if place == Place::MidLine {
            let strong_shape = match candidate.form {
                Form::Strong => true,
                Form::Numbered => candidate.first.is_some(),
                _ => false,
            };
            if !strong_shape || follows_reference_word(b, candidate.start) {
                return None;
            }
        }
        let bare_number = candidate.form == Form::Numbered && candidate.first.is_none();
        let part_label = match (candidate.top, candidate.first) {
            (None, Some(FirstPart::Label(label))) => Some(label),
            _ => None,
        };
        // The next item of a list already seen inside this answer is another item, even when it
        // would otherwise pass for the next question.
        if let (true, Some(prev), Some(top)) = (bare_number, self.plain_list, candidate.top) {
            if top == prev + 1 {
                self.plain_list = Some(top);
                return None;
            }
        }
        if let (Some(label), Some(prev)) = (part_label, self.sub_list) {
            if label.follows(prev) {
                self.sub_list = Some(label);
                return None;
            }
        }
        // Without the paper, "Features:" followed by "(i)" or "1." is a list, not parts.
        let starts_list = self.paper.is_none()
            && self.after_colon
            && self.current.is_some()
            && (bare_number || part_label.is_some());
        let chosen =
            if starts_list || (candidate.answer_only && self.looks_like_result(candidate, b)) {
                None
            } else {
                self.choose(candidate, place, b)
            };
        if chosen.is_some() {
            self.plain_list = None;
            self.sub_list = None;
        } else {
            if bare_number {
                self.plain_list = candidate.top;
            }
            if part_label.is_some() {
                self.sub_list = part_label;
            }
        }
        chosen
    }

    /// "Ans. 9" ending a line, followed by another question's marker or by nothing: the result
    /// of a sum, since an answer label with no answer makes no sense. ("Ans 2" followed by
    /// "(a)" is a question with parts.)
    fn looks_like_result(&self, candidate: &Candidate, b: &[u8]) -> bool {
        if candidate.first.is_some() || skip_spaces(b, candidate.end) < b.len() {
            return false;
        }
        let rest = self.text.get(self.next_line..).unwrap_or("");
        let Some(next) = rest.split('\n').find(|line| !line.trim().is_empty()) else {
            return true;
        };
        let mut folder = Folder::default();
        let view = folder.fold(next);
        let start = skip_spaces(view.bytes, 0);
        parse_marker(view.bytes, start, Place::LineStart).is_some_and(|next| next.top.is_some())
    }

    fn choose(&self, candidate: &Candidate, place: Place, b: &[u8]) -> Option<(Num, u32, usize)> {
        let (interpretations, count) = self.interpretations(candidate, place);
        let interpretations = &interpretations[..count];
        let may_go_back = candidate.form == Form::Strong
            && (place == Place::LineStart || after_sentence_end(b, candidate.start));
        match self.paper {
            None => {
                // Without a paper only the most plausible reading counts: a later reading that
                // happens to go forward is how a restarted list would sneak through.
                let &(num, end) = interpretations.first()?;
                let forward = self
                    .current
                    .is_none_or(|(current, _)| num.key() > current.key());
                // "Ans: 45" is believable as a marker only within the current or next question.
                let next_question = self
                    .current
                    .map_or(u32::MAX, |(current, _)| current.top + 1);
                let accepted = match candidate.form {
                    Form::Strong => forward || may_go_back,
                    Form::WeakSubPart => false,
                    Form::Labelled => forward && num.top <= next_question,
                    Form::Numbered | Form::SubPart => forward,
                };
                accepted.then_some((num, 0, end))
            }
            Some(paper) => {
                // The first reading that is on the paper decides.
                let (num, end, position) = interpretations
                    .iter()
                    .find_map(|&(num, end)| paper.position(num).map(|pos| (num, end, pos)))?;
                let forward = self.current.is_none_or(|(_, current)| position > current);
                let same = self.current.is_some_and(|(_, current)| position == current);
                let accepted = match candidate.form {
                    Form::Strong => forward || same || may_go_back,
                    _ => forward,
                };
                accepted.then_some((num, position, end))
            }
        }
    }

    /// The numbers a candidate may stand for, most plausible first, each with where its marker
    /// text ends.
    fn interpretations(&self, candidate: &Candidate, place: Place) -> Interpretations {
        let mut out = [(Num::top(0), 0); 3];
        let mut count = 0;
        let mut push = |num: Num, end: usize| {
            out[count] = (num, end);
            count += 1;
        };
        let end = candidate.end;
        if let Some(top) = candidate.top {
            let full = match candidate.first {
                None => Num::top(top),
                Some(FirstPart::LetterRoman(letter, roman)) => Num {
                    top,
                    sub: Some(Sub::Letter(letter)),
                    roman: Some(roman),
                },
                Some(FirstPart::Label(label)) => match (label, candidate.second) {
                    (Label::Roman(value), _) => Num {
                        top,
                        sub: Some(Sub::Roman(value)),
                        roman: None,
                    },
                    (Label::Letter(letter) | Label::Either(letter, _), Some(roman)) => Num {
                        top,
                        sub: Some(Sub::Letter(letter)),
                        roman: Some(roman),
                    },
                    (Label::Letter(letter), None) => Num {
                        top,
                        sub: Some(Sub::Letter(letter)),
                        roman: None,
                    },
                    (Label::Either(letter, value), None) => Num {
                        top,
                        sub: Some(self.either_meaning(top, letter, value)),
                        roman: None,
                    },
                },
            };
            push(full, end);
            // "2(a)" where the paper lists "2" without parts: the student's own sub-division
            // of a question, so the marker is "2" and "(a)" stays in the answer.
            if let (Some(paper), Place::LineStart) = (self.paper, place) {
                if let Some(parent) = full.roman.and(full.parent()) {
                    if paper.is_listed(parent) {
                        push(parent, candidate.second_start);
                    }
                }
                if full.sub.is_some() && paper.is_listed(Num::top(top)) {
                    push(Num::top(top), candidate.first_start);
                }
            }
            return (out, count);
        }
        let (Some((current, _)), Some(FirstPart::Label(label))) = (self.current, candidate.first)
        else {
            return (out, count);
        };
        let top = current.top;
        let letter_part = |letter| Num {
            top,
            sub: Some(Sub::Letter(letter)),
            roman: None,
        };
        match (label, current.sub) {
            (Label::Letter(letter), _) => push(letter_part(letter), end),
            (Label::Roman(value), Some(Sub::Letter(parent))) => push(
                Num {
                    top,
                    sub: Some(Sub::Letter(parent)),
                    roman: Some(value),
                },
                end,
            ),
            (Label::Roman(value), _) => push(
                Num {
                    top,
                    sub: Some(Sub::Roman(value)),
                    roman: None,
                },
                end,
            ),
            (Label::Either(letter, value), Some(Sub::Letter(parent))) => {
                let as_letter = letter_part(letter);
                let as_roman = Num {
                    top,
                    sub: Some(Sub::Letter(parent)),
                    roman: Some(value),
                };
                // "(i)" right after "(h)" is the next letter; otherwise a roman part of the
                // current letter.
                if parent + 1 == letter {
                    push(as_letter, end);
                    push(as_roman, end);
                } else {
                    push(as_roman, end);
                    push(as_letter, end);
                }
            }
            (Label::Either(_, value), Some(Sub::Roman(_))) => push(
                Num {
                    top,
                    sub: Some(Sub::Roman(value)),
                    roman: None,
                },
                end,
            ),
            (Label::Either(letter, value), None) => push(
                Num {
                    top,
                    sub: Some(self.either_meaning(top, letter, value)),
                    roman: None,
                },
                end,
            ),
        }
        (out, count)
    }

    /// Whether a second-level "i" ("v", "x") under `top` is a letter or a roman numeral. It reads
    /// the same either way; the meaning decides what a following "(ii)" is.
    fn either_meaning(&self, top: u32, letter: u8, value: u8) -> Sub {
        let previous = Num {
            top,
            sub: Some(Sub::Letter(letter - 1)),
            roman: None,
        };
        let after_previous_letter = self.current.is_some_and(|(current, _)| {
            current.top == top && current.sub == Some(Sub::Letter(letter - 1))
        });
        let paper_says_letter = self.paper.is_some_and(|paper| {
            paper.position(previous).is_some()
                || paper.has_parts.contains(
                    &Num {
                        top,
                        sub: Some(Sub::Letter(letter)),
                        roman: None,
                    }
                    .key(),
                )
        });
        if after_previous_letter || paper_says_letter {
            Sub::Letter(letter)
        } else {
            Sub::Roman(value)
        }
    }
}

fn skip_spaces(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && is_space(b[i]) {
        i += 1;
    }
    i
}

/// Mid-line markers start with a digit or a prefix word (Q..., Ans..., Sol...).
fn could_start_midline_marker(c: u8) -> bool {
    c.is_ascii_digit() || matches!(c.to_ascii_lowercase(), b'q' | b'a' | b's')
}

/// The word before `start` makes the number a reference: "Section 2(b)", "see Q1".
fn follows_reference_word(b: &[u8], start: usize) -> bool {
    let mut end = start;
    while end > 0 && is_space(b[end - 1]) {
        end -= 1;
    }
    let mut word_start = end;
    while word_start > 0 && !is_space(b[word_start - 1]) {
        word_start -= 1;
    }
    let word = &b[word_start..end];
    let word = word.strip_prefix(b"(").unwrap_or(word);
    let is_one_of = |list: &[&str], word: &[u8]| {
        !word.is_empty() && list.iter().any(|w| w.as_bytes().eq_ignore_ascii_case(word))
    };
    if let Some(abbreviation) = word.strip_suffix(b".") {
        if is_one_of(REFERENCE_ABBREVIATIONS, abbreviation) {
            return true;
        }
    }
    if matches!(word.last(), Some(b'.' | b'!' | b'?')) {
        return false;
    }
    let word = match word.last() {
        Some(b',' | b':' | b';') => &word[..word.len() - 1],
        _ => word,
    };
    is_one_of(REFERENCE_WORDS, word) || is_one_of(REFERENCE_ABBREVIATIONS, word)
}

/// A mid-line marker that goes back to an earlier question is only believable as the start of
/// a new sentence.
fn after_sentence_end(b: &[u8], start: usize) -> bool {
    b[..start]
        .iter()
        .rev()
        .find(|c| !is_space(**c))
        .is_some_and(|c| matches!(c, b'.' | b'!' | b'?'))
}
