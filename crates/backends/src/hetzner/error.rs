//! Every Hetzner failure becomes a [`ProviderError`] here, in one function: [`classify`].

use std::time::Duration;

use kiln_core::{ProviderError, Timestamp};

/// A failed Hetzner call, as observed at the boundary, before it is classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure<'a> {
    /// The API answered with an error status and (usually) an error body.
    Response {
        /// The HTTP status.
        status: u16,
        /// Hetzner's error code (`invalid_input`, `resource_limit_exceeded`, …), if the body
        /// had one.
        code: Option<&'a str>,
        /// Hetzner's message, or the raw body when it was not Hetzner's error shape.
        message: &'a str,
        /// The `RateLimit-Reset` header: when the limit is reset, in UNIX seconds.
        rate_limit_reset: Option<i64>,
    },
    /// An action (create, start, delete) ended with `status: error`.
    Action {
        /// The action's command, e.g. `create_server`.
        command: &'a str,
        /// Hetzner's error code.
        code: &'a str,
        /// Hetzner's message.
        message: &'a str,
    },
    /// The request did not complete: connection refused or reset, DNS, timeout, or a body
    /// that could not be read.
    Transport {
        /// Whether a timeout cut it short.
        timed_out: bool,
        /// What happened.
        message: String,
    },
}

/// Hetzner codes meaning "your account may not have more of this".
const QUOTA_CODES: &[&str] = &[
    "resource_limit_exceeded",
    "limit_exceeded",
    "quota_exceeded",
];
/// Hetzner codes meaning "the token is wrong or lacks permission".
const AUTH_CODES: &[&str] = &["unauthorized", "forbidden", "token_readonly"];
/// Hetzner codes meaning "try again later": locked resources, maintenance, capacity.
const TRANSIENT_CODES: &[&str] = &[
    "locked",
    "conflict",
    "service_error",
    "unavailable",
    "maintenance",
    "resource_unavailable",
    "placement_error",
    "timeout",
    "server_error",
];

/// Classifies a failure once, so every caller agrees on what is retryable:
///
/// | failure | error |
/// |---|---|
/// | 429 or `rate_limit_exceeded` | [`ProviderError::RateLimited`], `retry_after` = `RateLimit-Reset` − now (at least 1 s) |
/// | `resource_limit_exceeded` (a 403 at Hetzner) and other quota codes | [`ProviderError::Quota`] |
/// | 401, 403, `unauthorized`, `forbidden`, `token_readonly` | [`ProviderError::Unauthorized`] |
/// | 5xx, 408, `locked`, `conflict`, `maintenance`, `resource_unavailable`, `placement_error`, … | [`ProviderError::Unavailable`] |
/// | timeouts and network failures | [`ProviderError::Unavailable`] |
/// | any other 4xx (`invalid_input`, `uniqueness_error`, `protected`, 422, …) | [`ProviderError::Invalid`] |
/// | an action ending in an error with any other code | [`ProviderError::Unavailable`] (Hetzner accepted the request, then failed to carry it out) |
///
/// Hetzner's own code and message are kept in every variant that has room for them, so the
/// task that waited for the node shows what Hetzner said.
#[must_use]
pub fn classify(failure: &Failure<'_>, now: Timestamp) -> ProviderError {
    match failure {
        Failure::Transport { timed_out, message } => ProviderError::Unavailable {
            message: if *timed_out {
                format!("Hetzner API request timed out: {message}")
            } else {
                format!("Hetzner API call failed: {message}")
            },
        },
        Failure::Action {
            command,
            code,
            message,
        } => classify_code(code, message).unwrap_or_else(|| ProviderError::Unavailable {
            message: format!("Hetzner action {command} failed ({code}): {message}"),
        }),
        Failure::Response {
            status,
            code,
            message,
            rate_limit_reset,
        } => {
            let code_str = code.unwrap_or_default();
            if *status == 429 || code_str == "rate_limit_exceeded" {
                let retry_after = rate_limit_reset.map(|reset| {
                    let seconds = reset.saturating_sub(now.timestamp()).max(1);
                    Duration::from_secs(seconds.unsigned_abs())
                });
                return ProviderError::RateLimited { retry_after };
            }
            if let Some(error) = code.and_then(|code| classify_code(code, message)) {
                return error;
            }
            let code = code.map_or_else(|| format!("http_{status}"), str::to_owned);
            let message = (*message).to_owned();
            match status {
                401 | 403 => ProviderError::Unauthorized { code, message },
                408 | 500..=599 => ProviderError::Unavailable {
                    message: format!("Hetzner API answered {status} ({code}): {message}"),
                },
                _ => ProviderError::Invalid { code, message },
            }
        }
    }
}

/// The class of a known Hetzner code; `None` when the code alone does not decide it.
fn classify_code(code: &str, message: &str) -> Option<ProviderError> {
    let (code, message) = (code.to_owned(), message.to_owned());
    if QUOTA_CODES.contains(&code.as_str()) {
        Some(ProviderError::Quota { code, message })
    } else if AUTH_CODES.contains(&code.as_str()) {
        Some(ProviderError::Unauthorized { code, message })
    } else if TRANSIENT_CODES.contains(&code.as_str()) {
        Some(ProviderError::Unavailable {
            message: format!("{code}: {message}"),
        })
    } else if code == "rate_limit_exceeded" {
        Some(ProviderError::RateLimited { retry_after: None })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Timestamp {
        chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn response(status: u16, code: Option<&'static str>) -> ProviderError {
        classify(
            &Failure::Response {
                status,
                code,
                message: "said Hetzner",
                rate_limit_reset: None,
            },
            now(),
        )
    }

    #[test]
    fn rate_limits_honour_the_reset_header() {
        let error = classify(
            &Failure::Response {
                status: 429,
                code: Some("rate_limit_exceeded"),
                message: "slow down",
                rate_limit_reset: Some(1_800_000_042),
            },
            now(),
        );
        assert_eq!(
            error,
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(42))
            }
        );
        let past = classify(
            &Failure::Response {
                status: 429,
                code: None,
                message: "",
                rate_limit_reset: Some(1),
            },
            now(),
        );
        assert_eq!(
            past,
            ProviderError::RateLimited {
                retry_after: Some(Duration::from_secs(1))
            }
        );
        assert_eq!(
            response(429, None),
            ProviderError::RateLimited { retry_after: None }
        );
    }

    #[test]
    fn quota_is_decided_by_the_code_even_on_a_403() {
        assert_eq!(
            response(403, Some("resource_limit_exceeded")),
            ProviderError::Quota {
                code: "resource_limit_exceeded".into(),
                message: "said Hetzner".into()
            }
        );
    }

    #[test]
    fn credentials_problems_are_unauthorized() {
        for (status, code) in [
            (401, Some("unauthorized")),
            (403, Some("forbidden")),
            (403, None),
            (401, None),
        ] {
            assert!(
                matches!(response(status, code), ProviderError::Unauthorized { .. }),
                "{status} {code:?}"
            );
        }
        assert_eq!(
            response(403, Some("forbidden")),
            ProviderError::Unauthorized {
                code: "forbidden".into(),
                message: "said Hetzner".into()
            }
        );
    }

    #[test]
    fn server_side_and_lock_failures_are_retryable() {
        for (status, code) in [
            (500, Some("service_error")),
            (503, None),
            (502, None),
            (423, Some("locked")),
            (409, Some("conflict")),
            (503, Some("maintenance")),
            (412, Some("placement_error")),
        ] {
            let error = response(status, code);
            assert!(error.is_retryable(), "{status} {code:?} gave {error:?}");
        }
    }

    #[test]
    fn other_client_errors_are_invalid_with_the_code_passed_through() {
        assert_eq!(
            response(400, Some("invalid_input")),
            ProviderError::Invalid {
                code: "invalid_input".into(),
                message: "said Hetzner".into()
            }
        );
        assert!(matches!(
            response(409, Some("uniqueness_error")),
            ProviderError::Invalid { .. }
        ));
        assert_eq!(
            response(422, None),
            ProviderError::Invalid {
                code: "http_422".into(),
                message: "said Hetzner".into()
            }
        );
    }

    #[test]
    fn transport_and_action_failures() {
        let timeout = classify(
            &Failure::Transport {
                timed_out: true,
                message: "after 1s".into(),
            },
            now(),
        );
        assert!(
            timeout.is_retryable() && timeout.to_string().contains("timed out"),
            "{timeout}"
        );
        let action = classify(
            &Failure::Action {
                command: "create_server",
                code: "action_failed",
                message: "boom",
            },
            now(),
        );
        assert!(
            action.is_retryable() && action.to_string().contains("action_failed"),
            "{action}"
        );
        let quota = classify(
            &Failure::Action {
                command: "create_server",
                code: "resource_limit_exceeded",
                message: "no",
            },
            now(),
        );
        assert!(matches!(quota, ProviderError::Quota { .. }));
    }
}
