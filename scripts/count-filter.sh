#!/usr/bin/env bash
# Instructions per request, counted by valgrind (callgrind), for Envoy without a filter, with
# the empty Wasm filter (same SDK, does nothing) and with the mlep filter in several shapes.
# Instruction counts are repeatable where time on this shared 2-core machine is not.
# Method: Envoy (--concurrency 1) runs under `valgrind --tool=callgrind --smc-check=all`
# (V8 writes and patches machine code; without it valgrind would run stale translations)
# with instrumentation off; after a warm-up of W requests, instrumentation is switched on,
# exactly N requests go over one keep-alive connection (scripts/bench/requests.py), and the
# counters are dumped. Ir / N = instructions per request, all Envoy threads included.
# Env: N (default 2000), W (default 300), CASES (default below; `mode[:endpoints:variants]`).
NEED_VALGRIND=1
source "$(dirname "$0")/bench/common.sh"
N=${N:-2000}
W=${W:-300}
CASES=${CASES:-"nofilter noop filter:2:2 filter:50:2 filter:2:10 filter:50:10"}

count_case() {
  local c=$1 dir="$WORK/cg-${1//:/-}" port pid admin
  mkdir -p "$dir"; port=$(free_port)
  render "$c" "$dir" "$port"
  valgrind --tool=callgrind --smc-check=all --instr-atstart=no --collect-systime=no \
    --callgrind-out-file="$dir/cg.out" \
    "$ENVOY" -c "$dir/envoy.json" --concurrency 1 --disable-hot-restart -l warning \
    --admin-address-path "$dir/admin" >"$dir/envoy.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 6000); do [ -s "$dir/admin" ] && break; sleep 0.05; done
  admin=$(cat "$dir/admin")
  wait_http "http://$admin/ready" 6000
  python3 "$ROOT/scripts/bench/requests.py" "127.0.0.1:$port" "$W"
  callgrind_control -i on "$pid" >/dev/null 2>&1
  python3 "$ROOT/scripts/bench/requests.py" "127.0.0.1:$port" "$N"
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # Sum the `totals:` of every dump (the measurement's, and the empty one at exit).
  local ir
  ir=$(cat "$dir"/cg.out* | awk '/^totals:/ { s += $2 } END { print s }')
  awk -v c="$c" -v ir="$ir" -v n="$N" 'BEGIN { printf "%-16s %14.0f %12.0f\n", c, ir, ir / n }'
}

echo "N=$N requests per case (after $W warm-up), Envoy $("$ENVOY" --version | sed -n 's|.*/\([0-9]*\.[0-9]*\.[0-9]*\)/.*|\1|p')"
printf '%-16s %14s %12s\n' case instructions per_request
for c in $CASES; do count_case "$c"; done
