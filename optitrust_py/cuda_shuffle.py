"""Lane folds as xor shuffles.

gpu.warp_rows ends a row's reduction with every lane folding the partial
results of its group of L lanes, read from a block array:

    for (int k = 0; k < L; k++) { m = fmaxf(m, m_part[w / L * L + k]); }

Where every thread of the block runs that phase (its x loop from 0 to the
block's size, the threads along x only, in whole warps), and the fold sits
in the phase with no test around it that could part the group (loops of
constant bounds, such as the `half` loop of gpu.warp_rows' mma form over
`m_part[half][...]`, part nothing), the group's lanes are neighbouring
lanes of one warp, so each can read its own cell and combine the others'
by `__shfl_xor_sync` with offsets L / 2, ..., 1, the butterfly after
which every lane holds the group's fold. The cells are then read only by
their own thread, so
cuda_registers keeps the array in registers. The sum is associated
differently than in the loop; gpu.warp_rows declares it ("reassoc").
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from . import ir
from .cuda_map import mapping, thread_extent
from .names import free_vars
from .tree import map_children

WARP = 32
FULL_MASK = ir.Const("0xffffffffu")
_FOLDED = ("fmaxf", "fminf", "fmax", "fmin")


def _fold(s: ir.Stmt, w: str) -> Optional[tuple[str, str, ir.Expr, int]]:
    """(scalar, combine, cells, lanes) of a fold over the lanes of thread
    `w`'s group, else None: `cells[w]` is the thread's own partial result
    (`m_part`, or `m_part[half]` for gpu.warp_rows' mma form)."""
    if not (isinstance(s, ir.For) and s.start == ir.Const("0") and s.step == ir.Const("1") and not s.inclusive
            and not s.pragmas and isinstance(s.stop, ir.Const) and s.stop.text.isdigit()
            and len(s.body.stmts) == 1 and isinstance(s.body.stmts[0], ir.ExprStmt)):
        return None
    lanes = int(s.stop.text)
    if lanes < 2 or WARP % lanes:
        return None
    group = ir.Const(str(lanes))
    mates = ir.Binop("+", ir.Binop("*", ir.Binop("/", ir.Var(w), group), group), ir.Var(s.index))
    e = s.body.stmts[0].expr
    if not (isinstance(e, ir.Assign) and isinstance(e.lhs, ir.Var)):
        return None
    if e.op == "+=":
        cell = e.rhs
        combine = "+"
    elif e.op == "=" and isinstance(e.rhs, ir.Call) and e.rhs.name in _FOLDED and len(e.rhs.args) == 2 \
            and e.rhs.args[0] == e.lhs:
        cell = e.rhs.args[1]
        combine = e.rhs.name or ""
    else:
        return None
    if not (isinstance(cell, ir.Index) and cell.index == mates and _fixed(cell.base, {w, s.index})):
        return None
    return e.lhs.name, combine, cell.base, lanes


def _fixed(cells: ir.Expr, names: set[str]) -> bool:
    """An array, or an array indexed by what does not name `names`."""
    if isinstance(cells, ir.Var):
        return True
    return isinstance(cells, ir.Index) and not free_vars(cells.index) & names and _fixed(cells.base, names)


def _root(cells: ir.Expr) -> str:
    while isinstance(cells, ir.Index):
        cells = cells.base
    return cells.name if isinstance(cells, ir.Var) else ""


def _uniform(s: ir.Stmt) -> bool:
    """A plain loop every thread runs alike (constant bounds): it cannot part a group."""
    return isinstance(s, ir.For) and not s.pragmas and all(
        isinstance(x, ir.Const) for x in (s.start, s.stop, s.step))


def _combined(combine: str, into: ir.Expr, other: ir.Expr) -> ir.Stmt:
    if combine == "+":
        return ir.ExprStmt(ir.Assign("+=", into, other))
    return ir.ExprStmt(ir.Assign("=", into, ir.Call(ir.Var(combine), (into, other))))


def _shuffled(fold: tuple[str, str, ir.Expr, int], w: str, elem: ir.CType) -> ir.Stmt:
    """`{ T a_lanes = a[w]; a_lanes = op(a_lanes, __shfl_xor_sync(mask, a_lanes, L / 2)); ...; v = op(v, a_lanes); }`"""
    var, combine, cells, lanes = fold
    mine = ir.Var(f"{_root(cells)}_lanes")
    body: list[ir.Stmt] = [ir.DeclStmt(ir.Decl(mine.name, elem, ir.Index(cells, ir.Var(w))))]
    half = lanes // 2
    while half >= 1:
        other = ir.Call(ir.Var("__shfl_xor_sync"), (FULL_MASK, mine, ir.Const(str(half))))
        body.append(_combined(combine, mine, other))
        half //= 2
    body.append(_combined(combine, ir.Var(var), mine))
    return ir.Block(tuple(body))


def lane_folds(body: ir.Block, dims: dict[str, int], arrays: dict[str, ir.Decl]) -> ir.Block:
    """`body` (a block's) with each lane fold of a phase that every thread
    runs, in a block of whole warps along x, done by shuffles."""
    size = dims.get("x", 0)
    if set(dims) != {"x"} or size % WARP:
        return body

    def visit(node: Any) -> Any:
        m = mapping(node)
        if m is None or not isinstance(node, ir.For):
            return map_children(node, visit)
        n = thread_extent(node)
        if m != ("thread", "x") or node.start != ir.Const("0") or n is None or not n[1] or n[0] != size:
            return node
        return dataclasses.replace(node, body=folded(node.body, node.index))

    def folded(block: ir.Block, w: str) -> ir.Block:
        stmts: list[ir.Stmt] = []
        for s in block.stmts:
            fold = _fold(s, w)
            decl = arrays.get(_root(fold[2])) if fold else None
            if fold and decl is not None and isinstance(decl.type, ir.Array):
                elem = decl.type
                while isinstance(elem, ir.Array):
                    elem = elem.of
                stmts.append(_shuffled(fold, w, elem))
            elif _uniform(s):
                stmts.append(dataclasses.replace(s, body=folded(s.body, w)))  # type: ignore[union-attr]
            else:
                stmts.append(s)
        return dataclasses.replace(block, stmts=tuple(stmts))
    return visit(body)
