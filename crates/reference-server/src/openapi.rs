//! `GET /api/openapi.json`: the OpenAPI 3 description of every endpoint.

use axum::http::header;
use axum::response::IntoResponse;

/// The document, hand-written and checked by tests against the router.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
