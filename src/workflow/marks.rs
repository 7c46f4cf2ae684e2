//! A question paper's marks sheet: every student's newest evaluation of it, one row each,
//! with a column per question; as data, or as CSV for a spreadsheet.

use serde::Serialize;
use utoipa::ToSchema;

use crate::model::MarksSheetRow;
use crate::segment::QuestionNumber;
use crate::store::{Store, StoreError};

/// A paper's marks sheet.
#[derive(Debug, Serialize, ToSchema)]
pub struct MarksSheet {
    pub question_paper_code: String,
    /// The columns: the stored paper's questions in order, else every question any of the
    /// evaluations graded.
    pub questions: Vec<SheetQuestion>,
    /// One row per student, by user id: their newest evaluation of the paper.
    pub students: Vec<MarksSheetRow>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SheetQuestion {
    #[schema(value_type = String, example = "1.a")]
    pub question_number: QuestionNumber,
    pub total_marks: f64,
}

/// The marks sheet of `question_paper_code`; `None` when neither the paper nor any
/// evaluation of it is stored.
pub async fn marks_sheet(
    store: &dyn Store,
    question_paper_code: &str,
) -> Result<Option<MarksSheet>, StoreError> {
    let (paper, students) = tokio::try_join!(
        store.get_question_paper(question_paper_code),
        store.marks_sheet(question_paper_code)
    )?;
    let questions = match paper {
        Some(paper) => paper
            .questions
            .into_iter()
            .map(|q| SheetQuestion {
                question_number: q.question_number,
                total_marks: q.total_marks,
            })
            .collect(),
        None if students.is_empty() => return Ok(None),
        None => questions_graded(&students),
    };
    Ok(Some(MarksSheet {
        question_paper_code: question_paper_code.to_string(),
        questions,
        students,
    }))
}

/// Why a paper's reports (marks sheet, moderation) have nothing to show.
pub fn unknown_paper(question_paper_code: &str) -> String {
    format!(
        "question paper {question_paper_code:?} does not exist and no evaluation of it is stored"
    )
}

/// A file name for the sheet's CSV: the paper code with anything but letters, digits, `-`,
/// `_` and `.` replaced.
pub fn csv_file_name(question_paper_code: &str) -> String {
    let safe: String = question_paper_code
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-marks.csv")
}

/// For a paper that is not stored (graded ad hoc): every question any evaluation graded, in
/// question-number order, at the marks it was graded out of.
fn questions_graded(students: &[MarksSheetRow]) -> Vec<SheetQuestion> {
    let mut seen: std::collections::BTreeMap<&QuestionNumber, f64> = Default::default();
    for marks in students.iter().flat_map(|row| &row.marks) {
        seen.entry(&marks.question_number)
            .or_insert(marks.total_marks);
    }
    seen.into_iter()
        .map(|(number, total_marks)| SheetQuestion {
            question_number: number.clone(),
            total_marks,
        })
        .collect()
}

/// One row per student; a question's cell is empty when it was not graded. The header names
/// each question with its marks, e.g. `1.a (10)`, unless some student was graded on it out
/// of other marks (an examiner may grade with their own answer key): then the number alone,
/// and the JSON form says out of what for each student.
pub fn to_csv(sheet: &MarksSheet) -> String {
    let mut out = String::new();
    let mut header: Vec<String> = [
        "user_id",
        "evaluation_id",
        "version",
        "graded_at",
        "status",
        "final_score",
        "total_exam_marks",
    ]
    .map(String::from)
    .to_vec();
    header.extend(sheet.questions.iter().map(|q| {
        let same_marks = sheet
            .students
            .iter()
            .flat_map(|row| &row.marks)
            .filter(|m| m.question_number == q.question_number)
            .all(|m| m.total_marks == q.total_marks);
        if same_marks {
            format!("{} ({})", q.question_number, q.total_marks)
        } else {
            q.question_number.to_string()
        }
    }));
    header.push("flags".into());
    push_row(&mut out, &header);
    for row in &sheet.students {
        let e = &row.evaluation;
        let mut cells = vec![
            e.user_id.clone(),
            e.evaluation_id.clone(),
            e.version.to_string(),
            e.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            e.status.clone(),
            e.final_score.to_string(),
            e.total_exam_marks.to_string(),
        ];
        cells.extend(sheet.questions.iter().map(|q| {
            row.marks
                .iter()
                .find(|m| m.question_number == q.question_number)
                .and_then(|m| m.marks_awarded)
                .map(|m| m.to_string())
                .unwrap_or_default()
        }));
        cells.push(e.flags.join(" "));
        push_row(&mut out, &cells);
    }
    out
}

/// Writes one CSV record (RFC 4180, CRLF line ends). A text cell a spreadsheet would take
/// for a formula (starting with `=`, `+`, `-`, `@`, tab or CR) gets a leading `'`: user ids
/// and codes come from callers, and a sheet opened by an examiner must not run them.
fn push_row(out: &mut String, cells: &[String]) {
    for (n, cell) in cells.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        let formula =
            cell.starts_with(['=', '+', '-', '@', '\t', '\r']) && cell.parse::<f64>().is_err();
        let cell = if formula {
            format!("'{cell}")
        } else {
            cell.clone()
        };
        if cell.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&cell.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(&cell);
        }
    }
    out.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EvaluationSummary, QuestionMarks};

    fn row(user_id: &str, marks: &[(&str, f64, Option<f64>)]) -> MarksSheetRow {
        MarksSheetRow {
            evaluation: EvaluationSummary {
                evaluation_id: format!("E-{user_id}"),
                version: 1,
                user_id: user_id.into(),
                question_paper_code: "QP1".into(),
                submission_id: None,
                grader: "llm".into(),
                total_exam_marks: 20.0,
                final_score: marks.iter().filter_map(|m| m.2).sum(),
                status: "success".into(),
                flags: Vec::new(),
                created_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
            },
            marks: marks
                .iter()
                .map(|(number, total_marks, marks_awarded)| QuestionMarks {
                    question_number: QuestionNumber::parse(number).unwrap(),
                    total_marks: *total_marks,
                    marks_awarded: *marks_awarded,
                })
                .collect(),
        }
    }

    #[test]
    fn a_column_graded_out_of_other_marks_does_not_claim_the_papers() {
        let question = |number: &str, total_marks| SheetQuestion {
            question_number: QuestionNumber::parse(number).unwrap(),
            total_marks,
        };
        let sheet = MarksSheet {
            question_paper_code: "QP1".into(),
            questions: vec![question("1", 5.0), question("2", 10.0)],
            students: vec![
                row("A", &[("1", 5.0, Some(4.0)), ("2", 10.0, Some(7.5))]),
                row("B", &[("1", 10.0, Some(9.0)), ("2", 10.0, None)]),
            ],
        };
        assert_eq!(
            to_csv(&sheet),
            "user_id,evaluation_id,version,graded_at,status,final_score,total_exam_marks,1,2 (10),flags\r\n\
             A,E-A,1,2027-01-15T08:00:00Z,success,11.5,20,4,7.5,\r\n\
             B,E-B,1,2027-01-15T08:00:00Z,success,9,20,9,,\r\n"
        );
    }

    #[test]
    fn csv_cells_are_quoted_and_formulas_defused() {
        let mut out = String::new();
        let cells = [
            "plain",
            "a,b",
            "say \"hi\"",
            "=HYPERLINK(\"x\")",
            "-2.5",
            "@me",
            "two\nlines",
        ]
        .map(String::from);
        push_row(&mut out, &cells);
        assert_eq!(
            out,
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"'=HYPERLINK(\"\"x\"\")\",-2.5,'@me,\"two\nlines\"\r\n"
        );
    }
}
