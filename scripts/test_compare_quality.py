#!/usr/bin/env python3
"""scripts/compare_quality.py on the stored reports of recipe (e): the H200's fp32 run is within
issue 12's bounds of the CPU run; the same report with one layer's held-out loss 3% off, one
perplexity 2% off, or another order, is not."""
import copy
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_quality  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUALITY = os.path.join(ROOT, "docs", "quality")


def load(name):
    with open(os.path.join(QUALITY, name)) as f:
        return json.load(f)


def verdict(ref, other):
    return compare_quality.compare(ref, other, 0.02, 0.01, out=io.StringIO())


def main():
    cpu = load("tinystories-11M-hf-e-s1234.json")
    gpu = load("tinystories-11M-hf-e-s1234-cuda-f32.json")
    assert len(cpu["converted"]) == 6, "recipe (e) converts all six layers"
    assert verdict(cpu, gpu) == 0, "the H200 run is within bounds"
    worse = copy.deepcopy(gpu)
    worse["converted"][3]["eval_mse"] *= 1.03
    assert verdict(cpu, worse) == 1, "a held-out loss 3% off is out of bounds"
    worse = copy.deepcopy(gpu)
    worse["converted"][5]["eval_ppl"] *= 1.02
    assert verdict(cpu, worse) == 1, "a perplexity 2% off is out of bounds"
    other = copy.deepcopy(gpu)
    other["converted"][0], other["converted"][1] = other["converted"][1], other["converted"][0]
    assert verdict(cpu, other) == 2, "another order is another run"
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
