//! For tests only (the library's and the API's): a fresh PostgreSQL schema per test, in the
//! database named by `EXAMINER_TEST_POSTGRES_URL`, so tests run side by side and leave
//! nothing behind.

use sqlx::Connection;

/// The variable naming the PostgreSQL database tests may create schemas in.
pub const POSTGRES_URL_VAR: &str = "EXAMINER_TEST_POSTGRES_URL";

/// A schema created for one test.
pub struct PostgresSchema {
    base: String,
    schema: String,
    /// The URL to give a store or a service: the database, with the schema as search path.
    pub url: String,
}

impl PostgresSchema {
    /// Creates the schema; `None`, after printing a notice, when the variable is unset.
    /// Panics when the variable is set but the database does not answer: a test meant to
    /// run on PostgreSQL must not pass without it.
    pub async fn create() -> Option<Self> {
        let Ok(base) = std::env::var(POSTGRES_URL_VAR) else {
            eprintln!(
                "skipped: {POSTGRES_URL_VAR} is not set, so this test does not run on PostgreSQL"
            );
            return None;
        };
        Some(Self::create_in(&base, "examiner_test").await)
    }

    /// Creates a schema named `prefix_<random>` in the database at `base`.
    pub async fn create_in(base: &str, prefix: &str) -> Self {
        let schema = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(base)
            .await
            .unwrap_or_else(|e| panic!("{base} does not connect: {e}"));
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create schema {schema}: {e}"));
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options%5Bsearch_path%5D={schema}");
        Self {
            base: base.to_string(),
            schema,
            url,
        }
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.schema
    }

    /// Drops the schema and everything in it. A test that fails before this leaves its
    /// schema behind, for a look.
    pub async fn drop_schema(self) {
        let mut admin = sqlx::PgConnection::connect(&self.base)
            .await
            .unwrap_or_else(|e| panic!("{} does not connect: {e}", self.base));
        sqlx::query(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot drop schema {}: {e}", self.schema));
    }
}
