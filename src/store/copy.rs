//! Copying every record from one database to another: SQLite to PostgreSQL when a deployment
//! grows to several instances, or back. Both run the same schema, so each table is read in
//! primary-key order from one and written to the other column for column.
//!
//! The source is read inside one transaction (a consistent snapshot, even with the service
//! running); the target is written inside one transaction and must hold no records before, so
//! a copy either lands whole or not at all. Memoised results are not copied: they are a cache,
//! and the target recomputes what it needs.

use sqlx::Connection;

use super::sql::{args, Arg, Columns, Conn};
use super::{open_with, StoreError, StoreOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Int,
    Real,
}

/// A table as copied: its columns in order, and how many of the first make its primary key.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, Kind)],
    key_columns: usize,
}

use Kind::{Int, Real, Text};

/// Every table of the records, parents before children (foreign keys hold at every insert).
/// A test checks these lists against both schemas, so a migration that adds a column without
/// adding it here fails.
const TABLES: &[Table] = &[
    Table {
        name: "users",
        columns: &[
            ("user_id", Text),
            ("name", Text),
            ("email", Text),
            ("created_at", Text),
        ],
        key_columns: 1,
    },
    Table {
        name: "courses",
        columns: &[
            ("course_code", Text),
            ("course_name", Text),
            ("description", Text),
            ("created_at", Text),
        ],
        key_columns: 1,
    },
    Table {
        name: "exams",
        columns: &[
            ("exam_code", Text),
            ("course_code", Text),
            ("exam_name", Text),
            ("total_exam_marks", Real),
            ("created_at", Text),
        ],
        key_columns: 1,
    },
    Table {
        name: "question_papers",
        columns: &[
            ("question_paper_code", Text),
            ("exam_code", Text),
            ("title", Text),
            ("marks_step", Real),
            ("created_at", Text),
        ],
        key_columns: 1,
    },
    Table {
        name: "questions",
        columns: &[
            ("question_paper_code", Text),
            ("question_number", Text),
            ("position", Int),
            ("question_text", Text),
            ("standard_answer", Text),
            ("total_marks", Real),
        ],
        key_columns: 2,
    },
    Table {
        name: "submissions",
        columns: &[
            ("submission_id", Text),
            ("user_id", Text),
            ("course_code", Text),
            ("exam_code", Text),
            ("question_paper_code", Text),
            ("extracted_text", Text),
            ("unassigned_text", Text),
            ("created_at", Text),
            ("images_digest", Text),
        ],
        key_columns: 1,
    },
    Table {
        name: "submission_images",
        columns: &[
            ("submission_id", Text),
            ("position", Int),
            ("image_id", Text),
            ("image_url", Text),
            ("content_sha256", Text),
            ("media_type", Text),
            ("byte_size", Int),
            ("width", Int),
            ("height", Int),
            ("ocr_text", Text),
            ("ocr_confidence", Real),
            ("ocr_engine", Text),
            ("ocr_memo_key", Text),
            ("page_count", Int),
        ],
        key_columns: 2,
    },
    Table {
        name: "submission_answers",
        columns: &[
            ("submission_id", Text),
            ("position", Int),
            ("question_number", Text),
            ("answer", Text),
            ("ocr_confidence", Real),
            ("ocr_engine", Text),
            ("low_ocr_confidence", Int),
        ],
        key_columns: 2,
    },
    Table {
        name: "evaluations",
        columns: &[
            ("evaluation_id", Text),
            ("version", Int),
            ("user_id", Text),
            ("course_code", Text),
            ("exam_code", Text),
            ("question_paper_code", Text),
            ("submission_id", Text),
            ("grader", Text),
            ("total_exam_marks", Real),
            ("final_score", Real),
            ("status", Text),
            ("created_at", Text),
        ],
        key_columns: 1,
    },
    Table {
        name: "evaluation_items",
        columns: &[
            ("evaluation_id", Text),
            ("position", Int),
            ("question_number", Text),
            ("student_answer", Text),
            ("standard_answer", Text),
            ("total_marks", Real),
            ("marks_awarded", Real),
            ("llm_evaluation", Text),
            ("reasoning", Text),
            ("status", Text),
            ("error", Text),
            ("flags", Text),
            ("final_stage", Text),
            ("stages", Text),
            ("question_text", Text),
        ],
        key_columns: 2,
    },
    Table {
        name: "api_keys",
        columns: &[
            ("key_id", Text),
            ("key_hash", Text),
            ("role", Text),
            ("user_id", Text),
            ("label", Text),
            ("created_at", Text),
            ("revoked_at", Text),
        ],
        key_columns: 1,
    },
    Table {
        name: "idempotency_keys",
        columns: &[
            ("scope", Text),
            ("endpoint", Text),
            ("key", Text),
            ("request_hash", Text),
            ("state", Text),
            ("status_code", Int),
            ("response", Text),
            ("created_at", Text),
            ("user_id", Text),
        ],
        key_columns: 3,
    },
];

/// Rows read per query and written per statement (at most 14 columns: 7,000 values, under
/// SQLite's limit of 32,766).
const ROWS_PER_PAGE: usize = 500;

/// One value read from the source, owned until written.
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
}

impl Value {
    fn read(row: &impl Columns, name: &str, kind: Kind) -> Result<Value, StoreError> {
        Ok(match kind {
            Text => Value::Text(row.col(name)?),
            Int => Value::Int(row.col(name)?),
            Real => Value::Real(row.col(name)?),
        })
    }

    fn arg(&self) -> Arg<'_> {
        match self {
            Value::Text(value) => Arg::Text(value.as_deref()),
            Value::Int(value) => Arg::Int(*value),
            Value::Real(value) => Arg::Real(*value),
        }
    }
}

/// Records copied, per table, in copy order.
pub type CopyReport = Vec<(&'static str, u64)>;

/// An open database of either kind.
enum Database {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Database {
    /// Opens `url` through the store (creating and migrating it), then connects for the copy.
    async fn open(url: &str) -> Result<Database, StoreError> {
        drop(open_with(url, &StoreOptions::default()).await?);
        if let Some(path) = url.strip_prefix("sqlite://") {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(path)
                .foreign_keys(true)
                .busy_timeout(std::time::Duration::from_secs(10));
            Ok(Database::Sqlite(
                sqlx::SqliteConnection::connect_with(&options).await?,
            ))
        } else {
            Ok(Database::Postgres(sqlx::PgConnection::connect(url).await?))
        }
    }
}

/// How each side's transaction starts: the source's as one consistent snapshot (PostgreSQL
/// sees the data as of its first query under repeatable read; SQLite's read transaction
/// does so by itself), the target's holding SQLite's write lock from the start.
const SQLITE_READ: &str = "BEGIN";
const SQLITE_WRITE: &str = "BEGIN IMMEDIATE";
const POSTGRES_READ: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";
const POSTGRES_WRITE: &str = "BEGIN";

/// Copies every record of the database at `from` into the one at `to` (created and migrated
/// if needed, and holding no records yet). `progress` hears each table as it is done.
pub async fn copy_records(
    from: &str,
    to: &str,
    mut progress: impl FnMut(&'static str, u64) + Send,
) -> Result<CopyReport, StoreError> {
    if from == to {
        return Err(StoreError::Copy(
            "the source and the target are the same database".into(),
        ));
    }
    if let Some(path) = from.strip_prefix("sqlite://") {
        // Opening creates a missing database: a mistyped source would copy nothing, quietly.
        if !std::path::Path::new(path).is_file() {
            return Err(StoreError::Copy(format!("there is no database at {path}")));
        }
    }
    let source = Database::open(from).await?;
    let target = Database::open(to).await?;
    let progress = &mut progress;
    // A copy that fails returns before its COMMITs; dropping the connections rolls back.
    match (source, target) {
        (Database::Sqlite(mut s), Database::Sqlite(mut t)) => {
            copy_between((&mut s, SQLITE_READ), (&mut t, SQLITE_WRITE), progress).await
        }
        (Database::Sqlite(mut s), Database::Postgres(mut t)) => {
            copy_between((&mut s, SQLITE_READ), (&mut t, POSTGRES_WRITE), progress).await
        }
        (Database::Postgres(mut s), Database::Sqlite(mut t)) => {
            copy_between((&mut s, POSTGRES_READ), (&mut t, SQLITE_WRITE), progress).await
        }
        (Database::Postgres(mut s), Database::Postgres(mut t)) => {
            copy_between((&mut s, POSTGRES_READ), (&mut t, POSTGRES_WRITE), progress).await
        }
    }
}

async fn copy_between<S, T>(
    (source, begin_reading): (&mut S, &str),
    (target, begin_writing): (&mut T, &str),
    progress: &mut (impl FnMut(&'static str, u64) + Send),
) -> Result<CopyReport, StoreError>
where
    S: Conn,
    T: Conn,
{
    source.execute(begin_reading, args![]).await?;
    target.execute(begin_writing, args![]).await?;
    for table in TABLES {
        let present = target
            .fetch_optional(
                &format!("SELECT COUNT(*) AS n FROM {}", table.name),
                args![],
            )
            .await?
            .map(|row| row.col::<i64>("n"))
            .transpose()?
            .unwrap_or(0);
        if present > 0 {
            return Err(StoreError::Copy(format!(
                "the target already holds records ({present} in {}); copy into a new, empty database",
                table.name
            )));
        }
    }
    let mut report = CopyReport::new();
    for table in TABLES {
        let copied = copy_table(source, target, table).await?;
        progress(table.name, copied);
        report.push((table.name, copied));
    }
    target.execute("COMMIT", args![]).await?;
    source.execute("COMMIT", args![]).await?;
    Ok(report)
}

/// Copies one table page by page, each page read after the last key of the one before.
async fn copy_table<S, T>(source: &mut S, target: &mut T, table: &Table) -> Result<u64, StoreError>
where
    S: Conn + ?Sized,
    T: Conn + ?Sized,
{
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let key = names[..table.key_columns].join(", ");
    let key_placeholders = (1..=table.key_columns)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let first_page = format!(
        "SELECT {} FROM {} ORDER BY {key} LIMIT {ROWS_PER_PAGE}",
        names.join(", "),
        table.name
    );
    let next_page = format!(
        "SELECT {} FROM {} WHERE ({key}) > ({key_placeholders}) ORDER BY {key} LIMIT {ROWS_PER_PAGE}",
        names.join(", "),
        table.name
    );
    let mut last_key: Option<Vec<Value>> = None;
    let mut copied = 0;
    loop {
        let rows = match &last_key {
            None => source.fetch_all(&first_page, args![]).await?,
            Some(key) => {
                source
                    .fetch_all(&next_page, key.iter().map(Value::arg).collect())
                    .await?
            }
        };
        if rows.is_empty() {
            return Ok(copied);
        }
        let values = rows
            .iter()
            .map(|row| {
                table
                    .columns
                    .iter()
                    .map(|(name, kind)| Value::read(row, name, *kind))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let insert = format!(
            "INSERT INTO {} ({}) VALUES {}",
            table.name,
            names.join(", "),
            super::sql::placeholders(T::PLACEHOLDER, values.len(), names.len())
        );
        target
            .execute(&insert, values.iter().flatten().map(Value::arg).collect())
            .await?;
        copied += values.len() as u64;
        let full_page = values.len() == ROWS_PER_PAGE;
        last_key = values
            .into_iter()
            .last()
            .map(|mut row| row.drain(..table.key_columns).collect());
        if !full_page {
            return Ok(copied);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::PostgresSchema;

    /// The columns of `table` as the database at `url` has them, in order.
    async fn schema_columns(conn: &mut impl Conn, sql: &str, table: &str) -> Vec<String> {
        conn.fetch_all(sql, args![table])
            .await
            .unwrap()
            .iter()
            .map(|row| row.col::<String>("name").unwrap())
            .collect()
    }

    fn sorted(mut names: Vec<String>) -> Vec<String> {
        names.sort();
        names
    }

    fn listed(table: &Table) -> Vec<String> {
        sorted(table.columns.iter().map(|(n, _)| n.to_string()).collect())
    }

    #[tokio::test]
    async fn every_column_of_every_table_is_copied() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("e.db").display());
        let Database::Sqlite(mut conn) = Database::open(&url).await.unwrap() else {
            unreachable!()
        };
        let tables: Vec<String> = conn
            .fetch_all(
                "SELECT name FROM sqlite_master WHERE type = 'table'
                   AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
                args![],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.col::<String>("name").unwrap())
            .collect();
        assert_eq!(
            tables,
            sorted(TABLES.iter().map(|t| t.name.to_string()).collect())
        );
        for table in TABLES {
            let columns = schema_columns(
                &mut conn,
                "SELECT name FROM pragma_table_info($1)",
                table.name,
            )
            .await;
            assert_eq!(sorted(columns), listed(table), "{}", table.name);
        }
        if let Some(schema) = PostgresSchema::create().await {
            let Database::Postgres(mut conn) = Database::open(&schema.url).await.unwrap() else {
                unreachable!()
            };
            for table in TABLES {
                let columns = schema_columns(
                    &mut conn,
                    "SELECT column_name::text AS name FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1",
                    table.name,
                )
                .await;
                assert_eq!(sorted(columns), listed(table), "{}", table.name);
            }
            drop(conn);
            schema.drop_schema().await;
        }
    }
}
