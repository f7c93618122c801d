//! One error type for every HTTP answer: [`ApiError`], rendered as
//! `{"error": code, "message": …}` (plus `"rejected": [ids]` when specific messages were refused).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use kiln_core::{MessageId, StoreError};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An HTTP error answer: a status, a stable machine-readable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The stable error code (`not_found`, `invalid_request`, …).
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// The messages refused on their own merits, so a node's outbox can drop exactly those.
    pub rejected: Vec<MessageId>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[MessageId]>::is_empty")]
    rejected: &'a [MessageId],
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            rejected: Vec::new(),
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// 404 `not_found` for `what`. Also the answer for another user's objects, so nobody
    /// learns what exists outside their own data.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 500 `internal` (the details go to the log, not to the client).
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(%message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// The same error naming the refused messages.
    #[must_use]
    pub fn with_rejected(mut self, ids: Vec<MessageId>) -> Self {
        self.rejected = ids;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.code,
            message: &self.message,
            rejected: &self.rejected,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { entity, .. } => Self::not_found(entity),
            StoreError::Conflict { message } => Self::conflict(message),
            StoreError::Invalid { message } => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
            }
            StoreError::Unavailable { message } => {
                tracing::warn!(%message, "store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the database is unavailable; retry",
                )
            }
            other => Self::internal(other.to_string()),
        }
    }
}

impl From<kiln_core::task::TransitionError> for ApiError {
    fn from(err: kiln_core::task::TransitionError) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_transition", err.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let (status, code) = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            JsonRejection::JsonDataError(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "invalid_json"),
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            _ => (rejection.status(), "invalid_request"),
        };
        let message = match &rejection {
            JsonRejection::JsonDataError(e) => describe_data_error(&inner_text(&e.body_text())),
            JsonRejection::JsonSyntaxError(e) => {
                format!("the body is not valid JSON: {}", inner_text(&e.body_text()))
            }
            _ => rejection.body_text(),
        };
        Self::new(status, code, message)
    }
}

/// The error serde gave, without axum's preamble ("Failed to deserialize the JSON body into
/// the target type: ").
fn inner_text(body_text: &str) -> String {
    body_text
        .split_once(": ")
        .map_or(body_text, |(_, inner)| inner)
        .to_owned()
}

/// Says what serde's complaint about a JSON body means for the person who sent it: which
/// field, and what it takes. `raw` is `[path: ]problem[ at line L column C]`, the path (as
/// `vmSize` or `messages[0].role`) missing for the body itself. A problem serde does not
/// phrase in one of its usual ways (a check of our own) is kept as it is, after the path.
fn describe_data_error(raw: &str) -> String {
    let raw = strip_position(raw);
    let (path, problem) = match raw.split_once(": ") {
        Some((head, rest)) if is_path(head) => (Some(head), rest),
        _ => (None, raw),
    };
    let subject = path.unwrap_or("the body");
    let within = |field: &str| path.map_or(field.to_owned(), |p| format!("{p}.{field}"));
    if let Some(field) = problem.strip_prefix("missing field ") {
        return format!("{} is required", within(unquote(field)));
    }
    if let Some(field) = problem.strip_prefix("duplicate field ") {
        return format!("{} is given twice", within(unquote(field)));
    }
    if let Some(rest) = problem.strip_prefix("unknown field ") {
        let (field, expected) = rest.split_once(", ").unwrap_or((rest, ""));
        let known = match expected {
            "there are no fields" => "it takes no fields".to_owned(),
            e => format!("the fields are: {}", backticked_list(e)),
        };
        // The path already ends with the unknown field's name.
        let field = match path {
            Some(p) if p.ends_with(unquote(field)) => p.to_owned(),
            _ => within(unquote(field)),
        };
        return format!("unknown field {field}; {known}");
    }
    if let Some(rest) = problem.strip_prefix("unknown variant ") {
        let (value, expected) = rest.split_once(", ").unwrap_or((rest, ""));
        return format!(
            "{subject} must be one of: {} (got \"{}\")",
            backticked_list(expected),
            unquote(value)
        );
    }
    // serde also takes a struct as a list of its fields in order; a list that does not fit
    // was meant as something else.
    if let Some(rest) = problem.strip_prefix("invalid length ")
        && rest.contains(", expected struct ")
    {
        return format!("{subject} must be a JSON object (got a list)");
    }
    for (prefix, is_type) in [("invalid type: ", true), ("invalid value: ", false)] {
        if let Some(rest) = problem.strip_prefix(prefix)
            && let Some((got, expected)) = rest.rsplit_once(", expected ")
        {
            let got = if is_type {
                kind_of(got).to_owned()
            } else {
                value_of(got)
            };
            return format!(
                "{subject} must be {} (got {got})",
                expected_in_words(expected)
            );
        }
    }
    match path {
        Some(p) => format!("{p}: {problem}"),
        None => problem.to_owned(),
    }
}

/// `raw` without serde_json's trailing ` at line L column C`.
fn strip_position(raw: &str) -> &str {
    match raw.rsplit_once(" at line ") {
        Some((head, tail))
            if tail
                .split_once(" column ")
                .is_some_and(|(l, c)| is_number(l) && is_number(c)) =>
        {
            head
        }
        _ => raw,
    }
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether serde_path_to_error's prefix `head` is a path (`a.b[0]`), not words of a message.
fn is_path(head: &str) -> bool {
    !head.is_empty()
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.[]?-".contains(c))
}

fn unquote(s: &str) -> &str {
    s.trim_matches('`')
}

/// serde's "one of `a`, `b`" or "`a`" as "a, b".
fn backticked_list(expected: &str) -> String {
    let list = expected
        .trim_start_matches("expected ")
        .trim_start_matches("one of ");
    list.split(", ").map(unquote).collect::<Vec<_>>().join(", ")
}

/// serde's name of what a value must be, in words.
fn expected_in_words(expected: &str) -> String {
    macro_rules! whole {
        ($($t:ident),+) => {
            match expected {
                $(stringify!($t) => {
                    return format!("a whole number from {} to {}", $t::MIN, $t::MAX)
                })+
                _ => {}
            }
        };
    }
    whole!(i8, i16, i32, i64, u8, u16, u32, u64, usize, isize);
    match expected {
        "f32" | "f64" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a sequence" => "a list".to_owned(),
        "a map" => "a JSON object".to_owned(),
        e if e.starts_with("struct ") => "a JSON object".to_owned(),
        e => e.to_owned(),
    }
}

/// What kind of JSON value serde's "unexpected" names (`string "x"`, `integer `5``, `map`).
fn kind_of(unexpected: &str) -> &'static str {
    match unexpected
        .split_once(' ')
        .map_or(unexpected, |(kind, _)| kind)
    {
        "integer" | "floating" => "a number",
        "string" | "char" => "a string",
        "boolean" => "a boolean",
        "sequence" => "a list",
        "map" => "a JSON object",
        "null" | "unit" => "null",
        _ => "something else",
    }
}

/// The value serde's "unexpected" quotes: `integer `5`` is 5, `string "x"` is "x".
fn value_of(unexpected: &str) -> String {
    match unexpected.split_once(' ') {
        Some((_, value)) if value.starts_with('`') => unquote(value).to_owned(),
        Some(("string", value)) => value.to_owned(),
        _ => kind_of(unexpected).to_owned(),
    }
}

/// A 400 for a query string that does not fit, naming the parameter and what it takes
/// (`limit must be a whole number (got "abc")`) instead of axum's "Failed to deserialize
/// query string: limit: invalid digit found in string".
fn query_error(rejection: &QueryRejection, uri: &Uri) -> ApiError {
    let raw = inner_text(&rejection.body_text());
    let (parameter, problem) = match raw.split_once(": ") {
        Some((head, rest)) if is_path(head) => (head, rest),
        _ => return ApiError::bad_request(format!("the query string does not fit: {raw}")),
    };
    // serde_urlencoded passes on the `FromStr` error of a number or a boolean.
    let wanted = match problem {
        "invalid digit found in string"
        | "cannot parse integer from empty string"
        | "number too large to fit in target type"
        | "number too small to fit in target type" => "a whole number",
        "invalid float literal" => "a number",
        "provided string was not `true` or `false`" => "true or false",
        _ => return ApiError::bad_request(describe_data_error(&raw)),
    };
    let message = match problem {
        "number too large to fit in target type" => format!("{parameter} is too large"),
        "number too small to fit in target type" => format!("{parameter} is too small"),
        _ => format!("{parameter} must be {wanted}"),
    };
    let given = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri)
        .ok()
        .and_then(|pairs| pairs.0.into_iter().find(|(key, _)| key == parameter))
        .map(|(_, value)| value);
    ApiError::bad_request(match given {
        Some(value) => format!("{message} (got \"{value}\")"),
        None => message,
    })
}

/// Rewrites the plain-text error answers of axum's own extractors (a path segment that is
/// not UTF-8, for one) as JSON [`ApiError`]s, so every error has the same shape.
pub async fn json_rejections(response: Response) -> Response {
    let status = response.status();
    let plain_text = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain_text {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    ApiError::new(status, code, String::from_utf8_lossy(&bytes)).into_response()
}

/// `axum::Json` whose rejections are [`ApiError`]s (JSON bodies with precise statuses).
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s: a 400 `invalid_request`
/// naming the parameter, what it takes and what it got.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| query_error(&rejection, &parts.uri))
    }
}

/// Parses a path segment as an id; a malformed id is a 404 (no such object).
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}

/// A JSON value checked by serde into `T`, with a 422 naming the field on failure.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
        )
    })
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::describe_data_error;

    #[test]
    fn body_errors_name_nested_fields_and_keep_our_own_wording() {
        let cases = [
            (
                "messages[0].role: unknown variant `bot`, expected one of `user`, `assistant` at line 1 column 40",
                "messages[0].role must be one of: user, assistant (got \"bot\")",
            ),
            (
                "messages[0]: missing field `content` at line 1 column 9",
                "messages[0].content is required",
            ),
            (
                "messages[0].extra: unknown field `extra`, expected `content` at line 1 column 9",
                "unknown field messages[0].extra; the fields are: content",
            ),
            (
                "limit: invalid type: floating point `1.5`, expected u32 at line 1 column 12",
                "limit must be a whole number from 0 to 4294967295 (got a number)",
            ),
            (
                "invalid type: string \"a, expected b\", expected struct Body at line 1 column 15",
                "the body must be a JSON object (got a string)",
            ),
            (
                "expiresInSecs: must be from 1 s to 100 years",
                "expiresInSecs: must be from 1 s to 100 years",
            ),
            (
                "a check of our own: with its words",
                "a check of our own: with its words",
            ),
        ];
        for (raw, want) in cases {
            assert_eq!(describe_data_error(raw), want, "{raw}");
        }
    }
}
