#!/usr/bin/env bash
# Whether the real cluster-file parser takes FILE: dslactl --cluster loads the file before it asks
# the controller, and exits 2 when it refuses the file (naming the line), 1 when the file is taken
# and no controller answers. Give FILE loopback hosts, so that the question stays on this machine.
# Prints dslactl's words; exit 0 taken, 2 refused, 77 when DSLA_BIN's dslactl has no --cluster.
# usage: cluster-parse.sh FILE   (DSLA_BIN: the build's bin folder)
set -euo pipefail
file=$1
dslactl=${DSLA_BIN:-}/dslactl
if [ -z "${DSLA_BIN:-}" ] || [ ! -x "$dslactl" ] || ! "$dslactl" --help 2>&1 | grep -q -- --cluster; then
    echo "dslactl --cluster absent from this build: the cluster file's own rules are not checked"
    exit 77
fi
key=$(mktemp)
trap 'rm -f "$key"' EXIT
printf 'deploy-check-admin-key-0123456789\n' >"$key"
rc=0
"$dslactl" --cluster "$file" --admin-key-file "$key" --timeout-ms 200 status 2>&1 || rc=$?
if [ "$rc" -eq 2 ]; then exit 2; fi
exit 0
