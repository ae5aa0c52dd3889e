#!/usr/bin/env bash
# clang-format every C file (or, with --check, fail if any would change).
set -euo pipefail
cd "$(dirname "$0")/.."
# Tracked and new (not ignored) files alike.
files=$(git ls-files --cached --others --exclude-standard '*.c' '*.h' 2>/dev/null ||
  find src tests bench -name '*.[ch]')
if [ "${1:-}" = --check ]; then
  clang-format --dry-run --Werror $files
else
  clang-format -i $files
fi
