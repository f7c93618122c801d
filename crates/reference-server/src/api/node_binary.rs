//! `GET /api/nodes/{nodeId}/binary`: the server's own `kiln-node` build, for a cloud node's
//! first boot (its cloud-init downloads it with the node's callback token). Streamed from
//! disk in chunks, never read whole into memory.

use std::path::PathBuf;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::api::node_protocol::AuthorizedNode;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;

const CHUNK: usize = 64 * 1024;

/// Query of the download: the node's `uname -m`.
#[derive(Debug, Deserialize)]
pub struct BinaryQuery {
    #[serde(default)]
    arch: Option<String>,
}

/// The `kiln-node` this server serves: the configured file, else the one next to the running
/// executable.
pub fn node_binary_path(configured: Option<&PathBuf>) -> Option<PathBuf> {
    if let Some(path) = configured {
        return Some(path.clone());
    }
    let exe = std::env::current_exe().ok()?;
    Some(
        exe.parent()?
            .join(format!("kiln-node{}", std::env::consts::EXE_SUFFIX)),
    )
}

pub(crate) async fn download(
    State(state): State<AppState>,
    AuthorizedNode(node): AuthorizedNode,
    Query(query): Query<BinaryQuery>,
) -> ApiResult<Response> {
    let here = std::env::consts::ARCH;
    if let Some(arch) = query.arch.as_deref()
        && arch != here
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unsupported_arch",
            format!("this server has a kiln-node for {here} only, not {arch}"),
        ));
    }
    let path = node_binary_path(state.settings.node_binary.as_ref())
        .ok_or_else(|| ApiError::internal("cannot locate the running executable"))?;
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::error!(path = %path.display(), error = %e, "kiln-node binary missing");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_binary_missing",
            "this server has no kiln-node binary to serve (see KILN_NODE_BINARY)",
        )
    })?;
    let length = file
        .metadata()
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .len();
    tracing::info!(node = %node.id, bytes = length, "serving the kiln-node binary");
    let stream = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buffer = vec![0u8; CHUNK];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(axum::body::Bytes::from(buffer)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, length.to_string()),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
