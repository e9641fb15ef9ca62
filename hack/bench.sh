#!/usr/bin/env bash
# Every benchmark, on a local control plane: scale (convergence, write economy, memory),
# admission (webhook latency, pod-create ratio) and tokens (100 identities, 30 s tokens).
# Each prints its own table and writes target/bench/<name>.json; this script then prints
# one summary of the figures next to their targets (target/bench/summary.txt).
#
#   hack/bench.sh                 all three (about 25 minutes on 2 cores)
#   hack/bench.sh admission       only the named ones
#
# Shorter runs: WINFLOW_BENCH_IDENTITIES=100 WINFLOW_BENCH_PODS=1000 (scale),
# WINFLOW_BENCH_TOKEN_SECONDS=120 (tokens, default 600).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '==> %s\n' "$*" >&2; }

step "control-plane binaries"
KUBEBUILDER_ASSETS=$(hack/control-plane-assets.sh)
export KUBEBUILDER_ASSETS
step "oidc-provider node modules (tokens)"
WINFLOW_OIDC_NODE_MODULES=$(bash hack/oidc-provider.sh)
export WINFLOW_OIDC_NODE_MODULES

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(scale admission tokens)
for bench in "${benches[@]}"; do
  step "cargo bench --bench $bench"
  cargo bench --locked --bench "$bench"
done

step "summary"
python3 hack/bench-summary.py target/bench | tee target/bench/summary.txt
