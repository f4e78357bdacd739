"""Level 3 against two corpora (issue 6).

The safe-but-wrong steps of tests/level3_corpus.py: level 2 proves every
obligation and finds no resource problem, the real step (before the edit)
passes level 3, and level 3 refutes the edited step with a counterexample
naming a cell of the expected output array. The invalid steps of
tests/level2_corpus.py: each is rejected at level 3 as a whole (level 3
includes level 2), and what level 3 alone says is recorded.
"""
from __future__ import annotations

import functools
import re

import pytest

from optitrust_py import ir
from optitrust_py.contract import Contract
from optitrust_py.level2 import check_step as check_level2
from optitrust_py.level3 import Level3Result, Runs, check_step as check_level3
from optitrust_py.session import Rewrite
import level2_corpus
from level3_corpus import CASES, Wrong, build, mutated

BY_ID = {c.id: c for c in CASES}
RUNS = Runs()
"""Shared by the cases: a function's run before a step is the same for several cases."""

ISSUE_BUGS = ("tile-tail", "shift-", "online-softmax-rescale", "fusion-", "swap-operands", "quantize-scale")
"""The kinds of bug the issue names: an off-by-one tile tail, a loop shift that reads the neighbour, a wrong
rescaling in online softmax, a dropped term when fusing, a swapped operand in a non-commutative update, a wrong
scale index in quantization."""


@functools.lru_cache(maxsize=None)
def built(case_id: str) -> tuple[ir.Program, dict[str, Contract], Rewrite, ir.Program]:
    return build(BY_ID[case_id])


def level3(case: Wrong, after: ir.Program) -> Level3Result:
    before, contracts, rewrite, _ = built(case.id)
    return check_level3(before, after, contracts, [case.sizes], rewrite.fp, rewrite.tolerance, RUNS)


def test_the_corpus_covers_the_issue() -> None:
    assert len(CASES) >= 20 and len(BY_ID) == len(CASES)
    for prefix in ISSUE_BUGS:
        assert any(c.id.startswith(prefix) for c in CASES), f"no case of the kind {prefix!r}"
    assert {"matmul.c", "softmax.c", "rmsnorm.c", "attention.c", "matvec.c", "gqa_decode.c", "moe.c",
            "transformer.c"} <= {c.source for c in CASES}


def test_mutated_fails_loudly_on_an_ambiguous_or_missing_edit() -> None:
    before, _, rewrite, _ = built("tile-tail-matmul-k")
    with pytest.raises(AssertionError, match="occurs 0 times"):
        mutated(rewrite.program, "no such text", "x")
    with pytest.raises(AssertionError, match="occurs 2 times"):
        mutated(rewrite.program, "bk + 4", "bk + 3")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_level2_proves_the_wrong_step(case: Wrong) -> None:
    before, contracts, rewrite, after = built(case.id)
    result = check_level2(before, after, rewrite.obligations, contracts)
    assert result.ok, "\n".join(result.problems)
    assert all(v.status == "proved" for v in result.verdicts) and not result.resources


@pytest.mark.parametrize("case", CASES, ids=str)
def test_level3_accepts_the_real_step(case: Wrong) -> None:
    _, _, rewrite, _ = built(case.id)
    result = level3(case, rewrite.program)
    assert result.ok, "\n".join(result.problems)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_level3_refutes_the_wrong_step(case: Wrong) -> None:
    _, _, _, after = built(case.id)
    result = level3(case, after)
    assert not result.ok
    refuted = [f.detail for f in result.functions if f.status == "refuted"]
    cell = re.compile(rf"output {re.escape(case.output)}\[\d+\] differs: \S+ before the step, \S+ after")
    assert any(cell.search(d) for d in refuted), f"no refutation naming a cell of {case.output}:\n" + \
        "\n".join(f"{f.function}: {f.status}: {f.detail}" for f in result.functions)
    assert not [f for f in result.functions if f.status in ("unknown", "not checkable")], result.problems


# ----------------------------------------------------------------- the level-2 corpus at level 3

L2_BY_ID = {c.id: c for c in level2_corpus.CASES}
L2_SIZES = {"matmul.c": {"M": 2, "N": 3, "K": 3}, "matvec.c": {"N": 3, "D": 2}, "softmax.c": {"R": 2, "C": 3},
            "rmsnorm.c": {"R": 2, "C": 3}, "attention.c": {"H": 2, "S": 3, "D": 2},
            "gqa_decode.c": {"H": 2, "KVH": 1, "D": 2, "SMAX": 4, "pos": 2},
            "moe.c": {"T": 2, "dim": 2, "hidden": 2, "E": 3, "K": 2},
            "transformer.c": {"n": 3, "d": 2, "T": 1, "L": 2, "dim": 2, "hidden": 1, "H": 1, "KVH": 1, "SMAX": 2,
                              "pos": 1}}
"""Small sizes for the level-3 runs of the level-2 cases, by source."""


SLOW_ALONE = {"move-out-transformer-rope": "level 3 alone refutes transformer_token at once, but the normal forms "
                                         "of transformer_prefill's cells grow exponentially (canon._product): "
                                         "over 5 minutes; rejected here by level 2"}
"""Cases whose level-3 run is too slow for the test (a known level-3 limit, reported): only level 2 runs."""


def level3_alone(case: level2_corpus.Case) -> tuple[ir.Program, dict[str, Contract], Rewrite, Level3Result]:
    """The invalid step, and what level 3 alone says of it."""
    before, contracts = level2_corpus.load(case)
    rewrite = case.step.apply(before)
    result = check_level3(before, rewrite.program, contracts, [L2_SIZES[case.source]], rewrite.fp,
                          rewrite.tolerance, RUNS)
    return before, contracts, rewrite, result


@pytest.mark.parametrize("case", level2_corpus.CASES, ids=str)
def test_level3_rejects_the_level2_corpus(case: level2_corpus.Case) -> None:
    """Rejected at level 3 as a whole: by level 3's own comparison, else by the
    level 2 it includes (a race, which a sequential run cannot see)."""
    if case.id in SLOW_ALONE:
        before, contracts = level2_corpus.load(case)
        rewrite = case.step.apply(before)
        assert not check_level2(before, rewrite.program, rewrite.obligations, contracts).ok
        return
    before, contracts, rewrite, result = level3_alone(case)
    if result.ok:
        assert not check_level2(before, rewrite.program, rewrite.obligations, contracts).ok, \
            f"{case.id} is accepted at level 3: {result.label}"
