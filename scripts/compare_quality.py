#!/usr/bin/env python3
"""Holds one `dsla distill --report` against another of the same run on another device: issue 12's
acceptance for the GPU (per-layer held-out losses within 2% of the CPU run's, hybrid perplexities
within 1%), on every layer the reports converted.

usage: scripts/compare_quality.py REFERENCE.json OTHER.json [--mse-tol 0.02] [--ppl-tol 0.01]

Both reports must have converted the same layers in the same order (the measured order comes from
probes, so a different order already says the runs differ). Prints one line per layer and exits 1
when any layer is out of bounds, 2 when the reports do not describe the same run.
"""
import argparse
import json
import sys


def rel(a, b):
    return abs(a - b) / abs(a) if a else abs(b)


def compare(ref, other, mse_tol, ppl_tol, out=sys.stdout):
    """0 when other is within the bounds of ref, 1 when a layer is not, 2 when the runs differ."""
    a, b = ref["converted"], other["converted"]
    if [c["layer"] for c in a] != [c["layer"] for c in b]:
        print(f"the runs converted different layers: {[c['layer'] for c in a]} against "
              f"{[c['layer'] for c in b]}", file=out)
        return 2
    worst = 0
    t = rel(ref["teacher_ppl"], other["teacher_ppl"])
    print(f"teacher ppl {ref['teacher_ppl']:.6f} {other['teacher_ppl']:.6f} ({t:.1e})", file=out)
    if t > ppl_tol:
        worst = 1
    for x, y in zip(a, b):
        m, p = rel(x["eval_mse"], y["eval_mse"]), rel(x["eval_ppl"], y["eval_ppl"])
        bad = m > mse_tol or p > ppl_tol
        print(f"k {x['k']} layer {x['layer']}: held-out mse {x['eval_mse']:.6g} {y['eval_mse']:.6g} "
              f"({m:.1e}), hybrid ppl {x['eval_ppl']:.6f} {y['eval_ppl']:.6f} ({p:.1e})"
              f"{'  OUT OF BOUNDS' if bad else ''}", file=out)
        if bad:
            worst = 1
    print("within bounds" if worst == 0 else "out of bounds", file=out)
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference")
    ap.add_argument("other")
    ap.add_argument("--mse-tol", type=float, default=0.02)
    ap.add_argument("--ppl-tol", type=float, default=0.01)
    args = ap.parse_args()
    with open(args.reference) as f:
        ref = json.load(f)
    with open(args.other) as f:
        other = json.load(f)
    return compare(ref, other, args.mse_tol, args.ppl_tol)


if __name__ == "__main__":
    sys.exit(main())
