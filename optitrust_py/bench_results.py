"""Benchmark results as the trace viewer keeps and draws them.

`otp bench` records its report (`BenchReport.to_json`, plus when it was
measured) in `out/<script>/bench.json`: one entry per (sizes, threads,
target), the latest run replacing an older one at the same settings, so
running it at several sizes builds up a chart. `otp run` keeps that file
when it rewrites the folder.

The chart is hand-written SVG (no plotting dependency): for each size, one
bar per program (the original, the optimized one, the script's variants,
the library) at its rate at the median time (GFLOP/s or GB/s; higher is
faster). The same SVG is inlined in the trace viewer and written alone by
`otp bench --plot FILE.svg`."""
from __future__ import annotations

import json
import math
import os
import time
from html import escape
from pathlib import Path
from typing import Any, Sequence

from .bench import UNITS

COLORS = ("#8c8c8c", "#1f77b4", "#ff7f0e", "#9467bd", "#2ca02c", "#d62728", "#17becf")
"""The original in grey, the optimized program in blue, then the others."""
BENCH_FILE = "bench.json"
BAR, GAP, GROUP_GAP = 26, 4, 36
CHAR = 7
"""Width of a character of the labels, in pixels (roughly: no font metrics here)."""
TITLE_CHAR = 8
"""The same for the title (13px bold)."""
LEFT, TOP, PLOT_H, BOTTOM = 70, 40, 240, 90


def series(run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, timing) of each program a run timed, original first."""
    out = [("original", run["baseline"]), ("optimized", run["optimized"])]
    out += list(run.get("variants", {}).items())
    if run.get("library"):
        out.append((run["library"], run[run["library"]]))
    return out


def size_label(run: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in run["sizes"].items())


def _rate_key(runs: Sequence[dict[str, Any]]) -> tuple[str, str]:
    """The JSON key and title of the rate the runs share (GFLOP/s or GB/s)."""
    keys = {key for key, _ in UNITS.values() if all(key in t for r in runs for _, t in series(r))}
    if len(keys) != 1:
        raise ValueError("the benchmark runs do not share one unit (GFLOP/s or GB/s)")
    key = keys.pop()
    return key, next(title for k, title in UNITS.values() if k == key)


def _ticks(top: float) -> list[float]:
    """About five round tick values from 0 to at least `top`."""
    raw = top / 5 if top > 0 else 1.0
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(int(math.ceil(top / step)) + 1)]


def _text(x: float, y: float, text: str, cls: str, anchor: str = "middle") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" class="{cls}" text-anchor="{anchor}">{escape(text)}</text>'


def bench_svg(runs: Sequence[dict[str, Any]], title: str = "") -> str:
    """The chart of `runs` (successful ones; a failed one is named under the
    chart with its error) as a standalone SVG document."""
    good = [r for r in runs if r.get("ok")]
    failed = [r for r in runs if not r.get("ok")]
    if not good:
        raise ValueError("no successful benchmark run to plot")
    key, unit = _rate_key(good)
    labels = list(dict.fromkeys(label for r in good for label, _ in series(r)))
    color = {label: COLORS[i % len(COLORS)] for i, label in enumerate(labels)}
    title = title or f"{good[0]['function']}: {unit} at the median time (higher is faster)"
    notes = [(size_label(r), f"{r['threads']} threads, speedup {r['speedup']:.2f}×") for r in good]
    widths = [max(len(series(r)) * (BAR + GAP), CHAR * max(map(len, n))) for r, n in zip(good, notes)]
    width = max(LEFT + sum(widths) + GROUP_GAP * len(good), LEFT + TITLE_CHAR * len(title)) + 20
    height = TOP + PLOT_H + BOTTOM + 18 * len(failed)
    ticks = _ticks(max(t[key] for r in good for _, t in series(r)))
    scale = PLOT_H / ticks[-1]
    base = TOP + PLOT_H
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
             "<style>.t{font-size:13px;font-weight:bold}.v{font-size:9px}.a{fill:#555}.e{fill:#c00}</style>",
             f'<rect width="{width}" height="{height}" fill="white"/>',
             _text(LEFT, 18, title, "t", "start")]
    for tick in ticks:
        y = base - tick * scale
        parts.append(f'<line x1="{LEFT}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(_text(LEFT - 6, y + 4, f"{tick:g}", "a", "end"))
    parts.append(_text(14, TOP + PLOT_H / 2, unit, "a"))
    x = LEFT + GROUP_GAP / 2
    for run, w, (size, note) in zip(good, widths, notes):
        bars = series(run)
        for i, (label, timing) in enumerate(bars):
            h = timing[key] * scale
            bx = x + (w - len(bars) * (BAR + GAP)) / 2 + i * (BAR + GAP)
            parts.append(f'<rect x="{bx:.1f}" y="{base - h:.1f}" width="{BAR}" height="{h:.1f}" '
                         f'fill="{color[label]}"><title>{escape(label)}: {timing[key]:.3g} {unit}, median '
                         f'{timing["median_s"]:.3g} s</title></rect>')
            parts.append(_text(bx + BAR / 2, base - h - 3, f"{timing[key]:.3g}", "v"))
        parts.append(_text(x + w / 2, base + 16, size, "a"))
        parts.append(_text(x + w / 2, base + 30, note, "a"))
        x += w + GROUP_GAP
    lx = LEFT
    for label in labels:
        parts.append(f'<rect x="{lx}" y="{base + 44}" width="10" height="10" fill="{color[label]}"/>')
        parts.append(_text(lx + 14, base + 53, label, "a", "start"))
        lx += 24 + 7 * len(label)
    for i, r in enumerate(failed):
        parts.append(_text(LEFT, base + BOTTOM + 18 * i, f"{size_label(r)}: {r.get('error', 'failed')}", "e",
                           "start"))
    parts.append("</svg>")
    return "\n".join(parts)


def _settings(run: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted(run["sizes"].items())), run["threads"], run.get("target")


def load_runs(folder: Path) -> list[dict[str, Any]]:
    """The runs recorded in `folder/bench.json` (none when it is absent)."""
    path = folder / BENCH_FILE
    if not path.is_file():
        return []
    return list(json.loads(path.read_text()).get("runs", []))


def record_run(folder: Path, run: dict[str, Any]) -> list[dict[str, Any]]:
    """Add `run` to `folder/bench.json` (replacing the one at the same
    settings), written to a temporary name then renamed; returns all runs,
    smallest sizes first."""
    stamped = {**run, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    runs = [r for r in load_runs(folder) if _settings(r) != _settings(stamped)] + [stamped]
    runs.sort(key=lambda r: (math.prod(v for v in r["sizes"].values()), r["threads"]))
    write_atomic(folder / BENCH_FILE, json.dumps({"runs": runs}, indent=1))
    return runs


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary name in the same folder,
    so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
