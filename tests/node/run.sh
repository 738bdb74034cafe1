#!/usr/bin/env bash
# The official OpenAI Node client (npm "openai", pinned by package-lock.json) against a real
# dsla-serve: installs the client into the build directory (npm ci, once) and runs
# openai_client.mjs. Skips (77) only when node or npm is absent; a failed install fails the test.
# Usage: run.sh SOURCE_DIR WORK_DIR (ctest passes DSLA_BIN and DSLA_TEST_DATA in the environment).
set -euo pipefail
src=$1
work=$2
command -v node >/dev/null && command -v npm >/dev/null || { echo "node or npm absent: skipped"; exit 77; }
[ -f "${DSLA_TEST_DATA:-../shared}/models/stories260K-hf/config.json" ] || { echo "no stories260K-hf: skipped"; exit 77; }
mkdir -p "$work"
if ! cmp -s "$src/package-lock.json" "$work/package-lock.json" || [ ! -d "$work/node_modules/openai" ]; then
  cp "$src/package.json" "$src/package-lock.json" "$work/"
  (cd "$work" && npm ci --no-audit --no-fund --loglevel=error)
fi
cp "$src/openai_client.mjs" "$work/"
cd "$work" && exec node openai_client.mjs
