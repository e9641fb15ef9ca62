#!/usr/bin/env bash
# Provides etcd, kube-apiserver and kube-controller-manager for the local control plane
# (tests and `hack/demo.sh`) and prints the directory that holds them. With --node, also
# the parts of a worker node (hack/cluster.sh): kubelet, kube-proxy, kube-scheduler and the
# pause program that every pod sandbox runs.
#
# Order of preference:
#   1. $KUBEBUILDER_ASSETS, when it already holds all three binaries (envtest users);
#   2. the cache ($WINFLOW_CACHE_DIR, default ~/.cache/winflow/k8s-1.20.2);
#   3. a build from Debian's kubernetes source package (about 6 minutes on 2 cores),
#      whose result is stored in the cache for every later run.
# Progress goes to stderr; stdout carries only the directory.
set -euo pipefail

K8S_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
K8S_SRC_DIR="kubernetes-1.20.2"
cache_dir="${WINFLOW_CACHE_DIR:-$HOME/.cache/winflow}/k8s-1.20.2"

log() { echo "control-plane-assets: $*" >&2; }

wanted=(kube-apiserver kube-controller-manager etcd)
case "${1:-}" in
  --node) wanted+=(kubelet kube-proxy kube-scheduler pause) ;;
  "") ;;
  *) echo "usage: $0 [--node]" >&2; exit 2 ;;
esac

has_all() {
  local name
  for name in "${wanted[@]}"; do
    [ -x "$1/$name" ] || return 1
  done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  if has_all "$KUBEBUILDER_ASSETS"; then
    echo "$KUBEBUILDER_ASSETS"
    exit 0
  fi
  log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of ${wanted[*]}; using the cache"
fi

if has_all "$cache_dir"; then
  echo "$cache_dir"
  exit 0
fi

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# Only what the cache lacks is built; the rest is kept.
missing=()
for name in "${wanted[@]}"; do
  [ -x "$cache_dir/$name" ] || missing+=("$name")
done
log "building ${missing[*]} from Debian's source package into $cache_dir"
# Debian's deb-src entry mirrors the machine's own bookworm entry.
src_list=/etc/apt/sources.list.d/winflow-deb-src.sources
if [ ! -f "$src_list" ]; then
  uri=$(awk '/^URIs:/ && /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  uri=${uri:-http://deb.debian.org/debian}
  sec_uri=$(awk '/^URIs:/ && /debian-security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  sec_uri=${sec_uri:-http://deb.debian.org/debian-security}
  as_root tee "$src_list" >/dev/null <<SRC
Types: deb-src
URIs: $uri
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: $sec_uri
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
as_root apt-get update -qq >&2
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
  golang-go etcd-server rsync jq make gcc libc6-dev golang-github-modern-go-reflect2-dev >&2

work=$(mktemp -d "${TMPDIR:-/tmp}/winflow-k8s-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
apt-get source --download-only "kubernetes=$K8S_DEB_VERSION" >&2
tar xzf kubernetes_1.20.5+really1.20.2.orig.tar.gz
cd "$K8S_SRC_DIR"
# The vendored reflect2 v1.0.1 crashes the API server under Go >= 1.18 (SIGSEGV in
# mapiterinit on the first webhook patch); Debian's 1.0.2 is fixed.
rm -rf vendor/github.com/modern-go/reflect2
mkdir -p vendor/github.com/modern-go/reflect2
cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go \
   /usr/share/gocode/src/github.com/modern-go/reflect2/*.s vendor/github.com/modern-go/reflect2/
# Every Go binary comes out static (CGO_ENABLED=0), so the kubelet runs on any host.
mkdir -p "$cache_dir.partial"
for name in "${missing[@]}"; do
  case "$name" in
    etcd) cp "$(command -v etcd)" "$cache_dir.partial/etcd" ;;
    # The sandbox's one process; static, so its image is this one file.
    pause) gcc -Os -static -DVERSION=v3.4-winflow -o "$cache_dir.partial/pause" build/pause/linux/pause.c ;;
    *)
      log "make WHAT=cmd/$name"
      env HOME="$work" GOCACHE="$work/gocache" KUBE_BUILD_PLATFORMS=linux/amd64 CGO_ENABLED=0 \
        make WHAT="cmd/$name" >&2
      cp "_output/bin/$name" "$cache_dir.partial/"
      ;;
  esac
done
# Binaries already cached stay; the new ones join them (the directory moves into place
# whole, so a build cut short leaves no half of it).
if [ -d "$cache_dir" ]; then
  cp -n "$cache_dir"/* "$cache_dir.partial/" 2>/dev/null || true
fi
rm -rf "$cache_dir"
mv "$cache_dir.partial" "$cache_dir"
log "done"
echo "$cache_dir"
