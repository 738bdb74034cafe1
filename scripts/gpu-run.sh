#!/bin/bash
# The GPU suite on a machine that has the CUDA driver but not this project's libraries: unpacks the
# tarball of scripts/gpu-pack.sh, then runs the chosen stages, each logging to $OUT/<stage>.log and
# printing one summary line (and, for benchmarks, the key rows).
#
# usage: OUT=dir scripts/gpu-run.sh [TARBALL]      (default .devdeps/gpu.tar.xz)
# STAGES (default "harness forward serve serve_actor controller_gpu load_gpu gemm e2e torch"):
#   harness  tests/gpu/test_ops_harness (every op against the CPU)
#   forward  tests/gpu/test_gpu_forward;  serve  tests/gpu/test_gpu_serve
#   serve_actor  tests/gpu/test_gpu_serve_actor (dsla-serve --device cuda as a process)
#   controller_gpu  tests/integration/test_controller with the served side on the GPU
#   load_gpu  tests/integration/test_serve_load on the GPU (300 long requests for 30 s: liveness,
#            report intervals, threshold conversion; the engine steps on its own thread)
#   gemm     bench_cuda_kernels --only gemm;  dsla  --only dsla;  kernels  all of them
#   dsla_ncu_detail  one launch of DSLA_NCU_KERNEL (default dsla_tc_bwd) at DSLA_NCU_TOKENS_DETAIL
#            (4096) tokens under ncu's warp-state, scheduler, occupancy and memory sections: why
#            it stalls
#   quality_kl  recipe (e) with --kl-weight W for W in QUALITY_KL_WEIGHTS (0.25 0.5 1), fp32
#   tc_walk  the harness and --only dsla with DSLA_CUDA_TC_WALK=1 (dsla_chunked_tc.cu's fused state
#            walk in place of delta + scan: opt-in until it is faster)
#   tc_bwd_one  the same with DSLA_CUDA_TC_BWD_PAIRS=0 (dsla_tc_bwd with one warp per sub-chunk)
#   tc_out_one  the same with DSLA_CUDA_TC_OUT_PAIRS=0 (dsla_tc_out with one warp per sub-chunk)
#   dsla_ncu  bench_cuda_kernels --only dsla --dsla-tokens T under ncu (DSLA_NCU_TOKENS, default
#            "4096 32768"): each chunked kernel's gpu__time_duration, summed per kernel
#   gla_peer  --only dsla, then bench/peer_chunk_gla.py (flash-linear-attention's chunk_gla, the
#            peer of the DSLA chunked kernels, from shared/anchors) on the same card; GLA_BASELINE=1
#            adds --only dsla with DSLA_CUDA_TC_PATH=0 (dsla_chunked.cu's kernels alone); GLA_LENGTHS
#            (default 2048,...,32768) and GLA_LIMIT (seconds, default 300) bound the peer's run
#   attention  bench_e2e_cuda attention (prefill attention, ours and cuDNN's; batch-1 decode)
#   e2e      bench_e2e_cuda (the whole 7B table, ~3 minutes on an H200)
#   torch    bench/pytorch_baseline.py --attention-only (SDPA on the same card)
#   torch_model  bench/pytorch_baseline.py (SDPA, eager attention and transformers' 7B model)
#   serving  dsla bench --device cuda --random-model 7b (8K sequences per card at 0-75% DSLA)
#   capacity the same without the fixed workload: the admission runs only (one arena's capacity)
#   serving_load  the same model at 0 and 50% DSLA under 90 s of chat-preset Poisson arrivals
#                 (goodput, TTFT/TPOT percentiles; docs/load.md)
#   loadgen  dsla-serve --device cuda (tinystories-11M, bf16) under dsla-loadgen over HTTP
#   serve_7b  dsla-serve --device cuda --random-model 7b (tinystories-11M's tokenizer) under
#            dsla-loadgen over HTTP: chat preset at LOAD_RATE (12) req/s for 30 s, context 4096
#   distill_gpu  tests/gpu/test_distill_gpu (GPU distillation against the CPU, tinystories-11M)
#   quality_gpu  dsla distill --device cuda of docs/quality.md's recipe (e) on tinystories-11M (all
#                six layers; QUALITY_DTYPES, default f32; the JSON report as quality-gpu-<dtype>.json),
#                fp32 then held to the CPU's report by scripts/compare_quality.py
#   eval_gpu     tests/gpu/test_eval_gpu (dsla eval's perplexities on the GPU against the CPU)
#   prompt_lp    tests/gpu/test_gpu_prompt_lp (echo with logprobs: the GPU engine's prompt logprobs
#                against the CPU engine's, scoring chunks, two plan groups in a step, a deployment),
#                then tests/integration/test_eval_echo on the GPU (dsla-serve --device cuda's echo
#                over HTTP against dsla eval --device cuda --per-token, fp32; log prompt_lp_echo)
#   distiller_gpu  tests/gpu/test_distiller_gpu (the distiller and serving on one GPU: in one dsla-serve,
#                  and a --serving-only GPU replica in another process)
#   distill_7b   bench_distill_cuda (one chained layer's training at Llama-2-7B's layer shape)
#   adaptive  bench/adaptive/run.sh (a random 7B-shaped model on disk, its controller, three arms:
#            all attention, static half DSLA, the threshold policy, under a ramping load; RATE,
#            PROFILE, ARMS, MARGIN_MIB pass through, ADAPTIVE_LIMIT (580 s) bounds the stage; the
#            logs come back as adaptive.tgz)
#   nccl     tests/gpu/test_nccl_bcast (one rank on one GPU; owner and receiver with two GPUs)
#   nccl_bench  bench_nccl_bcast (a 7B layer to 1, 3, 7 receivers: needs that many GPUs)
#   decode_mixed  bench_cuda_kernels --only decode (paged decode attention, 64-256 mixed lengths)
#   e2e_serving   bench_e2e_cuda serving (decode 128 x 1K, steps mixing 128 decodes and a prompt)
#   trace    dsla bench --device cuda --random-model 7b --rate R: a chat-like Poisson trace with
#            the step accounting (TRACE="runs rate label ..." triples, default before and after
#            the decode-run fix at 8 req/s and after at 12; TRACE_S seconds of arrivals, 20)
# cuDNN is taken from PyTorch's wheel when python3 can import it, else from the loader's path.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
tarball=${1:-$root/.devdeps/gpu.tar.xz}
OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
work=$(mktemp -d)
tar -C "$work" -xJf "$tarball"
D=$work/gpu
export LD_LIBRARY_PATH=$D/lib:${LD_LIBRARY_PATH:-} DSLA_TEST_DATA=$D/shared DSLA_BIN=$D/bin
export NCCL_NVLS_ENABLE=0 # never NVLink multicast on shared machines
cudnn=$(python3 -c "import nvidia.cudnn as c; print(list(c.__path__)[0] + '/lib')" 2>/dev/null)
[ -n "$cudnn" ] && [ -d "$cudnn" ] && export LD_LIBRARY_PATH=$cudnn:$LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version \
    --format=csv,noheader
stage() {
    local name=$1 limit=$2
    shift 2
    local t0
    t0=$(date +%s)
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name rc=$? $(($(date +%s) - t0)) s"
}
# docs/quality.md's recipe (e) on the GPU, tinystories-11M: recipe_e STAGE NAME [extra flags]; the
# report goes to $OUT/NAME.json.
recipe_e() {
    local name=$1 report=$2
    shift 2
    stage "$name" 300 "$D/bin/dsla" distill --device cuda "$@" \
        --model "$D/shared/models/tinystories-11M-hf" \
        --data "$D/shared/data/tinystories_train_sample.txt" \
        --eval-data "$D/shared/data/tinystories_valid.txt" --eval-sequences 32 \
        --seed 1234 --out "/tmp/$report" --report "$OUT/$report.json" \
        --order measured --probe-steps 30 --lr 5e-3 --steps 400 --seq-len 256 \
        --batch 8 --max-sequences 0
}
for s in ${STAGES:-harness forward serve serve_actor controller_gpu load_gpu gemm e2e torch}; do
    case $s in
    harness) stage harness 300 "$D/bin/test_ops_harness"
        grep -v ' ok$' "$OUT/harness.log" | grep -E 'FAIL|err' | head ;;
    forward) stage forward 300 "$D/bin/test_gpu_forward"; grep -E 'rel err|PASSED|FAILED' "$OUT/forward.log" ;;
    serve) stage serve 300 "$D/bin/test_gpu_serve"; grep -E 'PASSED|FAILED' "$OUT/serve.log" ;;
    serve_actor) stage serve_actor 300 "$D/bin/test_gpu_serve_actor"
        grep -E 'cuda|PASSED|FAILED|error' "$OUT/serve_actor.log" ;;
    controller_gpu) DSLA_TEST_SERVE_DEVICE=cuda stage controller_gpu 300 "$D/bin/test_controller"
        grep -E 'PASSED|FAILED|error|differ' "$OUT/controller_gpu.log" ;;
    load_gpu) DSLA_TEST_SERVE_DEVICE=cuda stage load_gpu 300 "$D/bin/test_serve_load"
        grep -E 'load:|LOAD_REPORTs|PASSED|FAILED|error' "$OUT/load_gpu.log" ;;
    gemm) stage gemm 300 "$D/bin/bench_cuda_kernels" --only gemm ;;
    dsla) stage dsla 300 "$D/bin/bench_cuda_kernels" --only dsla ;;
    gla_peer) # our chunked DSLA rows and flash-linear-attention's chunk_gla, in the same call
        stage dsla 300 "$D/bin/bench_cuda_kernels" --only dsla
        grep -E 'dsla_chunked_(fwd|fwd_bwd)".*in=bf16' "$OUT/dsla.log" | grep tflops
        stage gla_peer "${GLA_LIMIT:-300}" python3 "$root/bench/peer_chunk_gla.py" \
            --lengths "${GLA_LENGTHS:-2048,4096,8192,16384,32768}"
        grep -E '_x2' "$OUT/gla_peer.log"; tail -3 "$OUT/gla_peer.log"
        if [ "${GLA_BASELINE:-0}" = 1 ]; then # dsla_chunked.cu's own kernels, for before/after
            DSLA_CUDA_TC_PATH=0 stage dsla_old 300 "$D/bin/bench_cuda_kernels" --only dsla
            grep -E 'dsla_chunked_(fwd|fwd_bwd)".*in=bf16' "$OUT/dsla_old.log" | grep tflops
        fi ;;
    dsla_ncu) # each chunked DSLA kernel's time under Nsight Compute (where the bench's time goes)
        for T in ${DSLA_NCU_TOKENS:-4096 32768}; do
            stage "dsla_ncu_$T" 300 ncu --clock-control none --metrics gpu__time_duration.sum \
                -k "regex:dsla_(state_prep|state_pass|fwd_out|bwd_chunk|dalpha|tc_delta|tc_scan|tc_walk|tc_out|tc_bwd)" \
                --print-summary per-kernel "$D/bin/bench_cuda_kernels" --only dsla --dsla-tokens "$T"
            grep -E 'dsla_[a-z_]+<|gpu__time_duration|"what"' "$OUT/dsla_ncu_$T.log" | head -40
        done ;;
    dsla_ncu_detail) # where one chunked DSLA kernel's time goes (stall reasons, occupancy)
        stage dsla_ncu_detail 300 ncu --clock-control none -k "regex:${DSLA_NCU_KERNEL:-dsla_tc_bwd}" \
            -c 1 --section WarpStateStats --section SchedulerStats --section Occupancy \
            --section LaunchStats --section MemoryWorkloadAnalysis --section SpeedOfLight \
            "$D/bin/bench_cuda_kernels" --only dsla --dsla-tokens "${DSLA_NCU_TOKENS_DETAIL:-4096}"
        grep -E 'Stall|Warp Cycles|Issued|Eligible|Occupancy|Throughput|Registers|Shared Memory' \
            "$OUT/dsla_ncu_detail.log" | head -40 ;;
    tc_walk | tc_bwd_one | tc_out_one) # a variant of dsla_chunked_tc.cu: harness, dsla rows
        var=DSLA_CUDA_TC_WALK val=1
        [ "$s" = tc_bwd_one ] && var=DSLA_CUDA_TC_BWD_PAIRS val=0
        [ "$s" = tc_out_one ] && var=DSLA_CUDA_TC_OUT_PAIRS val=0
        export "$var"=$val
        stage "harness_$s" 300 "$D/bin/test_ops_harness"
        grep -E 'dsla_|FAIL' "$OUT/harness_$s.log" | grep -v ' ok$' | head -20
        stage "dsla_$s" 300 "$D/bin/bench_cuda_kernels" --only dsla
        grep -iE 'dsla_chunked_(fwd|bwd|fwd_bwd)".*in=bf16' "$OUT/dsla_$s.log" | grep tflops
        unset "$var" ;;
    kernels) stage kernels 600 "$D/bin/bench_cuda_kernels" ;;
    attention) stage attention 300 "$D/bin/bench_e2e_cuda" attention ;;
    e2e) stage e2e 600 "$D/bin/bench_e2e_cuda" ;;
    torch) stage torch 300 python3 "$root/bench/pytorch_baseline.py" --attention-only ;;
    torch_model) stage torch_model 600 python3 "$root/bench/pytorch_baseline.py" ;;
    distill_gpu) stage distill_gpu 300 "$D/bin/test_distill_gpu"
        grep -E 'relative difference|teacher ppl|->|PASSED|FAILED|error|rror' "$OUT/distill_gpu.log" ;;
    quality_gpu) # docs/quality.md's recipe (e) on the GPU: all six layers of tinystories-11M,
        # fp32 (QUALITY_DTYPES), the report beside the logs for the GPU column
        for dt in ${QUALITY_DTYPES:-f32}; do
            recipe_e "quality_gpu_$dt" quality-gpu-$dt --dtype "$dt"
            tail -12 "$OUT/quality_gpu_$dt.log"
            # fp32 is held to the CPU run of the same recipe (issue 12: losses 2%, perplexities 1%)
            if [ "$dt" = f32 ]; then
                python3 "$root/scripts/compare_quality.py" \
                    "$root/docs/quality/tinystories-11M-hf-e-s1234.json" "$OUT/quality-gpu-$dt.json"
                echo "== quality_gpu_${dt}_against_cpu rc=$?"
            fi
        done ;;
    quality_kl) # recipe (e) plus the logit KL term at each of QUALITY_KL_WEIGHTS, fp32 on the GPU
        for w in ${QUALITY_KL_WEIGHTS:-0.25 0.5 1}; do
            recipe_e "quality_kl_$w" quality-kl-$w --dtype f32 --kl-weight "$w"
            tail -8 "$OUT/quality_kl_$w.log"
        done ;;
    eval_gpu) stage eval_gpu 300 "$D/bin/test_eval_gpu"
        grep -E 'ppl|relative|PASSED|FAILED|error|rror' "$OUT/eval_gpu.log" ;;
    prompt_lp) stage prompt_lp 300 "$D/bin/test_gpu_prompt_lp"
        grep -E 'prompt logprobs|deployed|without the rows|PASSED|FAILED|error|rror' "$OUT/prompt_lp.log"
        DSLA_TEST_SERVE_DEVICE=cuda stage prompt_lp_echo 300 "$D/bin/test_eval_echo"
        grep -E 'differ|PASSED|FAILED|error|rror' "$OUT/prompt_lp_echo.log" ;;
    distiller_gpu) stage distiller_gpu 300 "$D/bin/test_distiller_gpu"
        grep -E 'GPU|layer [0-9]|PASSED|FAILED|error|rror|differ' "$OUT/distiller_gpu.log" ;;
    distill_7b) stage distill_7b 300 "$D/bin/bench_distill_cuda" ;;
    nccl) NCCL_NVLS_ENABLE=0 stage nccl 120 "$D/bin/test_nccl_bcast"
        grep -E 'rank|GB/s|PASSED|FAILED|SKIP|error|rror' "$OUT/nccl.log" ;;
    nccl_bench) NCCL_NVLS_ENABLE=0 stage nccl_bench 300 "$D/bin/bench_nccl_bcast" ;;
    serving) stage serving 600 "$D/bin/dsla" bench --device cuda --random-model 7b ;;
    capacity) stage capacity 300 "$D/bin/dsla" bench --device cuda --random-model 7b --requests 0 ;;
    serving_load) stage serving_load 600 "$D/bin/dsla" bench --device cuda --random-model 7b \
        --ratios 0,50 --rate ${LOAD_RATE:-2} --preset chat --duration 90 --context 8192 \
        --slo-ttft-ms 2000 --slo-tpot-ms 100 --timeline "$OUT/serving_load" ;;
    loadgen)
        M=$D/shared/models/tinystories-11M-hf
        "$D/bin/dsla-serve" --model "$M" --device cuda --endpoint tcp://127.0.0.1:17070 \
            --http 127.0.0.1:18000 >"$OUT/loadgen-serve.log" 2>&1 &
        sp=$!
        for _ in $(seq 120); do # ready when one request completes (no curl needed)
            "$D/bin/dsla-loadgen" --url http://127.0.0.1:18000 --requests 1 --prompt-len 8 \
                --output-len 1 >/dev/null 2>&1 && break
            sleep 1
        done
        stage loadgen 300 "$D/bin/dsla-loadgen" --url http://127.0.0.1:18000 --tokenizer "$M" \
            --rate ${LOAD_RATE:-50} --duration 60 --preset chat --max-context 2048 \
            --timeline "$OUT/loadgen-timeline.csv"
        kill $sp; wait $sp
        grep -E '^  (sent|completed|refused|errors|goodput|TTFT|TPOT)' "$OUT/loadgen.log" ;;
    serve_7b)
        M=$D/shared/models/tinystories-11M-hf
        "$D/bin/dsla-serve" --device cuda --random-model 7b --tokenizer "$M" --max-context 4096 \
            --max-running ${MAX_RUNNING:-256} --prefill-chunk ${PREFILL_CHUNK:-2048} --gpu-warmup \
            --endpoint tcp://127.0.0.1:17072 --http 127.0.0.1:18002 >"$OUT/serve_7b-serve.log" 2>&1 &
        sp=$!
        for _ in $(seq 300); do # 13.5 GB of weights drawn first; ready when one request completes
            "$D/bin/dsla-loadgen" --url http://127.0.0.1:18002 --requests 1 --prompt-len 8 \
                --output-len 1 >/dev/null 2>&1 && break
            sleep 1
        done
        stage serve_7b 300 "$D/bin/dsla-loadgen" --url http://127.0.0.1:18002 --tokenizer "$M" \
            --preset chat --rate ${LOAD_RATE:-12} --duration 30 --max-context 4096 \
            --timeline "$OUT/serve_7b-timeline.csv"
        kill $sp; wait $sp
        grep -E 'dsla-serve:' "$OUT/serve_7b-serve.log" | head -3
        grep -E '^  (sent|completed|refused|errors|goodput|TTFT|TPOT)' "$OUT/serve_7b.log" ;;
    adaptive) # bench/adaptive/run.sh: three arms under a 0.5x -> 4x -> 0.5x ramp (ADAPTIVE_*)
        mkdir -p "$OUT/adaptive"
        BIN=$D/bin TOKENIZER=$D/shared/models/tinystories-11M-hf WORK=${ADAPTIVE_WORK:-/tmp/adaptive} \
            OUT=$OUT/adaptive stage adaptive "${ADAPTIVE_LIMIT:-580}" bash "$root/bench/adaptive/run.sh"
        tail -25 "$OUT/adaptive/run.log"
        tar -C "$OUT" -czf "$OUT/adaptive.tgz" adaptive && rm -rf "$OUT/adaptive" ;;
    gpus_serve) stage gpus_serve 300 "$D/bin/test_gpus_serve" # --gpus 0, and 0-1 on two GPUs
        grep -E 'GPU|PASSED|FAILED|skipped|differ' "$OUT/gpus_serve.log" ;;
    decode_mixed) stage decode_mixed 300 "$D/bin/bench_cuda_kernels" --only decode ;;
    e2e_serving) stage e2e_serving 300 "$D/bin/bench_e2e_cuda" serving ;;
    trace)
        set -- ${TRACE:-0 8 before 1 8 after 1 12 after}
        : >"$OUT/trace.log"
        while [ $# -ge 3 ]; do
            stage "trace_$3_$2" 300 "$D/bin/dsla" bench --device cuda --random-model 7b \
                --vocab 2048 --max-seqs 256 --context 4096 --ratios 0 --preset chat \
                --rate "$2" --duration "${TRACE_S:-20}" --decode-runs "$1"
            grep -h '"serve_trace"\|"serve_steps"' "$OUT/trace_$3_$2.log" >>"$OUT/trace.log"
            shift 3
        done ;;
    *) echo "unknown stage $s" ;;
    esac
done
# Key rows of every benchmark log: what, shape, time, rate, fraction.
python3 - "$OUT" <<'PY'
import glob, json, os, sys
for path in sorted(glob.glob(sys.argv[1] + "/*.log")):
    for line in open(path):
        if not line.startswith("{"):
            continue
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("what") in ("serve_trace", "serve_steps"):
            continue  # whole lines in trace.log; the table below summarises them
        shape = j.get("shape", "")
        if isinstance(shape, dict):
            shape = ",".join(f"{k}={v}" for k, v in shape.items() if k in ("batch", "tokens", "context", "dsla_fraction"))
        keys = [k for k in ("median_ms", "gbps", "achieved_gbps", "tflops", "fraction_of_peak",
                            "fraction_of_floor", "graphs", "skipped", "error") if k in j]
        print(os.path.basename(path)[:-4], j.get("what", ""), shape,
              " ".join(f"{k}={j[k]:.4g}" if isinstance(j[k], float) else f"{k}={j[k]}" for k in keys))
# The traces: requests, TTFT / TPOT and the step accounting, one row per run and kind of step.
for path in sorted(glob.glob(sys.argv[1] + "/trace_*.log")):
    for line in open(path):
        if not line.startswith("{"):
            continue
        j = json.loads(line)
        if j["what"] == "serve_trace":
            print(j["run"], "req", j["requests"], "done", j["completed"], "offered/s",
                  j.get("offered_req_per_s"), "sustained/s", j.get("sustained_req_per_s"),
                  "ttft", j["ttft_ms"], "tpot", j["tpot_ms"], "peak", j["peak_running"],
                  "graphs", j["graph_replays"], j["graph_captures"])
        elif j["what"] == "serve_steps":
            print(" ", j["steps"], j["count"], "step", j["step_ms"], "floor", j["floor_ms"]["p50"],
                  "frac", j["fraction_of_floor"], "dec", j["decode_seqs_mean"], "pre",
                  j["prefill_tokens_mean"], "kvGB", j["kv_read_gb_mean"], "phases",
                  {k: round(v, 2) for k, v in j["phase_ms_mean"].items()})
PY
rm -rf "$work"
