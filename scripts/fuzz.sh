#!/usr/bin/env bash
# API fuzzing with schemathesis against a real `kiln serve` (SQLite, 127.0.0.1 only).
#
# Installs schemathesis (pinned) from PyPI into a venv under target/ when missing, starts
# `kiln serve` on a free port with a temporary data dir, creates a user and API token, and
# runs schemathesis over every operation of /api/openapi.json with the checks
# not_a_server_error, status_code_conformance, content_type_conformance, ignored_auth and
# response_schema_conformance, bounded in examples per operation and in wall time. Then two
# more passes pin the path to a real node and workspace (a task whose demo
# agent hangs) and authenticate with their callback tokens (signed with the server key), so
# the node protocol and the messages endpoint are fuzzed past authorization (the command
# long poll with waitMs=0). Stops the server and its nodes. Exits non-zero on any finding.
#
# Settings (environment):
#   KILN_FUZZ_EXAMPLES      examples per operation              (default 40)
#   KILN_FUZZ_TIMEOUT_SECS  wall-clock limit of the whole run   (default 600)
#   KILN_FUZZ_REQUEST_SECS  limit of one request                (default 10)
#   KILN_FUZZ_SEED          hypothesis seed for a reproducible run (default: random)
#   SCHEMATHESIS_VERSION    the version installed               (default 4.32.5)
#   KILN_FUZZ_VENV          the venv                            (default target/fuzz-venv)
#   KILN_FUZZ_KEEP          1: keep the data dir and server log (default 0)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
examples="${KILN_FUZZ_EXAMPLES:-40}"
timeout_secs="${KILN_FUZZ_TIMEOUT_SECS:-600}"
request_secs="${KILN_FUZZ_REQUEST_SECS:-10}"
venv="${KILN_FUZZ_VENV:-$root/target/fuzz-venv}"
version="${SCHEMATHESIS_VERSION:-4.32.5}"

if [[ ! -x "$venv/bin/st" ]]; then
  echo "fuzz: installing schemathesis $version into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build -q -p kiln-server -p kiln-node --bins
bin="$root/target/debug"

data="$(mktemp -d -t kiln-fuzz-XXXXXX)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
export KILN_LOG="${KILN_LOG:-warn,kiln_server=info}"
export KILN_NODE_BIN="$bin/kiln-node"
export KILN_SECRET_KEY="fuzz-secret-key-0123456789abcdef"

server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  # Local nodes run in their own process groups: stop them by their pid files.
  for f in "$data"/nodes/*/node.json; do
    [[ -f "$f" ]] || continue
    pid="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("pid",""))' "$f")"
    # pids are reused quickly (pid_max may be 32768): signal the group only while its leader
    # is still a kiln-node, never a stale pid that now leads someone else's group.
    if [[ -n "$pid" && "$pid" -gt 1 ]] && [[ "$(ps -o args= -p "$pid" 2>/dev/null | awk '{print $1}')" == */kiln-node ]]; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  if [[ "${KILN_FUZZ_KEEP:-0}" == "1" ]]; then
    echo "fuzz: kept $data"
  else
    rm -rf "$data"
  fi
}
trap cleanup EXIT

token="$("$bin/kiln" user add fuzzer --data-dir "$data")"
"$bin/kiln" serve --data-dir "$data" --listen "127.0.0.1:$port" --login-link false \
  >"$data/kiln.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 300); do
  curl -fsS "$base/api/health" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS "$base/api/health" >/dev/null

# A project so that generated ids sometimes hit real objects is not needed: every id the
# fuzzer makes up must be answered with a clean 4xx too.
seed_args=()
[[ -n "${KILN_FUZZ_SEED:-}" ]] && seed_args=(--seed "$KILN_FUZZ_SEED")

set +e
timeout "$timeout_secs" "$venv/bin/st" run "$base/api/openapi.json" \
  --url "$base" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth \
  --max-examples "$examples" \
  --request-timeout "$request_secs" \
  --phases examples,coverage,fuzzing \
  --exclude-path-regex '^/api/projects/\{projectId\}/ws$' \
  --no-color \
  "${seed_args[@]}"
status=$?

# Second and third passes: the node protocol with a real node's token and the messages
# endpoint with a real workspace's token, the path pinned to that node and workspace, so
# generated bodies get past authorization and reach the handlers.
if [[ $status -eq 0 ]]; then
  repo="$data/repo"
  git init -q -b main "$repo" && git -C "$repo" -c user.email=f@kiln.invalid -c user.name=f \
    commit -q --allow-empty -m initial
  api() { curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' "$@"; }
  project="$(api -X POST "$base/api/projects" -d "{\"name\":\"fuzz\",\"repositoryUrl\":\"$repo\"}" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
  task="$(api -X POST "$base/api/projects/$project/tasks" \
    -d '{"description":"Hold\nkiln-demo: hang","runNow":true}' \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
  ids=""
  for _ in $(seq 1 600); do
    ids="$(api "$base/api/tasks/$task" | python3 -c '
import json, sys
t = json.load(sys.stdin)
if t["status"] == "in_progress":
    print(t["nodeId"], t["workspaceId"])')"
    [[ -n "$ids" ]] && break
    sleep 0.1
  done
  if [[ -z "$ids" ]]; then
    echo "fuzz: the task for the node-protocol pass never started"
    status=1
  else
    read -r node workspace <<<"$ids"
    sign() {
      python3 - "$KILN_SECRET_KEY" "$@" <<'PY'
import base64, hashlib, hmac, json, sys, time
key, scope, node = sys.argv[1], sys.argv[2], sys.argv[3]
claims = {"scope": scope, "node": node, "iat": int(time.time()), "exp": int(time.time()) + 3600}
if len(sys.argv) > 4:
    claims["workspace"] = sys.argv[4]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(b'{"alg":"HS256","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
sig = hmac.new(key.encode(), head.encode(), hashlib.sha256).digest()
print(head + "." + b64(sig))
PY
    }
    printf '[parameters]\n"path.nodeId" = "%s"\n"path.workspaceId" = "%s"\n"query.waitMs" = 0\n' "$node" "$workspace" \
      >"$data/schemathesis.toml"
    for pass in node workspace; do
      if [[ $pass == node ]]; then
        callback="$(sign node "$node")"
        filter=(--include-path-regex '^/api/nodes/\{nodeId\}/(hello|heartbeat|commands|events|deltas)$')
      else
        callback="$(sign workspace "$node" "$workspace")"
        filter=(--include-path-regex '^/api/workspaces/\{workspaceId\}/messages$')
      fi
      echo "fuzz: $pass-token pass (node $node, workspace $workspace)"
      timeout "$timeout_secs" "$venv/bin/st" --config-file "$data/schemathesis.toml" run \
        "$base/api/openapi.json" \
        --url "$base" \
        --header "Authorization: Bearer $callback" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
        --max-examples "$examples" \
        --request-timeout "$request_secs" \
        --phases examples,coverage,fuzzing \
        "${filter[@]}" \
        --no-color \
        "${seed_args[@]}" || status=$?
    done
  fi
fi
set -e
if grep -q "panicked" "$data/kiln.log"; then
  echo "fuzz: the server panicked:"
  grep -n "panicked" "$data/kiln.log" | head -20
  status=1
fi
if [[ $status -eq 124 ]]; then
  echo "fuzz: timed out after $timeout_secs s (a hang is a finding)"
fi
exit "$status"
