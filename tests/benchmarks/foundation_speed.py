"""Speed of the foundation (a benchmark, not a test; run it by hand):

    python tests/benchmarks/foundation_speed.py

Prints the median over repeats of: parse + print of c_sources/transformer.c
(in process, after a warm-up, and as a fresh `otp print` process), and the
level-1 check of each step of the matmul and attention scripts without gcc
(re-print, re-parse, IR comparison, contracts) and with gcc."""
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from optitrust_py.frontend import parse_file
from optitrust_py.level1 import check_program
from optitrust_py.printer import to_c
from optitrust_py.runner import new_session, run_script

ROOT = Path(__file__).resolve().parents[2]


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    src = ROOT / "c_sources" / "transformer.c"
    to_c(parse_file(src))
    warm = median_time(lambda: to_c(parse_file(src)), 30)
    cold = median_time(lambda: subprocess.run([sys.executable, "-m", "optitrust_py", "print", str(src)],
                                              capture_output=True, check=True), 7)
    print(f"parse+print transformer.c: {warm * 1000:.1f} ms in process (median of 30), "
          f"{cold * 1000:.0f} ms as a fresh `otp print` process (median of 7, includes Python start-up)")
    for script in ("scripts/matmul.py", "scripts/attention.py"):
        session = new_session(ROOT / script)
        err = run_script(session, ROOT / script)
        assert err is None, err
        no_gcc, with_gcc = [], []
        for step in session.steps:
            no_gcc.append(median_time(lambda: check_program(step.after, session.contracts, run_gcc=False), 15))
            r = check_program(step.after, session.contracts, run_gcc=True)
            with_gcc.append(r.time_s + r.gcc_s)
        print(f"{script}: level-1 step without gcc: median {statistics.median(no_gcc) * 1000:.1f} ms "
              f"(max {max(no_gcc) * 1000:.1f} ms) over {len(no_gcc)} steps; with gcc (first run, cached after): "
              f"median {statistics.median(with_gcc) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
