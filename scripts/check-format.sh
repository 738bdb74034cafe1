#!/usr/bin/env bash
# Every tracked C and CUDA source is formatted by the repository's .clang-format (DESIGN.md
# section 10): runs clang-format --dry-run -Werror over them and names each file that would
# change, with clang-format's own diagnostics. Fix with `clang-format -i FILE`.
#
# The tree is kept in clang-format 14's output (Debian 12's; scripts/install-deps.sh installs
# it); other major versions format some constructs differently, so the check reports itself
# skipped (exit 77, as ctest expects) with another version, as it does without clang-format.
# CLANG_FORMAT names the binary (default: clang-format-14, then clang-format).
# Usage: scripts/check-format.sh [REPO_ROOT] (default: the script's repository).
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$root"

want_major=14
cf="${CLANG_FORMAT:-}"
if [ -z "$cf" ]; then
  for c in clang-format-$want_major clang-format; do
    if command -v "$c" >/dev/null 2>&1; then cf=$c; break; fi
  done
fi
if [ -z "$cf" ] || ! command -v "$cf" >/dev/null 2>&1; then
  echo "check-format: skipped: no clang-format (apt-get install clang-format)"
  exit 77
fi
major=$("$cf" --version | sed -n 's/.*version \([0-9][0-9]*\)\..*/\1/p')
if [ "$major" != "$want_major" ]; then
  echo "check-format: skipped: $cf is version ${major:-unknown}; the tree is kept in $want_major's format"
  exit 77
fi
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "check-format: skipped: $root is not a git checkout (the check covers tracked files)"
  exit 77
fi

# One clang-format run over every file: its diagnostics ("FILE:LINE:COL: error: code should be
# clang-formatted") name each place that would change.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
git ls-files -z --cached --others --exclude-standard -- '*.c' '*.h' '*.cu' '*.cuh' | xargs -0 "$cf" --dry-run -Werror 2>"$log" || status=$?
if [ $status -ne 0 ]; then
  head -n 200 "$log"
  files=$(sed -n 's/^\([^:]*\):[0-9]*:[0-9]*: error: code should be clang-formatted.*/\1/p' "$log" | sort -u)
  for f in $files; do echo "not formatted: $f (clang-format -i $f)"; done
  echo "check-format: $(echo "$files" | grep -c . || true) file(s) differ from .clang-format" >&2
  exit 1
fi
echo "check-format: every tracked C and CUDA source is formatted"
