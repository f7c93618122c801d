-- Credentials sealed by the server's vault, the node provider of each project, and the
-- progress note of a task within its status.

-- A secret belongs to an owner, for all their projects (project_id NULL) or for one project
-- (deleted with it). The plaintext never reaches the database: `sealed` is the vault's output.
CREATE TABLE secrets (
    owner       BLOB NOT NULL,
    project_id  BLOB REFERENCES projects (id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('hetzner_token', 'git_token')),
    sealed      BLOB NOT NULL,
    hint        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
-- One secret per key: NULLs are distinct in a plain UNIQUE, hence two partial indexes.
CREATE UNIQUE INDEX secrets_of_owner ON secrets (owner, kind) WHERE project_id IS NULL;
CREATE UNIQUE INDEX secrets_of_project ON secrets (owner, project_id, kind)
    WHERE project_id IS NOT NULL;
CREATE INDEX secrets_by_kind ON secrets (kind, owner);

ALTER TABLE projects ADD COLUMN provider TEXT NOT NULL DEFAULT 'local';

ALTER TABLE tasks ADD COLUMN status_detail TEXT;
