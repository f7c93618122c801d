//! The fake's HTTP handlers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::labels::LabelSelector;
use super::state::{ServerRecord, after};
use super::{Endpoint, FakeFailure, Shared};
use crate::hetzner::api::{self, CreateServerRequest};

type Ctx = AxumState<Arc<Shared>>;

const RATE_LIMIT: u32 = 3600;
const MAX_USER_DATA: usize = 32 * 1024;

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/servers", get(list_servers).post(create_server))
        .route("/v1/servers/{id}", get(get_server).delete(delete_server))
        .route("/v1/actions/{id}", get(get_action))
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            rate_limit_headers,
        ))
        .with_state(shared)
}

/// Adds Hetzner's rate-limit headers to every answer that has none yet.
async fn rate_limit_headers(AxumState(shared): Ctx, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let calls: u64 = shared.lock().calls.values().sum();
    let remaining = u64::from(RATE_LIMIT).saturating_sub(calls);
    let reset =
        shared.options.clock.now().timestamp() + i64::try_from(calls.min(3600)).unwrap_or(0);
    let headers = response.headers_mut();
    for (name, value) in [
        ("ratelimit-limit", RATE_LIMIT.to_string()),
        ("ratelimit-remaining", remaining.to_string()),
        ("ratelimit-reset", reset.to_string()),
    ] {
        if !headers.contains_key(name)
            && let Ok(value) = HeaderValue::from_str(&value)
        {
            headers.insert(name, value);
        }
    }
    response
}

fn error(status: u16, code: &str, message: &str, details: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = api::ErrorResponse {
        error: api::ErrorBody {
            code: code.into(),
            message: message.into(),
            details: Some(details),
        },
    };
    (status, axum::Json(body)).into_response()
}

fn invalid_field(field: &str, message: &str) -> Response {
    error(
        400,
        "invalid_input",
        &format!("invalid input in field '{field}'"),
        json!({ "fields": [{ "name": field, "messages": [message] }] }),
    )
}

/// Counts the call, answers an injected failure if one is queued, then checks the token.
async fn admit(shared: &Shared, endpoint: Endpoint, headers: &HeaderMap) -> Option<Response> {
    let injected = {
        let mut state = shared.lock();
        *state.calls.entry(endpoint).or_default() += 1;
        state
            .failures
            .get_mut(&endpoint)
            .and_then(std::collections::VecDeque::pop_front)
    };
    match injected {
        Some(FakeFailure::RateLimited { reset_in }) => {
            let reset = after(shared.options.clock.now(), reset_in).timestamp();
            let mut response = error(
                429,
                "rate_limit_exceeded",
                &format!("limit of {RATE_LIMIT} requests per hour reached"),
                json!({}),
            );
            let h = response.headers_mut();
            h.insert("ratelimit-limit", HeaderValue::from(RATE_LIMIT));
            h.insert("ratelimit-remaining", HeaderValue::from(0));
            h.insert("ratelimit-reset", HeaderValue::from(reset));
            return Some(response);
        }
        Some(FakeFailure::Status {
            status,
            code,
            message,
        }) => {
            return Some(error(status, &code, &message, json!({})));
        }
        Some(FakeFailure::Hang(duration)) => tokio::time::sleep(duration).await,
        None => {}
    }
    let expected = format!("Bearer {}", shared.options.token);
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    (!authorized).then(|| {
        error(
            401,
            "unauthorized",
            "Request was made with an invalid or unknown token",
            json!({}),
        )
    })
}

fn parse_id(raw: &str) -> Result<i64, Box<Response>> {
    raw.parse::<i64>()
        .map_err(|_| Box::new(invalid_field("id", "must be an integer")))
}

fn not_found(kind: &str, id: i64) -> Response {
    error(
        404,
        "not_found",
        &format!("{kind} with ID '{id}' not found"),
        json!({}),
    )
}

async fn create_server(AxumState(shared): Ctx, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = admit(&shared, Endpoint::CreateServer, &headers).await {
        return refused;
    }
    let request: CreateServerRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return error(400, "json_error", &format!("invalid JSON: {e}"), json!({})),
    };
    let options = &shared.options;
    if let Some(refused) = validate(&request, options) {
        return refused;
    }
    let now = options.clock.now();
    let (response, created) = {
        shared.settle(now);
        let mut state = shared.lock();
        if state
            .servers
            .values()
            .any(|s| s.request.name == request.name)
        {
            return error(
                409,
                "uniqueness_error",
                "server name is already used",
                json!({ "fields": [{ "name": "name" }] }),
            );
        }
        if state.servers.len() >= options.max_servers {
            return error(
                403,
                "resource_limit_exceeded",
                "server limit exceeded for this project",
                json!({}),
            );
        }
        let id = state.next_id();
        let started_at = after(now, options.action_delay);
        let running_at = after(now, options.boot_delay.max(options.action_delay));
        let create_action = state.new_action("create_server", id, now, started_at);
        let start_action = state.new_action("start_server", id, now, running_at);
        let record = ServerRecord {
            request: request.clone(),
            id,
            created: now,
            started_at,
            running_at,
            create_action,
            start_action,
            delete_action: None,
        };
        let body = api::CreateServerResponse {
            server: state.api_server(&record, now),
            action: state.api_action(create_action, now).expect("just made"),
            next_actions: vec![state.api_action(start_action, now).expect("just made")],
            root_password: None,
        };
        let snapshot = state.snapshot(&record, now);
        state.servers.insert(id, record);
        state.create_requests.push(request);
        (body, snapshot)
    };
    shared.run_hooks(&shared.on_create, std::slice::from_ref(&created));
    (StatusCode::CREATED, axum::Json(response)).into_response()
}

fn validate(request: &CreateServerRequest, options: &super::FakeOptions) -> Option<Response> {
    let hostname_ok = !request.name.is_empty()
        && request.name.len() <= 63
        && request
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !request.name.starts_with('-');
    if !hostname_ok {
        return Some(invalid_field("name", "must be a valid hostname"));
    }
    if !options.server_types.contains(&request.server_type) {
        return Some(invalid_field("server_type", "server type not found"));
    }
    if !options.images.contains(&request.image) {
        return Some(invalid_field("image", "image not found"));
    }
    if let Some(location) = &request.location
        && !options.locations.contains(location)
    {
        return Some(invalid_field("location", "location not found"));
    }
    let label_ok = |s: &str, allow_slash: bool| {
        s.len() <= 63
            && s.chars().all(|c| {
                c.is_ascii_alphanumeric() || "-_.".contains(c) || (allow_slash && c == '/')
            })
    };
    if request
        .labels
        .iter()
        .any(|(k, v)| k.is_empty() || !label_ok(k, true) || !label_ok(v, false))
    {
        return Some(invalid_field(
            "labels",
            "label keys and values must be valid",
        ));
    }
    if request
        .user_data
        .as_ref()
        .is_some_and(|u| u.len() > MAX_USER_DATA)
    {
        return Some(invalid_field("user_data", "must be at most 32 KiB"));
    }
    None
}

async fn get_server(
    AxumState(shared): Ctx,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, Endpoint::GetServer, &headers).await {
        return refused;
    }
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let now = shared.options.clock.now();
    shared.settle(now);
    let state = shared.lock();
    match state.servers.get(&id) {
        Some(server) => axum::Json(api::ServerResponse {
            server: state.api_server(server, now),
        })
        .into_response(),
        None => not_found("server", id),
    }
}

async fn delete_server(
    AxumState(shared): Ctx,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, Endpoint::DeleteServer, &headers).await {
        return refused;
    }
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let now = shared.options.clock.now();
    shared.settle(now);
    let mut state = shared.lock();
    let Some(existing) = state.servers.get(&id).map(|s| s.delete_action) else {
        return not_found("server", id);
    };
    let action = match existing {
        Some(action) => action,
        None => {
            let action = state.new_action(
                "delete_server",
                id,
                now,
                after(now, shared.options.action_delay),
            );
            if let Some(server) = state.servers.get_mut(&id) {
                server.delete_action = Some(action);
            }
            action
        }
    };
    let action = state.api_action(action, now).expect("just made");
    axum::Json(api::DeleteServerResponse { action }).into_response()
}

async fn get_action(
    AxumState(shared): Ctx,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, Endpoint::GetAction, &headers).await {
        return refused;
    }
    let id = match parse_id(&raw) {
        Ok(id) => id,
        Err(refused) => return *refused,
    };
    let now = shared.options.clock.now();
    shared.settle(now);
    let mut state = shared.lock();
    // A failed delete leaves the server as it was.
    let failed_delete = state
        .actions
        .get(&id)
        .filter(|a| a.command == "delete_server" && a.error.is_some() && now >= a.done_at)
        .map(|a| a.server);
    if let Some(server) = failed_delete.and_then(|s| state.servers.get_mut(&s)) {
        server.delete_action = None;
    }
    match state.api_action(id, now) {
        Some(action) => axum::Json(api::ActionResponse { action }).into_response(),
        None => not_found("action", id),
    }
}

async fn list_servers(
    AxumState(shared): Ctx,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = admit(&shared, Endpoint::ListServers, &headers).await {
        return refused;
    }
    let selector =
        match LabelSelector::parse(query.get("label_selector").map_or("", String::as_str)) {
            Ok(selector) => selector,
            Err(message) => return invalid_field("label_selector", &message),
        };
    let number = |name: &str, default: u32| -> Result<u32, Box<Response>> {
        query.get(name).map_or(Ok(default), |v| {
            v.parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| Box::new(invalid_field(name, "must be a positive integer")))
        })
    };
    let (page, per_page) = match (number("page", 1), number("per_page", 25)) {
        (Ok(page), Ok(per_page)) => (page, per_page.min(50)),
        (Err(refused), _) | (_, Err(refused)) => return *refused,
    };
    let now = shared.options.clock.now();
    shared.settle(now);
    let state = shared.lock();
    let matching: Vec<&ServerRecord> = state
        .servers
        .values()
        .filter(|s| selector.matches(&s.request.labels))
        .filter(|s| query.get("name").is_none_or(|n| *n == s.request.name))
        .collect();
    let total = u32::try_from(matching.len()).unwrap_or(u32::MAX);
    let last_page = total.div_ceil(per_page).max(1);
    let servers = matching
        .iter()
        .skip(((page - 1) * per_page) as usize)
        .take(per_page as usize)
        .map(|s| state.api_server(s, now))
        .collect();
    axum::Json(api::ListServersResponse {
        servers,
        meta: api::Meta {
            pagination: api::Pagination {
                page,
                per_page,
                previous_page: (page > 1).then(|| page - 1),
                next_page: (page < last_page).then(|| page + 1),
                last_page: Some(last_page),
                total_entries: Some(u64::from(total)),
            },
        },
    })
    .into_response()
}
