#!/usr/bin/env bash
# deploy/slurm/dsla.sbatch without Slurm: bash -n, shellcheck over every deploy script (when
# Debian's shellcheck is installed; install-deps.sh installs it), then the script run under stand-ins
# for scontrol, srun and dsla-serve: the machines of a fake allocation must each start the node the
# mapping gives them with the rendered cluster file, and bad mappings must be refused.
# usage: slurm.sh SOURCE_DIR
set -euo pipefail
src=$1
sbatch=$src/deploy/slurm/dsla.sbatch
bash -n "$sbatch"
if command -v shellcheck >/dev/null; then
    shellcheck "$sbatch" "$src/deploy/bundle.sh" "$src"/tests/deploy/*.sh
    echo "shellcheck: deploy scripts clean"
else
    echo "shellcheck absent: only bash -n (scripts/install-deps.sh installs it)"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bin"
cat >"$work/bin/scontrol" <<'EOF'
#!/bin/bash
[ "$1 $2" = "show hostnames" ] || { echo "fake scontrol: $*" >&2; exit 1; }
for h in $FAKE_HOSTS; do echo "$h"; done
EOF
# srun: each task in turn, with the variables Slurm gives a task of a one-task-per-node step.
cat >"$work/bin/srun" <<'EOF'
#!/bin/bash
n=
while [ $# -gt 0 ]; do
    case $1 in
        --ntasks=*) n=${1#--ntasks=}; shift ;;
        --*) shift ;;
        *) break ;;
    esac
done
read -r -a hosts <<<"$FAKE_HOSTS"
for ((i = 0; i < n; i++)); do
    SLURM_NODEID=$i SLURMD_NODENAME=${hosts[$i]} "$@" | sed "s/^/$i: /" || exit 1
done
EOF
cat >"$work/bin/dsla-serve" <<'EOF'
#!/bin/bash
echo "dsla-serve $*"
while [ $# -gt 0 ]; do
    [ "$1" = --cluster ] && sed -n 's/^ *host: //p' "$2" | tr '\n' ' ' && echo
    shift
done
EOF
chmod +x "$work"/bin/*
cat >"$work/cluster.yaml" <<'EOF'
version: 1
model: /models/llama
nodes:
  - name: head
    host: "{{node:0}}"
  - name: gpu-a
    host: "{{node:1}}"
  - name: gpu-b
    host: "{{node:2}}"
EOF

run() { # env assignments..., then the expected exit status
    local want=${!#}
    local out rc=0
    out=$(env PATH="$work/bin:$PATH" SLURM_JOB_ID=42 SLURM_JOB_NODELIST="fake[1-3]" DSLA_RUN_DIR="$work" \
        "${@:1:$#-1}" bash "$sbatch" 2>&1) || rc=$?
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL: dsla.sbatch with ${*:1:$#-1} exited $rc, not $want:"
        echo "$out"
        exit 1
    fi
    echo "$out"
}
expect() { # output, a line it must hold
    grep -qxF -- "$2" <<<"$1" || { echo "FAIL: no line '$2' in:"; echo "$1"; exit 1; }
}

out=$(run FAKE_HOSTS="n01 n02 n03" DSLA_CLUSTER="$work/cluster.yaml" DSLA_NODES="head gpu-a gpu-b" \
    DSLA_ARGS="--log-level info" 0)
expect "$out" "0: dsla-serve --cluster $work/dsla-cluster-42.yaml --node head --log-level info"
expect "$out" "1: dsla-serve --cluster $work/dsla-cluster-42.yaml --node gpu-a --log-level info"
expect "$out" "2: dsla-serve --cluster $work/dsla-cluster-42.yaml --node gpu-b --log-level info"
expect "$out" '0: "n01" "n02" "n03" '
echo "ok: three machines run head, gpu-a and gpu-b with the hosts filled in"

out=$(run FAKE_HOSTS="n01 n02 n03" DSLA_CLUSTER="$work/cluster.yaml" 0)
expect "$out" "1: dsla-serve --cluster $work/dsla-cluster-42.yaml --node n02"
echo "ok: without DSLA_NODES each machine runs the node of its own name"

out=$(run FAKE_HOSTS="n01 n02" DSLA_CLUSTER="$work/cluster.yaml" DSLA_NODES="head gpu-a gpu-b" 2)
grep -q "DSLA_NODES names 3 nodes (head gpu-a gpu-b), the allocation has 2 machines" <<<"$out" ||
    { echo "FAIL: a mapping longer than the allocation: $out"; exit 1; }
out=$(run FAKE_HOSTS="n01 n02" DSLA_CLUSTER="$work/cluster.yaml" DSLA_NODES="head gpu-a" 2)
grep -q "names {{node:2}} beyond the allocation's 2 machines" <<<"$out" ||
    { echo "FAIL: a placeholder beyond the allocation: $out"; exit 1; }
out=$(run FAKE_HOSTS="n01" DSLA_CLUSTER="$work/absent.yaml" 2)
grep -q "cannot read the cluster file" <<<"$out" || { echo "FAIL: a missing cluster file: $out"; exit 1; }
echo "ok: mappings that do not fit the allocation are refused"

# The example cluster file, rendered for an allocation of two loopback addresses, through the real
# parser where this build has it (dslactl --cluster: exit 2 when it refuses the file; 1 when the
# file is taken and no controller answers, on this machine).
out=$(run FAKE_HOSTS="127.0.0.1 127.0.0.2" DSLA_CLUSTER="$src/deploy/slurm/cluster.example.yaml" \
    DSLA_NODES="head gpu-a" 0)
expect "$out" "1: dsla-serve --cluster $work/dsla-cluster-42.yaml --node gpu-a"
rc=0
parsed=$(bash "$src/tests/deploy/cluster-parse.sh" "$work/dsla-cluster-42.yaml") || rc=$?
case $rc in
    0) echo "ok: the example cluster file, rendered, passes dslactl --cluster's parser" ;;
    77) echo "$parsed" ;;
    *)
        echo "FAIL: dslactl refuses deploy/slurm/cluster.example.yaml as rendered:"
        echo "$parsed"
        exit 1
        ;;
esac
