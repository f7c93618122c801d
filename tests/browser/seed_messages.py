"""Adds chat messages to existing sessions of a Kiln SQLite database, for the UI's
performance check: `python3 seed_messages.py <kiln.db> <per-session> <session-id>...`.

The sessions (and each one's first message, the task prompt) are made through the API;
only the bulk of messages is written here, in the store's own row format (UUID blobs,
contiguous per-session cursors, microsecond timestamps), in one transaction.
"""

import json
import sqlite3
import sys
import time
import uuid

ANSWER = """Done. I changed `src/handler.rs` so the request is validated first:

```rust
fn validate(input: &str) -> Result<(), Error> {
    if input.trim().is_empty() { return Err(Error::Empty); }
    Ok(())
}
```

- the tests in **`tests/api.rs`** pass
- see https://example.com/docs for the format"""


def message(cursor):
    kind = cursor % 5
    if kind == 0:
        return "user", "Please also handle the empty input case and add a test.", None
    if kind == 1:
        return "tool", f"+ line {cursor}\n+ another line", json.dumps(
            {"tool": "edit", "target": f"src/module_{cursor % 17}.rs", "status": "completed"})
    if kind == 2:
        return "system", "Plan:\n[x] Read the code\n[~] Change the handler\n[ ] Run the tests", json.dumps(
            {"tool": "plan", "target": None, "status": None})
    return "assistant", ANSWER, None


def main():
    db_path, per_session, sessions = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    db = sqlite3.connect(db_path, timeout=30)
    now = int(time.time() * 1_000_000)
    total = 0
    with db:
        for n, session in enumerate(sessions):
            sid = uuid.UUID(session).bytes
            (start,) = db.execute("SELECT COALESCE(MAX(cursor), 0) FROM chat_messages WHERE session_id = ?", (sid,)).fetchone()
            rows = []
            for cursor in range(start + 1, per_session + 1):
                role, content, tool = message(cursor)
                at = now - (len(sessions) - n) * 60_000_000 + cursor * 1000
                rows.append((uuid.uuid4().bytes, sid, cursor, role, content, tool, None, at, now))
            db.executemany(
                "INSERT INTO chat_messages (id, session_id, cursor, role, content, tool, seq, created_at, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("UPDATE chat_sessions SET message_count = ? WHERE id = ?", (per_session, sid))
            total += len(rows)
    print(total)


if __name__ == "__main__":
    main()
