#!/usr/bin/env bash
# Builds the container images the local cluster runs, without a Docker engine or a registry:
# each one is a docker-archive tarball (what `ctr images import` reads) written by
# hack/image-archive.py. Prints one line per image on stdout: NAME=REFERENCE TARBALL.
#
#   hack/image.sh [operator|busybox|pause]...                 (no names: all three)
#   hack/image.sh --import SOCKET [operator|busybox|pause]...
#
# --import also imports them into containerd's k8s.io namespace (the one the kubelet uses)
# through `ctr -a SOCKET`; pods then name them with imagePullPolicy Never or IfNotPresent.
#
# The images and their references (winflow.local is no registry: nothing can pull these
# names, they only say the image was built here):
#   operator  winflow.local/winflow:dev   target/release/winflow at /winflow (built first with
#             `cargo build --release --locked --bin winflow`, which does nothing when it is up
#             to date; CARGO_TARGET_DIR is respected), the shared libraries ldd lists for it,
#             Debian's CA bundle and distroless's users (nonroot is 65532), /tmp and
#             nsswitch.conf; the config of the Dockerfile's runtime stage (user 65532:65532,
#             entrypoint /winflow, cmd run, WINFLOW_LOG_FORMAT=json, ports 8080 and 9443, the
#             OCI labels with version "dev"). tests/image.rs checks both against the Dockerfile.
#   busybox   winflow.local/busybox:test  Debian's busybox-static at /bin/busybox with every
#             applet linked beside it (sh, sleep, cat, wget, ...); runs as root, cmd sh.
#   pause     winflow.local/pause:3.4     the static pause program that
#             `hack/control-plane-assets.sh --node` builds, as /pause and the entrypoint. The
#             cluster's containerd names exactly this reference as its sandbox_image.
#
# Tarballs live outside the checkout in $WINFLOW_CACHE_DIR/images (default
# ~/.cache/winflow/images), named by a hash of their contents and of hack/image-archive.py:
# unchanged inputs reuse a tarball, a changed one replaces it. Their bytes depend on their
# inputs only (fixed dates and owners, entries in path order).
#
# Missing Debian packages (busybox-static, ca-certificates) are installed with apt-get.
# The interpreter is $WINFLOW_PYTHON if set, else python3 on PATH (standard library only).
# Progress goes to stderr; stdout carries only the lines.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_root="${WINFLOW_CACHE_DIR:-$HOME/.cache/winflow}"
images_dir="$cache_root/images"
python="${WINFLOW_PYTHON:-python3}"
cargo="${CARGO:-cargo}"

declare -A reference=(
  [operator]=winflow.local/winflow:dev
  [busybox]=winflow.local/busybox:test
  [pause]=winflow.local/pause:3.4
)

log() { echo "image: $*" >&2; }
usage() { echo "usage: $0 [--import SOCKET] [operator|busybox|pause]..." >&2; exit 2; }

socket=""
if [ "${1:-}" = "--import" ]; then
  [ $# -ge 2 ] || usage
  socket=$2
  shift 2
fi
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(operator busybox pause)
for name in "${names[@]}"; do
  [ -n "${reference[$name]:-}" ] || usage
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Installs the Debian packages named whose status is not "installed".
ensure_packages() {
  local package missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q ' installed$' || missing+=("$package")
  done
  [ ${#missing[@]} -eq 0 ] && return
  log "installing ${missing[*]}"
  as_root apt-get update -qq >&2
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
}

# The program each image is built around.
source_of() {
  case "$1" in
    operator)
      ensure_packages ca-certificates
      # Run from a test, this script inherits what cargo sets for the crate under test
      # (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). ring's build script reruns when those change,
      # so the release build would be redone (3 minutes) at each switch from a shell to a test.
      local variable
      for variable in $(compgen -e); do
        case $variable in
          CARGO_MANIFEST_* | CARGO_PKG_* | CARGO_CRATE_NAME | CARGO_BIN_* | CARGO_PRIMARY_PACKAGE | CARGO_TARGET_TMPDIR)
            unset "$variable" ;;
        esac
      done
      log "cargo build --release --locked --bin winflow"
      (cd "$repo" && "$cargo" build --release --locked --bin winflow >&2)
      local target_dir
      target_dir=$(cd "$repo" && "$cargo" metadata --format-version 1 --no-deps --locked |
        "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
      echo "$target_dir/release/winflow"
      ;;
    busybox)
      ensure_packages busybox-static
      echo /usr/bin/busybox
      ;;
    pause)
      local pause="$cache_root/k8s-1.20.2/pause"
      if [ ! -x "$pause" ]; then
        log "$pause is missing: run hack/control-plane-assets.sh --node first"
        exit 1
      fi
      echo "$pause"
      ;;
  esac
}

mkdir -p "$images_dir"
# Concurrent runs (tests) take turns: one writes a tarball, the next reuses it.
exec 9>"$images_dir/.lock"
flock 9

for name in "${names[@]}"; do
  program=$(source_of "$name")
  log "$name: ${reference[$name]} around $program (sha256 $(sha256sum "$program" | cut -c1-16))"
  tarball=$("$python" "$repo/hack/image-archive.py" --out-dir "$images_dir" \
    --reference "${reference[$name]}" "$name" "$program")
  if [ -n "$socket" ]; then
    log "$name: importing into $socket (namespace k8s.io)"
    ctr -a "$socket" -n k8s.io images import "$tarball" >&2
  fi
  echo "$name=${reference[$name]} $tarball"
done
