//! [`HttpMessageSink`]: delivers batches to the control plane over HTTP.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use kiln_core::{
    ChatMessage, DeliveryReport, LifecycleClock, MessageId, MessageSink, SinkError, WorkspaceId,
};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Deserialize;

use crate::body::encode_body;
use crate::config::OutboxConfig;
use crate::error::OutboxError;

/// POSTs `{"messages":[...]}` to `{control_plane}/api/workspaces/{workspace_id}/messages`
/// with `Authorization: Bearer <token>` and expects `{"persisted":n,"duplicates":m}`.
///
/// The token can be replaced at run time ([`set_token`](Self::set_token)) for rotation; the
/// next attempt uses it.
#[derive(Clone)]
pub struct HttpMessageSink {
    client: reqwest::Client,
    url: String,
    token: Arc<RwLock<String>>,
    clock: Arc<dyn LifecycleClock>,
}

impl std::fmt::Debug for HttpMessageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpMessageSink")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl HttpMessageSink {
    /// A sink for one workspace, with the timeouts of `config`
    /// (`MSG_HTTP_TIMEOUT_MS`, `MSG_HTTP_CONNECT_TIMEOUT_MS`). The clock turns an HTTP-date
    /// `Retry-After` into a delay.
    ///
    /// # Errors
    /// [`OutboxError::InvalidConfig`] when the base URL is not http(s) or the client cannot
    /// be built.
    pub fn new(
        control_plane: &str,
        workspace: WorkspaceId,
        token: impl Into<String>,
        config: &OutboxConfig,
        clock: Arc<dyn LifecycleClock>,
    ) -> Result<Self, OutboxError> {
        let base = control_plane.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(OutboxError::InvalidConfig(format!(
                "control plane URL {control_plane:?} must start with http:// or https://"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(config.http_timeout)
            .connect_timeout(config.http_connect_timeout)
            .build()
            .map_err(|e| OutboxError::InvalidConfig(format!("HTTP client: {e}")))?;
        Ok(Self {
            client,
            url: format!("{base}/api/workspaces/{workspace}/messages"),
            token: Arc::new(RwLock::new(token.into())),
            clock,
        })
    }

    /// The endpoint it posts to.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Replaces the bearer token (every clone of this sink sees the new one).
    pub fn set_token(&self, token: impl Into<String>) {
        *self
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token.into();
    }

    fn token(&self) -> String {
        self.token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl MessageSink for HttpMessageSink {
    async fn deliver(&self, batch: &[ChatMessage]) -> Result<DeliveryReport, SinkError> {
        let response = self
            .client
            .post(&self.url)
            .header(AUTHORIZATION, format!("Bearer {}", self.token()))
            .header(CONTENT_TYPE, "application/json")
            .body(encode_body(batch))
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(e) => return Err(classify_transport(&e)),
        };
        let status = response.status();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(classify_transport(&e)),
        };
        let now = self.clock.now();
        classify(status, &headers, &body, now)
    }
}

/// A request that never got a status: refused, reset, timed out. Always worth a retry.
fn classify_transport(e: &reqwest::Error) -> SinkError {
    if e.is_builder() {
        return SinkError::Misconfigured {
            message: e.to_string(),
        };
    }
    SinkError::Unavailable {
        message: describe(e),
        retry_after: None,
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    rejected: Vec<MessageId>,
}

#[derive(Deserialize)]
struct SuccessBody {
    persisted: u64,
    #[serde(default)]
    duplicates: u64,
}

/// Every HTTP status maps to an outcome here, and only here.
///
/// | status | outcome |
/// |---|---|
/// | 2xx with `{"persisted","duplicates"}` | delivered |
/// | 2xx with another body | `Unavailable` (the receiver's answer is unreadable; retry, it dedups) |
/// | 408, 429, 5xx (501 included) | `Unavailable`, with `Retry-After` (seconds or HTTP-date) |
/// | 413 | `PayloadTooLarge` |
/// | 400, 422 | `Rejected`, with the ids of `{"rejected":[...]}` when the body names them |
/// | 401, 403 | `Unauthorized` |
/// | 404 and every other status | `Misconfigured` |
pub(crate) fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: kiln_core::Timestamp,
) -> Result<DeliveryReport, SinkError> {
    let text = || {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let detail = parsed
            .as_ref()
            .and_then(|b| b.message.clone().or_else(|| b.error.clone()))
            .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned());
        (format!("HTTP {}: {detail}", status.as_u16()), parsed)
    };
    if status.is_success() {
        return match serde_json::from_slice::<SuccessBody>(body) {
            Ok(b) => Ok(DeliveryReport {
                persisted: b.persisted,
                duplicates: b.duplicates,
            }),
            Err(e) => Err(SinkError::Unavailable {
                message: format!("HTTP {}: unreadable acknowledgement: {e}", status.as_u16()),
                retry_after: None,
            }),
        };
    }
    match status {
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
            Err(SinkError::Unavailable {
                message: text().0,
                retry_after: retry_after(headers, now),
            })
        }
        s if s.is_server_error() => Err(SinkError::Unavailable {
            message: text().0,
            retry_after: retry_after(headers, now),
        }),
        StatusCode::PAYLOAD_TOO_LARGE => Err(SinkError::PayloadTooLarge { message: text().0 }),
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
            let (message, parsed) = text();
            Err(SinkError::Rejected {
                message,
                message_ids: parsed.map(|b| b.rejected).unwrap_or_default(),
            })
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            Err(SinkError::Unauthorized { message: text().0 })
        }
        _ => Err(SinkError::Misconfigured { message: text().0 }),
    }
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap, now: kiln_core::Timestamp) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(kiln_core::clock::duration_between(
        now,
        at.with_timezone(&chrono::Utc),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::ManualClock;
    use reqwest::header::HeaderValue;

    fn now() -> kiln_core::Timestamp {
        ManualClock::starting_at_epoch().now()
    }

    fn with_retry_after(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(v).unwrap());
        h
    }

    fn status(code: u16, body: &str) -> Result<DeliveryReport, SinkError> {
        classify(
            StatusCode::from_u16(code).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            now(),
        )
    }

    #[test]
    fn every_status_class_maps_once() {
        assert_eq!(
            status(200, r#"{"persisted":3,"duplicates":1}"#).unwrap(),
            DeliveryReport {
                persisted: 3,
                duplicates: 1
            }
        );
        assert!(matches!(
            status(200, "ok"),
            Err(SinkError::Unavailable { .. })
        ));
        for code in [408, 429, 500, 501, 502, 503, 504] {
            assert!(
                matches!(status(code, ""), Err(SinkError::Unavailable { .. })),
                "{code}"
            );
        }
        assert!(matches!(
            status(413, ""),
            Err(SinkError::PayloadTooLarge { .. })
        ));
        for code in [400, 422] {
            assert!(
                matches!(status(code, ""), Err(SinkError::Rejected { .. })),
                "{code}"
            );
        }
        for code in [401, 403] {
            assert!(
                matches!(status(code, ""), Err(SinkError::Unauthorized { .. })),
                "{code}"
            );
        }
        for code in [404, 405, 409, 410, 418] {
            assert!(
                matches!(status(code, ""), Err(SinkError::Misconfigured { .. })),
                "{code}"
            );
        }
    }

    #[test]
    fn rejections_name_the_culprits_when_the_body_does() {
        let id = MessageId::new();
        let body = format!(r#"{{"error":"invalid","message":"bad role","rejected":["{id}"]}}"#);
        match status(422, &body) {
            Err(SinkError::Rejected {
                message,
                message_ids,
            }) => {
                assert_eq!(message_ids, vec![id]);
                assert!(message.contains("bad role"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let r = classify(
            StatusCode::TOO_MANY_REQUESTS,
            &with_retry_after("7"),
            b"",
            now(),
        );
        assert!(
            matches!(r, Err(SinkError::Unavailable { retry_after: Some(d), .. }) if d == Duration::from_secs(7))
        );
        // The epoch clock reads 2026-01-01T00:00:00Z.
        let r = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            &with_retry_after("Thu, 01 Jan 2026 00:01:30 GMT"),
            b"",
            now(),
        );
        assert!(
            matches!(r, Err(SinkError::Unavailable { retry_after: Some(d), .. }) if d == Duration::from_secs(90))
        );
        let r = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            &with_retry_after("soon"),
            b"",
            now(),
        );
        assert!(matches!(
            r,
            Err(SinkError::Unavailable {
                retry_after: None,
                ..
            })
        ));
    }

    #[test]
    fn the_url_is_the_workspace_endpoint() {
        let ws = WorkspaceId::new();
        let sink = HttpMessageSink::new(
            "http://cp.example/",
            ws,
            "t",
            &OutboxConfig::default(),
            Arc::new(ManualClock::starting_at_epoch()),
        )
        .unwrap();
        assert_eq!(
            sink.url(),
            format!("http://cp.example/api/workspaces/{ws}/messages")
        );
        assert!(!format!("{sink:?}").contains("\"t\""));
        assert!(
            HttpMessageSink::new(
                "ftp://x",
                ws,
                "t",
                &OutboxConfig::default(),
                Arc::new(ManualClock::starting_at_epoch())
            )
            .is_err()
        );
    }
}
