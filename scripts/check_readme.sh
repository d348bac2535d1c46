#!/usr/bin/env bash
# Runs the README's code blocks as a user would copy them, and fails when one fails: every ```sh block except those
# marked on the line before with <!-- readme-test: skip (reason) --> (the 7B, real data, set-up, long training).
# Each block runs alone under `bash -euo pipefail`, in a scratch directory where build/, models/, tests/, scripts/,
# tools/ and docs/ lead to the checkout's (build/ to BUILD_DIR), so its outputs land there, never in the checkout.
#   bash scripts/check_readme.sh [BUILD_DIR] [README]      (CTest runs it as readme_commands)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
readme=${2:-$root/README.md}
[ -x "$build/bin/dreamllm" ] || { echo "check_readme: no $build/bin/dreamllm (build first)" >&2; exit 2; }
scratch=$(mktemp -d "${TMPDIR:-/tmp}/dl_readme.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

# Blocks as files block_<line>.sh (line: where the block starts in the README); skipped ones listed.
awk -v dir="$scratch" '
  /^```sh[[:space:]]*$/ && !inside { inside = 1; start = NR; skip = (prev ~ /<!-- *readme-test: *skip/); next }
  /^```[[:space:]]*$/ && inside { inside = 0; if (skip) print "skip " start > (dir "/skipped"); next }
  inside && !skip { print > (dir "/block_" start ".sh") }
  { prev = $0 }
' "$readme"

failed=0 ran=0
for f in $(cd "$scratch" && ls block_*.sh 2> /dev/null | sort -t_ -k2 -n); do
  f="$scratch/$f"
  line=${f##*block_}
  line=${line%.sh}
  work="$scratch/work_$line"
  mkdir -p "$work"
  ln -s "$build" "$work/build"
  for d in models tests scripts tools docs; do ln -s "$root/$d" "$work/$d"; done
  ran=$((ran + 1))
  start=$SECONDS
  rc=0
  (cd "$work" && timeout "${README_BLOCK_TIMEOUT:-300}" bash -euo pipefail "$f" < /dev/null > "$work/log" 2>&1) || rc=$?
  if [ "$rc" = 0 ]; then
    echo "README block at line $line: ok ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1))
    echo "README block at line $line: FAILED (exit $rc); the end of its output:"
    tail -n 25 "$work/log" | sed 's/^/    /'
  fi
done
[ -f "$scratch/skipped" ] && echo "skipped (marked): $(awk '{printf "%s%s", sep, $2; sep=", "}' "$scratch/skipped") (README lines)"
[ "$ran" -gt 0 ] || { echo "check_readme: no runnable block found in $readme" >&2; exit 1; }
[ "$failed" = 0 ] || { echo "check_readme: $failed of $ran README blocks failed" >&2; exit 1; }
echo "check_readme: all $ran runnable README blocks passed"
