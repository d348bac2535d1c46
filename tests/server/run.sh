#!/usr/bin/env bash
# Runs one test file of tests/server with node's test runner, as CTest registers it. Exit 77 (CTest's "skipped")
# when node is not installed; a missing node_modules is an error, since scripts/setup_tests.sh installs it.
set -euo pipefail
if ! command -v node > /dev/null; then
  echo "node is not installed: tests/server/$1 is skipped (scripts/setup_tests.sh installs node and the packages)"
  exit 77
fi
cd "$(dirname "$0")"
if [ ! -d node_modules/openai ] || [ ! -d node_modules/playwright-core ]; then
  echo "tests/server/node_modules is missing: run 'bash scripts/setup_tests.sh' (npm ci from package-lock.json)" >&2
  exit 1
fi
# Test files run under node's test runner; a script (load.mjs) runs as it is and says what it measured.
case "$1" in
  *.test.mjs) exec node --test --test-reporter=spec "$1" ;;
  *) exec node "$1" ;;
esac
