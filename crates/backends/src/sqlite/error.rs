//! The one place SQLite errors become [`StoreError`]s.

use kiln_core::StoreError;

use crate::sql_common::classify;

/// `SQLITE_BUSY` and `SQLITE_LOCKED` (with their extended codes): another writer held the
/// lock past the busy timeout; the same call may succeed later.
fn is_retryable_code(code: &str) -> bool {
    code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Classifies a SQLite error: unique violation → conflict, busy or pool trouble →
/// unavailable (retryable), anything else → backend.
pub(crate) fn map_err(err: sqlx::Error) -> StoreError {
    classify(err, is_retryable_code)
}

#[cfg(test)]
mod tests {
    #[test]
    fn busy_and_locked_codes_are_retryable() {
        for code in ["5", "6", "261", "517", "773", "262"] {
            assert!(super::is_retryable_code(code), "{code}");
        }
        for code in ["19", "2067", "1", "x"] {
            assert!(!super::is_retryable_code(code), "{code}");
        }
    }
}
