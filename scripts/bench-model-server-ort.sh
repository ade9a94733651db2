#!/usr/bin/env bash
# mlep-model-server against onnxruntime on the same ONNX file and the same JSON rows.
#
# The model: an MLP of plain ONNX ops, 32 features -> 256 Relu -> 256 Relu -> 1 Sigmoid,
# random weights from a fixed seed, written with the onnx helper API into a temp directory at
# run time (scripts/bench/ort_server.py make), with the metadata.json the model server reads.
# The other side: onnxruntime (CPU provider, 1 intra-op thread per worker) in a minimal ASGI app
# (scripts/bench/ort_server.py) run by uvicorn with 2 workers, uvloop and httptools, orjson
# parsing and encoding. mlep gets 2 tokio workers (TOKIO_WORKER_THREADS=2; inference runs on
# tokio's blocking pool, one tract run per request, single-threaded). Both get the whole
# machine, shared with wrk.
#
# Both answer `{"instances": [[...32 numbers...], ...]}` with
# `{"predictions": [{"label": 0, "probability": 0.382772}, ...]}`; before measuring, the 256
# rows are sent once to each and the probabilities must agree within 1e-4.
# ROUNDS rounds (default 3), each measuring 1 row and 256 rows per request, mlep and ort
# alternating (which side goes first flips every round), wrk -t1 -cCONNECTIONS (default 16),
# 1 s warm-up then DURATION s (default 10). Reported per case: median over rounds of
# requests/s, rows/s, p50/p99, server CPU per request (utime+stime of the server's processes,
# /proc), and the per-round ratio mlep/ort as median (min..max). Requests answered with an
# HTTP status >= 400 and socket errors are counted per run; they are not counted as
# throughput, the case is flagged and the script exits 1.
#
#   scripts/bench-model-server-ort.sh        # ROUNDS=3 DURATION=10 CONNECTIONS=16
# Builds go to $CARGO_TARGET_DIR when set (else target/). MLEP_BIN: measure another build of
# the server (e.g. one linked against another tract version) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
WORKERS=2
PY_PINS=(onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6 uvicorn==0.55.0 uvloop==0.23.0
  httptools==0.9.0 orjson==3.13.0)

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
python3 - "${PY_PINS[@]}" <<'PY' || python3 -m pip install --quiet --break-system-packages "${PY_PINS[@]}"
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (p.split("==") for p in sys.argv[1:])))
PY
cargo build --locked --release -q -p mlep-model-server
BIN=${MLEP_BIN:-$TARGET/release/mlep-model-server}

WORK=$(mktemp -d /tmp/mlep-bench-ort.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ping() { # port log
  for _ in $(seq 1 600); do curl -fs -o /dev/null "http://127.0.0.1:$1/ping" && return 0; sleep 0.05; done
  echo "not ready on port $1:" >&2; tail -20 "$2" >&2; return 1
}

python3 scripts/bench/ort_server.py make "$WORK/model"
declare -A PORT PID
PORT[mlep]=$(free_port)
TOKIO_WORKER_THREADS=$WORKERS RUST_LOG=warn "$BIN" --host 127.0.0.1 --port "${PORT[mlep]}" \
  --model-dir "$WORK/model" >"$WORK/mlep.log" 2>&1 &
PID[mlep]=$!; PIDS+=($!)
PORT[ort]=$(free_port)
ORT_MODEL_DIR="$WORK/model" ORT_THREADS=1 python3 -m uvicorn ort_server:app \
  --app-dir "$ROOT/scripts/bench" --workers "$WORKERS" --loop uvloop --http httptools \
  --host 127.0.0.1 --port "${PORT[ort]}" --no-access-log --log-level warning >"$WORK/ort.log" 2>&1 &
PID[ort]=$!; PIDS+=($!)
wait_ping "${PORT[mlep]}" "$WORK/mlep.log"
wait_ping "${PORT[ort]}" "$WORK/ort.log"

# Same rows, same answers, or the comparison means nothing.
python3 - "${PORT[mlep]}" "${PORT[ort]}" "$WORK/model/req256.json" <<'PY'
import json, sys, urllib.request
def ask(port):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", open(sys.argv[3], "rb").read(),
                                 {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["predictions"]
a, b = ask(sys.argv[1]), ask(sys.argv[2])
worst = max(abs(x["probability"] - y["probability"]) for x, y in zip(a, b))
if len(a) != len(b) or len(a) != 256 or worst > 1e-4:
    sys.exit(f"mlep and ort disagree: {len(a)} vs {len(b)} predictions, max |dp| {worst:.2e}")
print(f"answers agree: 256 rows, max |p_mlep - p_ort| = {worst:.1e}")
PY

# A wrk script POSTing a body and printing
# "RESULT requests status_errors socket_errors duration_us p50_us p99_us".
lua() {
  cat <<LUA
local f = assert(io.open('$1', 'rb')); wrk.body = f:read('*a'); f:close()
wrk.method = 'POST'; wrk.headers['Content-Type'] = 'application/json'
LUA
  cat <<'LUA'
done = function(s, latency, requests)
  local e = s.errors
  io.write(string.format("RESULT %d %d %d %d %.0f %.0f\n", s.requests, e.status,
    e.connect + e.read + e.write + e.timeout, s.duration, latency:percentile(50),
    latency:percentile(99)))
end
LUA
}
lua "$WORK/model/req1.json" >"$WORK/req1.lua"
lua "$WORK/model/req256.json" >"$WORK/req256.lua"

# CPU ticks (utime+stime) of a server: the process and its children (uvicorn's workers).
cpu_ticks() {
  local total=0 p
  for p in $1 $(ps -o pid= --ppid "$1"); do
    [ -r "/proc/$p/stat" ] && total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
  done
  echo "$total"
}
# measure <side> <rows> -> "requests status_errors socket_errors duration_us p50 p99 cpu_us"
measure() {
  local url="http://127.0.0.1:${PORT[$1]}/invocations" t0 t1 line
  wrk -t1 -c"$CONNECTIONS" -d1s -s "$WORK/req$2.lua" "$url" >/dev/null
  t0=$(cpu_ticks "${PID[$1]}")
  line=$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$WORK/req$2.lua" "$url" | grep '^RESULT')
  t1=$(cpu_ticks "${PID[$1]}")
  echo "${line#RESULT } $(((t1 - t0) * 1000000 / $(getconf CLK_TCK)))"
}

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo "load before: $(uptime)"
RES="$WORK/results"; : >"$RES"
for r in $(seq 1 "$ROUNDS"); do
  sides=(mlep ort); [ $((r % 2)) = 0 ] && sides=(ort mlep)
  for rows in 1 256; do
    for s in "${sides[@]}"; do
      echo "$r $rows $s $(measure "$s" "$rows")" | tee -a "$RES" >&2
    done
  done
done
echo "load after:  $(uptime)"

python3 - "$RES" "$CONNECTIONS" "$DURATION" "$ROUNDS" <<'PY'
import statistics, sys
res, conns, duration, rounds = sys.argv[1], *sys.argv[2:]
runs = {}
for line in open(res):
    r, rows, side, n, st_err, sock_err, dur_us, p50, p99, cpu_us = line.split()
    n, st_err, sock_err, rows = int(n), int(st_err), int(sock_err), int(rows)
    ok = n - st_err
    runs.setdefault((rows, side), {})[int(r)] = dict(
        rps=ok / (int(dur_us) / 1e6), p50=float(p50) / 1000, p99=float(p99) / 1000,
        cpu=int(cpu_us) / max(ok, 1), errors=st_err + sock_err)
print(f"\nmlep-model-server vs onnxruntime, MLP 32-256-256-1, wrk -t1 -c{conns} -d{duration}s, "
      f"{rounds} interleaved rounds, medians (errors: sum over rounds)")
print(f"{'case':<22}{'req/s':>9}{'rows/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'cpu us/req':>12}{'errors':>8}")
med = lambda xs: statistics.median(xs)
flagged = False
for rows in (1, 256):
    for side in ("mlep", "ort"):
        rs = runs[(rows, side)].values()
        errors = sum(x["errors"] for x in rs)
        flagged |= errors > 0
        rps = med([x["rps"] for x in rs])
        print(f"{side + f', {rows} row' + ('s' if rows > 1 else ''):<22}{rps:>9.0f}{rps * rows:>11.0f}"
              f"{med([x['p50'] for x in rs]):>9.2f}{med([x['p99'] for x in rs]):>9.2f}"
              f"{med([x['cpu'] for x in rs]):>12.0f}{errors:>8}{'  <- ERRORS' if errors else ''}")
print("\nmlep/ort per round, median (min..max)")
for rows in (1, 256):
    m, o = runs[(rows, "mlep")], runs[(rows, "ort")]
    tput = sorted(m[r]["rps"] / o[r]["rps"] for r in m)
    cpu = sorted(m[r]["cpu"] / o[r]["cpu"] for r in m)
    print(f"{rows:>3} row(s): throughput {med(tput):.2f} ({tput[0]:.2f}..{tput[-1]:.2f}), "
          f"server CPU per request {med(cpu):.2f} ({cpu[0]:.2f}..{cpu[-1]:.2f})")
if flagged:
    sys.exit("some runs had errors (HTTP status >= 400 or socket errors): see the table")
PY
