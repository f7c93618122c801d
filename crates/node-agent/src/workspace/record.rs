//! The small JSON file that lets a restarted agent host find its workspaces again.

use std::path::{Path, PathBuf};

use kiln_core::{MessageId, ProjectId, SessionId, TaskId, WorkspaceId};
use serde::{Deserialize, Serialize};

use crate::error::{NodeError, Result};

/// Where a workspace is in its life on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordStatus {
    /// Being checked out (a restart finding this starts over).
    Creating,
    /// The agent runs or waits for the next prompt.
    Running,
    /// The task completed; waiting to be destroyed.
    Completed,
    /// The agent failed; kept for inspection.
    Failed,
    /// The turn was cancelled; kept.
    Cancelled,
}

/// What the node keeps about a workspace, in `<data>/workspaces/<id>/workspace.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceRecord {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// Its project (none: nothing is persisted).
    pub project_id: Option<ProjectId>,
    /// Its chat session.
    pub session_id: Option<SessionId>,
    /// Its task.
    pub task_id: Option<TaskId>,
    /// The repository checked out.
    pub repository_url: String,
    /// The branch the control plane asked for.
    pub requested_branch: Option<String>,
    /// The branch actually created (maybe with a `-2` suffix).
    pub branch: Option<String>,
    /// The workspace's callback token (the file is readable by the node's user only).
    pub callback_token: String,
    /// Whether the create command carried a git token. The token itself is never stored: a
    /// restarted node that needs it asks the control plane again
    /// ([`crate::control::ControlPlaneClient::git_token`]). `None` in a record written
    /// before this field existed (the node then asks for an `http(s)` repository, and goes
    /// without when the control plane has none).
    #[serde(default)]
    pub git_token_given: Option<bool>,
    /// The agent hint.
    pub agent_hint: Option<String>,
    /// The first line of the first prompt (for the commit message).
    pub topic: Option<String>,
    /// The ACP session id linked to the chat session.
    pub acp_session_id: Option<String>,
    /// Where it is.
    pub status: RecordStatus,
    /// A prompt turn is under way (a restart finding this starts the agent again to
    /// continue the turn, up to [`crate::config::NodeConfig::resume_interrupted_turns`]
    /// times, then reports the turn failed: the agent process died with the host).
    #[serde(default)]
    pub turn_active: bool,
    /// The prompts taken whose turns have not ended, oldest first: the first is the turn
    /// under way, the others wait in the agent host's queue (not sent to the agent yet).
    /// Kept from the moment a prompt is taken, so a restarted node continues the turn and
    /// then runs the waiting prompts, in order.
    #[serde(default)]
    pub turn_prompts: Vec<TurnPrompt>,
    /// How many times the turn under way was continued after a restart of the node.
    #[serde(default)]
    pub turn_resumes: u32,
    /// A cancel of the turn under way was asked for (a restart finding this reports the
    /// turn cancelled instead of continuing it).
    #[serde(default)]
    pub cancel_requested: bool,
    /// The last terminal event reported, sent again after a restart (events are idempotent
    /// at the control plane; the first copy may have been lost with the process).
    #[serde(default)]
    pub last_event: Option<kiln_core::protocol::WorkspaceEvent>,
    /// The message ids of the last [`TAKEN_PROMPTS_KEPT`] prompts taken, oldest first: a
    /// prompt command repeating one of them (a control plane sending its follow-ups again
    /// after a restart) is dropped rather than run twice.
    #[serde(default)]
    pub taken_prompts: Vec<MessageId>,
    /// The task's last turn ended with no prompt left, so the task is to complete (commit,
    /// push, report `completed`) with this: saved with the turn's end, cleared with the
    /// terminal event. A restart finding it completes the task, since the node stopped
    /// before the completion was reported (commit and push are safe to run again).
    #[serde(default)]
    pub completion_pending: Option<PendingCompletion>,
}

/// What a task's completion reports, kept from the end of its last turn until it is reported
/// ([`WorkspaceRecord::completion_pending`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingCompletion {
    /// The agent's last answer.
    pub summary: Option<String>,
    /// The last pull-request URL the agent mentioned.
    pub pr_url: Option<String>,
}

/// How many taken prompt ids a workspace record keeps ([`WorkspaceRecord::taken_prompts`]).
pub const TAKEN_PROMPTS_KEPT: usize = 256;

/// A prompt whose turn has not ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TurnPrompt {
    /// The id its user message is recorded under.
    pub message_id: MessageId,
    /// Its text, as the control plane sent it.
    pub text: String,
    /// Its user message is in the chat (the agent host records it when it sends the prompt
    /// to the agent; a restarted node records it itself when the agent never got the
    /// prompt). `false` in a record written before this field existed: a restarted node
    /// then records it again under the same id, which the outbox and the control plane
    /// store once.
    #[serde(default)]
    pub recorded: bool,
}

impl WorkspaceRecord {
    /// The record file in a workspace directory.
    #[must_use]
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("workspace.json")
    }

    /// Reads the record of the workspace in `dir`.
    ///
    /// # Errors
    /// The file is missing or malformed.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let bytes =
            std::fs::read(&path).map_err(|e| NodeError::io(path.display().to_string(), e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| NodeError::InvalidConfig(format!("{}: {e}", path.display())))
    }

    /// Notes the prompt `id` as taken; `false` when it was taken already (among the last
    /// [`TAKEN_PROMPTS_KEPT`]), so the prompt is not to run again.
    pub fn take_prompt(&mut self, id: MessageId) -> bool {
        let queued = self.turn_prompts.iter().any(|p| p.message_id == id);
        if queued || self.taken_prompts.contains(&id) {
            return false;
        }
        self.taken_prompts.push(id);
        let excess = self.taken_prompts.len().saturating_sub(TAKEN_PROMPTS_KEPT);
        self.taken_prompts.drain(..excess);
        true
    }

    /// Writes the record atomically (temporary file, then rename), readable by the owner only.
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_private_json(&Self::path(dir), self)
    }
}

/// Writes `value` as JSON to `path` atomically with mode 0600.
pub(crate) fn write_private_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| NodeError::InvalidConfig(format!("encoding {}: {e}", path.display())))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut file = options.open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| NodeError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_says_only_whether_there_was_a_git_token_keeps_the_turn_and_old_records_still_load()
    {
        let dir = tempfile::tempdir().unwrap();
        let record = WorkspaceRecord {
            workspace_id: WorkspaceId::new(),
            project_id: None,
            session_id: None,
            task_id: None,
            repository_url: "https://git.example.com/team/app.git".into(),
            requested_branch: None,
            branch: None,
            callback_token: "ws-token".into(),
            git_token_given: Some(true),
            agent_hint: None,
            topic: None,
            acp_session_id: None,
            status: RecordStatus::Running,
            turn_active: true,
            turn_prompts: vec![TurnPrompt {
                message_id: MessageId::new(),
                text: "Fix the build".into(),
                recorded: true,
            }],
            turn_resumes: 1,
            cancel_requested: false,
            last_event: None,
            taken_prompts: vec![MessageId::new()],
            completion_pending: Some(PendingCompletion {
                summary: Some("Done.".into()),
                pr_url: None,
            }),
        };
        record.save(dir.path()).unwrap();
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(WorkspaceRecord::path(dir.path())).unwrap())
                .unwrap();
        assert_eq!(json["gitTokenGiven"], true);
        assert_eq!(WorkspaceRecord::load(dir.path()).unwrap(), record);

        assert_eq!(json["turnPrompts"][0]["text"], "Fix the build");
        assert_eq!(json["turnPrompts"][0]["recorded"], true);
        assert_eq!(json["turnResumes"], 1);
        assert_eq!(json["completionPending"]["summary"], "Done.");
        let mut older = json.clone();
        older["turnPrompts"][0]
            .as_object_mut()
            .unwrap()
            .remove("recorded");
        let older: WorkspaceRecord = serde_json::from_value(older).unwrap();
        assert!(
            !older.turn_prompts[0].recorded,
            "recorded again: stored once"
        );

        // Written by a kiln-node from before these fields: it loads, and does not say.
        for field in [
            "gitTokenGiven",
            "turnPrompts",
            "turnResumes",
            "cancelRequested",
            "takenPrompts",
            "completionPending",
        ] {
            json.as_object_mut().unwrap().remove(field);
        }
        std::fs::write(WorkspaceRecord::path(dir.path()), json.to_string()).unwrap();
        let old = WorkspaceRecord::load(dir.path()).unwrap();
        assert_eq!(old.git_token_given, None);
        assert!(old.turn_prompts.is_empty());
        assert_eq!((old.turn_resumes, old.cancel_requested), (0, false));
        assert!(old.taken_prompts.is_empty());
        assert_eq!(old.completion_pending, None);
        assert_eq!(old.repository_url, record.repository_url);
    }

    #[test]
    fn a_record_refuses_a_prompt_id_it_took_and_keeps_only_the_last_ids() {
        let mut record: WorkspaceRecord = serde_json::from_value(serde_json::json!({
            "workspaceId": WorkspaceId::new(),
            "projectId": null,
            "sessionId": null,
            "taskId": null,
            "repositoryUrl": "https://git.example.com/team/app.git",
            "requestedBranch": null,
            "branch": null,
            "callbackToken": "ws-token",
            "agentHint": null,
            "topic": null,
            "acpSessionId": null,
            "status": "running",
        }))
        .unwrap();
        let first = MessageId::new();
        assert!(record.take_prompt(first));
        assert!(
            !record.take_prompt(first),
            "the same prompt again is dropped"
        );
        for _ in 0..TAKEN_PROMPTS_KEPT {
            assert!(record.take_prompt(MessageId::new()));
        }
        assert_eq!(record.taken_prompts.len(), TAKEN_PROMPTS_KEPT);
        assert!(
            !record.taken_prompts.contains(&first),
            "the oldest id is forgotten past the bound"
        );
    }
}
