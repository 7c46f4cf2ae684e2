//! The numbers the local grader measures about one answer, before calibration.
//!
//! Owns the reference side (standard answer split into key points, with embeddings and content
//! words; computed once per question and cached by the grader) and the feature computation.
//! Promises: every feature is finite and roughly in [-1, 1] or [0, 1] (`len_ratio` is a log
//! ratio, clamped to [-3, 3]); the same inputs always give the same features.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::text::{content_words, is_stop_word, stem, Abbreviations, Piece};
use crate::embed::{cosine, TokenVector};

/// A word piece prepared for token alignment.
#[derive(Clone, Debug)]
pub struct Tok {
    pub vector: Vec<f32>,
    /// Byte offset of the piece in its text.
    pub start: usize,
    /// Part of a content word that is not in the question (counts for recall/precision).
    pub content: bool,
    /// Part of a content word (question words included).
    pub word: bool,
}

/// Keep alphanumeric word pieces and mark which belong to content words outside the question.
pub fn prepare_tokens(
    text: &str,
    tokens: Vec<TokenVector>,
    question_words: &HashSet<String>,
) -> Vec<Tok> {
    let is_word = |c: char| c.is_alphanumeric();
    tokens
        .into_iter()
        .filter(|t| {
            t.end <= text.len()
                && text
                    .get(t.start..t.end)
                    .is_some_and(|s| s.chars().any(is_word))
        })
        .map(|t| {
            // Widen the piece to its whole word (word pieces such as "##ing" are parts of one).
            let ws = text[..t.start].rfind(|c: char| !is_word(c)).map_or(0, |i| {
                i + text[i..].chars().next().map_or(1, char::len_utf8)
            });
            let we = text[t.end..]
                .find(|c: char| !is_word(c))
                .map_or(text.len(), |i| t.end + i);
            let word = text[ws..we].to_lowercase();
            let is_word = !is_stop_word(&word);
            let content = is_word && !question_words.contains(&stem(&word));
            Tok {
                vector: t.vector,
                start: t.start,
                content,
                word: is_word,
            }
        })
        .collect()
}

/// A key point (sentence or clause) of the standard answer.
#[derive(Clone, Debug)]
pub struct KeyPoint {
    pub text: String,
    pub embedding: Vec<f32>,
    pub words: HashSet<String>,
    pub abbreviations: Abbreviations,
}

/// Everything about a question's standard answer that grading needs; built once per question.
#[derive(Clone, Debug)]
pub struct Reference {
    pub key_points: Vec<KeyPoint>,
    /// Embedding of the whole standard answer.
    pub whole: Vec<f32>,
    /// Embedding of the question text, when there is one.
    pub question: Option<Vec<f32>>,
    /// Content words of the standard answer that are not in the question ("question demotion":
    /// repeating the question's words earns nothing). Falls back to all content words of the
    /// standard answer when the question covers them all.
    pub words: HashSet<String>,
    /// Content words of the question.
    pub question_words: HashSet<String>,
    /// The standard answer's word pieces (from one model run over it).
    pub tokens: Vec<Tok>,
    /// Cosine similarity of the standard answer and the question (0 without a question).
    pub question_sim: f64,
    /// Byte range of each key point in the standard answer (same order as `key_points`).
    pub key_point_spans: Vec<(usize, usize)>,
    /// All content words of the standard answer (question words included).
    pub all_words: HashSet<String>,
    /// Adjacent content-word pairs of the standard answer (see `text::content_bigrams`).
    pub bigrams: HashSet<(String, String)>,
}

/// The student's answer after embedding: pieces with their vectors, and the whole.
#[derive(Clone, Debug)]
pub struct Student {
    pub pieces: Vec<(Piece, Vec<f32>)>,
    pub whole: Vec<f32>,
    pub words: HashSet<String>,
    pub tokens: Vec<Tok>,
    pub bigrams: HashSet<(String, String)>,
    pub abbreviations: Abbreviations,
}

/// A key point counts as covered (for feedback) when the answer has a sentence this similar
/// to it...
pub const COVERED_SIM: f64 = 0.6;
/// ... and its content word pieces find matches in the answer at this mean cosine similarity
/// (its token recall, the same bar a word piece needs to count as a hit in `tok_hit`)...
///
/// Sentence similarity alone (the rule before) counted a sentence on the same topic as
/// covering the point: the feedback told 14–24 % of the answers humans marked at half or less
/// that they covered every point. Requiring the words too brought that to 0–14 % on the dev
/// sets, with the same rank agreement between coverage and human marks (GRADING.md,
/// "Feedback").
pub const COVERED_TOKENS: f64 = 0.6;
/// ... or when this share of its content words appears in the answer (an acronym counting
/// for the words it abbreviates: [`Abbreviations`]).
pub const COVERED_WORDS: f64 = 0.6;

/// The features of one answer. Field names are the names the calibration file uses.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Features {
    /// Cosine similarity of the whole answer and the whole standard answer.
    pub sim_whole: f64,
    /// Mean over key points of the best similarity to any answer piece (or the whole answer).
    pub align_recall: f64,
    /// Lowest such best similarity: the worst-covered key point.
    pub align_min: f64,
    /// Mean over answer pieces of the best similarity to any key point (how on-topic the
    /// answer is, sentence by sentence).
    pub align_precision: f64,
    /// Share of key points counted as covered (see [`COVERED_SIM`], [`COVERED_TOKENS`],
    /// [`COVERED_WORDS`]).
    pub coverage: f64,
    /// Soft coverage: mean over key points of clamp((best - 0.35) / 0.4, 0, 1).
    pub coverage_soft: f64,
    /// Similarity of the answer to the question text (0 without a question).
    pub sim_question: f64,
    /// How much closer the answer is to the standard answer than to the question.
    pub sim_gain: f64,
    /// Share of the standard answer's content words (question words removed) in the answer.
    pub lex_recall: f64,
    /// Share of the answer's content words (question words removed) found in the standard answer.
    pub lex_precision: f64,
    /// ln((1 + answer content words) / (1 + standard answer content words)), clamped to ±3.
    pub len_ratio: f64,
    /// Token alignment recall: mean over the standard answer's content word pieces (question
    /// words demoted) of the best cosine with any word piece of the answer (BERTScore-style).
    pub tok_recall: f64,
    /// Token alignment precision: mean over the answer's content word pieces of the best cosine
    /// with any word piece of the standard answer.
    pub tok_precision: f64,
    /// Whole-answer similarity relative to what restating the question would get:
    /// (sim_whole − sim(question, standard)) / (1 − sim(question, standard)).
    pub sim_rel: f64,
    /// Share of the standard answer's content word pieces whose best match in the answer has
    /// cosine ≥ 0.6 (a hard alignment count).
    pub tok_hit: f64,
    /// Lowest token recall over the key points (each key point's own content word pieces).
    pub kp_tok_min: f64,
    /// Mean token recall over the key points.
    pub kp_tok_mean: f64,
    /// Share of the answer's content words that are question words (restating the question).
    #[serde(default)]
    pub q_restate: f64,
    /// Share of all the standard answer's content words (question words included) in the answer.
    #[serde(default)]
    pub lex_recall_all: f64,
    /// Share of the standard answer's adjacent content-word pairs found in the answer.
    #[serde(default)]
    pub bigram_recall: f64,
    /// Token alignment recall over all the standard answer's content word pieces (no question
    /// demotion).
    #[serde(default)]
    pub tok_recall_all: f64,
    /// Soft key-point coverage by tokens: mean over key points of
    /// clamp((token recall − 0.55) / 0.35, 0, 1).
    #[serde(default)]
    pub kp_tok_soft: f64,
    /// Key-point alignment relative to the question: mean over key points of
    /// (best − sim(kp, question)) / (1 − sim(kp, question)), clamped to [−1, 1].
    #[serde(default)]
    pub kp_rel: f64,
    /// ln(1 + the answer's content words), clamped to [0, 6].
    #[serde(default)]
    pub len_log: f64,
}

impl Features {
    /// The value of a feature by name (as written in the calibration file).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "sim_whole" => self.sim_whole,
            "align_recall" => self.align_recall,
            "align_min" => self.align_min,
            "align_precision" => self.align_precision,
            "coverage" => self.coverage,
            "coverage_soft" => self.coverage_soft,
            "sim_question" => self.sim_question,
            "sim_gain" => self.sim_gain,
            "lex_recall" => self.lex_recall,
            "lex_precision" => self.lex_precision,
            "len_ratio" => self.len_ratio,
            "tok_recall" => self.tok_recall,
            "tok_precision" => self.tok_precision,
            "sim_rel" => self.sim_rel,
            "tok_hit" => self.tok_hit,
            "kp_tok_min" => self.kp_tok_min,
            "kp_tok_mean" => self.kp_tok_mean,
            "q_restate" => self.q_restate,
            "lex_recall_all" => self.lex_recall_all,
            "bigram_recall" => self.bigram_recall,
            "tok_recall_all" => self.tok_recall_all,
            "kp_tok_soft" => self.kp_tok_soft,
            "kp_rel" => self.kp_rel,
            "len_log" => self.len_log,
            _ => return None,
        })
    }

    /// All feature names, in a stable order.
    pub const NAMES: [&'static str; 24] = [
        "sim_whole",
        "align_recall",
        "align_min",
        "align_precision",
        "coverage",
        "coverage_soft",
        "sim_question",
        "sim_gain",
        "lex_recall",
        "lex_precision",
        "len_ratio",
        "tok_recall",
        "tok_precision",
        "sim_rel",
        "tok_hit",
        "kp_tok_min",
        "kp_tok_mean",
        "q_restate",
        "lex_recall_all",
        "bigram_recall",
        "tok_recall_all",
        "kp_tok_soft",
        "kp_rel",
        "len_log",
    ];
}

/// Key-point level result, for feedback.
#[derive(Clone, Debug)]
pub struct KeyPointMatch {
    pub index: usize,
    pub best_sim: f64,
    pub word_share: f64,
    /// Mean over the key point's content word pieces of their best match in the answer
    /// (BERTScore-style recall); `None` when the key point has no content word piece.
    pub token_recall: Option<f64>,
    pub covered: bool,
}

/// Build the reference-side word sets (embeddings are supplied by the caller).
pub fn reference_words(
    question: Option<&str>,
    standard: &str,
) -> (HashSet<String>, HashSet<String>) {
    let qw = question.map(content_words).unwrap_or_default();
    let all = content_words(standard);
    let demoted: HashSet<String> = all.difference(&qw).cloned().collect();
    let words = if demoted.is_empty() { all } else { demoted };
    (words, qw)
}

/// Compute the features of an answer against a reference.
pub fn compute(r: &Reference, s: &Student) -> (Features, Vec<KeyPointMatch>) {
    let mut f = Features {
        sim_whole: cosine(&s.whole, &r.whole) as f64,
        ..Features::default()
    };
    // Candidates for matching a key point: every answer piece, and the whole answer (a short
    // answer that says it all in one breath may match best as a whole).
    let candidates: Vec<&[f32]> = s
        .pieces
        .iter()
        .map(|(_, e)| e.as_slice())
        .chain(std::iter::once(s.whole.as_slice()))
        .collect();
    let mut matches = Vec::with_capacity(r.key_points.len());
    for (index, kp) in r.key_points.iter().enumerate() {
        let best_sim = candidates
            .iter()
            .map(|c| cosine(&kp.embedding, c) as f64)
            .fold(f64::MIN, f64::max);
        let word_share = if kp.words.is_empty() {
            0.0
        } else {
            kp.abbreviations
                .words_found(&kp.words, &s.words, &s.abbreviations)
                .len() as f64
                / kp.words.len() as f64
        };
        // `token_recall` and `covered` are filled in once the word pieces are aligned, below.
        matches.push(KeyPointMatch {
            index,
            best_sim,
            word_share,
            token_recall: None,
            covered: false,
        });
    }
    if !matches.is_empty() {
        let n = matches.len() as f64;
        f.align_recall = matches.iter().map(|m| m.best_sim).sum::<f64>() / n;
        f.align_min = matches.iter().map(|m| m.best_sim).fold(f64::MAX, f64::min);
        f.coverage_soft = matches
            .iter()
            .map(|m| ((m.best_sim - 0.35) / 0.4).clamp(0.0, 1.0))
            .sum::<f64>()
            / n;
    } else {
        f.align_recall = f.sim_whole;
        f.align_min = f.sim_whole;
        f.coverage_soft = ((f.sim_whole - 0.35) / 0.4).clamp(0.0, 1.0);
    }
    let pieces: Vec<&[f32]> = if s.pieces.is_empty() {
        vec![s.whole.as_slice()]
    } else {
        s.pieces.iter().map(|(_, e)| e.as_slice()).collect()
    };
    f.align_precision = if r.key_points.is_empty() {
        f.sim_whole
    } else {
        pieces
            .iter()
            .map(|p| {
                r.key_points
                    .iter()
                    .map(|kp| cosine(&kp.embedding, p) as f64)
                    .fold(f64::MIN, f64::max)
            })
            .sum::<f64>()
            / pieces.len() as f64
    };
    if let Some(q) = &r.question {
        f.sim_question = cosine(&s.whole, q) as f64;
    }
    f.sim_gain = f.sim_whole - f.sim_question;

    let answer_words: HashSet<&String> = s.words.difference(&r.question_words).collect();
    let overlap = r.words.iter().filter(|w| s.words.contains(*w)).count() as f64;
    f.lex_recall = if r.words.is_empty() {
        0.0
    } else {
        overlap / r.words.len() as f64
    };
    f.lex_precision = if answer_words.is_empty() {
        0.0
    } else {
        answer_words
            .iter()
            .filter(|w| r.words.contains(**w))
            .count() as f64
            / answer_words.len() as f64
    };
    f.tok_recall = token_alignment(&r.tokens, &s.tokens);
    f.tok_precision = token_alignment(&s.tokens, &r.tokens);
    let best: Vec<(usize, bool, f64)> = r
        .tokens
        .iter()
        .map(|t| {
            let b = s
                .tokens
                .iter()
                .map(|u| cosine(&t.vector, &u.vector) as f64)
                .fold(0.0, f64::max);
            (t.start, t.content, b)
        })
        .collect();
    let content: Vec<&(usize, bool, f64)> = best.iter().filter(|b| b.1).collect();
    if !content.is_empty() {
        f.tok_hit = content.iter().filter(|b| b.2 >= 0.6).count() as f64 / content.len() as f64;
    }
    let per_key_point: Vec<Option<f64>> = r
        .key_point_spans
        .iter()
        .map(|&(a, z)| {
            let inside: Vec<f64> = content
                .iter()
                .filter(|b| b.0 >= a && b.0 < z)
                .map(|b| b.2)
                .collect();
            (!inside.is_empty()).then(|| inside.iter().sum::<f64>() / inside.len() as f64)
        })
        .collect();
    // One span per key point, or none at all (then no key point has a token recall).
    for (i, m) in matches.iter_mut().enumerate() {
        m.token_recall = per_key_point.get(i).copied().flatten();
        m.covered = (m.best_sim >= COVERED_SIM
            && m.token_recall.unwrap_or(m.best_sim) >= COVERED_TOKENS)
            || m.word_share >= COVERED_WORDS;
    }
    if !matches.is_empty() {
        f.coverage = matches.iter().filter(|m| m.covered).count() as f64 / matches.len() as f64;
    }
    let kp_recalls: Vec<f64> = per_key_point.iter().flatten().copied().collect();
    if !kp_recalls.is_empty() {
        f.kp_tok_min = kp_recalls.iter().copied().fold(f64::MAX, f64::min);
        f.kp_tok_mean = kp_recalls.iter().sum::<f64>() / kp_recalls.len() as f64;
    } else {
        f.kp_tok_min = f.tok_recall;
        f.kp_tok_mean = f.tok_recall;
    }
    f.kp_tok_soft = if kp_recalls.is_empty() {
        ((f.tok_recall - 0.55) / 0.35).clamp(0.0, 1.0)
    } else {
        kp_recalls
            .iter()
            .map(|x| ((x - 0.55) / 0.35).clamp(0.0, 1.0))
            .sum::<f64>()
            / kp_recalls.len() as f64
    };
    f.tok_recall_all = {
        let (sum, n) = best
            .iter()
            .zip(&r.tokens)
            .filter(|(_, t)| t.word)
            .fold((0.0, 0usize), |(a, n), (b, _)| (a + b.2, n + 1));
        if n == 0 {
            f.tok_recall
        } else {
            sum / n as f64
        }
    };
    f.q_restate = if s.words.is_empty() {
        0.0
    } else {
        s.words.intersection(&r.question_words).count() as f64 / s.words.len() as f64
    };
    f.lex_recall_all = if r.all_words.is_empty() {
        0.0
    } else {
        r.all_words.intersection(&s.words).count() as f64 / r.all_words.len() as f64
    };
    f.bigram_recall = if r.bigrams.is_empty() {
        f.lex_recall
    } else {
        r.bigrams.intersection(&s.bigrams).count() as f64 / r.bigrams.len() as f64
    };
    f.kp_rel = match (&r.question, matches.is_empty()) {
        (Some(q), false) => {
            matches
                .iter()
                .map(|m| {
                    let qs = cosine(&r.key_points[m.index].embedding, q) as f64;
                    ((m.best_sim - qs) / (1.0 - qs).max(0.05)).clamp(-1.0, 1.0)
                })
                .sum::<f64>()
                / matches.len() as f64
        }
        _ => f.align_recall,
    };
    f.len_log = (1.0 + s.words.len() as f64).ln().clamp(0.0, 6.0);
    f.sim_rel = (f.sim_whole - r.question_sim) / (1.0 - r.question_sim).max(0.05);
    f.len_ratio = ((1.0 + answer_words.len() as f64) / (1.0 + r.words.len() as f64))
        .ln()
        .clamp(-3.0, 3.0);
    (f, matches)
}

/// Mean over `from`'s content pieces (all pieces when none is content) of the best cosine with
/// any piece of `to`; 0 when either side is empty.
fn token_alignment(from: &[Tok], to: &[Tok]) -> f64 {
    if from.is_empty() || to.is_empty() {
        return 0.0;
    }
    let any_content = from.iter().any(|t| t.content);
    let (sum, n) = from
        .iter()
        .filter(|t| t.content || !any_content)
        .map(|t| {
            to.iter()
                .map(|u| cosine(&t.vector, &u.vector) as f64)
                .fold(f64::MIN, f64::max)
        })
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    sum / n.max(1) as f64
}
