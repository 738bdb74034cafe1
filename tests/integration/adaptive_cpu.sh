#!/usr/bin/env bash
# bench/adaptive/run.sh on the CPU (SHAPE=tiny, DEVICE=cpu): the adaptive arm under a short
# 0.5x -> 4x -> 0.5x load, the threshold policy converting and reverting while requests run, then
# the pinned-plan replay (bench/adaptive/replay.py). The CPU engine is batch-invariant, so every
# replayed answer must equal its served text exactly, and the control (the same answers under the
# other plan) must not: the check can tell a plan apart. Also: nothing lost, the report's table.
# Usage: adaptive_cpu.sh BIN_DIR DATA_DIR. Skips (77) without python3 or the tokenizer.
set -euo pipefail
BIN=$(cd "${1:-build/bin}" && pwd)
DATA=${2:-${DSLA_TEST_DATA:-../shared}}
root=$(cd "$(dirname "$0")/../.." && pwd)
skip() { echo "skipped: $*"; exit 77; }
command -v python3 >/dev/null || skip "no python3"
[ -f "$DATA/models/tinystories-11M-hf/tokenizer.json" ] || skip "no $DATA/models/tinystories-11M-hf"
WORK=$(mktemp -d /tmp/dsla-adaptive-cpu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Three fixed ports below the kernel's ephemeral range (32768 up): the other tests bind port 0
# and their clients take ephemeral ports, so none of them can hold these (a CI run once drew
# 37903-37905 here and found one taken).
port=$((20000 + $$ % 12000))
export BIN WORK OUT=$WORK/out SHAPE=tiny DEVICE=cpu ARMS=adaptive RATE=2 TAIL_S=3
export PROFILE=0:0.5,3:0.5,5:4,15:4,17:0.5,20:0.5 PROMPT=lognormal:100:0.5:16:120
# One sequence at a time and outputs of ~500 tokens: about 0.15-0.3 s each on an idle 2-core
# machine, so the 8 req/s peak queues requests (and converts) however fast the machine is, while
# the 1 req/s ends leave it idle (and revert). The first version ran 512 sequences at once and
# never queued on CI's faster idle machine.
export MAX_RUNNING=1 OUTPUT=lognormal:500:0.3:200:900 TOKENIZER=$DATA/models/tinystories-11M-hf
# Both layers convertible, so that the replay pins a plan above the manual policy's default
# max_ratio of 0.5 (the 7B runs pin 24 of 32; replay.py once waited out every such plan).
export LAYER_VERSIONS=2
export POLICY="threshold max_ratio=1 step=1 queue_high=4 queue_low=0 wait_high_ms=1000 wait_low_ms=300 cooldown_ms=2000"
export HTTP=127.0.0.1:$port ADMIN=tcp://127.0.0.1:$((port + 1)) ENDPOINT=tcp://127.0.0.1:$((port + 2))
bash "$root/bench/adaptive/run.sh" || { tail -n 30 "$OUT/serve.log"; exit 1; }
python3 - "$OUT" <<'PY' || { tail -n 30 "$OUT/serve.log"; exit 1; }
import json, sys
out = sys.argv[1]
rep = json.load(open(f"{out}/adaptive.json"))
assert rep["errors"] == 0 and rep["completed"] > 0, rep
r = json.load(open(f"{out}/replay.json"))
print("replay:", json.dumps({k: r[k] for k in ("checked", "equal", "near tie", "differs", "unresolved")}))
print("control:", json.dumps(r.get("control")))
assert r["checked"] >= 4 and r["equal"] == r["checked"], "an answer differs from its pinned plan's replay"
assert not r.get("unsettled"), f"plans {r.get('unsettled')} never settled when pinned"
c = r["control"]
assert c["checked"] == r["checked"] and c["equal"] < c["checked"], "the control cannot tell plans apart"
plans = {k for k in r["plans"]}
assert len(plans) >= 2, "the policy never changed the plan"
PY
grep -q "plan_adopted.* 1 DSLA layers" "$OUT/history.log" || { echo "FAIL: no conversion in the history"; exit 1; }
grep -q "plan_adopted.* 0 DSLA layers" "$OUT/history.log" || { echo "FAIL: no revert in the history"; exit 1; }
python3 "$root/bench/adaptive/report.py" "$OUT" --profile "$PROFILE" --png "$WORK/plot.png" --num-layers 2
echo "ok: adaptive arm on the CPU, replayed answers equal under their plans"
