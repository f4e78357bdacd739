"""Property tests (issue 8): random loop nests over random affine accesses,
random sequences of loop transformations. Level 2 must be sound with respect
to execution: when it proves every step of a sequence, the final program
computes what the original computed (`--exec`'s comparison, bit-exact unless
a step declares that it reassociates); equivalently, a sequence whose result
--exec shows wrong must have had a step that level 2 did not prove.

The kernel: `A` (modified) and `B` (read) are (N + 2) x (M + 2) matrices,
and statements `A[i + a][x + b] (= or +=) A[i + c][y + d] * 0.5f
+ B[i + e][z + f]` (offsets 0..2; x, y, z are j or k) run in an i-j nest or an
imperfect i-j-k nest (k < M), so the steps meet flow, anti and output
dependences in every direction. A step a
transformation refuses (its structural precondition) is left out; any
other exception fails the test."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from optitrust_py import ir
from optitrust_py.checks import FP_TOLERANCE
from optitrust_py.errors import OtpError
from optitrust_py.execcheck import check_step as exec_step
from optitrust_py.frontend import parse_text
from optitrust_py.level2 import check_step as level2_step
from optitrust_py.printer import stmt_text
from optitrust_py.session import Transformation, inherit_contracts
from optitrust_py.spec import check_contract, parse_spec_text
from optitrust_py.tree import walk
from transformations import loop, parallel

SPEC = """
k(N, M, A, B):
  requires N >= 1, M >= 1
  modifies A ~> Matrix2(N + 2, M + 2)
  reads    B ~> Matrix2(N + 2, M + 2)
"""
SIZES = {"N": 5, "M": 7}  # not multiples of the tile sizes drawn: tails run


offsets = st.integers(0, 2)


def cell(array: str, columns: tuple[str, ...]) -> st.SearchStrategy[str]:
    """`array[i + a][c + b]` flattened, c one of the column indices (j, k: both below M)."""
    return st.builds(lambda a, c, b: f"{array}[(i + {a}) * (M + 2) + ({c} + {b})]",
                     offsets, st.sampled_from(columns), offsets)


def statement(columns: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.builds(lambda lhs, op, a, b: f"{lhs} {op} {a} * 0.5f + {b};", cell("A", columns),
                     st.sampled_from(["=", "+="]), cell("A", columns), cell("B", columns))


def kernel(data: st.DataObject) -> str:
    """An i-j nest, or an i-j-k nest with statements before the k loop too
    (imperfect, like matmul's initialization of C)."""
    lines = ["void k(int N, int M, float *A, const float *B) {", "  for (int i = 0; i < N; i++) {",
             "    for (int j = 0; j < M; j++) {"]
    if data.draw(st.booleans()):
        lines += [f"      {x}" for x in data.draw(st.lists(statement(("j",)), max_size=2))]
        lines += ["      for (int k = 0; k < M; k++) {"]
        lines += [f"        {x}" for x in data.draw(st.lists(statement(("j", "k")), min_size=1, max_size=2))]
        lines += ["      }"]
    else:
        lines += [f"      {x}" for x in data.draw(st.lists(statement(("j",)), min_size=1, max_size=3))]
    return "\n".join(lines + ["    }", "  }", "}", ""])


def loop_targets(program: ir.Program) -> list[str]:
    """A target for each canonical loop of k, in source order (`for j#2`)."""
    seen: dict[str, int] = {}
    out = []
    for _, n in walk(program.function("k")):
        if isinstance(n, ir.For):
            seen[n.index] = seen.get(n.index, 0) + 1
            out.append(f"k > for {n.index}#{seen[n.index]}")
    return out


def fission_points(program: ir.Program) -> list[str]:
    """A point after each statement that is followed by another in a loop body."""
    points = []
    for target in loop_targets(program):
        index, nth = target.split("for ")[1].split("#")
        loops = [n for _, n in walk(program.function("k")) if isinstance(n, ir.For) and n.index == index]
        stmts = loops[int(nth) - 1].body.stmts
        points += [f"{target} > after '{stmt_text(s)}'" for s in stmts[:-1] if not isinstance(s, ir.For)]
    return points


# A move: (transformation, how it picks its target, further arguments drawn).
Move = tuple[Transformation, Callable[[ir.Program], list[str]], st.SearchStrategy[tuple[Any, ...]]]
MOVES: list[Move] = [
    (loop.tile, loop_targets, st.tuples(st.integers(2, 4), st.just(None), st.sampled_from(["min", "guard", "divides"]))),
    (loop.swap, loop_targets, st.just(())),
    (loop.fission, fission_points, st.just(())),
    (loop.fusion, loop_targets, st.just(())),
    (loop.shift, loop_targets, st.sampled_from([-2, -1, 1, 2, 3]).map(lambda b: (b,))),
    (loop.unroll, loop_targets, st.integers(2, 3).map(lambda f: (f,))),
    (parallel.parallel_for, loop_targets, st.just(())),
]


@dataclass
class Trial:
    """One random program and the steps applied to it, with level 2's verdicts."""

    source: str
    steps: list[str] = field(default_factory=list)
    proved: list[bool] = field(default_factory=list)
    inexact: bool = False

    def describe(self) -> str:
        lines = [f"  {'proved' if ok else 'NOT proved'}: {s}" for s, ok in zip(self.steps, self.proved)]
        return self.source + "\n".join(lines)


def apply_moves(data: st.DataObject, trial: Trial, program: ir.Program, contracts: dict[str, Any],
                count: int) -> ir.Program:
    """Draw and apply `count` moves; each applied one is checked at level 2."""
    for _ in range(count):
        fn, targets, extra = data.draw(st.sampled_from(MOVES))
        places = targets(program)
        if not places:
            continue
        target = data.draw(st.sampled_from(places))
        args = data.draw(extra)
        try:
            rewrite = fn.apply(program, target, *args)
        except OtpError:
            event(f"{fn.name} refused")
            continue
        result = level2_step(program, rewrite.program, rewrite.obligations, contracts)
        trial.steps.append(f"{fn.name}({target!r}, {', '.join(map(repr, args))})")
        trial.proved.append(result.ok)
        trial.inexact |= rewrite.fp != "exact"
        contracts = inherit_contracts(contracts, rewrite)
        program = rewrite.program
    return program


def check_soundness(data: st.DataObject) -> None:
    trial = Trial(kernel(data))
    original = parse_text(trial.source, "k.c")
    contracts = parse_spec_text(SPEC, "k.spec")
    check_contract(contracts["k"], original.function("k"))
    final = apply_moves(data, trial, original, contracts, data.draw(st.integers(1, 3)))
    if not trial.steps:
        event("no step applied")
        return
    result = exec_step(original, final, contracts, SIZES, FP_TOLERANCE if trial.inexact else 0.0)
    assert result.status in ("pass", "fail", "unchanged"), (result.status, result.note, trial.describe())
    all_proved = all(trial.proved)
    event(f"level 2 {'proved all' if all_proved else 'did not prove all'}, exec {result.status}")
    if all_proved:
        assert result.ok, f"level 2 proved every step but --exec finds the result wrong:\n{trial.describe()}\n" + \
            "\n".join(f.to_json().__repr__() for f in result.functions)


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_level2_proved_sequences_pass_exec(data: st.DataObject) -> None:
    check_soundness(data)


@pytest.mark.fuzz
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_level2_soundness_long_random_run(data: st.DataObject) -> None:
    check_soundness(data)
