#!/usr/bin/env python3
"""Replays answers of the adaptive arm under the plan that computed them (issue 13's check that a
conversion happens at a step boundary without disturbing running requests: their plans stay
pinned, so each answer must equal the same request run again under that plan, with no other plan in the engine).

Inputs, all written by bench/adaptive/run.sh:
  --outputs ARM.jsonl   dsla-loadgen --outputs: each completed request's body, its response id,
                        system_fingerprint ("REPLICA:plan-ID") and text
  --serve-log FILE      dsla-serve's log at --log-level info: one "request id=... served_by=...
                        preemptions=N" line per answer (docs/http.md, "Logs")
  --url, --admin, --dslactl   the running server: its controller's history ("plan_adopted"
                        events name each plan id's DSLA layers), the plans to pin, the replays

Only answers with preemptions=0 ran wholly under one plan, so only those are replayed. For each
plan (up to --plans of them, the ones that served most), the controller is pinned with
`manual layers=K` (the adaptive policy converts prefixes of the layer order, so K names the
plan); the check refuses a replay whose own plan (read back from history) has other layers.
Then up to --per-plan answers of that plan are sent again, together, and compared byte for
byte. Prints one JSON object (and writes it to --out): checked, equal, and per differing answer
the index, plan and the first differing character.

Greedy decoding on a GPU is not always batch-invariant (a reduction over another batch shape can
flip a near tie), so a difference is reported with where it starts; the run's table says how
many answers matched exactly.
"""
import argparse
import concurrent.futures
import json
import re
import subprocess
import sys
import time
import urllib.request

ADOPTED = re.compile(r"plan_adopted\s+(\S+): plan (\d+), (\d+) DSLA layers \[([^\]]*)\]")
REQUEST = re.compile(r"request id=(\S+) choice=\d+ status=200 .*served_by=(\S+) preemptions=(\d+)")


def plans_from_history(args):
    """{(replica, plan id): (K, [layer numbers])} from the controller's plan_adopted events. A
    replica's plan 1 is the all-attention plan its engine starts with (runtime/serve/engine.h),
    adopted before any event."""
    plans = {}
    for line in ctl(args, "--limit", "5000", "history").splitlines():
        m = ADOPTED.search(line)
        if m:
            layers = [int(x.split("@")[0]) for x in m.group(4).split(",") if x]
            plans[(m.group(1), int(m.group(2)))] = (int(m.group(3)), layers)
    for replica in {r for r, _ in plans}:
        plans.setdefault((replica, 1), (0, []))
    return plans


def preemptions_from_log(path):
    """{response id: (served_by, preemptions)} from the per-request log lines."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = REQUEST.search(line)
            if m:
                out[m.group(1)] = (m.group(2), int(m.group(3)))
    return out


def split_fingerprint(fp):
    replica, _, plan = fp.rpartition(":plan-")
    return (replica, int(plan)) if replica and plan.isdigit() else None


def post(url, body, timeout):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def ctl(args, *words):
    return subprocess.run([args.dslactl, "--admin", args.admin, *words], check=True,
                          capture_output=True, text=True).stdout


def pin(args, k):
    """Pins the controller at k DSLA layers and waits until the replica runs them, idle."""
    ctl(args, "policy", "set", "manual", f"layers={k}")
    deadline = time.time() + args.settle_s
    while time.time() < deadline:
        s = ctl(args, "status")
        if f"runs {k} DSLA layers" in s and "queue 0, running 0," in s:
            return True
        time.sleep(0.5)
    return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--serve-log", required=True)
    ap.add_argument("--url", required=True, help="http://HOST:PORT")
    ap.add_argument("--admin", required=True)
    ap.add_argument("--dslactl", default="dslactl")
    ap.add_argument("--path", default="/v1/completions")
    ap.add_argument("--plans", type=int, default=4)
    ap.add_argument("--per-plan", type=int, default=4)
    ap.add_argument("--settle-s", type=float, default=120)
    ap.add_argument("--timeout-s", type=float, default=600)
    ap.add_argument("--out")
    args = ap.parse_args()

    preempted = preemptions_from_log(args.serve_log)
    by_plan = {}
    skipped = {"preempted": 0, "no log line": 0, "no fingerprint": 0}
    with open(args.outputs, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            key = split_fingerprint(rec.get("system_fingerprint", ""))
            seen = preempted.get(rec.get("id"))
            if key is None:
                skipped["no fingerprint"] += 1
            elif seen is None:
                skipped["no log line"] += 1
            elif seen[1] > 0:
                skipped["preempted"] += 1
            else:
                by_plan.setdefault(key, []).append(rec)

    plans = plans_from_history(args)
    for replica, _ in by_plan:
        plans.setdefault((replica, 1), (0, []))
    chosen = sorted(by_plan, key=lambda k: -len(by_plan[k]))[: args.plans]
    result = {"checked": 0, "equal": 0, "differ": [], "skipped": skipped,
              "plans": {f"{r}:plan-{p}": len(by_plan[(r, p)]) for r, p in by_plan}}
    for key in chosen:
        if key not in plans:
            result.setdefault("unknown_plans", []).append(f"{key[0]}:plan-{key[1]}")
            continue
        k, layers = plans[key]
        if not pin(args, k):
            result.setdefault("unsettled", []).append(k)
            continue
        recs = by_plan[key]
        step = max(1, len(recs) // args.per_plan)
        picked = recs[::step][: args.per_plan]
        bodies = [dict(rec["request"], stream=False) for rec in picked]
        # sent together: the plan is what is checked, and the answers were batched when served too
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: post(args.url + args.path, b, args.timeout_s), bodies))
        for rec, got in zip(picked, answers):
            text = got["choices"][0].get("text")
            if text is None:
                text = got["choices"][0]["message"]["content"]
            replay_key = split_fingerprint(got.get("system_fingerprint", ""))
            replay_plan = plans_from_history(args).get(replay_key, (0, None))[1]
            if replay_key is not None and replay_key[1] == 1:
                replay_plan = []
            result["checked"] += 1
            if replay_plan is not None and replay_plan != layers:
                result["differ"].append({"index": rec["index"], "plan": f"{key[0]}:plan-{key[1]}",
                                         "why": f"the replay ran layers {replay_plan}, "
                                                f"the answer {layers}"})
            elif text == rec["text"]:
                result["equal"] += 1
            else:
                at = next((i for i, (a, b) in enumerate(zip(text, rec["text"])) if a != b),
                          min(len(text), len(rec["text"])))
                result["differ"].append({"index": rec["index"], "plan": f"{key[0]}:plan-{key[1]}",
                                         "dsla_layers": k, "first_difference_at": at,
                                         "chars": len(rec["text"])})
    ctl(args, "policy", "set", "manual", "layers=0")
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0 if result["checked"] and not result["differ"] else 1


if __name__ == "__main__":
    sys.exit(main())
