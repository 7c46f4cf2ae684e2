//! Word-level correction with an English lexicon (word frequencies from
//! the `wordfreq` package, see `scripts/fetch-ocr-models.sh`). Owns the
//! lexicon, candidate search by edit distance, and CTC re-scoring of a
//! candidate against the recogniser's own frame probabilities.
//!
//! Promises: only words the recogniser emitted are touched, one for one:
//! a word is replaced only when its least sure letter is below a
//! confidence bound and a lexicon word within a small edit distance
//! explains the same frames better once word frequency is taken into
//! account (`ln P_ctc(candidate) + λ·ln freq` beats the same score of the
//! recognised word: with a floor frequency when it is not in the lexicon,
//! with its own frequency plus a margin when it is, so "mo" read unsure
//! becomes "no" but a lexicon word the frames support stays). Spaces,
//! punctuation around words, tokens with digits and the number of words
//! never change, so no word the page does not show can appear. Case
//! follows the recognised word. No panics on any input.

use std::collections::HashMap;
use std::path::Path;

use super::rec::{Charset, CtcDecoded};

/// Tuning of [`correct_line`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorrectionParams {
    /// Lexicon words rarer than this many centibels (`freq = 10^(-cB/100)`)
    /// are not loaded: the long tail of wordfreq is names and typos.
    pub max_cb: u16,
    /// Words whose least sure letter has at least this probability are
    /// trusted as read.
    pub max_letter_prob: f32,
    /// Weight λ of the log frequency against the CTC log-likelihood.
    pub prior_weight: f32,
    /// Frequency (centibels) assumed for the recognised word itself.
    pub oov_cb: u16,
    /// Edit-distance budget: 1 for words of up to 4 letters, else this.
    pub max_edits: usize,
    /// Words that are in the lexicon are reconsidered when their least
    /// sure letter is below this probability (0 turns this off)...
    pub known_max_letter_prob: f32,
    /// ...and a candidate replaces them only when its score beats theirs
    /// (with their own frequency) by this many nats.
    pub known_margin: f32,
    /// Frequency (centibels) given to the question paper's own words
    /// (questions and standard answers) that are rarer or missing in the
    /// lexicon: 500 (10⁻⁵), a little more frequent than accounting words
    /// such as "debit" (538) or "ledger" (551).
    /// A prior, not measured: no dev page answers a stored paper.
    pub paper_cb: u16,
}

impl Default for CorrectionParams {
    fn default() -> Self {
        Self {
            max_cb: 700,
            max_letter_prob: 0.95,
            prior_weight: 1.0,
            oov_cb: 800,
            max_edits: 2,
            known_max_letter_prob: 0.95,
            known_margin: 2.0,
            paper_cb: 500,
        }
    }
}

/// Lower-case words with their frequency in centibels.
#[derive(Debug, Clone, Default)]
pub struct Lexicon {
    words: HashMap<String, u16>,
    by_len: Vec<Vec<(Vec<char>, u16)>>,
}

impl Lexicon {
    /// Reads `word<TAB>centibels` lines, keeping words of letters (and inner
    /// apostrophes) no rarer than `max_cb`. Malformed lines are skipped.
    pub fn load(path: &Path, max_cb: u16) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read lexicon {}: {e}", path.display()))?;
        let lex = Self::from_entries(
            text.lines().filter_map(|l| {
                let (w, cb) = l.split_once('\t')?;
                Some((w, cb.trim().parse::<u16>().ok()?))
            }),
            max_cb,
        );
        if lex.words.is_empty() {
            return Err(format!("lexicon {} has no usable words", path.display()));
        }
        Ok(lex)
    }

    /// Builds a lexicon from `(word, centibels)` pairs (see [`Self::load`]).
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, u16)>,
        max_cb: u16,
    ) -> Self {
        let mut lex = Lexicon::default();
        for (w, cb) in entries {
            if cb > max_cb || !is_word(w) {
                continue;
            }
            let w = w.to_lowercase();
            let chars: Vec<char> = w.chars().collect();
            match lex.words.get_mut(&w) {
                Some(old) if *old <= cb => continue,
                Some(old) => *old = cb,
                None => {
                    if lex.by_len.len() <= chars.len() {
                        lex.by_len.resize(chars.len() + 1, Vec::new());
                    }
                    lex.by_len[chars.len()].push((chars, cb));
                    lex.words.insert(w, cb);
                }
            }
        }
        lex
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Frequency (centibels) of a word, case-insensitively.
    pub fn get(&self, word: &str) -> Option<u16> {
        self.words.get(&word.to_lowercase()).copied()
    }

    /// The words of a text (a question paper's questions and standard answers), each given
    /// the frequency `cb`: words of letters with inner apostrophes, two letters or more,
    /// split at everything else ("ledger's" stays whole, "cash-flow" gives "cash", "flow").
    pub fn from_text(text: &str, cb: u16) -> Self {
        let words: Vec<&str> = text
            .split(|c: char| !(c.is_alphabetic() || c == '\''))
            .map(|w| w.trim_matches('\''))
            .filter(|w| w.chars().count() >= 2)
            .collect();
        Self::from_entries(words.into_iter().map(|w| (w, cb)), cb)
    }

    /// Lexicon words within `max_dist` edits of `word` (lower-case chars).
    fn candidates(&self, word: &[char], max_dist: usize) -> Vec<(&[char], u16)> {
        let lo = word.len().saturating_sub(max_dist).max(1);
        let hi = word.len() + max_dist;
        let mut out = Vec::new();
        for len in lo..=hi {
            let Some(bucket) = self.by_len.get(len) else {
                continue;
            };
            for (w, cb) in bucket {
                if bounded_levenshtein(word, w, max_dist).is_some() {
                    out.push((w.as_slice(), *cb));
                }
            }
        }
        out
    }
}

fn is_word(w: &str) -> bool {
    let chars: Vec<char> = w.chars().collect();
    !chars.is_empty()
        && chars.first().is_some_and(|c| c.is_alphabetic())
        && chars.last().is_some_and(|c| c.is_alphabetic())
        && chars.iter().all(|c| c.is_alphabetic() || *c == '\'')
}

/// Levenshtein distance if it is at most `max`, else `None` (stops early).
pub fn bounded_levenshtein(a: &[char], b: &[char], max: usize) -> Option<usize> {
    if a.len().abs_diff(b.len()) > max {
        return None;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        let mut row_min = cur[0];
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
            row_min = row_min.min(cur[j + 1]);
        }
        if row_min > max {
            return None;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    (prev[b.len()] <= max).then_some(prev[b.len()])
}

/// For each lower-case letter, the recogniser classes that spell it in
/// either case (scoring is case-insensitive: handwriting mixes cases).
#[derive(Debug, Clone, Default)]
pub struct LetterClasses {
    map: HashMap<char, Vec<usize>>,
}

impl LetterClasses {
    pub fn new(charset: &Charset) -> Self {
        let mut map: HashMap<char, Vec<usize>> = HashMap::new();
        for class in 1..charset.len() {
            let s = charset.symbol(class);
            let mut it = s.chars();
            let (Some(c), None) = (it.next(), it.next()) else {
                continue;
            };
            if c.is_alphabetic() || c == '\'' {
                for l in c.to_lowercase() {
                    map.entry(l).or_default().push(class);
                }
            }
        }
        Self { map }
    }

    fn classes(&self, c: char) -> Option<&[usize]> {
        self.map.get(&c).map(Vec::as_slice)
    }
}

/// Natural-log CTC probability that frames `frames` of `probs` (`T×classes`)
/// spell `word` (lower-case), each letter's probability summed over its
/// case variants. `None` when a letter has no class or the span is empty.
pub fn ctc_log_likelihood(
    probs: &[f32],
    classes: usize,
    frames: std::ops::Range<usize>,
    word: &[char],
    letters: &LetterClasses,
) -> Option<f64> {
    if frames.is_empty() || word.is_empty() || frames.end.saturating_mul(classes) > probs.len() {
        return None;
    }
    let cls: Vec<&[usize]> = word
        .iter()
        .map(|c| letters.classes(*c))
        .collect::<Option<_>>()?;
    let s_len = 2 * word.len() + 1;
    // Extended label: even = blank, odd = letter (s-1)/2.
    let y = |t: usize, s: usize| -> f64 {
        let row = &probs[t * classes..(t + 1) * classes];
        if s.is_multiple_of(2) {
            row[0] as f64
        } else {
            cls[s / 2].iter().map(|&k| row[k] as f64).sum()
        }
    };
    let mut alpha = vec![0f64; s_len];
    let t0 = frames.start;
    alpha[0] = y(t0, 0);
    alpha[1] = y(t0, 1);
    let mut log_scale = 0f64;
    let mut next = vec![0f64; s_len];
    for t in frames.clone().skip(1) {
        for s in 0..s_len {
            let mut a = alpha[s];
            if s >= 1 {
                a += alpha[s - 1];
            }
            if s >= 2 && s % 2 == 1 && word[s / 2] != word[s / 2 - 1] {
                a += alpha[s - 2];
            }
            next[s] = a * y(t, s);
        }
        std::mem::swap(&mut alpha, &mut next);
        // Rescale each frame so long spans cannot underflow.
        let sum: f64 = alpha.iter().sum();
        if sum.is_nan() || sum <= 0.0 || !sum.is_finite() {
            return None;
        }
        for a in alpha.iter_mut() {
            *a /= sum;
        }
        log_scale += sum.ln();
    }
    let end = alpha[s_len - 1] + alpha[s_len - 2];
    (end > 0.0).then(|| end.ln() + log_scale)
}

/// Corrects the words of one decoded line (see the module doc). `probs` are
/// the line's frame probabilities (`frames × classes`) that `decoded` came
/// from; `extra` holds more words (the question paper's) that count as
/// lexicon words, at the more frequent of their two frequencies. Returns the
/// corrected text and how many words changed.
#[allow(clippy::too_many_arguments)]
pub fn correct_line(
    decoded: &CtcDecoded,
    probs: &[f32],
    frames: usize,
    classes: usize,
    charset: &Charset,
    letters: &LetterClasses,
    lexicon: &Lexicon,
    extra: Option<&Lexicon>,
    params: &CorrectionParams,
) -> (String, usize) {
    let chars = &decoded.chars;
    if chars.is_empty() || probs.len() < frames.saturating_mul(classes) {
        return (decoded.text.clone(), 0);
    }
    let is_space = |i: usize| charset.symbol(chars[i].class).trim().is_empty();
    let ln10 = std::f64::consts::LN_10;
    let mut out = String::with_capacity(decoded.text.len() + 8);
    let mut changed = 0;
    let mut i = 0;
    while i < chars.len() {
        if is_space(i) {
            out.push(' ');
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !is_space(i) {
            i += 1;
        }
        // Word = chars[start..i]; its core is the run between leading and
        // trailing non-letters.
        let sym = |k: usize| charset.symbol(chars[k].class);
        let is_letter = |k: usize| sym(k).chars().all(char::is_alphabetic) && !sym(k).is_empty();
        let (mut a, mut b) = (start, i);
        while a < b && !is_letter(a) {
            a += 1;
        }
        while b > a && !is_letter(b - 1) {
            b -= 1;
        }
        for k in start..a {
            out.push_str(sym(k));
        }
        let core: String = (a..b).map(sym).collect();
        // Tokens with digits ("1960s", "6th") are numbers: never touched.
        let has_digit = (start..i).any(|k| sym(k).chars().any(|c| c.is_numeric()));
        let replacement = if b - a >= 2 && !has_digit {
            try_correct(
                &core, a, b, decoded, probs, frames, classes, letters, lexicon, extra, params, ln10,
            )
        } else {
            None
        };
        match replacement {
            Some(r) => {
                out.push_str(&r);
                changed += 1;
            }
            None => out.push_str(&core),
        }
        for k in b..i {
            out.push_str(sym(k));
        }
    }
    (out, changed)
}

#[allow(clippy::too_many_arguments)]
fn try_correct(
    core: &str,
    a: usize,
    b: usize,
    decoded: &CtcDecoded,
    probs: &[f32],
    frames: usize,
    classes: usize,
    letters: &LetterClasses,
    lexicon: &Lexicon,
    extra: Option<&Lexicon>,
    params: &CorrectionParams,
    ln10: f64,
) -> Option<String> {
    let chars = &decoded.chars;
    if !core.chars().all(|c| c.is_alphabetic() || c == '\'') {
        return None;
    }
    let known = match (lexicon.get(core), extra.and_then(|x| x.get(core))) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let gate = match known {
        Some(_) => params.known_max_letter_prob,
        None => params.max_letter_prob,
    };
    let least = chars[a..b].iter().map(|c| c.prob).fold(f32::MAX, f32::min);
    if least >= gate {
        return None;
    }
    // The word's frames: everything between the neighbouring emitted
    // characters (blanks around the word belong to it).
    let first = if a == 0 { 0 } else { chars[a - 1].last + 1 };
    let end = chars.get(b).map_or(frames, |c| c.first);
    if first >= end {
        return None;
    }
    let lower: Vec<char> = core.to_lowercase().chars().collect();
    let lambda = params.prior_weight as f64;
    let own = ctc_log_likelihood(probs, classes, first..end, &lower, letters)?;
    let own_score = match known {
        Some(cb) => own - lambda * ln10 * cb as f64 / 100.0 + params.known_margin as f64,
        None => own - lambda * ln10 * params.oov_cb as f64 / 100.0,
    };
    let budget = if lower.len() <= 4 {
        1
    } else {
        params.max_edits
    };
    let mut candidates = lexicon.candidates(&lower, budget);
    if let Some(extra) = extra {
        // A word in both competes once, at its more frequent entry: scoring it twice would
        // change nothing but the time.
        for (w, cb) in extra.candidates(&lower, budget) {
            match candidates.iter_mut().find(|(c, _)| *c == w) {
                Some(entry) => entry.1 = entry.1.min(cb),
                None => candidates.push((w, cb)),
            }
        }
    }
    let mut best: Option<(f64, &[char])> = None;
    for (cand, cb) in candidates {
        if cand == lower.as_slice() {
            continue;
        }
        let Some(ll) = ctc_log_likelihood(probs, classes, first..end, cand, letters) else {
            continue;
        };
        let score = ll - lambda * ln10 * cb as f64 / 100.0;
        if score > own_score && best.is_none_or(|(s, _)| score > s) {
            best = Some((score, cand));
        }
    }
    let (_, cand) = best?;
    Some(apply_case(core, cand))
}

/// Spells `cand` (lower-case) with the case pattern of `original`: all
/// capitals stay capitals, a capital first letter stays one.
fn apply_case(original: &str, cand: &[char]) -> String {
    let letters: Vec<char> = original.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() >= 2 && letters.iter().all(|c| c.is_uppercase()) {
        return cand.iter().flat_map(|c| c.to_uppercase()).collect();
    }
    let mut out = String::new();
    for (k, c) in cand.iter().enumerate() {
        if k == 0 && letters.first().is_some_and(|c| c.is_uppercase()) {
            out.extend(c.to_uppercase());
        } else {
            out.push(*c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocr::ppocr::rec::ctc_greedy;

    const KEYS: &str = "blank\na\nb\nc\nd\ne\nh\nt\nT\n.\n,\n6\n \n";

    fn lexicon() -> Lexicon {
        Lexicon::from_entries(
            [
                ("the", 127),
                ("bed", 400),
                ("bead", 450),
                ("a", 150),
                ("zzz9", 100),
                ("rare", 900),
                ("tha", 600),
                ("bet", 650),
            ],
            700,
        )
    }

    /// Frames spelling `s` (one frame per char, a blank between), where each
    /// listed char gets probability `p` and an alternative class `alt` gets
    /// the rest.
    fn frames_for(cs: &Charset, spec: &[(char, f32, char)]) -> (Vec<f32>, usize) {
        let classes = cs.len();
        let class = |c: char| cs.class_of(c).unwrap();
        let mut out = Vec::new();
        for &(c, p, alt) in spec {
            let mut row = vec![0.0f32; classes];
            row[class(c)] = p;
            row[class(alt)] += 1.0 - p;
            out.extend(row);
            let mut blank = vec![0.0f32; classes];
            blank[0] = 1.0;
            out.extend(blank);
        }
        let n = out.len() / classes;
        (out, n)
    }

    fn run(spec: &[(char, f32, char)]) -> (String, usize, String) {
        let cs = Charset::from_keys(KEYS);
        let letters = LetterClasses::new(&cs);
        let (probs, n) = frames_for(&cs, spec);
        let d = ctc_greedy(&probs, n, cs.len(), &cs);
        let (text, changed) = correct_line(
            &d,
            &probs,
            n,
            cs.len(),
            &cs,
            &letters,
            &lexicon(),
            None,
            &CorrectionParams::default(),
        );
        (text, changed, d.text)
    }

    /// Like [`run`], with the words of `paper` as question-paper vocabulary.
    fn run_with_paper(spec: &[(char, f32, char)], paper: &str) -> (String, usize, String) {
        let cs = Charset::from_keys(KEYS);
        let letters = LetterClasses::new(&cs);
        let (probs, n) = frames_for(&cs, spec);
        let d = ctc_greedy(&probs, n, cs.len(), &cs);
        let paper = Lexicon::from_text(paper, CorrectionParams::default().paper_cb);
        let (text, changed) = correct_line(
            &d,
            &probs,
            n,
            cs.len(),
            &cs,
            &letters,
            &lexicon(),
            Some(&paper),
            &CorrectionParams::default(),
        );
        (text, changed, d.text)
    }

    #[test]
    fn loads_only_words_within_frequency() {
        let lex = lexicon();
        assert_eq!(lex.get("The"), Some(127));
        assert_eq!(lex.get("zzz9"), None);
        assert_eq!(lex.get("rare"), None);
        assert_eq!(lex.len(), 6);
    }

    #[test]
    fn unsure_out_of_lexicon_word_is_fixed_with_case_kept() {
        // "Tha" read as "Thc"? No: "Thc" with an unsure 'c' whose runner-up
        // is 'e' becomes "The".
        let (text, changed, raw) = run(&[
            ('T', 0.99, 'a'),
            ('h', 0.98, 'a'),
            ('c', 0.55, 'e'),
            ('.', 0.99, 'a'),
        ]);
        assert_eq!(raw, "Thc.");
        assert_eq!((text.as_str(), changed), ("The.", 1));
    }

    #[test]
    fn sure_or_known_words_are_left_alone() {
        // All letters sure: kept although out of lexicon.
        let (text, changed, _) = run(&[('b', 0.99, 'a'), ('c', 0.99, 'a'), ('d', 0.99, 'a')]);
        assert_eq!((text.as_str(), changed), ("bcd", 0));
        // In the lexicon and unsure, but no candidate is more frequent
        // ("bead", "bet" are rarer): kept.
        let (text, changed, _) = run(&[('b', 0.6, 'a'), ('e', 0.6, 'a'), ('d', 0.6, 'a')]);
        assert_eq!((text.as_str(), changed), ("bed", 0));
    }

    #[test]
    fn unsure_lexicon_word_yields_to_a_much_more_frequent_one() {
        // "tha" is a (rare) lexicon word; its unsure 'a' has 'e' as the
        // runner-up and "the" is far more frequent: replaced.
        let (text, changed, raw) = run(&[('t', 0.99, 'a'), ('h', 0.99, 'a'), ('a', 0.6, 'e')]);
        assert_eq!(raw, "tha");
        assert_eq!((text.as_str(), changed), ("the", 1));
        // Sure letters: a lexicon word is trusted as read.
        let (text, changed, _) = run(&[('t', 0.99, 'a'), ('h', 0.99, 'a'), ('a', 0.96, 'e')]);
        assert_eq!((text.as_str(), changed), ("tha", 0));
        // Unsure, but the frames barely support the frequent word ('e' at
        // 0.1%): the margin keeps the word as read.
        let (text, changed, _) = run(&[('b', 0.9, 'a'), ('e', 0.9, 'a'), ('t', 0.999, 'd')]);
        assert_eq!((text.as_str(), changed), ("bet", 0));
    }

    #[test]
    fn tokens_with_digits_are_never_touched() {
        // "6thc" would be "6the" if its letters were corrected.
        let (text, changed, raw) = run(&[
            ('6', 0.99, 'a'),
            ('t', 0.99, 'a'),
            ('h', 0.98, 'a'),
            ('c', 0.55, 'e'),
        ]);
        assert_eq!(raw, "6thc");
        assert_eq!((text.as_str(), changed), ("6thc", 0));
    }

    #[test]
    fn never_adds_or_removes_words() {
        // Unsure garbage with no close lexicon word stays as read; spaces,
        // single letters and punctuation pass through; word count is equal.
        let spec = [
            ('d', 0.6, 'c'),
            ('d', 0.6, 'c'),
            (' ', 0.99, 'a'),
            ('t', 0.99, 'a'),
            ('h', 0.99, 'a'),
            ('a', 0.6, 'e'),
            (',', 0.99, 'a'),
            (' ', 0.99, 'a'),
            ('6', 0.6, 'b'),
            (' ', 0.99, 'a'),
            ('a', 0.6, 'b'),
            (' ', 0.99, 'a'),
            ('t', 0.6, 'h'),
            ('h', 0.6, 'e'),
            ('c', 0.6, 'e'),
            (' ', 0.99, 'a'),
            ('.', 0.99, 'a'),
        ];
        let (text, changed, raw) = run(&spec);
        assert_eq!(raw, "dd tha, 6 a thc .");
        assert_eq!(text, "dd the, 6 a the .");
        assert_eq!(changed, 2);
        assert_eq!(
            text.split_whitespace().count(),
            raw.split_whitespace().count()
        );
    }

    #[test]
    fn paper_words_are_read_from_question_and_answer_text() {
        let lex = Lexicon::from_text(
            "Debit the cash-book; the ledger's total (2024) is £5 a",
            500,
        );
        for w in ["debit", "the", "cash", "book", "ledger's"] {
            assert_eq!(lex.get(w), Some(500), "{w}");
        }
        assert_eq!(lex.get("2024"), None);
        assert_eq!(lex.get("a"), None, "single letters are not vocabulary");
        assert_eq!(lex.len(), 7);
    }

    #[test]
    fn paper_vocabulary_fixes_only_unsure_words_the_frames_support() {
        // "dcb", its 'c' unsure with 'a' as runner-up: no general word is close, but the
        // paper's "dab" is, and the frames support it.
        let unsure = [('d', 0.99, 'a'), ('c', 0.55, 'a'), ('b', 0.99, 'a')];
        assert_eq!(run(&unsure).0, "dcb");
        let (text, changed, _) = run_with_paper(&unsure, "Explain why a dab is used.");
        assert_eq!((text.as_str(), changed), ("dab", 1));
        // The same word read with sure letters is what the student wrote: kept.
        let sure = [('d', 0.99, 'a'), ('c', 0.99, 'a'), ('b', 0.99, 'a')];
        let (text, changed, _) = run_with_paper(&sure, "Explain why a dab is used.");
        assert_eq!((text.as_str(), changed), ("dcb", 0));
    }

    #[test]
    fn paper_vocabulary_never_puts_words_on_the_page() {
        // Unsure words next to paper words one edit away ("add", "bead", "ahead"), but the
        // frames give no probability to the letter the paper word needs: nothing changes,
        // no word is added, removed or swapped for one the page does not show.
        let spec = [
            ('d', 0.6, 'c'),
            ('d', 0.6, 'c'),
            (' ', 0.99, 'a'),
            ('b', 0.6, 'c'),
            ('e', 0.6, 'c'),
            ('d', 0.6, 'c'),
            (' ', 0.99, 'a'),
            ('6', 0.6, 'b'),
            (' ', 0.99, 'a'),
            ('h', 0.6, 'c'),
            ('e', 0.6, 'c'),
            ('a', 0.6, 'c'),
            ('d', 0.6, 'c'),
            ('.', 0.99, 'a'),
        ];
        let paper = "Add the bead ahead of 6 beads; ahead, add 66 the theta.";
        let (text, changed, raw) = run_with_paper(&spec, paper);
        assert_eq!(raw, "dd bed 6 head.");
        assert_eq!((text.as_str(), changed), ("dd bed 6 head.", 0));
        let paper_only: Vec<&str> = paper
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !raw.split([' ', '.']).any(|r| r.eq_ignore_ascii_case(w)))
            .collect();
        for w in text.split([' ', '.']).filter(|w| !w.is_empty()) {
            assert!(!paper_only.contains(&w), "{w} came from the paper");
        }
    }

    #[test]
    fn ctc_likelihood_of_the_greedy_reading() {
        let cs = Charset::from_keys(KEYS);
        let letters = LetterClasses::new(&cs);
        let (probs, n) = frames_for(&cs, &[('b', 0.9, 'a'), ('e', 0.8, 'a')]);
        let ll = ctc_log_likelihood(&probs, cs.len(), 0..n, &['b', 'e'], &letters).unwrap();
        assert!((ll - (0.9f64 * 0.8).ln()).abs() < 1e-6, "{ll}");
        assert!(ctc_log_likelihood(&probs, cs.len(), 0..n, &['b', 'x'], &letters).is_none());
        assert!(ctc_log_likelihood(&probs, cs.len(), 0..0, &['b'], &letters).is_none());
        assert!(ctc_log_likelihood(&probs, cs.len(), 0..n + 5, &['b'], &letters).is_none());
        // Too few frames for the word: probability zero.
        assert!(ctc_log_likelihood(&probs, cs.len(), 0..1, &['b', 'e'], &letters).is_none());
    }

    #[test]
    fn levenshtein_bound() {
        let c = |s: &str| s.chars().collect::<Vec<_>>();
        assert_eq!(bounded_levenshtein(&c("thc"), &c("the"), 2), Some(1));
        assert_eq!(bounded_levenshtein(&c("abcdef"), &c("a"), 2), None);
        assert_eq!(bounded_levenshtein(&c("kitten"), &c("sitting"), 2), None);
        assert_eq!(bounded_levenshtein(&c("kitten"), &c("sitting"), 3), Some(3));
    }
}
