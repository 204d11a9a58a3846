#!/usr/bin/env python3
"""Draws the benchmark plots of docs/benchmarks.md from bench/run.sh's JSON results.

Standard library only (the SVG is written by hand), so it runs on any machine with python3:

    python3 bench/plot.py [--table] [RESULTS_DIR] [OUT_DIR]   # defaults: docs/bench/results docs/bench

--table also prints the results table of docs/benchmarks.md (markdown).
"""
import json
import math
import os
import sys

ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
RESULTS = ARGS[0] if len(ARGS) > 0 else "docs/bench/results"
OUT = ARGS[1] if len(ARGS) > 1 else "docs/bench"
COLORS = {"herald": "#d9480f", "ws": "#1971c2", "socketio": "#2f9e44",
          "redis": "#c2255c", "redis_cluster": "#7048e8", "nats": "#0c8599", "pinned": "#f08c00",
          "floor": "#495057", "api": "#d9480f", "client": "#1971c2"}  # api, client: floor-ratio.svg's publishers
BROKERS = ("redis", "redis_cluster", "nats")
W, H, L, R, T, B = 720, 420, 80, 170, 40, 60


def load(name):
    path = os.path.join(RESULTS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ticks(lo, hi, log):
    if log:
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        return [m * 10.0 ** e for e in decades for m in (1, 2, 5)]
    # The finest 1-2-5 step with at most 8 intervals, on multiples of the step (so a 0.6-1.2 axis
    # gets 0.6, 0.7, ... and not just 1), rounded so that 3 × 0.1 prints as 0.3.
    step = 10 ** math.floor(math.log10(max(hi - lo, 1e-9))) / 10
    step *= next(m for m in (1, 2, 5, 10, 20) if (hi - lo) / (step * m) <= 8)
    return [round(i * step, 9) for i in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def fmt(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def chart(path, title, xlabel, ylabel, series, logx=False, logy=False, xlim=None, ylim=None, hlines=(), xticks=None):
    """series: list of (label, color, dash, [(x, y), ...][, marks]), marks being extra (x, y) points
    drawn as rings without a line (e.g. each round around a median); hlines: [(y, label)] dashed
    reference lines (e.g. a target); xlim/ylim: (lo, hi) to override the automatic ranges; xticks:
    the x values to label (e.g. the few measured ones) instead of the automatic ticks."""
    pts = [p for s in series for p in s[3] + (s[4] if len(s) > 4 else []) if p[1] is not None and p[1] > 0]
    if not pts:
        return False
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts] + [y for y, _ in hlines]
    x0, x1 = (min(xs), max(xs)) if logx else (0, max(xs) * 1.05)
    y0, y1 = (min(ys) / 1.5, max(ys) * 1.5) if logy else (0, max(ys) * 1.1)
    if logx and x0 == x1:
        x0, x1 = x0 / 2, x1 * 2
    x0, x1 = xlim or (x0, x1)
    y0, y1 = ylim or (y0, y1)

    def sx(x):
        f = (math.log10(x) - math.log10(x0)) / (math.log10(x1) - math.log10(x0)) if logx else (x - x0) / (x1 - x0)
        return L + f * (W - L - R)

    def sy(y):
        f = (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)) if logy else (y - y0) / (y1 - y0)
        return H - B - f * (H - T - B)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>']
    for t in ticks(y0, y1, logy):
        if y0 <= t <= y1:
            out.append(f'<line x1="{L}" x2="{W - R}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{L - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{fmt(t)}</text>')
    for t in xticks or ticks(x0, x1, logx):
        if x0 <= t <= x1:
            out.append(f'<line y1="{T}" y2="{H - B}" x1="{sx(t):.1f}" x2="{sx(t):.1f}" stroke="#eee"/>')
            out.append(f'<text x="{sx(t):.1f}" y="{H - B + 16}" text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#333"/>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 18}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text transform="translate(18,{(T + H - B) / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>')
    # Labelled in the legend, below the series: a label on the line would collide with the points.
    for n, (y, label) in enumerate(hlines, len(series)):
        out.append(f'<line x1="{L}" x2="{W - R}" y1="{sy(y):.1f}" y2="{sy(y):.1f}" stroke="#999" stroke-width="1.5" stroke-dasharray="4 3"/>')
        ly = T + 14 + n * 18
        out.append(f'<line x1="{W - R + 10}" x2="{W - R + 34}" y1="{ly - 4}" y2="{ly - 4}" stroke="#999" stroke-width="1.5" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{W - R + 40}" y="{ly}">{label}</text>')
    for n, (label, color, dash, s, *marks) in enumerate(series):
        for x, y in marks[0] if marks else []:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="none" stroke="{color}"/>')
        s = [(x, y) for x, y in s if y is not None and y > 0]
        if not s:
            continue
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
        for x, y in s:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        ly = T + 14 + n * 18
        out.append(f'<line x1="{W - R + 10}" x2="{W - R + 34}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
        out.append(f'<text x="{W - R + 40}" y="{ly}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    print("wrote", path)
    return True


def steps(result):
    return [s for s in (result or {}).get("steps", []) if "error" not in s]


def sweep_charts(name, title, runs):
    """Throughput against offered load, and latency against achieved load, for one sweep per
    labelled run: runs is [(key, label, result)], key choosing the colour."""
    # Offered = publication rate × subscribers.
    chart(os.path.join(OUT, f"{name}-throughput.svg"),
          f"{title}: deliveries/s against offered load (100-byte messages)",
          "offered deliveries/s (publications/s × subscribers)", "deliveries/s",
          [(label, COLORS[k], "", [(s["offered_deliveries_per_second"], s["deliveries_per_second"]) for s in steps(r)])
           for k, label, r in runs]
          + [("offered", "#999", "4 3", [(s["offered_deliveries_per_second"], s["offered_deliveries_per_second"]) for _, _, r in runs[:1] for s in steps(r)])],
          logx=True, logy=True)
    series = []
    for k, _, r in runs:
        for q, dash in (("p50", ""), ("p99", "6 3")):
            series.append((f"{k} {q}", COLORS[k], dash, [(s["deliveries_per_second"], s["latency_ms"][q]) for s in steps(r)]))
    chart(os.path.join(OUT, f"{name}-latency.svg"),
          f"{title}: end-to-end latency against achieved load",
          "deliveries/s achieved", "latency (ms)", series, logx=True, logy=True)


# Labels of the floor runs' targets and publishers (the HTTP API, or a client on a WebSocket).
NAME = {"herald": "Herald", "floor": "floor", "api": "API", "client": "client"}


def floor_path(*parts):
    return os.path.join("floor", *parts)


def dodge(x, i, n):
    """Shifts series i of n a few percent sideways (on a log axis) so that series measured at the
    same subscriber counts don't hide each other's points."""
    return x * 1.05 ** (i - (n - 1) / 2)


def floor_ratio():
    """Herald's deliveries/s as a fraction of the floor's (the same broadcast through a minimal
    server), quiet and with competing load: the median of the rounds, and each round as a ring."""
    # (via, results file, dash, label): quiet and competing on the first machine, quiet on the
    # second (a rerun of the same build on another VM of the same size).
    runs = [(via, path, dash, f"{NAME[via]}, {what}")
            for path, dash, what in ((lambda via: floor_path(f"floor-{via}-ratios.json"), "", "quiet"),
                                     (lambda via: floor_path("compete", f"floor-{via}-compete-ratios.json"), "6 3", "competing"),
                                     (lambda via: floor_path("rerun", f"floor-{via}-ratios.json"), "2 3", "quiet, 2nd VM"))
            for via in ("api", "client")]
    series, subs = [], set()
    for i, (via, path, dash, label) in enumerate(runs):
        rows = load(path(via)) or []
        subs |= {r["subscribers"] for r in rows}
        series.append((label, COLORS[via], dash,
                       [(dodge(r["subscribers"], i, len(runs)), r["median_ratio"]) for r in rows],
                       [(dodge(r["subscribers"], i, len(runs)), q) for r in rows for q in r["ratios"]]))
    # Ratios sit near 1: an axis from 0 would squash them, so it spans the data and the target.
    ys = [y for s in series for _, y in s[4]] + [0.95]
    chart(os.path.join(OUT, "floor-ratio.svg"), "Herald / floor deliveries/s (line: median; rings: each round)",
          "subscribers", "Herald / floor deliveries/s", series, logx=True, xlim=(700, 22000),
          ylim=(math.floor(min(ys) * 10 - 0.2) / 10, math.ceil(max(ys) * 10 + 0.2) / 10),
          hlines=[(0.95, "target 0.95")], xticks=sorted(subs))


def floor_throughput():
    """The absolute deliveries/s behind the quiet ratios: Herald's and the floor's medians, and
    each round (the per-run files) as a ring."""
    series, subs = [], set()
    for via, dash in (("api", ""), ("client", "6 3")):
        rows = load(floor_path(f"floor-{via}-ratios.json")) or []
        subs |= {r["subscribers"] for r in rows}
        for t in ("herald", "floor"):
            i = len(series)
            rounds = [(r["subscribers"], steps(load(floor_path(f"floor-{via}-{t}-{r['subscribers']}-{k}.json"))))
                      for r in rows for k in range(1, r["rounds"] + 1)]
            series.append((f"{NAME[t]}, {NAME[via]}", COLORS[t], dash,
                           [(dodge(r["subscribers"], i, 4), r[f"{t}_deliveries_per_second"]) for r in rows],
                           [(dodge(n, i, 4), s[0]["deliveries_per_second"]) for n, s in rounds if s]))
    chart(os.path.join(OUT, "floor-throughput.svg"), "Herald and the floor: deliveries/s (quiet machine, 100-byte messages)",
          "subscribers", "deliveries/s", series, logx=True, xlim=(700, 22000), xticks=sorted(subs))


def floor_latency():
    """p50 and p99 latency against achieved load, Herald and the floor swept at the same offered rates."""
    runs = [(t, r) for t in ("herald", "floor") for r in [load(floor_path("sweep", f"broadcast-{t}.json"))] if r]
    if not runs:
        return
    series = [(f"{NAME[t]} {q}", COLORS[t], dash,
               [(s["deliveries_per_second"], s["latency_ms"][q]) for s in steps(r) if q in s.get("latency_ms", {})])
              for t, r in runs for q, dash in (("p50", ""), ("p99", "6 3"))]
    r = runs[0][1]
    # A linear x axis: the sweep spans one decade, and a linear one shows where each server saturates.
    chart(os.path.join(OUT, "floor-latency.svg"),
          f"Herald and the floor: latency against achieved load ({fmt(r['subscribers'])} subscribers, "
          f"{NAME.get(r.get('publish_via'), '?')})",
          "deliveries/s achieved", "latency (ms)", series, logy=True, hlines=[(10, "10 ms target")])


def main():
    targets = [(t, load(f"broadcast-{t}.json")) for t in ("herald", "ws", "socketio")]
    runs = [(t, f"{t} ({r['subscribers']} subs)", r) for t, r in targets if r]
    # The same sweep with the server and the load generator pinned to one CPU each.
    pinned = load(os.path.join("pinned", "broadcast-herald.json"))
    if pinned:
        runs.append(("pinned", "herald, pinned to 1 core", pinned))
    sweep_charts("broadcast", "Broadcast", runs)
    clusters = [(b, load(f"cluster-{b}.json")) for b in BROKERS]
    sweep_charts("cluster", "Cluster of 3 nodes",
                 [(b, f"{b} ({r['nodes']} nodes)", r) for b, r in clusters if r])
    floor_ratio()
    floor_throughput()
    floor_latency()


def table():
    """Prints the results table of docs/benchmarks.md (markdown) from the JSON files."""
    def ms(l, k):
        v = l.get(k)
        return "-" if v is None else f"{v:.1f}"
    rows = ["| scenario | load | result | p50 / p99 / p99.9 / max (ms) | server CPU | server RSS |",
            "| --- | --- | --- | --- | --- | --- |"]
    for name in ("broadcast-herald", "broadcast-ws", "broadcast-socketio", "chat", "market", "livemap",
                 "cluster-redis", "cluster-redis_cluster", "cluster-nats"):
        r = load(name + ".json")
        for s in steps(r):
            l = s.get("latency_ms", {})
            if name == "livemap":
                load_ = f"{r['devices']} GT06 devices, {s['rate']:.0f} positions/s offered, {r['viewers']} viewers"
                res = (f"{s['positions_acknowledged_per_second']:.0f} positions/s decoded+spooled, "
                       f"{r['positions_persisted']} persisted ({r.get('positions_rows_in_postgres', '?')} rows), "
                       f"{s['deliveries_per_second']:.0f} deliveries/s")
            elif name == "market":
                load_ = (f"{r['clients']} clients × {r['per_client']} of {r['symbols']} symbols, {s['rate']} ticks/s offered "
                         f"({s['publications'] / (s['seconds'] - 1):.0f} sent; the run waits 1 s more for the last window)")
                res = f"{s['deliveries_per_second']:.0f} deliveries/s (conflation {s['conflation_ratio']:.1f}×)"
            elif name == "chat":
                load_ = f"{r['rooms']} rooms × {r['members_per_room']} members, {s['rate']:.0f} msgs/s"
                res = f"{s['deliveries_per_second']:.0f} deliveries/s ({s['deliveries']} of {s['expected_deliveries']:.0f})"
            else:
                load_ = f"{r['subscribers']} subs × {s['rate']} pub/s offered ({s['publish_rate']:.0f} sent)"
                res = f"{s['deliveries_per_second']:.0f} deliveries/s ({s['deliveries']} of {s['expected_deliveries']})"
            cpu = s.get("server_cpu_percent")
            rss = s.get("server_rss_mib")
            rows.append(f"| {name} | {load_} | {res} | {ms(l, 'p50')} / {ms(l, 'p99')} / {ms(l, 'p999')} / {ms(l, 'max')} | "
                        f"{'-' if cpu is None else f'{cpu:.0f}%'} | {'-' if rss is None else f'{rss:.0f} MiB'} |")
    r = load("idle.json")
    if r:
        rows.append(f"| idle | {r['connections']} connections ({r['load_processes']} load processes, "
                    f"{r.get('server_processes', '?')} Herald nodes) | "
                    f"{r.get('server_process_kib_per_connection', 0):.2f} KiB process + "
                    f"{r.get('kernel_kib_per_connection_both_ends', 0):.2f} KiB kernel (both ends) per connection; "
                    f"ramp {r['connections_per_second']:.0f} conn/s | - | {r.get('server_cpu_percent', 0):.1f}% at rest | "
                    f"{r.get('server_rss_mib', 0):.0f} MiB |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
    if "--table" in sys.argv:
        table()
