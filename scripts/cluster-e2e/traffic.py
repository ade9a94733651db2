#!/usr/bin/env python3
"""Traffic for scripts/test-cluster-e2e.sh: requests through the ingress gateway from the host.

  traffic.py split URL HOST N            -> JSON {variant: count} over N distinct x-user-id keys
  traffic.py assign URL HOST KEY...      -> JSON {key: variant}
  traffic.py models URL HOST KEY...      -> JSON {key: "<status> <x-mlep-model>"} (the model server's
      `name:version` response header: which model answered)
  traffic.py load URL HOST SECONDS STOPFILE -> JSON {requests, failures, p50_ms, p99_ms, by_variant}
      (runs until SECONDS elapse or STOPFILE exists; a failure is any answer but 200 with a
      prediction body and an x-mlep-variant header, or a connection error;
      MLEP_REQUIRE_VARIANT=0 accepts answers without x-mlep-variant; also counts answers
      by_model, by the x-mlep-model response header)

Keep-alive connections (http.client); the request body is examples/titanic/request.json.
"""
import http.client
import json
import os
import sys
import time
import urllib.parse

BODY = open(os.path.join(os.path.dirname(__file__), "../../examples/titanic/request.json"), "rb").read()


class Client:
    def __init__(self, url, host):
        u = urllib.parse.urlparse(url)
        self.addr = (u.hostname, u.port or 80)
        self.host = host
        self.conn = None

    def post(self, headers):
        h = {"host": self.host, "content-type": "application/json", **headers}
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(*self.addr, timeout=10)
            try:
                self.conn.request("POST", "/invocations", body=BODY, headers=h)
                r = self.conn.getresponse()
                body = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, body
            except (http.client.HTTPException, OSError):
                # A connection the proxy closed while idle: reconnect once (the request was
                # never answered); a second failure is a failure.
                self.conn = None
                if attempt:
                    raise
        raise RuntimeError("unreachable")


def ok(status, headers, body):
    # MLEP_REQUIRE_VARIANT=0: a proxy without the filter answers without x-mlep-variant.
    need_variant = os.environ.get("MLEP_REQUIRE_VARIANT", "1") != "0"
    if status != 200 or (need_variant and "x-mlep-variant" not in headers):
        return False
    try:
        return len(json.loads(body)["predictions"]) == 2
    except (ValueError, KeyError, TypeError):
        return False


def main():
    cmd, url, host = sys.argv[1:4]
    c = Client(url, host)
    if cmd == "split":
        n = int(sys.argv[4])
        counts = {}
        for i in range(n):
            s, h, b = c.post({"x-user-id": f"split-user-{i}"})
            v = h.get("x-mlep-variant", f"none-{s}")
            counts[v] = counts.get(v, 0) + 1
        print(json.dumps(counts))
    elif cmd == "assign":
        out = {}
        for k in sys.argv[4:]:
            s, h, b = c.post({"x-user-id": k})
            out[k] = h.get("x-mlep-variant", f"none-{s}")
        print(json.dumps(out))
    elif cmd == "models":
        out = {}
        for k in sys.argv[4:]:
            s, h, b = c.post({"x-user-id": k})
            out[k] = f"{s} {h.get('x-mlep-model', 'none')}"
        print(json.dumps(out))
    elif cmd == "load":
        seconds, stop = float(sys.argv[4]), sys.argv[5]
        end = time.monotonic() + seconds
        lat, fails, by_variant, by_model, errors, i = [], 0, {}, {}, {}, 0
        while time.monotonic() < end and not os.path.exists(stop):
            i += 1
            t0 = time.monotonic()
            try:
                s, h, b = c.post({"x-user-id": f"load-user-{i % 500}"})
            except Exception as e:  # noqa: BLE001 - every failure counts, by kind
                s, h, b = 0, {}, str(e).encode()
            lat.append((time.monotonic() - t0) * 1000)
            m = h.get("x-mlep-model", f"none-{s}")
            by_model[m] = by_model.get(m, 0) + 1
            if ok(s, h, b):
                v = h.get("x-mlep-variant", "unassigned")
                by_variant[v] = by_variant.get(v, 0) + 1
            else:
                fails += 1
                key = f"{s} {b[:80]!r}"
                errors[key] = errors.get(key, 0) + 1
        lat.sort()
        pct = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else None
        print(json.dumps({"requests": len(lat), "failures": fails, "p50_ms": pct(0.50),
                          "p99_ms": pct(0.99), "by_variant": by_variant, "by_model": by_model,
                          "errors": errors}))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
