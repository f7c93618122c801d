#!/usr/bin/env bash
# Runs every Kiln test on this machine: the README's test command, and what CI calls.
# It installs or starts what the tests need (PostgreSQL, and Chromium for browser tests),
# so it works on a fresh machine. Real services are required, not skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

export KILN_TEST_POSTGRES_URL="${KILN_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
export KILN_REQUIRE_SERVICES="${KILN_REQUIRE_SERVICES:-1}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

step() { printf '\n==> %s\n' "$*"; }

step "PostgreSQL"
bash .ci/postgres.sh

step "System tools the tests call (cloud-init)"
bash scripts/test-deps.sh

if [ -x scripts/browser-deps.sh ]; then
  step "Browser test dependencies"
  bash scripts/browser-deps.sh
fi

step "Build (one dev profile for everything)"
cargo build --workspace --all-features --all-targets

step "Examples"
for example in $(ls examples/*.rs 2>/dev/null | xargs -rn1 basename | sed 's/\.rs$//'); do
  echo "--- example $example"
  cargo run --quiet --all-features --example "$example"
done

step "Browser tests (headless Chromium against a real kiln serve)"
bash scripts/browser-tests.sh

step "Doc tests"
cargo test --workspace --all-features --doc

step "Unit, integration and end-to-end tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi
