#!/usr/bin/env python3
"""Latency over time from a load test's timeline CSV (dsla-loadgen --timeline, dsla bench
--timeline; columns in runtime/serve/load_report.h).

Prints, per window of arrival time, the requests that arrived, how they ended, and their TTFT,
TPOT and E2E percentiles: where a run went from keeping up to queueing shows as TTFT climbing
window by window. With matplotlib installed it also draws TTFT, TPOT and E2E against arrival
time (refusals and errors marked) into --out.

usage: bench/plot_latency.py TIMELINE.csv [--windows N] [--out latency.png]
"""
import argparse
import csv
import sys


def percentile(values, q):
    """Linear interpolation between order statistics (numpy's default), as load_report.c."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = q * (len(v) - 1)
    i = int(pos)
    return v[i] + (pos - i) * (v[i + 1] - v[i]) if i + 1 < len(v) else v[-1]


def read(path):
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            def num(k):
                return float(r[k]) if r.get(k) else None
            rows.append({"arrival": float(r["arrival_s"]), "ttft": num("ttft_s"),
                         "tpot": num("tpot_s"), "e2e": num("e2e_s"), "gap": num("max_gap_s"),
                         "status": r["status"]})
    return rows


def text_summary(rows, windows):
    end = max(r["arrival"] for r in rows)
    width = end / windows if end > 0 else 1.0
    print(f"{'arrivals s':>14} {'n':>5} {'ok':>5} {'refused':>7} {'errors':>6} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'gap p99':>9} {'E2E p99':>9}   (ms)")
    for w in range(windows):
        lo, hi = w * width, (w + 1) * width
        sel = [r for r in rows if lo <= r["arrival"] < hi or (w == windows - 1 and r["arrival"] == hi)]
        ok = [r for r in sel if r["status"] == "completed"]
        ttft = [1e3 * r["ttft"] for r in ok if r["ttft"] is not None]
        tpot = [1e3 * r["tpot"] for r in ok if r["tpot"] is not None]
        e2e = [1e3 * r["e2e"] for r in ok if r["e2e"] is not None]
        gap = [1e3 * r["gap"] for r in ok if r.get("gap") is not None]
        print(f"{lo:6.1f}-{hi:6.1f} {len(sel):5d} {len(ok):5d} "
              f"{sum(r['status'] == 'refused' for r in sel):7d} "
              f"{sum(r['status'] in ('error', 'not_sent') for r in sel):6d} "
              f"{percentile(ttft, .5):9.1f} {percentile(ttft, .99):9.1f} "
              f"{percentile(tpot, .5):9.2f} {percentile(gap, .99):9.1f} "
              f"{percentile(e2e, .99):9.1f}")


def plot(rows, out):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: text summary only", file=sys.stderr)
        return
    ok = [r for r in rows if r["status"] == "completed"]
    bad = [r for r in rows if r["status"] != "completed"]
    fig, axes = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    for ax, key, label in zip(axes, ("ttft", "tpot", "e2e"), ("TTFT ms", "TPOT ms", "E2E ms")):
        pts = [(r["arrival"], 1e3 * r[key]) for r in ok if r[key] is not None]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, label="completed")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        for r in bad:
            ax.axvline(r["arrival"], color="red" if r["status"] == "refused" else "black",
                       alpha=0.15, lw=0.8)
    axes[-1].set_xlabel("arrival s (red lines: refused, black: errors)")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print(f"wrote {out}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("timeline")
    ap.add_argument("--windows", type=int, default=10, help="time windows in the summary")
    ap.add_argument("--out", default="latency.png", help="the plot (with matplotlib)")
    args = ap.parse_args()
    rows = read(args.timeline)
    if not rows:
        sys.exit(f"{args.timeline}: no requests")
    text_summary(rows, max(1, args.windows))
    plot(rows, args.out)


if __name__ == "__main__":
    main()
