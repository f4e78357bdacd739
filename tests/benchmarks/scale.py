"""Scale (issue 8; a benchmark, not a test: run it by hand):

    python tests/benchmarks/scale.py [--lines 20000] [--steps 200]

1. A generated C file of `--lines` lines (kernels of loops, conditions and
   locals, like c_sources/) is parsed and printed in process; the printed
   text must re-parse to the same IR. Aim: under 5 s.
2. A script of `--steps` steps on c_sources/transformer.c (loop shifts by +1
   and -1 over its loops in turn, then the next loop) runs at level 1 (each
   step re-printed, re-parsed, compiled with gcc -fsyntax-only) and its run
   is written out. Aim: under 20 s.
3. Memory: the peak of Python allocations (tracemalloc) during the run, and
   the process's maximum resident set (getrusage), against 1 GiB. Steps keep
   programs, which are immutable trees sharing every subtree a step did not
   change, so a step costs about the size of what it rewrote.

Times are of one run each (wall clock, so a loaded machine reads slower);
the figures are printed, and the command exits 1 when an aim is missed."""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from optitrust_py import ir
from optitrust_py.checks import run_checks
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.outputs import CodeCache, write_run
from optitrust_py.printer import to_c
from optitrust_py.runner import new_session, run_script
from optitrust_py.tree import walk

ROOT = Path(__file__).resolve().parents[2]
GIB = 1 << 30
KERNEL = """
/* kernel {k} */
void kernel_{k}(int n, int m, const float *a, const float *b, float *c) {{
  float acc = 0.0f;
  for (int i = 0; i < n; i++) {{
    for (int j = 0; j < m; j++) {{
      float t = a[i * m + j] * b[j] + {k}.0f;
      if (t > acc) {{
        acc = t;
      }} else {{
        c[i * m + j] += t * 0.5f;
      }}
    }}
    c[i] = acc / (float)(i + 1);
  }}
  for (int j = 0; j < m; j++) {{
    c[j] = c[j] > 0.0f ? c[j] : -c[j];
  }}
}}
"""


def generated_source(lines: int) -> str:
    """At least `lines` lines of C: copies of KERNEL with distinct names."""
    per = KERNEL.count("\n")
    return "#include <math.h>\n" + "".join(KERNEL.format(k=k) for k in range(lines // per + 1))


def bench_parse_print(lines: int) -> float:
    text = generated_source(lines)
    t0 = time.perf_counter()
    program = parse_text(text, "generated.c")
    t1 = time.perf_counter()
    printed = to_c(program)
    t2 = time.perf_counter()
    assert parse_text(printed, "generated.c") == program
    print(f"parse+print of a generated file of {text.count(chr(10))} lines: {t2 - t0:.2f} s "
          f"(parse {t1 - t0:.2f} s, print {t2 - t1:.2f} s)  [aim: < 5 s]")
    return t2 - t0


def loop_targets(program: ir.Program) -> list[str]:
    """A target for every canonical loop, function by function (`f > for j#2`)."""
    out = []
    for f in program.functions():
        seen: dict[str, int] = {}
        for _, n in walk(f):
            if isinstance(n, ir.For):
                seen[n.index] = seen.get(n.index, 0) + 1
                out.append(f"{f.name} > for {n.index}#{seen[n.index]}")
    return out


def shift_script(steps: int, folder: Path) -> Path:
    """A script of `steps` loop shifts on transformer.c: +1 then -1 on each loop in turn."""
    source = ROOT / "c_sources" / "transformer.c"
    targets = loop_targets(parse_file(source))
    calls = [f"loop.shift({targets[(k // 2) % len(targets)]!r}, {1 if k % 2 == 0 else -1})" for k in range(steps)]
    script = folder / "scale_transformer.py"
    script.write_text("from optitrust_py.script import load\nfrom transformations import loop\n"
                      f"load({str(source)!r})\n" + "\n".join(calls) + "\n")
    return script


def run_once(steps: int) -> tuple[list[float], float]:
    """Apply, check at level 1 and write out a `steps`-step script: the time
    of each phase, and the seconds level 1 spent in gcc."""
    with tempfile.TemporaryDirectory(prefix="otp-scale-") as tmp:
        script = shift_script(steps, Path(tmp))
        t0 = time.perf_counter()
        session = new_session(script)
        error = run_script(session, script)
        assert error is None, error
        t1 = time.perf_counter()
        run_checks(session, 1, False)
        t2 = time.perf_counter()
        write_run(session, str(script), Path(tmp) / "out", None, CodeCache())
        t3 = time.perf_counter()
    failed = [s.number for s in session.steps if not s.checks["level1"].ok]
    assert len(session.steps) == steps and not failed, failed
    return [t1 - t0, t2 - t1, t3 - t2], sum(s.checks["level1"].gcc_s for s in session.steps)


def bench_script(steps: int) -> tuple[float, int]:
    """One timed run, then one run under tracemalloc (which slows Python
    down) for the peak of its allocations."""
    (apply_s, check_s, write_s), gcc_s = run_once(steps)
    total = apply_s + check_s + write_s
    print(f"{steps}-step script on transformer.c at level 1: {total:.2f} s (apply {apply_s:.2f} s, "
          f"level 1 {check_s:.2f} s of which gcc {gcc_s:.2f} s, write out/ {write_s:.2f} s)  [aim: < 20 s]")
    tracemalloc.start()
    run_once(steps)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"  peak Python allocations during a run: {peak / 2**20:.1f} MiB  [aim: < 1024 MiB]")
    return total, peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    parse_s = bench_parse_print(args.lines)
    script_s, peak = bench_script(args.steps)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"maximum resident set of this process: {rss / 2**20:.0f} MiB  [aim: < 1024 MiB]")
    return 0 if parse_s < 5 and script_s < 20 and max(rss, peak) < GIB else 1


if __name__ == "__main__":
    sys.exit(main())
