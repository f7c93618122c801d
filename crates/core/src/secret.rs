//! [`Secret`]: a credential held in memory (a project's git token, a Hetzner token) that
//! never shows up in `Debug` output, so a `?command` or `{:?}` in a log line cannot leak it.
//! It serializes as the plain string, because the node protocol must carry the git token;
//! only the node's authenticated command channel ever does (see `kiln_core::protocol`).
//!
//! ```
//! use kiln_core::secret::Secret;
//!
//! let token = Secret::new("ghp_0123456789abcd");
//! assert_eq!(format!("{token:?}"), "Secret([redacted])");
//! assert_eq!(token.expose(), "ghp_0123456789abcd");
//! assert_eq!(serde_json::to_string(&token).unwrap(), "\"ghp_0123456789abcd\"");
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

/// What [`Secret`]'s `Debug` shows instead of the value, and what known secret values are
/// replaced with where they would otherwise be stored or shown.
pub const REDACTED: &str = "[redacted]";

/// A secret string: redacted in `Debug`, serialized as the plain value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Each call site is a place where the secret leaves this wrapper;
    /// keep them few.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value_and_serde_round_trips() {
        let secret = Secret::new("s3cr3t-value");
        let wrapped = Some(vec![secret.clone()]);
        assert!(!format!("{wrapped:?} {wrapped:#?}").contains("s3cr3t"));
        let json = serde_json::to_string(&secret).unwrap();
        assert_eq!(serde_json::from_str::<Secret>(&json).unwrap(), secret);
    }
}
