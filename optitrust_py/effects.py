"""Dischargers of the obligations about effects: which runs of which
accesses may be reordered by a step, asked of Z3 as "can two of them touch
one cell, one writing, in the runs whose order the step changes?".

Each discharger picks the accesses of the function (`function_footprint`)
under the paths the obligation names, says which loop indices differ
between the two runs it compares (`bound`), which locals are private to a
run, and the relation between the runs (`i != i'` for a parallel loop,
`o < o' and i > i'` for a swap); `dependence.first_conflict` does the
rest."""
from __future__ import annotations

import re
from typing import Any, Iterable, Optional

import z3

from . import ir
from .dependence import Conflict, Space, Unknown, first_conflict, instance_var
from .footprint import UNKNOWN, Access, Footprint, cell_name, footprint, function_footprint, under
from .goal import Goal, discharges
from .names import has_side_effects
from .obligation import Obligation
from .printer import expr as expr_text
from .tree import Path, get, walk

Outcome = tuple[str, str]
PROVED: Outcome = ("proved", "")


def _fp(goal: Goal, program: Optional[ir.Program] = None) -> Footprint:
    return function_footprint(program or goal.program, goal.obligation.function, goal.contracts)


def _within(fp: Footprint, path: Path) -> list[Access]:
    return [a for a in fp.accesses if under(a, path)]


def _loop_indices(node: Any) -> set[str]:
    return {n.index for _, n in walk(node) if isinstance(n, ir.For)}


def _declared(node: Any) -> set[str]:
    return {n.decl.name for _, n in walk(node) if isinstance(n, ir.DeclStmt) and n.decl.name}


def _earlier(loop: ir.For, first: int, second: int) -> z3.BoolRef:
    """The run tagged `first` of `loop` comes before the one tagged `second`
    (canonical loops count upwards)."""
    return instance_var(loop.index, first) < instance_var(loop.index, second)


def _answer(found: Optional[Conflict], verb: str) -> Outcome:
    return PROVED if found is None else ("refuted", found.message(verb))


def _settle(check: Any) -> Outcome:
    """Runs a check, turning a query Z3 could not decide into 'unknown'."""
    try:
        return check()
    except Unknown as e:
        return "unknown", str(e)


def _pairs(first: Iterable[Access], second: Iterable[Access], t1: int = 1, t2: int = 2) \
        -> list[tuple[Access, int, Access, int]]:
    seconds = list(second)
    return [(a, t1, b, t2) for a in first for b in seconds]


# ----------------------------------------------------------------- parallel loops


_REDUCTION = re.compile(r"reduction\s*\(\s*[^:]+:([^)]*)\)")


def _reduction_names(loop: ir.For) -> set[str]:
    return {n.strip() for p in loop.pragmas for m in _REDUCTION.finditer(p) for n in m.group(1).split(",")}


def _collapsed(loop: ir.For) -> int:
    """How many loops of the nest `collapse(n)` makes parallel."""
    found = [int(m.group(1)) for p in loop.pragmas for m in re.finditer(r"collapse\s*\(\s*(\d+)\s*\)", p)]
    return found[0] if found else 1


def _exempt(reductions: set[str]) -> Any:
    """Pairs of updates of a declared reduction variable may be reordered."""
    def keep(a: Access, b: Access) -> bool:
        return not (cell_name(a.cell) in reductions and b.cell == a.cell and a.update and b.update)
    return keep


def _stated_depth(ob: Obligation) -> int:
    """The depth of the nest an obligation speaks of (its first expr, an
    integer literal: the (t, s) work items a dispatch reorders), else 1."""
    first = ob.exprs[0] if ob.exprs else None
    return int(first.text) if isinstance(first, ir.Const) and first.text.isdigit() else 1


@discharges("parallel")
def parallel(goal: Goal) -> Outcome:
    """Two distinct iterations i != i' of the loop, at whatever depth it is
    nested: no write of one meets an access of the other, apart from the
    updates of its declared reductions. The iterations are those of the
    nest that `collapse(n)` or the obligation's stated depth covers."""
    path = goal.obligation.paths[0]
    loop: ir.For = get(goal.program, path)
    nest = [loop]
    while len(nest) < max(_collapsed(loop), _stated_depth(goal.obligation)) \
            and isinstance(nest[-1].body.stmts[0], ir.For):
        nest.append(nest[-1].body.stmts[0])
    fp = _fp(goal)
    space = Space(fp, _loop_indices(loop), _declared(nest[-1].body))
    accesses = _within(fp, path + (("body", None),))
    writes = [a for a in accesses if a.write]
    rel = [z3.Or(*(instance_var(lp.index, 1) != instance_var(lp.index, 2) for lp in nest))]
    return _settle(lambda: _answer(first_conflict(space, _pairs(writes, accesses), lambda a, b: rel,
                                                  _exempt(_reduction_names(loop) | set(goal.obligation.names))),
                                   f"iterations {loop.index} != {loop.index}' of the parallel loop meet"))


# ----------------------------------------------------------------- swap, fission, fusion


@discharges("swap_loops")
def swap_loops(goal: Goal) -> Outcome:
    """Runs (o, i) before (o', i') in the nest but after it once swapped:
    o before o' and i' before i. None of them may touch one cell."""
    path = goal.obligation.paths[0]
    outer: ir.For = get(goal.before, path)
    inner: ir.For = outer.body.stmts[0]
    fp = _fp(goal, goal.before)
    space = Space(fp, _loop_indices(outer), _declared(inner.body))
    accesses = _within(fp, path + (("body", None),))
    rel = [_earlier(outer, 1, 2), _earlier(inner, 2, 1)]
    return _settle(lambda: _answer(first_conflict(space, _pairs(accesses, accesses), lambda a, b: rel),
                                   f"with {outer.index} before {outer.index}' but {inner.index}' before "
                                   f"{inner.index}, swapping the loops reverses their order"))


@discharges("fission")
def fission(goal: Goal) -> Outcome:
    """The first part at a later iteration and the second part at an earlier
    one: fission runs them in the opposite order."""
    p, q = goal.obligation.paths[:2]
    first: ir.For = get(goal.program, p)
    second: ir.For = get(goal.program, q)
    fp = _fp(goal)
    space = Space(fp, _loop_indices(first) | _loop_indices(second), _declared(first.body) | _declared(second.body))
    rel = [_earlier(second, 2, 1)]
    return _settle(lambda: _answer(first_conflict(space, _pairs(_within(fp, p), _within(fp, q)), lambda a, b: rel),
                                   f"the first at iteration {first.index}, the second at an earlier iteration "
                                   f"{second.index}', which the fission moves after it"))


@discharges("fusion")
def fusion(goal: Goal) -> Outcome:
    """An iteration of the first loop and an earlier one of the second:
    fused, the second runs first."""
    path = goal.obligation.paths[0]
    block, k = path[:-1], path[-1][1]
    first: ir.For = get(goal.before, path)
    second_path = block + (("stmts", k + 1),)
    second: ir.For = get(goal.before, second_path)
    fp = _fp(goal, goal.before)
    space = Space(fp, _loop_indices(first) | _loop_indices(second), _declared(first.body) | _declared(second.body))
    rel = [instance_var(second.index, 2) < instance_var(first.index, 1)]  # the loops run one range (loop.fusion)
    return _settle(lambda: _answer(first_conflict(space, _pairs(_within(fp, path), _within(fp, second_path)),
                                                  lambda a, b: rel),
                                   f"the first loop at {first.index}, the second at an earlier "
                                   f"{second.index}', which the fusion runs first"))


# ----------------------------------------------------------------- moving instructions


@discharges("commute")
def commute(goal: Goal) -> Outcome:
    """The first path's accesses against those of every other path, in any
    runs of the loops around them."""
    paths = goal.obligation.paths
    fp = _fp(goal)
    inside = set().union(*(_loop_indices(get(goal.program, p)) for p in paths))
    space = Space(fp, inside)
    own = _within(fp, paths[0])
    others = [a for p in paths[1:] for a in _within(fp, p)]
    return _settle(lambda: _answer(first_conflict(space, _pairs(own, others), lambda a, b: ()),
                                   "the instructions do not commute"))


@discharges("loop_invariant")
def loop_invariant(goal: Goal) -> Outcome:
    """The moved instruction reads nothing the loop writes, writes nothing
    the loop writes, and does not read what it writes itself."""
    instr_path, loop_path = goal.obligation.paths[:2]
    fp = _fp(goal)
    inside = _loop_indices(get(goal.program, instr_path)) | _loop_indices(get(goal.program, loop_path))
    space = Space(fp, inside)
    own = _within(fp, instr_path)
    loop = _within(fp, loop_path)
    loop_writes = [a for a in loop if a.write]

    def check() -> Outcome:
        found = first_conflict(space, _pairs(own, loop_writes), lambda a, b: ())
        if found is not None:
            return "refuted", found.message("the loop changes what the instruction touches")
        own_writes = [a for a in own if a.write]
        found = first_conflict(space, _pairs(own_writes, [a for a in own if a.read]), lambda a, b: ())
        return _answer(found, "the instruction reads what it writes, so running it once differs from "
                              "running it at every iteration")
    return _settle(check)


@discharges("pure")
def pure(goal: Goal) -> Outcome:
    """The expression calls nothing with an effect, and nothing between its
    definition and its last use writes what it reads."""
    ob = goal.obligation
    e = ob.exprs[0]
    if has_side_effects(e):
        return "refuted", f"'{_text(e)}' has a side effect (an assignment or a call to a function that is not pure)"
    fp = _fp(goal)
    first = ob.paths[0]
    mine = footprint(goal.program, first, goal.contracts, node=e)
    block, k = first[:-1], first[-1][1]
    last = max(p[len(block)][1] for p in ob.paths if p[:len(block)] == block)
    between = [a for j in range(k, last + 1) for a in _within(fp, block + (("stmts", j),)) if a.write]
    inside = set().union(*(_loop_indices(get(goal.program, block + (("stmts", j),))) for j in range(k, last + 1)))
    space = Space(mine, inside)
    return _settle(lambda: _answer(first_conflict(space, _pairs(mine.accesses, between), lambda a, b: ()),
                                   f"'{_text(e)}' may change between its definition and its use"))


@discharges("unaliased")
def unaliased(goal: Goal) -> Outcome:
    """No access of the region, other than through the local that now holds
    the lvalue, touches the lvalue's cell."""
    ob = goal.obligation
    path = ob.paths[0]
    cell = footprint(goal.program, path, goal.contracts, node=ir.Assign("+=", ob.exprs[0], ir.Const("0")))
    fp = _fp(goal)
    space = Space(cell, _loop_indices(get(goal.program, path)))
    held = [a for a in cell.accesses if a.write]
    return _settle(lambda: _answer(first_conflict(space, _pairs(held, _within(fp, path)), lambda a, b: ()),
                                   "the region touches the cell held in a local"))


@discharges("no_alias")
def no_alias(goal: Goal) -> Outcome:
    """Inside the loop every access to the array's cells is written with the
    array's own name, and nothing touches memory we cannot name."""
    ob = goal.obligation
    path, array = ob.paths[0], ob.names[0]
    for a in _within(_fp(goal), path):
        if a.cell == UNKNOWN:
            return "unknown", f"{a.describe()}: its effect on '{array}' is not known"
        if a.cell == array and a.via != array:
            return "refuted", f"{a.describe()} through '{a.via}', another name for '{array}'"
    return PROVED


# ----------------------------------------------------------------- vector lanes


@discharges("lanes")
def lanes(goal: Goal) -> Outcome:
    """For each vectorized loop: lanes j < j' of one vector (j' - j < W) run
    statement by statement, so a statement at lane j' runs before a later
    statement at lane j; and within a statement all lanes read before any
    writes. No such reversed pair may touch one cell, reductions aside."""
    ob = goal.obligation
    width = int(ob.exprs[0].text) if ob.exprs else 1
    fp = _fp(goal)
    keep = _exempt_all(set(ob.names))
    for path in ob.paths:
        loop: ir.For = get(goal.program, path)
        space = Space(fp, _loop_indices(loop), _declared(loop.body))
        accesses = _within(fp, path + (("body", None),))
        j1, j2 = instance_var(loop.index, 1), instance_var(loop.index, 2)
        rel = [j1 < j2, j2 - j1 < width]
        depth = len(path) + 1

        def reversed_pair(a: Access, b: Access) -> bool:
            sa, sb = a.path[depth][1], b.path[depth][1]
            return keep(a, b) and (sa > sb or sa == sb and a.write and (b.read or b.write))
        outcome = _settle(lambda: _answer(first_conflict(space, _pairs(accesses, accesses), lambda a, b: rel,
                                                         reversed_pair),
                                          f"lanes {loop.index} < {loop.index}' of one vector of {width} "
                                          f"run these in the other order"))
        if outcome != PROVED:
            return outcome
    return PROVED


def _exempt_all(reductions: set[str]) -> Any:
    def keep(a: Access, b: Access) -> bool:
        return not (cell_name(a.cell) in reductions and b.cell == a.cell)
    return keep


def _text(e: ir.Expr) -> str:
    return expr_text(e)
