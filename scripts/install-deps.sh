#!/usr/bin/env bash
# Installs the Debian packages dsla-serve builds against (DESIGN.md section 10), only those missing.
# Needs root (or sudo) on Debian 12; does nothing when everything is present.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  debootstrap patchelf # deploy/bundle.sh (RUNPATH) and its test in a minimal Debian chroot
  shellcheck        # the deploy scripts' check (tests/deploy)
  libopenblas-dev   # CPU GEMM
  libpcre2-dev      # byte-level tokenizer pre-tokenizer regex
  libjansson-dev    # config.json, tokenizer.json, safetensors headers
  libxxhash-dev     # layer-version checksums
  libcmocka-dev     # unit tests
  libzmq3-dev       # actor mailboxes and transport (ZeroMQ)
  libmsgpack-dev    # message envelope and bodies (msgpack-c)
  libuv1-dev        # one event loop per actor
  libmicrohttpd-dev # the gateway's OpenAI-compatible HTTP API
  libsqlite3-dev    # the controller's state (plans, policy, event history)
  clang-format      # 14 on Debian 12: the formatting check (scripts/check-format.sh)
  clang-14 libclang-rt-14-dev # libFuzzer, ASan and UBSan for the fuzz targets (make test-fuzz)
  git               # the tree checks list the tracked sources
  prometheus        # promtool: test_metrics checks /metrics with `promtool check metrics`
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing: ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
