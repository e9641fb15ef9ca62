#!/usr/bin/env bash
# Provides the node modules of the test OpenID Connect provider (tests/oidc: the npm package
# oidc-provider, pinned with its lockfile) and prints the absolute path of that node_modules
# directory. tests/oidc/provider.mjs loads its modules from there when the path is in
# WINFLOW_OIDC_NODE_MODULES (hack/test.sh exports it; test-support/src/oidc.rs runs this script
# itself when it is unset).
#
# The modules live outside the checkout, in
# $WINFLOW_CACHE_DIR/oidc-provider-<sha256 of tests/oidc/package-lock.json>/node_modules
# (default ~/.cache/winflow/..., about 5 MB), installed once with `npm ci` (a few seconds)
# and reused while the lockfile is unchanged; a new lockfile gets a new directory.
# Needs Node.js >= 20 with npm; hack/test-deps.sh installs them (hack/test.sh runs it first).
# Progress goes to stderr; stdout carries only the node_modules path.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

src=tests/oidc
cache_root="${WINFLOW_CACHE_DIR:-$HOME/.cache/winflow}"
lock_sha=$(sha256sum "$src/package-lock.json" | cut -c1-16)
dir="$cache_root/oidc-provider-$lock_sha"
stamp="$dir/winflow-installed"

log() { echo "oidc-provider: $*" >&2; }

# Both packages import (ES modules) from the installed tree.
import_check() {
  WINFLOW_OIDC_NODE_MODULES="$dir/node_modules" node --input-type=module -e '
    import { createRequire } from "node:module";
    const require = createRequire(process.env.WINFLOW_OIDC_NODE_MODULES + "/../x.js");
    await import(require.resolve("oidc-provider"));
    await import(require.resolve("jose"));
  ' >/dev/null 2>&1
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  log "Node.js >= 20 with npm is needed for the test OpenID Connect provider, and 'node' or 'npm' is not on PATH"
  log "run hack/test-deps.sh (it installs them) and run this again"
  exit 1
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  log "need Node.js >= 20 for oidc-provider 9; 'node' is $(node --version) ($(command -v node)); hack/test-deps.sh installs one"
  exit 1
fi

mkdir -p "$cache_root"
# Tests may call this concurrently: one installs, the others wait and then reuse.
exec 9>"$cache_root/oidc-provider.lock"
flock 9

if [ -f "$stamp" ] && import_check; then
  echo "$dir/node_modules"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  log "npm is not on PATH (node is $(command -v node)); install npm and run this again"
  exit 1
fi

log "installing $src/package-lock.json into $dir"
start=$SECONDS
# Installed next door and renamed, so that a failed install never leaves a half-filled cache.
tmp="$dir.tmp.$$"
rm -rf "$tmp"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
cp "$src/package.json" "$src/package-lock.json" "$tmp/"
# No install scripts: none of these packages needs one.
(cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
touch "$tmp/winflow-installed"
rm -rf "$dir"
mv "$tmp" "$dir"
trap - EXIT
if ! import_check; then
  log "installed, but node cannot import oidc-provider and jose from $dir/node_modules"
  exit 1
fi
log "ready in $((SECONDS - start))s: oidc-provider $(node -p "require('$dir/node_modules/oidc-provider/package.json').version") on node $(node --version)"
echo "$dir/node_modules"
