//! Turns ACP `session/update` notifications into Kiln chat messages, one notification at a
//! time and in arrival order:
//!
//! | ACP update | chat message |
//! |---|---|
//! | the prompt Kiln sends | `user`, under the id the control plane gave it |
//! | `user_message_chunk` | `user`, chunks aggregated |
//! | `agent_message_chunk` | `assistant`, chunks aggregated into one message per turn segment |
//! | `agent_thought_chunk` | `system` with tool metadata `{tool: "thought"}`, aggregated |
//! | `tool_call` | `tool` with `{tool, target, status}` (tool = the tool's name or kind; target = first location or the command/path in its input) |
//! | `tool_call_update` | another `tool` message when the status, title or content changed |
//! | `plan` | `system` with `{tool: "plan"}`, one line per entry (`[x]` done, `[~]` in progress) |
//! | `notice` | `system` |
//! | anything else (modes, commands, usage, unknown kinds) | skipped with a debug log |
//!
//! A segment of aggregated text ends when a different kind of update arrives, when the
//! agent starts a new message id, or when the turn ends. While it streams, its text is also
//! offered as [`MessageDelta`]s whose `segment_id` is the id the message will be stored under.
//!
//! Known secret values ([`with_redactor`](SessionCapture::with_redactor)) are replaced by
//! `[redacted]` in everything recorded (content, tool targets, the turn's summary and pull
//! request) and in deltas, which hold back text that could be the start of a secret.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use agent_client_protocol::v1::schema::{
    ContentBlock, ContentChunk, Plan, PlanEntryStatus, SessionNotification, SessionUpdate,
    ToolCall, ToolCallContent, ToolCallLocation, ToolCallUpdate,
};
use kiln_core::protocol::MessageDelta;
use kiln_core::{ChatMessage, LifecycleClock, MessageId, Role, SessionId, ToolMeta, WorkspaceId};
use serde_json::Value;

use crate::recorder::{DeltaSender, MessageRecorder};
use crate::redact::{Redactor, StreamRedactor};

/// The longest tool output kept in a tool message, in bytes.
const TOOL_OUTPUT_MAX_BYTES: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SegmentKind {
    User,
    Assistant,
    Thought,
}

#[derive(Debug)]
struct Segment {
    kind: SegmentKind,
    id: MessageId,
    text: String,
    acp_message_id: Option<String>,
    /// The redaction of the streamed deltas.
    stream: StreamRedactor,
}

#[derive(Debug, Clone)]
struct ToolState {
    title: String,
    tool: String,
    target: Option<String>,
    status: String,
}

/// What a finished turn produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnSummary {
    /// The last assistant message of the session so far.
    pub summary: Option<String>,
    /// The last pull-request URL an assistant message mentioned.
    pub pr_url: Option<String>,
}

/// The per-session converter from ACP updates to chat messages.
#[derive(Debug)]
pub struct SessionCapture {
    workspace_id: WorkspaceId,
    session_id: Option<SessionId>,
    recorder: Arc<dyn MessageRecorder>,
    deltas: Option<DeltaSender>,
    clock: Arc<dyn LifecycleClock>,
    root: Option<PathBuf>,
    redactor: Redactor,
    open: Option<Segment>,
    tools: HashMap<String, ToolState>,
    last_assistant: Option<String>,
    pr_url: Option<String>,
    recorded: u64,
}

impl SessionCapture {
    /// A capture for the workspace's chat session. Without a session nothing is recorded
    /// (a workspace without a project persists nothing).
    #[must_use]
    pub fn new(
        workspace_id: WorkspaceId,
        session_id: Option<SessionId>,
        recorder: Arc<dyn MessageRecorder>,
        clock: Arc<dyn LifecycleClock>,
    ) -> Self {
        Self {
            workspace_id,
            session_id,
            recorder,
            deltas: None,
            clock,
            root: None,
            redactor: Redactor::default(),
            open: None,
            tools: HashMap::new(),
            last_assistant: None,
            pr_url: None,
            recorded: 0,
        }
    }

    /// Also offer streaming text as deltas.
    #[must_use]
    pub fn with_deltas(mut self, deltas: DeltaSender) -> Self {
        self.deltas = Some(deltas);
        self
    }

    /// Replace these secret values by `[redacted]` in everything recorded and streamed.
    #[must_use]
    pub fn with_redactor(mut self, redactor: Redactor) -> Self {
        self.redactor = redactor;
        self
    }

    /// Show tool targets inside `root` relative to it.
    #[must_use]
    pub fn with_root(mut self, root: PathBuf) -> Self {
        self.root = Some(root);
        self
    }

    /// The secret values it redacts.
    #[must_use]
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// How many messages were recorded.
    #[must_use]
    pub fn recorded(&self) -> u64 {
        self.recorded
    }

    /// Records the prompt Kiln sends to the agent, under the id it was given.
    pub async fn user_prompt(&mut self, id: MessageId, text: &str) {
        self.close_segment().await;
        self.record(id, Role::User, text.to_owned(), None).await;
    }

    /// Applies one raw `session/update` notification. Unknown update kinds are skipped.
    pub async fn apply_raw(&mut self, params: &Value) {
        match serde_json::from_value::<SessionNotification>(params.clone()) {
            Ok(notification) => self.apply(notification.update).await,
            Err(e) => tracing::debug!(
                kind = %params
                    .pointer("/update/sessionUpdate")
                    .cloned()
                    .unwrap_or_default(),
                error = %e,
                "skipping a session update this host does not understand"
            ),
        }
    }

    /// Applies one session update.
    pub async fn apply(&mut self, update: SessionUpdate) {
        match update {
            SessionUpdate::UserMessageChunk(c) => self.chunk(SegmentKind::User, c).await,
            SessionUpdate::AgentMessageChunk(c) => self.chunk(SegmentKind::Assistant, c).await,
            SessionUpdate::AgentThoughtChunk(c) => self.chunk(SegmentKind::Thought, c).await,
            SessionUpdate::ToolCall(call) => {
                self.close_segment().await;
                self.tool_call(call).await;
            }
            SessionUpdate::ToolCallUpdate(update) => {
                self.close_segment().await;
                self.tool_update(update).await;
            }
            SessionUpdate::Plan(plan) => {
                self.close_segment().await;
                self.plan(&plan).await;
            }
            SessionUpdate::Notice(notice) => {
                self.close_segment().await;
                let text = match notice.description {
                    Some(d) if !d.is_empty() => format!("{}\n\n{d}", notice.title),
                    _ => notice.title,
                };
                self.record(MessageId::new(), Role::System, text, None)
                    .await;
            }
            other => tracing::debug!(update = ?other, "session update not kept as a message"),
        }
    }

    /// Ends the turn: closes the open segment and returns the summary.
    pub async fn finish_turn(&mut self) -> TurnSummary {
        self.close_segment().await;
        TurnSummary {
            summary: self.last_assistant.clone(),
            pr_url: self.pr_url.clone(),
        }
    }

    async fn chunk(&mut self, kind: SegmentKind, chunk: ContentChunk) {
        let text = match chunk.content {
            ContentBlock::Text(t) => t.text,
            ContentBlock::ResourceLink(link) => format!("[{}]({})", link.name, link.uri),
            other => {
                tracing::debug!(content = ?other, "non-text chunk skipped");
                return;
            }
        };
        let acp_id = chunk.message_id.map(|m| m.0.to_string());
        let continues = self
            .open
            .as_ref()
            .is_some_and(|s| s.kind == kind && (acp_id.is_none() || s.acp_message_id == acp_id));
        if !continues {
            self.close_segment().await;
            self.open = Some(Segment {
                kind,
                id: MessageId::new(),
                text: String::new(),
                acp_message_id: acp_id,
                stream: self.redactor.stream(),
            });
        }
        let Some(segment) = self.open.as_mut() else {
            return;
        };
        segment.text.push_str(&text);
        if kind != SegmentKind::User
            && let (Some(deltas), Some(session_id)) = (&self.deltas, self.session_id)
        {
            let text = segment.stream.push(&text);
            if text.is_empty() {
                return;
            }
            deltas.offer(MessageDelta {
                workspace_id: self.workspace_id,
                session_id,
                segment_id: segment.id,
                text,
            });
        }
    }

    async fn close_segment(&mut self) {
        let Some(segment) = self.open.take() else {
            return;
        };
        if segment.text.trim().is_empty() {
            return;
        }
        let text = self.redactor.redact(&segment.text);
        let (role, tool) = match segment.kind {
            SegmentKind::User => (Role::User, None),
            SegmentKind::Assistant => {
                if let Some(url) = find_pr_url(&text) {
                    self.pr_url = Some(url);
                }
                self.last_assistant = Some(text.clone());
                (Role::Assistant, None)
            }
            SegmentKind::Thought => (Role::System, Some(marker("thought"))),
        };
        self.record(segment.id, role, text, tool).await;
    }

    async fn tool_call(&mut self, call: ToolCall) {
        let tool = call
            .name
            .clone()
            .unwrap_or_else(|| enum_name(&call.kind, "other"));
        let state = ToolState {
            title: call.title.clone(),
            tool,
            target: self.target(&call.locations, call.raw_input.as_ref()),
            status: enum_name(&call.status, "pending"),
        };
        let content = with_output(&state.title, &call.content);
        self.tools
            .insert(call.tool_call_id.0.to_string(), state.clone());
        self.record_tool(content, &state).await;
    }

    async fn tool_update(&mut self, update: ToolCallUpdate) {
        let key = update.tool_call_id.0.to_string();
        let fields = update.fields;
        let target = fields
            .locations
            .as_ref()
            .and_then(|l| self.target(l, fields.raw_input.as_ref()))
            .or_else(|| {
                fields
                    .raw_input
                    .as_ref()
                    .and_then(|input| self.target(&[], Some(input)))
            });
        let mut state = self.tools.get(&key).cloned().unwrap_or_else(|| ToolState {
            title: "tool call".into(),
            tool: "other".into(),
            target: None,
            status: "pending".into(),
        });
        let before = state.clone();
        if let Some(title) = fields.title {
            state.title = title;
        }
        if let Some(name) = fields.name {
            state.tool = name;
        } else if let Some(kind) = fields.kind
            && before.tool == "other"
        {
            state.tool = enum_name(&kind, "other");
        }
        if target.is_some() {
            state.target = target;
        }
        if let Some(status) = fields.status {
            state.status = enum_name(&status, "pending");
        }
        let has_output = fields.content.as_ref().is_some_and(|c| !c.is_empty());
        self.tools.insert(key, state.clone());
        if state.status == before.status && state.title == before.title && !has_output {
            tracing::debug!(tool = %state.tool, "tool update without news skipped");
            return;
        }
        let content = with_output(&state.title, fields.content.as_deref().unwrap_or(&[]));
        self.record_tool(content, &state).await;
    }

    async fn record_tool(&mut self, content: String, state: &ToolState) {
        let meta = ToolMeta {
            tool: state.tool.clone(),
            target: state.target.clone(),
            status: Some(state.status.clone()),
        };
        self.record(MessageId::new(), Role::Tool, content, Some(meta))
            .await;
    }

    async fn plan(&mut self, plan: &Plan) {
        let mut text = String::from("Plan:");
        for entry in &plan.entries {
            let mark = match entry.status {
                PlanEntryStatus::Completed => "[x]",
                PlanEntryStatus::InProgress => "[~]",
                _ => "[ ]",
            };
            text.push_str(&format!("\n- {mark} {}", entry.content));
        }
        self.record(MessageId::new(), Role::System, text, Some(marker("plan")))
            .await;
    }

    async fn record(
        &mut self,
        id: MessageId,
        role: Role,
        content: String,
        mut tool: Option<ToolMeta>,
    ) {
        let Some(session_id) = self.session_id else {
            return;
        };
        let content = self.redactor.redact(&content);
        if let Some(target) = tool.as_mut().and_then(|t| t.target.as_mut()) {
            *target = self.redactor.redact(target);
        }
        let message = ChatMessage {
            id,
            session_id,
            role,
            content,
            tool,
            seq: None,
            created_at: self.clock.now(),
        };
        match self.recorder.record(message).await {
            Ok(()) => self.recorded += 1,
            Err(e) => {
                tracing::error!(error = %e, %session_id, "a chat message could not be recorded")
            }
        }
    }

    /// The target of a tool call: its first location (relative to the workspace when
    /// inside), else a command or path from its raw input.
    fn target(&self, locations: &[ToolCallLocation], raw_input: Option<&Value>) -> Option<String> {
        if let Some(location) = locations.first() {
            let path = match &self.root {
                Some(root) => location
                    .path
                    .strip_prefix(root)
                    .unwrap_or(&location.path)
                    .to_path_buf(),
                None => location.path.clone(),
            };
            return Some(path.display().to_string());
        }
        let input = raw_input?.as_object()?;
        for key in [
            "command",
            "cmd",
            "path",
            "file_path",
            "filePath",
            "abs_path",
            "url",
            "pattern",
            "query",
        ] {
            match input.get(key) {
                Some(Value::String(s)) if !s.is_empty() => return Some(s.clone()),
                Some(Value::Array(parts)) if !parts.is_empty() => {
                    let words: Vec<&str> = parts.iter().filter_map(Value::as_str).collect();
                    return Some(words.join(" "));
                }
                _ => {}
            }
        }
        None
    }
}

fn marker(tool: &str) -> ToolMeta {
    ToolMeta {
        tool: tool.to_owned(),
        target: None,
        status: None,
    }
}

/// The serde (snake_case) name of a unit enum value.
fn enum_name<T: serde::Serialize>(value: &T, fallback: &str) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => fallback.to_owned(),
    }
}

/// The tool's title followed by its textual output, cut to [`TOOL_OUTPUT_MAX_BYTES`].
fn with_output(title: &str, content: &[ToolCallContent]) -> String {
    let mut text = title.to_owned();
    for item in content {
        let piece = match item {
            ToolCallContent::Content(c) => match &c.content {
                ContentBlock::Text(t) => t.text.clone(),
                _ => continue,
            },
            ToolCallContent::Diff(d) => format!("(diff of {})", d.path.display()),
            ToolCallContent::Terminal(t) => format!("(terminal {})", t.terminal_id.0),
            _ => continue,
        };
        text.push_str("\n\n");
        text.push_str(&piece);
    }
    if text.len() > TOOL_OUTPUT_MAX_BYTES {
        text = crate::error::shorten(&text, TOOL_OUTPUT_MAX_BYTES);
    }
    text
}

/// The last pull/merge-request URL in `text`, if any.
///
/// ```
/// # use kiln_node::acp::capture::find_pr_url;
/// assert_eq!(
///     find_pr_url("Opened (https://github.com/acme/app/pull/42).").as_deref(),
///     Some("https://github.com/acme/app/pull/42")
/// );
/// assert_eq!(find_pr_url("see https://example.com/docs"), None);
/// ```
#[must_use]
pub fn find_pr_url(text: &str) -> Option<String> {
    let is_pr = |t: &&str| {
        (t.starts_with("https://") || t.starts_with("http://"))
            && ["/pull/", "/pulls/", "/merge_requests/"]
                .iter()
                .any(|marker| {
                    t.split_once(marker).is_some_and(|(_, rest)| {
                        let number = rest.split('/').next().unwrap_or("");
                        !number.is_empty() && number.chars().all(|c| c.is_ascii_digit())
                    })
                })
    };
    text.split(|c: char| {
        c.is_whitespace() || matches!(c, '(' | ')' | '<' | '>' | '[' | ']' | '"' | '\'' | '`')
    })
    .map(|t| t.trim_end_matches(['.', ',', ';', ':', '!', '?']))
    .rfind(is_pr)
    .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use kiln_core::SystemClock;
    use serde_json::json;

    use super::*;
    use crate::recorder::{DeltaSender, MemoryRecorder};

    fn capture(session: Option<SessionId>) -> (SessionCapture, MemoryRecorder) {
        let recorder = MemoryRecorder::new();
        let capture = SessionCapture::new(
            WorkspaceId::new(),
            session,
            Arc::new(recorder.clone()),
            Arc::new(SystemClock),
        )
        .with_root(PathBuf::from("/ws"));
        (capture, recorder)
    }

    /// Role, content and tool metadata (tool, target, status) of a recorded message.
    type Seen = (
        Role,
        String,
        Option<(String, Option<String>, Option<String>)>,
    );

    fn update(update: Value) -> Value {
        json!({ "sessionId": "acp-1", "update": update })
    }

    /// Updates shaped like those of real agents (Claude Code, Gemini, Codex): tool calls
    /// with raw input and no locations, updates without news, message ids, unknown kinds.
    #[tokio::test]
    async fn real_agent_updates_become_messages_and_the_rest_is_skipped() {
        let (mut capture, recorder) = capture(Some(SessionId::new()));
        let raw = [
            json!({"sessionUpdate": "available_commands_update", "availableCommands": []}),
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Let me "}, "messageId": "m1"}),
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "look."}, "messageId": "m1"}),
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "Second."}, "messageId": "m2"}),
            json!({"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "`cargo test`", "kind": "execute", "status": "pending", "rawInput": {"command": "cargo test", "description": "run"}}),
            json!({"sessionUpdate": "tool_call_update", "toolCallId": "t1", "fields": {}}),
            json!({"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "in_progress"}),
            json!({"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed", "content": [{"type": "content", "content": {"type": "text", "text": "test result: ok"}}]}),
            json!({"sessionUpdate": "tool_call", "toolCallId": "t2", "title": "Read lib.rs", "kind": "read", "locations": [{"path": "/ws/src/lib.rs", "line": 3}]}),
            json!({"sessionUpdate": "usage_update", "used": 10, "size": 100}),
            json!({"sessionUpdate": "some_kind_from_the_future", "payload": 1}),
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "image", "data": "AA==", "mimeType": "image/png"}}),
            json!({"sessionUpdate": "plan", "entries": [{"content": "a", "priority": "high", "status": "completed"}, {"content": "b", "priority": "low", "status": "in_progress"}]}),
        ];
        for u in raw {
            capture.apply_raw(&update(u)).await;
        }
        capture.finish_turn().await;
        let messages = recorder.messages();
        let summary: Vec<Seen> = messages
            .iter()
            .map(|m| {
                (
                    m.role,
                    m.content.clone(),
                    m.tool.clone().map(|t| (t.tool, t.target, t.status)),
                )
            })
            .collect();
        let tool = |t: &str, target: Option<&str>, status: Option<&str>| {
            Some((
                t.to_owned(),
                target.map(str::to_owned),
                status.map(str::to_owned),
            ))
        };
        assert_eq!(
            summary,
            vec![
                (Role::Assistant, "Let me look.".into(), None),
                (Role::Assistant, "Second.".into(), None),
                (
                    Role::Tool,
                    "`cargo test`".into(),
                    tool("execute", Some("cargo test"), Some("pending"))
                ),
                (
                    Role::Tool,
                    "`cargo test`".into(),
                    tool("execute", Some("cargo test"), Some("in_progress"))
                ),
                (
                    Role::Tool,
                    "`cargo test`\n\ntest result: ok".into(),
                    tool("execute", Some("cargo test"), Some("completed"))
                ),
                (
                    Role::Tool,
                    "Read lib.rs".into(),
                    tool("read", Some("src/lib.rs"), Some("pending"))
                ),
                (
                    Role::System,
                    "Plan:\n- [x] a\n- [~] b".into(),
                    tool("plan", None, None)
                ),
            ]
        );
    }

    /// A secret the agent echoes (split across chunks, in a thought, a tool's target and
    /// output, a plan) is redacted in every recorded message, in the summary and in the
    /// deltas.
    #[tokio::test]
    async fn echoed_secrets_are_redacted_in_messages_summary_and_deltas() {
        let secret = "ghp_SuperSecretToken42";
        let (tx, mut rx) = tokio::sync::mpsc::channel(100);
        let (capture, recorder) = capture(Some(SessionId::new()));
        let mut capture = capture
            .with_redactor(Redactor::new([secret]))
            .with_deltas(DeltaSender::new(tx));
        capture
            .user_prompt(MessageId::new(), &format!("use {secret}"))
            .await;
        for piece in [
            "The token is ghp_Sup",
            "erSecret",
            "Token42, see ",
            "https://x/pull/1",
        ] {
            capture
                .apply_raw(&update(json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": piece}})))
                .await;
        }
        let raw = [
            json!({"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": secret}}),
            json!({"sessionUpdate": "tool_call", "toolCallId": "t1", "title": format!("echo {secret}"), "kind": "execute", "rawInput": {"command": format!("echo {secret}")}}),
            json!({"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed", "content": [{"type": "content", "content": {"type": "text", "text": secret}}]}),
            json!({"sessionUpdate": "plan", "entries": [{"content": secret, "priority": "high", "status": "pending"}]}),
            json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": format!("Done: {secret}")}}),
        ];
        for u in raw {
            capture.apply_raw(&update(u)).await;
        }
        let summary = capture.finish_turn().await;
        let messages = recorder.messages();
        assert_eq!(messages.len(), 7, "{messages:#?}");
        for m in &messages {
            let seen = format!("{} {:?}", m.content, m.tool);
            assert!(!seen.contains("Secret"), "{seen}");
        }
        assert_eq!(
            messages[1].content,
            "The token is [redacted], see https://x/pull/1"
        );
        assert_eq!(summary.summary.as_deref(), Some("Done: [redacted]"));
        let mut streamed = String::new();
        while let Ok(delta) = rx.try_recv() {
            assert!(!delta.text.contains("Secret"), "{delta:?}");
            streamed.push_str(&delta.text);
        }
        assert!(
            streamed.starts_with("The token is [redacted], see "),
            "{streamed}"
        );
    }

    #[tokio::test]
    async fn without_a_session_nothing_is_recorded() {
        let (mut capture, recorder) = capture(None);
        capture.user_prompt(MessageId::new(), "hi").await;
        capture
            .apply_raw(&update(json!({"sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": "x"}})))
            .await;
        let summary = capture.finish_turn().await;
        assert!(recorder.messages().is_empty());
        // The completion still carries the summary.
        assert_eq!(summary.summary.as_deref(), Some("x"));
    }
}
