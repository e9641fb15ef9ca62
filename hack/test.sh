#!/usr/bin/env bash
# The project's whole test suite: formatting, lints and every test, against a real local
# control plane. Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '==> %s\n' "$*" >&2; }

# The integration tests start etcd, kube-apiserver and kube-controller-manager from here,
# and tests/in_cluster.rs a worker node (kubelet, kube-proxy, kube-scheduler, pause); the
# first run builds them (about 10 minutes), later runs reuse the cache.
# System packages first (containerd, PostgreSQL, Node.js, kubectl, ...): only what is missing.
step "system packages (hack/test-deps.sh)"
hack/test-deps.sh

step "control-plane and node binaries"
assets=$(hack/control-plane-assets.sh --node)
export KUBEBUILDER_ASSETS=$assets

# Tests that render pods through Apache Airflow's own pod builder use this interpreter.
if [ -f hack/airflow-venv.sh ]; then
  step "Airflow virtualenv"
  airflow_python=$(bash hack/airflow-venv.sh)
  export WINFLOW_AIRFLOW_PYTHON=$airflow_python
fi
step "oidc-provider node modules"; WINFLOW_OIDC_NODE_MODULES=$(bash hack/oidc-provider.sh); export WINFLOW_OIDC_NODE_MODULES
step "helm (tests/chart/)"; WINFLOW_HELM=$(bash hack/helm.sh); export WINFLOW_HELM
step "hadolint (tests/image.rs)"; WINFLOW_HADOLINT=$(bash hack/hadolint.sh); export WINFLOW_HADOLINT

step "cargo fmt --all --check"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "cargo test"
# Only this run's figures are shown below.
rm -f target/release-binary-size.txt target/in-cluster-figures.txt target/airflow-e2e-figures.txt
cargo test --locked "$@"

# Figures the tests measured (printed here, since cargo test hides passing tests' output).
step "figures"
for figures in target/release-binary-size.txt target/in-cluster-figures.txt target/airflow-e2e-figures.txt; do
  [ ! -f "$figures" ] || cat "$figures"
done
