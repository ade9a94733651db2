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
# `old` = `filter` with the build in $OLD_WASM, `floor.<steps>` = the contract's floor filter
# doing only <steps>, see filter/floor/src/lib.rs), CG_KEEP (copy the callgrind files there).
# Rate (instructions per µs, to convert counts to time): RATE_CASES (default `nofilter noop
# filter:2:2`) each run natively (no valgrind), RATE_ROUNDS (default 3) interleaved rounds of
# RATE_N (default 20000) requests; the proxy's CPU time (utime+stime) per request, median over
# rounds, beside its callgrind count gives instructions per µs of this machine now.
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
  # Copies sent to the shadow cluster, per request sent (warm-up included): shows that a
  # mirroring case mirrored.
  local copies
  copies=$(curl -fs "http://$admin/stats?filter=^cluster.mlep.titanic.shadow.upstream_rq_total$" | awk -F': ' '{ s += $2 } END { print s + 0 }')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  # Per thread (file suffix -NN), the `totals:` of every dump (the measurement's, and the
  # near-empty one at exit).
  local worker all
  read -r worker all < <(for f in "$dir"/cg.out*; do
      echo "${f##*-} $(awk '/^totals:/ { s += $2 } END { print s + 0 }' "$f")"
    done | awk '{ t[$1] += $2; all += $2 } END { for (k in t) if (t[k] > m) m = t[k]; print m, all }')
  [ -n "${CG_KEEP:-}" ] && { mkdir -p "$CG_KEEP/${c//:/-}"; cp "$dir"/cg.out* "$CG_KEEP/${c//:/-}/"; }
  awk -v c="$c" -v w="$worker" -v a="$all" -v n="$N" -v m="$copies" -v t="$((N + W))" \
    'BEGIN { printf "%-48s %12.0f %12.0f %8.2f\n", c, w / n, a / n, m / t }'
}

# Native runs: CPU µs per request of each RATE_CASES mode, interleaved rounds.
rate() {
  local c dir port pid admin
  declare -A P D
  for c in $RATE_CASES; do
    dir="$WORK/rate-${c//:/-}"; mkdir -p "$dir"; port=$(free_port)
    render "$c" "$dir" "$port"
    "$ENVOY" -c "$dir/envoy.json" --concurrency 1 --disable-hot-restart -l warning \
      --admin-address-path "$dir/admin" >"$dir/envoy.log" 2>&1 &
    pid=$!; PIDS+=("$pid"); P[$c]=$pid; D[$c]=$port
    for _ in $(seq 1 1200); do [ -s "$dir/admin" ] && break; sleep 0.05; done
    wait_http "http://$(cat "$dir/admin")/ready"
    python3 "$ROOT/scripts/bench/requests.py" "127.0.0.1:$port" "$W"
  done
  local hz t0 t1; hz=$(getconf CLK_TCK)
  for r in $(seq 1 "$RATE_ROUNDS"); do
    for c in $RATE_CASES; do
      t0=$(awk '{ print $14 + $15 }' "/proc/${P[$c]}/stat")
      python3 "$ROOT/scripts/bench/requests.py" "127.0.0.1:${D[$c]}" "$RATE_N"
      t1=$(awk '{ print $14 + $15 }' "/proc/${P[$c]}/stat")
      echo "$c $r $(( t1 - t0 ))"
    done
  done | awk -v hz="$hz" -v n="$RATE_N" '{ us = $3 / hz * 1e6 / n; v[$1] = v[$1] " " us; if (!($1 in seen)) { seen[$1] = 1; order[++k] = $1 } }
    END { for (i = 1; i <= k; i++) { c = order[i]; m = split(substr(v[c], 2), a, " ");
      for (x = 1; x <= m; x++) for (y = x + 1; y <= m; y++) if (a[y] < a[x]) { t = a[x]; a[x] = a[y]; a[y] = t }
      printf "%-48s %8.2f us/req cpu (median of %d; %.2f..%.2f)\n", c, a[int((m + 1) / 2)], m, a[1], a[m] } }'
  for c in $RATE_CASES; do kill "${P[$c]}" 2>/dev/null || true; done
}

echo "N=$N requests per case (after $W warm-up), Envoy $("$ENVOY" --version | sed -n 's|.*/\([0-9]*\.[0-9]*\.[0-9]*\)/.*|\1|p')"
printf '%-48s %12s %12s %8s\n' case worker/req all/req copies
for c in $CASES; do count_case "$c"; done
RATE_CASES=${RATE_CASES-"nofilter noop filter:2:2"}
RATE_ROUNDS=${RATE_ROUNDS:-3}
RATE_N=${RATE_N:-20000}
if [ -n "$RATE_CASES" ]; then
  echo "native CPU per request (RATE_N=$RATE_N, $RATE_ROUNDS interleaved rounds, load: $(cut -d' ' -f1-3 /proc/loadavg))"
  rate
fi
