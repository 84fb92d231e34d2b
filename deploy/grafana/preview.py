#!/usr/bin/env python3
"""Renders deploy/grafana/whale.json's panels as a static HTML page from one /metrics scrape.

This is NOT Grafana and evaluates no PromQL: each panel shows, for the metric its expression
selects, the scraped values summed over the panel's `by (...)` labels (counters as totals since
the process started, gauges as they are, histograms as count and mean). It exists so the
dashboard can be looked at (and screenshotted) without a Grafana and a Prometheus:

    python3 deploy/grafana/preview.py target/observability/metrics.txt > /tmp/whale-dashboard.html
    chromium --headless --screenshot=/tmp/whale-dashboard.png --window-size=1400,2200 /tmp/whale-dashboard.html
"""
import html
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    types, samples = {}, defaultdict(list)
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(None, 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            if m:
                labels = dict(LABEL.findall(m.group(3) or ""))
                samples[m.group(1)].append((labels, float(m.group(4))))
    return types, samples


def metric_of(expr):
    names = [w for w in re.findall(r"\b(whale_[a-z0-9_]+)\b", expr)]
    return names[0] if names else None


def group_labels(expr):
    m = re.search(r"\bby \(([^)]*)\)", expr)
    return [l.strip() for l in m.group(1).split(",") if l.strip() and l.strip() != "le"] if m else []


def series(expr, types, samples):
    name = metric_of(expr)
    if not name:
        return name, []
    base = re.sub(r"_(bucket|sum|count)$", "", name)
    by = group_labels(expr)
    sums = defaultdict(float)
    if types.get(base) == "histogram":
        counts, totals = defaultdict(float), defaultdict(float)
        for labels, v in samples.get(base + "_count", []):
            counts[tuple(labels.get(l, "") for l in by)] += v
        for labels, v in samples.get(base + "_sum", []):
            totals[tuple(labels.get(l, "") for l in by)] += v
        out = []
        for k, c in sorted(counts.items()):
            mean = totals[k] / c if c else 0.0
            out.append((" ".join(k) or "all", c, f"n={c:g}, mean {mean:.3f} s"))
        return base, out
    for labels, v in samples.get(name, []):
        sums[tuple(labels.get(l, "") for l in by)] += v
    return name, [(" ".join(k) or "all", v, f"{v:g}") for k, v in sorted(sums.items())]


def main():
    root = Path(__file__).resolve().parent
    dash = json.loads((root / "whale.json").read_text())
    types, samples = parse(Path(sys.argv[1]).read_text())
    out = ["<!doctype html><meta charset=utf-8><title>whale pipeline (preview)</title><style>",
           "body{background:#111217;color:#ccccdc;font:13px sans-serif;margin:16px}",
           ".grid{display:grid;grid-template-columns:repeat(24,1fr);gap:8px}",
           ".p{background:#181b1f;border:1px solid #2c3235;border-radius:3px;padding:8px;overflow:hidden}",
           ".row{grid-column:span 24;font-size:16px;font-weight:bold;margin-top:6px}",
           "h3{margin:0 0 6px;font-size:13px}.e{color:#6e7a8a;font:11px monospace;margin-bottom:6px}",
           ".b{display:flex;align-items:center;margin:2px 0}.l{width:38%;overflow:hidden;white-space:nowrap}",
           ".bar{height:12px;background:#73bf69;margin-right:6px}.v{font-family:monospace}",
           ".note{background:#3d2e00;color:#ffd666;padding:6px;margin-bottom:10px}</style>",
           f"<h2>{html.escape(dash['title'])}</h2>",
           "<div class=note>Preview rendered from one <code>/metrics</code> scrape of a real <code>whale run</code> "
           "(tests/it/observability.rs) by deploy/grafana/preview.py &mdash; not Grafana, no PromQL evaluated: "
           "counters are totals since start, not rates.</div><div class=grid>"]
    for p in dash["panels"]:
        if p["type"] == "row":
            out.append(f"<div class=row>{html.escape(p['title'])}</div>")
            continue
        w = p["gridPos"]["w"]
        out.append(f"<div class=p style='grid-column:span {w}'><h3>{html.escape(p['title'])}</h3>")
        for t in p["targets"]:
            out.append(f"<div class=e>{html.escape(t['expr'])}</div>")
            name, rows = series(t["expr"], types, samples)
            top = max([v for _, v, _ in rows] + [1e-9])
            if not rows:
                out.append("<div class=v>(no series)</div>")
            for label, v, shown in rows[:12]:
                width = max(2, int(200 * v / top)) if v > 0 else 1
                out.append(f"<div class=b><span class=l>{html.escape(label)}</span>"
                           f"<span class=bar style='width:{width}px'></span><span class=v>{html.escape(shown)}</span></div>")
        out.append("</div>")
    out.append("</div>")
    print("\n".join(out))


if __name__ == "__main__":
    main()
