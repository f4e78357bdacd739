"""Mixture of experts: the value-range invariants that let level 2 check
moe.c (an expert number read from memory indexes the weights), the
regrouping of the per-token work per expert, and its script."""
from __future__ import annotations

from typing import Any, Callable

import pytest
from click.testing import CliRunner

from optitrust_py.cli import cli
from optitrust_py.dependence import value_ranges
from optitrust_py.errors import TargetError
from optitrust_py.footprint import function_footprint
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.level2 import check_step
from optitrust_py.printer import expr
from optitrust_py.resources import check_resources
from optitrust_py.session import Rewrite, inherit_contracts
from optitrust_py.spec import load_contracts, parse_spec_text
from transformations import llm, loop, moe
from conftest import ROOT
from helpers import refusal


def load_moe() -> tuple[Any, dict[str, Any]]:
    p = parse_file(ROOT / "c_sources" / "moe.c")
    return p, load_contracts(p, str(ROOT / "specs" / "moe.spec"))


def moe_variant(old: str, new: str) -> tuple[Any, dict[str, Any]]:
    """moe.c with one piece of text replaced, under moe.spec."""
    text = (ROOT / "c_sources" / "moe.c").read_text()
    assert old in text
    p = parse_text(text.replace(old, new), "moe_variant.c")
    return p, load_contracts(p, str(ROOT / "specs" / "moe.spec"))


def ranges_text(p: Any, contracts: dict[str, Any]) -> dict[str, str]:
    ranges = value_ranges(function_footprint(p, "moe", contracts))
    return {cell: f"[{expr(lo)}, {expr(hi)})" for cell, (lo, hi) in ranges.items()}


def test_moe_fits_its_contract_with_the_expert_numbers_in_range() -> None:
    p, contracts = load_moe()
    assert ranges_text(p, contracts) == {"best": "[0, E)", "sel": "[0, E)"}
    assert check_resources(p, contracts) == ()


def test_a_store_out_of_range_breaks_the_invariant() -> None:
    p, contracts = moe_variant("sel[s] = best;", "sel[s] = best + 1;")
    assert ranges_text(p, contracts) == {"best": "[0, E)"}
    problems = check_resources(p, contracts)
    assert len(problems) == 3 and all("sel[s]" in x and "may be out of bounds" in x for x in problems)
    p, contracts = moe_variant("best = e;", "best = e + 1;")
    assert ranges_text(p, contracts) == {}
    assert any("'used[best]' may be out of bounds" in x for x in check_resources(p, contracts))


def test_a_guard_says_nothing_of_a_value_the_branch_changed_first() -> None:
    twice = "if (best < E - 1) {\n            best = best + 1;\n            best = best + 1;\n          }"
    p, contracts = moe_variant("best = e;", twice)
    assert "best" not in ranges_text(p, contracts)
    assert any("'used[best]' may be out of bounds" in x for x in check_resources(p, contracts))


def test_an_update_or_an_escape_gives_no_range() -> None:
    p, contracts = moe_variant("used[best] = 1;", "used[best] = 1;\n      sel[s]++;")
    assert "sel" not in ranges_text(p, contracts)
    p, contracts = moe_variant("free(sel);", "sel[0] = *(sel + 1);\n  free(sel);")
    assert "sel" not in ranges_text(p, contracts)
    p, contracts = moe_variant("int best = 0;", "int best = 0;\n      int *alias = &best;\n      *alias = E;")
    assert "best" not in ranges_text(p, contracts)


# ----------------------------------------------------------------- dispatch and sink_guard

Call = tuple[Callable[..., Rewrite], tuple[Any, ...]]

A_ROUTE_ROW_PER_TOKEN: list[Call] = [
    (llm.expand_buffer.apply, ("moe > for t", "sel", "K")),
    (llm.expand_buffer.apply, ("moe > for t", "wsel", "K")),
]
ROUTE_ALL_TOKENS_FIRST: list[Call] = [(loop.fission.apply, ("moe > for t > after for i#1",))]
EXPAND_THE_HIDDEN_BUFFERS: list[Call] = [
    (loop.fission.apply, ("moe > for t > for s#5 > for i#1 > after 'hb2[i] = 0.0f'",)),
    (llm.expand_buffer.apply, ("moe > for t > for s#5", "hb", "hidden")),
    (llm.expand_buffer.apply, ("moe > for t > for s#5", "hb2", "hidden")),
    (llm.batch_buffer.apply, ("moe > for t", "hb")),
    (llm.batch_buffer.apply, ("moe > for t", "hb2")),
]


def prepared(p: Any, contracts: dict[str, Any], calls: list[Call]) -> tuple[Any, dict[str, Any]]:
    """`p` after the calls, each proved at level 2."""
    for fn, args in calls:
        r = fn(p, *args)
        contracts = inherit_contracts(contracts, r)
        result = check_step(p, r.program, r.obligations, contracts)
        assert result.ok, result.problems
        p = r.program
    return p, contracts


def verdicts(before: Any, r: Rewrite, contracts: dict[str, Any]) -> dict[str, tuple[str, str]]:
    assert check_resources(r.program, contracts) == ()
    result = check_step(before, r.program, r.obligations, contracts)
    return {v.kind: (v.status, v.reason) for v in result.verdicts}


def moe_args(ck: Any, T: int = 5, dim: int = 6, hidden: int = 7, E: int = 4, K: int = 2) -> list[Any]:
    return [T, dim, hidden, E, K, ck.floats(T * dim), ck.floats(E * dim), ck.floats(E * hidden * dim),
            ck.floats(E * dim * hidden), ck.floats(E * hidden * dim), ck.floats(T * dim)]


@pytest.fixture(scope="module")
def ready() -> tuple[Any, dict[str, Any]]:
    """moe.c with every token routed first and a hidden row per (token, slot)."""
    return prepared(*load_moe(), A_ROUTE_ROW_PER_TOKEN + EXPAND_THE_HIDDEN_BUFFERS + ROUTE_ALL_TOKENS_FIRST)


def test_dispatch_runs_the_items_expert_by_expert(ck: Any, ready: tuple[Any, dict[str, Any]]) -> None:
    p, contracts = ready
    r = moe.dispatch.apply(p, "moe > for t#2")
    assert ck.contains(ck.function_text(r.program, "moe"), """
        for (int e = 0; e < E; e++) {
          for (int t = 0; t < T; t++) {
            for (int s = 0; s < K; s++) {
              if (sel[t * K + s] == e) {
                for (int i = 0; i < hidden; i++) {""")
    assert r.fp == "reassoc" and [o.kind for o in r.obligations] == ["parallel", "pure", "in_range"]
    assert r.obligations[0].names == ("out",)
    found = verdicts(p, r, contracts)
    assert found["parallel"] == found["pure"] == found["in_range"] == ("proved", "")
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    for sizes in ({}, {"E": 1, "K": 1}, {"E": 6, "K": 6, "T": 3}):
        ck.close_outputs(load_moe()[0], r.program, "moe", moe_args(ck, **sizes))


def test_dispatch_of_items_sharing_a_scratch_row_is_refuted(ck: Any) -> None:
    p, contracts = prepared(*load_moe(), A_ROUTE_ROW_PER_TOKEN + ROUTE_ALL_TOKENS_FIRST)
    r = moe.dispatch.apply(p, "moe > for t#2")
    status, reason = verdicts(p, r, contracts)["parallel"]
    assert status == "refuted" and "'hb[i]'" in reason


def test_regroup_puts_each_product_row_loop_outermost(ck: Any, ready: tuple[Any, dict[str, Any]]) -> None:
    p, _ = ready
    r = moe.regroup.apply(p, "moe > for t#2")
    text = ck.function_text(r.program, "moe")
    assert ck.contains(text, """
        for (int e = 0; e < E; e++) {
          for (int t = 0; t < T; t++) {
            for (int s = 0; s < K; s++) {
              for (int i = 0; i < hidden; i++) {
                if (sel[t * K + s] == e) {
                  hb_b[t * (K * hidden) + (s * hidden + i)] = 0.0f;""")
    assert ck.contains(text, """
          for (int i = 0; i < dim; i++) {
            for (int t = 0; t < T; t++) {
              for (int s = 0; s < K; s++) {
                if (sel[t * K + s] == e) {
                  float acc = 0.0f;""")
    assert r.fp == "reassoc"
    assert sorted({o.kind for o in r.obligations}) == ["fission", "in_range", "parallel", "pure", "swap_loops"]
    ck.compiles(r.program)
    ck.close_outputs(load_moe()[0], r.program, "moe", moe_args(ck, T=9, E=5, K=3))


REGROUP_SHARED_ROWS = """
from optitrust_py.script import load
from transformations import llm, loop, moe

load("{root}/c_sources/moe.c", sizes={{"T": 6, "dim": 5, "hidden": 7, "E": 3, "K": 2}})
llm.expand_buffer("moe > for t", "sel", "K")
llm.expand_buffer("moe > for t", "wsel", "K")
loop.fission("moe > for t > after for i#1")
moe.regroup("moe > for t#2")
"""


def test_regroup_of_items_sharing_the_hidden_rows_is_refuted_and_wrong(tmp_path: Any) -> None:
    script = tmp_path / "moe_shared.py"
    script.write_text(REGROUP_SHARED_ROWS.format(root=ROOT))
    r = CliRunner().invoke(cli, ["check", str(script), "--level", "2", "--exec", "--no-color"])
    assert r.exit_code == 1
    assert "✗ parallel refuted" in r.output and "'hb[i]'" in r.output
    assert "differ" in r.output


def test_dispatch_of_items_that_overwrite_the_output_is_refuted() -> None:
    p, contracts = moe_variant("out[t * dim + i] += wsel[s] * acc;", "out[t * dim + i] = wsel[s] * acc;")
    p, contracts = prepared(p, contracts, A_ROUTE_ROW_PER_TOKEN + EXPAND_THE_HIDDEN_BUFFERS + ROUTE_ALL_TOKENS_FIRST)
    r = moe.dispatch.apply(p, "moe > for t#2")
    assert r.obligations[0].names == ()
    status, reason = verdicts(p, r, contracts)["parallel"]
    assert status == "refuted" and "out" in reason


def test_dispatch_of_items_that_change_their_expert_is_refuted(ck: Any) -> None:
    p, contracts = moe_variant("out[t * dim + i] += wsel[s] * acc;\n      }",
                               "out[t * dim + i] += wsel[s] * acc;\n      }\n      sel[s] = E - 1;")
    before = p
    p, contracts = prepared(p, contracts, A_ROUTE_ROW_PER_TOKEN + EXPAND_THE_HIDDEN_BUFFERS + ROUTE_ALL_TOKENS_FIRST)
    r = moe.dispatch.apply(p, "moe > for t#2")
    found = verdicts(p, r, contracts)
    assert found["parallel"] == ("proved", "")
    assert found["pure"][0] == "refuted" and "sel[" in found["pure"][1]
    with pytest.raises(AssertionError):  # an item of an expert below E - 1 runs again with the last expert
        ck.close_outputs(before, r.program, "moe", moe_args(ck, E=3))


def test_dispatch_refusals(ready: tuple[Any, dict[str, Any]]) -> None:
    p, _ = ready
    assert "does not start with the integer declaration 'int e = ...;'" in refusal(
        moe.dispatch.apply, p, "moe > for t#1")
    assert "does not start with the integer declaration 'int x = ...;'" in refusal(
        moe.dispatch.apply, p, "moe > for t#2", expert="x")
    assert "'e' is used by the bounds of the nest" in refusal(moe.dispatch.apply, p, "moe > for t#2", experts="e")
    assert "cannot read the expert count 'E +'" in refusal(moe.dispatch.apply, p, "moe > for t#2", experts="E +")


def test_sink_guard_pushes_the_test_into_each_loop(ck: Any, ready: tuple[Any, dict[str, Any]]) -> None:
    p, contracts = ready
    d = moe.dispatch.apply(p, "moe > for t#2").program
    r = moe.sink_guard.apply(d, "moe > 'if (sel[t * K + s] == e)'")
    assert ck.contains(ck.function_text(r.program, "moe"), """
              for (int i = 0; i < hidden; i++) {
                if (sel[t * K + s] == e) {
                  float val = hb_b[t * (K * hidden) + (s * hidden + i)];""")
    assert verdicts(d, r, contracts) == {"pure": ("proved", "")}
    ck.check(d, r.program, "moe", moe_args(ck))


def test_sink_guard_of_a_branch_that_changes_its_condition_is_refuted(ck: Any) -> None:
    p, contracts = load_moe()
    r = moe.sink_guard.apply(p, "moe > 'if (wsel[s] > max_val)'")
    status, reason = verdicts(p, r, contracts)["pure"]
    assert status == "refuted" and "max_val" in reason


def test_sink_guard_refusals(ready: tuple[Any, dict[str, Any]]) -> None:
    p, _ = ready
    with pytest.raises(TargetError, match="matches nothing"):
        moe.sink_guard.apply(p, "moe > 'if (sel[t * K + s] == e)'")
    two = "void f(int n, float *y) {\n  if (n > 0) {\n    y[0] = 1;\n  } else {\n    y[0] = 2;\n  }\n}\n"
    assert "has an else branch" in refusal(moe.sink_guard.apply, parse_text(two), "f > 'if (n > 0)'")
    local = "void f(int n, float *y) {\n  if (n > 0) {\n    float v = 1;\n    y[0] = v;\n  }\n}\n"
    assert "declares 'v' at its top level" in refusal(moe.sink_guard.apply, parse_text(local), "f > 'if (n > 0)'")
    index = "void f(int n, float *y) {\n  if (n > 0) {\n    for (int n = 0; n < 4; n++) {\n      y[n] = 0;\n    }\n  }\n}\n"
    assert "reads 'n', the index of for n" in refusal(moe.sink_guard.apply, parse_text(index), "f > 'if (n > 0)'")


# ----------------------------------------------------------------- shapes of allocated buffers

ROWS_C = """
#include <stdlib.h>

void rows(int R, int C, float *y) {
  float *b = malloc(R * C * sizeof(float));
  for (int i = 0; i < R; i++) {
    for (int j = 0; j < C; j++) {
      b[i * C + j] = 1.0f;
      y[i * C + j] = b[i * C + STEP];
    }
  }
  free(b);
}
"""
ROWS_SPEC = """
rows(R, C, y):
  requires R >= 1, C >= 1
  writes y ~> Matrix2(R, C)
"""


def rows(step: str) -> tuple[Any, dict[str, Any]]:
    p = parse_text(ROWS_C.replace("STEP", step), "rows.c")
    return p, {"rows": parse_spec_text(ROWS_SPEC)["rows"]}


def test_a_buffer_allocated_as_a_product_is_split_along_its_factors() -> None:
    p, contracts = rows("j")
    b = [a for a in function_footprint(p, "rows", contracts).accesses if a.cell == "b" and a.index]
    assert {tuple(expr(i) for i in a.index) for a in b} == {("i", "j")}
    assert check_resources(p, contracts) == ()
    p, contracts = rows("(j + 1)")
    assert any("'b[i * C + (j + 1)]' may be out of bounds of 'b' (R x C)" in x for x in check_resources(p, contracts))
