#!/usr/bin/env python3
"""The report of a scripts/bench-ab.sh run: for each figure, each side's median and range
over the rounds (for criterion figures the range spans each round's 95% interval too),
B/A, and a verdict that is "worse" or "better" only when the two ranges do not overlap
and each side has two rounds or more. Exits 1 if any figure is worse.

    scripts/bench-ab-report.py DIR
"""

import json
import pathlib
import re
import statistics
import sys

UNITS_NS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}

# Figures read off each `raven bench` row: name, how to read it, whether lower is better.
ROW_FIGURES = {
    "n1": [("p50 µs", "p50", True), ("p99 µs", "p99", True)],
    "n100": [("p50 µs", "p50", True), ("p99 µs", "p99", True), ("server CPU %", "cpu", True)],
    "n1000": [("p99 µs", "p99", True), ("server RSS MiB", "rss", True)],
    "n1000x10k": [("p99 µs", "p99", True), ("server RSS MiB", "rss", True)],
    "n10000": [("p99 µs", "p99", True), ("server RSS MiB", "rss", True)],
    "max100": [("deliveries/s", "delivered", False)],
    "max1000": [("deliveries/s", "delivered", False)],
    "ws100": [
        ("p50 µs", "p50", True),
        ("p99 µs", "p99", True),
        ("server CPU %", "cpu", True),
        ("CPU per delivery, WS / gRPC", "ws_cpu_ratio", True),
    ],
}

# The row each figure is read from: the WebSocket rows' own, elsewhere Raven's gRPC one.
ROW_SOURCE = {"ws100": "websocket"}


def criterion_times(path):
    """(low, median, high) time (ns) of each benchmark in a criterion output file."""
    times, name = {}, None
    for line in path.read_text(errors="replace").splitlines():
        match = re.search(r"time:\s+\[(\S+) (\S+) (\S+) (\S+) (\S+) (\S+)\]", line)
        if match:
            head = line.split("time:")[0].strip()
            low, mid, high = (float(match.group(i)) * UNITS_NS[match.group(i + 1)] for i in (1, 3, 5))
            times[head or name] = (low, mid, high)
        elif line and not line[0].isspace() and not line.startswith(
            ("Benchmarking", "Found", "Gnuplot", "Warning", "Running")
        ):
            name = line.strip()
    return times


def row_values(path, source):
    """The figures of a `raven bench --json` file's first `source` row ("raven": gRPC,
    "websocket": the gateway), with its entry's WS / gRPC CPU per delivery."""
    report = json.loads(path.read_text())
    entries = [e for e in report["rows"] if e.get(source)]
    if not entries:
        return {}
    row = entries[0][source]
    return {
        "ws_cpu_ratio": entries[0].get("websocket_cpu_ratio"),
        "p50": row["latency_us"]["p50"],
        "p99": row["latency_us"]["p99"],
        "cpu": row.get("server_cpu_percent"),
        "rss": row.get("server_rss_mib"),
        "delivered": row["delivered_per_s"],
        "lost": row["lost"],
    }


def collect(out):
    """{figure: (lower_is_better, {side: [(low, value, high) per round]})}."""
    figures = {}

    def add(name, lower, side, value):
        if value is None:
            return
        if not isinstance(value, tuple):
            value = (value, value, value)
        figures.setdefault(name, (lower, {"A": [], "B": []}))[1][side].append(value)

    for path in sorted(out.glob("[AB]-criterion-*.txt")):
        side = path.name[0]
        for name, ns in criterion_times(path).items():
            add(f"criterion {name} (ns)", True, side, ns)
    for path in sorted(out.glob("[AB]-row-*.json")):
        side, row = path.name[0], path.name.split("-")[2]
        values = row_values(path, ROW_SOURCE.get(row, "raven"))
        for label, key, lower in ROW_FIGURES.get(row, []):
            add(f"{row} {label}", lower, side, values.get(key))
        add(f"{row} lost", True, side, values.get("lost"))
    for path in sorted(out.glob("[AB]-idle-*.txt")):
        add("idle, SQLite recording, server CPU %", True, path.name[0],
            float(path.read_text()))
    return figures


def fmt(value):
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def main():
    out = pathlib.Path(sys.argv[1])
    sides = out / "sides.txt"
    if sides.exists():
        print(sides.read_text())
    print("| figure | A median [range] | B median [range] | B/A | verdict |")
    print("|---|---|---|---|---|")
    worse = []
    for name, (lower, by_side) in collect(out).items():
        a, b = by_side["A"], by_side["B"]
        if not a or not b:
            continue
        if name.endswith(" lost") and max(v for _, v, _ in a + b) == 0:
            continue
        ma, mb = (statistics.median(v for _, v, _ in side) for side in (a, b))
        (a_lo, a_hi), (b_lo, b_hi) = ((min(s[0] for s in side), max(s[2] for s in side))
                                      for side in (a, b))
        ratio = f"{mb / ma:.3f}" if ma else "-"
        if min(len(a), len(b)) < 2:
            verdict = "? (one round)"
        elif b_lo > a_hi:
            verdict = "worse" if lower else "better"
        elif b_hi < a_lo:
            verdict = "better" if lower else "worse"
        else:
            verdict = "~"
        if verdict == "worse":
            worse.append(name)
        print(
            f"| {name} | {fmt(ma)} [{fmt(a_lo)}–{fmt(a_hi)}] "
            f"| {fmt(mb)} [{fmt(b_lo)}–{fmt(b_hi)}] | {ratio} | {verdict} |"
        )
    print()
    if worse:
        print(f"Worse beyond the spread: {', '.join(worse)}.")
        sys.exit(1)
    print("Nothing worse beyond the spread.")


if __name__ == "__main__":
    main()
