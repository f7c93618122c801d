#!/usr/bin/env bash
# Installs what the browser tests need, and only what is missing: Debian's Chromium at
# /usr/bin/chromium and playwright-core (from package-lock.json) in node_modules.
# Idempotent: a second run prints what it found and changes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -x /usr/bin/chromium ]; then
  echo "chromium: present ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
else
  echo "chromium: missing; installing Debian's chromium with apt-get"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-dejavu-core >/dev/null
  echo "chromium: installed ($(/usr/bin/chromium --version 2>/dev/null || echo unknown version))"
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "node/npm: missing; installing Debian's nodejs and npm with apt-get"
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

if [ -d node_modules/playwright-core ]; then
  echo "playwright-core: present ($(node -p "require('playwright-core/package.json').version"))"
else
  echo "playwright-core: missing; running npm ci (no browser download: Debian's chromium is used)"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund
fi
