//! `GET /api/openapi.json`: the OpenAPI 3 description of every endpoint.

use axum::http::header;
use axum::response::IntoResponse;

/// The document. `src/openapi.json` is written by hand and is the only description of the
/// API (nothing generates it): change it with the route or body it describes.
/// `tests/openapi.rs` fails when a route the router mounts is missing from it, when it lists
/// an operation the router does not serve, or when it is not well-formed.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_JSON)
}
