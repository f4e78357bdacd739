"""Which arrays of a GPU block the CUDA printer keeps in registers.

An array declared in a block loop is one array per block: `__shared__` by
default. When every cell is touched by one thread only, it can instead be
split into one small array per thread, which nvcc keeps in registers once
the loops that index it are unrolled (an accumulator tile). Ownership is
read off the indices: along a thread axis of period T (the block's threads
on that axis), a dimension is owned when each access indexes it by an
expression congruent to the thread's position modulo T, proved by Z3 from
the steps of the enclosing loops (`ri` in `bi, bi + 16, ...` makes
`i + ri - bi` congruent to `i` modulo 16). Each thread axis of the block
must own exactly one dimension, the same in every access, so that two
threads never share a cell; the per-thread array keeps that dimension's
size / T cells, indexed by `(index - position) / T`, and every other
dimension whole. A thread may also own runs of W neighbouring cells
(gpu.thread_tile with `width`): the index divided by W is congruent to the
position (`4 * j + 64 * rj + cj`, cj < 4, j a thread of 16), and with
`o = index - W * position` (linear in the position, which nvcc cancels)
the per-thread index is `o / (W * T) * W + o % W`. Accesses in loops that
run no iteration (`for (k = b; k < b; k++)`, a remainder loop) do not
count. The period is the count of threads that touch the array: a block of
128 threads whose every access to the array is in a phase of 64 (the
others skip it) splits it over 64. An array whose cells' addresses are taken stays shared.

A thread axis may also own two dimensions, as the rows of gpu.warp_rows
share them: with L lanes to a row, thread w takes row w / L and, along a
row, the cells congruent to its lane w % L modulo L (`sc[w / 2][j - bj]`,
`j` from `bj + w % 2` by 2). The row's dimension follows the digit
w / L (period T / L), the other the digit w % L (period L); the two
together name one thread, and each dimension keeps size / period cells.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import z3

from . import ir
from .cuda_map import mapping, thread_extent
from .layout import cancelled_sum
from .smt import Terms, int_term, loop_facts, proves
from .tree import children, map_children, walk

ZERO = ir.Const("0")


@dataclass(frozen=True)
class Owned:
    """How the threads of one axis share a dimension: they take turns along
    it with `period` (each owning runs of `width` cells), following the
    axis's position (`digit` ""), its quotient by `lanes` ("row") or its
    remainder by `lanes` ("lane")."""

    axis: str
    period: int
    width: int = 1
    digit: str = ""
    lanes: int = 1

    def position(self, position: ir.Expr) -> ir.Expr:
        if not self.digit:
            return position
        return ir.Binop("/" if self.digit == "row" else "%", position, ir.Const(str(self.lanes)))


@dataclass(frozen=True)
class Register:
    """A block array kept per thread: its element type and, per dimension,
    its size and how the threads share it (None: each thread keeps it whole)."""

    elem: ir.CType
    dims: tuple[tuple[Optional[Owned], int], ...]

    def ctype(self) -> ir.CType:
        t = self.elem
        for owned, size in reversed(self.dims):
            kept = size // owned.period if owned else size
            if kept > 1:
                t = ir.Array(t, ir.Const(str(kept)))
        return t

    def access(self, indices: list[ir.Expr], positions: dict[str, ir.Expr], name: str) -> ir.Expr:
        out: ir.Expr = ir.Var(name)
        for (owned, size), e in zip(self.dims, indices):
            if owned is None:
                out = ir.Index(out, e)
            elif size // owned.period > 1:
                out = ir.Index(out, _per_thread(e, owned.position(positions[owned.axis]), owned.period,
                                                owned.width))
        return out


def _per_thread(e: ir.Expr, position: ir.Expr, period: int, width: int) -> ir.Expr:
    """The per-thread index of cell `e` owned by the thread at `position`;
    `jk` for `(bj + w % 2 + 2 * jk - bj - w % 2) / 2`, whose terms cancel
    (nvcc then sees a constant index in each unrolled iteration: in a long
    kernel it kept the array on the stack otherwise)."""
    if width == 1:
        rest = cancelled_sum((1, e), (-1, position))
        scale = ir.Const(str(period))
        if isinstance(rest, ir.Binop) and rest.op == "*" and scale in (rest.left, rest.right):
            return rest.right if rest.left == scale else rest.left
        return ir.Binop("/", ir.Binop("-", e, position), scale)
    w = ir.Const(str(width))
    offset = ir.Binop("-", e, ir.Binop("*", w, position))
    run = ir.Binop("/", offset, ir.Const(str(period * width)))
    return ir.Binop("+", ir.Binop("*", run, w), ir.Binop("%", offset, w))


def chain(e: ir.Index) -> tuple[ir.Expr, list[ir.Expr]]:
    """`a[i][j]` -> (a, [i, j])."""
    indices: list[ir.Expr] = []
    base: ir.Expr = e
    while isinstance(base, ir.Index):
        indices.insert(0, base.index)
        base = base.base
    return base, indices


def thread_position(loop: ir.For) -> ir.Expr:
    """A thread's position along the axis of its thread loop: the index minus the start."""
    return ir.Var(loop.index) if loop.start == ZERO else ir.Binop("-", ir.Var(loop.index), loop.start)


def phase_positions(nest: list[ir.For]) -> dict[str, ir.Expr]:
    return {mapping(lp)[1]: thread_position(lp) for lp in nest}  # type: ignore[index]


@dataclass(frozen=True)
class _Access:
    indices: tuple[ir.Expr, ...]
    loops: tuple[ir.For, ...]
    phase: tuple[ir.For, ...]


def _accesses(node: Any, name: str, rank: int, loops: tuple[ir.For, ...], phase: tuple[ir.For, ...],
              out: list[_Access]) -> None:
    m = mapping(node)
    if isinstance(node, ir.For):
        if m is not None and m[0] == "thread" and not phase:
            phase = (node,)
        elif m is not None and m[0] == "thread":
            phase = phase + (node,)
        loops = loops + (node,)
    if isinstance(node, ir.Index):
        base, indices = chain(node)
        if base == ir.Var(name) and len(indices) == rank:
            out.append(_Access(tuple(indices), loops, phase))
    for _, child in children(node):
        _accesses(child, name, rank, loops, phase, out)


def _facts(loops: tuple[ir.For, ...]) -> list[z3.BoolRef]:
    """`var = start + step * n, n >= 0` and `var < stop` for each loop of
    integer start and positive constant step (`stop` is exclusive)."""
    out = []
    for lp in loops:
        start, step, stop = int_term(lp.start), int_term(lp.step), int_term(lp.stop)
        if start is None or step is None or not z3.is_int_value(z3.simplify(step)) \
                or z3.simplify(step).as_long() <= 0:
            continue
        n, var = z3.Int(f"n_{lp.index}"), z3.Int(lp.index)
        out += [var == start + step * n, n >= 0]
        if stop is not None:
            out.append(var < stop)
    return out


WIDTHS = (1, 2, 4, 8)
"""The widths of the runs of cells a thread may own, tried in order."""


def _owner(a: _Access, e: ir.Expr, periods: dict[str, int]) -> Optional[Owned]:
    """How a thread axis owns the dimension indexed by `e`: `e` divided by
    a width congruent to the axis's position modulo its period, else `e`
    congruent to the position's row w / L modulo T / L, or to its lane
    w % L modulo L."""
    for lp in a.phase:
        axis = mapping(lp)[1]  # type: ignore[index]
        ext = thread_extent(lp)
        term, pos = int_term(e), int_term(thread_position(lp))
        if ext is None or ext != (periods.get(axis), True) or term is None or pos is None:
            continue
        facts = _facts(a.loops) + [term >= 0]
        for width in WIDTHS:
            if proves((term / width - pos) % ext[0] == 0, facts):
                return Owned(axis, ext[0], width)
    for lp in a.phase:  # a row's lanes: C's `/` and `%` of the position, read by Terms
        axis, ext = mapping(lp)[1], thread_extent(lp)  # type: ignore[index]
        if ext is None or ext != (periods.get(axis), True):
            continue
        terms = Terms("registers")
        term = terms.term(e)
        for lanes in (n for n in WIDTHS[1:] + (16, 32) if n < ext[0] and ext[0] % n == 0):
            for owned in (Owned(axis, ext[0] // lanes, digit="row", lanes=lanes),
                          Owned(axis, lanes, digit="lane", lanes=lanes)):
                digit = terms.term(owned.position(thread_position(lp)))
                if proves((term - digit) % owned.period == 0,
                          loop_facts(terms, a.loops, {}) + terms.facts + [term >= 0]):
                    return owned
    return None


def _covers(owners: tuple[Optional[Owned], ...], periods: dict[str, int]) -> bool:
    """Each axis of more than one thread owns one dimension by its position,
    or two by its row and lane digits for one lane count."""
    for axis, n in periods.items():
        mine = sorted((o.digit, o.lanes) for o in owners if o is not None and o.axis == axis)
        whole = len(mine) == 1 and mine[0][0] == ""
        split = len(mine) == 2 and [d for d, _ in mine] == ["lane", "row"] and mine[0][1] == mine[1][1]
        if (n > 1 and not (whole or split)) or (n == 1 and mine):
            return False
    return all(o is None or o.axis in periods for o in owners)


def _touching(live: list[_Access], block: dict[str, int]) -> Optional[dict[str, int]]:
    """The threads along each axis that touch the array: every access's
    phase must have a loop of one and the same exact extent on each axis of
    the block that has more than one thread (a phase of 64 threads in a
    block of 128: threads 64 to 127 skip it and own no cell); None when
    they differ."""
    out: dict[str, int] = {}
    for axis, n in block.items():
        loops = [[lp for lp in a.phase if mapping(lp)[1] == axis] for a in live]  # type: ignore[index]
        extents = {thread_extent(lp) for on_axis in loops for lp in on_axis}
        if n > 1 and (len(extents) != 1 or any(len(on_axis) != 1 for on_axis in loops)):
            return None
        extent = extents.pop() if extents else (n, True)
        if extent is None or not extent[1] or extent[0] > n:
            return None
        out[axis] = extent[0]
    return out


def _address_taken(body: ir.Block, name: str) -> bool:
    """A cell's address is passed on (`&acc[i]` to gpu.mma's call): what the
    callee touches through it is not read off the indices."""
    return any(isinstance(n, ir.Unop) and n.op == "&" and isinstance(n.arg, ir.Index)
               and chain(n.arg)[0] == ir.Var(name) for _, n in walk(body))


def register_of(body: ir.Block, blocks: list[ir.For], decl: ir.Decl, periods: dict[str, int]) -> Optional[Register]:
    """The per-thread form of the block array `decl`, or None when threads share cells."""
    name = decl.name
    sizes: list[int] = []
    t: ir.CType = decl.type
    while isinstance(t, ir.Array):
        if not (isinstance(t.size, ir.Const) and t.size.kind == "int" and t.size.text.isdigit()):
            return None
        sizes.append(int(t.size.text))
        t = t.of
    found: list[_Access] = []
    _accesses(body, name or "", len(sizes), tuple(blocks), (), found)
    uses = sum(1 for _, n in walk(body) if n == ir.Var(name or ""))
    if decl.init is not None or not found or len(found) != uses or any(not a.phase for a in found) \
            or _address_taken(body, name or ""):
        return None
    live = [a for a in found if not proves(z3.BoolVal(False), _facts(a.loops))]
    periods = _touching(live, periods)
    if periods is None:
        return None
    owners = {tuple(_owner(a, e, periods) for e in a.indices) for a in live}
    if len(owners) != 1:
        return None
    owner = owners.pop()
    if not _covers(owner, periods) or any(o is not None and size % (o.period * o.width)
                                          for o, size in zip(owner, sizes)):
        return None
    return Register(t, tuple(zip(owner, sizes)))


def to_registers(node: Any, registers: dict[str, Register], positions: dict[str, ir.Expr]) -> Any:
    """`node` (a phase's body) with each access to a register array rewritten to its per-thread cell."""
    if isinstance(node, ir.Index):
        base, indices = chain(node)
        if isinstance(base, ir.Var) and base.name in registers:
            return registers[base.name].access([to_registers(i, registers, positions) for i in indices],
                                               positions, base.name)
    return map_children(node, lambda c: to_registers(c, registers, positions))
