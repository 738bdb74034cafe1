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
#   attention  bench_e2e_cuda attention (prefill attention, ours and cuDNN's; batch-1 decode)
#   e2e      bench_e2e_cuda (the whole 7B table, ~3 minutes on an H200)
#   torch    bench/pytorch_baseline.py --attention-only (SDPA on the same card)
#   torch_model  bench/pytorch_baseline.py (SDPA, eager attention and transformers' 7B model)
#   serving  dsla bench --device cuda --random-model 7b (8K sequences per card at 0-75% DSLA)
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
    kernels) stage kernels 600 "$D/bin/bench_cuda_kernels" ;;
    attention) stage attention 300 "$D/bin/bench_e2e_cuda" attention ;;
    e2e) stage e2e 600 "$D/bin/bench_e2e_cuda" ;;
    torch) stage torch 300 python3 "$root/bench/pytorch_baseline.py" --attention-only ;;
    torch_model) stage torch_model 600 python3 "$root/bench/pytorch_baseline.py" ;;
    serving) stage serving 600 "$D/bin/dsla" bench --device cuda --random-model 7b ;;
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
        shape = j.get("shape", "")
        if isinstance(shape, dict):
            shape = ",".join(f"{k}={v}" for k, v in shape.items() if k in ("batch", "tokens", "context", "dsla_fraction"))
        keys = [k for k in ("median_ms", "gbps", "achieved_gbps", "tflops", "fraction_of_peak",
                            "fraction_of_floor", "graphs", "skipped", "error") if k in j]
        print(os.path.basename(path)[:-4], j.get("what", ""), shape,
              " ".join(f"{k}={j[k]:.4g}" if isinstance(j[k], float) else f"{k}={j[k]}" for k in keys))
PY
rm -rf "$work"
