#!/usr/bin/env bash
# Instructions per request, counted by valgrind (callgrind), for Envoy without a filter, with
# the empty Wasm filter (same SDK, does nothing) and with the mlep filter in several shapes.
# Instruction counts are repeatable where time on this shared 2-core machine is not.
# Method: Envoy (--concurrency 1) runs under `valgrind --tool=callgrind --smc-check=all`
# (V8 writes and patches machine code; without it valgrind would run stale translations)
# with instrumentation off; after a warm-up of W requests (long enough for V8 to finish
# tiering the module up, which happens on background threads), instrumentation is switched
# on, exactly N requests go over one keep-alive connection (scripts/bench/requests.py), and
# the counters are dumped per thread. Printed per request: the worker thread (the busiest
# one; it runs every filter callback and host call) and all threads (adds the main thread's
# timers and stats flush and any late V8 compilation, so it is less repeatable).
# Env: N (default 2000), W (default 2000), CASES (default below; `mode[:endpoints:variants]`,
# `old` = `filter` with the build in $OLD_WASM), CG_KEEP (copy the callgrind files there).
NEED_VALGRIND=1
source "$(dirname "$0")/bench/common.sh"
N=${N:-2000}
W=${W:-2000}
CASES=${CASES:-"nofilter noop filter:2:2 filter:50:2 filter:2:10 filter:50:10"}

count_case() {
  local c=$1 dir="$WORK/cg-${1//:/-}" port pid admin
  mkdir -p "$dir"; port=$(free_port)
  render "$c" "$dir" "$port"
  valgrind --tool=callgrind --smc-check=all --instr-atstart=no --separate-threads=yes \
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
  # Per thread (file suffix -NN), the `totals:` of every dump (the measurement's, and the
  # near-empty one at exit).
  local worker all
  read -r worker all < <(for f in "$dir"/cg.out*; do
      echo "${f##*-} $(awk '/^totals:/ { s += $2 } END { print s + 0 }' "$f")"
    done | awk '{ t[$1] += $2; all += $2 } END { for (k in t) if (t[k] > m) m = t[k]; print m, all }')
  [ -n "${CG_KEEP:-}" ] && { mkdir -p "$CG_KEEP/${c//:/-}"; cp "$dir"/cg.out* "$CG_KEEP/${c//:/-}/"; }
  awk -v c="$c" -v w="$worker" -v a="$all" -v n="$N" 'BEGIN { printf "%-16s %12.0f %12.0f\n", c, w / n, a / n }'
}

echo "N=$N requests per case (after $W warm-up), Envoy $("$ENVOY" --version | sed -n 's|.*/\([0-9]*\.[0-9]*\.[0-9]*\)/.*|\1|p')"
printf '%-16s %12s %12s\n' case worker/req all/req
for c in $CASES; do count_case "$c"; done
