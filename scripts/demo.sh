#!/usr/bin/env bash
# The main job on the embedded default: installs what is missing, builds, and runs the richest demo there is
# (today: a tiny transformer trained from scratch by the engine's autograd). Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh -DDL_BUILD_BENCH=OFF > /dev/null
./build/bin/dreamllm demo "$@"
