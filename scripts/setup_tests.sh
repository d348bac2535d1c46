#!/usr/bin/env bash
# What the server tests (tests/server) need beyond `scripts/setup.sh --test` (which installs Chromium): node and
# npm when missing (Debian's; a node already installed, from any source, is kept), and the npm packages exactly as
# tests/server/package-lock.json pins them (npm ci; nothing is downloaded while the tests run). Called by
# scripts/test.sh after setup.sh --test; the main job needs none of it.
# Idempotent: installs nothing when everything is there and node_modules matches the lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v node > /dev/null || need+=(nodejs)
command -v npm > /dev/null || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  echo "setup_tests: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# npm ci replaces node_modules; a stamp of the lockfile it installed skips it when nothing changed.
lock=tests/server/package-lock.json
stamp=tests/server/node_modules/.dreamllm-lock.sha256
want=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup_tests: npm ci in tests/server"
  (cd tests/server && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$stamp"
fi
