#!/usr/bin/env python3
"""Render the shipped Grafana dashboard's panels from a real Prometheus into one PNG.

No Grafana runs on this machine, so this draws what the dashboard would show: it reads every
panel of manifests/observability/grafana-dashboard.json, substitutes the dashboard variables,
runs each target as a Prometheus range query and plots the series (matplotlib), panel by panel,
in the dashboard's own layout order.

  python3 scripts/render-dashboard.py --prometheus http://<ip>:9090 \\
      --namespace e2e-observe --endpoint titanic --minutes 12 --out docs/dashboard.png

docs/observability.md says how docs/dashboard.png was made (the bed's Prometheus, right after
tests/cluster/tests/observability.rs ran its faults).
"""
import argparse
import json
import os
import time
import urllib.parse
import urllib.request

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def query_range(prom, expr, start, end, step):
    q = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prom}/api/v1/query_range?{q}", timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return body["data"]["result"]


def legend(fmt, metric):
    out = fmt
    for k, v in metric.items():
        out = out.replace("{{" + k + "}}", v)
    return out.replace("{{", "").replace("}}", "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--endpoint", default="titanic")
    ap.add_argument("--minutes", type=float, default=15)
    ap.add_argument("--end", type=float, default=None, help="Unix time (default now)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    a = ap.parse_args()
    with open(os.path.join(ROOT, "manifests/observability/grafana-dashboard.json")) as f:
        dash = json.load(f)
    end = a.end or time.time()
    start = end - a.minutes * 60
    panels = sorted(dash["panels"], key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))
    cols = 2
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.4 * rows), squeeze=False)
    for ax, p in zip(axes.flat, panels):
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        scale = 100.0 if unit == "percentunit" else 1.0
        n = 0
        for t in p["targets"]:
            expr = (
                t["expr"].replace("$namespace", a.namespace).replace("$endpoint", a.endpoint)
                .replace("$variant", ".*").replace("$__rate_interval", "1m")
            )
            for s in query_range(a.prometheus, expr, start, end, 5):
                xs = [datetime.fromtimestamp(float(v[0]), tz=timezone.utc) for v in s["values"]]
                ys = [float(v[1]) * scale for v in s["values"]]
                ax.plot(xs, ys, label=legend(t.get("legendFormat", ""), s["metric"]), linewidth=1.4)
                n += 1
        suffix = {"percentunit": " (%)", "ms": " (ms)", "reqps": " (req/s)", "bytes": " (bytes)",
                  "percent": " (%)"}.get(unit, "")
        ax.set_title(p["title"] + suffix, fontsize=10, loc="left")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if n:
            ax.legend(fontsize=7, loc="upper left", framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(
        f"{dash['title']}: {a.namespace}/{a.endpoint}, {a.minutes:.0f} min of the cluster bed's "
        "Prometheus (UTC)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(a.out, dpi=80)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
