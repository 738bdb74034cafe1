#!/usr/bin/env python3
"""The peer for the DSLA chunked kernels: flash-linear-attention's chunk_gla on the same GPU.

One DSLA layer holds two gated linear-attention states (history and recency), so its chunked
forward does the work of two chunk_gla calls; the rows printed here are one call, and "x2" rows
the two calls that bench_cuda_kernels --only dsla's dsla_chunked_fwd / _bwd rows are held to
(issue 12: within 1.3x). Shapes match ours: one sequence, 32 heads, d = 128 for keys and values,
bf16 inputs, per-key log-gates (logsigmoid of random / 16, as fla's tests use), T = 2K-32K.

flash-linear-attention (MIT) is unpacked from its tarball in DSLA_TEST_DATA/anchors (or --fla)
to a temporary folder and imported from there: a yardstick run side by side, never a source.
Timed with CUDA events after warm-up (Triton autotunes on the first calls); median of
repetitions. One JSON object per line, as bench_cuda_kernels prints.

usage: bench/peer_chunk_gla.py [--fla TARBALL] [--lengths 2048,4096,...] [--reps 10]
"""
import argparse
import glob
import json
import os
import sys
import tarfile
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_baseline import timed  # noqa: E402  (CUDA events after warm-up, the median)

H, D = 32, 128


def load_fla(tarball):
    dest = tempfile.mkdtemp(prefix="fla-")
    with tarfile.open(tarball) as t:
        t.extractall(dest, filter="data")
    roots = glob.glob(os.path.join(dest, "*", "fla"))
    if not roots:
        sys.exit(f"peer_chunk_gla: no fla package in {tarball}")
    sys.path.insert(0, os.path.dirname(roots[0]))
    from fla.ops.gla import chunk_gla
    return chunk_gla, os.path.basename(tarball)


def main():
    data = os.environ.get("DSLA_TEST_DATA", os.path.join(os.path.dirname(__file__), "../../shared"))
    found = sorted(glob.glob(os.path.join(data, "anchors", "flash-linear-attention-*.tar.xz")))
    ap = argparse.ArgumentParser()
    ap.add_argument("--fla", default=found[-1] if found else None)
    ap.add_argument("--lengths", default="2048,4096,8192,16384,32768")
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    if not a.fla:
        sys.exit(f"peer_chunk_gla: no flash-linear-attention tarball in {data}/anchors (--fla)")
    chunk_gla, source = load_fla(a.fla)
    dev = torch.cuda.get_device_name(0)
    torch.manual_seed(0)
    for T in (int(x) for x in a.lengths.split(",")):
        q, k, v = (torch.randn(1, T, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        g = F.logsigmoid(torch.randn(1, T, H, D, device="cuda")) / 16
        g = g.to(torch.bfloat16)
        for t in (q, k, v, g):
            t.requires_grad_(True)
        do = torch.randn_like(v)

        def fwd():
            with torch.no_grad():
                chunk_gla(q, k, v, g)

        def fwd_bwd():
            o, _ = chunk_gla(q, k, v, g)
            o.backward(do)

        shape = f"T={T} H={H} d={D} in=bf16"
        for what, fn in (("chunk_gla_fwd", fwd), ("chunk_gla_fwd_bwd", fwd_bwd)):
            ms = timed(fn, reps=a.reps)
            for calls in (1, 2):
                print(json.dumps({"what": what + ("_x2" if calls == 2 else ""), "shape": shape,
                                  "device": dev, "median_ms": round(ms * calls, 4),
                                  "peer": source}), flush=True)
        del q, k, v, g, do
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
