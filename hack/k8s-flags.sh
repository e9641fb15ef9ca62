# Version-dependent flags of the Kubernetes binaries, chosen from the binaries' own
# `--version` and `--help` output, so that hack/control-plane.sh and hack/node.sh start
# anything from 1.20 (the binaries hack/control-plane-assets.sh builds) to the newest release
# (envtest binaries through KUBEBUILDER_ASSETS). Sourced; every function is pure (text in,
# flags out), so tests/control_plane_flags.rs checks them on recorded outputs.

# The minor version from `--version` output ("Kubernetes v1.36.2" -> 36); empty if none.
k8s_minor() {
  sed -n 's/.*v1\.\([0-9][0-9]*\).*/\1/p' <<<"$1" | head -n 1
}

# Whether `--help` output lists the flag (e.g. --pod-infra-container-image).
help_lists_flag() {
  grep -Eq -- "(^|[[:space:],])$2([[:space:]=]|$)" <<<"$1"
}

# `--feature-gates=A=true,B=true` for those of the gates named that the `--help` output
# lists (the feature-gates flag's text names every gate the binary knows, from about 1.31 as
# `kube:Name`), nothing when none: gates are removed once their feature is GA, and an
# unknown one is an error.
feature_gate_args() {
  local help=$1 gate known=()
  shift
  for gate in "$@"; do
    grep -Eq -- "(^|[[:space:]])(kube:)?$gate=true\|false" <<<"$help" && known+=("$gate=true")
  done
  [ ${#known[@]} -eq 0 ] || (IFS=,; echo "--feature-gates=${known[*]}")
}

# `--port=0` (no insecure HTTP port) for kube-controller-manager and kube-scheduler below
# 1.24, which removed the flag (insecure serving was already off from 1.22 on).
insecure_port_args() {
  local minor
  minor=$(k8s_minor "$1")
  [ -z "$minor" ] || [ "$minor" -ge 24 ] || echo "--port=0"
}

# `--container-runtime=remote` for the kubelet below 1.27, which removed the flag (a remote
# CRI runtime is then the only kind).
kubelet_runtime_args() {
  local minor
  minor=$(k8s_minor "$1")
  [ -z "$minor" ] || [ "$minor" -ge 27 ] || echo "--container-runtime=remote"
}
