"""Integer arithmetic of the IR as Z3 terms, for the facts transformations
must prove before they rewrite (a stride, an exact division). A query that Z3
cannot settle within its time limit counts as not proved."""
from __future__ import annotations

from typing import Iterable, Optional

import z3

from . import ir

TIMEOUT_MS = 2000


def int_term(e: ir.Expr) -> Optional[z3.ArithRef]:
    """`e` over mathematical integers, or None where it leaves +, -, * of
    integer literals and variables (variables are free Z3 integers)."""
    if isinstance(e, ir.Const) and e.kind == "int":
        try:
            return z3.IntVal(int(e.text.rstrip("uUlL"), 0))
        except ValueError:
            return None
    if isinstance(e, ir.Var):
        return z3.Int(e.name)
    if isinstance(e, ir.Unop) and e.op == "-":
        a = int_term(e.arg)
        return None if a is None else -a
    if isinstance(e, ir.Binop) and e.op in ("+", "-", "*"):
        a, b = int_term(e.left), int_term(e.right)
        if a is None or b is None:
            return None
        return a + b if e.op == "+" else a - b if e.op == "-" else a * b
    return None


def proves(claim: z3.BoolRef, hypotheses: Iterable[z3.BoolRef] = ()) -> bool:
    """Whether `claim` holds for every value of its variables that satisfies
    the hypotheses (unsat of the negation; unknown is not a proof)."""
    solver = z3.Solver()
    solver.set("timeout", TIMEOUT_MS)
    solver.add(*hypotheses)
    solver.add(z3.Not(claim))
    return solver.check() == z3.unsat
