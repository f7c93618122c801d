-- What a chat without a task was asked to run with: the agent hint and the VM size, so a
-- chat resumed after a restart (or given a new workspace) keeps them. NULL for chats opened
-- before this migration and for chats that asked for the defaults.
ALTER TABLE chat_sessions ADD COLUMN agent_hint TEXT;
ALTER TABLE chat_sessions ADD COLUMN vm_size TEXT CHECK (vm_size IN ('small', 'medium', 'large'));
