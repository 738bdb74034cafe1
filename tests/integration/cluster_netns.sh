#!/usr/bin/env bash
# A cluster of three hosts, each a network namespace with its own network stack, joined by veth
# pairs to a bridge in a fourth namespace (where the client and dslactl run), started from one
# cluster file: the head runs the gateway (HTTP with an API key) and the controller; h2 and h3 run
# one replica each, which report to the controller and fetch the layer versions it converts them
# to from it, across hosts, into caches of their own. The test serves requests over HTTP, converts
# two layers on the remote replicas, cuts h3's link while requests are in flight and restores it:
# every request gets an answer (a completion or an error), h3 is dead and then alive again in
# dslactl status, and the cluster serves on. This script is docs/operations.md's two-node walk-through, with one more host.
#
# Root only, with `ip netns`: exits 77 (skipped) otherwise. Every namespace and process it made
# goes on exit. Usage: cluster_netns.sh BIN_DIR DATA_DIR
set -euo pipefail

BIN=${1:-${DSLA_BIN:-build/bin}}
DATA=${2:-${DSLA_TEST_DATA:-../shared}}
MODEL=$DATA/models/stories260K-hf
TEXT=$DATA/data/tinystories_train_sample.txt

skip() { echo "skipped: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces"
command -v ip >/dev/null || skip "no ip (iproute2)"
command -v curl >/dev/null || skip "no curl"
[ -f "$MODEL/config.json" ] || skip "no $MODEL"
BIN=$(cd "$BIN" && pwd)
MODEL=$(cd "$MODEL" && pwd)
TEXT=$(cd "$(dirname "$TEXT")" && pwd)/$(basename "$TEXT")

P=dsla$$ # namespace names: this run's own
HOSTS=(h1 h2 h3)
WORK=$(mktemp -d /tmp/dsla-cluster.XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    for h in "${HOSTS[@]}" br; do # anything else this test left in its own namespaces
        for pid in $(ip netns pids "$P-$h" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    done
    for h in "${HOSTS[@]}" br; do ip netns del "$P-$h" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
ip netns add "$P-br" 2>/dev/null || skip "ip netns add failed (no CAP_SYS_ADMIN?)"
fail() {
    echo "FAIL: $*"
    for f in "$WORK"/*.log; do echo "--- $f"; tail -n 30 "$f"; done
    exit 1
}
in_ns() { local ns=$1; shift; ip netns exec "$P-$ns" "$@"; }

# --- step 1, the hosts: 10.77.0.0/24, one bridge; the client is 10.77.0.100 on the bridge
in_ns br ip link set lo up
in_ns br ip link add br0 type bridge 2>/dev/null || skip "no bridge devices in this kernel"
in_ns br ip addr add 10.77.0.100/24 dev br0
in_ns br ip link set br0 up
for i in 1 2 3; do
    ip netns add "$P-h$i"
    ip link add eth0 netns "$P-h$i" type veth peer name h$i netns "$P-br" 2>/dev/null ||
        skip "no veth pairs in this kernel"
    in_ns "h$i" ip addr add 10.77.0.$i/24 dev eth0
    in_ns "h$i" ip link set eth0 up
    in_ns "h$i" ip link set lo up
    in_ns br ip link set h$i master br0 up
done

# --- steps 2-4: layer versions (teacher-initialised: seconds) on the head, keys, the cluster file
"$BIN/dsla" distill --model "$MODEL" --data "$TEXT" --out "$WORK/layers" --layers 2 --steps 0 \
    >"$WORK/distill.log" 2>&1 || fail "dsla distill --steps 0"
KEY=api-key-$P-$RANDOM$RANDOM$RANDOM
echo "$KEY" >"$WORK/api.key"
echo "admin-key-$P-$RANDOM$RANDOM$RANDOM" >"$WORK/admin.key"
cat >"$WORK/cluster.yaml" <<EOF
version: 1
model: $MODEL
model_name: stories
layers: $WORK/layers
state: $WORK/state
keys: {api_key_file: $WORK/api.key, admin_key_file: $WORK/admin.key, allow_insecure: true}
policy: "manual layers=0"
nodes:
  - name: head
    host: 10.77.0.1
    actors:
      gateway: {http: "0.0.0.0:8000", port: 7070, options: {heartbeat-ms: 200}}
      controller: {port: 7071, admin_port: 7072}
  - name: h2
    host: 10.77.0.2
    actors:
      serving:
        - {name: serving-h2, port: 7080,
           options: {layer-cache: $WORK/cache-h2, report-ms: 200}}
  - name: h3
    host: 10.77.0.3
    actors:
      serving:
        - {name: serving-h3, port: 7080,
           options: {layer-cache: $WORK/cache-h3, report-ms: 200}}
EOF
mkdir -p "$WORK/state"

# --- step 5: each node's dsla-serve in its host's namespace, from the one file; step 6: status
start() { # node namespace
    ip netns exec "$P-$2" "$BIN/dsla-serve" --cluster "$WORK/cluster.yaml" --node "$1" \
        >"$WORK/$1.log" 2>&1 & # ip netns exec execs: $! is dsla-serve
    PIDS+=($!)
}
start head h1
start h2 h2
start h3 h3
for node in head h2 h3; do
    for _ in $(seq 100); do grep -q "listening on" "$WORK/$node.log" && break; sleep 0.1; done
    grep -q "listening on" "$WORK/$node.log" || fail "node $node did not start"
done
ctl() { in_ns br "$BIN/dslactl" --cluster "$WORK/cluster.yaml" --timeout-ms 2000 "$@"; }
wait_status() { # pattern seconds
    local until=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$until" ]; do
        ctl status >"$WORK/status.txt" 2>&1 && grep -Eq "$1" "$WORK/status.txt" && return 0
        sleep 0.1
    done
    cat "$WORK/status.txt"
    fail "dslactl status never showed /$1/"
}
wait_status "replica serving-h2 alive:" 20
wait_status "replica serving-h3 alive:" 20

# --- step 7: requests over HTTP from the client's namespace, through the gateway on the head
URL=http://10.77.0.1:8000/v1/completions
request() { # out_file [max_tokens]: the HTTP status to out_file.code, the body to out_file.body
    in_ns br curl -s -o "$1.body" -w '%{http_code}' --max-time 30 -H "Authorization: Bearer $KEY" \
        -d "{\"prompt\": \"Once upon a time\", \"max_tokens\": ${2:-24}, \"ignore_eos\": true}" \
        "$URL" >"$1.code" 2>/dev/null || echo "curl-$?" >"$1.code"
}
code=$(in_ns br curl -s -o /dev/null -w '%{http_code}' -d '{"prompt": "x"}' "$URL" || true)
[ "$code" = 401 ] || fail "a request without the API key got $code, want 401"
for i in 1 2 3 4; do request "$WORK/warm$i"; done
for i in 1 2 3 4; do
    [ "$(cat "$WORK/warm$i.code")" = 200 ] || fail "request $i: $(cat "$WORK/warm$i.code") $(cat "$WORK/warm$i.body")"
done

# --- step 8: convert two layers: both remote replicas fetch the versions from the head
ctl convert 2 >/dev/null || fail "dslactl convert 2"
wait_status "replica serving-h2 .*runs 2 DSLA layers" 20
wait_status "replica serving-h3 .*runs 2 DSLA layers" 20
for h in h2 h3; do
    n=$(find "$WORK/cache-$h" -name '*.safetensors' | wc -l)
    [ "$n" -ge 2 ] || fail "$h's layer cache holds $n layer versions, want 2"
done
request "$WORK/hybrid"
[ "$(cat "$WORK/hybrid.code")" = 200 ] || fail "after convert: $(cat "$WORK/hybrid.code")"

# --- step 9: cut h3's link with long requests in flight on both replicas, then restore it
REQ=()
for i in $(seq 8); do request "$WORK/cut$i" 480 & REQ+=($!); done
sleep 0.1
in_ns br ip link set h3 down
in_ns h3 ip link set eth0 down
wait_status "replica serving-h3 dead:" 20
for i in $(seq 9 16); do request "$WORK/cut$i" & REQ+=($!); done
wait "${REQ[@]}"
ok=0 err=0
for i in $(seq 16); do
    c=$(cat "$WORK/cut$i.code")
    case "$c" in
    200) grep -q '"text"' "$WORK/cut$i.body" || fail "request $i: 200 without text"; ok=$((ok + 1)) ;;
    4?? | 5??)
        grep -q '"error"' "$WORK/cut$i.body" || fail "request $i: $c without an error body"
        [ "$err" -gt 0 ] || echo "an error during the cut: $c $(cat "$WORK/cut$i.body")"
        err=$((err + 1))
        ;;
    *) fail "request $i during the cut was lost: $c" ;;
    esac
done
echo "during the cut: $ok completed, $err failed with an error"
[ "$ok" -ge 8 ] || fail "only $ok of 16 requests completed while h2 was up"

in_ns h3 ip link set eth0 up
in_ns br ip link set h3 up

wait_status "replica serving-h3 alive:" 30
for i in $(seq 4); do request "$WORK/after$i"; done
for i in $(seq 4); do
    [ "$(cat "$WORK/after$i.code")" = 200 ] || fail "after the restore, request $i: $(cat "$WORK/after$i.code")"
done
# The gateway's view (GET /health, no key needed): h3 alive again there too (its mailbox may still
# hold the gateway's routing id on the connection the cut left stale, which keeps a new connection
# claiming it unheard: the gateway dials afresh each liveness period until one is heard), and h3
# serves alone once h2 is gone (killed: no goodbye).
health_shows() { # pattern seconds: 0 once GET /health shows pattern
    local until=$((SECONDS + $2))
    while [ "$SECONDS" -lt "$until" ]; do
        in_ns br curl -s --max-time 2 http://10.77.0.1:8000/health >"$WORK/health.json" 2>/dev/null || true
        grep -Eq "$1" "$WORK/health.json" && return 0
        sleep 0.1
    done
    return 1
}
health_shows '"tcp://10.77.0.3:7080", *"state": *"alive"' 20 ||
    fail "the gateway still sees h3 dead 20 s after the controller saw it alive: $(cat "$WORK/health.json")"
kill -KILL "${PIDS[1]}"
wait "${PIDS[1]}" 2>/dev/null || true
wait_status "replica serving-h2 dead:" 20
health_shows '"tcp://10.77.0.2:7080", *"state": *"dead"' 20 || fail "the gateway never saw h2 dead"
for i in $(seq 4); do request "$WORK/alone$i"; done
for i in $(seq 4); do
    [ "$(cat "$WORK/alone$i.code")" = 200 ] ||
        fail "h3 alone, request $i: $(cat "$WORK/alone$i.code") $(cat "$WORK/alone$i.body")"
done
echo "the gateway routes to h3 again: it served alone"
# --- step 10: back up the controller's state while it runs (sqlite3's online backup)
if command -v sqlite3 >/dev/null; then
    sqlite3 "$WORK/state/controller.db" ".backup '$WORK/controller-backup.db'"
    n=$(sqlite3 "$WORK/controller-backup.db" "select count(*) from events where event = 'replica_dead'")
    [ "$n" -ge 1 ] || fail "the backup holds $n replica_dead events, want h3's at least"
fi
echo "ok: 3 hosts, layers fetched across hosts, h3 cut and rejoined"
