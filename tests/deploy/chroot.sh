#!/usr/bin/env bash
# The bundle's acceptance test (issue 16): deploy/bundle.sh's tarball, unpacked in a fresh minimal
# Debian 12 chroot (debootstrap --variant=minbase) that has none of the build dependencies, runs the
# embedded single-node default (dsla-serve --model, gateway + HTTP + serving actor in one process)
# and answers: an HTTP completion sent from inside the chroot with bash's /dev/tcp (the chroot has
# no curl), the bundled `dsla generate --endpoint` over ZeroMQ, and a program compiled outside
# against the bundle's client stub (tests/deploy/client_stub.c) run inside.
#
# usage: chroot.sh SOURCE_DIR BUILD_DIR   (ctest passes DSLA_TEST_DATA)
# The chroot is cached in BUILD_DIR/deploy/debian-bookworm (the first debootstrap takes a minute or
# two and ~200 MB; later runs reuse it; remove the folder to rebuild it). Skips (77) when not root,
# without debootstrap, chroot or patchelf, without the model, or when the Debian mirror
# (DSLA_DEBIAN_MIRROR, default http://deb.debian.org/debian) cannot be reached for the first build.
set -euo pipefail
src=$1
build=$2
data=${DSLA_TEST_DATA:-$src/../shared}
model=$data/models/stories260K-hf
mirror=${DSLA_DEBIAN_MIRROR:-http://deb.debian.org/debian}
work=$build/deploy
cache=$work/debian-bookworm

skip() { echo "skipped: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "not root (debootstrap and chroot need it)"
for tool in debootstrap chroot patchelf cc pkg-config; do
    command -v "$tool" >/dev/null || skip "$tool is missing (scripts/install-deps.sh installs it)"
done
chroot=$(command -v chroot)
# A private mount namespace where unshare allows one: the chroot's /proc mount then ends with the
# test, however the test ends.
if [ -z "${DSLA_CHROOT_UNSHARED:-}" ] && unshare --mount --propagation private true 2>/dev/null; then
    DSLA_CHROOT_UNSHARED=1 exec unshare --mount --propagation private "$BASH" "$0" "$@"
fi
[ -f "$model/config.json" ] || skip "no $model"
mkdir -p "$work"

if [ ! -f "$cache/.dsla-complete" ]; then
    host=$(sed -E 's#^[a-z]+://([^/:]+).*#\1#' <<<"$mirror")
    port=$(sed -nE 's#^[a-z]+://[^/:]+:([0-9]+).*#\1#p' <<<"$mirror")
    [ -n "$port" ] || { [[ $mirror == https:* ]] && port=443 || port=80; }
    timeout 15 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null || skip "the mirror $mirror is unreachable (offline)"
    rm -rf "$cache"
    echo "debootstrap --variant=minbase bookworm into $cache (once; cached for later runs)"
    start=$(date +%s)
    if ! debootstrap --variant=minbase bookworm "$cache" "$mirror" >"$work/debootstrap.log" 2>&1; then
        tail -20 "$work/debootstrap.log"
        echo "FAIL: debootstrap failed (log: $work/debootstrap.log)"
        exit 1
    fi
    touch "$cache/.dsla-complete"
    echo "debootstrap took $(($(date +%s) - start)) s"
fi

# The chroot must lack the build's packages: no compiler, no -dev package, none of the libraries
# the build links that Debian's base system does not itself need (minbase has libpcre2-8 and
# libxxhash for grep and apt; the bundle carries and loads its own copies of those too).
# shellcheck disable=SC2016 # dpkg-query's own ${field} syntax
present=$(chroot "$cache" dpkg-query -W -f='${Package} ${Status}\n' 2>/dev/null |
    awk '$NF == "installed" {print $1}' |
    grep -E -e '-dev$|^(gcc|gcc-[0-9]+|cpp|clang|cmake|pkg-config|pkgconf)$' \
        -e '^(libopenblas|libzmq|libmsgpack|libuv1|libmicrohttpd|libjansson|libsqlite3|libsodium|libgfortran|libpgm|libnorm)' |
    tr '\n' ' ' || true)
if [ -n "$present" ]; then
    echo "FAIL: the chroot $cache holds build dependencies: $present (remove the folder to rebuild it)"
    exit 1
fi

bash "$src/deploy/bundle.sh" "$build" "$work/bundle.tar.gz"

# A fresh install location inside the cached base each run, at a path unlike the build's.
opt=/opt/dsla-test
rm -rf "${cache:?}$opt"
mkdir -p "$cache$opt/model"
tar -C "$cache$opt" -xzf "$work/bundle.tar.gz"
top=$(find "$cache$opt" -mindepth 1 -maxdepth 1 -name 'dsla-serve-*' -type d)
[ -n "$top" ] || { echo "FAIL: the bundle holds no dsla-serve-* folder"; exit 1; }
bundle=${top#"$cache"}
cp -r "$model"/. "$cache$opt/model/"

# The client stub, compiled here against the bundle only, then given the bundle's relative RUNPATH.
read -r -a flags <<<"$(PKG_CONFIG_PATH=$top/lib/pkgconfig pkg-config --cflags --libs dsla-client)"
cc -std=c11 -Wall -Wextra -Werror -o "$top/bin/client_stub" "$src/tests/deploy/client_stub.c" "${flags[@]}"
# shellcheck disable=SC2016 # $ORIGIN is the loader's, not the shell's
patchelf --set-rpath '$ORIGIN/../lib' "$top/bin/client_stub"

log=$work/server.log
server=
mounts=()
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" || true; done
    rm -rf "${cache:?}$opt"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
# /proc as every system and container has it: the loader resolves the executables' $ORIGIN through
# /proc/self/exe (without it the bundle's RUNPATH of $ORIGIN/../lib cannot be expanded).
if ! mountpoint -q "$cache/proc"; then
    mount -t proc proc "$cache/proc" || skip "cannot mount /proc in the chroot (no CAP_SYS_ADMIN)"
    mounts+=("$cache/proc")
fi
# env -i: nothing of this machine's environment (LD_LIBRARY_PATH above all) reaches the chroot.
run_env=(PATH=/usr/bin:/bin)
# A CUDA build's bundle leaves the CUDA runtime and cuBLAS to the machine, as deploy/Dockerfile's
# base image provides them (in /usr/local/cuda/lib64, on the loader's path). The chroot gets this
# machine's copies the same way, read-only; the serving actor itself runs on the CPU here.
cuda_needed=$(readelf -d "$top/bin/dsla-serve" | grep -oE 'lib(cudart|cublas|cublasLt)\.so[.0-9]*' | sort -u || true)
if [ -n "$cuda_needed" ]; then
    cuda_dirs=$(for lib in $cuda_needed; do
        ldd "$build/bin/dsla-serve" | awk -v l="$lib" '$1 == l && $3 ~ /^\// {print $3}'
    done | xargs -r -n1 dirname | sort -u)
    [ "$(wc -w <<<"$cuda_dirs")" -eq 1 ] ||
        { echo "FAIL: the CUDA libraries $cuda_needed are not in one folder here: $cuda_dirs"; exit 1; }
    mkdir -p "$cache/usr/local/cuda/lib64"
    mount --bind -o ro "$cuda_dirs" "$cache/usr/local/cuda/lib64"
    mounts+=("$cache/usr/local/cuda/lib64")
    run_env+=(LD_LIBRARY_PATH=/usr/local/cuda/lib64)
    echo "a CUDA build: $(echo "$cuda_needed" | tr '\n' ' ')from $cuda_dirs, as the CUDA base image has them"
fi
env -i "${run_env[@]}" "$chroot" "$cache" "$bundle/bin/dsla-serve" \
    --model $opt/model --endpoint tcp://127.0.0.1:0 --http 127.0.0.1:0 >"$log" 2>&1 &
server=$!
http=
endpoint=
for _ in $(seq 1 600); do
    http=$(sed -n 's#^http on http://##p' "$log" | head -1)
    endpoint=$(sed -n 's#^listening on ##p' "$log" | head -1)
    [ -n "$http" ] && [ -n "$endpoint" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$log"; echo "FAIL: dsla-serve exited in the chroot"; exit 1; }
    sleep 0.1
done
[ -n "$http" ] || { cat "$log"; echo "FAIL: dsla-serve printed no 'http on' line within 60 s"; exit 1; }
port=${http##*:}
echo "dsla-serve in the chroot: $endpoint, http port $port"

# HTTP from inside the chroot (no curl there): bash's /dev/tcp, HTTP/1.1 with Connection: close.
body='{"prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}'
# shellcheck disable=SC2016 # the script runs in the chroot's bash, with PORT and BODY from env
response=$(env -i "${run_env[@]}" PORT="$port" BODY="$body" "$chroot" "$cache" /bin/bash -c '
    exec 3<>/dev/tcp/127.0.0.1/$PORT
    printf "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" "${#BODY}" "$BODY" >&3
    timeout 60 cat <&3')
echo "$response" | tail -1
echo "$response" | head -1 | grep -q '^HTTP/1.1 200' || { echo "FAIL: the completion was not answered 200"; cat "$log"; exit 1; }
echo "$response" | grep -q '"completion_tokens": *[1-9]' || { echo "FAIL: the completion holds no tokens"; exit 1; }
echo "$response" | grep -q '"text": *"[^"]' || { echo "FAIL: the completion's text is empty"; exit 1; }

# The bundled dsla command and the client stub, over ZeroMQ, from inside the chroot.
env -i "${run_env[@]}" "$chroot" "$cache" "$bundle/bin/dsla" generate --endpoint "$endpoint" \
    --prompt "Once upon a time" --max-tokens 8 --temperature 0 ||
    { echo "FAIL: the bundled dsla generate failed in the chroot"; exit 1; }
env -i "${run_env[@]}" "$chroot" "$cache" "$bundle/bin/client_stub" "$endpoint" "Once upon a time" ||
    { echo "FAIL: the client stub built from the bundle failed in the chroot"; exit 1; }
env -i "${run_env[@]}" "$chroot" "$cache" "$bundle/bin/dslactl" --help >/dev/null ||
    { echo "FAIL: the bundled dslactl does not start in the chroot"; exit 1; }
echo "ok: the bundle serves in a minimal Debian chroot without the build dependencies"
