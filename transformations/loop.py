"""Loop transformations: tile, swap, fission."""
from __future__ import annotations

import dataclasses
from typing import Optional

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import (declared_names, free_vars, fresh_name, has_side_effects, is_identifier,
                                writes_of)
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, block_of, children, get, replace, splice

ONE = ir.Const("1")
TILE_MODES = ("divides", "min", "guard")


def _where(res: Resolver, path: Path, loop: ir.For) -> str:
    return f"for {loop.index} (line {res.line(path)})"


def _in_block(name: str, res: Resolver, path: Path, loop: ir.For) -> tuple[Path, int]:
    try:
        return block_of(path)
    except ValueError:
        raise TransformError(f"{name}: {_where(res, path, loop)} is not a statement of a block", loop.loc) from None


def _bounds(loop: ir.For) -> tuple[ir.Expr, ...]:
    return (loop.start, loop.stop, loop.step)


def _check_bounds_stable(name: str, res: Resolver, path: Path, loop: ir.For, *bodies: ir.Block) -> None:
    """The loop's bounds must not be changed by the loop bodies nor have
    side effects: transformations evaluate them a different number of times."""
    for e in _bounds(loop):
        if has_side_effects(e):
            raise TransformError(f"{name}: the bounds of {_where(res, path, loop)} have side effects "
                                 f"('{expr_text(e)}'); bind them to a variable first", loop.loc)
    written = set().union(*(writes_of(b) for b in bodies)) if bodies else set()
    hit = sorted(written & set().union(*(free_vars(e) for e in _bounds(loop))))
    if hit:
        raise TransformError(f"{name}: the body writes '{hit[0]}', which the bounds of "
                             f"{_where(res, path, loop)} read", loop.loc)


def _minus(b: ir.Expr, a: ir.Expr) -> ir.Expr:
    return b if a == ir.Const("0") else ir.Binop("-", b, a)


@primitive
def tile(program: ir.Program, target: str, size: int, outer: Optional[str] = None,
         mode: str = "divides") -> Rewrite:
    """Split the iterations of a unit-step loop into tiles of `size`.

    Before (`loop.tile("matmul > for i", 32)`):

        for (int i = 0; i < M; i++) {
          body(i);
        }

    After, in mode "divides" (obligation: 32 divides M - 0):

        for (int bi = 0; bi < M; bi += 32) {
          for (int i = bi; i < bi + 32; i++) {
            body(i);
          }
        }

    Mode "min" bounds the last tile instead: `i < (bi + 32 < M ? bi + 32 : M)`;
    mode "guard" keeps `i < bi + 32` and wraps the body in `if (i < M) {...}`.
    The inner loop keeps the index, so the body is unchanged; the outer index
    is `outer`, by default `b<index>` made fresh. A loop with pragmas is
    refused (tile first, then parallelize); its contract stays with the inner
    loop, which iterates the same indices.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    if isinstance(size, bool) or not isinstance(size, int):
        raise TransformError(f"loop.tile: the tile size must be a positive integer, got {size!r}", loop.loc)
    if size <= 0:
        raise TransformError(f"loop.tile: the tile size must be a positive integer, got {size}", loop.loc)
    if mode not in TILE_MODES:
        raise TransformError(f"loop.tile: mode must be one of {', '.join(TILE_MODES)}, got {mode!r}", loop.loc)
    if loop.step != ONE:
        raise TransformError(f"loop.tile: {where} has step '{expr_text(loop.step)}'; only unit-step loops "
                             f"can be tiled", loop.loc)
    if loop.pragmas:
        raise TransformError(f"loop.tile: {where} has pragmas (#pragma {loop.pragmas[0]}); tile it before "
                             f"annotating it", loop.loc)
    _check_bounds_stable("loop.tile", res, m.path, loop, loop.body)
    fn = program.items[m.path[0][1]]
    taken = declared_names(fn) | free_vars(fn)
    if outer is None:
        outer = fresh_name(taken, "b" + loop.index)
    elif not is_identifier(outer):
        raise TransformError(f"loop.tile: {outer!r} is not a valid C name for the outer index", loop.loc)
    elif outer in taken:
        raise TransformError(f"loop.tile: the outer index name '{outer}' is already used in {m.function}",
                             loop.loc)
    bi = ir.Var(outer)
    end = ir.Binop("+", bi, ir.Const(str(size)))
    body = loop.body
    obligations: list[Obligation] = []
    if mode == "divides":
        inner_stop: ir.Expr = end
        extent = _minus(loop.stop, loop.start)
        obligations.append(Obligation(
            "divides", f"{size} divides {expr_text(extent)} (the iteration count of {where})",
            m.function, (m.path,), (ir.Const(str(size)), extent)))
    elif mode == "min":
        inner_stop = ir.Ternary(ir.Binop("<", end, loop.stop), end, loop.stop)
    else:
        inner_stop = end
        body = ir.Block((ir.If(ir.Binop("<", ir.Var(loop.index), loop.stop), loop.body),))
    inner = dataclasses.replace(loop, start=bi, stop=inner_stop, body=body, inclusive=False, pragmas=())
    new = ir.For(outer, loop.start, loop.stop, ir.Block((inner,)), ir.Const(str(size)), loop.itype, False,
                 (), (), loop.loc)
    return Rewrite(replace(program, m.path, new), tuple(obligations))


@primitive
def swap(program: ir.Program, target: str) -> Rewrite:
    """Swap the two loops of a perfect nest; `target` names the outer one.

    Before (`loop.swap("matmul > for i")`):

        for (int i = 0; i < M; i++) {
          for (int j = 0; j < N; j++) {
            body(i, j);
          }
        }

    After (obligation swap_loops on the new outer loop):

        for (int j = 0; j < N; j++) {
          for (int i = 0; i < M; i++) {
            body(i, j);
          }
        }

    Each loop keeps its pragmas. Refused when the inner loop is not the only
    statement of the outer body, when the inner bounds depend on the outer
    index (triangular nest), when the body writes what the bounds read, or
    when a loop has a contract or a `collapse` pragma, which would no longer
    describe the loop it sits on.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    outer: ir.For = m.node
    where = _where(res, m.path, outer)
    stmts = outer.body.stmts
    inner_path = m.path + (("body", None), ("stmts", 0))
    if not stmts or not isinstance(stmts[0], ir.For):
        first = "its body does not start with a loop" if stmts else "its body is empty"
        raise TransformError(f"loop.swap: {where} is not a perfect loop nest: {first}", outer.loc)
    inner: ir.For = stmts[0]
    inner_where = _where(res, inner_path, inner)
    if len(stmts) != 1:
        raise TransformError(f"loop.swap: {inner_where} is not the only statement in the body of {where}",
                             outer.loc)
    for b in _bounds(inner):
        if outer.index in free_vars(b):
            raise TransformError(f"loop.swap: the bounds of {inner_where} depend on the index of {where} "
                                 f"('{expr_text(b)}'): the nest is not rectangular", inner.loc)
    for b in _bounds(outer):
        if inner.index in free_vars(b):
            raise TransformError(f"loop.swap: the bounds of {where} use '{inner.index}', which the index of "
                                 f"{inner_where} would capture", outer.loc)
    _check_bounds_stable("loop.swap", res, m.path, outer, inner.body)
    _check_bounds_stable("loop.swap", res, inner_path, inner, inner.body)
    for loop, p in ((outer, m.path), (inner, inner_path)):
        if loop.contract:
            raise TransformError(f"loop.swap: {_where(res, p, loop)} has a loop contract, which would not "
                                 f"describe the swapped loop; remove it (level 3 infers loop contracts)", loop.loc)
        for pr in loop.pragmas:
            if "collapse" in pr:
                raise TransformError(f"loop.swap: {_where(res, p, loop)} has '#pragma {pr}', which is about "
                                     f"the nest and would be misplaced", loop.loc)
    new_inner = dataclasses.replace(outer, body=inner.body)
    new_outer = dataclasses.replace(inner, body=ir.Block((new_inner,), outer.body.loc))
    ob = Obligation("swap_loops", f"the iterations of for {inner.index} and for {outer.index} "
                    f"can be interchanged", m.function, (m.path,))
    return Rewrite(replace(program, m.path, new_outer), (ob,))


def _escapes(stmts: tuple[ir.Stmt, ...]) -> Optional[ir.Stmt]:
    """A statement that leaves or skips the rest of the enclosing loop body:
    break/continue not inside a nested loop (or switch, for break), return,
    goto, or a label."""
    def visit(n: object, in_loop: bool, in_switch: bool) -> Optional[ir.Stmt]:
        if isinstance(n, ir.Return) or isinstance(n, ir.Label) or isinstance(n, ir.Jump) and n.kind == "goto":
            return n  # type: ignore[return-value]
        if isinstance(n, ir.Jump):
            if n.kind == "break" and not (in_loop or in_switch):
                return n
            if n.kind == "continue" and not in_loop:
                return n
            return None
        loop_here = isinstance(n, (ir.For, ir.GenericFor, ir.While, ir.DoWhile))
        switch_here = isinstance(n, ir.Switch)
        for _, c in children(n):
            hit = visit(c, in_loop or loop_here, in_switch or switch_here)
            if hit is not None:
                return hit
        return None

    for s in stmts:
        hit = visit(s, False, False)
        if hit is not None:
            return hit
    return None


@primitive
def fission(program: ir.Program, target: str) -> Rewrite:
    """Split a loop in two at a point of its body.

    Before (`loop.fission("matmul > for j > after 'C[i * N + j] = 0.0f'")`):

        for (int j = 0; j < N; j++) {
          C[i * N + j] = 0.0f;
          for (int k = 0; k < K; k++) { ... }
        }

    After (obligation fission on the two loops):

        for (int j = 0; j < N; j++) {
          C[i * N + j] = 0.0f;
        }
        for (int j = 0; j < N; j++) {
          for (int k = 0; k < K; k++) { ... }
        }

    The point must be directly in the loop's body, strictly between two
    statements. Refused when the first part declares a local that the second
    uses, when the body leaves the loop early (break, continue, return, goto),
    when it writes what the bounds read, or when the loop has a contract.
    Both loops keep the pragmas.
    """
    res = Resolver(program)
    pt = res.point(target)
    loop_path = pt.block[:-1]
    if not pt.block or pt.block[-1] != ("body", None) or not isinstance(get(program, loop_path), ir.For):
        raise TransformError(f"loop.fission: the point {target!r} (line {pt.line}) is not directly in the body "
                             f"of a canonical for loop")
    loop: ir.For = get(program, loop_path)
    where = _where(res, loop_path, loop)
    stmts = loop.body.stmts
    if pt.index <= 0 or pt.index >= len(stmts):
        edge = "start" if pt.index <= 0 else "end"
        raise TransformError(f"loop.fission: the point {target!r} is at the {edge} of the body of {where}; "
                             f"there would be an empty loop", loop.loc)
    _in_block("loop.fission", res, loop_path, loop)
    first, second = stmts[:pt.index], stmts[pt.index:]
    declared = {s.decl.name for s in first if isinstance(s, ir.DeclStmt) and s.decl.name}
    crossing = sorted(declared & free_vars(second))
    if crossing:
        decl = next(s for s in first if isinstance(s, ir.DeclStmt) and s.decl.name == crossing[0])
        line = res.line(loop_path + (("body", None), ("stmts", first.index(decl))))
        raise TransformError(f"loop.fission: '{crossing[0]}' is declared before the cut (line {line}) and used "
                             f"after it, in the body of {where}; hoist it out of the loop first", decl.loc)
    esc = _escapes(stmts)
    if esc is not None:
        raise TransformError(f"loop.fission: '{stmt_text(esc).splitlines()[0]}' leaves the body of {where} "
                             f"early", getattr(esc, "loc", None) or loop.loc)
    _check_bounds_stable("loop.fission", res, loop_path, loop, loop.body)
    if loop.contract:
        raise TransformError(f"loop.fission: {where} has a loop contract, which would have to be split; "
                             f"remove it (level 3 infers loop contracts)", loop.loc)
    a = dataclasses.replace(loop, body=ir.Block(first, loop.body.loc))
    b = dataclasses.replace(loop, body=ir.Block(second))
    new = splice(program, loop_path, (a, b))
    block, k = block_of(loop_path)
    ob = Obligation("fission", f"{where} can run its first {len(first)} statement(s) for all iterations "
                    f"before the rest", pt.function, (loop_path, block + (("stmts", k + 1),)))
    return Rewrite(new, (ob,))
