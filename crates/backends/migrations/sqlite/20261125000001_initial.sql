-- Kiln's schema for SQLite.
--
-- Times are INTEGER microseconds since the Unix epoch (UTC): they compare and sort as numbers
-- and keep the precision PostgreSQL keeps. Ids are UUIDs stored as 16-byte blobs, so sorting
-- by a UUIDv7 id sorts by creation. Owner columns carry no foreign key: a store may hold rows
-- for owners that authenticate elsewhere; every owner-filtered read has an index.

CREATE TABLE users (
    id          BLOB PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id          BLOB PRIMARY KEY NOT NULL,
    user_id     BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER
);
CREATE INDEX api_tokens_by_user ON api_tokens (user_id);

CREATE TABLE projects (
    id               BLOB PRIMARY KEY NOT NULL,
    owner            BLOB NOT NULL,
    name             TEXT NOT NULL,
    repository_url   TEXT NOT NULL,
    default_vm_size  TEXT NOT NULL CHECK (default_vm_size IN ('small', 'medium', 'large')),
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX projects_by_owner ON projects (owner, created_at, id);

CREATE TABLE tasks (
    id                 BLOB PRIMARY KEY NOT NULL,
    project_id         BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    owner              BLOB NOT NULL,
    title              TEXT NOT NULL,
    description        TEXT NOT NULL,
    priority           INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('draft', 'ready', 'queued', 'delegated',
                           'in_progress', 'completed', 'failed', 'cancelled')),
    status_changed_at  INTEGER NOT NULL,
    output_branch      TEXT,
    pr_url             TEXT,
    summary            TEXT,
    error_message      TEXT,
    session_id         BLOB,
    workspace_id       BLOB,
    node_id            BLOB,
    vm_size_override   TEXT CHECK (vm_size_override IN ('small', 'medium', 'large')),
    agent_hint         TEXT,
    attempt            INTEGER NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX tasks_by_project ON tasks (project_id, priority DESC, created_at, id);
CREATE INDEX tasks_by_owner ON tasks (owner, status);
-- The runner's scan for tasks held too long in a transient state.
CREATE INDEX tasks_by_status ON tasks (status, status_changed_at, id);

CREATE TABLE chat_sessions (
    id             BLOB PRIMARY KEY NOT NULL,
    project_id     BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    owner          BLOB NOT NULL,
    task_id        BLOB,
    workspace_id   BLOB,
    topic          TEXT,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'active', 'completed', 'stopped',
                       'closed')),
    message_count  INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX chat_sessions_by_project ON chat_sessions (project_id, created_at DESC, id DESC);
CREATE INDEX chat_sessions_by_task ON chat_sessions (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX chat_sessions_by_owner ON chat_sessions (owner, created_at DESC);

-- `cursor` is the message's 1-based position in its session, assigned from
-- `chat_sessions.message_count` in the inserting transaction: contiguous, the page key.
CREATE TABLE chat_messages (
    id          BLOB PRIMARY KEY NOT NULL,
    session_id  BLOB NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    cursor      INTEGER NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content     TEXT NOT NULL,
    tool        TEXT,
    seq         INTEGER,
    created_at  INTEGER NOT NULL,
    stored_at   INTEGER NOT NULL,
    UNIQUE (session_id, cursor)
);

CREATE TABLE nodes (
    id                 BLOB PRIMARY KEY NOT NULL,
    owner              BLOB NOT NULL,
    size               TEXT NOT NULL CHECK (size IN ('small', 'medium', 'large')),
    location           TEXT,
    provider           TEXT NOT NULL,
    provider_id        TEXT,
    state              TEXT NOT NULL CHECK (state IN ('provisioning', 'active', 'warm',
                           'destroying', 'destroyed', 'failed')),
    warm_until         INTEGER,
    claimed_by         BLOB,
    auto_provisioned   INTEGER NOT NULL,
    last_heartbeat_at  INTEGER,
    error_message      TEXT,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
-- The claim: warm nodes of one owner and size, oldest deadline first.
CREATE INDEX nodes_warm_by_owner_size ON nodes (owner, size, warm_until, id) WHERE state = 'warm';
CREATE INDEX nodes_by_state ON nodes (state, warm_until);
CREATE INDEX nodes_by_owner ON nodes (owner, created_at, id);
CREATE INDEX nodes_by_created ON nodes (created_at, id);

CREATE TABLE workspaces (
    id          BLOB PRIMARY KEY NOT NULL,
    node_id     BLOB NOT NULL,
    owner       BLOB NOT NULL,
    project_id  BLOB,
    task_id     BLOB,
    session_id  BLOB,
    branch      TEXT,
    status      TEXT NOT NULL CHECK (status IN ('creating', 'running', 'stopped', 'destroying',
                    'destroyed')),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE INDEX workspaces_by_node ON workspaces (node_id);
CREATE INDEX workspaces_by_task ON workspaces (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX workspaces_by_owner ON workspaces (owner, created_at, id);
