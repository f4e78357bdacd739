"""Flash attention: the three passes of a softmax-weighted sum become one
streaming pass over blocks of keys (online softmax)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import declared_names, free_vars, fresh_name, has_side_effects, subst, writes_of
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Match, Resolver
from optitrust_py.tree import Path, block_of, get, replace, splice, walk
from optitrust_py.typeof import env_at, integer_range, type_of, typedefs_of
from transformations.loop import (_check_bounds_stable, _escapes, _loop_amount, _refuse_annotated,
                                  _require_unit_step, split_at)
from transformations.vector import _running_max

TOLERANCE = 1e-5
"""Relative error the online softmax may add in fp32: the sums are formed in
another order and the partial output is rescaled once per key block."""

SHAPE = ("the body must hold, in this order: a loop `for j` ending with `buf[j] = score;`, `float m = ...;`, "
         "a loop `if (buf[j] > m) m = buf[j];`, `float l = ...;`, a loop `buf[j] = expf(buf[j] - m); "
         "l += buf[j];`, a loop `buf[j] = buf[j] / l;`, a loop `for d` `out = 0.0f;`, and a loop `for j` "
         "`for d` `out += buf[j] * v;`")


@dataclass(frozen=True)
class _Passes:
    """The recognized statements of a softmax-weighted sum over one row."""

    first: int            # position of the scores loop in the block
    scores: ir.For        # for j: ...; buf[j] = score;
    max_decl: ir.DeclStmt
    max_pass: ir.For
    sum_decl: ir.DeclStmt
    exp_pass: ir.For
    norm_pass: ir.For
    zero: ir.For          # for d: out = 0.0f;
    weighted: ir.For      # for j: for d: out += buf[j] * v;
    buf: str
    cell: ir.Index        # buf[j] or buf[row + j], the score of key j
    value: ir.Expr        # v, the factor of the cell in the weighted sum

    @property
    def m(self) -> str:
        return self.max_decl.decl.name or ""

    @property
    def l(self) -> str:
        return self.sum_decl.decl.name or ""

    @property
    def row_loops(self) -> tuple[ir.For, ...]:
        return (self.scores, self.max_pass, self.exp_pass, self.norm_pass, self.weighted)


def _at(buf: str, j: ir.Expr) -> ir.Index:
    return ir.Index(ir.Var(buf), j)


def _assign(op: str, lhs: ir.Expr, rhs: ir.Expr) -> ir.ExprStmt:
    return ir.ExprStmt(ir.Assign(op, lhs, rhs))


def _same_range(a: ir.For, b: ir.For) -> bool:
    return (a.start, a.stop, a.step, a.itype) == (b.start, b.stop, b.step, b.itype)


def _only(loop: ir.For) -> Optional[ir.Stmt]:
    return loop.body.stmts[0] if len(loop.body.stmts) == 1 else None


def _assignment(s: Optional[ir.Stmt]) -> Optional[ir.Assign]:
    return s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) else None


def _is_zero(e: ir.Expr) -> bool:
    try:
        return isinstance(e, ir.Const) and float(e.text.rstrip("fFlL")) == 0.0
    except ValueError:
        return False


def _stored_row(loop: ir.For) -> Optional[ir.Index]:
    """`buf[j]` or `buf[row + j]` (j the loop's index, row free of it) when
    the body of the loop ends with a store to it: the row of scores, alone
    in its buffer or one row of a buffer of rows."""
    a = _assignment(loop.body.stmts[-1] if loop.body.stmts else None)
    if a is None or a.op != "=" or not isinstance(a.lhs, ir.Index) or not isinstance(a.lhs.base, ir.Var):
        return None
    j, index = ir.Var(loop.index), a.lhs.index
    row = index.left if isinstance(index, ir.Binop) and index.op == "+" and index.right == j else None
    if index != j and (row is None or loop.index in free_vars(row) or has_side_effects(row)):
        return None
    return a.lhs


def _weighted_value(z: ir.For, p4: ir.For, at: ir.Expr) -> Optional[ir.Expr]:
    """v, when z is `for d: out = 0` and p4 `for j: for d: out += buf[j] * v`."""
    zero, inner = _assignment(_only(z)), _only(p4)
    if zero is None or zero.op != "=" or not _is_zero(zero.rhs) or not isinstance(inner, ir.For) \
            or not _same_range(z, inner):
        return None
    update = _assignment(_only(inner))
    out = subst(zero.lhs, {z.index: ir.Var(inner.index)}) if z.index != inner.index else zero.lhs
    if update is None or update.op != "+=" or update.lhs != out or not isinstance(update.rhs, ir.Binop) \
            or update.rhs.op != "*" or update.rhs.left != at:
        return None
    return update.rhs.right


def _match(stmts: tuple[ir.Stmt, ...], k: int) -> Optional[_Passes]:
    """The passes starting at stmts[k], or None when they are not there."""
    window = stmts[k:k + 8]
    if len(window) != 8:
        return None
    s0, dm, p1, dl, p2, p3, z, p4 = window
    if not (isinstance(s0, ir.For) and isinstance(p1, ir.For) and isinstance(p2, ir.For)
            and isinstance(p3, ir.For) and isinstance(z, ir.For) and isinstance(p4, ir.For)
            and isinstance(dm, ir.DeclStmt) and isinstance(dl, ir.DeclStmt)):
        return None
    at = _stored_row(s0)
    if at is None or s0.pragmas or not isinstance(at.base, ir.Var):
        return None
    buf = at.base.name
    m, l = ir.Var(dm.decl.name or ""), ir.Var(dl.decl.name or "")
    if not all(_same_range(s0, p) and p.index == s0.index and not p.pragmas for p in (p1, p2, p3, p4)):
        return None
    if len(p1.body.stmts) != 1 or _running_max(p1.body.stmts[0]) != (m.name, at):
        return None
    if p2.body.stmts != (_assign("=", at, ir.Call(ir.Var("expf"), (ir.Binop("-", at, m),))),
                         _assign("+=", l, at)):
        return None
    if p3.body.stmts != (_assign("=", at, ir.Binop("/", at, l)),):
        return None
    value = _weighted_value(z, p4, at)
    if value is None:
        return None
    return _Passes(k, s0, dm, p1, dl, p2, p3, z, p4, buf, at, value)


def _find(who: str, body: ir.Block, where: str) -> _Passes:
    found = [p for k in range(len(body.stmts)) if (p := _match(body.stmts, k)) is not None]
    if len(found) != 1:
        how = "none" if not found else f"{len(found)} of them"
        raise TransformError(f"{who}: {where} holds {how}: {SHAPE}")
    return found[0]


def _refuse_other_uses(who: str, fn: ir.FuncDef, passes: _Passes, where: str) -> None:
    """The buffer is no longer filled: only the passes may index it. The
    running max and sum are left out of the stream obligations, so the
    scores loop may not write them."""
    inside = {id(n) for loop in passes.row_loops for _, n in walk(loop)}
    for _, n in walk(fn.body):
        if isinstance(n, ir.Index) and n.base == ir.Var(passes.buf) and id(n) not in inside:
            raise TransformError(f"{who}: '{passes.buf}' is used outside the passes of {where}, and the new form "
                                 f"no longer fills it")
    changed = writes_of(passes.scores.body) & {passes.m, passes.l}
    if changed:
        raise TransformError(f"{who}: the scores loop of {where} writes '{sorted(changed)[0]}', the running max "
                             f"or sum")


def _stream_obligations(fname: str, block: Path, passes: _Passes, where: str) -> tuple[Obligation, ...]:
    """Each pair of passes over the row: iterations j != j' touch disjoint
    cells, apart from the running max and sum; and the zeroing of the
    output commutes with the passes it moves before."""
    at = {0: "scores", 2: "max", 4: "exp-sum", 5: "normalize", 7: "weighted-sum"}
    rows = sorted(at)
    path = lambda off: block + (("stmts", passes.first + off),)  # noqa: E731
    obs = [Obligation("stream", f"in {where}, the {at[a]} and {at[b]} passes touch disjoint cells at iterations "
                                f"j != j' (running max and sum aside)", fname, (path(a), path(b)),
                      before=True, names=(passes.m, passes.l))
           for n, a in enumerate(rows) for b in rows[n + 1:]]
    obs.append(Obligation("commute", f"in {where}, zeroing the output commutes with the scores, max, exp-sum and "
                                     f"normalize passes", fname, (path(6), path(0), path(2), path(4), path(5)),
                          before=True))
    return tuple(obs)


def _fresh_names(taken: set[str], bases: dict[str, str]) -> dict[str, str]:
    """A fresh name for each base, none equal to another."""
    out = {}
    for key, base in bases.items():
        out[key] = fresh_name(taken, base)
        taken.add(out[key])
    return out


def _streamed(passes: _Passes, size: int, taken: set[str]) -> tuple[tuple[ir.Stmt, ...], dict[str, str]]:
    """The statements that replace the passes, and the new names."""
    s0, j = passes.scores, passes.scores.index
    names = _fresh_names(taken, {"jb": "b" + j, "blk": passes.buf + "_blk", "mb": passes.m + "_blk",
                                 "alpha": "rescale"})
    jb, mb, alpha = ir.Var(names["jb"]), ir.Var(names["mb"]), ir.Var(names["alpha"])
    m, l = ir.Var(passes.m), ir.Var(passes.l)
    at = _at(names["blk"], ir.Binop("-", ir.Var(j), jb))
    end = ir.Binop("+", jb, ir.Const(str(size)))
    row = lambda loop, body: dataclasses.replace(  # noqa: E731
        loop, start=jb, stop=ir.Ternary(ir.Binop("<", end, s0.stop), end, s0.stop), inclusive=False,
        body=ir.Block(body))
    stored, zero, inner = _assignment(s0.body.stmts[-1]), _assignment(_only(passes.zero)), _only(passes.weighted)
    assert stored is not None and zero is not None and isinstance(inner, ir.For)  # as _match found them
    update = _assignment(_only(inner))
    assert update is not None
    scores_body = s0.body.stmts[:-1] + (_assign("=", at, stored.rhs),)
    out, out_inner = zero.lhs, update.lhs
    fl = ir.FLOAT
    body = (
        ir.DeclStmt(ir.Decl(names["blk"], ir.Array(fl, ir.Const(str(size))))),
        row(s0, scores_body),
        ir.DeclStmt(ir.Decl(names["mb"], fl, m)),
        row(passes.max_pass, (ir.If(ir.Binop(">", at, mb), ir.Block((_assign("=", mb, at),))),)),
        ir.DeclStmt(ir.Decl(names["alpha"], fl, ir.Call(ir.Var("expf"), (ir.Binop("-", m, mb),)))),
        _assign("=", l, ir.Binop("*", l, alpha)),
        dataclasses.replace(passes.zero, body=ir.Block((_assign("=", out, ir.Binop("*", out, alpha)),))),
        row(passes.exp_pass, (_assign("=", at, ir.Call(ir.Var("expf"), (ir.Binop("-", at, mb),))),
                              _assign("+=", l, at))),
        row(passes.weighted, (dataclasses.replace(inner, body=ir.Block(
            (_assign("+=", out_inner, ir.Binop("*", at, passes.value)),))),)),
        _assign("=", m, mb),
    )
    blocks = ir.For(names["jb"], s0.start, s0.stop, ir.Block(body), ir.Const(str(size)), s0.itype)
    final = dataclasses.replace(passes.zero, body=ir.Block((_assign("=", out, ir.Binop("/", out, l)),)))
    return (passes.max_decl, passes.sum_decl, passes.zero, blocks, final), names


@primitive
def online_softmax(program: ir.Program, target: str, block: int = 16) -> Rewrite:
    """Fuse the max, exp-sum, normalize and weighted-sum passes over a row of
    scores into one pass over blocks of `block` keys, with a running max `m`
    and a running sum `l` that rescale the partial output (online softmax).

    Before (`flash.online_softmax("attention > for i", 16)`), in the body of
    the target loop:

        for (int j = 0; j <= i; j++) { ...; scores[j] = s / scale; }
        float max_val = -INFINITY;
        for (int j = 0; j <= i; j++) { if (scores[j] > max_val) { max_val = scores[j]; } }
        float sum = 0.0f;
        for (int j = 0; j <= i; j++) { scores[j] = expf(scores[j] - max_val); sum += scores[j]; }
        for (int j = 0; j <= i; j++) { scores[j] = scores[j] / sum; }
        for (int d = 0; d < D; d++) { out[(h * S + i) * D + d] = 0.0f; }
        for (int j = 0; j <= i; j++) { for (int d = 0; d < D; d++) {
            out[(h * S + i) * D + d] += scores[j] * v[(h * S + j) * D + d]; } }

    After:

        float max_val = -INFINITY;
        float sum = 0.0f;
        for (int d = 0; d < D; d++) { out[(h * S + i) * D + d] = 0.0f; }
        for (int bj = 0; bj < i + 1; bj += 16) {
          float scores_blk[16];
          for (int j = bj; j < (bj + 16 < i + 1 ? bj + 16 : i + 1); j++) { ...; scores_blk[j - bj] = s / scale; }
          float max_val_blk = max_val;
          for (j ...) { if (scores_blk[j - bj] > max_val_blk) { max_val_blk = scores_blk[j - bj]; } }
          float rescale = expf(max_val - max_val_blk);
          sum = sum * rescale;
          for (int d = 0; d < D; d++) { out[...] = out[...] * rescale; }
          for (j ...) { scores_blk[j - bj] = expf(scores_blk[j - bj] - max_val_blk); sum += scores_blk[j - bj]; }
          for (j ...) { for (int d = 0; d < D; d++) { out[...] += scores_blk[j - bj] * v[...]; } }
          max_val = max_val_blk;
        }
        for (int d = 0; d < D; d++) { out[(h * S + i) * D + d] = out[(h * S + i) * D + d] / sum; }

    Obligations: `stream` for each pair of passes (iterations j != j' touch
    disjoint cells, the running max and sum aside: each pass reads the row
    pointwise), `commute` for the zeroing of the output moved before the
    passes, and `online_softmax` for the rescaling recurrence (proved over
    the reals on the emitted updates). Float results round differently
    (`≈fp`, relative tolerance 1e-5). Refused when the body does not hold
    the passes in this shape, or the buffer is used elsewhere.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = f"for {loop.index} (line {m.line})"
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
        raise TransformError(f"flash.online_softmax: the key block size must be a positive integer, got {block!r}",
                             loop.loc)
    passes = _find("flash.online_softmax", loop.body, where)
    fn = program.items[m.path[0][1]]  # type: ignore[index]
    assert isinstance(fn, ir.FuncDef)
    _refuse_other_uses("flash.online_softmax", fn, passes, where)
    for p in passes.row_loops:
        _check_bounds_stable("flash.online_softmax", res, m.path, p, p.body)
    body_path = m.path + (("body", None),)
    taken = declared_names(fn) | free_vars(fn) | {n.index for _, n in walk(fn) if isinstance(n, ir.For)}
    new_stmts, names = _streamed(passes, block, set(taken))
    stmts = loop.body.stmts
    k = passes.first
    new_body = ir.Block(stmts[:k] + new_stmts + stmts[k + 8:], loop.body.loc)
    out = replace(program, body_path, new_body)
    at = lambda n: body_path + (("stmts", k + n),)  # noqa: E731
    recurrence = Obligation(
        "online_softmax", f"in {where}, the running max, sum and output of the key-block loop keep "
                          f"sum = Σ exp(s_k - max) and out = Σ exp(s_k - max) v_k, and out / sum is the softmax-"
                          f"weighted sum", m.function, (at(3), at(0), at(1), at(2), at(4)),
        (passes.value,), names=(passes.m, passes.l, names["blk"]))
    obs = _stream_obligations(m.function, body_path, passes, where) + (recurrence,)
    return Rewrite(out, obs, "reassoc", TOLERANCE)


def _malloc(name: str, count: ir.Expr) -> ir.DeclStmt:
    return ir.DeclStmt(ir.Decl(name, ir.Ptr(ir.FLOAT), ir.Call(ir.Var("malloc"), (
        ir.Binop("*", count, ir.SizeofType(ir.FLOAT)),))))


def _chunked(passes: _Passes, size: int, taken: set[str]) -> tuple[tuple[ir.Stmt, ...], dict[str, str]]:
    """The statements that replace the passes (see split_softmax), and the new names."""
    s0, j = passes.scores, passes.scores.index
    out_name = _array_base(_assignment(_only(passes.zero)))
    names = _fresh_names(taken, {"c": "b" + j, "mc": passes.m + "_chunk", "lc": passes.l + "_chunk",
                                 "mp": passes.m + "_parts", "lp": passes.l + "_parts", "op": out_name + "_parts"})
    c, mc, lc = (ir.Var(names[k]) for k in ("c", "mc", "lc"))
    m, l = ir.Var(passes.m), ir.Var(passes.l)
    width, n, cs = passes.zero.stop, s0.stop, ir.Const(str(size))
    count = ir.Binop("/", ir.Binop("+", n, ir.Const(str(size - 1))), cs)
    lo = ir.Binop("*", c, cs)
    hi = ir.Binop("+", lo, cs)
    keys = lambda loop, body: dataclasses.replace(  # noqa: E731
        loop, start=lo, stop=ir.Ternary(ir.Binop("<", hi, n), hi, n), inclusive=False, body=ir.Block(body))
    over_chunks = lambda body: ir.For(names["c"], ir.Const("0"), count, ir.Block(body), itype=s0.itype)  # noqa: E731
    at = passes.cell
    zero, inner = _assignment(_only(passes.zero)), _only(passes.weighted)
    assert zero is not None and isinstance(inner, ir.For)  # as _match found them
    part = lambda d: _at(names["op"], ir.Binop("+", ir.Binop("*", c, width), ir.Var(d)))  # noqa: E731
    weight = _at(names["mp"], c)
    typed = lambda key, decl: ir.DeclStmt(dataclasses.replace(decl.decl, name=names[key]))  # noqa: E731
    chunk = over_chunks((
        keys(s0, s0.body.stmts),
        typed("mc", passes.max_decl),
        keys(passes.max_pass, (ir.If(ir.Binop(">", at, mc), ir.Block((_assign("=", mc, at),))),)),
        _assign("=", weight, mc),
        typed("lc", passes.sum_decl),
        keys(passes.exp_pass, (_assign("=", at, ir.Call(ir.Var("expf"), (ir.Binop("-", at, mc),))),
                               _assign("+=", lc, at))),
        _assign("=", _at(names["lp"], c), lc),
        dataclasses.replace(passes.zero, body=ir.Block((_assign("=", part(passes.zero.index), zero.rhs),))),
        keys(passes.weighted, (dataclasses.replace(inner, body=ir.Block(
            (_assign("+=", part(inner.index), ir.Binop("*", at, passes.value)),))),)),
    ))
    out = zero.lhs
    combined = dataclasses.replace(passes.zero, body=ir.Block((
        _assign("+=", out, ir.Binop("*", part(passes.zero.index), weight)),)))
    stmts = (
        _malloc(names["mp"], count), _malloc(names["lp"], count), _malloc(names["op"], ir.Binop("*", count, width)),
        chunk,
        passes.max_decl,
        over_chunks((ir.If(ir.Binop(">", weight, m), ir.Block((_assign("=", m, weight),))),)),
        over_chunks((_assign("=", weight, ir.Call(ir.Var("expf"), (ir.Binop("-", weight, m),))),)),
        passes.sum_decl,
        over_chunks((_assign("+=", l, ir.Binop("*", _at(names["lp"], c), weight)),)),
        passes.zero,
        over_chunks((combined,)),
        dataclasses.replace(passes.zero, body=ir.Block((_assign("=", out, ir.Binop("/", out, l)),))),
    ) + tuple(ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(names[k]),))) for k in ("op", "lp", "mp"))
    return stmts, names


def _array_base(a: Optional[ir.Assign]) -> str:
    """`out` for `out[...] = ...`, the output row of the passes."""
    base = a.lhs.base if a is not None and isinstance(a.lhs, ir.Index) else None
    return base.name if isinstance(base, ir.Var) else "out"


def _sized_loop(who: str, program: ir.Program, target: str, what: str, size: object) \
        -> tuple[Resolver, Match, ir.For, str]:
    """The target loop, with its name for messages, once `size` (a tile or
    chunk size) is checked to be an integer above 1."""
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise TransformError(f"{who}: the {what} must be an integer above 1, got {size!r}", loop.loc)
    return res, m, loop, f"for {loop.index} (line {m.line})"


@primitive
def split_softmax(program: ir.Program, target: str, chunk: int = 32) -> Rewrite:
    """Split the max, exp-sum, normalize and weighted-sum passes over a row
    of scores into chunks of `chunk` keys that are computed independently,
    each with its own max, sum and partial output, and then combined
    (flash-decoding): the chunks can run on different GPU blocks, which a
    decode step, one query against thousands of cached keys, needs to fill
    the GPU.

    Before (`flash.split_softmax("gqa_decode > for h", 32)`, n = pos + 1),
    in the body of the target loop (see online_softmax for the passes):

        for (int t = 0; t <= pos; t++) { ...; scores[t] = s / scale; }
        float max_val = -INFINITY;  ... max pass ...
        float sum = 0.0f;           ... exp-sum pass ...  ... normalize pass ...
        for (int d = 0; d < D; d++) { out[h * D + d] = 0.0f; }
        for (int t = 0; t <= pos; t++) { for (int d = 0; d < D; d++) {
            out[h * D + d] += scores[t] * v_cache[(g * SMAX + t) * D + d]; } }

    After (nc = (pos + 1 + 31) / 32 chunks; the keys of chunk bt are
    bt * 32 .. min(bt * 32 + 32, pos + 1)):

        float *max_val_parts = malloc(nc * sizeof(float));  (sum_parts: nc, out_parts: nc * D)
        for (int bt = 0; bt < nc; bt++) {
          for (t in chunk bt) { ...; scores[t] = s / scale; }
          float max_val_chunk = -INFINITY;
          for (t in chunk bt) { if (scores[t] > max_val_chunk) { max_val_chunk = scores[t]; } }
          max_val_parts[bt] = max_val_chunk;
          float sum_chunk = 0.0f;
          for (t in chunk bt) { scores[t] = expf(scores[t] - max_val_chunk); sum_chunk += scores[t]; }
          sum_parts[bt] = sum_chunk;
          for (d) { out_parts[bt * D + d] = 0.0f; }
          for (t in chunk bt) { for (d) { out_parts[bt * D + d] += scores[t] * v_cache[...]; } }
        }
        float max_val = -INFINITY;
        for (bt) { if (max_val_parts[bt] > max_val) { max_val = max_val_parts[bt]; } }
        for (bt) { max_val_parts[bt] = expf(max_val_parts[bt] - max_val); }
        float sum = 0.0f;
        for (bt) { sum += sum_parts[bt] * max_val_parts[bt]; }
        for (d) { out[h * D + d] = 0.0f; }
        for (bt) { for (d) { out[h * D + d] += out_parts[bt * D + d] * max_val_parts[bt]; } }
        for (d) { out[h * D + d] = out[h * D + d] / sum; }
        free(out_parts); free(sum_parts); free(max_val_parts);

    Obligations: `stream` for each pair of passes and `commute` for the
    zeroing of the output (as online_softmax: the passes now run chunk by
    chunk), and `softmax_merge`: each chunk keeps sum_chunk = Σ exp(s - max_val_chunk)
    and out_parts = Σ exp(s - max_val_chunk) v over its keys, and the
    combination rescales every key to exp(s - max_val) (proved over the reals
    on the emitted code). The chunks' maxima become their weights
    exp(max_val_chunk - max_val) in place, once per chunk, not once per
    output element. Float results round differently (`≈fp`, relative
    tolerance 1e-5). Refused when the body does not hold the passes, when
    the rows do not start at 0 by steps of 1, when the buffer is used
    elsewhere or a pass writes a bound, and when `chunk` is not an integer
    above 1.
    """
    who = "flash.split_softmax"
    res, m, loop, where = _sized_loop(who, program, target, "chunk size", chunk)
    passes = _find(who, loop.body, where)
    fn = program.items[m.path[0][1]]  # type: ignore[index]
    assert isinstance(fn, ir.FuncDef)
    _refuse_other_uses(who, fn, passes, where)
    bodies = tuple(p.body for p in passes.row_loops)
    for p in passes.row_loops + (passes.zero,):
        if p.start != ir.Const("0") or p.step != ir.Const("1"):
            raise TransformError(f"{who}: the loop for {p.index} (line {p.loc.line if p.loc else '?'}) of the passes "
                                 f"does not run from 0 by steps of 1", loop.loc)
        _check_bounds_stable(who, res, m.path, p, *bodies)
    body_path = m.path + (("body", None),)
    taken = declared_names(fn) | free_vars(fn) | {n.index for _, n in walk(fn) if isinstance(n, ir.For)}
    new_stmts, names = _chunked(passes, chunk, set(taken))
    stmts = loop.body.stmts
    k = passes.first
    out = replace(program, body_path, ir.Block(stmts[:k] + new_stmts + stmts[k + 8:], loop.body.loc))
    at = lambda n: body_path + (("stmts", k + n),)  # noqa: E731
    merge = Obligation(
        "softmax_merge", f"in {where}, each chunk of {chunk} keys keeps {names['lc']} = Σ exp(s - {names['mc']}) and "
                         f"{names['op']} = Σ exp(s - {names['mc']}) v over its keys, and the combination rescales "
                         f"every key to exp(s - {passes.m}), so out / {passes.l} is the softmax-weighted sum",
        m.function, tuple(at(n) for n in range(3, 12)), (passes.value, passes.scores.stop),
        names=(names["mc"], names["lc"], names["mp"], names["lp"], names["op"], passes.buf, passes.m, passes.l))
    return Rewrite(out, _stream_obligations(m.function, body_path, passes, where) + (merge,), "reassoc", TOLERANCE)


@primitive
def swap_triangular(program: ir.Program, target: str) -> Rewrite:
    """Swap a query loop with the key-block loop inside it whose bound
    depends on the query (causal attention): the key-block loop runs up to
    the bound of the last query of the range, and each query skips the
    blocks past its own bound, so blocks that are masked for every query
    of the range are never visited.

    Before (`flash.swap_triangular("attention > for i#2")`, a query block):

        for (int i = bi; i < (bi + 64 < S ? bi + 64 : S); i++) {
          for (int bj = 0; bj < i + 1; bj += 64) {
            body(i, bj);
          }
        }

    After (obligations swap_loops on the nest before the step, and
    ordered_bounds: i + 1 <= the bound at the last query, for every i):

        for (int bj = 0; bj < (bi + 64 < S ? bi + 64 : S) - 1 + 1; bj += 64) {
          for (int i = bi; i < (bi + 64 < S ? bi + 64 : S); i++) {
            if (bj < i + 1) {
              body(i, bj);
            }
          }
        }

    Refused when the outer loop does not step by 1 or holds anything but
    the inner loop, when the inner start or step depends on the outer index
    (or its bound does not), when either loop has pragmas or a contract, or
    when the bodies write what the bounds read.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    outer: ir.For = m.node
    where = f"for {outer.index} (line {m.line})"
    stmts = outer.body.stmts
    if len(stmts) != 1 or not isinstance(stmts[0], ir.For):
        raise TransformError(f"flash.swap_triangular: the body of {where} must be one loop and nothing else",
                             outer.loc)
    inner: ir.For = stmts[0]
    inner_path = m.path + (("body", None), ("stmts", 0))
    inner_where = f"for {inner.index} (line {res.line(inner_path)})"
    _require_unit_step("flash.swap_triangular", "swapped", where, outer)
    for loop, w in ((outer, where), (inner, inner_where)):
        _refuse_annotated("flash.swap_triangular", "swap the loops before annotating them", w, loop)
    if outer.index in free_vars(inner.start) | free_vars(inner.step) or outer.index not in free_vars(inner.stop):
        raise TransformError(f"flash.swap_triangular: only the bound of {inner_where} may depend on "
                             f"'{outer.index}' (use loop.swap for a rectangular nest)", inner.loc)
    if inner.index in free_vars(outer.start) | free_vars(outer.stop):
        raise TransformError(f"flash.swap_triangular: the bounds of {where} use '{inner.index}'", outer.loc)
    _check_bounds_stable("flash.swap_triangular", res, m.path, outer, inner.body)
    _check_bounds_stable("flash.swap_triangular", res, inner_path, inner, inner.body)
    last = subst(inner.stop, {outer.index: ir.Binop("-", outer.stop, ir.Const("1"))})
    guarded = ir.Block((ir.If(ir.Binop("<", ir.Var(inner.index), inner.stop), inner.body),))
    new = dataclasses.replace(inner, stop=last, inclusive=False,
                              body=ir.Block((dataclasses.replace(outer, body=guarded),)))
    obs = (Obligation("swap_loops", f"the iterations of {where} and {inner_where} can be interchanged",
                      m.function, (m.path,), before=True),
           Obligation("ordered_bounds", f"the bound of {inner_where} at each {outer.index} is at most its bound "
                                        f"at the last {outer.index}", m.function, (inner_path,),
                      (inner.stop, last), before=True))
    return Rewrite(replace(program, m.path, new), obs)


@primitive
def version(program: ir.Program, target: str, name: str, value: int) -> Rewrite:
    """Run a copy of a loop in which the integer `name` is the constant
    `value`, when it has that value, and the loop as it was otherwise: later
    steps see a literal size in the copy (constant trip counts, arrays of
    vectors that live in registers) while other sizes keep working.

    Before (`flash.version("attention > for h", "D", 64)`):

        for (int h = 0; h < H; h++) { ... out[(h * S + i) * D + d] ... }

    After (obligation equals: D == 64 in the copy):

        if (D == 64) {
          for (int h = 0; h < H; h++) { ... out[(h * S + i) * 64 + d] ... }
        } else {
          for (int h = 0; h < H; h++) { ... out[(h * S + i) * D + d] ... }
        }

    Refused when `name` is not an integer variable visible at the loop, when
    the loop writes it or takes its address, or when `value` is not an int.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = f"for {loop.index} (line {m.line})"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransformError(f"flash.version: the value must be an integer, got {value!r}", loop.loc)
    try:
        block, k = block_of(m.path)
    except ValueError:
        raise TransformError(f"flash.version: {where} is not a statement of a block", loop.loc) from None
    t = env_at(program, m.path, globals=False).get(name)
    if t is None or integer_range(t, typedefs_of(program)) is None:
        raise TransformError(f"flash.version: '{name}' is not an integer variable visible at {where}", loop.loc)
    taken = {n.arg.name for _, n in walk(loop) if isinstance(n, ir.Unop) and n.op == "&"
             and isinstance(n.arg, ir.Var)}
    if name in writes_of(loop) | taken:
        raise TransformError(f"flash.version: {where} changes '{name}' or takes its address", loop.loc)
    fixed = subst(loop, {name: ir.Const(str(value))})
    new = ir.If(ir.Binop("==", ir.Var(name), ir.Const(str(value))), ir.Block((fixed,)), ir.Block((loop,)))
    copy = m.path + (("then", None), ("stmts", 0))
    ob = Obligation("equals", f"'{name}' is {value} in the copy of {where}", m.function, (copy,),
                    (ir.Var(name), ir.Const(str(value))))
    return Rewrite(replace(program, m.path, new), (ob,))


@primitive
def split_blocks(program: ir.Program, target: str, at: "int | str") -> Rewrite:
    """Split the range of a loop over blocks (any step) at a block start:
    in causal attention, the key blocks before the query block, which no
    query of the block masks, from the blocks on its diagonal.

    Before (`flash.split_blocks("attention > for bj", "bi")`):

        for (int bj = 0; bj < n; bj += 64) {
          body(bj);
        }

    After (obligations in_range: 0 <= bi <= n, and divides: 64 divides bi - 0,
    so that the second loop starts on a block of the first):

        for (int bj = 0; bj < bi; bj += 64) {
          body(bj);
        }
        for (int bj = bi; bj < n; bj += 64) {
          body(bj);
        }

    `at` is an integer or a C expression. Refused when the step is not a
    positive integer literal, when `at` uses the index or a name that does
    not exist, when the body writes what `at` or the bounds read, when it
    leaves the loop early, or when the loop has a contract.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = f"for {loop.index} (line {m.line})"
    if not (isinstance(loop.step, ir.Const) and loop.step.kind == "int" and loop.step.text.isdigit()
            and int(loop.step.text) > 0):
        raise TransformError(f"flash.split_blocks: {where} must step by a positive integer literal", loop.loc)
    point = _loop_amount("flash.split_blocks", "the split point", at, program, m.path, m.function, loop, where)
    if loop.contract:
        raise TransformError(f"flash.split_blocks: {where} has a loop contract, which would have to be split",
                             loop.loc)
    if _escapes(loop.body.stmts) is not None:
        raise TransformError(f"flash.split_blocks: the body of {where} leaves the loop early", loop.loc)
    _check_bounds_stable("flash.split_blocks", res, m.path, loop, loop.body)
    try:
        block, k = block_of(m.path)
    except ValueError:
        raise TransformError(f"flash.split_blocks: {where} is not a statement of a block", loop.loc) from None
    first = dataclasses.replace(loop, stop=point, inclusive=False)
    second = dataclasses.replace(loop, start=point, body=ir.Block(loop.body.stmts), loc=None)
    at_text = expr_text(point)
    paths = (m.path, block + (("stmts", k + 1),))
    obs = (Obligation("in_range", f"{expr_text(loop.start)} <= {at_text} <= {expr_text(loop.stop)} (the split "
                                  f"point lies in the range of {where})", m.function, paths,
                      (loop.start, point, loop.stop)),
           Obligation("divides", f"{expr_text(loop.step)} divides {at_text} - {expr_text(loop.start)} (the split "
                                 f"point starts a block of {where})", m.function, paths,
                      (loop.step, ir.Binop("-", point, loop.start))))
    return Rewrite(splice(program, m.path, (first, second)), obs)


@primitive
def full_blocks(program: ir.Program, target: str) -> Rewrite:
    """Inside a loop over blocks that are never cut short, make every loop
    bounded by `x < y ? x : y`, where x is the end of the block (it uses the
    block index), run to `x`: the key loops of a key block that no query of
    the block masks get the constant trip count of the block.

    Before (`flash.full_blocks("attention > for bj#1")`):

        for (int bj = 0; bj < bi; bj += 64) {
          ...
          for (int j = bj; j < (bj + 64 < i + 1 ? bj + 64 : i + 1); j++) { ... }

    After (obligation ordered_bounds: bj + 64 <= i + 1, at each such loop):

          for (int j = bj; j < bj + 64; j++) { ... }

    Refused when no loop inside the target has such a bound. Other minima
    (the last query block cut at S) are left alone.
    """
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    new = program
    obs: list[Obligation] = []
    for p, n in walk(m.node, m.path):
        bounds = _min_stop(n, m.node.index) if isinstance(n, ir.For) else None
        if bounds is None:
            continue
        end, other = bounds
        new = replace(new, p, dataclasses.replace(n, stop=end))
        obs.append(Obligation("ordered_bounds", f"{expr_text(end)} <= {expr_text(other)} at for "
                                                f"{n.index} (line {res.line(p)})", m.function, (p,),
                              (end, other), before=True))
    if not obs:
        raise TransformError(f"flash.full_blocks: no loop inside for {m.node.index} (line {m.line}) is bounded by "
                             f"a minimum 'x < y ? x : y' of the block's end x", m.node.loc)
    return Rewrite(new, tuple(obs))


@primitive
def drop_buffer(program: ir.Program, target: str) -> Rewrite:
    """Remove a buffer that nothing uses any more: its allocation and its
    `free`, e.g. the scores row of attention once the online softmax has
    streamed it.

    Before (`flash.drop_buffer("attention > def scores")`):

        float *scores = malloc(S * sizeof(float));
        ... (no other use of scores) ...
        free(scores);

    After: both lines are gone (no obligation: the allocation's size has no
    side effect, and no other statement reads or writes the buffer).

    Refused when the declaration does not allocate with malloc/calloc, when
    the size has side effects, or when the name is used anywhere else than
    in `free(name);` statements of the same block.
    """
    res = Resolver(program)
    m = res.one(target, "declaration", (ir.DeclStmt,))
    decl: ir.Decl = m.node.decl
    call = decl.init.arg if isinstance(decl.init, ir.Cast) else decl.init
    if not (isinstance(call, ir.Call) and call.name in ("malloc", "calloc")):
        raise TransformError(f"flash.drop_buffer: '{decl.name}' (line {m.line}) is not allocated with malloc or "
                             f"calloc in its declaration", decl.loc)
    if any(has_side_effects(a) for a in call.args):
        raise TransformError(f"flash.drop_buffer: the size of '{decl.name}' has side effects", decl.loc)
    block, k = block_of(m.path)
    stmts = get(program, block).stmts
    frees = {n for n, s in enumerate(stmts)
             if s == ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(decl.name or ""),)))}
    rest = tuple(s for n, s in enumerate(stmts) if n != k and n not in frees)
    if decl.name in free_vars(ir.Block(rest)):
        raise TransformError(f"flash.drop_buffer: '{decl.name}' is still used besides its free()", decl.loc)
    return Rewrite(replace(program, block, dataclasses.replace(get(program, block), stmts=rest)))


def _min_stop(loop: ir.For, block_index: str) -> Optional[tuple[ir.Expr, ir.Expr]]:
    """(x, y) when the loop runs to `x < y ? x : y` and x, the end of the
    block, uses the block's index."""
    stop = loop.stop
    if isinstance(stop, ir.Ternary) and isinstance(stop.cond, ir.Binop) and stop.cond.op == "<" \
            and (stop.cond.left, stop.cond.right) == (stop.then, stop.other) and block_index in free_vars(stop.then):
        return stop.then, stop.other
    return None


def _unchanged_by_mask(loop: ir.For, cell: ir.Expr) -> bool:
    """Whether `loop` is a pass over the scores that reads the masked cell
    only in a way that a score of -INFINITY leaves without effect (given a
    finite max): the running max, the exp-sum (expf(-inf - m) = 0 is added),
    or the weighted sum (0 * v is added)."""
    stmts = loop.body.stmts
    if len(stmts) == 1 and (rm := _running_max(stmts[0])) is not None and rm[1] == cell:
        return True
    if len(stmts) == 2:
        first, second = (_assignment(s) for s in stmts)
        if first is not None and second is not None and first.op == "=" and first.lhs == cell \
                and isinstance(first.rhs, ir.Call) and first.rhs.name == "expf" \
                and len(first.rhs.args) == 1 and isinstance(first.rhs.args[0], ir.Binop) \
                and first.rhs.args[0].op == "-" and first.rhs.args[0].left == cell \
                and cell not in [n for _, n in walk(first.rhs.args[0].right)] \
                and second.op == "+=" and second.rhs == cell and cell not in [n for _, n in walk(second.lhs)]:
            return True
    inner = _only(loop)
    update = _assignment(_only(inner)) if isinstance(inner, ir.For) else None
    return update is not None and update.op == "+=" and isinstance(update.rhs, ir.Binop) \
        and update.rhs.op == "*" and update.rhs.left == cell and cell not in [n for _, n in walk(update.rhs.right)] \
        and cell not in [n for _, n in walk(update.lhs)]


@primitive
def mask(program: ir.Program, target: str) -> Rewrite:
    """Run every key of a key block for every query, the keys past a
    query's bound masked: the score of a masked key is -INFINITY, so the
    diagonal block of causal attention has the same constant trip counts as
    the others (the tile products of gpu.mma, as FlashAttention does).

    Before (`flash.mask("attention > for h#3 > for bi > for bj")`):

        for (int j = bj; j < (bj + 64 < i + 1 ? bj + 64 : i + 1); j++) {
          float s = 0.0f;
          for (int d = 0; d < 128; d++) { s += q[...] * k[(h * S + j) * 128 + d]; }
          scores_blk[j - bj] = s / scale;
        }
        float max_val_blk = max_val_h[i - bi];
        for (int j = bj; j < (bj + 64 < i + 1 ? bj + 64 : i + 1); j++) {
          if (scores_blk[j - bj] > max_val_blk) { max_val_blk = scores_blk[j - bj]; }
        }
        ... (exp-sum and weighted-sum passes over the same keys)

    After (obligation positive: i + 1 - 0 > 0, the first key of the first
    block, bj = 0, is not masked, so the running max is a score from the
    first block on and expf(-INFINITY - max) = 0; a later block whose keys
    are all masked leaves the max, the sum and the output as they were;
    and for each `if` around the key loops that tests the block index,
    positive: it holds at bj = 0, so that every query sees the first block):

        for (int j = bj; j < bj + 64; j++) {
          ...
          scores_blk[j - bj] = j < i + 1 ? s / scale : -INFINITY;
        }
        for (int j = bj; j < bj + 64; j++) { (the passes, unchanged) }

    In every statement list inside the target loop (the key-block loop)
    whose loops over keys run to `x < y ? x : y` (x the block's end, using
    its index), the first such loop must end by storing the key's score in
    a cell, and each later one must be a pass that a score of -INFINITY
    leaves unchanged: the running max (`if (c > m) m = c;`), the exp-sum
    (`c = expf(c - m); l += c;`, which adds 0) or the weighted sum (`for d:
    out += c * v;`, which adds 0 * v: +0 or -0, so only the sign of a zero
    output can change, and a masked key whose v is infinite or NaN would
    make the row NaN, as with FlashAttention's masking). The loops then run
    to x, reading the masked keys' K and V rows (level 2 checks them in
    bounds). Refused: no such loop, a later loop of another shape, loops
    with different ranges or a step other than 1, a scores buffer declared
    or used elsewhere, bodies that write what the bounds read, an `if`
    around the loops that tests the block index other than by one
    comparison.
    """
    who = "flash.mask"
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    where = f"for {m.node.index} (line {m.line})"
    groups: dict[Path, list[tuple[int, ir.For]]] = {}
    bounds: dict[Path, tuple[ir.Expr, ir.Expr]] = {}
    for p, n in walk(m.node, m.path):
        xy = _min_stop(n, m.node.index) if isinstance(n, ir.For) else None
        if xy is not None and p[-1][0] == "stmts":
            block, k = block_of(p)
            groups.setdefault(block, []).append((k, n))
            bounds.setdefault(block, xy)
    if not groups:
        raise TransformError(f"{who}: no loop inside {where} runs to a minimum 'x < y ? x : y' of the block's "
                             f"end x", m.node.loc)
    new, obs = program, []
    for block, loops in groups.items():
        (k0, scores), rest = loops[0], loops[1:]
        first_path = block + (("stmts", k0),)
        line = res.line(first_path)
        x, y = bounds[block]
        for k, loop in loops:
            if (loop.start, loop.stop, loop.step, loop.index) != (scores.start, scores.stop, scores.step, scores.index) \
                    or loop.step != ir.Const("1") or loop.inclusive:
                raise TransformError(f"{who}: the key loops at lines {line} and {res.line(block + (('stmts', k),))} "
                                     f"do not run over the same keys by steps of 1", loop.loc)
            _check_bounds_stable(who, res, block + (("stmts", k),), loop, loop.body)
        store = _assignment(scores.body.stmts[-1] if scores.body.stmts else None)
        if store is None or store.op != "=" or not isinstance(store.lhs, ir.Index) \
                or not isinstance(store.lhs.base, ir.Var) or scores.index not in free_vars(store.lhs.index):
            raise TransformError(f"{who}: the key loop at line {line} must end by storing the key's score, "
                                 f"'buf[... j ...] = score;'", scores.loc)
        cell = store.lhs
        for k, loop in rest:
            if not _unchanged_by_mask(loop, cell):
                raise TransformError(f"{who}: the key loop at line {res.line(block + (('stmts', k),))} is not a "
                                     f"pass that a masked score leaves unchanged (the running max "
                                     f"'if ({expr_text(cell)} > m) m = {expr_text(cell)};', the exp-sum "
                                     f"'{expr_text(cell)} = expf({expr_text(cell)} - m); l += {expr_text(cell)};' "
                                     f"or the weighted sum 'for d: out += {expr_text(cell)} * v;')", loop.loc)
        here = get(program, block)
        if not any(isinstance(st, ir.DeclStmt) and ir.Var(st.decl.name or "") == cell.base for st in here.stmts):
            raise TransformError(f"{who}: '{expr_text(cell.base)}' must be declared with the key loops of line "
                                 f"{line}, so that nothing else sees the masked scores", scores.loc)
        keys = {("stmts", k) for k, _ in loops}
        if any(isinstance(n, ir.Index) and n.base == cell.base and p[len(block)] not in keys
               for p, n in walk(here, block)):
            raise TransformError(f"{who}: '{expr_text(cell.base)}' is used outside the key loops of line {line}, "
                                 f"which would see the masked scores", scores.loc)
        masked = ir.Ternary(ir.Binop("<", ir.Var(scores.index), y), store.rhs, ir.Unop("-", ir.Var("INFINITY")))
        for k, loop in loops:
            body = loop.body
            if k == k0:
                body = ir.Block(body.stmts[:-1] + (_assign("=", cell, masked),), body.loc)
            new = replace(new, block + (("stmts", k),), dataclasses.replace(loop, stop=x, body=body))
        at_first = {m.node.index: m.node.start}
        first = subst(ir.Binop("-", y, scores.start), at_first)
        obs.append(Obligation("positive", f"the first key of the first block is not masked at line {line}: "
                                          f"{expr_text(first)} > 0", m.function, (first_path,), (first,),
                              before=True))
        for depth in range(len(m.path) + 1, len(block)):
            guard = get(program, block[:depth])
            if isinstance(guard, ir.If) and m.node.index in free_vars(guard.cond):
                margin = _margin(guard.cond)
                if margin is None:
                    raise TransformError(f"{who}: the if of '{expr_text(guard.cond)}' around the key loops of line "
                                         f"{line} is not a comparison <, <=, > or >= (the first block must be "
                                         f"seen to be visited)", guard.loc)
                obs.append(Obligation("positive", f"the first block is visited at line {line}: "
                                                  f"'{expr_text(guard.cond)}' holds there",
                                      m.function, (first_path,), (subst(margin, at_first),), before=True))
    return Rewrite(new, tuple(obs))


_MARGIN = {"<": (False, 0), "<=": (False, 1), ">": (True, 0), ">=": (True, 1)}
"""For `a op b`: whether the operands swap and what is added, so that the
comparison holds exactly when `b - a (+ 1)` is positive."""


def _margin(cond: ir.Expr) -> Optional[ir.Expr]:
    """An expression positive exactly when the comparison `cond` holds, or
    None when `cond` is not one comparison <, <=, > or >=."""
    if not (isinstance(cond, ir.Binop) and cond.op in _MARGIN):
        return None
    swapped, extra = _MARGIN[cond.op]
    low, high = (cond.right, cond.left) if swapped else (cond.left, cond.right)
    margin: ir.Expr = ir.Binop("-", high, low)
    return ir.Binop("+", margin, ir.Const(str(extra))) if extra else margin


@primitive
def drop_guard(program: ir.Program, target: str) -> Rewrite:
    """Remove an `if` whose integer comparison always holds where it stands,
    keeping its branch: the causal mask `bj < i + 1` of the key blocks before
    the diagonal, so that the loop over the queries of a block holds the
    phases of a query directly (what `loop.fission` needs).

    Before (`flash.drop_guard("attention > for bj#1 > for i > 'if (bj < i + 1)'")`):

        for (int bj = 0; bj < bi; bj += 64) {
          for (int i = bi; i < (bi + 64 < S ? bi + 64 : S); i++) {
            if (bj < i + 1) {
              float s = 0.0f;
              ...
            }

    After (obligation positive: i + 1 - bj > 0 there):

          for (int i = bi; i < (bi + 64 < S ? bi + 64 : S); i++) {
            float s = 0.0f;
            ...

    Refused when the if has an else branch, when its condition is not one
    comparison `<`, `<=`, `>`, `>=` of integers, or when a name declared at
    the top of the branch is already declared in the enclosing block.
    """
    res = Resolver(program)
    m = res.one(target, "if statement", (ir.If,))
    guard: ir.If = m.node
    what = f"the if of '{expr_text(guard.cond)}' (line {m.line})"
    cond = guard.cond
    if guard.other is not None:
        raise TransformError(f"flash.drop_guard: {what} has an else branch", guard.loc)
    env, typedefs = env_at(program, m.path), typedefs_of(program)
    if not (isinstance(cond, ir.Binop) and cond.op in _MARGIN and not has_side_effects(cond)
            and all(integer_range(type_of(e, env, typedefs), typedefs) is not None
                    for e in (cond.left, cond.right))):
        raise TransformError(f"flash.drop_guard: the condition of {what} is not a comparison <, <=, > or >= of "
                             f"integers without side effects", guard.loc)
    margin = _margin(cond)
    assert margin is not None  # a comparison, checked above
    block, k = block_of(m.path)
    around = {s.decl.name for n, s in enumerate(get(program, block).stmts)
              if n != k and isinstance(s, ir.DeclStmt) and s.decl.name}
    clash = sorted(around & {s.decl.name for s in guard.then.stmts if isinstance(s, ir.DeclStmt) and s.decl.name})
    if clash:
        raise TransformError(f"flash.drop_guard: the branch of {what} declares '{clash[0]}', which the enclosing "
                             f"block declares too", guard.loc)
    ob = Obligation("positive", f"'{expr_text(cond)}' holds at {what}: {expr_text(margin)} > 0", m.function,
                    (m.path,), (margin,), before=True)
    return Rewrite(splice(program, m.path, guard.then.stmts), (ob,))


@primitive
def split_tail(program: ir.Program, target: str, size: int) -> Rewrite:
    """Split a unit-step loop where the iterations left over by tiles of
    `size` begin: the first loop then runs a multiple of `size` iterations
    (a tile of `size` queries with a constant trip count, whose accumulators
    can live in registers), the second the at most `size - 1` others. The
    split point names the loop's own bounds, which may be minima that a
    split point given as text cannot write.

    Before (`flash.split_tail("attention > for bj#1 > for i", 4)`):

        for (int i = bi; i < (bi + 64 < S ? bi + 64 : S); i++) {
          body(i);
        }

    After (obligation in_range: bi <= e <= (bi + 64 < S ? bi + 64 : S)),
    with e = `(bi + 64 < S ? bi + 64 : S) - ((bi + 64 < S ? bi + 64 : S) - bi) % 4`:

        for (int i = bi; i < e; i++) {
          body(i);
        }
        for (int i = e; i < (bi + 64 < S ? bi + 64 : S); i++) {
          body(i);
        }

    Refused, as `loop.split`, when the step is not 1, when the bounds have
    side effects or the body writes what they read, when the body leaves
    early, or when the loop has a contract; and when `size` is not an
    integer above 1.
    """
    res, m, loop, where = _sized_loop("flash.split_tail", program, target, "tile size", size)
    _require_unit_step("flash.split_tail", "split", where, loop)
    if has_side_effects(loop.start) or has_side_effects(loop.stop):
        raise TransformError(f"flash.split_tail: the bounds of {where} have side effects", loop.loc)
    count = ir.Binop("-", loop.stop, loop.start)
    point = ir.Binop("-", loop.stop, ir.Binop("%", count, ir.Const(str(size))))
    return split_at(program, res, m, point)


@primitive
def move_up(program: ir.Program, target: str, after: str) -> Rewrite:
    """Move an instruction up its block to right after another one: the
    store of a query's new running max, which ends its key block, goes right
    after the last read of the old max, so that the phases after it (the
    P*V update) no longer need the block's max and can be split off.

    Before (`flash.move_up("... > 'max_val_h[i - bi] = max_val_blk;'", "... > def rescale")`):

        float rescale = expf(max_val_h[i - bi] - max_val_blk);
        sum_h[i - bi] = sum_h[i - bi] * rescale;
        ...
        max_val_h[i - bi] = max_val_blk;

    After (obligation commute: it commutes with the instructions it passes):

        float rescale = expf(max_val_h[i - bi] - max_val_blk);
        max_val_h[i - bi] = max_val_blk;
        sum_h[i - bi] = sum_h[i - bi] * rescale;
        ...

    The instruction may also be the declaration of an array or a variable
    without initializer (`... > def vs`), which has no effect: no
    obligation, but the instructions it passes must not name it (they
    would then see it instead of a name of the enclosing scope): the tile
    a copy fills is declared higher, before the copy moves up in its turn.
    Refused when the two instructions are not in the same block, when
    `after` is not before the instruction, when the instruction is any
    other declaration, or when a declaration passes a use of its name.
    """
    res = Resolver(program)
    m = res.one(target, "instruction", (ir.ExprStmt, ir.DeclStmt, ir.For, ir.If, ir.Block))
    to = res.one(after, "instruction", (ir.ExprStmt, ir.DeclStmt, ir.For, ir.If, ir.Block))
    what = f"the instruction at line {m.line}"
    block, k = block_of(m.path)
    to_block, j = block_of(to.path)
    if to_block != block or j >= k:
        raise TransformError(f"flash.move_up: the instruction at line {to.line} is not before {what} in its block",
                             m.node.loc)
    stmts = get(program, block).stmts
    moved = stmts[:j + 1] + (stmts[k],) + stmts[j + 1:k] + stmts[k + 1:]
    new = replace(program, block, dataclasses.replace(get(program, block), stmts=moved))
    if isinstance(m.node, ir.DeclStmt):
        name = m.node.decl.name or ""
        if m.node.decl.init is not None:
            raise TransformError(f"flash.move_up: the declaration of '{name}' at line {m.line} has an initializer; "
                                 f"only a declaration without one moves (it has no effect)", m.node.loc)
        user = next((n for n in range(j + 1, k) if name in free_vars(stmts[n])), None)
        if user is not None:
            raise TransformError(f"flash.move_up: the declaration of '{name}' at line {m.line} would pass the "
                                 f"instruction at line {res.line(block + (('stmts', user),))}, which names "
                                 f"'{name}'", m.node.loc)
        return Rewrite(new)
    paths = (block + (("stmts", j + 1),),) + tuple(block + (("stmts", n),) for n in range(j + 2, k + 1))
    ob = Obligation("commute", f"{what} commutes with the {k - j - 1} instruction(s) it moves above", m.function,
                    paths)
    return Rewrite(new, (ob,))
