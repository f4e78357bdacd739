"""Which barriers between phases only need the warp.

A `__syncthreads()` between two phases lets every thread see what every
other thread wrote before. When every cell that one phase writes and the
other touches is touched, in both, by threads of one warp (the partial
results of a row whose lanes are a warp, `gpu.warp_rows`), the threads of
other warps have nothing to wait for: `__syncwarp()` orders the memory of
the warp's threads, and the other warps run on. That is decided here, on
the C of the two phases: each pair of accesses to one array (one of them a
write) from threads t and t' of a block of whole warps along x, with every
index equal, must imply t / 32 == t' / 32, which Z3 proves from the loops'
bounds. Anything whose cells are not read off an index (an address taken,
a call that is not a pure function), an index or a loop bound naming a
value that differs between threads outside the phases (a block-level
local), or a block with threads along y or z keeps the full barrier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from . import ir
from .cuda_map import mapping
from .cuda_registers import chain, thread_position
from .intrinsics import CONVERSIONS
from .names import INCDEC, PURE_FUNCTIONS, free_vars, subst
from .smt import Terms, loop_facts, proves
from .tree import children, walk

WARP = 32
SYNCWARP = ir.ExprStmt(ir.Call(ir.Var("__syncwarp"), ()))
_PURE = PURE_FUNCTIONS | frozenset(CONVERSIONS.values()) | {"__shfl_xor_sync"}  # lane folds trade registers


@dataclass(frozen=True)
class _Touch:
    """An access of a phase to an array other threads may touch."""

    array: str
    index: tuple[ir.Expr, ...]
    write: bool
    loops: tuple[ir.For, ...]


@dataclass(frozen=True)
class _Phase:
    top: ir.For
    touches: tuple[_Touch, ...]
    bound: frozenset[str]  # the names the phase declares (its loops' indices, its locals)


def _written(node: Any) -> set[int]:
    """The ids of the array accesses that `node` assigns or increments."""
    out = set()
    for _, n in walk(node):
        target = n.lhs if isinstance(n, ir.Assign) else n.arg if isinstance(n, ir.Unop) and n.op in INCDEC else None
        if isinstance(target, ir.Index):
            out.add(id(target))
    return out


def _phase(top: ir.For, private: set[str]) -> Optional[_Phase]:
    """The accesses of a phase to arrays outside `private` (the block's
    register arrays) and its own locals; None when one is not read off an
    index, or when the phase nests another thread loop."""
    bound = {n.decl.name for _, n in walk(top) if isinstance(n, ir.DeclStmt) and n.decl.name}
    bound |= {n.index for _, n in walk(top) if isinstance(n, ir.For)}
    local = private | {n.decl.name for _, n in walk(top) if isinstance(n, ir.DeclStmt) and n.decl.name}
    writes = _written(top)
    out: list[_Touch] = []

    def visit(node: Any, loops: tuple[ir.For, ...]) -> bool:
        if isinstance(node, ir.For):
            if node is not top and mapping(node) is not None:
                return False
            loops = loops + (node,)
        if isinstance(node, ir.Call) and node.name not in _PURE:
            return False
        if isinstance(node, ir.Unop) and node.op in ("&", "*"):
            return False
        if isinstance(node, ir.Index):
            base, index = chain(node)
            if not isinstance(base, ir.Var):
                return False
            if base.name not in local:
                out.append(_Touch(base.name, tuple(index), id(node) in writes, loops))
            return all(visit(i, loops) for i in index)
        return all(visit(c, loops) for _, c in children(node))
    return _Phase(top, tuple(out), frozenset(bound)) if visit(top, ()) else None


def _apart(a: _Touch, b: _Touch, first: ir.For, second: ir.For, rename: dict[str, ir.Expr]) -> bool:
    """Whether the accesses, `b` by a thread of `second` (its names renamed),
    meet only within a warp."""
    if len(a.index) != len(b.index):
        return False
    tm = Terms("warpsync")
    facts = loop_facts(tm, a.loops, {}) + loop_facts(tm, b.loops, rename)
    same = [tm.term(x) == tm.term(subst(y, rename)) for x, y in zip(a.index, b.index)]
    mine, theirs = tm.term(thread_position(first)), tm.term(subst(thread_position(second), rename))
    return proves(mine / WARP == theirs / WARP, facts + same + tm.facts + [mine >= 0, theirs >= 0])


def warp_local(first: ir.For, second: ir.For, private: set[str], uniform: set[str]) -> bool:
    """Whether the phase `second` may follow the phase `first` after a
    `__syncwarp()` only (see the module)."""
    p, q = _phase(first, private), _phase(second, private)
    if p is None or q is None:
        return False
    rename = {n: ir.Var(f"{n}'") for n in q.bound}
    for phase in (p, q):  # indices and loop bounds: the same value for every thread, or the phase's own
        named = free_vars(tuple(i for t in phase.touches for i in t.index)) \
            | free_vars(tuple(x for t in phase.touches for lp in t.loops for x in (lp.start, lp.stop, lp.step)))
        if not named - phase.bound <= uniform:
            return False
    return all(_apart(a, b, first, second, rename) for a in p.touches for b in q.touches
               if a.array == b.array and (a.write or b.write))
