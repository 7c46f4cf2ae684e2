//! OCR quality measures: character and word error rates (CER, WER) between a
//! reference transcript and an OCR hypothesis. Both are whitespace-normalised
//! (runs of spaces, tabs and newlines count as one space; leading and trailing
//! whitespace is ignored) because OCR line breaks are layout, not content.
//! Used by the module's tests, the benchmark and, later, an evaluation tool.

/// Character error rate: Levenshtein distance over Unicode scalar values of
/// the whitespace-normalised strings, divided by the reference length.
///
/// 0.0 is a perfect match. The value can exceed 1.0 when the hypothesis has
/// many insertions. An empty reference gives 0.0 for an empty hypothesis and
/// 1.0 otherwise (every hypothesis character is an error, and there is no
/// length to divide by).
pub fn cer(reference: &str, hypothesis: &str) -> f64 {
    let r: Vec<char> = normalise(reference).chars().collect();
    let h: Vec<char> = normalise(hypothesis).chars().collect();
    rate(&r, &h)
}

/// Word error rate: Levenshtein distance over whitespace-separated words,
/// divided by the number of reference words. Same edge cases as [`cer`].
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r: Vec<&str> = reference.split_whitespace().collect();
    let h: Vec<&str> = hypothesis.split_whitespace().collect();
    rate(&r, &h)
}

/// Edit distance (insertions, deletions, substitutions all cost 1).
pub fn levenshtein<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    // Two rows are enough; iterate over the shorter side for less memory.
    let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
    let mut prev: Vec<usize> = (0..=short.len()).collect();
    let mut cur = vec![0; short.len() + 1];
    for (i, x) in long.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in short.iter().enumerate() {
            let substitution = prev[j] + usize::from(x != y);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[short.len()]
}

fn rate<T: PartialEq>(reference: &[T], hypothesis: &[T]) -> f64 {
    if reference.is_empty() {
        return if hypothesis.is_empty() { 0.0 } else { 1.0 };
    }
    levenshtein(reference, hypothesis) as f64 / reference.len() as f64
}

pub fn normalise(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_and_whitespace_only_differences_are_zero() {
        assert_eq!(cer("a b\nc", "  a   b c \n"), 0.0);
        assert_eq!(wer("one two\tthree", "one\ntwo three"), 0.0);
    }

    #[test]
    fn counts_edits() {
        assert_eq!(levenshtein(b"kitten", b"sitting"), 3);
        assert!((cer("kitten", "sitting") - 0.5).abs() < 1e-9);
        assert!((wer("the cat sat", "the bat sat down") - 2.0 / 3.0).abs() < 1e-9);
        assert!((cer("ab", "") - 1.0).abs() < 1e-9);
    }

    #[test]
    fn empty_reference() {
        assert_eq!(cer("", ""), 0.0);
        assert_eq!(cer(" \n", "x"), 1.0);
        assert_eq!(wer("", "x y"), 1.0);
    }

    #[test]
    fn unicode_counts_chars_not_bytes() {
        assert!((cer("नमस्ते", "नमस्त") - 1.0 / 6.0).abs() < 1e-9);
    }
}
