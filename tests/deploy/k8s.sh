#!/usr/bin/env bash
# The Kubernetes manifests of deploy/k8s against the Kubernetes schemas and each other
# (check-k8s.mjs), then the same checker on broken copies, each of which it must refuse with the
# reason given: a checker that passes everything would pass the manifests too.
# Installs kubernetes-models and yaml (pinned by package-lock.json) into WORK_DIR once. Skips (77)
# only when node or npm is absent or the install fails (no registry); a wrong manifest fails.
# usage: k8s.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1
work=$2
here=$src/tests/deploy
manifests=$src/deploy/k8s
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node or npm absent: skipped"
    exit 77
fi
mkdir -p "$work"
if ! cmp -s "$here/package-lock.json" "$work/package-lock.json" || [ ! -d "$work/node_modules/kubernetes-models" ]; then
    cp "$here/package.json" "$here/package-lock.json" "$work/"
    rm -rf "$work/node_modules"
    if ! (cd "$work" && npm ci --no-audit --no-fund --loglevel=error); then
        rm -f "$work/package-lock.json"
        echo "npm ci failed (no registry?): the schema checker cannot be installed: skipped"
        exit 77
    fi
fi
cp "$here/check-k8s.mjs" "$work/"
cd "$work"

echo "== deploy/k8s"
node check-k8s.mjs "$manifests"

# Broken copies: FILE, a sed expression, and what the refusal must say.
mutants=(
    "40-serving.yaml|s/livenessProbe:/livenessprobe:/|unknown field spec.template.spec.containers.0.livenessprobe"
    "40-serving.yaml|s/replicas: 2/replicas: two/|spec.replicas: must be integer"
    "40-serving.yaml|s/replicas: 2/replicas: 3/|runs node dsla-serving-2, which the cluster file does not have"
    "40-serving.yaml|s/limits: {memory: 64Gi, nvidia.com\/gpu: 1}/limits: {memory: 64Gi}/|nvidia.com/gpu must be in limits"
    "40-serving.yaml|s/claimName: dsla-models/claimName: dsla-model/|no PersistentVolumeClaim dsla-model"
    "40-serving.yaml|s/secretName: dsla-keys/secretName: dsla-key/|no Secret dsla-key"
    "30-head.yaml|s/httpGet: {path: \/health, port: http}/httpGet: {path: \/health, port: htp}/|readinessProbe port htp is none of the container's ports"
    "30-head.yaml|s/replicas: 1 # one gateway/replicas: 2 # one gateway/|runs node dsla-head-1, which the cluster file does not have"
    "30-head.yaml|s/{name: state, mountPath: \/var\/lib\/dsla\/state}/{name: cache, mountPath: \/var\/lib\/dsla\/state}/|state /var/lib/dsla/state is not on a persistent volume"
    "30-head.yaml|s/{name: layers, mountPath: \/var\/lib\/dsla\/layers}/{name: cache, mountPath: \/var\/lib\/dsla\/layers}/|layers /var/lib/dsla/layers is not on a persistent volume"
    "30-head.yaml|s/serviceName: dsla-head/serviceName: dsla-hed/|serviceName dsla-hed is no Service"
    "30-head.yaml|s/nvidia.com\/gpu: 2/nvidia.com\/gpu: 1/g|an actor runs on cuda gpu 1, but dsla-head/head has nvidia.com/gpu 1"
    "30-head.yaml|s/  serviceName: dsla-head/  serviceName: dsla-head\n  replica: 2/|unknown field spec.replica"
    "50-gateway-service.yaml|s/- {name: http, port: 8000, targetPort: http}/- {name: http, port: 8000, targetPort: web}/|targetPort web is not a port of the pods"
    "10-cluster-configmap.yaml|s/port: 7080, device/port: 7081, device/|serving serving-0 port 7081 is not a containerPort"
    "10-cluster-configmap.yaml|s/dsla-serving-1.dsla-serving.dsla/dsla-serving-1.dsla-serve.dsla/|is not the DNS name of dsla-serving's pod"
    "10-cluster-configmap.yaml|s/model: \/models\/llama/model: \/srv\/llama/|model /srv/llama is under no volumeMount"
    "10-cluster-configmap.yaml|s/      - name: dsla-serving-1/      - name: dsla-serving-9/|no workload runs node dsla-serving-9"
    "10-cluster-configmap.yaml|s/admin_key_file: \/etc\/dsla\/keys/admin_key_file: \/etc\/dsla\/key/|keys.admin_key_file /etc/dsla/key/admin.key is under no volumeMount"
    "00-namespace.yaml|s/kind: Namespace/kind: Namespaces/|unknown apiVersion/kind v1/Namespaces"
)
# Each broken copy in a folder of its own, all checked by one node run (the schemas load once).
failed=0
mutants_dir=$(mktemp -d)
trap 'rm -rf "$mutants_dir"' EXIT
dirs=()
for i in "${!mutants[@]}"; do
    IFS='|' read -r file edit _ <<<"${mutants[$i]}"
    dir=$mutants_dir/$i
    mkdir "$dir"
    cp "$manifests"/*.yaml "$dir/"
    sed -i -e "$edit" "$dir/$file"
    if cmp -s "$manifests/$file" "$dir/$file"; then
        echo "FAIL: the edit '$edit' changes nothing in $file (the manifest moved on: update the mutant)"
        failed=1
    fi
    dirs+=("$dir")
done
out=$(node check-k8s.mjs "${dirs[@]}" 2>&1) || true
for i in "${!mutants[@]}"; do
    IFS='|' read -r file edit expect <<<"${mutants[$i]}"
    section=$(awk -v h="== $mutants_dir/$i" '$0 == h {on = 1; next} /^== / {on = 0} on' <<<"$out")
    if grep -q ': 0 problem(s)$' <<<"$section"; then
        echo "FAIL: $file with '$edit' passed the check"
        failed=1
    elif ! grep -qF -- "$expect" <<<"$section"; then
        echo "FAIL: $file with '$edit' was not refused for '$expect':"
        echo "$section"
        failed=1
    else
        echo "refused as it must be: $file '$edit': $(grep -F -- "$expect" <<<"$section" | head -1 | cut -c1-200)"
    fi
done
[ "$failed" -eq 0 ] || exit 1
echo "ok: deploy/k8s passes; ${#mutants[@]} broken copies refused"

# The ConfigMap's cluster file through the real parser, where this build has it
# (cluster-parse.sh), its hosts turned into 127.0.0.1; then a copy against the parser's rules (the
# distiller off the controller's node), which it must refuse.
node --input-type=module -e '
import fs from "node:fs";
import { parseAllDocuments } from "yaml";
for (const d of parseAllDocuments(fs.readFileSync(process.argv[1], "utf8"))) {
  const text = d.toJS()?.data?.["cluster.yaml"];
  if (text) process.stdout.write(text);
}' "$manifests/10-cluster-configmap.yaml" | sed -E 's/^( *host: ).*/\1127.0.0.1/' >"$mutants_dir/cluster.yaml"
awk '/distiller:/ {next} {print} /name: serving-0,/ {print "      distiller: {data: [/models/data/train.txt]}"}' \
    "$mutants_dir/cluster.yaml" >"$mutants_dir/moved.yaml"
for case in "cluster.yaml|0|takes the ConfigMap's cluster file" "moved.yaml|2|refuses the distiller off the controller's node"; do
    IFS='|' read -r file want what <<<"$case"
    rc=0
    out=$(bash "$here/cluster-parse.sh" "$mutants_dir/$file") || rc=$?
    [ "$rc" -ne 77 ] || { echo "$out"; exit 0; }
    if [ "$rc" -ne "$want" ]; then
        echo "FAIL: the parser does not do what it must: it $what (exit $rc, not $want; a line N of the file is the ConfigMap's key line + N):"
        echo "$out"
        exit 1
    fi
    echo "ok: dslactl --cluster's parser $what${out:+: $out}"
done
