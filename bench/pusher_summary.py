#!/usr/bin/env python3
"""bench/pusher_summary.py OUT PREFIX: the table and targets of `bench/run.sh pusher`.

Reads OUT/PREFIX-SERVER-SUBS-ROUND.json (SERVER: centrifugo, pusher, sockudo; written by
bench/run.sh pusher, alternating by round) and writes OUT/PREFIX-summary.json and
OUT/PREFIX-summary.md: per server and subscriber count, deliveries/s (median, min–max), server
memory per idle subscribed connection (RSS with the subscribers connected − RSS before, over the
subscribers), latency (median of the rounds' p50 and p99), server and load generator CPU and
publications per WebSocket message; then issue 18's targets
as ratios of runs of the same round: Herald's Pusher path ≥ 5× Sockudo's deliveries/s, ≤ 1/20 of
its memory per connection, ≥ 0.9× Herald's Centrifugo path.
"""
import glob
import json
import os
import re
import statistics
import sys

SERVERS = ("centrifugo", "pusher", "sockudo")
LABELS = {
    "centrifugo": "Herald, Centrifugo protocol",
    "pusher": "Herald, Pusher protocol",
    "sockudo": "Sockudo",
}


def measure(path):
    with open(path) as f:
        result = json.load(f)
    steps = [s for s in result.get("steps", []) if "deliveries_per_second" in s]
    if not steps:
        return None
    s = steps[0]
    latency = s.get("latency_ms", {})
    return {
        "deliveries_per_second": s["deliveries_per_second"],
        "deliveries": s.get("deliveries"),
        "expected_deliveries": s.get("expected_deliveries"),
        "publish_rate": s.get("publish_rate"),
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
        "server_cpu_percent": s.get("server_cpu_percent"),
        "client_cpu_percent": s.get("client_cpu_percent"),
        "deliveries_per_message": s.get("deliveries_per_message"),
        "kib_per_connection": result.get("server_rss_kib_per_subscriber"),
        "subscribers": result.get("subscribers"),
        "connect_errors": result.get("connect_errors"),
    }


def spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_rate(x):
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


def paired(rounds, a, b, key, invert=False):
    ratios = []
    for r in rounds.values():
        if a in r and b in r and r[a][key] and r[b][key]:
            ratios.append(r[b][key] / r[a][key] if invert else r[a][key] / r[b][key])
    return spread(ratios)


def main():
    out, prefix = sys.argv[1:3]
    pattern = re.compile(rf"{re.escape(prefix)}-([a-z]+)-(\d+)-(\d+)\.json$")
    runs = {}
    for path in glob.glob(os.path.join(out, f"{prefix}-*-*-*.json")):
        m = pattern.match(os.path.basename(path))
        if not m or m.group(1) not in SERVERS:
            continue
        measured = measure(path)
        if measured:
            runs.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), {})[m.group(1)] = measured
    if not runs:
        sys.exit(f"no {prefix} runs in {out}")
    report = []
    lines = [
        "| subscribers | server | deliveries/s, median (min–max) | KiB per idle subscribed connection | p50 / p99 ms (medians) | CPU: server / load generator | publications per message | rounds |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for subs in sorted(runs):
        rounds = runs[subs]
        row = {"subscribers": subs, "servers": {}}
        for server in SERVERS:
            ms = [r[server] for r in rounds.values() if server in r]
            if not ms:
                continue
            summary = {
                "rounds": len(ms),
                "deliveries_per_second": spread([m["deliveries_per_second"] for m in ms]),
                "kib_per_connection": spread([m["kib_per_connection"] for m in ms]),
                "p50_ms": spread([m["p50_ms"] for m in ms]),
                "p99_ms": spread([m["p99_ms"] for m in ms]),
                "server_cpu_percent": spread([m["server_cpu_percent"] for m in ms]),
                "client_cpu_percent": spread([m["client_cpu_percent"] for m in ms]),
                "deliveries_per_message": spread([m["deliveries_per_message"] for m in ms]),
                "delivered_of_expected": [f"{m['deliveries']}/{m['expected_deliveries']}" for m in ms],
                "connect_errors": [m["connect_errors"] for m in ms],
            }
            row["servers"][server] = summary
            d, k = summary["deliveries_per_second"], summary["kib_per_connection"]
            p50, p99, cpu = summary["p50_ms"], summary["p99_ms"], summary["server_cpu_percent"]
            client, per = summary["client_cpu_percent"], summary["deliveries_per_message"]
            lines.append(
                f"| {subs:,} | {LABELS[server]} | {fmt_rate(d['median'])} ({fmt_rate(d['min'])}–{fmt_rate(d['max'])}) | "
                + (f"{k['median']:.2f} ({k['min']:.2f}–{k['max']:.2f})" if k else "-")
                + " | "
                + (f"{p50['median']:.1f} / {p99['median']:.1f}" if p50 and p99 else "-")
                + " | "
                + (f"{cpu['median']:.0f}%" if cpu else "-")
                + (f" / {client['median']:.0f}%" if client else "")
                + " | "
                + (f"{per['median']:.1f}" if per else "-")
                + f" | {len(ms)} |"
            )
        row["targets"] = {
            "pusher_over_sockudo_throughput": paired(rounds, "pusher", "sockudo", "deliveries_per_second"),
            "sockudo_over_pusher_memory": paired(rounds, "pusher", "sockudo", "kib_per_connection", invert=True),
            "pusher_over_centrifugo_throughput": paired(rounds, "pusher", "centrifugo", "deliveries_per_second"),
        }
        report.append(row)
    lines.append("")
    lines.append("| subscribers | target | ratio per round, median (min–max) | verdict |")
    lines.append("| --- | --- | --- | --- |")
    for row in report:
        for key, label, goal in (
            ("pusher_over_sockudo_throughput", "Herald Pusher / Sockudo deliveries/s ≥ 5", 5.0),
            ("sockudo_over_pusher_memory", "Sockudo / Herald Pusher memory per connection ≥ 20", 20.0),
            ("pusher_over_centrifugo_throughput", "Herald Pusher / Herald Centrifugo deliveries/s ≥ 0.9", 0.9),
        ):
            r = row["targets"][key]
            if not r:
                lines.append(f"| {row['subscribers']:,} | {label} | not measured | - |")
                continue
            verdict = "met" if r["median"] >= goal else "missed"
            lines.append(
                f"| {row['subscribers']:,} | {label} | {r['median']:.2f} ({r['min']:.2f}–{r['max']:.2f}, {r['n']} rounds) | {verdict} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(out, f"{prefix}-summary.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out, f"{prefix}-summary.json"), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
