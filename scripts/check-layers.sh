#!/usr/bin/env bash
# The dependency rule of DESIGN.md section 9, checked on every #include of the tracked C and CUDA
# sources:
#   cli -> actors -> runtime/{serve,distill,control} -> runtime/model -> kernels -> runtime/core
#   actors -> runtime/actor -> proto -> runtime/core
# Each folder may include its own headers and those of the folders it points down to, nothing
# else; nothing under runtime/{core,model,serve,distill,control} or kernels includes ZeroMQ, msgpack or
# libuv (only runtime/actor, proto and what sits above them speak the transport); proto knows
# nothing of engines. tests/ and bench/ may include anything.
#
# Prints one line per violation, "file:line: forbidden include <what> (why)", and exits 1 when
# there is any (77, skipped, outside a git checkout). "Tracked" includes new files git does not
# ignore. Usage: scripts/check-layers.sh [REPO_ROOT] (default: the script's repository).
set -euo pipefail
root="${1:-$(cd "$(dirname "$0")/.." && pwd)}"
cd "$root"
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "check-layers: skipped: $root is not a git checkout (the check covers tracked files)"
  exit 77
fi

# The folders each folder may include from: itself and the layers it points down to.
declare -A ALLOWED=(
  [runtime/core]="runtime/core"
  [kernels]="kernels runtime/core"
  [runtime/model]="runtime/model kernels runtime/core"
  [runtime/serve]="runtime/serve runtime/model kernels runtime/core"
  [runtime/distill]="runtime/distill runtime/model kernels runtime/core"
  [runtime/control]="runtime/control runtime/model kernels runtime/core"
  [proto]="proto runtime/core"
  [runtime/actor]="runtime/actor proto runtime/core"
  [actors]="actors runtime/actor proto runtime/serve runtime/distill runtime/control runtime/model kernels runtime/core"
  [cli]="cli actors runtime/actor proto runtime/serve runtime/distill runtime/control runtime/model kernels runtime/core"
)

# Sets LAYER to the folder of the rule a repository path is in; "" for none (tests, bench, ...).
layer_of() {
  case "$1" in
    runtime/core/*) LAYER=runtime/core ;;
    runtime/model/*) LAYER=runtime/model ;;
    runtime/serve/*) LAYER=runtime/serve ;;
    runtime/distill/*) LAYER=runtime/distill ;;
    runtime/control/*) LAYER=runtime/control ;;
    runtime/actor/*) LAYER=runtime/actor ;;
    kernels/*) LAYER=kernels ;;
    proto/*) LAYER=proto ;;
    actors/*) LAYER=actors ;;
    cli/*) LAYER=cli ;;
    *) LAYER="" ;;
  esac
}

# The system headers of the transport: only runtime/actor, proto, actors and cli may use them.
transport_free() {
  case "$1" in
    runtime/core | runtime/model | runtime/serve | runtime/distill | runtime/control | kernels) return 0 ;;
    *) return 1 ;;
  esac
}

violations=0
report() {
  echo "$1:$2: forbidden include $3 ($4)"
  violations=$((violations + 1))
}

# Sets TARGET to path with "a/../" and "./" collapsed, so that a relative include names the file
# it reaches.
normalize() {
  local IFS=/ part out=()
  for part in $1; do
    case "$part" in
      "" | .) ;;
      ..) [ ${#out[@]} -gt 0 ] && unset 'out[${#out[@]}-1]' ;;
      *) out+=("$part") ;;
    esac
  done
  TARGET="${out[*]}"
}

# "file<TAB>line<TAB>delimiter<TAB>name" for every #include of every tracked source, in one pass.
while IFS=$'\t' read -r f line delim name; do
  layer_of "$f"
  layer=$LAYER
  [ -n "$layer" ] || continue
  if [ "$delim" = "<" ]; then
    case "$name" in
      zmq.h | zmq_utils.h | czmq.h | msgpack.h | msgpack/* | uv.h | uv/*)
        if transport_free "$layer"; then
          report "$f" "$line" "<$name>" \
            "$layer must not know of ZeroMQ, msgpack or libuv; that is runtime/actor's and proto's"
        fi ;;
    esac
    continue
  fi
  # a quoted include: next to the file first, then from the repository root
  dir=${f%/*}
  if [ -e "$dir/$name" ]; then normalize "$dir/$name"; else normalize "$name"; fi
  target=$TARGET
  layer_of "$target"
  tlayer=$LAYER
  if [ -z "$tlayer" ]; then
    case "$target" in
      tests/* | bench/*) report "$f" "$line" "\"$name\"" "$layer must not depend on tests or benchmarks" ;;
    esac
    continue
  fi
  ok=0
  for a in ${ALLOWED[$layer]}; do
    if [ "$a" = "$tlayer" ]; then ok=1; break; fi
  done
  [ $ok -eq 1 ] || report "$f" "$line" "\"$name\"" "$layer may include only: ${ALLOWED[$layer]}"
done < <(git ls-files -z --cached --others --exclude-standard -- '*.c' '*.h' '*.cu' '*.cuh' | xargs -0 awk '
  match($0, /^[ \t]*#[ \t]*include[ \t]*[<"][^>"]*[>"]/) {
    s = substr($0, RSTART, RLENGTH); sub(/^[ \t]*#[ \t]*include[ \t]*/, "", s)
    print FILENAME "\t" FNR "\t" substr(s, 1, 1) "\t" substr(s, 2, length(s) - 2)
  }')

if [ $violations -gt 0 ]; then
  echo "check-layers: $violations include(s) break the dependency rule (DESIGN.md section 9)" >&2
  exit 1
fi
echo "check-layers: every include follows the dependency rule"
