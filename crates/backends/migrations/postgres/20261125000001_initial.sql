-- Kiln's schema for PostgreSQL (the same tables as the SQLite schema).
--
-- Times are TIMESTAMPTZ (microseconds), always bound by the caller, never now(). Owner
-- columns carry no foreign key: a store may hold rows for owners that authenticate
-- elsewhere; every owner-filtered read has an index.

CREATE TABLE users (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE TABLE api_tokens (
    id          UUID PRIMARY KEY,
    user_id     UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash  TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    expires_at  TIMESTAMPTZ
);
CREATE INDEX api_tokens_by_user ON api_tokens (user_id);

CREATE TABLE projects (
    id               UUID PRIMARY KEY,
    owner            UUID NOT NULL,
    name             TEXT NOT NULL,
    repository_url   TEXT NOT NULL,
    default_vm_size  TEXT NOT NULL CHECK (default_vm_size IN ('small', 'medium', 'large')),
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL
);
CREATE INDEX projects_by_owner ON projects (owner, created_at, id);

CREATE TABLE tasks (
    id                 UUID PRIMARY KEY,
    project_id         UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    owner              UUID NOT NULL,
    title              TEXT NOT NULL,
    description        TEXT NOT NULL,
    priority           INTEGER NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('draft', 'ready', 'queued', 'delegated',
                           'in_progress', 'completed', 'failed', 'cancelled')),
    status_changed_at  TIMESTAMPTZ NOT NULL,
    output_branch      TEXT,
    pr_url             TEXT,
    summary            TEXT,
    error_message      TEXT,
    session_id         UUID,
    workspace_id       UUID,
    node_id            UUID,
    vm_size_override   TEXT CHECK (vm_size_override IN ('small', 'medium', 'large')),
    agent_hint         TEXT,
    attempt            BIGINT NOT NULL,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
CREATE INDEX tasks_by_project ON tasks (project_id, priority DESC, created_at, id);
CREATE INDEX tasks_by_owner ON tasks (owner, status);
-- The runner's scan for tasks held too long in a transient state.
CREATE INDEX tasks_by_status ON tasks (status, status_changed_at, id);

CREATE TABLE chat_sessions (
    id             UUID PRIMARY KEY,
    project_id     UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    owner          UUID NOT NULL,
    task_id        UUID,
    workspace_id   UUID,
    topic          TEXT,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'active', 'completed', 'stopped',
                       'closed')),
    message_count  BIGINT NOT NULL DEFAULT 0,
    created_at     TIMESTAMPTZ NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL
);
CREATE INDEX chat_sessions_by_project ON chat_sessions (project_id, created_at DESC, id DESC);
CREATE INDEX chat_sessions_by_task ON chat_sessions (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX chat_sessions_by_owner ON chat_sessions (owner, created_at DESC);

-- `cursor` is the message's 1-based position in its session, assigned from
-- `chat_sessions.message_count` in the inserting transaction: contiguous, the page key.
CREATE TABLE chat_messages (
    id          UUID PRIMARY KEY,
    session_id  UUID NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    cursor      BIGINT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system', 'tool')),
    content     TEXT NOT NULL,
    tool        JSONB,
    seq         BIGINT,
    created_at  TIMESTAMPTZ NOT NULL,
    stored_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (session_id, cursor)
);

CREATE TABLE nodes (
    id                 UUID PRIMARY KEY,
    owner              UUID NOT NULL,
    size               TEXT NOT NULL CHECK (size IN ('small', 'medium', 'large')),
    location           TEXT,
    provider           TEXT NOT NULL,
    provider_id        TEXT,
    state              TEXT NOT NULL CHECK (state IN ('provisioning', 'active', 'warm',
                           'destroying', 'destroyed', 'failed')),
    warm_until         TIMESTAMPTZ,
    claimed_by         UUID,
    auto_provisioned   BOOLEAN NOT NULL,
    last_heartbeat_at  TIMESTAMPTZ,
    error_message      TEXT,
    created_at         TIMESTAMPTZ NOT NULL,
    updated_at         TIMESTAMPTZ NOT NULL
);
-- The claim: warm nodes of one owner and size, oldest deadline first.
CREATE INDEX nodes_warm_by_owner_size ON nodes (owner, size, warm_until, id) WHERE state = 'warm';
CREATE INDEX nodes_by_state ON nodes (state, warm_until);
CREATE INDEX nodes_by_owner ON nodes (owner, created_at, id);
CREATE INDEX nodes_by_created ON nodes (created_at, id);

CREATE TABLE workspaces (
    id          UUID PRIMARY KEY,
    node_id     UUID NOT NULL,
    owner       UUID NOT NULL,
    project_id  UUID,
    task_id     UUID,
    session_id  UUID,
    branch      TEXT,
    status      TEXT NOT NULL CHECK (status IN ('creating', 'running', 'stopped', 'destroying',
                    'destroyed')),
    created_at  TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX workspaces_by_node ON workspaces (node_id);
CREATE INDEX workspaces_by_task ON workspaces (task_id) WHERE task_id IS NOT NULL;
CREATE INDEX workspaces_by_owner ON workspaces (owner, created_at, id);
