#!/usr/bin/env bash
# Wasm VM memory under sustained 100% shadowing with request bodies up to maxBodyBytes
# (64 KiB; some requests over it, which are not mirrored) and a shadow that answers slowly
# (SHADOW_DELAY_MS, default 200), so copies pile up to the hub's bounds (1024 in flight,
# 16 MiB of bodies). Samples the filter's `mlep_vm_memory_bytes` gauge (linear memory, which
# never shrinks) every SAMPLE seconds for DURATION seconds: a plateau means bounded memory.
source "$(dirname "$0")/bench/common.sh"
DURATION=${DURATION:-60}
SAMPLE=${SAMPLE:-5}
SHADOW_DELAY_MS=${SHADOW_DELAY_MS:-200}
US=$(free_port)  # the shadow: a slow Python server instead of nginx
python3 - "$US" "$SHADOW_DELAY_MS" <<'PY' & PIDS+=($!)
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
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
PY
dir="$WORK/envoy-shadow"; mkdir -p "$dir"; PORT=$(free_port)
render shadow "$dir" "$PORT"
"$ENVOY" -c "$dir/envoy.json" --concurrency 1 --disable-hot-restart -l warning \
  --admin-address-path "$dir/admin" >"$dir/envoy.log" 2>&1 & PIDS+=($!)
for _ in $(seq 1 1200); do [ -s "$dir/admin" ] && break; sleep 0.05; done
ADMIN=$(cat "$dir/admin")
wait_http "http://$ADMIN/ready"
cat > "$WORK/bodies.lua" <<'LUA'
local bodies = {}
for i, n in ipairs({0, 1000, 16000, 40000, 65000, 65536, 70000}) do bodies[i] = string.rep("x", n) end
math.randomseed(os.time())
request = function()
  return wrk.format("POST", "/invocations", {["Host"] = "titanic.local", ["x-user-id"] = tostring(math.random(1, 100000000))}, bodies[math.random(1, #bodies)])
end
LUA
wrk -t1 -c16 -d"${DURATION}s" -s "$WORK/bodies.lua" "http://127.0.0.1:$PORT/" >"$WORK/wrk.out" &
WRK=$!
metric() { curl -fs "http://$ADMIN/stats/prometheus" | awk -v m="$1" '$1 ~ "^"m"({|$)" { s += $2 } END { printf "%.0f", s }'; }
printf '%6s %14s %12s %12s %12s\n' t_s vm_memory_MiB shadow_ok shadow_skip shadow_tmo
for t in $(seq 0 "$SAMPLE" "$DURATION"); do
  printf '%6s %14.1f %12s %12s %12s\n' "$t" "$(metric mlep_vm_memory_bytes | awk '{ print $1 / 1048576 }')" \
    "$(curl -fs "http://$ADMIN/stats/prometheus" | awk '/^mlep_shadow_requests_total/ && /outcome="ok"/ { s += $2 } END { print s + 0 }')" \
    "$(curl -fs "http://$ADMIN/stats/prometheus" | awk '/^mlep_shadow_requests_total/ && /outcome="skipped"/ { s += $2 } END { print s + 0 }')" \
    "$(curl -fs "http://$ADMIN/stats/prometheus" | awk '/^mlep_shadow_requests_total/ && /outcome="timeout"/ { s += $2 } END { print s + 0 }')"
  sleep "$SAMPLE"
done
wait "$WRK" || true
grep -E "Requests/sec|requests in" "$WORK/wrk.out"
