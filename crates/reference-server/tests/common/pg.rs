//! A throwaway PostgreSQL database per test (and for the bench), from `KILN_TEST_POSTGRES_URL`.
//! Without it the caller prints a skip notice and returns, unless `KILN_REQUIRE_SERVICES=1`.
#![allow(dead_code)]

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The configured server URL, or `None` after the skip notice.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("KILN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("KILN_REQUIRE_SERVICES").as_deref() == Ok("1") => panic!(
            "{test}: KILN_REQUIRE_SERVICES=1 but KILN_TEST_POSTGRES_URL is not set \
             (e.g. postgres://postgres@127.0.0.1:5432/test)"
        ),
        _ => {
            eprintln!(
                "SKIPPED {test}: set KILN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test to run it"
            );
            None
        }
    }
}

fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let root = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

/// A database made for one test, dropped with it.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// Its URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates `kiln_srv_<random>`, or `None` when PostgreSQL is not configured.
    pub async fn create(test: &str) -> Option<Self> {
        let admin_url = postgres_url(test)?;
        let name = format!("kiln_srv_{}", uuid::Uuid::new_v4().simple());
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
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Dropped from async code: do the cleanup on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut admin)
                    .await;
                }
            });
        })
        .join();
    }
}
