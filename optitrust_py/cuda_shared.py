"""Where a kernel's shared arrays lie in shared memory.

Shared memory bounds how many blocks an SM holds, so two arrays that are
never live at once share bytes: a tile of K that the scores are done with
and the tile of V staged next, say. Two arrays declared in the same block
of statements may overlap when every use of one comes before every use of
the other with a `__syncthreads()` of that block between them (each
thread's last access of the first is over before any thread touches the
second), and, if that block can run again (a loop body, or a branch of
one), with one after the second's last use or before the first's first
use as well (the next run's accesses of the first wait for the second's).
Arrays of different blocks are judged alike in the innermost block that
holds both, an array of a nested block used by the statement that holds
it, and done with there when a barrier of the nested block follows its
last use: a tile of a loop's body, whose body ends with a barrier, and a
tile staged after the loop share bytes (the attention output tile copied
out through shared memory takes the bytes of the key blocks' tiles).
Anything else keeps its own bytes.
The arrays then become pointers into one buffer of bytes, static when it
fits in the 48 KB a block may declare statically, else dynamic (the
launch asks for its size), whether or not any bytes are shared: with the
gqa chunks' tiles declared as separate `__shared__` arrays, nvcc 12 gave
the kernel 255 registers and 1.2 KB of spills, against 39 registers and
none for the same code through one buffer (three times slower on the
H100).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Optional

from . import ir
from .names import free_vars
from .tree import children, map_children

STATIC_SHARED = 48 * 1024
SHARED_BUFFER = "otp_smem"
# 16-byte aligned shared arrays: nvcc then merges four neighbouring float
# reads of an unrolled loop into one 16-byte shared load (ld.shared.v4)
SHARED_ALIGN = "__align__(16)"
SYNC = ir.ExprStmt(ir.Call(ir.Var("__syncthreads"), ()))
_ELEM_BYTES = {"float": 4, "int": 4, "unsigned": 4, "double": 8, "char": 1, "short": 2, "long": 8, "int8_t": 1,
               "uint8_t": 1, "int16_t": 2, "int32_t": 4, "uint32_t": 4, "int64_t": 8, "_Float16": 2, "__half": 2,
               "__nv_bfloat16": 2, "otp_bf16": 2}


@dataclasses.dataclass(frozen=True)
class _Span:
    """Where an array is used in one statement list: the list, the first
    and last statements that use it (for a list enclosing the array's own,
    the statement that holds it), the list's barriers, and whether the list
    may run again (not the kernel's own)."""

    list: int
    first: int
    last: int
    syncs: tuple[int, ...]
    again: bool
    fenced: bool = False  # a barrier inside the statement that holds the array follows its last use there


@dataclasses.dataclass(frozen=True)
class _Array:
    decl: ir.Decl
    bytes: int
    spans: tuple[_Span, ...]  # from the kernel's statement list down to the one that declares it

    def before(self, other: "_Array") -> bool:
        """Every use of self is over, at a barrier, before any use of other,
        run after run, judged in the innermost statement list holding both:
        an array of a loop's body is done with once the loop is over."""
        common = [(a, b) for a, b in zip(self.spans, other.spans) if a.list == b.list]
        mine, theirs = common[-1]
        if mine.last >= theirs.first:
            return False
        between = mine.fenced or any(mine.last < s < theirs.first for s in mine.syncs)
        wraps = any(s > theirs.last or s < mine.first for s in mine.syncs)
        return between and (wraps or not mine.again)


def _shared_bytes(d: ir.Decl) -> Optional[int]:
    """The size of a shared array of constant dimensions and known element type, else None."""
    n, t = 1, d.type
    while isinstance(t, ir.Array):
        n, t = n * int(t.size.text), t.of  # type: ignore[union-attr]
    names = getattr(t, "names", ())
    return n * _ELEM_BYTES[names[-1]] if names and names[-1] in _ELEM_BYTES else None


def _is_shared(s: Any) -> bool:
    return isinstance(s, ir.DeclStmt) and "__shared__" in s.decl.storage


def _blocks(node: Any) -> list[ir.Block]:
    """The statement lists right inside `node` (a loop's body, a branch), not those nested deeper."""
    if isinstance(node, ir.Block):
        return [node]
    return [b for _, c in children(node) for b in _blocks(c)]


def _fences(spans: tuple[_Span, ...]) -> tuple[_Span, ...]:
    """The spans with `fenced` set where a barrier of a list below follows
    the array's last use in it (a loop body ending with a barrier)."""
    out, fenced = list(spans), False
    for i in range(len(spans) - 2, -1, -1):
        fenced = fenced or any(s > spans[i + 1].last for s in spans[i + 1].syncs)
        out[i] = dataclasses.replace(spans[i], fenced=fenced)
    return tuple(out)


def _arrays(stmts: tuple[ir.Stmt, ...]) -> Optional[list[_Array]]:
    """The shared arrays with their live ranges, in declaration order; None
    when one has a size that is not known."""
    out: list[_Array] = []
    lists = itertools.count()

    def visit(body: tuple[ir.Stmt, ...], again: bool, above: tuple[_Span, ...]) -> bool:
        at = next(lists)
        syncs = tuple(k for k, s in enumerate(body) if s == SYNC)
        for k, s in enumerate(body):
            if _is_shared(s):
                size = _shared_bytes(s.decl)
                if size is None:
                    return False
                uses = [j for j, u in enumerate(body) if j != k and s.decl.name in free_vars(u)] or [k]
                out.append(_Array(s.decl, -(-size // 16) * 16,
                                  _fences(above + (_Span(at, uses[0], uses[-1], syncs, again),))))
            for block in _blocks(s):
                if not visit(block.stmts, True, above + (_Span(at, k, k, syncs, again),)):
                    return False
        return True
    return out if visit(stmts, False, ()) else None


def _offsets(arrays: list[_Array]) -> dict[int, int]:
    """First fit: each array at the lowest offset clear of the arrays placed
    before it that it may be live with."""
    placed: list[tuple[_Array, int]] = []
    for a in arrays:
        live = [(b, at) for b, at in placed if not (a.before(b) or b.before(a))]
        at = 0
        for b, b_at in sorted(live, key=lambda p: p[1]):
            if at < b_at + b.bytes and b_at < at + a.bytes:
                at = b_at + b.bytes
        placed.append((a, at))
    return {id(a.decl): at for a, at in placed}  # by declaration: two blocks may each declare a name


def layout_shared(stmts: tuple[ir.Stmt, ...]) -> tuple[tuple[ir.Stmt, ...], int]:
    """The kernel's statements with its shared arrays as pointers into one
    buffer, and the bytes of dynamic shared memory the launch asks for (0
    for a static buffer or none)."""
    arrays = _arrays(stmts)
    if not arrays:
        return stmts, 0
    offsets = _offsets(arrays)
    total = max(offsets[id(a.decl)] + a.bytes for a in arrays)

    def pointer(node: Any) -> Any:
        if _is_shared(node):
            d = node.decl
            t = d.type.of if isinstance(d.type, ir.Array) else d.type
            at = ir.Binop("+", ir.Var(SHARED_BUFFER), ir.Const(str(offsets[id(d)])))
            return dataclasses.replace(node, decl=dataclasses.replace(
                d, type=ir.Ptr(t), storage=tuple(x for x in d.storage if x not in ("__shared__", SHARED_ALIGN)),
                init=ir.Cast(ir.Ptr(t), at)))
        return map_children(node, pointer)
    dynamic = total > STATIC_SHARED
    buffer = ir.Opaque(f"extern __shared__ {SHARED_ALIGN} unsigned char {SHARED_BUFFER}[];" if dynamic else
                       f"__shared__ {SHARED_ALIGN} unsigned char {SHARED_BUFFER}[{total}];")
    return (buffer,) + tuple(pointer(s) for s in stmts), total if dynamic else 0
