#!/bin/bash
# The adaptive loop on one GPU (issue 13): a Llama-2-7B-shaped model of random weights served by
# dsla-serve with its controller, under a load that ramps from 0.5x to 4x to 0.5x of a base rate,
# measured in three arms on the same server: all attention (manual layers=0), a static plan of
# half the layers DSLA (manual layers=N/2), and the adaptive threshold policy. Per arm it writes the
# load generator's report (ARM.json) and per-request timeline (ARM.csv); for the whole run, the
# controller's status once a second (status.log: plan, queue, running, KV blocks and state slots
# over time) and its event history (history.log). bench/adaptive/report.py makes the table and
# the plots from them.
#
# usage: bench/adaptive/run.sh   (environment, with defaults:)
#   BIN=build/bin  TOKENIZER=../shared/models/tinystories-11M-hf  WORK=/tmp/dsla-adaptive  OUT=WORK/out
#   RATE=3 (the base rate, req/s: about the all-attention capacity of the default pool, measured
#     on an H200 with a 0.25x -> 3x ramp of 2.5 req/s: TTFT climbs from about 3 req/s)
#   PROFILE=0:0.5,10:0.5,20:4,70:4,85:0.5,100:0.5 (multiplier over seconds: a 50 s peak, since
#     sequences keep the plan they were admitted under and the first H200 run's 25 s peak ended
#     before the all-attention sequences that filled the arena had finished)
#   ARMS="attention static adaptive"
#   MARGIN_MIB=(the card's memory - 42000) (device memory left out of the KV pool: the pool is
#     what is left, ~28 GiB, so that memory, not compute, caps the all-attention arm at a load the
#     load generator and one GPU's prefill can offer 4x of; the same for every arm)
#   PROMPT=lognormal:1000:0.5:256:3000  OUTPUT=lognormal:1000:0.3:256:2000  (tokens)
#   SLO_TTFT_MS=3000 SLO_TPOT_MS=100  POLICY="threshold ... step=8 cooldown_ms=2000" (memory_low
#     keeps its default, 0.8: no revert while the arena is full; below: 24
#     layers in three steps; the first run's step=4 with a 3 s cooldown took 54 s to get there)
#   QUEUE_WAIT_MS=3000: a request not admitted within the TTFT target is refused (429), in every
#     arm, so that an overloaded server sheds what it cannot serve in time instead of queueing
#     everyone past the target
#   MAX_RUNNING=512: sequences a replica runs at once (the CPU test caps it so that its short
#     peak queues requests, and so converts, on a fast machine too)
#   LAYER_VERSIONS=24 (3/4 of the layers: the adaptive policy's max_ratio); the static arm runs HALF
#   TAIL_S=30: seconds the status is still polled after the last arm (the adaptive arm's reverts)
#   LOG_LEVEL=info (debug adds a line per LOAD_REPORT sent: their intervals under load, issue 9)
#   REPLAY_ARGS: more arguments for replay.py (e.g. "--plans 3 --per-plan 2": fewer answers, for a
#     decode-heavy run whose answers take ~10 s each to replay)
#   REPLAY=1: then replay some of the adaptive arm's answers, under the plan that
#     computed it (bench/adaptive/replay.py, replay.json): pinned plans leave answers unchanged,
#     up to near ties where the GPU's rounding differs between batches
#   HTTP=127.0.0.1:18090 ADMIN=tcp://127.0.0.1:17091 ENDPOINT=tcp://127.0.0.1:17090 (addresses)
set -u
root=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$root/build/bin}
TOKENIZER=${TOKENIZER:-$root/../shared/models/tinystories-11M-hf}
WORK=${WORK:-/tmp/dsla-adaptive}
OUT=${OUT:-$WORK/out}
RATE=${RATE:-3}
PROFILE=${PROFILE:-0:0.5,10:0.5,20:4,70:4,85:0.5,100:0.5}
ARMS=${ARMS:-attention static adaptive}
# The KV pool held near 28 GiB on any card: what the card has beyond ~42 GB (weights 12.6 GiB,
# the pool, activations and workspaces) is left out (100000 MiB on a 141 GB H200, as measured).
if [ -z "${MARGIN_MIB:-}" ]; then
    total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
    MARGIN_MIB=$(( ${total:-142000} > 42000 ? ${total:-142000} - 42000 : 2048 ))
fi
PROMPT=${PROMPT:-lognormal:1000:0.5:256:3000}
OUTPUT=${OUTPUT:-lognormal:1000:0.3:256:2000}
SLO_TTFT_MS=${SLO_TTFT_MS:-3000}
SLO_TPOT_MS=${SLO_TPOT_MS:-100}
SHAPE=${SHAPE:-7b}     # tiny (2 layers) with DEVICE=cpu smoke-tests this script without a GPU
DEVICE=${DEVICE:-cuda}
LAYERS=$([ "$SHAPE" = tiny ] && echo 2 || echo 32)
HALF=${HALF:-$((LAYERS / 2))}
LAYER_VERSIONS=${LAYER_VERSIONS:-$((LAYERS * 3 / 4))}
QUEUE_WAIT_MS=${QUEUE_WAIT_MS:-3000}
TAIL_S=${TAIL_S:-30}
MAXCTX=${MAXCTX:-$([ "$SHAPE" = tiny ] && echo 1024 || echo 4096)}
POLICY=${POLICY:-threshold max_ratio=0.75 step=8 queue_high=4 queue_low=0 wait_high_ms=1000 wait_low_ms=300 cooldown_ms=2000}
LOG_LEVEL=${LOG_LEVEL:-info}
HTTP=${HTTP:-127.0.0.1:18090} ADMIN=${ADMIN:-tcp://127.0.0.1:17091}
ENDPOINT=${ENDPOINT:-tcp://127.0.0.1:17090}
mkdir -p "$WORK" "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/run.log"; }

# 1. The model and its layer versions (teacher-initialised: the arms measure capacity, not
# quality; docs/quality.md measures what trained layers cost).
model=$WORK/model-$SHAPE layers=$WORK/layers-$SHAPE
if [ ! -f "$model/config.json" ]; then
    log "writing the random $SHAPE model"
    "$BIN/dsla" random-model --shape "$SHAPE" --tokenizer "$TOKENIZER" --out "$model" || exit 1
fi
if [ ! -f "$layers/done" ]; then
    log "writing $LAYER_VERSIONS teacher-initialised layer versions"
    order=$(seq -s, $((LAYERS - 1)) -1 0)
    "$BIN/dsla" distill --model "$model" --steps 0 --order given --layer-order "$order" \
        --layers "$LAYER_VERSIONS" --out "$layers" >"$OUT/distill.log" 2>&1 || { tail "$OUT/distill.log"; exit 1; }
    touch "$layers/done"
fi

# 2. The server: serving actor on the GPU, controller, gateway, HTTP.
rm -f "$layers/controller.db"
gpu=()
[ "$DEVICE" = cuda ] && gpu=(--gpu-margin-mib "$MARGIN_MIB" --gpu-warmup --max-context "$MAXCTX")
log "starting dsla-serve"
"$BIN/dsla-serve" --device "$DEVICE" "${gpu[@]}" --model "$model" --layers "$layers" \
    --policy "manual layers=0" --max-running "${MAX_RUNNING:-512}" --max-queue-wait-ms "$QUEUE_WAIT_MS" \
    --endpoint "$ENDPOINT" --http "$HTTP" --admin "$ADMIN" --report-ms 500 \
    --log-level "$LOG_LEVEL" >"$OUT/serve.log" 2>&1 &
server=$!
trap 'kill $poller $server 2>/dev/null; wait' EXIT
ctl() { "$BIN/dslactl" --admin "$ADMIN" "$@"; }
for _ in $(seq 600); do
    "$BIN/dsla-loadgen" --url "http://$HTTP" --requests 1 --prompt-len 8 --output-len 1 \
        >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { log "dsla-serve died"; tail "$OUT/serve.log"; exit 1; }
    sleep 1
done
log "serving"
(while :; do echo "@ $(date +%s.%N)"; ctl status 2>&1; sleep 1; done) >"$OUT/status.log" &
poller=$!

# Waits until the replica runs n DSLA layers and nothing is queued or running.
settle() {
    for _ in $(seq 300); do
        s=$(ctl status 2>/dev/null)
        echo "$s" | grep -q "runs $1 DSLA layers" && echo "$s" | grep -q "queue 0, running 0," && return 0
        sleep 1
    done
    log "plan did not settle at $1 layers"
}

for arm in $ARMS; do
    case $arm in
        attention) ctl policy set manual layers=0 >/dev/null; settle 0 ;;
        static) ctl policy set manual layers=$HALF >/dev/null; settle $HALF ;;
        adaptive) ctl policy set manual layers=0 >/dev/null; settle 0; ctl policy set $POLICY >/dev/null ;;
    esac
    log "arm $arm: $(ctl policy get 2>&1 | tail -1)"
    echo "arm $arm start $(date +%s.%N)" >>"$OUT/arms.log"
    "$BIN/dsla-loadgen" --url "http://$HTTP" --tokenizer "$model" --rate "$RATE" \
        --rate-profile "$PROFILE" --prompt-len "$PROMPT" --output-len "$OUTPUT" --max-context "$MAXCTX" \
        --slo-ttft-ms "$SLO_TTFT_MS" --slo-tpot-ms "$SLO_TPOT_MS" --connections 1024 --seed 7 \
        --timeline "$OUT/$arm.csv" --outputs "$OUT/$arm.jsonl" >"$OUT/$arm.json" 2>"$OUT/$arm.txt"
    echo "arm $arm end $(date +%s.%N)" >>"$OUT/arms.log"
    grep -E '^  (sent|completed|refused|errors|goodput|TTFT|TPOT)' "$OUT/$arm.txt" | tee -a "$OUT/run.log"
done
sleep "$TAIL_S"
ctl --limit 5000 history >"$OUT/history.log" 2>&1
# 3. The pinned-plan check: answers of the adaptive arm replayed under their own plans.
if [ -f "$OUT/adaptive.jsonl" ] && [ "${REPLAY:-1}" = 1 ]; then
    log "replaying adaptive answers under their plans"
    python3 "$root/bench/adaptive/replay.py" --outputs "$OUT/adaptive.jsonl" --serve-log "$OUT/serve.log" \
        --url "http://$HTTP" --admin "$ADMIN" --dslactl "$BIN/dslactl" --out "$OUT/replay.json" \
        ${REPLAY_ARGS:-} 2>&1 | tee -a "$OUT/run.log"
fi
ctl policy set manual layers=0 >/dev/null
log "done"
