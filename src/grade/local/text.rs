//! Plain-text helpers of the local grader: splitting answers into sentences/clauses (with byte
//! spans, so span embeddings can be pooled from one model run), content words with a light
//! stemmer, acronyms and what they abbreviate, and shortening key points for feedback.
//!
//! Promises: spans always lie on char boundaries of the input, are non-empty after trimming and
//! in order; nothing here allocates per character beyond the output.

use std::collections::HashSet;

/// A piece of an answer: its trimmed text and byte range in the original string.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Sentences longer than this many words are cut further at commas/semicolons, so one long
/// sentence listing several ideas still yields one key point per idea.
const LONG_SENTENCE_WORDS: usize = 18;
/// Clauses shorter than this many words are merged back into their neighbour: a two-word
/// fragment carries too little meaning for a sentence embedding.
const MIN_CLAUSE_WORDS: usize = 4;

/// Split into sentences (at `.`, `!`, `?`, `;`, `:` followed by whitespace, at line breaks and
/// list bullets), then split long sentences into clauses at commas.
pub fn split_pieces(text: &str) -> Vec<Piece> {
    let mut sentences = Vec::new();
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let next = bytes.get(i + 1).copied();
        let boundary = match c {
            b'\n' => true,
            b'.' | b'!' | b'?' | b';' | b':' => next.is_none_or(|n| n.is_ascii_whitespace()),
            _ => false,
        };
        if boundary {
            push_trimmed(text, start, i + 1, &mut sentences);
            start = i + 1;
        }
        i += 1;
    }
    push_trimmed(text, start, text.len(), &mut sentences);

    let mut out = Vec::new();
    for s in sentences {
        if word_count(&s.text) <= LONG_SENTENCE_WORDS {
            out.push(s);
            continue;
        }
        let mut clauses: Vec<Piece> = Vec::new();
        let mut cs = s.start;
        for (k, ch) in text[s.start..s.end].char_indices() {
            let at = s.start + k;
            if ch == ',' && at > cs {
                push_trimmed(text, cs, at + 1, &mut clauses);
                cs = at + 1;
            }
        }
        push_trimmed(text, cs, s.end, &mut clauses);
        // Merge fragments that are too short into the previous clause (or the next one).
        let mut merged: Vec<Piece> = Vec::new();
        for c in clauses {
            match merged.last_mut() {
                Some(last)
                    if word_count(&c.text) < MIN_CLAUSE_WORDS
                        || word_count(&last.text) < MIN_CLAUSE_WORDS =>
                {
                    last.end = c.end;
                    last.text = text[last.start..last.end].to_string();
                }
                _ => merged.push(c),
            }
        }
        out.extend(merged);
    }
    out
}

fn push_trimmed(text: &str, start: usize, end: usize, out: &mut Vec<Piece>) {
    let raw = &text[start..end];
    let lead = raw.len() - raw.trim_start().len();
    let trimmed = raw.trim();
    // Strip list bullets / numbering such as "1." "-" "*" "a)" at the start.
    let body = trimmed.trim_start_matches(['-', '*', '•']).trim_start();
    let bullet = trimmed.len() - body.len();
    let body_start = start + lead + bullet;
    if body.chars().any(char::is_alphanumeric) && !(body.len() <= 3 && body.ends_with(['.', ')'])) {
        out.push(Piece {
            text: body.to_string(),
            start: body_start,
            end: body_start + body.len(),
        });
    }
}

/// Number of whitespace-separated words.
pub fn word_count(s: &str) -> usize {
    s.split_whitespace().count()
}

/// Lower-cased alphanumeric tokens.
pub fn tokens(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(|t| t.to_lowercase())
}

/// Content words: tokens minus stop words, stemmed. Numbers are kept (they often are the point).
pub fn content_words(s: &str) -> HashSet<String> {
    content_of(tokens(s)).collect()
}

/// The content words among lower-cased `tokens`, stemmed, in order.
fn content_of<T: AsRef<str>>(tokens: impl Iterator<Item = T>) -> impl Iterator<Item = String> {
    tokens
        .filter(|t| !is_stop_word(t.as_ref()))
        .map(|t| stem(t.as_ref()))
        .filter(|t| !t.is_empty())
}

/// Adjacent pairs of content words (stop words dropped, stemmed), in reading order: a cheap
/// signal that words are used together as in the standard answer, not just present.
pub fn content_bigrams(s: &str) -> HashSet<(String, String)> {
    pairs(&content_of(tokens(s)).collect::<Vec<_>>())
}

fn pairs(sequence: &[String]) -> HashSet<(String, String)> {
    sequence
        .windows(2)
        .map(|w| (w[0].clone(), w[1].clone()))
        .collect()
}

/// A student answer's [`content_words`], [`content_bigrams`] and [`Abbreviations`], from one
/// pass over its tokens: every graded answer needs all three.
pub fn answer_words(answer: &str) -> (HashSet<String>, HashSet<(String, String)>, Abbreviations) {
    let abbreviations = Abbreviations::of(answer);
    let sequence: Vec<String> = content_of(abbreviations.words.iter()).collect();
    let bigrams = pairs(&sequence);
    (sequence.into_iter().collect(), bigrams, abbreviations)
}

/// A very light English suffix stripper: enough to match "stacks"/"stack", "inserted"/"insert",
/// "pointing"/"point" without a dictionary. Words of other languages pass mostly unchanged.
pub fn stem(w: &str) -> String {
    let w = w.to_string();
    if w.chars().count() <= 3 || w.chars().any(|c| c.is_ascii_digit()) {
        return w;
    }
    for suf in [
        "ational", "ization", "ations", "ation", "ments", "ment", "ness", "ing", "ies", "ied",
        "ed", "es", "ly", "s",
    ] {
        if let Some(base) = w.strip_suffix(suf) {
            if base.chars().count() >= 3 && !(suf == "s" && base.ends_with('s')) {
                return match suf {
                    "ies" | "ied" => format!("{base}y"),
                    _ => base.to_string(),
                };
            }
        }
    }
    w
}

/// English and German function words. German is included because one dev set (SAF-de) is
/// German; the embedding model itself is English-only, so German marks rely more on overlap.
pub fn is_stop_word(w: &str) -> bool {
    const STOP: &[&str] = &[
        "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are",
        "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but",
        "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "either",
        "etc", "few", "for", "from", "further", "had", "has", "have", "having", "he", "her",
        "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself",
        "just", "let", "may", "me", "might", "more", "most", "must", "my", "no", "nor", "not",
        "of", "off", "on", "once", "one", "only", "or", "other", "our", "out", "over", "own",
        "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them",
        "then", "there", "these", "they", "this", "those", "through", "to", "too", "under",
        "until", "up", "us", "very", "was", "we", "were", "what", "when", "where", "which",
        "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yes", "e", "g",
        "ie", "eg", "thing", "things", "way", "like", "use", "used", "using", "get", "gets",
        // German
        "der", "die", "das", "den", "dem", "des", "ein", "eine", "einen", "einem", "einer", "eines",
        "und", "oder", "aber", "ist", "sind", "war", "wird", "werden", "wurde", "zu", "zum", "zur",
        "im", "am", "an", "auf", "aus", "bei", "mit", "nach", "von", "vor", "für", "über", "um",
        "auch", "als", "wie", "wenn", "dass", "so", "es", "er", "sie", "wir", "ich", "du", "man",
        "sich", "nicht", "kein", "keine", "sein", "seine", "ihr", "ihre", "soll", "sollst",
        "sollte", "kann", "können", "muss", "müssen", "hat", "haben", "bzw", "z", "b", "dem",
    ];
    STOP.contains(&w)
}

/// Acronyms a text writes and those its words spell out, so that an answer saying "last in
/// first out" is credited with a key point's "LIFO", and "OCR" with "optical character
/// recognition".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Abbreviations {
    /// Acronyms written in the text, lower-cased: words of 3 to 6 letters, all capitals.
    /// Two-letter ones are left out: any two words ("is the") would spell one.
    pub written: HashSet<String>,
    /// The text's tokens ([`tokens`]), in order: where a run spelling an acronym is looked
    /// for, only when the other text writes one.
    words: Vec<String>,
}

const ACRONYM_LETTERS: std::ops::RangeInclusive<usize> = 3..=6;

impl Abbreviations {
    pub fn of(text: &str) -> Abbreviations {
        let written = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| {
                ACRONYM_LETTERS.contains(&w.chars().count())
                    && w.chars().all(|c| c.is_alphabetic() && c.is_uppercase())
            })
            .map(str::to_lowercase)
            .collect();
        Abbreviations {
            written,
            words: tokens(text).collect(),
        }
    }

    /// The content words (stemmed, as [`content_words`]) of the first run of consecutive
    /// words whose initials spell `acronym` (lower-cased), at least half of them content
    /// words and none a single letter. Single letters are no words an acronym abbreviates:
    /// "U=A, C+G" would spell the codon "UAC".
    pub fn spelled_out(&self, acronym: &str) -> Option<Vec<String>> {
        let letters = acronym.chars().count();
        if !ACRONYM_LETTERS.contains(&letters) {
            return None;
        }
        self.words
            .windows(letters)
            .filter(|run| {
                run.iter()
                    .zip(acronym.chars())
                    .all(|(w, letter)| w.starts_with(letter) && w.chars().count() > 1)
            })
            .map(|run| content_of(run.iter()).collect::<Vec<_>>())
            .find(|content| content.len() * 2 >= letters)
    }

    /// The content words of `words` (a text's, with these abbreviations) that `other` has,
    /// itself or through an acronym one of them writes and the other spells out.
    pub fn words_found<'a>(
        &self,
        words: &'a HashSet<String>,
        other_words: &HashSet<String>,
        other: &Abbreviations,
    ) -> HashSet<&'a String> {
        let mut found: HashSet<&String> =
            words.iter().filter(|w| other_words.contains(*w)).collect();
        for acronym in &self.written {
            if other.spelled_out(acronym).is_some() {
                found.extend(words.get(&stem(acronym)));
            }
        }
        for acronym in &other.written {
            if let Some(run) = self.spelled_out(acronym) {
                found.extend(run.iter().filter_map(|w| words.get(w)));
            }
        }
        found
    }
}

/// Shorten a key point for student-facing feedback: at most `max_words` words, with an ellipsis.
pub fn shorten(s: &str, max_words: usize) -> String {
    let words: Vec<&str> = s.split_whitespace().collect();
    if words.len() <= max_words {
        return words.join(" ");
    }
    let mut out = words[..max_words].join(" ");
    out = out.trim_end_matches([',', ';', ':', '.']).to_string();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sentences_with_spans() {
        let t = "A stack is LIFO. A queue is FIFO!\n- pointers are 3.5 bytes? no";
        let p = split_pieces(t);
        let texts: Vec<&str> = p.iter().map(|x| x.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "A stack is LIFO.",
                "A queue is FIFO!",
                "pointers are 3.5 bytes?",
                "no"
            ]
        );
        for x in &p {
            assert_eq!(&t[x.start..x.end], x.text);
        }
    }

    #[test]
    fn long_sentences_become_clauses() {
        let t = "The constructor is called when an object is created, it initialises the data members of the object, and it has no return type at all.";
        let p = split_pieces(t);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(split_pieces("   ").is_empty());
        assert!(split_pieces("1.").is_empty());
    }

    #[test]
    fn content_words_are_stemmed_without_stop_words() {
        let w = content_words("The stacks are pushing and popped items");
        let want: HashSet<String> = ["stack", "push", "popp", "item"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(w, want);
        assert_eq!(stem("queries"), "query");
    }

    #[test]
    fn bigrams_skip_stop_words_and_stem() {
        let b = content_bigrams("The stacks are pushed onto a list.");
        assert!(b.contains(&("stack".to_string(), "push".to_string())));
        assert!(b.contains(&("push".to_string(), "onto".to_string())) || b.len() == 2);
        assert!(content_bigrams("stack").is_empty());
    }

    /// The key point's content words that `answer` has, directly or through an acronym.
    fn found_in(point: &str, answer: &str) -> HashSet<String> {
        let words = content_words(point);
        Abbreviations::of(point)
            .words_found(&words, &content_words(answer), &Abbreviations::of(answer))
            .into_iter()
            .cloned()
            .collect()
    }

    #[test]
    fn acronyms_are_matched_with_the_words_they_abbreviate() {
        let point = "A stack is a LIFO structure.";
        assert_eq!(
            Abbreviations::of(point).written,
            HashSet::from(["lifo".to_string()])
        );
        let found = found_in(
            point,
            "The last item pushed is the first popped: last in first out.",
        );
        assert!(found.contains("lifo"), "{found:?}");
        assert!(!found.contains("structure"), "{found:?}");

        // The other way round: the answer writes the acronym, the point spells it out.
        let found = found_in(
            "OCR stands for optical character recognition of scanned pages.",
            "It is OCR.",
        );
        for word in ["optical", "character", "recognition", "ocr"] {
            assert!(found.contains(&stem(word)), "{word}: {found:?}");
        }
        assert!(!found.contains(&stem("scanned")), "{found:?}");
    }

    #[test]
    fn one_pass_over_an_answer_gives_what_the_separate_ones_do() {
        for answer in [
            "The stacks are pushed onto a list: LIFO, last in first out!",
            "",
            "OCR is Optical Character Recognition.",
        ] {
            let (words, bigrams, abbreviations) = answer_words(answer);
            assert_eq!(words, content_words(answer), "{answer}");
            assert_eq!(bigrams, content_bigrams(answer), "{answer}");
            assert_eq!(abbreviations, Abbreviations::of(answer), "{answer}");
        }
    }

    #[test]
    fn abbreviations_need_capitals_three_letters_and_content_words() {
        // "Lifo" in running text and two-letter "IT" are no acronyms.
        assert!(Abbreviations::of("Lifo is IT.").written.is_empty());
        // Runs of mostly function words spell nothing: "it is the" is not "iit".
        let text = Abbreviations::of("it is the stack");
        assert_eq!(text.spelled_out("iit"), None);
        assert_eq!(text.spelled_out("its"), None);
        assert_eq!(
            Abbreviations::of("It is last in first out.").spelled_out("lifo"),
            Some(vec!["last".to_string(), "first".to_string()])
        );
        // Nor do single letters: a codon is not spelled by the bases of a pairing rule.
        assert_eq!(
            Abbreviations::of("U=A, C+G pair up").spelled_out("uac"),
            None
        );
        // Function words whose initials happen to spell the acronym do not stand for it.
        let found = found_in(
            "A queue is FIFO.",
            "Wait for it, for one moment: the queue keeps order.",
        );
        assert!(!found.contains("fifo"), "{found:?}");
    }

    #[test]
    fn shortens_with_ellipsis() {
        assert_eq!(shorten("a b c", 5), "a b c");
        assert_eq!(shorten("one two three, four five", 3), "one two three…");
    }
}
