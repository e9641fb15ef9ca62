#!/usr/bin/env bash
# Builds the container images the local cluster runs, without a Docker engine or a registry:
# each one is a docker-archive tarball (what `ctr images import` reads) written by
# hack/image-archive.py. Prints one line per image on stdout: NAME=REFERENCE TARBALL.
#
#   hack/image.sh [operator|busybox|pause|airflow]...         (no names: the first three)
#   hack/image.sh --import SOCKET [operator|busybox|pause|airflow]...
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
#   airflow   winflow.local/airflow:<AIRFLOW_VERSION of hack/airflow-venv.sh> (3.3.2), an
#             Airflow worker for the KubernetesExecutor and KubernetesPodOperator, about 510 MB
#             in four layers, bottom first:
#               system  the shared libraries ldd finds for every ELF file of the two next
#                       layers outside them (glibc, OpenSSL, libffi, sqlite, ... and the
#                       dynamic loader; a wheel's own *.libs stay in the venv), /etc/passwd and
#                       group (root, nobody, airflow 50000), nsswitch.conf, Debian's CA bundle
#                       (also where Debian's OpenSSL looks: /usr/lib/ssl/{cert.pem,certs}),
#                       /tmp 1777, /home/airflow and /opt/airflow (AIRFLOW_HOME) owned by 50000;
#               python  the venv's interpreter (sys.base_prefix: bin/python3.X and its links,
#                       libpython, the standard library with lib-dynload but without its
#                       tests, IDLE, Tk, turtle demos and -O bytecode) at its host path;
#               venv    the venv of hack/airflow-venv.sh (Airflow, the cncf.kubernetes
#                       provider, psycopg2) at its host path, which its links, scripts and
#                       pyvenv.cfg name; directories on both paths are 0755 (/root too);
#               dags    the files of $WINFLOW_AIRFLOW_DAGS (default tests/airflow/e2e/dags, an
#                       empty folder when that is missing) in /opt/airflow/dags, owned by 50000.
#             A changed DAG rewrites only the last layer (and containerd unpacks only it).
#             Config: user 50000:0, workdir /opt/airflow, PATH=<venv>/bin:/usr/local/bin:...,
#             AIRFLOW_HOME, AIRFLOW__CORE__LOAD_EXAMPLES=False, AIRFLOW__CORE__DAGS_FOLDER,
#             PYTHONDONTWRITEBYTECODE=1, no entrypoint (the executor's pods give the whole
#             command as args), cmd python. No shell: BashOperator tasks cannot run in it.
#             Never built unless named (it is big). Timings on 2 cores: about 7 s the first
#             time, 2 s after a DAG change, 1.5 s unchanged (airflow-venv.sh's check and the
#             files' stat); `ctr images import` 11 s into an empty containerd, 4-5 s again.
#
# Tarballs live outside the checkout in $WINFLOW_CACHE_DIR/images (default
# ~/.cache/winflow/images), named by a hash of their contents and of hack/image-archive.py:
# unchanged inputs reuse a tarball, a changed one replaces it. Their bytes depend on their
# inputs only (fixed dates and owners, entries in path order; the interpreter's and the venv's
# files keep their mtimes, which their __pycache__ bytecode is checked against). The airflow
# image's layers are also cached one by one in images/layers, keyed by their files' paths,
# sizes and mtimes, so a rerun does not read 500 MB to find it has nothing to do.
#
# Missing Debian packages (busybox-static, ca-certificates) are installed with apt-get.
# The interpreter is $WINFLOW_PYTHON if set, else python3 on PATH (standard library only);
# it is also the base of the airflow image's venv (hack/airflow-venv.sh).
# Progress goes to stderr; stdout carries only the lines.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_root="${WINFLOW_CACHE_DIR:-$HOME/.cache/winflow}"
images_dir="$cache_root/images"
python="${WINFLOW_PYTHON:-python3}"
cargo="${CARGO:-cargo}"

airflow_version=$(sed -n 's/^AIRFLOW_VERSION="\(.*\)"$/\1/p' "$repo/hack/airflow-venv.sh")
declare -A reference=(
  [operator]=winflow.local/winflow:dev
  [busybox]=winflow.local/busybox:test
  [pause]=winflow.local/pause:3.4
  [airflow]=winflow.local/airflow:$airflow_version
)

log() { echo "image: $*" >&2; }
usage() { echo "usage: $0 [--import SOCKET] [operator|busybox|pause|airflow]..." >&2; exit 2; }

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
    airflow)
      ensure_packages ca-certificates
      # The venv (built or checked by airflow-venv.sh, which honours WINFLOW_PYTHON too).
      local venv_python
      venv_python=$("$repo/hack/airflow-venv.sh")
      dirname "$(dirname "$venv_python")"
      ;;
  esac
}

# What image-archive.py gets besides the image's name and program.
archive_options=()
options_of() {
  archive_options=()
  [ "$1" = airflow ] || return 0
  local dags="${WINFLOW_AIRFLOW_DAGS:-$repo/tests/airflow/e2e/dags}"
  if [ -d "$dags" ]; then
    archive_options=(--dags "$dags")
  elif [ -n "${WINFLOW_AIRFLOW_DAGS:-}" ]; then
    log "WINFLOW_AIRFLOW_DAGS=$dags is not a directory"
    exit 1
  else
    log "airflow: no $dags: the image's DAG folder is empty"
  fi
}

mkdir -p "$images_dir"
# Concurrent runs (tests) take turns: one writes a tarball, the next reuses it.
exec 9>"$images_dir/.lock"
flock 9

for name in "${names[@]}"; do
  program=$(source_of "$name")
  options_of "$name"
  if [ -d "$program" ]; then
    # The venv: it is hashed by image-archive.py, by its files' sizes and times.
    packages=$(grep -ciE '^[a-z0-9]' "$program/winflow-freeze.txt")
    log "$name: ${reference[$name]} around the venv $program ($packages packages)"
    # A shared hold on airflow-venv.sh's lock: no rebuild of the venv while it is read.
    exec 8>"$cache_root/airflow-venv.lock"
    flock -s 8
  else
    log "$name: ${reference[$name]} around $program (sha256 $(sha256sum "$program" | cut -c1-16))"
  fi
  tarball=$("$python" "$repo/hack/image-archive.py" --out-dir "$images_dir" \
    --reference "${reference[$name]}" "${archive_options[@]}" "$name" "$program")
  exec 8>&-
  if [ -n "$socket" ]; then
    log "$name: importing into $socket (namespace k8s.io)"
    ctr -a "$socket" -n k8s.io images import "$tarball" >&2
  fi
  echo "$name=${reference[$name]} $tarball"
done
