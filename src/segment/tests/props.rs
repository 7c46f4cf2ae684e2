//! Property tests: nothing is lost, nothing panics, canonical numbers are fixed points.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use super::super::number::{Num, Sub};
use super::super::{assemble, find_boundaries, page_starts, segment, QuestionNumber};

fn non_space_chars(s: &str) -> usize {
    s.chars().filter(|c| !c.is_whitespace()).count()
}

fn tokens(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// Checks, for any input, that every non-space character of the input is either in a removed
/// marker (which is short) or in the output, and that each pair holds exactly the tokens of the
/// text after its markers, in order.
fn check_conservation(
    pages: &[&str],
    known: Option<&[QuestionNumber]>,
) -> Result<(), TestCaseError> {
    let text = pages.join("\n");
    let boundaries = find_boundaries(&text, known);
    let seg = assemble(&text, &boundaries, &page_starts(pages));
    prop_assert_eq!(&seg, &segment(pages, known));
    for pair in &seg.pairs {
        // Every answer came from at least one page, listed once, in page order.
        prop_assert!(!pair.pages.is_empty());
        prop_assert!(pair.pages.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(pair.pages.iter().all(|&p| p < pages.len()));
    }

    let mut previous_end = 0;
    let mut marker_chars = 0;
    for boundary in &boundaries {
        prop_assert!(previous_end <= boundary.start && boundary.start <= boundary.end);
        prop_assert!(text.is_char_boundary(boundary.start) && text.is_char_boundary(boundary.end));
        let marker = &text[boundary.start..boundary.end];
        prop_assert!(
            non_space_chars(marker) <= 48,
            "marker {:?} swallows text",
            marker
        );
        marker_chars += non_space_chars(marker);
        previous_end = boundary.end;
    }

    let first_start = boundaries.first().map_or(text.len(), |b| b.start);
    prop_assert_eq!(tokens(&seg.unassigned_text), tokens(&text[..first_start]));
    let mut expected: Vec<(String, Vec<&str>)> = Vec::new();
    for (i, boundary) in boundaries.iter().enumerate() {
        let end = boundaries.get(i + 1).map_or(text.len(), |next| next.start);
        let answer_tokens = tokens(&text[boundary.end..end]);
        if answer_tokens.is_empty() {
            continue;
        }
        let number = QuestionNumber::from_num(boundary.num).to_string();
        match expected.iter_mut().find(|(n, _)| *n == number) {
            Some((_, existing)) => existing.extend(answer_tokens),
            None => expected.push((number, answer_tokens)),
        }
    }
    let got: Vec<(String, Vec<&str>)> = seg
        .pairs
        .iter()
        .map(|pair| (pair.question_number.to_string(), tokens(&pair.answer)))
        .collect();
    prop_assert_eq!(got, expected);

    let output_chars = non_space_chars(&seg.unassigned_text)
        + seg
            .pairs
            .iter()
            .map(|pair| non_space_chars(&pair.answer))
            .sum::<usize>();
    prop_assert_eq!(output_chars + marker_chars, non_space_chars(&text));

    for pair in &seg.pairs {
        prop_assert!(!pair.answer.is_empty());
        prop_assert_eq!(pair.answer.trim(), pair.answer.as_str());
        prop_assert!(!pair.answer.contains("\n\n\n"));
        prop_assert_eq!(
            QuestionNumber::parse(pair.question_number.as_str()),
            Some(pair.question_number.clone())
        );
    }
    Ok(())
}

/// One piece of a generated script.
#[derive(Debug, Clone)]
enum Piece {
    /// A unique content word, numbered when rendered.
    Word,
    Marker(String),
    Noise(&'static str),
}

const NOISE: &[&str] = &[
    "1.5",
    "Rs.",
    "2,00,000",
    "20%",
    "Section",
    "2(b)",
    "IAS",
    "1",
    "page",
    "3",
    "1.4.2023",
    "Ans:",
    "Ans",
    "=",
    "(x",
    "+",
    "Dr.",
    "A/c",
    "Q",
    "(",
    ")",
    "-",
    ":",
    "12th",
    "Answer",
    "to",
    "1.",
    "(i)",
    "a)",
    "ii.",
    "Ｑ",
    "．",
    "（ａ）",
];

fn marker_spelling() -> impl Strategy<Value = String> {
    (1u32..8, 0usize..5, 1u8..5, 0usize..22).prop_map(|(n, letter, roman, style)| {
        let l = char::from(b"abcde"[letter]);
        let r = ["i", "ii", "iii", "iv"][usize::from(roman - 1)];
        match style {
            0 => format!("Q{n}"),
            1 => format!("Q.{n}"),
            2 => format!("Q {n}({l})"),
            3 => format!("Question {n}"),
            4 => format!("Ans {n}"),
            5 => format!("Ans. {n}({l})"),
            6 => format!("Answer to Q{n}"),
            7 => format!("{n}."),
            8 => format!("{n})"),
            9 => format!("{n}.{l}"),
            10 => format!("{n}({l})"),
            11 => format!("{n}({l})({r})"),
            12 => format!("({l})"),
            13 => format!("{l})"),
            14 => format!("({r})"),
            15 => format!("q{n}"),
            16 => format!("Ｑ{n}"),
            17 => format!("Q{n}{l}"),
            18 => format!("{n} . {l}"),
            19 => format!("Ans: {n}"),
            20 => format!("{l}."),
            _ => format!("Q{n}.{l})"),
        }
    })
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        6 => Just(Piece::Word),
        2 => marker_spelling().prop_map(Piece::Marker),
        2 => prop::sample::select(NOISE).prop_map(Piece::Noise),
    ]
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&[" ", " ", " ", "  ", "\n", "\n", "\n\n", "\t", " \n"][..])
}

/// A script of 1–3 pages; returns the pages and how many unique words it holds.
fn script() -> impl Strategy<Value = (Vec<String>, usize)> {
    prop::collection::vec(prop::collection::vec((piece(), separator()), 0..40), 1..4).prop_map(
        |pages| {
            let mut words = 0;
            let rendered = pages
                .into_iter()
                .map(|page| {
                    let mut out = String::new();
                    for (piece, separator) in page {
                        match piece {
                            Piece::Word => {
                                out.push_str(&format!("w{words}"));
                                words += 1;
                            }
                            Piece::Marker(marker) => out.push_str(&marker),
                            Piece::Noise(noise) => out.push_str(noise),
                        }
                        out.push_str(separator);
                    }
                    out
                })
                .collect();
            (rendered, words)
        },
    )
}

fn num() -> impl Strategy<Value = Num> {
    (1u32..=999, 0u8..=27, 0u8..=39).prop_map(|(top, sub, roman)| match sub {
        0 => Num::top(top),
        27 => Num {
            top,
            sub: Some(Sub::Roman(roman.max(1))),
            roman: None,
        },
        letter => Num {
            top,
            sub: Some(Sub::Letter(b'a' + letter - 1)),
            roman: (roman > 0).then_some(roman),
        },
    })
}

fn known_paper() -> impl Strategy<Value = Option<Vec<QuestionNumber>>> {
    prop::option::of(prop::collection::btree_set(
        (1u32..8, 0u8..4, 0u8..3).prop_map(|(top, letter, roman)| {
            QuestionNumber::from_num(match letter {
                0 => Num::top(top),
                l => Num {
                    top,
                    sub: Some(Sub::Letter(b'a' + l - 1)),
                    roman: (roman > 0).then_some(roman),
                },
            })
        }),
        1..12,
    ))
    .prop_map(|set| set.map(|set| set.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_word_is_ever_lost((pages, words) in script(), known in known_paper()) {
        let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
        check_conservation(&pages, known.as_deref())?;
        let seg = segment(&pages, known.as_deref());
        // Every unique word appears exactly once, and in input order within each answer.
        let mut seen = vec![0usize; words];
        let outputs = std::iter::once(seg.unassigned_text.as_str())
            .chain(seg.pairs.iter().map(|pair| pair.answer.as_str()));
        for output in outputs {
            let mut last = None;
            for token in output.split_whitespace() {
                let Some(index) = token.strip_prefix('w').and_then(|n| n.parse::<usize>().ok())
                else {
                    continue;
                };
                prop_assert!(index < words);
                seen[index] += 1;
                prop_assert!(last < Some(index), "w{} out of order in {:?}", index, output);
                last = Some(index);
            }
        }
        prop_assert!(seen.iter().all(|&count| count == 1), "{:?}", seen);
    }

    #[test]
    fn arbitrary_unicode_never_panics_and_loses_nothing(
        pages in prop::collection::vec("\\PC{0,200}", 0..4),
        known in known_paper(),
    ) {
        let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
        check_conservation(&pages, known.as_deref())?;
    }

    #[test]
    fn marker_soup_never_panics_and_loses_nothing(
        pages in prop::collection::vec(
            "([Qq(). :\\-1-9a-eivAnsw\\n ]|Ans|Question|Ｑ|１|（|）|ⅱ|\u{3000}|é){0,80}",
            0..4,
        ),
        known in known_paper(),
    ) {
        let pages: Vec<&str> = pages.iter().map(String::as_str).collect();
        check_conservation(&pages, known.as_deref())?;
    }

    #[test]
    fn canonical_numbers_are_fixed_points_of_parse(num in num()) {
        let number = QuestionNumber::from_num(num);
        prop_assert_eq!(QuestionNumber::parse(number.as_str()), Some(number.clone()));
        prop_assert_eq!(number.to_string().parse::<QuestionNumber>().ok(), Some(number));
    }

    #[test]
    fn whatever_parses_is_canonical(raw in "\\PC{0,12}|[Qq(). 0-9a-z]{0,10}") {
        if let Some(number) = QuestionNumber::parse(&raw) {
            prop_assert_eq!(QuestionNumber::parse(number.as_str()), Some(number));
        }
    }

    #[test]
    fn order_is_paper_order(a in num(), b in num()) {
        let (x, y) = (QuestionNumber::from_num(a), QuestionNumber::from_num(b));
        if a.top != b.top {
            prop_assert_eq!(x.cmp(&y), a.top.cmp(&b.top));
        }
        if let Some(parent) = x.parent() {
            prop_assert!(parent < x);
            prop_assert!(parent.is_ancestor_of(&x));
        }
        prop_assert_eq!(x == y, x.as_str() == y.as_str());
    }
}
