#!/usr/bin/env bash
# End to end on the cluster bed (scripts/cluster.sh). The checks are Rust tests: the crate
# mlep-cluster-e2e (tests/cluster; tests/cluster/src/lib.rs lists every check, phase by phase), each phase
# one test in its own namespace, asserting through typed kube-rs APIs. This script only brings
# the bed up, builds and imports this tree's operator image, installs the operator the way users
# do (kubectl apply -k manifests/) and runs the tests: tests/cluster/tests/namespaced.rs a few at a time,
# then tests/cluster/tests/cluster_wide.rs (the operator's Lease and replicas, the shared filters) and
# install_modes.rs (the namespaced install in place of the cluster-wide one) one at a time.
#
#   scripts/test-cluster-e2e.sh               # every phase
#   scripts/test-cluster-e2e.sh canary        # the tests whose name contains "canary"
#   MLEP_E2E_PROFILE=debug scripts/test-cluster-e2e.sh   # debug operator and mlep binaries
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CLUSTER_SH=${MLEP_CLUSTER_SH:-$ROOT/scripts/cluster.sh}
MKIMG=$(dirname "$CLUSTER_SH")/cluster/mkimg.py
PROFILE=${MLEP_E2E_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# Not under target/: that may be a link into ~/.cache (scripts/test.sh), and the kustomize
# overlay below names manifests/ by a relative path.
WORK=$ROOT/.cache/e2e

if ! "$CLUSTER_SH" status >/dev/null 2>&1; then "$CLUSTER_SH" up; fi
eval "$("$CLUSTER_SH" env | sed 's/^/export /')"
CTR_SOCK=${MLEP_CTR_SOCK:-$HOME/.cache/mlep-cluster/run/containerd/containerd.sock}
kc() { kubectl "$@"; }
fail() {
  echo "FAIL: $*" >&2
  kc -n mlep-system logs deploy/mlep-operator --tail=30 >&2 || true
  exit 1
}
mkdir -p "$WORK"

# --- 0. this tree's operator image (the bed imports the images of the tree it was built from) ---
echo "--> build the operator image from this tree ($PROFILE)"
if [ "$PROFILE" = release ]; then
  nice cargo build -q --release -p mlep-operator -p mlep   # mlep: the render phase
fi
rustup target add wasm32-wasip1 >/dev/null 2>&1 || true
nice cargo build -q --release -p mlep-filter --target wasm32-wasip1
BIN_OP=$TARGET/$PROFILE/mlep-operator
WASM=$TARGET/wasm32-wasip1/release/mlep_filter.wasm
strip -o "$WORK/mlep-operator" "$BIN_OP"
TAG=e2e-$(cat "$WORK/mlep-operator" "$WASM" | sha256sum | cut -c1-12)
python3 "$MKIMG" "$WORK/operator.tar" "ghcr.io/k8smlendpoints/mlep-operator:$TAG" \
  --bin "$WORK/mlep-operator:/usr/local/bin/mlep-operator" \
  --file "$WASM:/usr/share/mlep/mlep_filter.wasm" \
  --user 65532:65532 --entrypoint '["/usr/local/bin/mlep-operator"]' >/dev/null
ctr --address "$CTR_SOCK" -n k8s.io images import "$WORK/operator.tar" >/dev/null \
  || fail "ctr images import of the operator image"

# --- 1. the operator, as installed by users --------------------------------------------------
echo "--> kubectl apply -k manifests/ (operator image $TAG)"
mkdir -p "$WORK/operator"
cat >"$WORK/operator/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [../../../manifests]
images:
  - name: ghcr.io/k8smlendpoints/mlep-operator
    newTag: "$TAG"
# The bed's proxy image carries the filter's native build (scripts/cluster.sh): the operator
# runs endpoints that need nothing Wasm-only on it, as a platform team whose proxies have it.
patches:
  - target: {kind: Deployment, name: mlep-operator}
    patch: |
      - op: add
        path: /spec/template/spec/containers/0/env/-
        value: {name: MLEP_NATIVE_FILTER_PATH, value: /usr/local/lib/mlep/libmlep_filter_native.so}
EOF
kc apply -k "$WORK/operator" >/dev/null || fail "kubectl apply -k manifests/"
kc -n mlep-system rollout status deploy/mlep-operator --timeout=180s || fail "operator not Ready"

# The shipped alert rules, as this tree has them (the observability phase reloads Prometheus).
"$CLUSTER_SH" alert-rules || fail "the alert rules' ConfigMap"

# --- 2. the phases, one test each -------------------------------------------------------------
# Namespaces an interrupted earlier run left on a bed that stayed up: the cluster-wide phases
# count every endpoint in the cluster (the last one's deletion removes the shared filters).
stale=$(kc get namespaces -o name | grep '^namespace/e2e-' || true)
if [ -n "$stale" ]; then
  echo "--> delete the namespaces of an earlier run: $(echo $stale)"
  kc delete --wait=true --timeout=300s $stale >/dev/null || fail "deleting the namespaces of an earlier run"
fi
# Namespaced phases side by side (MLEP_E2E_THREADS of them), then the cluster-wide ones (the
# operator's Lease and replicas, the shared filters) one at a time.
export MLEP_FILTER_WASM=$WASM MLEP_BIN=$TARGET/$PROFILE/mlep
# The test files whose phases touch only their own namespace(s).
NAMESPACED=(--test autoscaling --test namespaced --test mesh_citizen --test hosts --test pod_security --test events --test observability --test analysis --test object_storage)
# --no-fail-fast, and the cluster-wide phases after failed namespaced ones: one run reports
# every failure (a bed run is long); the script fails if any did.
status=0
echo "--> cargo test -p mlep-cluster-e2e ${NAMESPACED[*]} (${MLEP_E2E_THREADS:-2} at a time)"
nice cargo test --no-fail-fast -p mlep-cluster-e2e "${NAMESPACED[@]}" -- --test-threads="${MLEP_E2E_THREADS:-2}" --nocapture "$@" || status=$?
echo "--> cargo test -p mlep-cluster-e2e --test cluster_wide --test install_modes (one at a time)"
nice cargo test --no-fail-fast -p mlep-cluster-e2e --test cluster_wide --test install_modes -- --test-threads=1 --nocapture "$@" || status=$?
exit "$status"
