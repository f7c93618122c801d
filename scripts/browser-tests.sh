#!/usr/bin/env bash
# Runs the web UI's browser tests (tests/browser/, node's built-in test runner with
# playwright-core driving Debian's headless Chromium) against a real `kiln serve`: the
# `kiln` binary from cargo, the local provider starting real `kiln-node` processes with the
# demo agent, a temporary data directory and a free port. Stops the server at the end.
#
# Settings (environment):
#   KILN_BIN_DIR          use the binaries in this directory instead of building them
#   KILN_BROWSER_ARGS     extra arguments for `node --test` (e.g. a single test file)
#   KILN_DEMO_PACE_MS     the demo agent's pause between streamed updates (default 60)
#   KILN_KEEP_DATA=1      keep the temporary data directory (its path is printed)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

bash scripts/browser-deps.sh

if [ -z "${KILN_BIN_DIR:-}" ]; then
  echo "==> building kiln, kiln-node and kiln-demo-agent"
  # The same profile and features as scripts/test.sh's build, so nothing is rebuilt there.
  cargo build --workspace --all-features --bins
  KILN_BIN_DIR="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug"
fi
for bin in kiln kiln-node kiln-demo-agent; do
  [ -x "$KILN_BIN_DIR/$bin" ] || { echo "missing $KILN_BIN_DIR/$bin" >&2; exit 1; }
done

DATA_DIR="$(mktemp -d -t kiln-browser-XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
LOG="$DATA_DIR/server.log"
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  # Local nodes outlive their server by design (they reconnect after a restart); these
  # belong to this run only, so stop each one's process group (its pid from node.json).
  for file in "$DATA_DIR"/nodes/*/node.json; do
    [ -f "$file" ] || continue
    pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$file" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ "$pid" -gt 1 ] && [ "$(ps -o args= -p "$pid" 2>/dev/null | awk '{print $1}')" = "$KILN_BIN_DIR/kiln-node" ]; then
      kill -TERM -- "-$pid" 2>/dev/null || true
    fi
  done
  if [ "${KILN_KEEP_DATA:-}" = 1 ]; then echo "data kept in $DATA_DIR"; else rm -rf "$DATA_DIR"; fi
}
trap cleanup EXIT

echo "==> kiln serve on 127.0.0.1:$PORT (data in $DATA_DIR)"
KILN_DEMO_PACE_MS="${KILN_DEMO_PACE_MS:-60}" \
KILN_LOG="${KILN_LOG:-info}" \
KILN_NODE_BIN="$KILN_BIN_DIR/kiln-node" \
  "$KILN_BIN_DIR/kiln" serve \
    --data-dir "$DATA_DIR" \
    --listen "127.0.0.1:$PORT" \
    --agent-command "$KILN_BIN_DIR/kiln-demo-agent" \
    >"$LOG" 2>&1 &
SERVER_PID=$!

for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$PORT/api/health" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then echo "kiln serve exited:" >&2; cat "$LOG" >&2; exit 1; fi
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$PORT/api/health" >/dev/null || { echo "kiln serve did not answer" >&2; cat "$LOG" >&2; exit 1; }

export KILN_URL="http://127.0.0.1:$PORT"
export KILN_BIN="$KILN_BIN_DIR/kiln"
export KILN_DATA_DIR="$DATA_DIR"
export KILN_SERVER_LOG="$LOG"
mkdir -p artifacts/screenshots

echo "==> node --test tests/browser/"
status=0
# One file at a time: they share one server and one machine's two cores.
node --test --test-concurrency=1 ${KILN_BROWSER_ARGS:-tests/browser/} || status=$?
if [ "$status" != 0 ]; then
  echo "==> last lines of the server log ($LOG)"
  tail -n 80 "$LOG" || true
fi
exit "$status"
