# A worker node for the local control plane: containerd, kubelet, kube-proxy and
# kube-scheduler, following ../shared/REALNODE.md. Sourced by hack/control-plane.sh --node,
# whose `start`, `log`, `die`, `write_kubeconfig`, `$dir` and `$bin` it uses; not run on its
# own.
#
# Every address is on this machine: the pods live on the bridge winflow0 (10.244.0.0/24,
# gateway 10.244.0.1, which is also where the API server listens), nothing is masqueraded,
# and a FORWARD rule drops whatever a pod sends past the bridge. The kubelet writes to fixed
# paths (/var/lib/kubelet, /var/log/pods, /run/netns, ...), so one node runs per machine at
# a time: a lock file says so instead of letting two nodes corrupt each other.

node_name=winflow-node
node_bridge=winflow0
node_pod_cidr=10.244.0.0/24
node_address=10.244.0.1
# The sandbox image containerd runs for every pod; hack/image.sh writes it.
node_pause_image=winflow.local/pause:3.4
node_lock=/run/lock/winflow-node.lock
# Fixed paths the kubelet, containerd's CNI and runc write to; removed on stop when this
# node made them.
node_fixed_paths=(/var/lib/kubelet /var/log/pods /var/log/containers /var/lib/cni /run/netns /run/containerd)
node_made_paths=()
node_sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)
node_saved_sysctls=()
node_netns_before=""
node_chains_before=""
node_started=""

as_root_check() {
  [ "$(id -u)" -eq 0 ] || die "--node needs root (it creates a bridge, iptables rules and mounts)"
}

# Takes the machine-wide node lock (fd 9, held until this shell exits) and sets up the pod
# network's host side, so the API server can listen on the bridge before any pod exists.
node_prepare() {
  as_root_check
  local tool
  for tool in containerd runc ip iptables conntrack; do
    command -v "$tool" >/dev/null || die "$tool is missing; install Debian's containerd runc iproute2 iptables conntrack containernetworking-plugins"
  done
  [ -x /usr/lib/cni/bridge ] || die "/usr/lib/cni/bridge is missing; install Debian's containernetworking-plugins"
  mkdir -p "$(dirname "$node_lock")"
  exec 9>"$node_lock"
  # A node that is still stopping (its pods draining) lets go within a minute.
  if ! flock -n 9; then
    log "waiting for the other local node to stop ($(cat "$node_lock.owner" 2>/dev/null || echo unknown)); one node per machine"
    flock -w 120 9 || die "another local node is still running on this machine after 120 s (lock $node_lock held by $(cat "$node_lock.owner" 2>/dev/null || echo unknown))"
  fi
  echo "pid $$, state $dir" >"$node_lock.owner"
  node_started=1
  # A node stopped by SIGKILL leaves its bridge and chains behind; start from clean.
  node_remove_network

  node_netns_before=$(ls /run/netns 2>/dev/null || true)
  node_chains_before=$(node_kube_chains)
  local path
  for path in "${node_fixed_paths[@]}"; do
    [ -e "$path" ] || node_made_paths+=("$path")
  done

  local name value
  for name in "${node_sysctls[@]}"; do
    value=$(sysctl -n "$name" 2>/dev/null) || die "sysctl $name is unavailable (bridge netfilter missing?)"
    node_saved_sysctls+=("$name=$value")
    sysctl -qw "$name=1"
  done

  ip link add "$node_bridge" type bridge
  ip addr add "$node_address/24" dev "$node_bridge"
  ip link set "$node_bridge" up
  # Pods talk to each other, the API server and Services; nothing they send leaves the
  # machine through another interface.
  iptables -N WINFLOW-NODE
  iptables -A WINFLOW-NODE -i "$node_bridge" ! -o "$node_bridge" -j DROP
  iptables -I FORWARD 1 -j WINFLOW-NODE
}

# The API server listens on the bridge (control-plane.sh sets its address to
# $node_address: pods reach it through the `kubernetes` Service), authorizes kubelets with
# the Node authorizer, and calls kubelets by their InternalIP.
node_apiserver_args() {
  apiserver_args+=(--kubelet-preferred-address-types=InternalIP)
}

# One token user per component, as REALNODE.md lists; the default RBAC bindings of the API
# server give each what it needs.
node_tokens() {
  node_kubelet_token=$(openssl rand -hex 32)
  node_proxy_token=$(openssl rand -hex 32)
  node_scheduler_token=$(openssl rand -hex 32)
  {
    echo "$node_kubelet_token,system:node:$node_name,kubelet-uid,system:nodes"
    echo "$node_proxy_token,system:kube-proxy,kube-proxy-uid"
    echo "$node_scheduler_token,system:kube-scheduler,kube-scheduler-uid"
  } >>"$dir/tokens.csv"
}

node_start() {
  local node=$dir/node
  mkdir -p "$node/cni" "$node/containerd" "$node/kubelet"
  write_kubeconfig "$node/kubelet.kubeconfig" kubelet "$node_kubelet_token"
  write_kubeconfig "$node/kube-proxy.kubeconfig" kube-proxy "$node_proxy_token"
  write_kubeconfig "$node/kube-scheduler.kubeconfig" kube-scheduler "$node_scheduler_token"

  # The pod network: one bridge, host-local addresses, the bridge as the only route.
  cat >"$node/cni/10-winflow.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "winflow",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$node_bridge",
      "isGateway": true,
      "hairpinMode": true,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$node_pod_cidr", "gateway": "$node_address"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  # restrict_oom_score_adj is required here: this VM lacks CAP_SYS_RESOURCE, and without it
  # every sandbox fails in runc (REALNODE.md).
  cat >"$node/containerd/config.toml" <<EOF
version = 2
root = "$node/containerd/root"
state = "$node/containerd/state"
[grpc]
  address = "$dir/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$node/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$node_pause_image"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$node/cni"
EOF
  start containerd containerd --config "$node/containerd/config.toml"
  local deadline=$((SECONDS + 30))
  until ctr -a "$dir/containerd.sock" version >/dev/null 2>&1; do
    check_alive || exit 1
    [ "$SECONDS" -lt "$deadline" ] || die "containerd not answering after 30 s (see $dir/containerd.log)"
    sleep 0.2
  done

  # The pause image first (no sandbox starts without it); the caller's images after it.
  log "importing images: pause ${WINFLOW_NODE_IMAGES:-}"
  # shellcheck disable=SC2086 # WINFLOW_NODE_IMAGES is a list of image names
  "$here/image.sh" --import "$dir/containerd.sock" pause ${WINFLOW_NODE_IMAGES:-} >&2 \
    || die "hack/image.sh could not import the node's images"

  # Anonymous, always-allowed kubelet API: a local test node only (REALNODE.md). Evictions
  # only on a nearly full disk, so a busy test machine does not taint its one node.
  cat >"$node/kubelet-config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: $node_address
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
resolvConf: /etc/resolv.conf
EOF
  # Flags newer kubelets removed: --container-runtime (1.27); --pod-infra-container-image,
  # which only keeps the image from garbage collection (containerd's sandbox_image is what runs).
  local kubelet_args=()
  read -r -a kubelet_args <<<"$(kubelet_runtime_args "$("$bin/kubelet" --version 2>&1 || true)")"
  if help_lists_flag "$("$bin/kubelet" --help 2>&1 || true)" --pod-infra-container-image; then
    kubelet_args+=(--pod-infra-container-image="$node_pause_image")
  fi
  start kubelet "$bin/kubelet" \
    --kubeconfig="$node/kubelet.kubeconfig" \
    --config="$node/kubelet-config.yaml" \
    "${kubelet_args[@]}" \
    --container-runtime-endpoint="unix://$dir/containerd.sock" \
    --root-dir="$node/kubelet" \
    --cert-dir="$node/kubelet/pki" \
    --hostname-override="$node_name" \
    --node-ip="$node_address"

  cat >"$node/kube-proxy-config.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $node/kube-proxy.kubeconfig
mode: iptables
clusterCIDR: $node_pod_cidr
hostnameOverride: $node_name
bindAddress: $node_address
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
EOF
  start kube-proxy "$bin/kube-proxy" --config="$node/kube-proxy-config.yaml"
  local scheduler_port_args=()
  read -r -a scheduler_port_args <<<"$(insecure_port_args "$("$bin/kube-scheduler" --version 2>&1 || true)")"
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig="$node/kube-scheduler.kubeconfig" \
    --leader-elect=false "${scheduler_port_args[@]}" --secure-port=0

  log "waiting for node $node_name to be Ready"
  deadline=$((SECONDS + 90))
  until [ "$(node_ready)" = True ]; do
    check_alive || exit 1
    [ "$SECONDS" -lt "$deadline" ] || die "node $node_name not Ready after 90 s (see $dir/kubelet.log)"
    sleep 0.5
  done
}

node_ready() {
  curl -sS --max-time 5 --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" \
    "$server/api/v1/nodes/$node_name" 2>/dev/null \
    | python3 -c 'import json,sys
try:
    c = json.load(sys.stdin)["status"]["conditions"]
    print(next(x["status"] for x in c if x["type"] == "Ready"))
except Exception:
    print("Unknown")'
}

# Stops what makes pods (controller-manager, scheduler), then has the kubelet tear down every
# pod, so that its mounts, network namespaces and addresses go the way they came. Called
# before the processes are stopped in reverse order.
node_drain() {
  [ -n "$node_started" ] || return 0
  local i name
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    name=${names[i]}
    if [ "$name" = kube-controller-manager ] || [ "$name" = kube-scheduler ]; then
      stop_one "$name" "${pids[i]}"
    fi
  done
  alive_named kube-apiserver && alive_named kubelet || return 0
  local namespaces ns
  namespaces=$(curl -sS --max-time 5 --cacert "$dir/certs/apiserver.crt" -H "Authorization: Bearer $token" \
    "$server/api/v1/namespaces" 2>/dev/null \
    | python3 -c 'import json,sys
try:
    print(" ".join(i["metadata"]["name"] for i in json.load(sys.stdin)["items"]))
except Exception:
    pass')
  for ns in $namespaces; do
    curl -sS -o /dev/null --max-time 5 --cacert "$dir/certs/apiserver.crt" \
      -H "Authorization: Bearer $token" -H 'Content-Type: application/json' -X DELETE \
      --data '{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0}' \
      "$server/api/v1/namespaces/$ns/pods" 2>/dev/null || true
  done
  # Running tasks, not containers: those of finished pods stay until their pod is gone,
  # which a finalizer (its controller stopped) can hold off for ever.
  local deadline=$((SECONDS + 30)) drain_started=$SECONDS
  while ctr -a "$dir/containerd.sock" -n k8s.io tasks ls 2>/dev/null | grep -q RUNNING; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "the kubelet left running containers after 30 s; killing them"
      break
    fi
    sleep 0.5
  done
  log "pods drained in $((SECONDS - drain_started)) s"
  node_force_remove_containers
}

# The kubelet first, so that it does not start them again.
node_force_remove_containers() {
  local i id
  for ((i = 0; i < ${#names[@]}; i++)); do
    [ "${names[i]}" != kubelet ] || stop_one kubelet "${pids[i]}"
  done
  for id in $(ctr -a "$dir/containerd.sock" -n k8s.io containers ls -q 2>/dev/null); do
    ctr -a "$dir/containerd.sock" -n k8s.io tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    ctr -a "$dir/containerd.sock" -n k8s.io tasks delete -f "$id" >/dev/null 2>&1 || true
    ctr -a "$dir/containerd.sock" -n k8s.io containers delete "$id" >/dev/null 2>&1 || true
  done
}

alive_named() {
  local i
  for ((i = 0; i < ${#names[@]}; i++)); do
    [ "${names[i]}" != "$1" ] || { alive "${pids[i]}"; return; }
  done
  return 1
}

# The bridge, the chains and rules this node (or one killed before it) added.
node_remove_network() {
  if iptables -C FORWARD -j WINFLOW-NODE 2>/dev/null; then
    iptables -D FORWARD -j WINFLOW-NODE
  fi
  iptables -F WINFLOW-NODE 2>/dev/null || true
  iptables -X WINFLOW-NODE 2>/dev/null || true
  if ip link show "$node_bridge" >/dev/null 2>&1; then
    ip link delete "$node_bridge"
  fi
}

# "TABLE CHAIN" for every KUBE-* chain (the kubelet's and kube-proxy's).
node_kube_chains() {
  local table
  for table in filter nat mangle; do
    iptables -t "$table" -S 2>/dev/null | awk -v t="$table" '$1 == "-N" && $2 ~ /^KUBE-/ {print t, $2}'
  done
}

# kube-proxy --cleanup leaves the kubelet's chains (KUBE-FIREWALL drops "incoming localnet
# connections" on INPUT and OUTPUT); remove every KUBE-* chain this node added and the rules
# that jump to them.
node_remove_kube_chains() {
  local table chain rule
  while read -r table chain; do
    [ -n "$chain" ] || continue
    grep -qxF "$table $chain" <<<"$node_chains_before" && continue
    while read -r rule; do
      # iptables' own -S output, so its quoting is safe to evaluate.
      eval "iptables -t $table -D ${rule#-A }" 2>/dev/null || true
    done < <(iptables -t "$table" -S | awk -v c="$chain" '$1 == "-A" && $2 !~ /^KUBE-/ && / -j / { for (i = 3; i < NF; i++) if ($i == "-j" && $(i + 1) == c) { print; break } }')
  done < <(node_kube_chains)
  while read -r table chain; do
    [ -n "$chain" ] || continue
    grep -qxF "$table $chain" <<<"$node_chains_before" && continue
    iptables -t "$table" -F "$chain" 2>/dev/null || true
  done < <(node_kube_chains)
  while read -r table chain; do
    [ -n "$chain" ] || continue
    grep -qxF "$table $chain" <<<"$node_chains_before" && continue
    iptables -t "$table" -X "$chain" 2>/dev/null || true
  done < <(node_kube_chains)
}

# After every process has stopped: whatever is still mounted under the state directory,
# the pods' network namespaces, kube-proxy's chains, the bridge, the sysctls, and the fixed
# paths this node created.
node_cleanup() {
  [ -n "$node_started" ] || return 0
  local mount_point ns entry path
  # Innermost first.
  while read -r mount_point; do
    umount -l "$mount_point" 2>/dev/null || true
  done < <(awk -v d="$dir" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
  # The pods' network namespaces: those that were not there before this node.
  for ns in $(ls /run/netns 2>/dev/null); do
    grep -qxF "$ns" <<<"$node_netns_before" || ip netns delete "$ns" 2>/dev/null || true
  done
  "$bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  node_remove_kube_chains
  node_remove_network
  for entry in "${node_saved_sysctls[@]}"; do
    sysctl -qw "$entry" || true
  done
  rm -rf /var/lib/cni/networks/winflow /var/lib/cni/results/winflow-*
  for path in "${node_made_paths[@]}"; do
    awk -v p="$path" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r mount_point; do
      umount -l "$mount_point" 2>/dev/null || true
    done
    rm -rf "$path"
  done
  rm -f "$node_lock.owner"
}
