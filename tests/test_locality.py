"""Level 3 at the statement a step changed (optitrust_py/locality.py): the
statement found, its runs, the comparison from an unknown state, and the
fallback to whole runs whenever that comparison does not show the step
equal (so a wrong step is still refuted with an output cell)."""
from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

import pytest

from optitrust_py import ir, locality
from optitrust_py.contract import Contract
from optitrust_py.frontend import parse_text
from optitrust_py.level3 import Runs, _compare_locally, check_step
from optitrust_py.names import reached
from optitrust_py.runner import new_session, run_script
from optitrust_py.session import Step
from optitrust_py.spec import parse_spec_text

ROOT = Path(__file__).resolve().parents[1]

SPEC = """
    f(n, x, y):
      requires n >= 1
      reads    x ~> Matrix1(n)
      writes   y ~> Matrix1(n)
"""
BEFORE = """
    void f(int n, const float *x, float *y) {
      int k = 0;
      for (int i = 0; i < n; i++) {
        float s = 0.0f;
        for (int j = 0; j < n; j++) {
          s += x[j] * x[i];
        }
        y[i] = (s + x[i]) + x[0];
        k = k + 1;
      }
    }
"""


def program(code: str) -> ir.Program:
    return parse_text(textwrap.dedent(code), "<snippet>")


def contract() -> Contract:
    return parse_spec_text(textwrap.dedent(SPEC))["f"]


def focus_of(after: str) -> locality.Focus:
    old, new = program(BEFORE), program(after)
    where = locality.focus(old, new, reached(old, "f"), reached(new, "f"))
    assert where is not None
    return where


def local(after: str, sizes: dict[str, int]) -> list[tuple[str, str]]:
    old, new = program(BEFORE), program(after)
    where = focus_of(after)
    got = _compare_locally(old, new, "f", contract(), sizes, where, reached(old, "f"), Runs(), weigh=False)
    return [(c.status, c.detail) for c in got]


def test_the_focus_is_the_smallest_statement_holding_every_change() -> None:
    where = focus_of(BEFORE.replace("x[j] * x[i]", "x[i] * x[j]"))
    assert isinstance(where.before, ir.ExprStmt) and where.function == "f"
    assert [step[0] for step in where.path] == ["stmts", "body", "stmts", "body", "stmts"]
    two = focus_of(BEFORE.replace("x[j] * x[i]", "x[i] * x[j]").replace("(s + x[i]) + x[0]", "s + (x[i] + x[0])"))
    assert isinstance(two.before, ir.Block), "two statements of the i loop changed: its body"


def test_a_change_outside_every_loop_has_no_focus() -> None:
    old, new = program(BEFORE), program(BEFORE.replace("int k = 0;", "int k = 1;"))
    assert locality.focus(old, new, reached(old, "f"), reached(new, "f")) is None


def test_a_commuted_product_is_equal_at_each_run() -> None:
    got = local(BEFORE.replace("x[j] * x[i]", "x[i] * x[j]"), {"n": 3})
    assert got == [("=", "the statement the step changed (line 7: `s += x[j] * x[i];`) compared alone at its 9 runs, "
                        "4 of them as translates of others (`translate`)")], "x[j] - x[i] takes 5 values"


def test_a_reassociated_sum_is_equal_over_the_reals_only() -> None:
    [(status, detail)] = local(BEFORE.replace("(s + x[i]) + x[0]", "s + (x[i] + x[0])"), {"n": 4})
    assert status == "≈fp" and "compared alone at its 4 runs" in detail


def test_a_statement_that_never_runs_is_equal_at_no_cost() -> None:
    code = BEFORE.replace("for (int j = 0; j < n; j++) {", "for (int j = 0; j < n; j++) if (n == 3) {")
    old, new = program(code), program(code.replace("x[j] * x[i]", "x[j] * x[j]"))
    where = locality.focus(old, new, reached(old, "f"), reached(new, "f"))
    assert where is not None
    got = _compare_locally(old, new, "f", contract(), {"n": 2}, where, reached(old, "f"), Runs(), weigh=False)
    assert [(c.status, c.detail[-13:]) for c in got] == [("=", "at its 0 runs")]


def test_a_wrong_statement_is_not_local_and_whole_runs_refute_it() -> None:
    after = BEFORE.replace("(s + x[i]) + x[0]", "(s + x[i]) + x[1]")
    with pytest.raises(locality.NotLocal):
        local(after, {"n": 3})
    result = check_step(program(BEFORE), program(after), {"f": contract()}, [{"n": 3}], "exact", 0.0, Runs())
    assert result.label == "refuted" and "output y[" in result.problems[0]


def test_changing_an_integer_of_the_scope_is_not_local() -> None:
    after = BEFORE.replace("k = k + 1;", "k = k + 2;")
    with pytest.raises(locality.NotLocal, match="integer or a pointer of its scope"):
        local(after, {"n": 3})
    result = check_step(program(BEFORE), program(after), {"f": contract()}, [{"n": 3}], "exact", 0.0, Runs())
    assert result.label == "=", "k is not an output: whole runs show the step equal"


def test_a_skipped_statement_that_sets_a_loop_bound_runs() -> None:
    code = BEFORE.replace("int k = 0;", "int k = 0; int m = 1;").replace("k = k + 1;", "k = k + 1; m = m + 1;") \
        .replace("j < n", "j < m")
    old, new = program(code), program(code.replace("x[j] * x[i]", "x[i] * x[j]"))
    where = locality.focus(old, new, reached(old, "f"), reached(new, "f"))
    assert where is not None
    got = _compare_locally(old, new, "f", contract(), {"n": 3}, where, reached(old, "f"), Runs(), weigh=False)
    assert "at its 6 runs" in got[0].detail, "m is 1, 2, 3 in the three rows: 1 + 2 + 3 runs"


def test_a_step_that_only_adds_pragmas_is_equal_without_a_run() -> None:
    after = BEFORE.replace("  for (int i = 0; i < n; i++) {", "  #pragma omp parallel for\n  for (int i = 0; i < n; i++) {")
    old, new = program(BEFORE), program(after)
    assert old != new
    result = check_step(old, new, {"f": contract()}, [{"n": 3}], "exact", 0.0, Runs())
    assert result.label == "=" and "only pragmas changed" in result.functions[0].detail


def test_level_3_of_many_steps_runs_in_two_processes_and_keeps_each_result_with_its_step() -> None:
    """While this process is busy (level 2, here 1 s), the other takes the
    steps from the last one down; then this one from the first one up (on
    one core, this one takes them all)."""
    from optitrust_py.checks import _in_two

    steps = list(range(12))
    order: list[int] = []

    def check(s: int) -> tuple[int, int, float]:
        order.append(s)
        return s, os.getpid(), time.monotonic()
    got = _in_two(steps, check, lambda: time.sleep(1.0))  # type: ignore[arg-type]
    assert [got[id(s)][0] for s in steps] == steps
    mine = [s for s in steps if got[id(s)][1] == os.getpid()]
    assert order == mine, "this process went from the front"
    if (os.cpu_count() or 1) < 2:
        assert mine == steps
        return
    assert len(mine) <= 2, f"the other process took only {12 - len(mine)} of 12 steps that cost nothing in 1 s"
    theirs = [s for _, s in sorted((got[id(s)][2], s) for s in steps if s not in mine)]
    assert theirs == sorted(theirs, reverse=True), "the other process went from the back"


def test_level_2_of_a_script_keeps_each_step_s_result_with_its_step() -> None:
    """run_level2 checks matmul.py's 16 steps in two processes where there
    are two cores: each step's verdicts are its own obligations' (by claim,
    in order; a composite's, its sub-steps'), whichever process proved
    them."""
    from optitrust_py.checks import run_level2

    def claims(step: Step) -> list[str]:
        return [c for s in step.substeps for c in claims(s)] if step.substeps else [o.claim for o in step.obligations]
    session = new_session(ROOT / "scripts" / "matmul.py")
    assert run_script(session, ROOT / "scripts" / "matmul.py") is None
    assert len(session.steps) >= 8 and run_level2(session).ok
    pairs = [([v.claim for v in s.checks["level2"].verdicts], claims(s)) for s in session.steps]
    assert all(got == want for got, want in pairs) and sum(len(want) for _, want in pairs) >= 8


def test_a_failure_in_the_second_process_is_raised_with_its_traceback() -> None:
    from optitrust_py.checks import _in_two

    def check(s: object) -> int:
        if s == 8:
            raise ValueError("step eight")
        return 0
    if (os.cpu_count() or 1) >= 2:
        with pytest.raises(RuntimeError, match="second process failed:(.|\\n)*ValueError: step eight"):
            _in_two(list(range(9)), check, lambda: time.sleep(1.0))  # type: ignore[arg-type]
