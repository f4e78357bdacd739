"""Speed of level 2 (a benchmark, not a test; run it by hand):

    python tests/benchmarks/level2_speed.py

Runs `otp check SCRIPT --level 2 --json` in process for scripts/attention.py
first (nothing cached yet: the time a user waits, less Python's start-up),
then for every other script, and prints per script the wall time of the
command (level 1 and its gcc runs included), the time level 2 itself took,
and the median and maximum time per obligation, then the same over all
scripts; attention's figures are compared with the targets of issue 4
(under 10 s, median obligation under 20 ms)."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from optitrust_py.cli import cli

ROOT = Path(__file__).resolve().parents[2]
ATTENTION = "scripts/attention.py"
TARGET_COMMAND_S = 10.0
TARGET_MEDIAN_S = 0.020


def check(script: str) -> tuple[float, dict[str, Any]]:
    """Wall time of `otp check SCRIPT --level 2 --json`, and its level-2 totals."""
    t0 = time.perf_counter()
    r = CliRunner().invoke(cli, ["check", script, "--level", "2", "--json"])
    wall = time.perf_counter() - t0
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return wall, json.loads(r.stdout)["scripts"][0]["level2"]


def line(script: str, wall: float, l2: dict[str, Any]) -> str:
    return (f"{script}: {wall:.2f} s for the command, {l2['time_s']:.2f} s in level 2; {l2['obligations']} "
            f"obligations ({l2['proved']} proved, {l2['refuted']} refuted, {l2['unknown']} unknown), median "
            f"{l2['median_obligation_s'] * 1000:.1f} ms, max {l2['max_obligation_s'] * 1000:.1f} ms per obligation")


def main() -> None:
    os.chdir(ROOT)
    scripts = [ATTENTION] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.py")
                                   if str(p.relative_to(ROOT)) != ATTENTION)
    total = 0.0
    times: list[float] = []
    for script in scripts:
        wall, l2 = check(script)
        total += wall
        times.extend(v["time_s"] for step in l2["steps"] for v in step["obligations"])
        print(line(script, wall, l2))
        if script == ATTENTION:
            print(f"  targets: command under {TARGET_COMMAND_S:.0f} s: {'met' if wall < TARGET_COMMAND_S else 'MISSED'}; "
                  f"median obligation under {TARGET_MEDIAN_S * 1000:.0f} ms: "
                  f"{'met' if l2['median_obligation_s'] < TARGET_MEDIAN_S else 'MISSED'}")
    print(f"all {len(scripts)} scripts: {total:.2f} s; {len(times)} obligations, median "
          f"{statistics.median(times) * 1000:.1f} ms, max {max(times) * 1000:.1f} ms per obligation")


if __name__ == "__main__":
    main()
