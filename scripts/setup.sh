#!/usr/bin/env bash
# Installs the Debian packages a job needs. Idempotent: does nothing when everything is already there.
#   bash scripts/setup.sh          what building and running dreamllm need (the main job, scripts/demo.sh)
#   bash scripts/setup.sh --test   that, plus the test suite, the fixture scripts (PyTorch references), the
#                                  benchmarks and fuzzing (scripts/test.sh, scripts/bench*.sh, scripts/fuzz.sh)
# The main set is what CMake requires with -DDL_BUILD_TESTS=OFF -DDL_BUILD_BENCH=OFF: GoogleTest and Google Benchmark
# are looked for only when those are on.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libopenblas-dev nlohmann-json3-dev zlib1g-dev
  libsentencepiece-dev libstb-dev libcli11-dev libcpp-httplib-dev
)
case "${1:-}" in
  "") ;;
  --test)
    packages+=(
      ccache
      libgtest-dev libgmock-dev libbenchmark-dev
      sentencepiece python3-sentencepiece
      clang libclang-rt-14-dev unzip
      python3-torch python3-numpy python3-pil
      chromium
    )
    ;;
  *)
    echo "setup.sh: unknown argument '$1' (none: build and run; --test: also tests, fixtures, benchmarks)" >&2
    exit 2
    ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "setup: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
