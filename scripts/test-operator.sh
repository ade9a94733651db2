#!/bin/bash
# The operator's tests on a fresh Debian bookworm machine: installs what it needs (idempotent),
# builds kube-apiserver v1.37.2 + kube-controller-manager + etcd from their Go modules (the
# cluster bed's, scripts/cluster.sh build-k8s, cached in ~/.cache; MLEP_ENVTEST_K8S=1.20 builds
# Debian's 1.20 source instead), starts them on 127.0.0.1, runs the unit tests
# and the integration tests against them (our CRDs and Istio's installed by the tests), checks
# that manifests/crds/ matches the Rust types, and stops the servers. Exit code != 0 on failure.
# Needs ../shared (the project's shared data: Istio's CRDs) beside the repository.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")/.."
t0=$(date +%s)
[ -f ../shared/istio/crd-all.gen.yaml ] || { echo "missing ../shared/istio/crd-all.gen.yaml (Istio's CRDs)"; exit 1; }

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then export PATH="$HOME/.cargo/bin:$PATH"; else
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq curl ca-certificates build-essential >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
command -v cc >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && apt-get install -y -qq build-essential >/dev/null; }

scripts/envtest/setup.sh build
t1=$(date +%s)
stop() { scripts/envtest/setup.sh stop || true; }
trap stop EXIT
scripts/envtest/setup.sh start
export KUBECONFIG="$(scripts/envtest/setup.sh dir)/kubeconfig"

# Unit tests: the pure core (rendering, planning, status, validation), the runtime's own, and
# the CRD drift check, the command line.
cargo test -p mlep-core
cargo test -p mlep-operator --lib --test crds --test cli --test module_server --test manifests
# Integration tests: one API server, so one test at a time (one restarts the API server).
cargo test -p mlep-operator --features envtest --test cluster -- --test-threads=1
cargo test -p mlep-operator --features envtest --test hosts -- --test-threads=1
cargo test -p mlep-operator --features envtest --test names -- --test-threads=1
cargo test -p mlep-operator --features envtest --test namespaced -- --test-threads=1
cargo test -p mlep-operator --features envtest --test autoscale -- --test-threads=1
cargo clippy -p mlep-core -p mlep-operator --all-targets --features envtest -- -D warnings
t2=$(date +%s)
echo "[test-operator] ok: provisioning $((t1-t0)) s, tests $((t2-t1)) s"
