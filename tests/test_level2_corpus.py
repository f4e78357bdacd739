"""The level-2 corpus of invalid steps (issue 4, tests/level2_corpus.py).

For every case: level 1 accepts the step (so level 2 is what catches it),
level 2 refutes the expected obligation with a reason that names the
conflict, and, where the case gives sizes, `--exec` shows the step computes
something else on those inputs (so the bug is real). Each case's program and
step are built once and shared by the three tests.
"""
from __future__ import annotations

import functools

import pytest

from optitrust_py import ir
from optitrust_py.checks import FP_TOLERANCE
from optitrust_py.contract import Contract
from optitrust_py.execcheck import ExecReport, check_steps
from optitrust_py.level1 import check_program
from optitrust_py.level2 import check_step
from optitrust_py.session import Rewrite
from transformations import loop, matrix, parallel
from level2_corpus import CASES, OMP_THREADS, Case, load

BY_ID = {c.id: c for c in CASES}

ISSUE_STEPS = {step.name for step in (loop.swap, loop.fission, loop.fusion, parallel.parallel_for,
                                       matrix.reorder_dims, loop.tile, matrix.tile_dim, loop.move_out, loop.split,
                                       matrix.local_buffer)}
"""The transformations of the steps the issue names: swap, fission, fusion, parallel loops (reductions, prefix
sums, KV caches), reorder_dims, tiling, hoisting, wrong shifts and split points."""

RACE_RUNS = 3
"""A race may happen not to bite on one run; it must on one of these."""


@functools.lru_cache(maxsize=None)
def built(case_id: str) -> tuple[ir.Program, dict[str, Contract], Rewrite]:
    """The program before the invalid step, the contracts, and the step's rewrite."""
    case = BY_ID[case_id]
    before, contracts = load(case)
    return before, contracts, case.step.apply(before)


def tolerance(rewrite: Rewrite) -> float:
    """What the exec check of a step allows (as checks.run_exec_checks): exact, or
    rounding for a reassociating step, or the declared error of a lossy one."""
    lossy = rewrite.tolerance if rewrite.fp == "lossy" else 0.0
    return max(lossy, FP_TOLERANCE if rewrite.fp != "exact" else 0.0)


def test_the_corpus_covers_the_issue() -> None:
    assert len(CASES) >= 45 and len(BY_ID) == len(CASES)
    assert ISSUE_STEPS <= {c.step.fn.name for c in CASES}
    assert {c.source for c in CASES} == {"matmul.c", "matvec.c", "softmax.c", "rmsnorm.c", "attention.c",
                                         "gqa_decode.c", "moe.c", "transformer.c"}
    for c in CASES:
        assert (c.sizes is None) == bool(c.unexecuted), f"{c.id}: sizes for --exec, or why there are none"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_level1_accepts(case: Case) -> None:
    _, contracts, rewrite = built(case.id)
    assert case.kind in [o.kind for o in rewrite.obligations], f"{case.step} declares no {case.kind} obligation"
    result = check_program(rewrite.program, contracts)
    assert result.ok, result.problems


@pytest.mark.parametrize("case", CASES, ids=str)
def test_level2_refutes(case: Case) -> None:
    before, contracts, rewrite = built(case.id)
    result = check_step(before, rewrite.program, rewrite.obligations, contracts)
    assert not result.ok
    reasons = [v.reason for v in result.verdicts if v.kind == case.kind and v.status == "refuted"]
    assert any(all(w in r for w in case.words) for r in reasons), \
        f"no refuted {case.kind} naming {case.words}:\n" + "\n".join(result.problems)
    if case.oob is not None:
        assert any(case.oob in m and "out of bounds" in m for m in result.resources), \
            f"'{case.oob}' is not reported out of bounds:\n" + "\n".join(result.resources)


def exec_report(case: Case) -> ExecReport:
    before, contracts, rewrite = built(case.id)
    assert case.sizes is not None
    return check_steps(before, [rewrite.program], contracts, dict(case.sizes), [tolerance(rewrite)])


@pytest.mark.parametrize("case", [c for c in CASES if c.sizes is not None], ids=str)
def test_exec_shows_the_bug(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", str(OMP_THREADS))
    runs = RACE_RUNS if case.kind == "parallel" else 1
    for _ in range(runs):
        report = exec_report(case)
        if report.failed:
            break
    assert report.failed, f"{case.bug}, yet --exec found no difference:\n{report.summary()}"
