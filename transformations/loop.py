"""Loop transformations: tile, swap, fission, fusion, unroll, split, move_out, hoist, shift, scale,
collapse, unswitch, reorder."""
from __future__ import annotations

import dataclasses
from typing import Optional

from optitrust_py import ir
from optitrust_py.errors import SpecError, TransformError
from optitrust_py.names import (PURE_FUNCTIONS, declared_names, free_vars, fresh_name, has_side_effects,
                                is_identifier, subst, writes_of)
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text
from optitrust_py.session import Rewrite, composite, current_session, primitive
from optitrust_py.smt import Terms, proves
from optitrust_py.spec import parse_formula
from optitrust_py.target import Match, Resolver, parse as parse_target
from optitrust_py.tree import Path, block_of, children, get, replace, splice, walk
from optitrust_py.typeof import unqualified, visible_names

ONE = ir.Const("1")
TILE_MODES = ("divides", "min", "guard")
MAX_FULL_UNROLL = 256  # full unrolling beyond this bloats the code for no gain


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


def _fresh_local(name: str, role: str, requested: Optional[str], base: str, program: ir.Program, path: Path,
                 function: str, loc: Optional[ir.Loc]) -> str:
    """The name of a new variable of the function at `path`: `requested`,
    which must be a C name unused in the function, or a fresh `base`."""
    fn = program.items[path[0][1]]
    taken = declared_names(fn) | free_vars(fn)
    if requested is None:
        return fresh_name(taken, base)
    if not is_identifier(requested):
        raise TransformError(f"{name}: {requested!r} is not a valid C name for the {role}", loc)
    if requested in taken:
        raise TransformError(f"{name}: the {role} name '{requested}' is already used in {function}", loc)
    return requested


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
    _require_unit_step("loop.tile", "tiled", where, loop)
    if loop.pragmas:
        raise TransformError(f"loop.tile: {where} has pragmas (#pragma {loop.pragmas[0]}); tile it before "
                             f"annotating it", loop.loc)
    _check_bounds_stable("loop.tile", res, m.path, loop, loop.body)
    outer = _fresh_local("loop.tile", "outer index", outer, "b" + loop.index, program, m.path, m.function,
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


def _perfect_nest(name: str, res: Resolver, path: Path, outer: ir.For) -> tuple[ir.For, Path]:
    """The inner loop of a perfect, rectangular nest of two loops, and its path."""
    where = _where(res, path, outer)
    stmts = outer.body.stmts
    inner_path = path + (("body", None), ("stmts", 0))
    if not stmts or not isinstance(stmts[0], ir.For):
        first = "its body does not start with a loop" if stmts else "its body is empty"
        raise TransformError(f"{name}: {where} is not a perfect loop nest: {first}", outer.loc)
    inner: ir.For = stmts[0]
    inner_where = _where(res, inner_path, inner)
    if len(stmts) != 1:
        raise TransformError(f"{name}: {inner_where} is not the only statement in the body of {where}", outer.loc)
    for b in _bounds(inner):
        if outer.index in free_vars(b):
            raise TransformError(f"{name}: the bounds of {inner_where} depend on the index of {where} "
                                 f"('{expr_text(b)}'): the nest is not rectangular", inner.loc)
    for b in _bounds(outer):
        if inner.index in free_vars(b):
            raise TransformError(f"{name}: the bounds of {where} use '{inner.index}', which the index of "
                                 f"{inner_where} would capture", outer.loc)
    return inner, inner_path


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
    inner, inner_path = _perfect_nest("loop.swap", res, m.path, outer)
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


def _refuse_early_exit(name: str, where: str, stmts: tuple[ir.Stmt, ...], loop: ir.For) -> None:
    esc = _escapes(stmts)
    if esc is not None:
        raise TransformError(f"{name}: '{stmt_text(esc).splitlines()[0]}' leaves the body of {where} early",
                             getattr(esc, "loc", None) or loop.loc)


def _refuse_annotated(name: str, advice: str, where: str, loop: ir.For) -> None:
    """Pragmas and a loop contract describe one loop: a transformation that
    turns it into something else cannot keep them."""
    if loop.pragmas:
        raise TransformError(f"{name}: {where} has pragmas (#pragma {loop.pragmas[0]}); {advice}", loop.loc)
    if loop.contract:
        raise TransformError(f"{name}: {where} has a loop contract, which would no longer describe a loop; "
                             f"remove it (level 3 infers loop contracts)", loop.loc)


def _require_unit_step(name: str, verb: str, where: str, loop: ir.For) -> None:
    if loop.step != ONE:
        raise TransformError(f"{name}: {where} has step '{expr_text(loop.step)}'; only unit-step loops "
                             f"can be {verb}", loop.loc)


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
    """Split a loop in two at a point of its body, or, when `target` names
    the loop itself, into one loop per instruction of its body.

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

    Between all instructions (`loop.fission("softmax > for j#2")`):

        for (int j = 0; j < C; j++) {        for (int j = 0; j < C; j++) {
          y[i * C + j] = expf(...);      ->    y[i * C + j] = expf(...);
          sum += y[i * C + j];               }
        }                                    for (int j = 0; j < C; j++) {
                                               sum += y[i * C + j];
                                             }

    A loop of n instructions becomes n loops, with one fission obligation
    for each pair of them (part p, part q > p: no dependence from a later
    iteration of p to an earlier one of q), which is exactly the condition.
    A point must be directly in the loop's body, strictly between two
    statements. Refused when a part declares a local that a later part uses
    (hoist it first with `loop.hoist`), when the body has fewer than two
    instructions, when it leaves the loop early (break, continue, return,
    goto), when it writes what the bounds read, or when the loop has a
    contract. Every loop keeps the pragmas.
    """
    res = Resolver(program)
    if parse_target(target)[-1].position:
        pt = res.point(target)
        loop_path, function = pt.block[:-1], pt.function
        if not pt.block or pt.block[-1] != ("body", None) or not isinstance(get(program, loop_path), ir.For):
            raise TransformError(f"loop.fission: the point {target!r} (line {pt.line}) is not directly in the "
                                 f"body of a canonical for loop")
        loop: ir.For = get(program, loop_path)
        if pt.index <= 0 or pt.index >= len(loop.body.stmts):
            edge = "start" if pt.index <= 0 else "end"
            raise TransformError(f"loop.fission: the point {target!r} is at the {edge} of the body of "
                                 f"{_where(res, loop_path, loop)}; there would be an empty loop", loop.loc)
        cuts: tuple[int, ...] = (pt.index,)
    else:
        m = res.one(target, "loop (to split between all its instructions) or a point 'before/after ...'",
                    (ir.For,))
        loop_path, function, loop = m.path, m.function, m.node
        if len(loop.body.stmts) < 2:
            raise TransformError(f"loop.fission: the body of {_where(res, loop_path, loop)} has fewer than two "
                                 f"instructions; there is nothing to split", loop.loc)
        cuts = tuple(range(1, len(loop.body.stmts)))
    where = _where(res, loop_path, loop)
    stmts = loop.body.stmts
    _in_block("loop.fission", res, loop_path, loop)
    bounds = tuple(zip((0,) + cuts, cuts + (len(stmts),)))
    for k, s in enumerate(stmts):
        later = stmts[next(b for a, b in bounds if a <= k < b):]
        if isinstance(s, ir.DeclStmt) and s.decl.name and s.decl.name in free_vars(later):
            cut = "the cut" if len(cuts) == 1 else "a cut"
            raise TransformError(f"loop.fission: '{s.decl.name}' is declared before {cut} (line "
                                 f"{res.line(loop_path + (('body', None), ('stmts', k)))}) and used after it, in "
                                 f"the body of {where}; hoist it out of the loop first", s.loc)
    _refuse_early_exit("loop.fission", where, stmts, loop)
    _check_bounds_stable("loop.fission", res, loop_path, loop, loop.body)
    if loop.contract:
        raise TransformError(f"loop.fission: {where} has a loop contract, which would have to be split; "
                             f"remove it (level 3 infers loop contracts)", loop.loc)
    parts = tuple(dataclasses.replace(loop, body=ir.Block(stmts[a:b], loop.body.loc if a == 0 else None))
                  for a, b in bounds)
    block, k = block_of(loop_path)

    def span(p: int) -> str:
        a, b = bounds[p]
        return f"statement {a + 1}" if b == a + 1 else f"statements {a + 1}-{b}"

    obs = tuple(Obligation("fission", f"in {where}, {span(p)} can run for all iterations before {span(q)}",
                           function, (block + (("stmts", k + p),), block + (("stmts", k + q),)))
                for p in range(len(parts)) for q in range(p + 1, len(parts)))
    return Rewrite(splice(program, loop_path, parts), obs)


# ----------------------------------------------------------------- fusion


def _next_stmt(name: str, res: Resolver, path: Path, loop: ir.For, program: ir.Program) -> tuple[Path, ir.Stmt]:
    block, k = _in_block(name, res, path, loop)
    stmts = get(program, block).stmts
    if k + 1 >= len(stmts):
        raise TransformError(f"{name}: {_where(res, path, loop)} is the last statement of its block; there is "
                             f"no loop after it", loop.loc)
    return block + (("stmts", k + 1),), stmts[k + 1]


def _top_decls(body: ir.Block) -> list[str]:
    return [s.decl.name for s in body.stmts if isinstance(s, ir.DeclStmt) and s.decl.name]


def _same_value(x: ir.Expr, y: ir.Expr) -> bool:
    """Two side-effect-free integer expressions equal whatever their
    variables (`bi + 64` and `64 + bi`), C's / and % included."""
    if has_side_effects(x) or has_side_effects(y):
        return False
    terms = Terms("fusion")
    return proves(terms.term(x) == terms.term(y), terms.facts)


@primitive
def fusion(program: ir.Program, target: str) -> Rewrite:
    """Fuse a loop with the loop right after it: one loop running both bodies.

    Before (`loop.fusion("matmul > for j")`, after a fission of matmul):

        for (int j = 0; j < N; j++) {
          C[i * N + j] = 0.0f;
        }
        for (int j = 0; j < N; j++) {
          for (int k = 0; k < K; k++) { ... }
        }

    After (obligation fusion on the fused loop):

        for (int j = 0; j < N; j++) {
          C[i * N + j] = 0.0f;
          for (int k = 0; k < K; k++) { ... }
        }

    The two loops must be consecutive statements of one block with the same
    start, stop, step (equal as integer expressions, `bi + 64` and `64 +
    bi`, after renaming the second loop's index to the first's), index type
    and pragmas. Refused when
    the second loop uses a name the first body declares (or redeclares it),
    when the second body uses a variable named like the first index, when a
    body leaves the loop early (break, continue, return, goto), when a body
    writes what the bounds read, or when a loop has a contract. The claim
    left to the checker: no dependence goes from a later iteration of the
    first loop to an earlier iteration of the second.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    first: ir.For = m.node
    where = _where(res, m.path, first)
    next_path, nxt = _next_stmt("loop.fusion", res, m.path, first, program)
    if not isinstance(nxt, ir.For):
        text = stmt_text(nxt).splitlines()[0] if not isinstance(nxt, ir.Opaque) else nxt.text
        raise TransformError(f"loop.fusion: the statement after {where} is not a canonical for loop "
                             f"('{text}', line {res.line(next_path)})", first.loc)
    second: ir.For = nxt
    next_where = _where(res, next_path, second)
    renamed = second
    if second.index != first.index:
        if first.index in free_vars(second.body) | free_vars(second.stop) | free_vars(second.step):
            raise TransformError(f"loop.fusion: {next_where} uses a variable '{first.index}' that the index of "
                                 f"{where} would capture; rename one of them first", second.loc)
        sub = {second.index: ir.Var(first.index)}
        renamed = dataclasses.replace(second, index=first.index, stop=subst(second.stop, sub),
                                      step=subst(second.step, sub), body=subst(second.body, sub))
    for label, x, y in (("start", first.start, renamed.start), ("stop", first.stop, renamed.stop),
                        ("step", first.step, renamed.step)):
        if x != y and not _same_value(x, y):
            raise TransformError(f"loop.fusion: {where} and {next_where} have different ranges: {label} "
                                 f"'{expr_text(x)}' vs '{expr_text(y)}'", first.loc)
    if first.itype != second.itype:
        raise TransformError(f"loop.fusion: the indices of {where} and {next_where} have different types",
                             first.loc)
    if first.pragmas != second.pragmas:
        raise TransformError(f"loop.fusion: {where} and {next_where} have different pragmas; fuse them before "
                             f"annotating them", first.loc)
    for p, lp in ((m.path, first), (next_path, second)):
        if lp.contract:
            raise TransformError(f"loop.fusion: {_where(res, p, lp)} has a loop contract, which would have to be "
                                 f"merged; remove it (level 3 infers loop contracts)", lp.loc)
        _refuse_early_exit("loop.fusion", _where(res, p, lp), lp.body.stmts, lp)
    declared = _top_decls(first.body)
    clash = sorted(set(declared) & (free_vars(renamed.body) | set(_top_decls(renamed.body))))
    if clash:
        raise TransformError(f"loop.fusion: '{clash[0]}' is declared in the body of {where} and used or "
                             f"redeclared in the body of {next_where}; rename it first", first.loc)
    _check_bounds_stable("loop.fusion", res, m.path, first, first.body, renamed.body)
    fused = dataclasses.replace(first, body=ir.Block(first.body.stmts + renamed.body.stmts, first.body.loc))
    block, k = block_of(m.path)
    parent = get(program, block)
    new = replace(program, block, dataclasses.replace(parent, stmts=parent.stmts[:k] + (fused,)
                                                      + parent.stmts[k + 2:]))
    ob = Obligation("fusion", f"no iteration of {next_where} touches a cell that a later iteration of {where} "
                    f"writes, nor writes one that it reads (both bodies can run iteration by iteration)",
                    m.function, (m.path,))
    return Rewrite(new, (ob,))


# ----------------------------------------------------------------- unroll


def _const_offset(e: ir.Expr) -> tuple[Optional[ir.Expr], int]:
    """`e` as `rest + k` with k an integer constant (rest None when `e` is a
    constant): `bi + 4` is (bi, 4), `3 + 1` is (None, 4), `n` is (n, 0)."""
    if isinstance(e, ir.Const) and e.kind == "int":
        try:
            return None, int(e.text.rstrip("uUlL"), 0)
        except ValueError:
            return e, 0
    if isinstance(e, ir.Binop) and e.op in ("+", "-"):
        left, kl = _const_offset(e.left)
        right, kr = _const_offset(e.right)
        if right is None:
            return left, (kl + kr if e.op == "+" else kl - kr)
        if e.op == "+" and left is None:
            return right, kl + kr
    if isinstance(e, ir.Unop) and e.op == "-":
        rest, k = _const_offset(e.arg)
        if rest is None:
            return None, -k
    return e, 0


def _trip_count(loop: ir.For) -> Optional[int]:
    """The iteration count of a unit-step loop when it is a compile-time
    constant: both bounds integer literals, or `stop` is `start + C`."""
    a, ka = _const_offset(loop.start)
    b, kb = _const_offset(loop.stop)
    if a == b:
        return kb - ka
    return None


def _int(k: int) -> ir.Expr:
    return ir.Const(str(k)) if k >= 0 else ir.Unop("-", ir.Const(str(-k)))


def _plus(e: ir.Expr, k: int) -> ir.Expr:
    """`e + k`, folded with the constant `e` ends with: `_plus(i + 1, 2)` is `i + 3`."""
    rest, base = _const_offset(e)
    if rest is None:
        return _int(base + k)
    if k == 0:
        return e
    total = base + k
    if total == 0:
        return rest
    return ir.Binop("+", rest, ir.Const(str(total))) if total > 0 else ir.Binop("-", rest, ir.Const(str(-total)))


def _copies(loop: ir.For, index_values: list[ir.Expr]) -> tuple[ir.Stmt, ...]:
    """The body once per index value; each copy in its own block when the
    body declares locals."""
    wrap = bool(_top_decls(loop.body))
    out: list[ir.Stmt] = []
    for v in index_values:
        body = subst(loop.body, {loop.index: v})
        if wrap:
            out.append(ir.Block(body.stmts))
        else:
            out.extend(body.stmts)
    return tuple(out)


@primitive
def unroll(program: ir.Program, target: str, factor: Optional[int] = None) -> Rewrite:
    """Unroll a unit-step loop, fully or by a factor.

    Fully (`factor=None`), when the iteration count is a compile-time
    constant (literal bounds, or `stop` is `start + C` as after a tiling):

        for (int k = bk; k < bk + 3; k++) {       C[j] += A[bk] * B[bk];
          C[j] += A[k] * B[k];               ->   C[j] += A[bk + 1] * B[bk + 1];
        }                                         C[j] += A[bk + 2] * B[bk + 2];

    By a factor (`loop.unroll("matvec > for j", factor=4)`):

        for (int j = 0; j < N; j++) {
          y[i] += W[i * N + j] * x[j];
        }

    becomes

        for (int j = 0; j < N / 4 * 4; j += 4) {
          y[i] += W[i * N + j] * x[j];
          y[i] += W[i * N + (j + 1)] * x[j + 1];
          y[i] += W[i * N + (j + 2)] * x[j + 2];
          y[i] += W[i * N + (j + 3)] * x[j + 3];
        }
        for (int j = N / 4 * 4; j < N; j++) {
          y[i] += W[i * N + j] * x[j];
        }

    (in general the main loop stops, and the remainder starts, at
    `a + (b - a) / f * f` for a loop from a to b). Each copy of the body is
    its own block `{...}` when the body declares locals. The iterations run
    in the same order as before, so unrolling is always valid: it declares
    no obligation. Refused when the factor is not a positive integer, the
    step is not 1, the body leaves the loop early (break, continue, return,
    goto, labels), the body writes what the bounds read, or the loop has
    pragmas or a contract.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, int) or factor <= 0):
        raise TransformError(f"loop.unroll: the factor must be a positive integer (or None to unroll fully), "
                             f"got {factor!r}", loop.loc)
    _require_unit_step("loop.unroll", "unrolled", where, loop)
    _refuse_annotated("loop.unroll", "unroll it before annotating it", where, loop)
    _refuse_early_exit("loop.unroll", where, loop.body.stmts, loop)
    _check_bounds_stable("loop.unroll", res, m.path, loop, loop.body)
    if loop.index in free_vars(loop.start):
        raise TransformError(f"loop.unroll: the start of {where} uses another variable named '{loop.index}'; "
                             f"rename the index first", loop.loc)
    _in_block("loop.unroll", res, m.path, loop)
    if factor is None:
        n = _trip_count(loop)
        if n is None:
            raise TransformError(f"loop.unroll: the iteration count of {where}, from '{expr_text(loop.start)}' "
                                 f"to '{expr_text(loop.stop)}', is not a compile-time constant; give a factor",
                                 loop.loc)
        if n <= 0:
            raise TransformError(f"loop.unroll: {where} runs no iteration ({n}); there is nothing to unroll",
                                 loop.loc)
        if n > MAX_FULL_UNROLL:
            raise TransformError(f"loop.unroll: {where} runs {n} iterations; unrolling more than "
                                 f"{MAX_FULL_UNROLL} completely is refused: give a factor", loop.loc)
        new = splice(program, m.path, _copies(loop, [_plus(loop.start, k) for k in range(n)]))
        return Rewrite(new)
    i = ir.Var(loop.index)
    f = ir.Const(str(factor))
    split_at = _plus_expr(loop.start, ir.Binop("*", ir.Binop("/", _minus(loop.stop, loop.start), f), f))
    main = dataclasses.replace(loop, stop=split_at, step=f, inclusive=False,
                               body=ir.Block(_copies(loop, [_plus(i, k) for k in range(factor)]), loop.body.loc))
    rest = dataclasses.replace(loop, start=split_at, loc=None)
    return Rewrite(splice(program, m.path, (main, rest)))


def _plus_expr(a: ir.Expr, x: ir.Expr) -> ir.Expr:
    return x if a == ir.Const("0") else ir.Binop("+", a, x)


# ----------------------------------------------------------------- split


def _loop_amount(name: str, what: str, value: "int | str", program: ir.Program, path: Path, function: str,
                 loop: ir.For, where: str) -> ir.Expr:
    """An integer, or a C integer expression given as text (read as a
    contract formula), used in the header of `loop`: it must not use the
    index, have side effects, name undeclared variables or read what the
    body writes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TransformError(f"{name}: {what} must be an integer or a C expression, got {value!r}", loop.loc)
    if isinstance(value, int):
        return _int(value)
    try:
        e = parse_formula(value)
    except SpecError as err:
        raise TransformError(f"{name}: cannot read {what} {value!r}: {err.message}", loop.loc) from None
    if not isinstance(e, ir.EXPR_TYPES) or isinstance(e, ir.Binop) and e.op in _NOT_INTEGER_OPS:
        raise TransformError(f"{name}: {what} {value!r} is not an integer expression", loop.loc)
    text = expr_text(e)
    if loop.index in free_vars(e):
        raise TransformError(f"{name}: {what} '{text}' uses the index of {where}", loop.loc)
    if has_side_effects(e):
        raise TransformError(f"{name}: {what} '{text}' has side effects", loop.loc)
    fn = program.items[path[0][1]]
    unknown = sorted(free_vars(e) - declared_names(fn) - declared_names(program.items))
    if unknown:
        raise TransformError(f"{name}: {what} '{text}' uses '{unknown[0]}', which is not declared in {function}",
                             loop.loc)
    hit = sorted(writes_of(loop.body) & free_vars(e))
    if hit:
        raise TransformError(f"{name}: the body of {where} writes '{hit[0]}', which {what} '{text}' reads",
                             loop.loc)
    return e


@primitive
def split(program: ir.Program, target: str, at: "int | str") -> Rewrite:
    """Split the range of a unit-step loop in two at `at`.

    Before (`loop.split("matvec > for j", "N / 2")`):

        for (int j = 0; j < N; j++) {
          body(j);
        }

    After (obligation in_range: 0 <= N / 2 <= N):

        for (int j = 0; j < N / 2; j++) {
          body(j);
        }
        for (int j = N / 2; j < N; j++) {
          body(j);
        }

    `at` is an integer or a C expression (read as a contract formula). The
    split keeps the iterations and their order only when start <= at <= stop,
    which is left to the checker. Refused when `at` uses the loop index or a
    name that does not exist, when the body writes what `at` or the bounds
    read, when the step is not 1, when the body leaves the loop early (break,
    continue, return, goto), or when the loop has a contract. Both loops keep
    the pragmas.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    _require_unit_step("loop.split", "split", where, loop)
    point = _loop_amount("loop.split", "the split point", at, program, m.path, m.function, loop, where)
    return split_at(program, res, m, point)


def split_at(program: ir.Program, res: Resolver, m: Match, point: ir.Expr) -> Rewrite:
    """`loop.split` of the unit-step loop `m` at an expression already read
    and checked (no index, no side effect, nothing the body writes)."""
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    at_text = expr_text(point)
    if loop.contract:
        raise TransformError(f"loop.split: {where} has a loop contract, which would have to be split; "
                             f"remove it (level 3 infers loop contracts)", loop.loc)
    _refuse_early_exit("loop.split", where, loop.body.stmts, loop)
    _check_bounds_stable("loop.split", res, m.path, loop, loop.body)
    block, k = _in_block("loop.split", res, m.path, loop)
    a = dataclasses.replace(loop, stop=point, inclusive=False)
    b = dataclasses.replace(loop, start=point, body=ir.Block(loop.body.stmts), loc=None)
    ob = Obligation("in_range", f"{expr_text(loop.start)} <= {at_text} <= {expr_text(loop.stop)} (the split "
                    f"point lies in the range of {where})", m.function,
                    (m.path, block + (("stmts", k + 1),)), (loop.start, point, loop.stop))
    return Rewrite(splice(program, m.path, (a, b)), (ob,))


_NOT_INTEGER_OPS = frozenset({"<", "<=", ">", ">=", "==", "!=", "&&", "||"})


# ----------------------------------------------------------------- move_out


def _head(s: ir.Stmt) -> str:
    return stmt_text(s).splitlines()[0]


def _in_loop_body(name: str, res: Resolver, program: ir.Program, path: Path, s: ir.Stmt) -> tuple[Path, ir.For, int]:
    """The loop whose body has `s` (at `path`) as a top-level statement, and its position there."""
    loop = get(program, path[:-2]) if len(path) > 2 else None
    if path[-2:-1] != (("body", None),) or path[-1][0] != "stmts" or not isinstance(loop, ir.For):
        raise TransformError(f"{name}: '{_head(s)}' (line {res.line(path)}) is not directly in the body of a "
                             f"canonical for loop", getattr(s, "loc", None))
    k = path[-1][1]
    assert k is not None
    return path[:-2], loop, k


def _refuse_unseen_effects(name: str, what: str, node: object, loc: Optional[ir.Loc]) -> None:
    """Effects otp cannot see syntactically: calls to functions that are not
    known to be pure, and code kept as opaque text."""
    for _, n in walk(node):
        if isinstance(n, ir.Call) and n.name not in PURE_FUNCTIONS:
            raise TransformError(f"{name}: {what} calls '{n.name or expr_text(n.func)}', whose effects otp "
                                 f"cannot see", loc)
        if isinstance(n, (ir.Opaque, ir.OpaqueExpr)):
            raise TransformError(f"{name}: {what} contains code otp does not model ('{n.text}')", loc)


def _known_range(name: str, loop: ir.For, where: str) -> Optional[int]:
    """stop - start when it is a compile-time constant, refusing a loop that
    provably runs no iteration."""
    n = _trip_count(loop)
    if n is not None and n <= 0:
        raise TransformError(f"{name}: {where} runs no iteration", loop.loc)
    return n


def _nonempty(name: str, loop: ir.For, where: str, function: str, path: Path) -> tuple[Obligation, ...]:
    """Nothing when the loop provably runs (literal bounds), else the
    obligation that it does; refused when it provably does not."""
    if _known_range(name, loop, where) is not None:
        return ()
    return (Obligation("nonempty", f"{where} runs at least once: {expr_text(loop.start)} < "
                       f"{expr_text(loop.stop)}", function, (path,), (loop.start, loop.stop)),)


@primitive
def move_out(program: ir.Program, target: str) -> Rewrite:
    """Move a loop-invariant instruction of a loop body to right before the
    loop, so that it runs once instead of at every iteration.

    Before (`loop.move_out("attention > for j#1 > def scale")`, after
    `variable.bind("attention > for j#1 > expr 'sqrtf(D)'", "scale")`):

        for (int j = 0; j <= i; j++) {
          float s = 0.0f;
          for (int d = 0; d < D; d++) { ... }
          float scale = sqrtf(D);
          scores[j] = s / scale;
        }

    After:

        float scale = sqrtf(D);
        for (int j = 0; j <= i; j++) {
          float s = 0.0f;
          for (int d = 0; d < D; d++) { ... }
          scores[j] = s / scale;
        }

    Checked structurally: the instruction does not use the loop index nor a
    local declared before it in the body (neither would be in scope once
    moved); it calls no function that is not known pure; the body does not
    leave the loop early; a moved declaration's name is not visible nor
    declared where the loop is. Whether it is invariant is the obligation
    loop_invariant, which level 2 proves on memory cells and scalars: it
    reads nothing that the loop writes, itself included (so running it once
    is running it at every iteration), and no other instruction of the body
    writes what it writes. A declaration without initializer writes nothing: `float t[4];`
    moves even when the body writes `t` (no iteration could rely on values
    left by an earlier one, which were indeterminate), with no obligation at
    all when its type reads no variable. Otherwise, obligations:
    loop_invariant, commute
    with the instructions before it when it is not the first one, and
    nonempty (start < stop): the moved instruction now runs
    even when the loop runs zero times, so the loop must provably run. That
    obligation is the choice made over guarding the instruction with
    `if (start < stop)`, which could not keep a declaration in scope for the
    loop and would clutter the code; contracts usually state sizes >= 1.
    A loop with literal bounds needs no such obligation (and one that runs no
    iteration is refused).
    """
    res = Resolver(program)
    m = res.one(target, "instruction", (ir.ExprStmt, ir.DeclStmt, ir.For, ir.If, ir.Block))
    instr: ir.Stmt = m.node
    loop_path, loop, k = _in_loop_body("loop.move_out", res, program, m.path, instr)
    where = _where(res, loop_path, loop)
    what = f"'{_head(instr)}' (line {m.line})"
    stmts = loop.body.stmts
    prefix, rest = ir.Block(stmts[:k]), ir.Block(stmts[:k] + stmts[k + 1:])
    _refuse_early_exit("loop.move_out", where, stmts, loop)
    _refuse_unseen_effects("loop.move_out", what, instr, instr.loc)
    used = free_vars(instr)
    if loop.index in used:
        raise TransformError(f"loop.move_out: {what} reads the index of {where}", instr.loc)
    local = sorted(used & set(_top_decls(prefix)))
    if local:
        raise TransformError(f"loop.move_out: {what} uses '{local[0]}', which is declared before it in the body "
                             f"of {where}", instr.loc)
    block, j = _in_block("loop.move_out", res, loop_path, loop)
    if isinstance(instr, ir.DeclStmt) and instr.decl.name:
        name = instr.decl.name
        if name in visible_names(program, loop_path) or name in _top_decls(get(program, block)):
            raise TransformError(f"loop.move_out: a name '{name}' is already visible or declared where {where} "
                                 f"is; rename the local first", instr.loc)
    _check_bounds_stable("loop.move_out", res, loop_path, loop, loop.body)
    if loop.contract:
        raise TransformError(f"loop.move_out: {where} has a loop contract, which would no longer describe its "
                             f"body; remove it (level 3 infers loop contracts)", loop.loc)
    new_loop = dataclasses.replace(loop, body=dataclasses.replace(loop.body, stmts=rest.stmts))
    instr_path, new_path = block + (("stmts", j),), block + (("stmts", j + 1),)
    text = _head(instr)
    new = splice(program, loop_path, (instr, new_loop))
    if isinstance(instr, ir.DeclStmt) and instr.decl.init is None and not used:
        return Rewrite(new)
    obs = [Obligation("loop_invariant", f"'{text}' has the same effect run once before {where} as at each of "
                      f"its iterations", m.function, (instr_path, new_path))]
    if k:
        obs.append(Obligation("commute", f"'{text}' commutes with the {k} instruction(s) before it in "
                              f"the body of {where}", m.function,
                              (instr_path,) + tuple(new_path + (("body", None), ("stmts", i)) for i in range(k))))
    obs.extend(_nonempty("loop.move_out", loop, where, m.function, new_path))
    return Rewrite(new, tuple(obs))


# ----------------------------------------------------------------- hoist

STDLIB = "#include <stdlib.h>"


@primitive
def hoist(program: ir.Program, target: str, name: Optional[str] = None) -> Rewrite:
    """Give each iteration of a loop its own copy of a local declared in the
    body, in an array declared before the loop, indexed by the iteration
    number; what makes the local's instructions separable by `fission`.

    Before (`loop.hoist("attention > for j#1 > def s")`):

        for (int j = 0; j <= i; j++) {
          float s = 0.0f;
          for (int d = 0; d < D; d++) {
            s += q[...] * k[...];
          }
          scores[j] = s / sqrtf(D);
        }

    After (the iteration count, i + 1, is known only at run time):

        float *s_h = malloc((i + 1) * sizeof(float));
        for (int j = 0; j <= i; j++) {
          s_h[j] = 0.0f;
          for (int d = 0; d < D; d++) {
            s_h[j] += q[...] * k[...];
          }
          scores[j] = s_h[j] / sqrtf(D);
        }
        free(s_h);

    Iteration `i` of a loop from `a` uses slot `i - a` (just `i` when a is
    0), or `(i - a) / s` for a loop of constant step s (its range then a
    compile-time constant n, the array of n / s slots, rounded up: a tile
    loop's 8 tiles of 64 columns, `float acc_h[8][4]`). When the range is
    a compile-time constant n (literal
    bounds, or `bi .. bi + n` after a tile), the array is on the stack,
    `T x_h[n];`; otherwise it is allocated with malloc and freed right after
    the loop, as the c_sources do for scratch buffers (`<stdlib.h>` is
    included when missing). A local array `float t[D]` becomes `float
    t_h[n][D]` or `float (*t_h)[D] = malloc(count * sizeof(float [D]))`,
    used as `t_h[i - a][d]`. An initializer becomes an assignment at the
    same place, and a `const` on the local is dropped. The name is `name`,
    by default `<local>_h` made fresh. No obligation: every iteration still
    works on storage of its own, and `(i - a) / s` lies in 0 .. n/s - 1,
    distinct for each iteration, because the loop steps by s from a and
    its body writes neither the index (canonical loop) nor its bounds
    (checked). Refused for a loop whose step is not a positive constant,
    or is not 1 and its range not a compile-time constant, that provably
    runs no iteration, leaves its body early (break, continue,
    return, goto) or has a contract; for a local with a storage class, of
    function type, an array with an initializer, or whose type depends on
    the index or on what the body writes or declares.
    """
    res = Resolver(program)
    m = res.one(target, "declaration", (ir.DeclStmt,))
    d: ir.Decl = m.node.decl
    loop_path, loop, k = _in_loop_body("loop.hoist", res, program, m.path, m.node)
    where = _where(res, loop_path, loop)
    what = f"'{_head(m.node)}' (line {m.line})"
    step = int(loop.step.text) if isinstance(loop.step, ir.Const) and loop.step.text.isdigit() else None
    if step is None or step < 1:
        raise TransformError(f"loop.hoist: {where} has step '{expr_text(loop.step)}'; only loops of a constant "
                             f"positive step can be hoisted out of", loop.loc)
    if d.storage or d.name is None:
        kind = f"has storage class '{' '.join(d.storage)}'" if d.storage else "declares no variable"
        raise TransformError(f"loop.hoist: {what} {kind}; only automatic locals can be hoisted", m.node.loc)
    if isinstance(d.type, ir.FuncT):
        raise TransformError(f"loop.hoist: {what} declares a function", m.node.loc)
    if d.init is not None and (isinstance(d.type, ir.Array) or isinstance(d.init, ir.InitList)):
        raise TransformError(f"loop.hoist: {what} has an initializer that cannot become an assignment; "
                             f"initialize it with instructions first", m.node.loc)
    stmts = loop.body.stmts
    before = set(_top_decls(ir.Block(stmts[:k])))
    varying = free_vars(d.type) & ({loop.index} | writes_of(loop.body) | before)
    if varying:
        raise TransformError(f"loop.hoist: the type of {what} depends on '{sorted(varying)[0]}', which changes "
                             f"in {where}", m.node.loc)
    shadowed = free_vars(loop.start) & before
    if shadowed:
        raise TransformError(f"loop.hoist: the body of {where} declares a local '{sorted(shadowed)[0]}', which "
                             f"hides the variable of the same name that the start of the loop reads; rename it "
                             f"first", m.node.loc)
    _refuse_early_exit("loop.hoist", where, stmts, loop)
    _check_bounds_stable("loop.hoist", res, loop_path, loop, loop.body)
    if loop.contract:
        raise TransformError(f"loop.hoist: {where} has a loop contract, which would no longer describe its "
                             f"body; remove it (level 3 infers loop contracts)", loop.loc)
    n = _known_range("loop.hoist", loop, where)
    if step > 1 and n is None:
        raise TransformError(f"loop.hoist: {where} has step {step} and a range known only at run time; only a "
                             f"unit-step loop gets a slot array allocated at run time", loop.loc)
    _in_block("loop.hoist", res, loop_path, loop)
    hname = _fresh_local("loop.hoist", "array", name, f"{d.name}_h", program, m.path, m.function, m.node.loc)
    elem = unqualified(d.type)
    offset = _minus(ir.Var(loop.index), loop.start)
    slot = ir.Index(ir.Var(hname), offset if step == 1 else ir.Binop("/", offset, loop.step))
    n = None if n is None else -(-n // step)
    init = (ir.ExprStmt(ir.Assign("=", slot, d.init), m.node.loc),) if d.init is not None else ()
    body = stmts[:k] + init + subst(stmts[k + 1:], {d.name: slot})
    new_loop = dataclasses.replace(loop, body=dataclasses.replace(loop.body, stmts=body))
    includes: tuple[str, ...] = ()
    if n is not None:
        new: tuple[ir.Stmt, ...] = (ir.DeclStmt(ir.Decl(hname, ir.Array(elem, ir.Const(str(n))))), new_loop)
    else:
        size = ir.Binop("*", _minus(loop.stop, loop.start), ir.SizeofType(elem))
        new = (ir.DeclStmt(ir.Decl(hname, ir.Ptr(elem), ir.Call(ir.Var("malloc"), (size,)))), new_loop,
               ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(hname),))))
        includes = (STDLIB,)
    return Rewrite(splice(program, loop_path, new).with_includes(*includes))


# ----------------------------------------------------------------- shift, scale


def _offset(e: ir.Expr, amount: ir.Expr, sign: int = 1) -> ir.Expr:
    """`e + amount` (sign 1) or `e - amount` (sign -1), folding constants."""
    rest, k = _const_offset(amount)
    if rest is None:
        return _plus(e, sign * k)
    return _plus_expr(e, amount) if sign > 0 else ir.Binop("-", e, amount)


def _times(e: ir.Expr, f: ir.Expr) -> ir.Expr:
    """`e * f`, folding constants."""
    (rest, k), (frest, fk) = _const_offset(e), _const_offset(f)
    if rest is None and (k == 0 or frest is None):
        return _int(k * fk)
    return ir.Binop("*", e, f)


def _reindex(name: str, program: ir.Program, target: str, amount: "int | str", what: str,
             index: Optional[str]) -> tuple[Resolver, Path, str, ir.For, str, ir.Expr, str]:
    """What shift and scale share: the loop, the amount read by
    `_loop_amount`, and the new index name (the same by default; another
    name must not be used in the loop or by the amount)."""
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    e = _loop_amount(name, what, amount, program, m.path, m.function, loop, where)
    if loop.contract:
        raise TransformError(f"{name}: {where} has a loop contract, which speaks of the old index; remove it "
                             f"(level 3 infers loop contracts)", loop.loc)
    new = loop.index if index is None else index
    if new != loop.index:
        if not is_identifier(new):
            raise TransformError(f"{name}: {new!r} is not a valid C name for the index", loop.loc)
        if new in free_vars(loop.body) | free_vars(loop.stop) | free_vars(loop.step) | free_vars(e):
            raise TransformError(f"{name}: the new index name '{new}' is used in {where}, where the index would "
                                 f"capture it", loop.loc)
    return res, m.path, m.function, loop, where, e, new


@primitive
def shift(program: ir.Program, target: str, by: "int | str", index: Optional[str] = None) -> Rewrite:
    """Shift the range of a loop by `by`: the index runs over a + by .. b +
    by, and the body uses `index - by` where it used the index.

    Before (`loop.shift("softmax > for j#1", -1)`):

        for (int j = 1; j < C; j++) {
          if (x[i * C + j] > max_val) { ... }
        }

    After:

        for (int j = 0; j < C - 1; j++) {
          if (x[i * C + (j + 1)] > max_val) { ... }
        }

    `by` is an integer or a C expression (read as a contract formula); the
    index keeps its name unless `index` gives another. The loop runs the same
    iterations in the same order, with the same index values seen by the
    body, so no obligation (int arithmetic is taken not to overflow, as
    everywhere in otp). Refused when `by` uses the index, has side effects,
    names an undeclared variable or reads what the body writes; when the new
    name is used in the loop; or when the loop has a contract (it speaks of
    the old index). Any step; the pragmas stay.
    """
    res, path, function, loop, where, amount, new = _reindex("loop.shift", program, target, by, "the shift", index)
    sub = {loop.index: _offset(ir.Var(new), amount, -1)}
    out = dataclasses.replace(loop, index=new, start=_offset(loop.start, amount),
                              stop=_offset(subst(loop.stop, sub), amount), step=subst(loop.step, sub),
                              body=subst(loop.body, sub), inclusive=False)
    return Rewrite(replace(program, path, out))


@primitive
def scale(program: ir.Program, target: str, factor: "int | str", index: Optional[str] = None) -> Rewrite:
    """Scale the range of a unit-step loop by `factor`: the index runs over
    a * f .. b * f with step f, and the body uses `index / f`.

    Before (`loop.scale("matvec > for j", 4)`):

        for (int j = 0; j < N; j++) {
          y[i] += W[i * N + j] * x[j];
        }

    After:

        for (int j = 0; j < N * 4; j += 4) {
          y[i] += W[i * N + j / 4] * x[j / 4];
        }

    The index takes the values (a + t) * f, so `index / f` is exact and gives
    back a + t, provided f > 0: an integer factor must be positive (checked),
    a C expression gets the obligation positive. Nothing else is needed (int
    arithmetic is taken not to overflow, as everywhere in otp). Refused for a
    step other than 1, a factor that uses the index, has side effects, names
    an undeclared variable or reads what the body writes, a new index name
    used in the loop, or a loop contract. The pragmas stay.
    """
    res, path, function, loop, where, f, new = _reindex("loop.scale", program, target, factor, "the factor", index)
    _require_unit_step("loop.scale", "scaled", where, loop)
    rest, k = _const_offset(f)
    obs: tuple[Obligation, ...] = ()
    if rest is None and k <= 0:
        raise TransformError(f"loop.scale: the factor must be positive, got {k}", loop.loc)
    if rest is not None:
        obs = (Obligation("positive", f"the factor '{expr_text(f)}' scaling {where} is positive", function,
                          (path,), (f,)),)
    sub = {loop.index: ir.Binop("/", ir.Var(new), f)}
    out = dataclasses.replace(loop, index=new, start=_times(loop.start, f), stop=_times(subst(loop.stop, sub), f),
                              step=f, body=subst(loop.body, sub), inclusive=False)
    return Rewrite(replace(program, path, out), obs)


@primitive
def normalize(program: ir.Program, target: str, index: Optional[str] = None) -> Rewrite:
    """Make a loop of constant positive step s count 0, 1, 2, ...: the index
    t runs up to the trip count and the body uses `a + t * s`, so that the
    loop of tiles that loop.tile or gpu.thread_tile leaves (step 16, say)
    becomes a unit-step loop of constant extent that gpu.map_threads can map.

    Before (`loop.normalize("attention > for ri")`, after gpu.thread_tile):

        for (int ri = bi; ri < bi + 64; ri += 16) {
          body(i + ri);
        }

    After:

        for (int ri = 0; ri < 4; ri++) {
          body(i + (bi + ri * 16));
        }

    The trip count is `(b - a + s - 1) / s` (b the stop, one past it for
    `<=`), folded to a constant when b - a is one; an integer t >= 0 is
    below it exactly when a + t * s < b, so the body runs the same
    instances in the same order: no obligation. Refused for a step that is
    not a positive integer constant, bounds that the body writes or that
    have side effects, a new index name used in the loop, or a loop
    contract (it speaks of the old index). The pragmas stay.
    """
    res, path, _, loop, where, _, new = _reindex("loop.normalize", program, target, 0, "the shift", index)
    rest, step = _const_offset(loop.step)
    if rest is not None or step <= 0:
        raise TransformError(f"loop.normalize: {where} has step '{expr_text(loop.step)}'; only a positive "
                             f"integer constant step can be normalized", loop.loc)
    _check_bounds_stable("loop.normalize", res, path, loop, loop.body)
    stop = _plus(loop.stop, 1) if loop.inclusive else loop.stop
    (stop_rest, stop_k), (start_rest, start_k) = _const_offset(stop), _const_offset(loop.start)
    if stop_rest == start_rest:
        count = _int(max(0, -((start_k - stop_k) // step)))
    elif step == 1:
        count = _minus(stop, loop.start)
    else:
        count = ir.Binop("/", _plus(_minus(stop, loop.start), step - 1), _int(step))
    value = _plus_expr(loop.start, ir.Var(new) if step == 1 else ir.Binop("*", ir.Var(new), _int(step)))
    out = dataclasses.replace(loop, index=new, start=_int(0), stop=count, step=ONE,
                              body=subst(loop.body, {loop.index: value}), inclusive=False)
    return Rewrite(replace(program, path, out))


# ----------------------------------------------------------------- collapse


@primitive
def collapse(program: ir.Program, target: str, index: Optional[str] = None) -> Rewrite:
    """Turn a perfect nest of two unit-step loops into one loop over the
    product of their ranges; `target` names the outer loop.

    Before (`loop.collapse("matmul > for i")`):

        for (int i = 0; i < M; i++) {
          for (int j = 0; j < N; j++) {
            body(i, j);
          }
        }

    After (obligation ordered_bounds: 0 <= N):

        for (int ij = 0; ij < M * N; ij++) {
          int i = ij / N;
          int j = ij % N;
          body(i, j);
        }

    With starts a (outer) and c (inner), the trip count is (stop - a) *
    (inner stop - c) and the indices are `a + ij / n` and `c + ij % n`, n
    the inner count. Iteration ij is (i, j) in the original lexicographic
    order, so the body runs the same instances in the same order. The
    inner count must not be negative (else the product of two negative
    counts would run iterations): the obligation ordered_bounds, omitted
    when the count is a non-negative constant. The index is `index`, by
    default the two names joined, made fresh. Refused for an imperfect nest,
    inner bounds that depend on the outer index, a step other than 1,
    indices of different types, pragmas or contracts on either loop (collapse
    before annotating), a body that leaves early (break, continue, return,
    goto) or declares a local named like an index, and bounds that the body
    writes.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    outer: ir.For = m.node
    where = _where(res, m.path, outer)
    inner, inner_path = _perfect_nest("loop.collapse", res, m.path, outer)
    inner_where = _where(res, inner_path, inner)
    for lp, lw in ((outer, where), (inner, inner_where)):
        _require_unit_step("loop.collapse", "collapsed", lw, lp)
        _refuse_annotated("loop.collapse", "collapse the loops before annotating them", lw, lp)
    if outer.itype != inner.itype:
        raise TransformError(f"loop.collapse: the indices of {where} and {inner_where} have different types",
                             outer.loc)
    _refuse_early_exit("loop.collapse", inner_where, inner.body.stmts, inner)
    _check_bounds_stable("loop.collapse", res, m.path, outer, inner.body)
    _check_bounds_stable("loop.collapse", res, inner_path, inner, inner.body)
    clash = sorted({outer.index, inner.index} & set(_top_decls(inner.body)))
    if clash:
        raise TransformError(f"loop.collapse: the body of {inner_where} declares a local '{clash[0]}', named like "
                             f"an index; rename it first", inner.loc)
    new = _fresh_local("loop.collapse", "index", index, outer.index + inner.index, program, m.path, m.function,
                       outer.loc)
    n = _offset(inner.stop, inner.start, -1)
    i_value = _plus_expr(outer.start, ir.Binop("/", ir.Var(new), n))
    j_value = _plus_expr(inner.start, ir.Binop("%", ir.Var(new), n))
    if outer.index in free_vars(i_value) | free_vars(j_value) or inner.index in free_vars(j_value):
        raise TransformError(f"loop.collapse: the bounds of {where} or {inner_where} use a variable named like "
                             f"an index, which the new declarations would capture", outer.loc)
    body = ir.Block((ir.DeclStmt(ir.Decl(outer.index, outer.itype, i_value)),
                     ir.DeclStmt(ir.Decl(inner.index, inner.itype, j_value))) + inner.body.stmts, inner.body.loc)
    count = _times(_offset(outer.stop, outer.start, -1), n)
    out = ir.For(new, ir.Const("0"), count, body, ONE, outer.itype, loc=outer.loc)
    trips = _trip_count(inner)
    obs: tuple[Obligation, ...] = ()
    if trips is None or trips < 0:
        obs = (Obligation("ordered_bounds", f"{inner_where} has {expr_text(inner.start)} <= "
                          f"{expr_text(inner.stop)}, so the collapsed loop runs its iterations", m.function,
                          (m.path,), (inner.start, inner.stop)),)
    return Rewrite(replace(program, m.path, out), obs)


# ----------------------------------------------------------------- unswitch


def _may_trap(e: ir.Expr) -> bool:
    """Whether evaluating `e` where it was not evaluated before could fault:
    it reads memory or divides."""
    return any(isinstance(n, ir.Index) or isinstance(n, ir.Member) and n.arrow
               or isinstance(n, ir.Unop) and n.op == "*" or isinstance(n, ir.Binop) and n.op in ("/", "%")
               for _, n in walk(e))


@primitive
def unswitch(program: ir.Program, target: str) -> Rewrite:
    """Take a loop-invariant `if` out of the innermost canonical loop around
    it: one copy of the loop per branch, the test made once.

    Before (`loop.unswitch("rmsnorm > 'if (use_w)'")`):

        for (int j = 0; j < C; j++) {
          if (use_w) {
            y[i * C + j] = w[j] * (ss * x[i * C + j]);
          } else {
            y[i * C + j] = ss * x[i * C + j];
          }
        }

    After (obligation pure: no iteration changes `use_w`):

        if (use_w) {
          for (int j = 0; j < C; j++) {
            y[i * C + j] = w[j] * (ss * x[i * C + j]);
          }
        } else {
          for (int j = 0; j < C; j++) {
            y[i * C + j] = ss * x[i * C + j];
          }
        }

    The `if` may sit anywhere in the loop body; in each copy it is replaced
    by its branch (kept as a block when the branch declares locals). Without
    an else branch, the else copy is left out when the body would be empty.
    The condition is now evaluated even when the loop runs zero times or
    would not have reached the `if`: when it may fault (it reads memory or
    divides), the `if` must be a top-level instruction of the body with no
    early exit before it, and the loop must run (obligation nonempty, unless
    its bounds are literal). Refused when the condition has side effects,
    reads the index, a name declared in the loop or a variable the body
    writes, when the loop bounds have side effects or are written by the
    body, or when the loop has a contract. Both copies keep the pragmas.
    """
    res = Resolver(program)
    m = res.one(target, "if statement", (ir.If,))
    branch: ir.If = m.node
    loop_path = next((m.path[:k] for k in range(len(m.path) - 1, 0, -1)
                      if isinstance(get(program, m.path[:k]), ir.For)), None)
    text = expr_text(branch.cond)
    what = f"the condition '{text}' (line {m.line})"
    if loop_path is None:
        raise TransformError(f"loop.unswitch: the if of {what} is not inside a canonical for loop", branch.loc)
    loop: ir.For = get(program, loop_path)
    where = _where(res, loop_path, loop)
    if has_side_effects(branch.cond):
        raise TransformError(f"loop.unswitch: {what} has side effects", branch.loc)
    used = free_vars(branch.cond)
    if loop.index in used:
        raise TransformError(f"loop.unswitch: {what} reads the index of {where}", branch.loc)
    for hit, why in ((used & declared_names(loop.body), f"which is declared inside {where}"),
                     (used & writes_of(loop.body), f"which the body of {where} writes")):
        if hit:
            raise TransformError(f"loop.unswitch: {what} reads '{sorted(hit)[0]}', {why}", branch.loc)
    if loop.contract:
        raise TransformError(f"loop.unswitch: {where} has a loop contract, which would not describe the copies; "
                             f"remove it (level 3 infers loop contracts)", loop.loc)
    _check_bounds_stable("loop.unswitch", res, loop_path, loop, loop.body)
    rel = m.path[len(loop_path):]
    obs = [Obligation("pure", f"'{text}' has no side effect and no iteration of {where} changes it", m.function,
                      (loop_path,), (branch.cond,))]
    if _may_trap(branch.cond):
        if len(rel) != 2:
            raise TransformError(f"loop.unswitch: {what} may fault (it reads memory or divides) and is not "
                                 f"evaluated at every iteration of {where}; only such an if at the top of the "
                                 f"loop body can be unswitched", branch.loc)
        _refuse_early_exit("loop.unswitch", where, loop.body.stmts[:rel[-1][1]], loop)
        obs.extend(_nonempty("loop.unswitch", loop, where, m.function, loop_path))

    def copy(b: Optional[ir.Block]) -> ir.For:
        if rel[-1][1] is None or b is not None and _top_decls(b):
            return replace(loop, rel, b or ir.Block(()))
        return splice(loop, rel, b.stmts if b is not None else ())

    other = copy(branch.other)
    new = ir.If(branch.cond, ir.Block((copy(branch.then),)), ir.Block((other,)) if other.body.stmts else None,
                branch.loc)
    return Rewrite(replace(program, loop_path, new), tuple(obs))


# ----------------------------------------------------------------- reorder


def _loop_target(program: ir.Program, path: Path) -> tuple[str, str]:
    """The function's name and `for i#n`, which names the loop at `path`."""
    fn = get(program, path[:1])
    index = get(program, path).index
    hits = [p for p, n in walk(fn, path[:1]) if isinstance(n, ir.For) and n.index == index]
    return fn.name, f"for {index}#{hits.index(path) + 1}"


def _nest(program: ir.Program, path: Path) -> list[Path]:
    """The loops of the nest rooted at `path`: each next one is the only
    loop among the statements of the previous one's body."""
    chain = [path]
    while True:
        stmts = get(program, chain[-1]).body.stmts
        loops = [k for k, s in enumerate(stmts) if isinstance(s, ir.For)]
        if len(loops) != 1:
            return chain
        chain.append(chain[-1] + (("body", None), ("stmts", loops[0])))


def _swap_in_nest(chain: list[Path], d: int) -> list[Path]:
    """Swap the loops at depths d and d + 1 of the nest, first splitting off
    by fission what surrounds the inner loop; the nest's new paths."""
    session = current_session()
    program = session.current()
    position = chain[d + 1][-1][1]
    assert position is not None
    if position > 0:
        name, ref = _loop_target(program, chain[d + 1])
        fission(f"{name} > before {ref}")
        block, k = block_of(chain[d])
        moved = block + (("stmts", k + 1),)
        inner = moved + (("body", None), ("stmts", 0))
        chain = chain[:d] + [moved, inner] + [inner + p[len(chain[d + 1]):] for p in chain[d + 2:]]
        program = session.current()
    if len(get(program, chain[d]).body.stmts) > 1:
        name, ref = _loop_target(program, chain[d + 1])
        fission(f"{name} > after {ref}")
    name, ref = _loop_target(session.current(), chain[d])
    swap(f"{name} > {ref}")
    return chain


@composite
def reorder(target: str, order: list[str]) -> None:
    """Put the loops of a nest in the given order, outermost first, by
    swapping neighbours; `target` names the outermost loop of the nest.

    Before (`loop.reorder("matmul > for i", ["i", "k", "j"])`):

        for (int i = 0; i < M; i++) {
          for (int j = 0; j < N; j++) {
            C[i * N + j] = 0.0f;
            for (int k = 0; k < K; k++) {
              C[i * N + j] += A[i * K + k] * B[k * N + j];
            }
          }
        }

    After (sub-steps: loop.fission before `for k`, then loop.swap of the
    second `for j`; their obligations fission and swap_loops):

        for (int i = 0; i < M; i++) {
          for (int j = 0; j < N; j++) {
            C[i * N + j] = 0.0f;
          }
          for (int k = 0; k < K; k++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] += A[i * K + k] * B[k * N + j];
            }
          }
        }

    The nest is the chain of loops where each body holds exactly one loop
    (with other instructions around it or not); `order` is a permutation of
    the indices of its first len(order) loops. Each wanted loop is brought
    up by swaps with the loop above it; before a swap, the instructions
    around the inner loop are split off into loops of their own with
    `loop.fission`, as matmul's zero-initialization is. Refused when `order`
    is not such a permutation, or when the nest repeats an index name; the
    sub-steps refuse what they cannot do (a triangular nest, a local used
    across a fission cut, ...).
    """
    program = current_session().current()
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    chain = _nest(program, m.path)
    indices = [get(program, p).index for p in chain]
    where = _where(res, m.path, m.node)
    if not isinstance(order, (list, tuple)) or not all(isinstance(x, str) for x in order) \
            or sorted(order) != sorted(indices[:len(order)]) or len(set(order)) != len(order):
        raise TransformError(f"loop.reorder: {order!r} is not a permutation of the indices of the nest at {where}, "
                             f"{', '.join(indices)} (or of its first loops)", m.node.loc)
    current = indices[:len(order)]
    chain = chain[:len(order)]
    for depth, want in enumerate(order):
        at = current.index(want)
        while at > depth:
            chain = _swap_in_nest(chain, at - 1)
            current[at - 1], current[at] = current[at], current[at - 1]
            at -= 1
