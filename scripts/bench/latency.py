#!/usr/bin/env python3
"""Latency at a fixed request rate, modes interleaved in rounds (scripts/bench-latency.sh).
One kept-alive connection per mode; each request is timed from when it was due (a slow answer
that delays the next request counts against both: no coordinated omission). Prints, per mode,
the median over rounds of p50 and p99 (min..max of the rounds' p50) and the median of the
per-round differences against the last mode. Exits non-zero on any non-2xx answer.
usage: latency.py <rounds> <rate> <seconds> <name>=<host>:<port>:<host-header> ..."""
import http.client
import random
import statistics
import sys
import time

rounds, rate, secs = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
modes = []
for arg in sys.argv[4:]:
    name, rest = arg.split("=", 1)
    host, port, header = rest.split(":")
    modes.append((name, host, int(port), header))
conns = {m[0]: http.client.HTTPConnection(m[1], m[2], timeout=10) for m in modes}
results = {m[0]: [] for m in modes}
rng = random.Random(1)


def run(mode):
    name, _, _, header = mode
    conn, n, lat = conns[name], int(rate * secs), []
    t0 = time.perf_counter()
    for i in range(n):
        due = t0 + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        conn.request("POST", "/invocations", body=b'{"x": [1, 2, 3]}',
                     headers={"Host": header, "x-user-id": str(rng.randrange(1, 10**8)),
                              "content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        if not 200 <= r.status < 300:
            sys.exit(f"{name}: HTTP {r.status}")
        lat.append((time.perf_counter() - due) * 1000)
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99)]


for rd in range(rounds):
    for mode in modes[rd % len(modes):] + modes[:rd % len(modes)]:
        results[mode[0]].append(run(mode))
base = modes[-1][0]
print(f"{rounds} rounds x {rate:g} req/s x {secs:g} s per mode; differences against {base}")
for name, rs in results.items():
    p50, p99 = [r[0] for r in rs], [r[1] for r in rs]
    d50 = statistics.median(a[0] - b[0] for a, b in zip(rs, results[base]))
    d99 = statistics.median(a[1] - b[1] for a, b in zip(rs, results[base]))
    print(f"{name:10s} p50 {statistics.median(p50):.3f} ms ({min(p50):.3f}..{max(p50):.3f})"
          f"  p99 {statistics.median(p99):.3f} ms   added p50 {d50:+.3f}  p99 {d99:+.3f}")
