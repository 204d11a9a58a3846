#!/usr/bin/env python3
"""bench/ratios.py OUT PREFIX A B [NAME]: A against B from alternating runs of one saturating broadcast step.

Reads OUT/PREFIX-A-SUBS-ROUND.json and OUT/PREFIX-B-SUBS-ROUND.json (written by bench/run.sh floor,
whose prefixes are floor-api, floor-client and the same with -compete, formats, or cores), pairs the runs of each round, and prints, per subscriber count, the ratio A/B of deliveries/s
(each pair, the median and the spread) with both medians, the same ratio per second of server CPU (what
a delivery costs the server, whatever else runs), and each server's RSS per subscriber (at the end of the step, and idle when the run measured it). Writes
the same as OUT/NAME (default PREFIX-ratios.json).
"""
import glob
import json
import os
import re
import statistics
import sys


def step(path):
    with open(path) as f:
        result = json.load(f)
    steps = [s for s in result.get("steps", []) if "deliveries_per_second" in s]
    if not steps:
        return None
    s = steps[0]
    subscribers = max(result.get("subscribers", 0), 1)
    return {
        "deliveries_per_second": s["deliveries_per_second"],
        "p99_ms": s.get("latency_ms", {}).get("p99"),
        # Deliveries per second of server CPU: what each delivery costs the server, whoever
        # else (the load generator, a competing process) takes the rest of the machine.
        "deliveries_per_cpu_second": s["deliveries_per_second"] / max(s.get("server_cpu_percent", 0) / 100, 1e-9),
        "rss_kib_per_subscriber": s.get("server_rss_mib", 0) * 1024 / subscribers,
        # With the subscribers connected and idle, less the RSS before them (newer runs only).
        "idle_kib_per_subscriber": result.get("server_rss_kib_per_subscriber"),
    }


def main():
    out, prefix, a, b = sys.argv[1:5]
    report_name = sys.argv[5] if len(sys.argv) > 5 else f"{prefix}-ratios.json"
    runs = {}
    pattern = re.compile(rf"{re.escape(prefix)}-([a-z]+)-(\d+)-(\d+)\.json$")
    for path in glob.glob(os.path.join(out, f"{prefix}-*-*-*.json")):
        m = pattern.match(os.path.basename(path))
        if not m or m.group(1) not in (a, b):
            continue
        measured = step(path)
        if measured:
            runs.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), {})[m.group(1)] = measured
    report = []
    for subs in sorted(runs):
        pairs = [r for _, r in sorted(runs[subs].items()) if a in r and b in r]
        if not pairs:
            continue
        ratios = [p[a]["deliveries_per_second"] / max(p[b]["deliveries_per_second"], 1e-9) for p in pairs]
        efficiency = [p[a]["deliveries_per_cpu_second"] / max(p[b]["deliveries_per_cpu_second"], 1e-9) for p in pairs]
        row = {
            "subscribers": subs,
            "rounds": len(pairs),
            "ratios": [round(r, 3) for r in ratios],
            "median_ratio": round(statistics.median(ratios), 3),
            "spread": [round(min(ratios), 3), round(max(ratios), 3)],
            "median_ratio_per_cpu": round(statistics.median(efficiency), 3),
            "spread_per_cpu": [round(min(efficiency), 3), round(max(efficiency), 3)],
        }
        for name in (a, b):
            row[f"{name}_deliveries_per_second"] = round(statistics.median(p[name]["deliveries_per_second"] for p in pairs))
            row[f"{name}_rss_kib_per_subscriber"] = round(statistics.median(p[name]["rss_kib_per_subscriber"] for p in pairs), 2)
            idle = [p[name]["idle_kib_per_subscriber"] for p in pairs if p[name]["idle_kib_per_subscriber"] is not None]
            if idle:
                row[f"{name}_idle_kib_per_subscriber"] = round(statistics.median(idle), 2)
        report.append(row)
        print(
            f"{subs:>6} subscribers: {a}/{b} deliveries/s median {row['median_ratio']} "
            f"(spread {row['spread'][0]}–{row['spread'][1]}, {len(pairs)} rounds); "
            f"per server CPU-second {row['median_ratio_per_cpu']} "
            f"({row['spread_per_cpu'][0]}–{row['spread_per_cpu'][1]}); "
            f"{a} {row[f'{a}_deliveries_per_second']}/s, {b} {row[f'{b}_deliveries_per_second']}/s; "
            f"RSS/subscriber {a} {row[f'{a}_rss_kib_per_subscriber']} KiB, {b} {row[f'{b}_rss_kib_per_subscriber']} KiB"
        )
    if not report:
        sys.exit(f"no paired {prefix} runs of {a} and {b} in {out}")
    with open(os.path.join(out, report_name), "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
