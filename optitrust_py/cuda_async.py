"""Asynchronous tile copies (gpu.async_copy): a copy from global memory into
a shared array that runs in the background while the block computes.

Why: a block that stages its K and V tiles with plain loads waits for each
tile before it can start the next phase, so the SM's memory pipe idles
while the block computes. With `cp.async` (`__pipeline_memcpy_async`) the
copy goes from global to shared memory without passing through registers,
and the block moves on until it needs the tile.

The C program keeps the copy as an ordinary loop (gcc, --exec and the
levels read a copy that is complete where it stands), so the printer must
make the CUDA program agree: every thread commits the copies of a phase as
one group right after the phase, and before the barrier that opens the
first statements to touch a destination (up to and including the next
phase), it waits until that group is complete
(`__pipeline_wait_prior(n)`, n the groups issued after it, which may stay
in flight). A group whose destination nothing after it in its statement
list touches is waited for at the first barrier (its bytes may go to
another array from there, cuda_shared), and nothing stays in flight past
the end of its list. Refused (CudaError): a destination that is not a
shared array of the block, a phase that touches a destination outside its
copy, a kernel that writes a source (the copy may read it late).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from . import ir
from .cuda_map import async_copy, mapping
from .names import INCDEC, free_vars, lvalue_bases
from .tree import map_children, walk

COMMIT = ir.ExprStmt(ir.Call(ir.Var("__pipeline_commit"), ()))


def _wait(in_flight: int) -> ir.Stmt:
    return ir.ExprStmt(ir.Call(ir.Var("__pipeline_wait_prior"), (ir.Const(str(in_flight)),)))


def memcpy_async(dst: ir.Expr, src: ir.Expr, size: int) -> ir.Stmt:
    """`__pipeline_memcpy_async(&dst, &src, size);`."""
    return ir.ExprStmt(ir.Call(ir.Var("__pipeline_memcpy_async"),
                               (ir.Unop("&", dst), ir.Unop("&", src), ir.Const(str(size)))))


def _copies(node: Any) -> list[ir.Assign]:
    return [n.body.stmts[0].expr for _, n in walk(node) if async_copy(n)]


def _base(e: ir.Expr) -> str:
    return next(iter(lvalue_bases(e)))


def check_sources(body: ir.Block, refuse: Callable[[Any, str], Exception]) -> None:
    """No statement of the kernel writes an array an asynchronous copy reads."""
    sources = {_base(c.rhs) for c in _copies(body)}
    for _, n in walk(body):
        e = n.expr if isinstance(n, ir.ExprStmt) else None
        target = e.lhs if isinstance(e, ir.Assign) else e.arg if isinstance(e, ir.Unop) and e.op in INCDEC else None
        if target is not None and lvalue_bases(target) & sources:
            raise refuse(n, f"writes {', '.join(sorted(lvalue_bases(target) & sources))}, which an asynchronous "
                            f"copy of the kernel reads (gpu.async_copy): the copy could read it after the write")


@dataclasses.dataclass
class Groups:
    """The copy groups in flight in one statement list of a block, oldest first."""
    shared: set[str]
    refuse: Callable[[Any, str], Exception]
    pending: list[frozenset[str]] = dataclasses.field(default_factory=list)

    def issue(self, phase: ir.Stmt) -> list[ir.Stmt]:
        """After a phase: its copies' group committed, if it has copies."""
        copies = _copies(phase)
        if not copies:
            return []
        dests = frozenset(_base(c.lhs) for c in copies)
        for name in sorted(dests - self.shared):
            raise self.refuse(phase, f"copies asynchronously into '{name}', which is not a shared array of the "
                                     f"block (cp.async writes shared memory only)")
        stripped = _without_copies(phase)
        for name in sorted(dests & free_vars(stripped)):
            raise self.refuse(phase, f"touches '{name}' besides copying it asynchronously: the copy is only "
                                     f"complete after the phase's barrier")
        self.pending.append(dests)
        return [COMMIT]

    def before_barrier(self, window: tuple[ir.Stmt, ...], rest: tuple[ir.Stmt, ...]) -> list[ir.Stmt]:
        """The wait before a barrier: for the groups whose destinations the
        `window` (the statements up to the next phase) touches, or that
        nothing in `rest` touches any more."""
        used, later = free_vars(window), free_vars(rest)
        needed = [k for k, dests in enumerate(self.pending) if dests & used or not dests & later]
        if not needed:
            return []
        last = needed[-1]
        self.pending = self.pending[last + 1:]
        return [_wait(len(self.pending))]

    def at_end(self) -> list[ir.Stmt]:
        """Nothing in flight past the end of the list."""
        if not self.pending:
            return []
        self.pending = []
        return [_wait(0)]


def window(stmts: tuple[ir.Stmt, ...], k: int) -> tuple[ir.Stmt, ...]:
    """stmts[k:] up to and including the next phase (a barrier follows it)."""
    for j in range(k, len(stmts)):
        if mapping(stmts[j]) is not None:
            return stmts[k:j + 1]
    return stmts[k:]


def _without_copies(node: Any) -> Any:
    if async_copy(node):
        return ir.Block(())
    return map_children(node, _without_copies)
