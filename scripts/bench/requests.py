#!/usr/bin/env python3
"""Send exactly N requests over one keep-alive connection (what the instruction counts divide
by): POST /invocations to HOST with a distinct x-user-id each (seeded, so every run sends the
same keys). Exits non-zero on any non-2xx answer.
usage: requests.py <host:port> <n> [host-header]"""
import http.client
import random
import sys

addr, n = sys.argv[1], int(sys.argv[2])
host = sys.argv[3] if len(sys.argv) > 3 else "titanic.local"
h, p = addr.rsplit(":", 1)
rng = random.Random(42 + n)
conn = http.client.HTTPConnection(h, int(p), timeout=120)
bad = 0
for _ in range(n):
    conn.request("POST", "/invocations", body=b'{"x": [1, 2, 3]}',
                 headers={"Host": host, "x-user-id": str(rng.randrange(1, 10**8)),
                          "content-type": "application/json"})
    r = conn.getresponse()
    r.read()
    if not 200 <= r.status < 300:
        bad += 1
if bad:
    sys.exit(f"{bad} of {n} answers were not 2xx")
