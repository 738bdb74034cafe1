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

Greedy decoding on a GPU is not always batch-invariant: another batch shape rounds bf16 GEMMs
differently and can flip a near tie, after which the two texts go their own ways. So replays ask
for logprobs (the top --top alternatives per token) and a differing answer is judged at its first
difference: the token the served answer took there must be among the replay's alternatives within
--tie-nats of the replay's own choice, under the same plan. Such an answer is a "near tie"
(consistent with rounding); anything else "differs". A request run under another plan (the harm
this check looks for) leaves the served answer's first different token well below the top. To
show that the check can tell the two apart, each replayed answer is also sent under another plan
of the run (--control, on by default), where it must be judged "differs" or "near tie" far more
rarely than under its own plan.
"""
import argparse
import concurrent.futures
import json
import re
import subprocess
import sys
import time
import urllib.error
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


def judge(served, got, tie_nats):
    """How a replayed completion choice `got` (with legacy logprobs) compares to the served text:
    (verdict, gap, at): ("equal", None, None), ("near tie", gap, at), ("differs", gap, at), or
    ("unresolved", None, at) when the served token at the first difference is not among the
    replay's alternatives' texts (it is then at least as far below as the last of them, and counts
    as differing). gap: the replay's own choice's logprob minus the served token's, in nats; at:
    the byte offset of the first difference."""
    text = got.get("text", "")
    if text == served:
        return "equal", None, None
    a, b = text.encode(), served.encode()
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lp = got.get("logprobs") or {}
    offsets, tokens = lp.get("text_offset") or [], lp.get("tokens") or []
    chosen, tops = lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
    j = max((k for k, off in enumerate(offsets) if off <= at), default=None)
    if j is None or j >= len(tops) or not tops[j] or chosen[j] is None:
        return "unresolved", None, at
    rest = b[offsets[j]:]
    gaps = [chosen[j] - v for t, v in tops[j].items()
            if t and t != tokens[j] and "\ufffd" not in t and rest.startswith(t.encode())]
    if not gaps:
        return "unresolved", None, at
    gap = min(gaps)
    return ("near tie" if gap <= tie_nats else "differs"), gap, at


def split_fingerprint(fp):
    replica, _, plan = fp.rpartition(":plan-")
    return (replica, int(plan)) if replica and plan.isdigit() else None


def post(url, body, timeout):
    """POSTs body; a 429 (the server refused it after its queue wait) is sent again after a pause,
    as a client backing off would, until timeout seconds have passed."""
    deadline = time.time() + timeout
    while True:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read().decode())
        except urllib.error.HTTPError as e:
            if e.code != 429 or time.time() > deadline:
                raise
        time.sleep(0.5)


def ctl(args, *words):
    return subprocess.run([args.dslactl, "--admin", args.admin, *words], check=True,
                          capture_output=True, text=True).stdout


def pin(args, k):
    """Pins the controller at k DSLA layers and waits until the replica runs them, idle. The manual
    policy keeps its own max_ratio (default 0.5), which would cap k; pinning lifts it."""
    ctl(args, "policy", "set", "manual", f"layers={k}", "max_ratio=1")
    deadline = time.time() + args.settle_s
    while time.time() < deadline:
        s = ctl(args, "status")
        if f"runs {k} DSLA layers" in s and "queue 0, running 0," in s:
            return True
        time.sleep(0.5)
    return False


def replay(args, k, picked):
    """Pins k DSLA layers and sends the picked answers' requests again, together (they were
    batched when served too), with logprobs; None when the plan did not settle."""
    if not pin(args, k):
        return None
    bodies = [dict(rec["request"], stream=False, logprobs=args.top) for rec in picked]
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: post(args.url + args.path, b, args.timeout_s), bodies))


def replay_layers(args, got):
    """The layers of the plan that computed a replay, from its fingerprint and the history."""
    key = split_fingerprint(got.get("system_fingerprint", ""))
    if key is not None and key[1] == 1:
        return []
    return plans_from_history(args).get(key, (0, None))[1]


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
    ap.add_argument("--top", type=int, default=5, help="logprobs alternatives per replayed token")
    ap.add_argument("--tie-nats", type=float, default=0.1,
                    help="a first difference within this of the replay's choice is a near tie")
    ap.add_argument("--no-control", dest="control", action="store_false",
                    help="skip replaying each answer under another plan too")
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
    verdicts = ("equal", "near tie", "differs", "unresolved")
    result = {"checked": 0, **{v: 0 for v in verdicts}, "tie_nats": args.tie_nats, "gaps": [],
              "first_difference_at": [],
              "differ": [], "skipped": skipped,
              "plans": {f"{r}:plan-{p}": len(by_plan[(r, p)]) for r, p in by_plan}}
    control = {"checked": 0, **{v: 0 for v in verdicts}, "gaps": [], "first_difference_at": []}
    picks = {}
    for key in chosen:
        if key not in plans:
            result.setdefault("unknown_plans", []).append(f"{key[0]}:plan-{key[1]}")
            continue
        recs = by_plan[key]
        step = max(1, len(recs) // args.per_plan)
        picks[key] = recs[::step][: args.per_plan]
    for key, picked in picks.items():
        k, layers = plans[key]
        answers = replay(args, k, picked)
        if answers is None:
            result.setdefault("unsettled", []).append(k)
            continue
        for rec, got in zip(picked, answers):
            result["checked"] += 1
            replay_plan = replay_layers(args, got)
            if replay_plan is not None and replay_plan != layers:
                result["differs"] += 1
                result["differ"].append({"index": rec["index"], "plan": f"{key[0]}:plan-{key[1]}",
                                         "why": f"the replay ran layers {replay_plan}, "
                                                f"the answer {layers}"})
                continue
            verdict, gap, at = judge(rec["text"], got["choices"][0], args.tie_nats)
            result[verdict] += 1
            if gap is not None:
                result["gaps"].append(round(gap, 4))
            if at is not None:
                result["first_difference_at"].append(at)
            if verdict in ("differs", "unresolved"):
                result["differ"].append({"index": rec["index"], "plan": f"{key[0]}:plan-{key[1]}",
                                         "dsla_layers": k, "verdict": verdict, "gap": gap,
                                         "first_difference_at": at, "chars": len(rec["text"])})
    # The control: the same answers under the plan of the run farthest from their own.
    ks = sorted({plans[key][0] for key in picks})
    for key, picked in picks.items() if args.control and len(ks) > 1 else ():
        k = plans[key][0]
        other = max(ks, key=lambda x: abs(x - k))
        answers = replay(args, other, picked)
        for rec, got in zip(picked, answers or ()):
            verdict, gap, at = judge(rec["text"], got["choices"][0], args.tie_nats)
            control["checked"] += 1
            control[verdict] += 1
            if gap is not None:
                control["gaps"].append(round(gap, 4))
            if at is not None:
                control["first_difference_at"].append(at)
    if control["checked"]:
        result["control"] = control
    ctl(args, "policy", "set", "manual", "layers=0")
    line = json.dumps(result)
    print(line)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    return 0 if result["checked"] and result["equal"] + result["near tie"] == result["checked"] else 1


if __name__ == "__main__":
    sys.exit(main())
