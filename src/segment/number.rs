//! Question numbers: the canonical form, paper order, and parsing of the spellings a person
//! uses in a catalog or an API call.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use unicode_normalization::UnicodeNormalization;

use super::marker::{is_space, parse_prefix};

/// Largest top-level number accepted anywhere.
pub(crate) const MAX_TOP: u32 = 999;

const ROMAN_UNITS: [&str; 10] = ["", "i", "ii", "iii", "iv", "v", "vi", "vii", "viii", "ix"];

/// Value of a roman numeral written with i, v and x (any case) in standard form, 1..=39.
pub(crate) fn roman_value(run: &[u8]) -> Option<u8> {
    let tens = run
        .iter()
        .take_while(|c| c.eq_ignore_ascii_case(&b'x'))
        .count();
    if tens > 3 {
        return None;
    }
    let rest = &run[tens..];
    let unit = ROMAN_UNITS
        .iter()
        .position(|u| u.as_bytes().eq_ignore_ascii_case(rest))?;
    let value = tens * 10 + unit;
    (value > 0).then_some(value as u8)
}

fn push_roman(out: &mut String, value: u8) {
    for _ in 0..value / 10 {
        out.push('x');
    }
    out.push_str(ROMAN_UNITS[usize::from(value % 10)]);
}

/// The part under a top-level number: a letter (`b'a'..=b'z'`) or a roman numeral (1..=39).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Sub {
    Letter(u8),
    Roman(u8),
}

/// A question number with its meaning: unlike the canonical string it knows whether a
/// second-level "i" is the letter after "h" or the roman one, which decides what a following
/// "(ii)" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Num {
    pub top: u32,
    pub sub: Option<Sub>,
    /// Roman numeral under a letter; only set when `sub` is a letter.
    pub roman: Option<u8>,
}

impl Num {
    pub(crate) fn top(top: u32) -> Num {
        Num {
            top,
            sub: None,
            roman: None,
        }
    }

    pub(crate) fn key(self) -> Key {
        let (sub_major, sub_minor) = match self.sub {
            None => (0, 0),
            // The letters that are also roman numerals read the same as those numerals, so
            // they must sort and compare as them (see `Key`).
            Some(Sub::Letter(c)) => match roman_value(&[c]) {
                Some(value) => (ROMAN_SLOT, value),
                None => (c - b'a' + 1, 0),
            },
            Some(Sub::Roman(value)) => (ROMAN_SLOT, value),
        };
        Key {
            top: self.top,
            sub_major,
            sub_minor,
            roman: self.roman.unwrap_or(0),
        }
    }

    pub(crate) fn parent(self) -> Option<Num> {
        if self.roman.is_some() {
            Some(Num {
                roman: None,
                ..self
            })
        } else if self.sub.is_some() {
            Some(Num::top(self.top))
        } else {
            None
        }
    }
}

/// Letter slot of "i": second-level roman numerals sort here, so that both "h < i < j" and
/// "i < ii < iii" hold.
const ROMAN_SLOT: u8 = 9;

/// Compact identity and paper-order sort key of a canonical question number: a bijection with
/// the canonical strings.
///
/// A second-level "i", "v" or "x" reads the same whether the student meant a letter or a roman
/// numeral, so it has one key: second-level romans live in the slot of the letter "i", ordered by
/// value. That puts "1.h < 1.i < 1.j" and "1.i < 1.ii < 1.iv < 1.v < 1.x" both in paper order;
/// only a paper with more than 21 lettered parts ("1.v" as a letter) would sort oddly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    top: u32,
    sub_major: u8,
    sub_minor: u8,
    roman: u8,
}

impl Key {
    fn render(self) -> String {
        let mut out = self.top.to_string();
        if self.sub_major == ROMAN_SLOT {
            out.push('.');
            push_roman(&mut out, self.sub_minor);
        } else if self.sub_major != 0 {
            out.push('.');
            out.push(char::from(b'a' + self.sub_major - 1));
        }
        if self.roman != 0 {
            out.push('.');
            push_roman(&mut out, self.roman);
        }
        out
    }
}

/// A question number in canonical form: dot-separated components, the top level in decimal
/// digits, then an optional lowercase letter part, then an optional lowercase roman numeral part:
/// `"1"`, `"1.a"`, `"3.b.ii"`, `"12.c"`, `"4.ii"`.
///
/// Ordering is paper order: numeric on the top level (`2 < 10`), a parent before its parts
/// (`1 < 1.a < 1.a.i < 1.b`), letters alphabetically and roman numerals by value. A
/// second-level `i`, `v` or `x` is the same number whether it was meant as a letter or a roman
/// numeral; it sorts as the numeral, which lands `i` between `h` and `j` as well.
///
/// Serialised as the plain canonical string; deserialising accepts any spelling
/// [`QuestionNumber::parse`] accepts and canonicalises it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QuestionNumber {
    // Field order matters: the derived `Ord` compares `key` first, and `text` is a function of it.
    key: Key,
    text: String,
}

impl QuestionNumber {
    /// Parses how a person might write a question number in a catalog or API — `"1.a"`,
    /// `"1(a)"`, `"Q1b"`, `"2"`, `"3 (b)(ii)"`, `"Question 4"`, full-width `"１．ａ"` — into
    /// canonical form; `None` if the text is not a question number.
    pub fn parse(raw: &str) -> Option<QuestionNumber> {
        let folded: String = raw.nfkc().collect();
        let bytes = trim_bytes(folded.as_bytes());
        let mut i = parse_prefix(bytes, 0).map_or(0, |prefix| prefix.end);
        if bytes.get(i) == Some(&b'(') {
            i += 1;
        }
        let digits_start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let top = parse_top(&bytes[digits_start..i], MAX_TOP)?;

        let mut runs: [&[u8]; 2] = [&[], &[]];
        let mut run_count = 0;
        while i < bytes.len() {
            let c = bytes[i];
            if is_space(c) || matches!(c, b'.' | b'(' | b')' | b'[' | b']' | b'-' | b'_' | b':') {
                i += 1;
            } else if c.is_ascii_alphabetic() {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                    i += 1;
                }
                if run_count == runs.len() {
                    return None;
                }
                runs[run_count] = &bytes[start..i];
                run_count += 1;
            } else {
                return None;
            }
        }
        let num = match &runs[..run_count] {
            [] => Num::top(top),
            [run] => {
                let (sub, roman) = split_first_component(run)?;
                Num {
                    top,
                    sub: Some(sub),
                    roman,
                }
            }
            [letter, roman] => Num {
                top,
                sub: Some(Sub::Letter(single_letter(letter)?)),
                roman: Some(roman_value(roman)?),
            },
            _ => return None,
        };
        Some(QuestionNumber::from_num(num))
    }

    /// The canonical text, e.g. `"3.b.ii"`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The number one level up: `3.b.ii → 3.b → 3 → None`.
    pub fn parent(&self) -> Option<QuestionNumber> {
        let mut key = self.key;
        if key.roman != 0 {
            key.roman = 0;
        } else if key.sub_major != 0 {
            key.sub_major = 0;
            key.sub_minor = 0;
        } else {
            return None;
        }
        Some(QuestionNumber::from_key(key))
    }

    /// The top-level question number: `3` for `3.b.ii`.
    pub fn top_level(&self) -> u32 {
        self.key.top
    }

    /// True when `other` is a part (direct or nested) of this question: `3` is an ancestor of
    /// `3.b` and `3.b.ii`, not of itself.
    pub fn is_ancestor_of(&self, other: &QuestionNumber) -> bool {
        let mut up = other.parent();
        while let Some(parent) = up {
            if parent == *self {
                return true;
            }
            up = parent.parent();
        }
        false
    }

    pub(crate) fn from_num(num: Num) -> QuestionNumber {
        QuestionNumber::from_key(num.key())
    }

    fn from_key(key: Key) -> QuestionNumber {
        QuestionNumber {
            key,
            text: key.render(),
        }
    }

    pub(crate) fn key(&self) -> Key {
        self.key
    }
}

/// Interprets the first letter run after a top-level number: a letter ("b"), a roman numeral
/// ("ii"), or a letter with a roman numeral run on ("bii").
pub(crate) fn split_first_component(run: &[u8]) -> Option<(Sub, Option<u8>)> {
    if let [c] = run {
        return Some((Sub::Letter(c.to_ascii_lowercase()), None));
    }
    if let Some(value) = roman_value(run) {
        return Some((Sub::Roman(value), None));
    }
    // A letter with a roman numeral run on ("bii"); not when the letter is itself a roman
    // digit, where "iiii" or "ivi" would be guesses.
    let (first, rest) = run.split_first()?;
    if roman_value(&[*first]).is_some() {
        return None;
    }
    Some((
        Sub::Letter(single_letter(&[*first])?),
        Some(roman_value(rest)?),
    ))
}

fn single_letter(run: &[u8]) -> Option<u8> {
    match run {
        [c] if c.is_ascii_alphabetic() => Some(c.to_ascii_lowercase()),
        _ => None,
    }
}

/// Decimal top-level number in 1..=max; leading zeros are allowed ("01").
pub(crate) fn parse_top(digits: &[u8], max: u32) -> Option<u32> {
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0u32, |acc, d| acc * 10 + u32::from(d - b'0'));
    (1..=max).contains(&value).then_some(value)
}

fn trim_bytes(mut bytes: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = bytes {
        if !is_space(*first) {
            break;
        }
        bytes = rest;
    }
    while let [rest @ .., last] = bytes {
        if !is_space(*last) {
            break;
        }
        bytes = rest;
    }
    bytes
}

impl fmt::Display for QuestionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for QuestionNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuestionNumber({:?})", self.text)
    }
}

impl AsRef<str> for QuestionNumber {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// Why a text is not a question number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a question number (expected forms like \"1\", \"1.a\", \"3.b.ii\", \"Q2(b)\")")]
pub struct ParseQuestionNumberError {
    input: String,
}

impl ParseQuestionNumberError {
    /// The rejected text (cut to 64 characters).
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl FromStr for QuestionNumber {
    type Err = ParseQuestionNumberError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        QuestionNumber::parse(s).ok_or_else(|| ParseQuestionNumberError {
            input: s.chars().take(64).collect(),
        })
    }
}

impl Serialize for QuestionNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for QuestionNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}
