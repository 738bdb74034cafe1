#!/usr/bin/env python3
"""The adaptive scenario's table and plots, from bench/adaptive/run.sh's OUT directory.

Per arm (all attention, static half-DSLA plan, adaptive threshold policy): goodput under the TTFT
and TPOT targets over the whole run and over the peak (the arrivals while the rate multiplier is at
its maximum), requests completed, refused and failed, TTFT and TPOT percentiles, the most sequences
admitted at once and the most KV blocks in use (from the controller's status, once a second), the
plan changes seen and how long each took from the controller's target to the replica running it.
Prints a Markdown table; with matplotlib, draws per arm the TTFT and TPOT of every request against
its arrival, and the running sequences, queue and DSLA layers against time, into OUT/adaptive.png.

usage: bench/adaptive/report.py OUT [--profile 0:0.5,20:0.5,50:4,75:4,105:0.5,120:0.5]
"""
import argparse
import csv
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from plot_latency import percentile  # noqa: E402  (bench/plot_latency.py: load_report.c's rule)

STATUS_LOAD = re.compile(r"load: queue (\d+), running (\d+), waiting tokens \d+, longest wait (\d+) "
                         r"ms, KV blocks (\d+)/(\d+), state slots (\d+)/(\d+)")
STATUS_PLAN = re.compile(r"plan \d+ runs (\d+) DSLA layers \[[^\]]*\]; target (-?\d+)")


def read_status(path):
    """[(time, dsla layers, target, queue, running, kv used, kv total, slots used)]"""
    rows, t, plan = [], None, None
    for line in open(path, errors="replace"):
        if line.startswith("@ "):
            t, plan = float(line[2:]), None
            continue
        m = STATUS_PLAN.search(line)
        if m:
            plan = (int(m.group(1)), int(m.group(2)))
        m = STATUS_LOAD.search(line)
        if m and t is not None and plan is not None:
            q, run, _, kv, kvt, sl, _ = (int(x) for x in m.groups())
            rows.append((t, plan[0], plan[1], q, run, kv, kvt, sl))
    return rows


def read_arms(path):
    arms = {}
    for line in open(path):
        _, name, what, t = line.split()  # "arm NAME start|end TIME"
        arms.setdefault(name, {})[what] = float(t)
    return arms


def peak_window(profile):
    pts = [tuple(float(x) for x in p.split(":")) for p in profile.split(",")]
    top = max(m for _, m in pts)
    at = [t for t, m in pts if m == top]
    return min(at), max(at), top


def plan_changes(status):
    """Changes of the replica's DSLA layer count, and the seconds from the controller's target
    first differing from the plan to the replica reporting the target."""
    changes, waits, asked = [], [], None
    for i, (t, n, target, *_rest) in enumerate(status):
        if i and n != status[i - 1][1]:
            changes.append((t, status[i - 1][1], n))
        if target != n and asked is None:
            asked = t
        if target == n and asked is not None:
            waits.append(t - asked)
            asked = None
    return changes, waits


def summarize(out, arm, span, status_all, peak, slo):
    rows = list(csv.DictReader(open(os.path.join(out, arm + ".csv"))))
    rep = json.load(open(os.path.join(out, arm + ".json")))
    status = [s for s in status_all if span["start"] <= s[0] <= span.get("end", 1e30)]
    lo, hi, _ = peak
    at_peak = [r for r in rows if lo <= float(r["arrival_s"]) < hi]

    def met(r):
        return (r["status"] == "completed" and r["ttft_s"] and float(r["ttft_s"]) * 1e3 <= slo[0]
                and (not r["tpot_s"] or float(r["tpot_s"]) * 1e3 <= slo[1]))
    changes, waits = plan_changes(status)
    ttft = [float(r["ttft_s"]) * 1e3 for r in rows if r["status"] == "completed" and r["ttft_s"]]
    tpot = [float(r["tpot_s"]) * 1e3 for r in rows if r["status"] == "completed" and r["tpot_s"]]
    return {
        "arm": arm, "sent": rep["sent"], "completed": rep["completed"], "refused": rep["refused"],
        "errors": rep["errors"], "goodput": rep["goodput_rps"],
        "peak_goodput": sum(met(r) for r in at_peak) / (hi - lo) if hi > lo else float("nan"),
        "peak_offered": len(at_peak) / (hi - lo) if hi > lo else float("nan"),
        "ttft_p50": percentile(ttft, .5), "ttft_p99": percentile(ttft, .99),
        "tpot_p50": percentile(tpot, .5), "tpot_p99": percentile(tpot, .99),
        "max_running": max((s[4] for s in status), default=0),
        "max_kv": max((s[5] for s in status), default=0), "kv_total": status[0][6] if status else 0,
        "max_dsla": max((s[1] for s in status), default=0),
        "changes": len(changes), "change_wait_s": max(waits) if waits else float("nan"),
        "rows": rows, "status": status, "t0": span["start"],
    }


def table(results):
    print("| arm | sent | completed | refused | errors | goodput req/s | at peak: offered, goodput "
          "req/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | most running | most KV blocks | most "
          "DSLA layers | plan changes (slowest, s) |")
    print("|" + "---|" * 13)
    for r in results:
        print(f"| {r['arm']} | {r['sent']} | {r['completed']} | {r['refused']} | {r['errors']} | "
              f"{r['goodput']:.2f} | {r['peak_offered']:.2f}, {r['peak_goodput']:.2f} | "
              f"{r['ttft_p50']:.0f} / {r['ttft_p99']:.0f} | {r['tpot_p50']:.1f} / "
              f"{r['tpot_p99']:.1f} | {r['max_running']} | {r['max_kv']}/{r['kv_total']} | "
              f"{r['max_dsla']} | {r['changes']} ({r['change_wait_s']:.1f}) |")


def plot(results, path, peak, num_layers):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no plot)", file=sys.stderr)
        return
    lo, hi, _ = peak
    fig, axes = plt.subplots(3, len(results), figsize=(5 * len(results), 10), squeeze=False)
    for k, r in enumerate(results):
        ok = [x for x in r["rows"] if x["status"] == "completed" and x["ttft_s"]]
        bad = [x for x in r["rows"] if x["status"] != "completed"]
        ax = axes[0][k]
        ax.axvspan(lo, hi, color="0.92", label="peak arrivals")
        ax.scatter([float(x["arrival_s"]) for x in ok], [float(x["ttft_s"]) for x in ok], s=3,
                   label="TTFT s")
        ax.scatter([float(x["arrival_s"]) for x in ok],
                   [float(x["tpot_s"]) * 10 if x["tpot_s"] else 0 for x in ok], s=3,
                   label="TPOT x10 s")
        if bad:
            ax.scatter([float(x["arrival_s"]) for x in bad], [0] * len(bad), marker="x", c="r",
                       label="refused/failed")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(f"{r['arm']}: latency by arrival")
        ax.set_xlabel("arrival s")
        ax.legend(fontsize=7)
        ts = [s[0] - r["t0"] for s in r["status"]]
        ax = axes[1][k]
        ax.plot(ts, [s[4] for s in r["status"]], label="running")
        ax.plot(ts, [s[3] for s in r["status"]], label="queued")
        ax2 = ax.twinx()
        ax2.step(ts, [s[1] for s in r["status"]], where="post", c="k", label="DSLA layers")
        ax2.set_ylim(-0.5, num_layers + 0.5)
        ax2.set_ylabel("DSLA layers")
        ax.set_xlabel("s")
        ax.set_title(f"{r['arm']}: admitted, queued, plan")
        ax.legend(fontsize=7, loc="upper left")
        ax2.legend(fontsize=7, loc="upper right")
        ax = axes[2][k]
        total = r["kv_total"] or 1
        ax.plot(ts, [100.0 * s[5] / total for s in r["status"]], label="KV blocks in use %")
        ax.set_ylim(0, 100)
        ax2 = ax.twinx()
        ax2.plot(ts, [s[7] for s in r["status"]], c="tab:green", label="DSLA state slots")
        ax2.set_ylabel("state slots")
        ax.set_xlabel("s")
        ax.set_title(f"{r['arm']}: KV pool ({total} blocks) and DSLA states")
        ax.legend(fontsize=7, loc="upper left")
        ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--profile", default="0:0.5,10:0.5,20:4,70:4,85:0.5,100:0.5")  # run.sh's
    ap.add_argument("--slo-ttft-ms", type=float, default=3000)
    ap.add_argument("--slo-tpot-ms", type=float, default=100)
    ap.add_argument("--png", default=None)
    ap.add_argument("--num-layers", type=int, default=32, help="the model's layers (plot scale)")
    a = ap.parse_args()
    status = read_status(os.path.join(a.out, "status.log"))
    arms = read_arms(os.path.join(a.out, "arms.log"))
    peak = peak_window(a.profile)
    results = [summarize(a.out, arm, span, status, peak, (a.slo_ttft_ms, a.slo_tpot_ms))
               for arm, span in arms.items() if os.path.exists(os.path.join(a.out, arm + ".csv"))]
    table(results)
    replay = os.path.join(a.out, "replay.json")
    if os.path.exists(replay):
        with open(replay, encoding="utf-8") as f:
            r = json.load(f)
        print(f"\npinned-plan replay (bench/adaptive/replay.py): of {r['checked']} answers run "
              f"again alone under their plan, {r['equal']} equal, {r.get('near tie', 0)} parted at a "
              f"near tie (within {r.get('tie_nats', 0)} nats), {r.get('differs', 0)} differ, "
              f"{r.get('unresolved', 0)} unresolved; skipped {r['skipped']}; gaps {r.get('gaps')}")
        for d in r["differ"]:
            print(f"  differs: {d}")
        c = r.get("control")
        if c:
            print(f"control, the same answers under another plan: of {c['checked']}, {c['equal']} "
                  f"equal, {c['near tie']} near tie, {c['differs']} differ, {c['unresolved']} "
                  f"unresolved; gaps {c['gaps']}")
    plot(results, a.png or os.path.join(a.out, "adaptive.png"), peak, a.num_layers)


if __name__ == "__main__":
    main()
