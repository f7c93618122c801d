//! Continuing a turn the node's restart interrupted: what the chat is told, what the agent
//! is asked, and the recorder that keeps the node's request to the agent out of the chat
//! and tells the workspace which prompts' user messages are in it.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_core::{ChatMessage, MessageId, Role};
use tokio::sync::mpsc;

use crate::error::Result;
use crate::recorder::MessageRecorder;

/// The system message the chat shows before the agent is started again.
pub(super) fn restart_notice(attempt: u32, limit: u32) -> String {
    format!(
        "kiln-node restarted during the agent's turn; the agent was started again to continue \
         (attempt {attempt} of {limit})"
    )
}

/// Why a turn the node's restarts keep interrupting is given up (`restarts` counts this one).
pub(super) fn restart_failure(restarts: u32) -> String {
    let mut error =
        String::from("the agent host restarted during the agent's turn; the agent process is gone");
    if restarts > 1 {
        error.push_str(&format!(
            " (kiln-node restarted {restarts} times during this turn)"
        ));
    }
    error
}

/// The system message for a follow-up that reached the workspace after its task completed
/// (the control plane sent it as the task ended): it was not run.
pub(super) const LATE_PROMPT_NOTICE: &str = "This message arrived after the task had \
    completed; it was not run. Send it again as a new task or in a chat.";

/// What the agent, started again without its memory of the turn, is asked: to go on from
/// the files as they are, with the user's request.
pub(super) fn continuation_prompt(request: &str) -> String {
    format!(
        "The agent host (kiln-node) restarted while you were working on the request below, \
         and you are in a new session: you do not remember that work, but the workspace \
         keeps every change you made so far (look at `git status` and `git diff`). Continue \
         from where the work stands rather than starting over, and finish the request.\n\n\
         The request:\n\n{request}"
    )
}

/// The recorder of an agent's session: it keeps the continuation prompt out of the chat (the
/// node's word to the agent, not the user's: the chat has the user's prompt and the restart
/// notice) and says which user messages it recorded, so the workspace record knows which
/// prompts a restarted node still has to show.
#[derive(Debug)]
pub(super) struct TurnRecorder {
    pub inner: Arc<dyn MessageRecorder>,
    pub skipped: Option<MessageId>,
    pub recorded: mpsc::UnboundedSender<MessageId>,
}

#[async_trait]
impl MessageRecorder for TurnRecorder {
    async fn record(&self, message: ChatMessage) -> Result<()> {
        if Some(message.id) == self.skipped {
            return Ok(());
        }
        let user_message = (message.role == Role::User).then_some(message.id);
        self.inner.record(message).await?;
        if let Some(id) = user_message {
            let _ = self.recorded.send(id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::MemoryRecorder;
    use kiln_core::{SessionId, Timestamp};

    #[test]
    fn the_agent_is_told_about_the_restart_and_given_the_request() {
        let prompt = continuation_prompt("Fix the build\nkiln-demo: hang");
        assert!(prompt.contains("restarted"), "{prompt}");
        assert!(prompt.contains("keeps every change"), "{prompt}");
        assert!(
            prompt.ends_with("Fix the build\nkiln-demo: hang"),
            "{prompt}"
        );
        assert_eq!(
            restart_notice(1, 2),
            "kiln-node restarted during the agent's turn; the agent was started again to continue (attempt 1 of 2)"
        );
        assert!(restart_failure(3).contains("restarted 3 times during this turn"));
        assert!(!restart_failure(1).contains("times"));
    }

    #[tokio::test]
    async fn only_the_continuation_prompt_is_kept_out_of_the_chat_and_user_messages_are_told() {
        let memory = Arc::new(MemoryRecorder::new());
        let skipped = MessageId::new();
        let (recorded, mut told) = mpsc::unbounded_channel();
        let recorder = TurnRecorder {
            inner: memory.clone(),
            skipped: Some(skipped),
            recorded,
        };
        let session_id = SessionId::new();
        let message = |id, role| ChatMessage {
            id,
            session_id,
            role,
            content: "x".into(),
            tool: None,
            seq: None,
            created_at: Timestamp::UNIX_EPOCH,
        };
        let kept = MessageId::new();
        let answer = MessageId::new();
        recorder.record(message(skipped, Role::User)).await.unwrap();
        recorder.record(message(kept, Role::User)).await.unwrap();
        recorder
            .record(message(answer, Role::Assistant))
            .await
            .unwrap();
        let ids: Vec<MessageId> = memory.messages().iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![kept, answer]);
        assert_eq!(told.try_recv().ok(), Some(kept));
        assert!(
            told.try_recv().is_err(),
            "only recorded user messages are told"
        );
    }
}
