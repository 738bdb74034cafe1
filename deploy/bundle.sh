#!/usr/bin/env bash
# Packs a relocatable tarball of dsla-serve: the binaries (dsla, dsla-serve, dslactl), the client
# stub as a static library with its headers, and every shared library they load that is not part of
# the system (glibc, the loader, libstdc++ and libgcc_s) or of CUDA (the driver and the toolkit's
# runtime come from the machine or the CUDA base image). The binaries find their libraries through
# a RUNPATH of $ORIGIN/../lib and each library its own through $ORIGIN, so the unpacked folder runs
# from any path on any glibc x86-64 Linux at least as new as the build machine's, with none of the
# build dependencies installed (tests/deploy/chroot.sh proves it in a fresh Debian chroot).
#
# usage: deploy/bundle.sh [BUILD_DIR] [OUT_TARBALL]
#   BUILD_DIR   a configured CMake tree (default: build); its dsla, dsla-serve, dslactl and the client
#               stub's libraries are built first. A CUDA build gives a CUDA bundle (deploy/Dockerfile).
#   OUT         default: BUILD_DIR/dsla-serve-VERSION-linux-ARCH.tar.gz
# The tarball holds one folder, dsla-serve-VERSION/. Needs patchelf (Debian's; install-deps.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
[ -f "$build/CMakeCache.txt" ] || { echo "bundle.sh: $build is not a configured CMake tree (cmake -S . -B $build)" >&2; exit 2; }
command -v patchelf >/dev/null || { echo "bundle.sh: patchelf is missing (apt-get install patchelf, or scripts/install-deps.sh)" >&2; exit 1; }

version=$(sed -n 's/^CMAKE_PROJECT_VERSION:STATIC=//p' "$build/CMakeCache.txt")
[ -n "$version" ] || { echo "bundle.sh: no CMAKE_PROJECT_VERSION in $build/CMakeCache.txt" >&2; exit 1; }
name=dsla-serve-$version
out=${2:-$build/$name-linux-$(uname -m).tar.gz}

cmake --build "$build" -j "${JOBS:-2}" --target dsla dsla-serve dslactl dsla_proto dsla_core >/dev/null

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
top=$stage/$name
mkdir -p "$top/bin" "$top/lib/pkgconfig" "$top/include"

bins=(dsla dsla-serve dslactl)
for b in "${bins[@]}"; do
    install -m 0755 "$build/bin/$b" "$top/bin/$b"
    strip --strip-unneeded "$top/bin/$b"
done

# What ldd resolves, less the system and CUDA. Each library is copied under the name the binaries
# ask for (its soname: libopenblas.so.0 is reached through Debian's alternatives link), dereferenced.
system='^(linux-vdso|libc|libm|libdl|librt|libpthread|libresolv|libutil|libanl|ld-linux[^ ]*|libstdc\+\+|libgcc_s)\.so'
cuda='^(libcuda|libcudart|libcublas|libcublasLt|libcudnn[^ ]*|libnvidia[^ ]*|libnvrtc|libnvJitLink|libnccl)\.so'
for b in "${bins[@]}"; do ldd "$build/bin/$b"; done |
    awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u | while read -r soname path; do
    if [[ $soname =~ $system || $soname =~ $cuda ]]; then continue; fi
    cp -L "$path" "$top/lib/$soname"
    chmod 0644 "$top/lib/$soname"
done
# shellcheck disable=SC2016 # $ORIGIN is the loader's, not the shell's
for lib in "$top"/lib/*.so*; do
    patchelf --set-rpath '$ORIGIN' "$lib"
done
# shellcheck disable=SC2016
for b in "${bins[@]}"; do
    patchelf --set-rpath '$ORIGIN/../lib' "$top/bin/$b"
done

# The client stub (proto/dsla_client.h): the envelope and the client in one static archive, the
# headers it includes (found by the compiler, so a new include comes along), link names for the
# bundled ZeroMQ and msgpack, and a pkg-config file relative to where the folder lands.
ar_script=$stage/client.mri
printf 'CREATE %s\nADDLIB %s\nADDLIB %s\nSAVE\nEND\n' "$top/lib/libdsla_client.a" \
    "$build/libdsla_proto.a" "$build/libdsla_core.a" >"$ar_script"
ar -M <"$ar_script"
cc -MM -I"$root" -x c "$root/proto/dsla_client.h" | tr -d "\\\\" | tr ' ' '\n' |
    grep -E "^$root/.*\.h$" | while read -r header; do
    rel=${header#"$root"/}
    install -D -m 0644 "$header" "$top/include/$rel"
done
for dev in libzmq.so.5:libzmq.so libmsgpackc.so.2:libmsgpackc.so; do
    [ -f "$top/lib/${dev%%:*}" ] && ln -sf "${dev%%:*}" "$top/lib/${dev##*:}"
done
cat >"$top/lib/pkgconfig/dsla-client.pc" <<EOF
prefix=\${pcfiledir}/../..
Name: dsla-client
Description: dsla-serve's client stub (proto/dsla_client.h)
Version: $version
Cflags: -I\${prefix}/include
Libs: -L\${prefix}/lib -Wl,-rpath,\${prefix}/lib -ldsla_client -lzmq -lmsgpackc -lpthread -lm
EOF

cat >"$top/README" <<EOF
dsla-serve $version, relocatable: unpack anywhere and run bin/dsla-serve, bin/dsla or bin/dslactl.
The binaries load the libraries in lib/ (RUNPATH \$ORIGIN/../lib); the system provides only glibc,
libstdc++ and libgcc_s, and, for a CUDA build, the NVIDIA driver and the CUDA runtime libraries.

  bin/dsla-serve --model MODEL_DIR --http 127.0.0.1:8000      # the embedded single-node default
  curl -s localhost:8000/v1/completions -d '{"prompt": "Once upon a time", "max_tokens": 30}'
  bin/dsla-serve --cluster cluster.yaml --node NAME             # one node of a cluster file

The client stub: include/proto/dsla_client.h and lib/libdsla_client.a, e.g.
  cc app.c \$(PKG_CONFIG_PATH=\$PWD/lib/pkgconfig pkg-config --cflags --libs dsla-client)
Documentation: deploy/README.md and docs/ in the source tree.
EOF

# Self-check: every library a binary loads is the bundle's copy, or a system or CUDA one.
for b in "${bins[@]}"; do
    ldd "$top/bin/$b" | awk '$2 == "=>" {print $1, $3}' | while read -r soname path; do
        if [[ $soname =~ $system || $soname =~ $cuda ]]; then continue; fi
        if [ "$(realpath -m "$path")" != "$(realpath -m "$top/lib/$soname")" ]; then
            echo "bundle.sh: bin/$b loads $soname from $path, not from the bundle" >&2
            exit 1
        fi
    done
done

mkdir -p "$(dirname "$out")"
tar -C "$stage" -czf "$out" "$name"
echo "$out: $(du -h "$out" | cut -f1), $(find "$top/lib" -name '*.so*' ! -type l | wc -l) libraries"
