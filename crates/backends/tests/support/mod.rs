//! The one place tests (and the bench) decide whether PostgreSQL is there, and the
//! throwaway database each PostgreSQL test gets so tests run in parallel.
//!
//! - `KILN_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`): the server
//!   and a database to connect to for creating the per-test databases.
//! - Without it a test prints how to enable it and passes, unless `KILN_REQUIRE_SERVICES=1`
//!   (CI), which makes a missing server fail the test.

#![allow(dead_code)] // Each test binary uses part of it.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The PostgreSQL URL to test against, or `None` (after saying how to enable the test) when
/// none is configured and services are not required.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("KILN_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "{test}: KILN_REQUIRE_SERVICES=1 but KILN_TEST_POSTGRES_URL is not set \
             (run `bash .ci/postgres.sh` and set it to postgres://postgres@127.0.0.1:5432/test)"
        ),
        _ => {
            eprintln!(
                "SKIPPED {test}: set KILN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
                 (and run `bash .ci/postgres.sh`) to run it"
            );
            None
        }
    }
}

/// `url` with its database name replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{root}/{database}?{query}"),
        None => format!("{root}/{database}"),
    }
}

/// A database created for one test and dropped (even if the test panics) when this is.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// The URL of the new database.
    pub url: String,
}

impl TestDatabase {
    /// Creates `kiln_test_<random>` next to the database of `admin_url`, or `None` (with the
    /// skip notice) when PostgreSQL is not configured.
    pub async fn create(test: &str) -> Option<Self> {
        let admin_url = postgres_url(test)?;
        let name = format!("kiln_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot connect to {admin_url}: {e}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{test}: cannot create database {name}: {e}"));
        let _ = admin.close().await;
        Some(Self {
            url: with_database(&admin_url, &name),
            admin_url,
            name,
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime (and during a panic): use a thread with its own.
        let dropped = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async move {
                    let mut admin = PgConnection::connect(&admin_url).await?;
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await?;
                    admin.close().await
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}
