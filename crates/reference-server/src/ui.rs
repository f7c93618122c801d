//! The web UI: plain ES modules, CSS and icons from `ui/`, embedded in the binary at build
//! time (running Kiln needs no Node build step).
//!
//! `GET /` is `ui/index.html`; every other file is served under `/assets/<path in ui/>`.
//! Files are not fingerprinted, so every answer says `Cache-Control: no-cache` and carries a
//! strong `ETag` (SHA-256 of the bytes): browsers revalidate and get `304 Not Modified` until
//! the binary changes. The entry page also sets a strict Content-Security-Policy: the UI
//! loads only its own scripts and styles and talks only to this origin.
//!
//! For working on the UI, `KILN_UI_DIR=<path to ui/>` serves the same files from disk at
//! each request (edit, reload; no rebuild). Only the embedded file names are served.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// One embedded file.
struct Asset {
    /// Path relative to `ui/`.
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

/// Embeds `ui/<path>` with its content type.
macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            bytes: include_bytes!(concat!("../ui/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file under `ui/` (a test checks that none is missing).
static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("js/account.js", JS),
    asset!("js/api.js", JS),
    asset!("js/board.js", JS),
    asset!("js/chat.js", JS),
    asset!("js/chat-dialog.js", JS),
    asset!("js/composer.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/live.js", JS),
    asset!("js/main.js", JS),
    asset!("js/markdown.js", JS),
    asset!("js/messages.js", JS),
    asset!("js/nodes.js", JS),
    asset!("js/project.js", JS),
    asset!("js/projects.js", JS),
    asset!("js/signin.js", JS),
    asset!("js/state.js", JS),
    asset!("js/task-dialog.js", JS),
    asset!("js/time.js", JS),
];

/// The strong ETag of each asset, in `ASSETS` order.
static ETAGS: LazyLock<Vec<HeaderValue>> =
    LazyLock::new(|| ASSETS.iter().map(|a| etag_of(a.bytes)).collect());

/// What the entry page may load and connect to.
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `KILN_UI_DIR`: serve the UI files from this directory instead of the embedded copies.
static UI_DIR: LazyLock<Option<std::path::PathBuf>> =
    LazyLock::new(|| std::env::var_os("KILN_UI_DIR").map(Into::into));

fn etag_of(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{hex}\"")).expect("hex is a valid header value")
}

fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(index) = ASSETS.iter().position(|a| a.path == path) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file").into_response();
    };
    let asset = &ASSETS[index];
    let from_disk = UI_DIR
        .as_ref()
        .and_then(|dir| std::fs::read(dir.join(asset.path)).ok());
    let etag = match &from_disk {
        Some(bytes) => &etag_of(bytes),
        None => &ETAGS[index],
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = match from_disk {
            Some(bytes) => axum::body::Body::from(bytes),
            None => axum::body::Body::from(asset.bytes),
        };
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            body,
        )
            .into_response()
    };
    let out = response.headers_mut();
    out.insert(header::ETAG, etag.clone());
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    out.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path == "index.html" {
        out.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        );
        out.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    response
}

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|headers: HeaderMap| async move { serve("index.html", &headers) }))
        .route(
            "/assets/{*path}",
            get(|Path(path): Path<String>, headers: HeaderMap| async move {
                serve(&path, &headers)
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files_under(dir: &std::path::Path, prefix: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("ui/ is readable") {
            let entry = entry.expect("a directory entry");
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if entry.file_type().expect("a file type").is_dir() {
                files_under(&entry.path(), &format!("{name}/"), out);
            } else {
                out.push(name);
            }
        }
    }

    #[test]
    fn every_file_under_ui_is_embedded_and_nothing_else() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let mut on_disk = Vec::new();
        files_under(&root, "", &mut on_disk);
        on_disk.sort();
        let mut embedded: Vec<String> = ASSETS.iter().map(|a| a.path.to_owned()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk);
    }

    #[test]
    fn assets_carry_their_type_and_revalidate_by_etag() {
        let response = serve("js/main.js", &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], JS);
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-cache");
        let etag = response.headers()[header::ETAG].clone();

        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, etag.clone());
        let again = serve("js/main.js", &headers);
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], etag);

        let index = serve("index.html", &HeaderMap::new());
        assert!(
            index
                .headers()
                .contains_key(header::CONTENT_SECURITY_POLICY)
        );
        assert_eq!(
            serve("../Cargo.toml", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
