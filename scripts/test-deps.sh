#!/usr/bin/env bash
# Installs the system tools Kiln's tests call, when they are missing. Idempotent: a tool
# already on PATH is left alone. Called by scripts/test.sh (the README's test command).
#
# - cloud-init: `cloud-init schema --config-file` validates the Hetzner nodes' generated
#   #cloud-config (crates/backends/tests/cloud_init.rs).
set -euo pipefail

apt_updated=0
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test-deps: apt-get not found; install '$*' with your package manager" >&2
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if [ "$apt_updated" -eq 0 ]; then
    echo "test-deps: apt-get update"
    $sudo apt-get update -qq
    apt_updated=1
  fi
  echo "test-deps: apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@"
}

if command -v cloud-init >/dev/null 2>&1; then
  echo "test-deps: cloud-init present ($(cloud-init --version 2>&1 | head -n1))"
else
  apt_install cloud-init
  echo "test-deps: cloud-init installed ($(cloud-init --version 2>&1 | head -n1))"
fi
