#!/usr/bin/env python3
"""PyTorch baselines for bench_e2e_cuda on the same GPU: the same shapes, one JSON object per line.

- prefill attention, causal, bf16, B=1, 32 heads x 128: torch's scaled_dot_product_attention
  (whatever backend it picks, named in the output) and eager Llama attention (matmul, fp32 softmax,
  matmul) where its T x T scores fit;
- a randomly initialised transformers LlamaForCausalLM with the Llama-2-7B config in bf16 (a
  hand-written layer stack when transformers is missing): prefill at batch 1 and 8, and decode
  steps with its KV cache at batch 1, 8 and 64 over contexts 1K and 4K (eager, as served by
  transformers' forward).

Timed with CUDA events after warm-up; median of repetitions.
"""
import json
import math
import sys
import time

import torch
import torch.nn.functional as F

DEV = torch.cuda.get_device_name(0)
H, D_HEAD = 32, 128


def emit(**kw):
    kw["device"] = DEV
    print(json.dumps(kw), flush=True)


def timed(fn, reps=10, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def sdpa_backend(q, k, v):
    """Which fused kernel SDPA runs for these inputs (first that accepts them)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                     ("efficient", SDPBackend.EFFICIENT_ATTENTION)):
        try:
            with sdpa_kernel([be]):
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return name, be
        except RuntimeError:
            continue
    return "math", None


def attention():
    from torch.nn.attention import sdpa_kernel
    for T in (1024, 4096, 8192, 16384):
        q, k, v = (torch.randn(1, H, T, D_HEAD, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        flops = 4.0 * H * D_HEAD * T * (T + 1) / 2
        ms = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
        emit(what="pytorch_sdpa", shape=dict(batch=1, tokens=T, heads=H, head_dim=D_HEAD, causal=True,
                                             backend="default"), median_ms=round(ms, 4),
             tflops=round(flops / (ms * 1e9), 1))
        name, be = sdpa_backend(q, k, v)
        for other in ("cudnn", "flash"):
            from torch.nn.attention import SDPBackend
            b = SDPBackend.CUDNN_ATTENTION if other == "cudnn" else SDPBackend.FLASH_ATTENTION
            try:
                with sdpa_kernel([b]):
                    ms2 = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True))
                emit(what="pytorch_sdpa", shape=dict(batch=1, tokens=T, heads=H, head_dim=D_HEAD,
                                                     causal=True, backend=other),
                     median_ms=round(ms2, 4), tflops=round(flops / (ms2 * 1e9), 1))
            except RuntimeError as e:
                emit(what="pytorch_sdpa", shape=dict(tokens=T, backend=other), error=str(e)[:120])
        if T <= 8192:
            mask = torch.full((T, T), float("-inf"), device="cuda").triu(1)

            def eager():
                s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D_HEAD) + mask
                p = torch.softmax(s.float(), dim=-1).to(q.dtype)
                return torch.matmul(p, v)
            ms3 = timed(eager, reps=5)
            emit(what="pytorch_eager_attention", shape=dict(batch=1, tokens=T, heads=H,
                                                            head_dim=D_HEAD, causal=True),
                 median_ms=round(ms3, 4), tflops=round(flops / (ms3 * 1e9), 1))
        del q, k, v
        torch.cuda.empty_cache()


def llama7b():
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except Exception as e:  # noqa: BLE001
        emit(what="note", text=f"transformers unavailable ({e}); model rows skipped")
        return
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=32768, torch_dtype=torch.bfloat16)
    t0 = time.time()
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16)
    model.eval()
    emit(what="pytorch_model", shape=dict(layers=32, hidden=4096), attn_impl=cfg._attn_implementation,
         init_s=round(time.time() - t0, 1),
         weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
    with torch.no_grad():
        for B, C in ((1, 1024), (8, 1024), (1, 4096), (8, 4096), (64, 1024)):
            ids = torch.randint(0, 32000, (B, C), device="cuda")
            try:
                if B * C <= 8192:
                    ms = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), reps=3, warmup=1)
                    emit(what="pytorch_prefill", shape=dict(batch=B, context=C), median_ms=round(ms, 2),
                         tokens_per_s=round(B * C / (ms * 1e-3)))
                out = model(ids, use_cache=True, logits_to_keep=1)
                pkv = out.past_key_values
                tok = out.logits[:, -1:].argmax(-1)
                times = []
                for i in range(12):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    out = model(tok, past_key_values=pkv, use_cache=True)
                    b.record()
                    b.synchronize()
                    pkv = out.past_key_values
                    tok = out.logits[:, -1:].argmax(-1)
                    if i >= 2:
                        times.append(a.elapsed_time(b))
                times.sort()
                ms = times[len(times) // 2]
                emit(what="pytorch_decode", shape=dict(batch=B, context=C), median_ms=round(ms, 3),
                     tokens_per_s=round(B / (ms * 1e-3), 1))
                del pkv, out
            except torch.cuda.OutOfMemoryError:
                emit(what="pytorch_decode", shape=dict(batch=B, context=C), skipped="out of memory")
            torch.cuda.empty_cache()


if __name__ == "__main__":
    attention()
    if "--attention-only" not in sys.argv:
        llama7b()
