#!/usr/bin/env bash
# Configures and builds into BUILD_DIR (default: build) with the given extra CMake arguments.
# Incremental: reconfigures only when the directory is new; ccache is used when installed.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR=${BUILD_DIR:-build}
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja "$@"
elif [ $# -gt 0 ]; then
  cmake "$BUILD_DIR" "$@" > /dev/null
fi
# Two cores on the reference machine: more jobs than that only thrashes.
cmake --build "$BUILD_DIR" -j "${DL_BUILD_JOBS:-2}"
