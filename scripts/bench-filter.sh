#!/usr/bin/env bash
# Throughput and proxy CPU of Envoy without a filter, with the empty Wasm filter (same SDK,
# does nothing: the floor of any Wasm filter), with the mlep filter at several sizes
# (endpoints x variants in one config), with shadowing, and with Envoy's native mirror.
# Every mode gets its own Envoy (--concurrency 1), all started up front; each ROUND measures
# every mode once, in a rotated order, with wrk (1 thread, 16 connections, a distinct random
# x-user-id per request, DURATION seconds after a 1 s warm-up). Ratios are taken within a
# round (mode / no-filter of the same round) and reported as the median over ROUNDS with
# min..max, so machine load that drifts over the run (other jobs share the 2 cores) hits
# both sides of each ratio alike. cpu_us/req is the proxy process's own CPU time
# (utime+stime from /proc) per request; cpu_added is its per-round difference to no-filter.
# Env: ROUNDS (default 7), DURATION (s, default 5), MODES (`mode[:endpoints:variants]`, see
# scripts/bench/common.sh; nofilter must be first). `floor.<steps>` is filter/floor doing only
# those host calls: `floor.key+setreq+setresp+status+record` is the contract's minimum per
# request, `floor.mirror` the minimum of a Wasm-side mirror. cpu_vs_empty is the per-round
# difference to the empty Wasm filter (`noop`), when it is among the modes.
source "$(dirname "$0")/bench/common.sh"
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-5}
MODES=${MODES:-"nofilter noop floor.key+setreq+setresp+status+record filter:2:2 filter:50:2 filter:2:10 filter:50:10 shadow10 shadow mirror floor.mirror"}
read -r -a MODE_LIST <<<"$MODES"

cat > "$WORK/keys.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  return wrk.format("POST", "/invocations", {["Host"] = "titanic.local", ["x-user-id"] = tostring(math.random(1, 100000000)), ["content-type"] = "application/json"}, '{"x": [1, 2, 3]}')
end
LUA

declare -A PORT PID
for m in "${MODE_LIST[@]}"; do
  dir="$WORK/envoy-${m//:/-}"; mkdir -p "$dir"; PORT[$m]=$(free_port)
  render "$m" "$dir" "${PORT[$m]}"
  nice "$ENVOY" -c "$dir/envoy.json" --concurrency 1 --disable-hot-restart -l warning \
    --admin-address-path "$dir/admin" >"$dir/envoy.log" 2>&1 &
  PID[$m]=$!; PIDS+=($!)
done
for m in "${MODE_LIST[@]}"; do
  dir="$WORK/envoy-${m//:/-}"
  for _ in $(seq 1 1200); do [ -s "$dir/admin" ] && break; sleep 0.05; done
  wait_http "http://$(cat "$dir/admin")/ready" || { tail -20 "$dir/envoy.log" >&2; exit 1; }
done

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# measure <mode> -> "rps p50_us p99_us cpu_us_per_request"
measure() {
  local port=${PORT[$1]} pid=${PID[$1]} out t0 t1
  wrk -t1 -c16 -d1s -s "$WORK/keys.lua" "http://127.0.0.1:$port/" >/dev/null
  t0=$(cpu_ticks "$pid")
  out=$(wrk -t1 -c16 -d"${DURATION}s" --latency -s "$WORK/keys.lua" "http://127.0.0.1:$port/")
  t1=$(cpu_ticks "$pid")
  echo "$out" | awk -v ticks=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" '
    function us(v) { if (v ~ /us$/) return v+0; if (v ~ /ms$/) return (v+0)*1000; if (v ~ /s$/) return (v+0)*1000000; return v }
    /Requests\/sec/ { rps=$2 } /^ +50%/ { p50=us($2) } /^ +99%/ { p99=us($2) } / requests in / { n=$1 }
    /Non-2xx/ { bad=$NF }
    END { if (bad > 0) { print "non-2xx responses: " bad > "/dev/stderr" } printf "%s %s %s %.2f\n", rps, p50, p99, ticks / hz * 1e6 / n }'
}

echo "load before: $(uptime)"
RES="$WORK/results"; : >"$RES"
n=${#MODE_LIST[@]}
for r in $(seq 1 "$ROUNDS"); do
  for i in $(seq 0 $((n - 1))); do
    m=${MODE_LIST[$(((i + r) % n))]}
    echo "$r $m $(measure "$m")" >>"$RES"
  done
done
echo "load after:  $(uptime)"

# Per round ratios against that round's no-filter; medians and min..max over rounds.
python3 - "$RES" "${MODE_LIST[@]}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
modes = sys.argv[2:]
by = {}
for r, m, rps, p50, p99, cpu in rows:
    by.setdefault(m, {})[int(r)] = (float(rps), float(p50), float(p99), float(cpu))
base = by[modes[0]]
labels = {"nofilter": "envoy, no filter", "noop": "envoy + empty wasm filter",
          "shadow": "mlep filter, 100% shadow", "shadow10": "mlep filter, 10% shadow",
          "shadow-nocompare": "  same, comparison off", "mirror": "envoy, native mirror (100%)",
          "floor.key+setreq+setresp+status+record": "contract floor (5 host calls)",
          "floor.mirror": "wasm mirror floor (100%)"}
def label(m):
    if m.startswith("filter"):
        parts = m.split(":")
        return f"mlep filter, {parts[1]} ep x {parts[2]} var" if len(parts) == 3 else "mlep filter"
    return labels.get(m, m)
def stat(xs, fmt):
    return f"{fmt.format(statistics.median(xs))} ({fmt.format(min(xs))}..{fmt.format(max(xs))})"
rounds = sorted(base)
print(f"\n{len(rounds)} rounds; median (min..max) over rounds; ratio and cpu_added per round vs no-filter")
noop = by.get("noop", {})
print(f"{'mode':32} {'req/s':>7} {'ratio':>21} {'cpu_us/req':>24} {'cpu_added':>24} {'cpu_vs_empty':>24} {'p99_us':>7}")
for m in modes:
    rs = [r for r in rounds if r in by[m]]
    rps = [by[m][r][0] for r in rs]
    ratio = [by[m][r][0] / base[r][0] for r in rs]
    cpu = [by[m][r][3] for r in rs]
    added = [by[m][r][3] - base[r][3] for r in rs]
    p99 = [by[m][r][2] for r in rs]
    vs_empty = [by[m][r][3] - noop[r][3] for r in rs if r in noop]
    print(f"{label(m):32} {statistics.median(rps):7.0f} {stat(ratio, '{:.3f}'):>21} "
          f"{stat(cpu, '{:.1f}'):>24} {stat(added, '{:+.1f}'):>24} "
          f"{stat(vs_empty, '{:+.1f}') if vs_empty else '-':>24} {statistics.median(p99):7.0f}")
PY
