"""The resource check of level 2: each function with a contract, against
it. Every access through a pointer parameter needs a resource on it (a
write needs `writes` or `modifies`), lies within that resource's shape, and
every access to a local array lies within its declared (or allocated)
size; a call to a function with a contract must meet its `requires`. All
under the contract's `requires`, the loop ranges and the guards, proved by
Z3; an access whose effect is not modelled is a problem, not a pass.

Proofs are cached by the access and its context, so a step that leaves
most of a function alone costs only the accesses it changed."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import z3

from . import ir
from .dependence import Space
from .footprint import UNKNOWN, Access, Loop, footprint, function_footprint
from .names import reached, subst
from .printer import expr as expr_text
from .smt import Terms, satisfy, solver as new_solver, unknown_reason
from .tree import function_path, walk

_CACHE: dict[Any, Optional[str]] = {}


_CHECKED: dict[tuple[int, ...], tuple[Any, list[str]]] = {}
"""Each function's problems, by the identity of what they depend on: the
contracts, the function, the functions it calls and the program's other
top-level items (all kept with the answer, so their ids stay theirs). A
step leaves the functions it does not touch as the same objects, and those
are the costly ones to check again (transformer_token: 3 s at each of the
steps that only change transformer_prefill)."""
_KEEP = 256


def check_resources(program: ir.Program, contracts: Mapping[str, Any]) -> tuple[str, ...]:
    """Problems of every function of `program` that has a contract."""
    problems: list[str] = []
    others = tuple(i for i in program.items if not isinstance(i, ir.FuncDef))
    for f in program.functions():
        contract = contracts.get(f.decl.name or "")
        if contract is not None and f.body is not None:
            depends = (contracts, *reached(program, f.name), *others)
            key = tuple(map(id, depends))
            got = _CHECKED.get(key)
            if got is None:
                while len(_CHECKED) >= _KEEP:
                    del _CHECKED[next(iter(_CHECKED))]
                got = _CHECKED[key] = (depends, _check_function(program, f, contract, contracts))
            problems.extend(got[1])
    return tuple(problems)


def _check_function(program: ir.Program, f: ir.FuncDef, contract: Any, contracts: Mapping[str, Any]) -> list[str]:
    name = f.decl.name or ""
    fp = function_footprint(program, name, contracts)
    space = Space(fp, assume_bounds=False)
    params = {p.name for p in _params(f)}
    locals_ = fp.sizes
    out: list[str] = []
    for a in fp.accesses:
        where = f"{name}, line {a.line}" if a.line else name
        if a.cell == UNKNOWN:
            out.append(f"{where}: the effect of '{a.text}' on memory is not known, so it cannot be checked")
            continue
        if a.cell in params and a.index is not None and (a.index or a.whole):
            problem = _param_access(space, a, contract)
        elif a.cell in locals_ and not a.whole:
            problem = within_bounds(space, a, locals_[a.cell], f"'{a.cell}' ({_dims_text(locals_[a.cell])})")
        else:
            continue
        if problem:
            out.append(f"{where}: {problem}")
    out.extend(_calls(program, f, contracts))
    return list(dict.fromkeys(out))


def _param_access(space: Space, a: Access, contract: Any) -> Optional[str]:
    mode = contract.mode_of(a.cell)
    if mode is None:
        return f"'{a.text}' touches '{a.cell}', for which the contract of {contract.function} has no resource"
    if a.write and mode == "reads":
        return f"'{a.text}' writes '{a.cell}', which the contract of {contract.function} only reads"
    if a.whole:
        return None
    res = contract.resource_of(a.cell)
    if res.group or not isinstance(res.subject, ir.Var):
        return f"'{a.text}': the resource of '{a.cell}' ({res}) is not a whole array, which level 2 does not check yet"
    dims = res.shape.dims if res.shape.kind == "matrix" else ()
    return within_bounds(space, a, dims, str(res))


def within_bounds(space: Space, a: Access, dims: tuple[ir.Expr, ...], shown: str) -> Optional[str]:
    """None when every cell `a` touches lies within `dims` (one cell when
    there are none); else what may go out, with values. `space` gives the
    hypotheses at the access (its loops, guards and the function's
    requires); `shown` names the region in the message. Answers are cached
    by what they depend on. Public: the resource check and the loop
    contract inference (`infer`) both prove their groups in bounds with it."""
    key = (a.cell, a.index, a.lanes, _headers(a.loops), a.guards, a.mutable, a.shape, dims, space.fp.requires,
           _headers(space.fp.outer_loops), space.fp.outer_guards, tuple(sorted(space.ranges.items())))
    if key in _CACHE:
        return _CACHE[key]
    enc = space.encode(a, 1)
    t = Terms(f"~bounds{a.uid}")
    sizes = [t.term(d) for d in dims] or [z3.IntVal(1)]
    if len(enc.index) == len(sizes):
        parts = list(zip(enc.index, sizes))
        last_index, last_size = parts[-1]
        inside = [z3.And(i >= 0, i < d) for i, d in parts[:-1]]
        inside.append(z3.And(last_index >= 0, last_index + enc.lanes <= last_size))
    else:
        total = sizes[0]
        for d in sizes[1:]:
            total = total * d
        flat = enc.flat if enc.flat is not None else enc.index[0]
        inside = [flat >= 0, flat + enc.lanes <= total]
    answer, m, why = satisfy(space.hypotheses, [*enc.constraints, z3.Not(z3.And(*inside))])
    if answer == "unsat":
        result = None
    elif m is not None:
        cells = ", ".join(str(m.eval(i, model_completion=True)) for i in enc.index)
        span = f" (and {m.eval(enc.lanes, model_completion=True)} cells from there)" if a.lanes != ir.Const("1") else ""
        untracked = sorted(set(a.mutable) | {expr_text(n) for i in a.index for _, n in walk(i)
                                             if isinstance(n, (ir.Index, ir.Call))})
        because = (f" (its index depends on {', '.join(untracked)}, whose values level 2 does not track)"
                   if untracked else "")
        result = (f"'{a.text}' may be out of bounds of {shown}{because}: {space.values(((a, 1),), m)}, the index "
                  f"is [{cells}]{span}")
    else:
        result = f"Z3 could not decide whether '{a.text}' stays within {shown} ({why})"
    _CACHE[key] = result
    return result


def _headers(loops: tuple[Loop, ...]) -> tuple[tuple[str, ir.Expr, ir.Expr, ir.Expr], ...]:
    """What of the loops around an access its bounds depend on: not where
    they sit, so that a step that moves or adds code elsewhere reuses the
    proof."""
    return tuple((lp.index, lp.start, lp.stop, lp.step) for lp in loops)


def _calls(program: ir.Program, f: ir.FuncDef, contracts: Mapping[str, Any]) -> list[str]:
    """Each call to a function with a contract meets its requires."""
    out: list[str] = []
    fn_path = function_path(program, f.decl.name or "")
    for path, n in walk(f.body, fn_path + (("body", None),)):
        if not (isinstance(n, ir.Call) and isinstance(n.func, ir.Var)):
            continue
        callee = contracts.get(n.func.name)
        if callee is None or program.function(n.func.name) is None or not callee.requires:
            continue
        here = footprint(program, path, contracts, node=ir.Const("0"))
        binding = {p: here.resolve(a) for p, a in zip(callee.params, n.args)}
        space = Space(here, assume_bounds=False)
        t = Terms(f"~call{len(out)}")
        for r in callee.requires:
            claim = t.formula(subst(r, binding))
            solver = new_solver()
            solver.add(*space.hypotheses, z3.Not(claim))
            answer = solver.check()
            if answer != z3.unsat:
                line = f", line {n.loc.line}" if n.loc else ""
                why = "may not hold" if answer == z3.sat else f"could not be decided ({unknown_reason(solver)})"
                out.append(f"{f.decl.name}{line}: the requirement '{expr_text(r)}' of {n.func.name} {why} for "
                           f"the call '{expr_text(n)}'")
    return out


def _params(f: ir.FuncDef) -> tuple[ir.Decl, ...]:
    t = f.decl.type
    return tuple(t.params or ()) if isinstance(t, ir.FuncT) else ()


def _dims_text(dims: tuple[ir.Expr, ...]) -> str:
    return " x ".join(expr_text(d) for d in dims)
