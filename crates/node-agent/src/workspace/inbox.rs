//! The prompts a node has acknowledged to the control plane that their workspace has not
//! taken yet, on disk.
//!
//! The node acknowledges a command with its next poll (`after`), and the control plane then
//! forgets it. A prompt reaches the workspace's record only when the workspace's task takes
//! it, which can be long after (during a checkout, while a turn interrupted by a restart
//! waits for its git token, while the task's work is committed and pushed). So the node
//! writes each prompt here, in `<workspace>/inbox/<message id>.json`, before it
//! acknowledges the command; the workspace removes the file once its record holds the prompt
//! (or it dropped the prompt as a repeat); and a restarted node hands the prompts it finds
//! here to their workspaces, in the order the control plane sent them, before any new
//! command. A prompt found both here and in the record runs once: the record drops a repeat
//! by its id.

use std::path::{Path, PathBuf};

use kiln_core::MessageId;
use kiln_core::protocol::Prompt;
use serde::{Deserialize, Serialize};

use super::record::write_private_json;
use crate::error::Result;

/// A prompt waiting in a workspace's inbox.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    /// The command's number from the control plane (it orders the entries).
    seq: u64,
    prompt: Prompt,
}

fn dir(workspace_dir: &Path) -> PathBuf {
    workspace_dir.join("inbox")
}

fn path(workspace_dir: &Path, id: MessageId) -> PathBuf {
    dir(workspace_dir).join(format!("{id}.json"))
}

/// Keeps `prompt`, the command `seq`, until the workspace takes it (written atomically).
///
/// # Errors
/// The file cannot be written.
pub(crate) fn put(workspace_dir: &Path, seq: u64, prompt: &Prompt) -> Result<()> {
    let inbox = dir(workspace_dir);
    std::fs::create_dir_all(&inbox)
        .map_err(|e| crate::NodeError::io(format!("creating {}", inbox.display()), e))?;
    write_private_json(
        &path(workspace_dir, prompt.message_id),
        &Entry {
            seq,
            prompt: prompt.clone(),
        },
    )
}

/// Forgets the prompt `id`: the workspace's record holds it now (or dropped it).
pub(crate) fn remove(workspace_dir: &Path, id: MessageId) {
    match std::fs::remove_file(path(workspace_dir, id)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(error = %e, message = %id, "inbox entry not removed"),
    }
}

/// The prompts waiting, in the order the control plane sent them.
pub(crate) fn waiting(workspace_dir: &Path) -> Vec<Prompt> {
    let Ok(files) = std::fs::read_dir(dir(workspace_dir)) else {
        return Vec::new();
    };
    let mut entries: Vec<Entry> = files
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .filter_map(|f| {
            let entry = std::fs::read(f.path())
                .ok()
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            if entry.is_none() {
                tracing::warn!(file = %f.path().display(), "unreadable inbox entry skipped");
            }
            entry
        })
        .collect();
    entries.sort_by_key(|e| e.seq);
    entries.into_iter().map(|e| e.prompt).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(text: &str) -> Prompt {
        Prompt {
            message_id: MessageId::new(),
            text: text.into(),
        }
    }

    #[test]
    fn waiting_prompts_come_back_in_the_order_sent_until_removed() {
        let workspace = tempfile::tempdir().unwrap();
        assert!(waiting(workspace.path()).is_empty());
        let (first, second, third) = (prompt("first"), prompt("second"), prompt("third"));
        put(workspace.path(), 12, &second).unwrap();
        put(workspace.path(), 7, &first).unwrap();
        put(workspace.path(), 30, &third).unwrap();
        let texts = |w: &Path| -> Vec<String> { waiting(w).into_iter().map(|p| p.text).collect() };
        assert_eq!(texts(workspace.path()), ["first", "second", "third"]);
        remove(workspace.path(), second.message_id);
        remove(workspace.path(), second.message_id);
        assert_eq!(texts(workspace.path()), ["first", "third"]);
        // A leftover temporary file of an interrupted write is no entry.
        std::fs::write(dir(workspace.path()).join("x.json.tmp"), "{").unwrap();
        assert_eq!(texts(workspace.path()), ["first", "third"]);
    }
}
