#!/usr/bin/env python3
"""Hugging Face `generate` baseline for `dsla bench --device cuda --random-model 7b`, on the same GPU.

The paper's prototype serves one request at a time through transformers' `generate`; this runs the
same shape of workload that way: a randomly initialised LlamaForCausalLM with the Llama-2-7B config
in bf16 (SDPA attention, DynamicCache), requests of --context tokens (prompt context - output, then
--output-len greedy tokens), one after another. Per request: TTFT (a streamer's clock at the first
new token) and TPOT; overall output tokens/s. Then the largest batch of such sequences that
`generate` holds at once: the KV arithmetic (2 x layers x hidden x 2 bytes per token) over the free
memory, checked by generating 2 tokens at that batch and stepping down (x 0.6) on out-of-memory.

One JSON object per line; a short table last.
"""
import argparse
import json
import time

import torch


def emit(**kw):
    print(json.dumps(kw), flush=True)


class FirstTokenClock:
    """A generate streamer that notes when each new token arrives (the first put is the prompt)."""

    def __init__(self):
        self.times = []
        self.prompt_seen = False

    def put(self, value):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=8192)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--max-batch-tries", type=int, default=4)
    a = ap.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers

    dev = torch.cuda.get_device_name(0)
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=max(4096, a.context), dtype=torch.bfloat16)
    t0 = time.time()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    model.eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    emit(what="hf_model", device=dev, transformers=transformers.__version__, torch=torch.__version__,
         attn_impl=model.config._attn_implementation, weight_bytes=weight_bytes,
         init_s=round(time.time() - t0, 1))
    prompt = a.context - a.output_len
    gen = dict(do_sample=False, max_new_tokens=a.output_len, min_new_tokens=a.output_len,
               pad_token_id=0)
    with torch.no_grad():
        ids = torch.randint(3, 32000, (1, prompt), device="cuda")
        model.generate(ids, **dict(gen, max_new_tokens=4, min_new_tokens=4))  # warm-up, full length
        torch.cuda.synchronize()
        ttfts, tpots, total_tokens = [], [], 0
        start = time.perf_counter()
        for r in range(a.requests):
            ids = torch.randint(3, 32000, (1, prompt), device="cuda")
            clock = FirstTokenClock()
            t_submit = time.perf_counter()
            out = model.generate(ids, streamer=clock, **gen)
            torch.cuda.synchronize()
            n = out.shape[1] - prompt
            total_tokens += n
            ttft = clock.times[0] - t_submit
            tpot = (clock.times[-1] - clock.times[0]) / max(1, len(clock.times) - 1)
            ttfts.append(ttft)
            tpots.append(tpot)
            emit(what="hf_request", device=dev, prompt=prompt, output=n, ttft_ms=round(1e3 * ttft, 1),
                 tpot_ms=round(1e3 * tpot, 2))
        elapsed = time.perf_counter() - start
        ttfts.sort()
        tpots.sort()
        tput = dict(what="hf_throughput", device=dev, requests=a.requests, prompt=prompt,
                    output=a.output_len, batch=1, elapsed_s=round(elapsed, 3),
                    output_tokens_per_s=round(total_tokens / elapsed, 2),
                    ttft_ms_p50=round(1e3 * ttfts[len(ttfts) // 2], 1),
                    tpot_ms_p50=round(1e3 * tpots[len(tpots) // 2], 2))
        emit(**tput)

        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info()
        kv_per_seq = 2 * cfg.num_hidden_layers * cfg.hidden_size * 2 * a.context
        arith = free // kv_per_seq
        emit(what="hf_capacity_arithmetic", device=dev, free_gib=round(free / 2**30, 2),
             kv_bytes_per_seq=kv_per_seq, fit_by_arithmetic=int(arith))
        fits = 0
        b = int(arith)
        for _ in range(a.max_batch_tries):
            if b < 1:
                break
            try:
                ids = torch.randint(3, 32000, (b, prompt), device="cuda")
                t = time.perf_counter()
                model.generate(ids, attention_mask=torch.ones_like(ids),
                               **dict(gen, max_new_tokens=2, min_new_tokens=2))
                torch.cuda.synchronize()
                emit(what="hf_batch_try", device=dev, batch=b, ok=True,
                     seconds=round(time.perf_counter() - t, 1),
                     peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 1))
                fits = b
                break
            except torch.cuda.OutOfMemoryError:
                emit(what="hf_batch_try", device=dev, batch=b, ok=False)
                del ids
                torch.cuda.empty_cache()
                b = int(b * 0.6)
        emit(what="hf_capacity", device=dev, context=a.context, max_batch_that_ran=fits,
             fit_by_arithmetic=int(arith))
    print(f"\nHF generate baseline: {dev}, 7B config random bf16, {a.requests} x ({prompt} prompt + "
          f"{a.output_len} output), batch 1")
    print(f"  output tok/s {tput['output_tokens_per_s']}, TTFT p50 {tput['ttft_ms_p50']} ms, "
          f"TPOT p50 {tput['tpot_ms_p50']} ms; {a.context}-token sequences at once: "
          f"{fits} ran (arithmetic {int(arith)})")


if __name__ == "__main__":
    main()
