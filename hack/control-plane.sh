#!/usr/bin/env bash
# Starts a local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) on
# loopback and keeps it up until stdin reaches EOF or SIGINT/SIGTERM arrives.
#
# stdout carries exactly one line, `kubeconfig=<absolute path>`, once the control plane is
# ready; everything else goes to stderr. Stopping on stdin EOF lets a parent hold a pipe to
# our stdin: when the parent exits, even by SIGKILL, the pipe closes and the control plane
# goes away with it. Consequently, stdin must stay open (a pipe or a terminal): with
# stdin from /dev/null the control plane stops as soon as it is ready.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: hack/control-plane.sh [--dir DIR] [--node] [-h|--help]

Starts etcd, kube-apiserver and kube-controller-manager on free loopback ports, prints
`kubeconfig=<path>` on stdout once the API server is ready, and runs until end of file on
stdin or SIGINT/SIGTERM. Then it stops the processes and removes the state directory.

The API server writes an audit log of every write request (create, update, patch, delete;
metadata only, never bodies) to DIR/audit.log. SIGUSR1 kills the API server and SIGUSR2
starts it again on the same port (for fault tests: etcd and the controller-manager stay up).

  --dir DIR   state directory (created; must be empty or absent), default: mktemp -d
  --node      also a worker node (root only, one per machine): containerd, kubelet,
              kube-proxy and kube-scheduler on the pod bridge winflow0 (10.244.0.0/24); the
              API server then listens on 10.244.0.1, where pods reach it. The node is Ready
              before the kubeconfig line; containerd's socket is DIR/containerd.sock. Images
              come from hack/image.sh: pause always, plus those named in WINFLOW_NODE_IMAGES.
              On stop, every pod is deleted first and nothing is left behind (mounts,
              network namespaces, bridge, iptables chains).
  -h, --help  this text

Environment:
  KUBEBUILDER_ASSETS          directory holding the three binaries (else they are built/cached
                              by hack/control-plane-assets.sh)
  WINFLOW_KEEP_CONTROL_PLANE  1 keeps the state directory (logs, etcd data) after exit
USAGE
}

log() { echo "control-plane: $*" >&2; }
die() { log "error: $*"; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

dir=""
with_node=""
while [ $# -gt 0 ]; do
  case "$1" in
    --node) with_node=1; shift ;;
    --dir) [ $# -ge 2 ] || die "--dir needs a value"; dir=$2; shift 2 ;;
    --dir=*) dir=${1#--dir=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

started=$SECONDS
if [ -n "$with_node" ]; then
  bin=$("$here/control-plane-assets.sh" --node)
  # shellcheck source=hack/node.sh
  . "$here/node.sh"
else
  bin=$("$here/control-plane-assets.sh")
fi

if [ -n "$dir" ]; then
  # The directory is removed on exit, so never take over one that holds anything.
  if [ -e "$dir" ] && [ -n "$(ls -A "$dir")" ]; then
    die "--dir $dir is not empty"
  fi
  mkdir -p "$dir"
  chmod 700 "$dir"
  dir=$(cd "$dir" && pwd)
else
  dir=$(mktemp -d "${TMPDIR:-/tmp}/winflow-control-plane.XXXXXX")
fi

# shellcheck source=hack/processes.sh
. "$here/processes.sh"
# shellcheck source=hack/k8s-flags.sh
. "$here/k8s-flags.sh"

cleanup() {
  local status=$?
  set +e
  # A second Ctrl-C must not cut the shutdown short and leave processes behind.
  trap '' INT TERM
  [ -z "$stdin_pid" ] || kill "$stdin_pid" 2>/dev/null
  [ -z "$with_node" ] || node_drain
  stop_all
  [ -z "$with_node" ] || node_cleanup
  remove_state_dir "${WINFLOW_KEEP_CONTROL_PLANE:-}"
  log "stopped"
  exit "$status"
}
exit_through_cleanup

# Three distinct free loopback ports, all held at once so they cannot repeat.
ports=$(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')
read -r etcd_port peer_port api_port <<<"$ports"
[ -n "$api_port" ] || die "could not pick free ports"

log "state directory $dir (binaries from $bin)"
mkdir -p "$dir/certs" "$dir/etcd"
openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
token=$(openssl rand -hex 32)
echo "$token,admin,admin-uid,system:masters" >"$dir/tokens.csv"
address=127.0.0.1
authorization_mode=RBAC
if [ -n "$with_node" ]; then
  node_prepare
  node_tokens
  address=$node_address
  authorization_mode=Node,RBAC
fi

start etcd "$bin/etcd" \
  --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" \
  --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "default=http://127.0.0.1:$peer_port"

# With --cert-dir and no --tls-cert-file, the API server writes a self-signed CA and a
# serving certificate for 127.0.0.1 to certs/apiserver.crt (serving certificate followed by
# its CA); that file is the CA bundle for every client (kubectl, rustls, curl).
# Writes only, at Metadata level: who wrote what and when, for tests that check which
# replica wrote; reads would make the log large for nothing.
cat >"$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF

apiserver_args=(
  --etcd-servers="http://127.0.0.1:$etcd_port"
  --secure-port="$api_port"
  --bind-address="$address"
  --advertise-address="$address"
  --cert-dir="$dir/certs"
  --token-auth-file="$dir/tokens.csv"
  --authorization-mode="$authorization_mode"
  --service-account-issuer=https://kubernetes.default.svc
  --service-account-key-file="$dir/sa.pub"
  --service-account-signing-key-file="$dir/sa.key"
  --service-cluster-ip-range=10.0.0.0/24
  --allow-privileged=true
  --audit-policy-file="$dir/audit-policy.yaml"
  --audit-log-path="$dir/audit.log"
)
# pods/ephemeralcontainers (alpha in 1.20, on by default from 1.23, the gate gone once GA):
# the webhook must see a debug container added to an identity's pod.
read -r -a gates <<<"$(feature_gate_args "$("$bin/kube-apiserver" --help 2>&1 || true)" EphemeralContainers)"
apiserver_args+=("${gates[@]}")
[ -z "$with_node" ] || node_apiserver_args
start kube-apiserver "$bin/kube-apiserver" "${apiserver_args[@]}"

# SIGUSR1 kills the API server (as a crash would: at once, so the outage a test asks for
# starts when it asks), SIGUSR2 starts it again (fault tests). It leaves the list of watched
# processes first, so the watch loop below does not take the stop for a crash.
stop_api_server() {
  local i pid
  for ((i = 0; i < ${#names[@]}; i++)); do
    if [ "${names[i]}" = kube-apiserver ]; then
      pid=${pids[i]}
      names=("${names[@]:0:i}" "${names[@]:i+1}")
      pids=("${pids[@]:0:i}" "${pids[@]:i+1}")
      log "SIGUSR1: killing kube-apiserver"
      kill -KILL "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
      break
    fi
  done
  # A trap's status must be 0 explicitly: under set -e anything else ends the script.
  return 0
}
start_api_server() {
  local name
  for name in "${names[@]}"; do
    [ "$name" != kube-apiserver ] || return 0
  done
  log "SIGUSR2: starting kube-apiserver again"
  start kube-apiserver "$bin/kube-apiserver" "${apiserver_args[@]}"
  return 0
}
trap stop_api_server USR1
trap start_api_server USR2

server="https://$address:$api_port"
api() {
  curl -sS -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$dir/certs/apiserver.crt" \
    -H "Authorization: Bearer $token" "$server$1" 2>/dev/null || true
}

log "waiting for $server/readyz"
deadline=$((SECONDS + 90))
until [ "$(api /readyz)" = 200 ]; do
  check_alive || exit 1
  [ "$SECONDS" -lt "$deadline" ] || die "kube-apiserver not ready after 90 s (see $dir/kube-apiserver.log)"
  sleep 0.2
done

# A kubeconfig for `user` with `token` (the admin's here, the node's components' in node.sh).
write_kubeconfig() {
  local file=$1 user=$2 token=$3
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: winflow
  cluster:
    server: $server
    certificate-authority: $dir/certs/apiserver.crt
users:
- name: $user
  user:
    token: $token
contexts:
- name: winflow
  context:
    cluster: winflow
    user: $user
current-context: winflow
EOF
  chmod 600 "$file"
}
write_kubeconfig "$dir/kubeconfig" admin "$token"

# Without a node there is nothing for the node controllers to do; with one, nodelifecycle
# takes the not-ready taint off the node once its kubelet reports Ready.
controllers='*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-route,-service,-attachdetach'
[ -z "$with_node" ] || controllers='*,-nodeipam,-cloud-node-lifecycle,-route,-service,-attachdetach'
read -r -a port_args <<<"$(insecure_port_args "$("$bin/kube-controller-manager" --version 2>&1 || true)")"
start kube-controller-manager "$bin/kube-controller-manager" \
  --kubeconfig="$dir/kubeconfig" \
  --service-account-private-key-file="$dir/sa.key" \
  --root-ca-file="$dir/certs/apiserver.crt" \
  --leader-elect=false \
  --bind-address=127.0.0.1 \
  --secure-port=0 \
  "${port_args[@]}" \
  --controllers="$controllers"

# The controller-manager is working once its service-account controller has made the
# default ServiceAccount (pods cannot be created in a namespace before that).
log "waiting for kube-controller-manager"
deadline=$((SECONDS + 60))
until [ "$(api /api/v1/namespaces/default/serviceaccounts/default)" = 200 ]; do
  check_alive || exit 1
  [ "$SECONDS" -lt "$deadline" ] || die "kube-controller-manager made no default ServiceAccount in 60 s (see $dir/kube-controller-manager.log)"
  sleep 0.2
done

if [ -n "$with_node" ]; then
  node_start
fi

log "ready in $((SECONDS - started)) s: $server"
echo "kubeconfig=$dir/kubeconfig"

wait_for_stdin_eof
