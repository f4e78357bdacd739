"""Level 2 on the effect obligations, on the kernels of c_sources/: valid
steps are proved (and their output fits the contract), invalid ones are
refuted with the two accesses in conflict and a counterexample."""
from __future__ import annotations

from typing import Any

import pytest

from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.level2 import check_step
from optitrust_py.resources import check_resources
from optitrust_py.session import inherit_contracts
from optitrust_py.spec import load_contracts
from transformations import loop, matrix, parallel, variable, vector
from helpers import refuted
from conftest import ROOT


def load(name: str) -> tuple[Any, dict[str, Any]]:
    p = parse_file(ROOT / "c_sources" / f"{name}.c")
    return p, load_contracts(p, str(ROOT / "specs" / f"{name}.spec"))


def steps(name: str, *calls: tuple[Any, tuple[Any, ...], dict[str, Any]]) -> list[str]:
    """Applies the calls in turn; every step's obligations must be proved and
    its output must fit the contracts. Returns the kinds proved."""
    p, contracts = load(name)
    assert check_resources(p, contracts) == ()
    kinds = []
    for fn, args, kwargs in calls:
        r = fn.apply(p, *args, **kwargs)
        contracts = inherit_contracts(contracts, r)
        result = check_step(p, r.program, r.obligations, contracts)
        assert result.ok, result.problems
        kinds.extend(v.kind for v in result.verdicts)
        p = r.program
    return kinds


def test_matmul_fission_swap_parallel_and_buffer_are_proved() -> None:
    kinds = steps("matmul",
                  (loop.fission, ("matmul > for j > after 'C[i * N + j] = 0.0f'",), {}),
                  (loop.fission, ("matmul > for i > after for j#1",), {}),
                  (loop.fusion, ("matmul > for i#1",), {}),
                  (loop.swap, ("matmul > for j#2",), {}),
                  (parallel.parallel_for, ("matmul > for i",), {}),
                  (matrix.local_buffer, ("matmul > for i > for k", "C", "row", ["M", "N"]), {}))
    assert {"fission", "fusion", "swap_loops", "parallel", "no_alias"} <= set(kinds)


def test_softmax_and_rmsnorm_vectorized_lanes_are_proved() -> None:
    assert "lanes" in steps("softmax", (vector.vectorize, ("softmax > for i",), {"isa": "avx512"}))
    assert "lanes" in steps("rmsnorm", (vector.vectorize, ("rmsnorm > for i",), {"isa": "avx2"}))


def test_bind_and_local_accumulator_are_proved() -> None:
    assert steps("attention", (variable.bind, ("attention > expr 'sqrtf(D)'", "scale"), {})) == ["pure"]
    assert steps("matvec", (variable.local_accumulator, ("matvec > for j", "y[i]"), {})) == ["unaliased"]


def test_gqa_cache_append_runs_in_parallel_over_kv_heads() -> None:
    """Writing the cache at position pos and reading it at 0..pos: the heads
    g are independent, so the append loop is parallel."""
    assert steps("gqa_decode", (parallel.parallel_for, ("gqa_decode > for g",), {})) == ["parallel"]


@pytest.mark.parametrize("name, call, words", [
    ("softmax", (loop.fusion, ("softmax > for j#2",), {}),
     ["fusion: 'sum' (line 18) updates sum, and 'sum' (line 22) reads sum", "j=1, j'=0"]),
    ("matvec", (parallel.parallel_for, ("matvec > for j",), {}),
     ["'y[i]' (line 7) updates y in both runs", "iterations j != j'", "y[0]"]),
    ("attention", (loop.swap, ("attention > for h",), {}),
     ["swap_loops: 'scores[j]' (line 18) writes scores in both runs"]),
])
def test_effect_refutations_name_the_conflict(name: str, call: Any, words: list[str]) -> None:
    p, contracts = load(name)
    fn, args, kwargs = call
    why = refuted(p, fn.apply(p, *args, **kwargs), contracts)
    for w in words:
        assert w in why


def test_lanes_refuses_a_carried_dependence() -> None:
    p = parse_text("void prefix(int n, float *x) {\n  for (int j = 1; j < n; j++) {\n"
                   "    x[j] = x[j] + x[j - 1];\n  }\n}\n", "prefix.c")
    why = refuted(p, vector.vectorize.apply(p, "prefix > for j", isa="avx2"))
    assert "lanes: 'x[j]' (line 3) writes x, and 'x[j - 1]' (line 3) reads x" in why
    assert "lanes j < j' of one vector of 8" in why
