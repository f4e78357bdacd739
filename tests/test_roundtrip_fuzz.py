"""Fuzzing the front end and the printer with csmith (issue 8): for fixed
seeds, csmith writes a random valid C program that prints a checksum of its
globals; otp parses it and prints it back; the printed program must print
the same checksum, and parse back to the same IR. Constructs outside the IR
travel as opaque nodes, so nothing may be dropped or changed.

`pytest tests/test_roundtrip_fuzz.py` runs 20 small programs; `pytest -m fuzz`
runs the long batch (200 larger programs). csmith and its runtime header
come from Debian's `csmith` and `libcsmith-dev` (.ci/run installs them);
otp's preprocessor finds csmith.h through CPATH, as gcc does.

A program whose original does not finish within RUN_TIMEOUT_S (csmith
writes some long-running ones) has no checksum to compare: its seed is
counted and the next seed is taken, so each batch compares exactly its
number of programs."""
from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from optitrust_py.frontend import parse_text
from optitrust_py.printer import to_c

CSMITH_INCLUDE = Path("/usr/include/csmith")
RUN_TIMEOUT_S = 2.0
SMALL = ("--max-funcs", "3", "--max-block-depth", "3", "--max-expr-complexity", "5")
LARGE = ("--max-funcs", "5", "--max-expr-complexity", "8")

needs_csmith = pytest.mark.skipif(
    shutil.which("csmith") is None or not (CSMITH_INCLUDE / "csmith.h").is_file(),
    reason="csmith is not installed (apt-get install csmith libcsmith-dev; .ci/run does it)")


@dataclass
class Outcome:
    seed: int
    checksum: Optional[str]  # None: the original did not finish in time
    printed_checksum: Optional[str] = None
    fixpoint: bool = True


def _checksum(c_text: str, exe: Path) -> Optional[str]:
    """Build `c_text` with gcc and run it: its `checksum = ...` line, or None
    when it runs past RUN_TIMEOUT_S. A build or run failure fails the test."""
    build = subprocess.run(["gcc", "-w", "-O1", "-I", str(CSMITH_INCLUDE), "-x", "c", "-", "-o", str(exe)],
                           input=c_text, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr[:2000]
    try:
        run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None
    assert run.returncode == 0 and run.stdout.startswith("checksum = "), (run.returncode, run.stdout[:200])
    return run.stdout.strip()


def roundtrip(seed: int, options: tuple[str, ...], work: Path) -> Outcome:
    """csmith's program for `seed`, and otp's print of it, built and run."""
    gen = subprocess.run(["csmith", "--seed", str(seed), *options], capture_output=True, text=True, timeout=60,
                         cwd=work)  # csmith leaves a platform.info where it runs
    assert gen.returncode == 0 and gen.stdout, gen.stderr
    source = gen.stdout
    want = _checksum(source, work / "original")
    if want is None:
        return Outcome(seed, None)
    name = str(work / f"seed{seed}.c")
    program = parse_text(source, name)
    printed = to_c(program)
    (work / f"seed{seed}.printed.c").write_text(printed)
    return Outcome(seed, want, _checksum(printed, work / "printed"), parse_text(printed, name) == program)


def batch(count: int, first_seed: int, options: tuple[str, ...], work: Path) -> tuple[list[Outcome], int]:
    """Round-trip `count` programs from `first_seed` on; also the number of
    seeds passed over because their original ran too long."""
    done: list[Outcome] = []
    slow = 0
    seed = first_seed
    while len(done) < count:
        outcome = roundtrip(seed, options, work)
        if outcome.checksum is None:
            slow += 1
            assert slow <= count, "most csmith programs ran past the time limit: the options make them too long"
        else:
            done.append(outcome)
        seed += 1
    return done, slow


def _failures(outcomes: list[Outcome]) -> list[str]:
    return [f"seed {o.seed}: {o.checksum} -> {o.printed_checksum}, re-parses to the same IR: {o.fixpoint}"
            for o in outcomes if o.printed_checksum != o.checksum or not o.fixpoint]


@pytest.fixture
def csmith_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """csmith.h on otp's (gcc's) include path."""
    monkeypatch.setenv("CPATH", str(CSMITH_INCLUDE))


@needs_csmith
def test_twenty_programs_round_trip(tmp_path: Path, csmith_path: None) -> None:
    start = time.perf_counter()
    outcomes, slow = batch(20, 1, SMALL, tmp_path)
    assert _failures(outcomes) == []
    assert len({o.checksum for o in outcomes}) > 10  # distinct programs, not one repeated
    assert slow <= 5 and time.perf_counter() - start < 120


@pytest.mark.fuzz
@needs_csmith
def test_long_batch_round_trips(tmp_path: Path, csmith_path: None) -> None:
    start = time.perf_counter()
    outcomes, slow = batch(200, 1000, LARGE, tmp_path)
    print(f"\ncsmith long batch: {len(outcomes)} programs round-tripped from seed 1000 ({slow} seeds passed over: "
          f"the original ran past {RUN_TIMEOUT_S} s), {time.perf_counter() - start:.0f} s")
    assert _failures(outcomes) == []


# ====================================================================== regressions and opaque constructs

OPAQUE_C = r"""
#include <stdio.h>

_Static_assert(sizeof(int) == 4, "int is 32 bits");

struct point { int x, y; };

static int old_style(a, b)
int a;
int b;
{
  return a * 10 + b;
}

int main(void) {
  struct point p = {.y = 3, .x = 4};
  int arr[6] = {[2] = 7, [4] = 9};
  int grid[2][2] = {{[1] = 3}, {4}};
  _Alignas(16) int aligned = 5;
  float f = 2.0f;
  int kind = _Generic(f, float: 1, double: 2, default: 3);
  int sum = 0;
  for (int i = 0; i < 6; i++) {
    sum += arr[i] * (i + 1);
  }
  struct point q = (struct point){.x = sum, .y = kind};
  printf("checksum = %d %d %d %d %d %d %d %d\n", p.x, p.y, aligned, q.x, q.y, old_style(sum, kind),
         grid[0][1], grid[1][0]);
  return 0;
}
"""


def test_designated_initializers_keep_their_braces() -> None:
    """Regression (found writing the opaque-construct program below):
    an initializer list with designators is opaque, and its text lost its
    braces (`int a[6] = [2] = 7;`), which gcc rejects."""
    text = "int a[6] = {[2] = 7, [4] = 9};\nstruct p { int x; int y; } q = {.y = 3};\nint g[2][2] = {{[1] = 3}, {4}};\n"
    printed = to_c(parse_text(text))
    assert "int a[6] = {[2] = 7, [4] = 9};" in printed and "q = {.y = 3};" in printed
    assert "int g[2][2] = {{[1] = 3}, {4}};" in printed
    assert to_c(parse_text(printed)) == printed


def test_constructs_outside_the_ir_travel_verbatim(tmp_path: Path) -> None:
    """K&R definitions, _Static_assert, _Alignas, _Generic, designated
    initializers: opaque nodes, printed back so that the program computes
    the same."""
    from optitrust_py import ir
    from optitrust_py.tree import walk

    program = parse_text(OPAQUE_C, "opaque.c")
    opaque = [n.text for _, n in walk(program) if isinstance(n, (ir.Opaque, ir.OpaqueExpr))]
    assert len(opaque) >= 6 and any("_Generic" in t for t in opaque), opaque
    printed = to_c(program)
    assert _checksum(printed, tmp_path / "printed") == _checksum(OPAQUE_C, tmp_path / "original") \
        == "checksum = 4 3 5 66 1 661 3 4"
    assert parse_text(printed, "opaque.c") == program
