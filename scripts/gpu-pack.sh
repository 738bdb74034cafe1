#!/bin/bash
# Packs what a GPU machine without this project's libraries needs to run the GPU tests and benchmarks:
# the test and benchmark binaries of a CUDA build, every shared library they load that is not part of
# the C runtime or CUDA, and the test models, vectors and text. Run here (where the libraries are
# installed); carry the tarball; run scripts/gpu-run.sh there.
#
# usage: scripts/gpu-pack.sh [BUILD_DIR] [OUT_TARBALL]   (defaults: build-gpu, .devdeps/gpu.tar.xz)
# BUILD_DIR is configured and built here with nvcc when it does not exist yet. GPU_PACK_MODELS: below.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-gpu}
out=${2:-$root/.devdeps/gpu.tar.xz}
data=${DSLA_TEST_DATA:-$root/../shared}
if [ ! -f "$build/CMakeCache.txt" ]; then
    CUDACXX=${CUDACXX:-/usr/local/cuda/bin/nvcc} cmake -S "$root" -B "$build" -DDSLA_CUDA=ON
fi
cmake --build "$build" -j "$(nproc)"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/gpu/bin" "$stage/gpu/lib" "$stage/gpu/shared/models" "$stage/gpu/shared/data"
bins="$build/tests/test_ops_harness $build/tests/test_gpu_forward $build/tests/test_gpu_serve
      $build/tests/test_gpu_serve_actor $build/bin/bench_cuda_kernels $build/bin/bench_e2e_cuda
      $build/bin/dsla $build/bin/dsla-serve $build/bin/dslactl $build/bin/dsla-loadgen
      $build/tests/test_controller $build/tests/test_distill_gpu $build/bin/bench_distill_cuda
      $build/tests/test_serve_load $build/tests/test_eval_gpu $build/tests/test_distiller_gpu
      $build/tests/test_nccl_bcast $build/bin/bench_nccl_bcast $build/tests/test_gpu_prompt_lp
      $build/tests/test_eval_echo"
# GPU_PACK_BINS="test_ops_harness dsla ...": only these of the binaries (a call that runs a few
# stages with the full models, which together with every binary exceed the carry limit).
if [ -n "${GPU_PACK_BINS:-}" ]; then
    kept=""
    for b in $bins; do
        case " $GPU_PACK_BINS " in *" $(basename "$b") "*) kept="$kept $b" ;; esac
    done
    bins=$kept
fi
for b in $bins; do cp "$b" "$stage/gpu/bin/"; done
strip "$stage"/gpu/bin/*
# Libraries: everything ldd resolves except the C runtime, the loader and CUDA's own (the GPU machine
# has its driver and toolkit).
for b in $bins; do ldd "$b"; done | awk '/=> \// {print $3}' | sort -u |
    grep -vE '/(libc|libm|libdl|librt|libpthread|libresolv|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so' |
    { grep -vE 'libcu|libnv|libcudnn|libnccl' || true; } | while read -r lib; do cp -L "$lib" "$stage/gpu/lib/"; done
# GPU_PACK_MODELS=0 leaves the test models out (kernel stages), =json keeps only their configs and
# tokenizers (stages that build a random model): a smaller tarball to carry.
for m in stories260K-hf tinystories-11M-hf; do
    case ${GPU_PACK_MODELS:-1} in
    0) ;;
    json) mkdir -p "$stage/gpu/shared/models/$m" && cp "$data/models/$m"/*.json "$_/" ;;
    *) cp -r "$data/models/$m" "$stage/gpu/shared/models/" ;;
    esac
done
cp -r "$data/testvectors" "$stage/gpu/shared/"
[ -d "$data/anchors" ] && cp -r "$data/anchors" "$stage/gpu/shared/" # peers (bench/peer_*.py)
cp "$root/scripts/gpu-run.sh" "$stage/gpu/" # the stages of this checkout, to run from the pack
cp "$data/data/tinystories_valid.txt" "$data/data/tinystories_train_sample.txt" \
    "$stage/gpu/shared/data/"
mkdir -p "$(dirname "$out")"
tar -C "$stage" -cJf "$out" gpu
echo "$out: $(du -h "$out" | cut -f1) (the device tool carries at most 64 MiB)"
