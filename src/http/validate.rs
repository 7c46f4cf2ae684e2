//! Checks on identifiers and text that arrive over HTTP, so everything past the edge can
//! trust them: ids are non-empty, bounded and free of characters that would make them
//! ambiguous in URLs or logs; texts are bounded.

use super::error::ApiError;

/// Characters an identifier may contain besides ASCII letters and digits.
const ID_PUNCTUATION: &[char] = &['-', '_', '.', ':', '@', '+'];

/// Checks an identifier such as `user_id` or `course_code`.
pub fn id(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::Validation(format!("{field} must not be empty")));
    }
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(ApiError::Validation(format!(
            "{field} is {chars} characters long; the limit is {max_chars}"
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ID_PUNCTUATION.contains(c)))
    {
        return Err(ApiError::Validation(format!(
            "{field} {value:?} contains {bad:?}; identifiers may use letters, digits and - _ . : @ +"
        )));
    }
    Ok(())
}

/// Checks a free text such as an answer: bounded length, no NUL characters.
pub fn text(field: &str, value: &str, max_chars: usize) -> Result<(), ApiError> {
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(ApiError::Validation(format!(
            "{field} is {chars} characters long; the limit is {max_chars}"
        )));
    }
    if value.contains('\0') {
        return Err(ApiError::Validation(format!(
            "{field} contains a NUL character"
        )));
    }
    Ok(())
}

/// Reads a question number as a student or examiner wrote it (`1.a`, `2(b)`, `Q3`).
pub fn question_number(text: &str) -> Result<crate::segment::QuestionNumber, ApiError> {
    text.parse()
        .map_err(|e: crate::segment::ParseQuestionNumberError| ApiError::Validation(e.to_string()))
}

/// Checks a number of marks: finite and not negative.
pub fn marks(field: &str, value: f64) -> Result<(), ApiError> {
    if !value.is_finite() || value < 0.0 {
        return Err(ApiError::Validation(format!(
            "{field} must be a non-negative number, not {value}"
        )));
    }
    if value > 1_000_000.0 {
        return Err(ApiError::Validation(format!(
            "{field} of {value} is beyond any exam's marks"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(id("user_id", "USER123", 64).is_ok());
        assert!(id("user_id", "ravi.kumar@example.org", 64).is_ok());
        assert!(id("course_code", "CA-FND-2024", 64).is_ok());
        for bad in ["", " USER", "a/b", "x\ny", "é", "a b"] {
            let err = id("user_id", bad, 64).unwrap_err();
            assert!(err.to_string().contains("user_id"), "{bad:?}: {err}");
        }
        assert!(id("user_id", &"x".repeat(65), 64)
            .unwrap_err()
            .to_string()
            .contains("limit is 64"));
    }

    #[test]
    fn texts_and_marks() {
        assert!(text("answer", "fine", 10).is_ok());
        assert!(text("answer", "too long text", 5).is_err());
        assert!(text("answer", "nul\0", 50).is_err());
        assert!(marks("total_marks", 10.0).is_ok());
        assert!(marks("total_marks", -1.0).is_err());
        assert!(marks("total_marks", f64::NAN).is_err());
    }
}
