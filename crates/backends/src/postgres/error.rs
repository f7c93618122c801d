//! The one place PostgreSQL errors become [`StoreError`]s.

use kiln_core::StoreError;

use crate::sql_common::classify;

/// SQLSTATEs after which the same call may succeed: connection exceptions (class 08),
/// serialization failure and deadlock (the transaction was rolled back), too many
/// connections, and the server shutting down or starting up.
fn is_retryable_code(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03"
        )
}

/// Classifies a PostgreSQL error: unique violation → conflict, connection or pool trouble →
/// unavailable (retryable), anything else → backend.
pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    // Class 22, data exception (a NUL character in text, a value out of range), is the
    // value's fault: invalid input, not a backend failure (the API answers 422, not 500).
    if let sqlx::Error::Database(db) = &err
        && db.code().is_some_and(|c| c.starts_with("22"))
    {
        return StoreError::Invalid {
            message: db.message().to_owned(),
        };
    }
    classify(err, is_retryable_code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn connection_and_serialization_codes_are_retryable() {
        for code in ["08006", "08001", "40001", "40P01", "57P01"] {
            assert!(super::is_retryable_code(code), "{code}");
        }
        for code in ["23505", "23503", "42P01"] {
            assert!(!super::is_retryable_code(code), "{code}");
        }
    }
}
