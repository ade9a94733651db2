#!/usr/bin/env bash
# Throughput and latency of mlep-model-server on the Titanic models, with GET /ping as the
# baseline measured in the same run (the ratio shows what inference + JSON cost).
# Load generator: wrk (Debian package) with a Lua script for POST bodies. Bounded: each run
# lasts DURATION seconds (default 10).
#
#   scripts/bench-model-server.sh            # DURATION=10 CONNECTIONS=16 THREADS=1
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-16}
THREADS=${THREADS:-1}

command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --locked --release -q -p mlep-model-server
BIN=target/release/mlep-model-server

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start <version>: unpack the artifact, start the server on a free port, echo host:port.
start() {
  local v=$1 dir=$work/$1
  mkdir -p "$dir"
  tar xzf "examples/titanic/artifacts/titanic-$v.tar.gz" -C "$dir"
  RUST_LOG=warn,mlep_model_server=info "$BIN" --host 127.0.0.1 --port 0 --model-dir "$dir" >"$work/$v.log" 2>&1 &
  pids+=($!)
  local addr=""
  for _ in $(seq 200); do
    addr=$(sed -n 's/.*listening addr=\([0-9.:]*\).*/\1/p' "$work/$v.log" | head -1)
    [ -n "$addr" ] && grep -q "model loaded" "$work/$v.log" && break
    sleep 0.05
  done
  [ -n "$addr" ] || { cat "$work/$v.log" >&2; exit 1; }
  echo "$addr"
}

# lua <content-type> <body-file>: a wrk script POSTing that body, printing one RESULT line.
lua() {
  local ct=$1 body=$2 out=$work/$RANDOM.lua
  {
    echo "local f = assert(io.open('$body', 'rb')); local body = f:read('*a'); f:close()"
    echo "wrk.method = '${ct:+POST}'; if wrk.method == '' then wrk.method = 'GET' end"
    echo "if '$ct' ~= '' then wrk.body = body; wrk.headers['Content-Type'] = '$ct' end"
    cat <<'LUA'
done = function(s, latency, requests)
  local errors = s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout + s.errors.status
  io.write(string.format("RESULT %.0f %.0f %.0f %d\n", s.requests / (s.duration / 1e6),
    latency:percentile(50), latency:percentile(99), errors))
end
LUA
  } >"$out"
  echo "$out"
}

# Request bodies: the sample request (2 passengers), a 64-row batch, the same as CSV.
cp examples/titanic/request.json "$work/req2.json"
python_free_batch() {
  local n=$1 row='{"pclass":3,"sex":"female","age":26.0,"sibsp":1,"parch":0,"fare":16.7,"embarked":"S"}'
  printf '['; for i in $(seq "$n"); do [ "$i" -gt 1 ] && printf ','; printf '%s' "$row"; done; printf ']'
}
python_free_batch 64 >"$work/req64.json"
printf '3,male,22,1,0,7.25,S\n1,female,38,1,0,71.28,C\n' >"$work/req2-v2.csv"
: >"$work/empty"

v1=$(start v1)
v2=$(start v2)

results=()
bench() {
  local name=$1 addr=$2 path=$3 script=$4
  local line
  line=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" -s "$script" "http://$addr$path" | grep '^RESULT')
  results+=("$name ${line#RESULT }")
}

bench "GET /ping (baseline)" "$v1" /ping "$(lua '' "$work/empty")"
bench "v1 invocations, 2 rows JSON" "$v1" /invocations "$(lua application/json "$work/req2.json")"
bench "v2 invocations, 2 rows JSON" "$v2" /invocations "$(lua application/json "$work/req2.json")"
bench "v2 invocations, 2 rows CSV" "$v2" /invocations "$(lua text/csv "$work/req2-v2.csv")"
bench "v2 invocations, 64 rows JSON" "$v2" /invocations "$(lua application/json "$work/req64.json")"

base=$(echo "${results[0]}" | awk '{print $(NF-3)}')
echo
echo "mlep-model-server, wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s, $(nproc) cores shared by server and wrk"
printf '%-32s %10s %9s %10s %10s %7s\n' "run" "req/s" "vs ping" "p50 (us)" "p99 (us)" "errors"
for r in "${results[@]}"; do
  read -r -a f <<<"$r"
  n=${#f[@]}
  name="${f[*]:0:n-4}"
  rps=${f[n-4]}
  ratio=$(awk -v a="$rps" -v b="$base" 'BEGIN { printf "%.2f", a / b }')
  printf '%-32s %10s %9s %10s %10s %7s\n' "$name" "$rps" "$ratio" "${f[n-3]}" "${f[n-2]}" "${f[n-1]}"
done
