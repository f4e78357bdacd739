"""smt.satisfy's last resort: a query Z3 leaves unknown in the shared
context is asked again in a context of its own, whose answer depends on
the query alone; a model comes back usable on the caller's terms."""
from __future__ import annotations

from typing import Optional

import pytest
import z3

from optitrust_py import smt


def test_fresh_check_answers_in_a_context_of_its_own() -> None:
    x, y = z3.Ints("x y")
    answer, model, why = smt.fresh_check([x + y == 10, x > 7, y > 1])
    assert (answer, why) == ("sat", "")
    assert model is not None and model.eval(x + y).as_long() == 10 and model.eval(x).as_long() == 8
    assert smt.fresh_check([x + y == 10, x > 7, y > 2])[0] == "unsat"


def test_satisfy_asks_an_unknown_query_again_in_a_fresh_context(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared context's solver is starved (a work limit of 1, so Z3
    gives up at once); the answers are still found, by the retry."""
    plain = smt.solver

    def starved(ctx: Optional[z3.Context] = None) -> z3.Solver:
        s = plain(ctx)
        if ctx is None:
            s.set("rlimit", 1)
        return s
    monkeypatch.setattr(smt, "solver", starved)
    i, n = z3.Ints("i n")
    hyps = [n >= 1, i >= 0, i < n]
    shared = starved()
    shared.add(*hyps, i == n)
    assert shared.check() == z3.unknown  # what satisfy's own query meets
    assert smt.satisfy(hyps, [i == n])[0] == "unsat"
    answer, model, _ = smt.satisfy(hyps, [i == n - 1, n > 5])
    assert answer == "sat" and model is not None and model.eval(n - i).as_long() == 1
