//! The client side of ACP: what the host answers when the agent asks for files or
//! permission.

use agent_client_protocol::v1::schema::{
    PermissionOptionKind, ReadTextFileRequest, RequestPermissionOutcome, RequestPermissionRequest,
    RequestPermissionResponse, SelectedPermissionOutcome, WriteTextFileRequest,
};

use crate::workspace::paths::WorkspaceRoot;

/// The permission policy: agents in Kiln run unattended in a disposable workspace, so
/// every request is approved with the narrowest allowing option (`allow_once` before
/// `allow_always`); when the agent offers no allowing option the request is cancelled.
#[must_use]
pub fn approve(request: &RequestPermissionRequest) -> RequestPermissionResponse {
    let choice = [
        PermissionOptionKind::AllowOnce,
        PermissionOptionKind::AllowAlways,
    ]
    .iter()
    .find_map(|kind| request.options.iter().find(|o| o.kind == *kind));
    match choice {
        Some(option) => {
            tracing::info!(option = %option.option_id.0, tool = ?request.tool_call.fields.title, "permission auto-approved");
            RequestPermissionResponse::new(RequestPermissionOutcome::Selected(
                SelectedPermissionOutcome::new(option.option_id.clone()),
            ))
        }
        None => {
            tracing::warn!(tool = ?request.tool_call.fields.title, "permission request without an allow option; cancelled");
            RequestPermissionResponse::new(RequestPermissionOutcome::Cancelled)
        }
    }
}

pub(crate) fn refusal(message: String) -> agent_client_protocol::Error {
    agent_client_protocol::Error::invalid_params().data(serde_json::Value::String(message))
}

pub(crate) fn read_text(
    root: &WorkspaceRoot,
    request: &ReadTextFileRequest,
) -> std::result::Result<String, String> {
    let path = root
        .resolve_read(&request.path)
        .map_err(|e| e.to_string())?;
    let content =
        std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", request.path.display()))?;
    let start = request.line.map_or(0, |l| l.saturating_sub(1) as usize);
    if start == 0 && request.limit.is_none() {
        return Ok(content);
    }
    let limit = request.limit.map_or(usize::MAX, |l| l as usize);
    let mut out: String = content
        .split_inclusive('\n')
        .skip(start)
        .take(limit)
        .collect();
    if out.is_empty() && content.is_empty() {
        out = content;
    }
    Ok(out)
}

pub(crate) fn write_text(
    root: &WorkspaceRoot,
    request: &WriteTextFileRequest,
) -> std::result::Result<(), String> {
    let path = root
        .resolve_write(&request.path)
        .map_err(|e| e.to_string())?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", request.path.display()))?;
    }
    std::fs::write(&path, &request.content).map_err(|e| format!("{}: {e}", request.path.display()))
}
