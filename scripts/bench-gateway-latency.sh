#!/usr/bin/env bash
# What the filter adds to the ingress gateway's latency on the cluster bed, long enough to
# resolve 0.1 ms: the e2e test `the_gateway_with_and_without_the_filter_in_interleaved_rounds`
# (tests/cluster/tests/cluster_wide.rs: the endpoint's host, a host that only enters the Wasm
# VM, a plain host to the same pods, rotated in interleaved rounds) with more and longer
# fixed-rate rounds than CI's 7 x 4 s, where a round's p99 is its 4th slowest request.
#   scripts/bench-gateway-latency.sh               # 9 rounds x 30 s at 100 req/s per host (~17 min)
#   ROUNDS=15 SECS=20 scripts/bench-gateway-latency.sh
# Brings the bed up if it is down (scripts/test-cluster-e2e.sh installs this tree's operator)
# and leaves it up; the full output goes to $LOG. Run it with nothing else on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export MLEP_LATENCY_ROUNDS=${ROUNDS:-9} MLEP_LATENCY_SECS=${SECS:-30}
LOG=${LOG:-/tmp/mlep-bench-gateway-latency.log}
echo "$(date -u +%FT%TZ) $MLEP_LATENCY_ROUNDS rounds x $MLEP_LATENCY_SECS s, load $(cut -d' ' -f1-3 /proc/loadavg); log $LOG"
status=0
scripts/test-cluster-e2e.sh the_gateway_with_and_without_the_filter_in_interleaved_rounds >"$LOG" 2>&1 || status=$?
grep -E '^(measure|ok):' "$LOG" || true
[ "$status" = 0 ] || { tail -40 "$LOG"; echo "failed (exit $status), see $LOG" >&2; }
exit "$status"
