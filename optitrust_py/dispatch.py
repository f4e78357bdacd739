"""A function that starts by handing its arguments to a variant when the CPU
has a feature, as level 3 sees it under each answer.

`vector.vectorize` leaves

    void f(int n, float *x) {
      if (__builtin_cpu_supports("avx512f")) { f_avx512(n, x); return; }
      ...the code before the step...
    }

Under the answer true, `f` runs what `f_avx512` runs, with the same
arguments bound to the same names; under false, the rest of its body. So
level 3 compares `f` under each answer as a function with that body: the
vectorizing step is then a change of one loop (checked where it runs, by
`locality`), not of the whole function, and a later step in the variant is
the same comparison for `f` as for the variant (whose runs are cached).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

from . import ir


def choice(f: ir.FuncDef) -> Optional[tuple[str, str]]:
    """The choice (as `symexec` names it) and the variant `f` dispatches to
    at its start, when it does."""
    if not f.body.stmts:
        return None
    first = f.body.stmts[0]
    if not (isinstance(first, ir.If) and first.other is None and isinstance(first.cond, ir.Call)
            and isinstance(first.cond.func, ir.Var) and first.cond.func.name == "__builtin_cpu_supports"
            and all(isinstance(a, ir.Const) for a in first.cond.args)):
        return None
    then = first.then.stmts
    names = tuple(p.name for p in f.params)
    if len(then) != 2 or not isinstance(then[0], ir.ExprStmt) or then[1] != ir.Return(None):
        return None
    call = then[0].expr
    if not (isinstance(call, ir.Call) and isinstance(call.func, ir.Var)
            and tuple(a.name if isinstance(a, ir.Var) else None for a in call.args) == names):
        return None
    key = f"cpu_supports({', '.join(a.text for a in first.cond.args)})"  # type: ignore[union-attr]
    return key, call.func.name


def specialized(program: ir.Program, name: str, answers: Mapping[str, bool]) -> ir.Program:
    """`program` with `name`'s body as it runs under `answers` (unchanged
    where it does not dispatch on one of them, or its variant's parameters
    are not its own)."""
    f = program.function(name)
    got = choice(f) if f is not None else None
    if f is None or got is None or got[0] not in answers:
        return program
    key, variant = got
    if not answers[key]:
        body = dataclasses.replace(f.body, stmts=f.body.stmts[1:])
    else:
        g = program.function(variant)
        if g is None or g.params != f.params:
            return program
        body = g.body
    new = dataclasses.replace(f, body=body)
    return dataclasses.replace(program, items=tuple(new if item is f else item for item in program.items))
