#!/usr/bin/env bash
# API fuzzing with schemathesis against a real `kiln serve` (SQLite, 127.0.0.1 only).
#
# Installs schemathesis (pinned) from PyPI into a venv under target/ when missing, starts
# `kiln serve` on a free port with a temporary data dir, creates a user and API token, and
# runs schemathesis over every operation of /api/openapi.json with the checks
# not_a_server_error, status_code_conformance, content_type_conformance, ignored_auth and
# response_schema_conformance, bounded in examples per operation and in wall time. Stops the
# server. Exits non-zero on any finding.
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
    [[ -n "$pid" ]] && kill -KILL -- "-$pid" 2>/dev/null || true
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
