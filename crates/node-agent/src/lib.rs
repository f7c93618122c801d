//! # kiln-node
//!
//! The agent host that runs on every Kiln node. It
//!
//! 1. **registers** with the control plane (`POST /api/nodes/{id}/hello`, listing the
//!    workspaces it still has after a restart), then **heartbeats** with its outbox metrics
//!    and workspaces, and **long-polls** for commands (`GET …/commands?after=&waitMs=`), so a
//!    node needs no inbound port. While the control plane is down it retries with
//!    exponential backoff and says hello again; `410 Gone` on any endpoint stops it
//!    (see [`kiln_core::protocol`] for the messages);
//! 2. **creates workspaces**: a directory per workspace under `KILN_NODE_DATA_DIR`, a `git
//!    clone` of the project's repository (a local path or any URL git accepts) on branch
//!    `task/<id>`, or `task/<id>-2`, `-3`… when that branch exists locally or at the remote
//!    ([`workspace`]); a private repository's token reaches git only through `kiln-node`'s
//!    own credential helper, for the clone and the push ([`credentials`]);
//! 3. **hosts an ACP agent** per workspace ([`acp`]): the configured command runs as a
//!    child process speaking JSON-RPC on stdio (the [`agent_client_protocol`] crate); the
//!    host initializes it, opens a session whose `cwd` is the checkout (its `_meta` carries
//!    the chat session id), sends the first prompt and every follow-up prompt to that
//!    session, and answers the agent's requests: text file reads and writes **inside the
//!    workspace only** ([`workspace::paths`]), terminals (commands run in the workspace, in
//!    their own process group) and permission requests ([`acp::approve`]: always the
//!    narrowest *allow* option, since agents run unattended in a disposable checkout);
//! 4. **captures** every `session/update` as chat messages ([`acp::capture`] has the
//!    table), each with a fresh id (the task prompt keeps
//!    [`MessageId::for_task_prompt`](kiln_core::MessageId::for_task_prompt)), written to the
//!    node's SQLite outbox ([`outbox`]) before the next update is handled; streaming text
//!    also goes out as best-effort deltas (`POST …/deltas`) under the id its message will
//!    have; known secrets the agent echoes are redacted in both ([`redact`]);
//! 5. **finishes**: a task whose turn ends with `end_turn` is committed (`git add -A`,
//!    author *Kiln Agent*, hooks off) and pushed to `origin`, then reported `completed`
//!    with the branch, the last assistant message as summary and any pull-request URL the
//!    agent mentioned; a push the remote refuses for authentication fails the task (`git
//!    push refused: authentication failed for <url>`), any other failed push still
//!    completes, with a warning, and keeps the workspace. An agent error, refusal or crash reports `failed` (whatever it said so far
//!    is delivered); a cancel sends ACP `session/cancel` and reports `cancelled`. A chat
//!    without a task keeps its agent session open between prompts.
//!
//! `kiln-demo-agent` ([`demo`]) is an offline ACP agent for the embedded default and the
//! tests.
//!
//! ## Embedding
//!
//! [`Node`] is the whole host; [`routes::MessageRoutes`] is the seam to the outbox
//! ([`outbox::OutboxRoutes`] in production, [`routes::MemoryRoutes`] in memory). The ACP
//! host works on its own, with any [`recorder::MessageRecorder`]:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use agent_client_protocol::v1::schema::{ContentBlock, ContentChunk, SessionUpdate, TextContent};
//! use kiln_core::{Role, SessionId, SystemClock, WorkspaceId};
//! use kiln_node::acp::SessionCapture;
//! use kiln_node::recorder::MemoryRecorder;
//!
//! let recorder = MemoryRecorder::new();
//! let mut capture = SessionCapture::new(
//!     WorkspaceId::new(), Some(SessionId::new()), Arc::new(recorder.clone()), Arc::new(SystemClock));
//! for piece in ["Hel", "lo"] {
//!     let chunk = ContentChunk::new(ContentBlock::Text(TextContent::new(piece)));
//!     capture.apply(SessionUpdate::AgentMessageChunk(chunk)).await;
//! }
//! // Unknown update kinds are skipped, never an error.
//! capture.apply_raw(&serde_json::json!({
//!     "sessionId": "s", "update": {"sessionUpdate": "from_the_future"}})).await;
//! let summary = capture.finish_turn().await;
//! let messages = recorder.messages();
//! assert_eq!((messages.len(), messages[0].role), (1, Role::Assistant));
//! assert_eq!(summary.summary.as_deref(), Some("Hello"));
//! # });
//! ```
//!
//! ## Running it
//!
//! `kiln-node` is configured by environment ([`NodeConfig`] lists every variable):
//! `NODE_ID`, `CONTROL_PLANE_URL`, `CALLBACK_TOKEN`, `KILN_NODE_DATA_DIR`,
//! `KILN_AGENT_COMMAND`, and the outbox's `MSG_*` settings. The local node provider of
//! `kiln-backends` and the Hetzner cloud-init start it with these.
//!
//! ## Real agents
//!
//! Any agent that speaks ACP on stdio works as `KILN_AGENT_COMMAND` (split like a shell
//! command line, without expansion; `KILN_AGENT_COMMAND_<HINT>` picks one by a task's agent
//! hint, e.g. `KILN_AGENT_COMMAND_CLAUDE` for hint `claude`). The agent inherits the
//! node's environment (minus the node's `CALLBACK_TOKEN`) plus `PROJECT_ID`,
//! `CHAT_SESSION_ID` and `KILN_WORKSPACE_ID`, so give the node the agent's API key:
//!
//! | agent | `KILN_AGENT_COMMAND` | needs |
//! |---|---|---|
//! | Claude Code | `npx -y @zed-industries/claude-code-acp` | Node.js ≥ 18, `ANTHROPIC_API_KEY` |
//! | Codex | `codex-acp` (from `zed-industries/codex-acp` releases) | `OPENAI_API_KEY` (or `CODEX_API_KEY`) |
//! | Gemini CLI | `gemini --experimental-acp` (`npm i -g @google/gemini-cli`) | `GEMINI_API_KEY` |
//! | the demo | `kiln-demo-agent` (the default) | nothing |
//!
//! ```text
//! NODE_ID=… CONTROL_PLANE_URL=http://127.0.0.1:8080 CALLBACK_TOKEN=… \
//! KILN_NODE_DATA_DIR=/var/lib/kiln-node \
//! KILN_AGENT_COMMAND='npx -y @zed-industries/claude-code-acp' ANTHROPIC_API_KEY=… \
//! kiln-node
//! ```
//!
//! Nothing in the host assumes the demo agent: update kinds it does not know (modes,
//! commands, usage, future kinds) are skipped with a debug log, non-text content is
//! skipped, tool calls without locations take their target from the raw input (`command`,
//! `path`, `file_path`, `url`…), and agents that never ask for permission or files are
//! fine. Terminals are advertised and served in the workspace.

pub mod acp;
pub mod config;
pub mod control;
pub mod credentials;
pub mod demo;
pub mod error;
pub mod events;
pub mod node;
pub mod outbox;
pub mod recorder;
pub mod redact;
pub mod routes;
pub mod workspace;

pub use config::NodeConfig;
pub use error::{NodeError, Result};
pub use node::{Node, NodeExit};
