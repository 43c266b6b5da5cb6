#!/usr/bin/env python3
"""Draws docs/bench-chart.svg from a real run: poll time per op against new connections per
poll (criterion's poll_sweep_new_per_poll estimates, from `cargo bench --bench poll`), and
resident memory against tracked connections (the store_memory example, run here).

Usage: cargo bench -p flowex-benches --bench poll && python3 scripts/bench_chart.py
"""
import json
import pathlib
import subprocess
import sys

root = pathlib.Path(__file__).resolve().parent.parent
sweep_dir = root / "target" / "criterion" / "poll_sweep_new_per_poll"
if not sweep_dir.is_dir():
    sys.exit("no criterion results: run `cargo bench -p flowex-benches --bench poll` first")

sweep = []
for child in sweep_dir.iterdir():
    estimates = child / "new" / "estimates.json"
    if child.name.isdigit() and estimates.exists():
        mean_ns = json.loads(estimates.read_text())["mean"]["point_estimate"]
        sweep.append((int(child.name), mean_ns / 1e6))
sweep.sort()

memory = []
for n in (100_000, 250_000, 500_000, 750_000, 1_000_000):
    out = subprocess.run(
        ["cargo", "run", "--release", "-q", "-p", "flowex-agent", "--example", "store_memory", "--", str(n)],
        cwd=root, check=True, capture_output=True, text=True,
    ).stdout
    data = json.loads(out)
    memory.append((n, data["resident_bytes"] / 1e6))


def panel(x0, title, xlabel, ylabel, points, color):
    w, h, pad = 420, 300, 50
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    xmax, ymax = max(xs) * 1.05, max(ys) * 1.15
    def sx(x):
        return x0 + pad + (w - 2 * pad) * x / xmax
    def sy(y):
        return h - pad + 20 - (h - 2 * pad) * y / ymax
    parts = [f'<text x="{x0 + w / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>',
             f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="black"/>',
             f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="black"/>',
             f'<text x="{x0 + w / 2}" y="{h + 10}" text-anchor="middle" font-size="12">{xlabel}</text>',
             f'<text x="{x0 + 14}" y="{h / 2}" text-anchor="middle" font-size="12" '
             f'transform="rotate(-90 {x0 + 14} {h / 2})">{ylabel}</text>']
    for i in range(5):
        yv = ymax * i / 4
        parts.append(f'<text x="{sx(0) - 4}" y="{sy(yv) + 4}" text-anchor="end" font-size="10">{yv:.3g}</text>')
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
    for x, y in points:
        parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{sx(x):.1f}" y="{sy(0) + 14}" text-anchor="middle" font-size="10">{x // 1000}k</text>')
    return "\n".join(parts)


svg = [
    '<svg xmlns="http://www.w3.org/2000/svg" width="860" height="330" font-family="sans-serif">',
    '<rect width="100%" height="100%" fill="white"/>',
    panel(0, "poll time per op (15k conns per poll)", "new connections per poll", "ms/op", sweep, "#1f77b4"),
    panel(430, "resident memory of the store", "tracked connections", "MB", memory, "#d62728"),
    "</svg>",
]
out = root / "docs" / "bench-chart.svg"
out.write_text("\n".join(svg) + "\n")
print(f"wrote {out}: sweep {sweep}, memory {memory}")
