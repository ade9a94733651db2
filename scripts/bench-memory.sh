#!/usr/bin/env bash
# Memory of the filter's bounded queues under sustained load whose calls cannot keep up:
#   MODE=shadow (default): 100% shadowing with request bodies up to maxBodyBytes (64 KiB; some
#     over it, which are not mirrored) and a shadow that answers slowly (DELAY_MS, default
#     200), so copies pile up to the hub's bounds (1024 in flight, 16 MiB of bodies);
#   MODE=capture: 100% data capture of request and response, and a sink that is SINK=down
#     (nothing listens: every call fails at once) or SINK=slow (answers after DELAY_MS; above
#     the capture timeout of 1000 ms it never answers in time), so records pile up to the
#     capture queue's bounds (256 records, 8 MiB).
# Samples the worker VM's `mlep_vm_memory_bytes` (linear memory, which never shrinks) and
# Envoy's resident memory every SAMPLE seconds for DURATION seconds: a plateau means bounded.
source "$(dirname "$0")/bench/common.sh"
MODE=${MODE:-shadow}
SINK=${SINK:-slow}
DURATION=${DURATION:-60}
SAMPLE=${SAMPLE:-5}
DELAY_MS=${DELAY_MS:-${SHADOW_DELAY_MS:-200}}
case $MODE in shadow|capture) ;; *) echo "MODE is shadow or capture, not $MODE" >&2; exit 2 ;; esac
US=$(free_port)  # the call target: a slow Python server instead of nginx, or nothing (SINK=down)
if [ "$SINK" = slow ]; then
python3 - "$US" "$DELAY_MS" <<'PY' & PIDS+=($!)
import http.server, sys, time
port, delay = int(sys.argv[1]), int(sys.argv[2]) / 1000
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        time.sleep(delay)
        body = b'{"variant":"a"}'
        self.send_response(200); self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    def handle_error(self, *a): pass  # Envoy hangs up on answers after its timeout
S(("127.0.0.1", port), H).serve_forever()
PY
elif [ "$SINK" != down ]; then echo "SINK is slow or down, not $SINK" >&2; exit 2; fi
dir="$WORK/envoy-$MODE"; mkdir -p "$dir"; PORT=$(free_port)
render "$MODE" "$dir" "$PORT"
"$ENVOY" -c "$dir/envoy.json" --concurrency 1 --disable-hot-restart -l warning \
  --admin-address-path "$dir/admin" >"$dir/envoy.log" 2>&1 & ENVOY_PID=$!; PIDS+=($ENVOY_PID)
for _ in $(seq 1 1200); do [ -s "$dir/admin" ] && break; sleep 0.05; done
ADMIN=$(cat "$dir/admin")
wait_http "http://$ADMIN/ready"
cat > "$WORK/bodies.lua" <<'LUA'
local bodies = {}
for i, n in ipairs({0, 1000, 16000, 40000, 65000, 65536, 70000}) do bodies[i] = string.rep("x", n) end
math.randomseed(os.time())
request = function()
  return wrk.format("POST", "/invocations", {["Host"] = "titanic.local", ["x-user-id"] = tostring(math.random(1, 100000000)), ["content-type"] = "application/json"}, bodies[math.random(1, #bodies)])
end
LUA
wrk -t1 -c16 -d"${DURATION}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$PORT/" >"$WORK/wrk.out" &
WRK=$!
if [ "$MODE" = shadow ]; then
  metric_name=mlep_shadow_requests_total; outcomes=(ok skipped timeout)
else
  metric_name=mlep_capture_records_total; outcomes=(sent queue_full sink_error)
fi
sum() { awk -v m="$1" -v o="outcome=\"${2:-}\"" '$1 ~ "^"m"({|$)" && (o == "outcome=\"\"" || index($1, o)) { s += $2 } END { printf "%.0f", s }'; }
printf '%6s %14s %14s' t_s vm_memory_MiB envoy_rss_MiB; printf ' %12s' "${outcomes[@]}"; echo
for t in $(seq 0 "$SAMPLE" "$DURATION"); do
  stats=$(curl -fs "http://$ADMIN/stats/prometheus")
  printf '%6s %14.1f %14.1f' "$t" "$(sum mlep_vm_memory_bytes <<<"$stats" | awk '{ print $1 / 1048576 }')" \
    "$(awk '/VmRSS/ { print $2 / 1024 }' "/proc/$ENVOY_PID/status")"
  for o in "${outcomes[@]}"; do printf ' %12s' "$(sum "$metric_name" "$o" <<<"$stats")"; done; echo
  sleep "$SAMPLE"
done
wait "$WRK" || true
grep -E "Requests/sec|requests in|Non-2xx|Socket errors" "$WORK/wrk.out" || true
