"""Flattened indices and array shapes: splitting `(h * S + i) * D + d` into
the per-dimension indices (h, i, d) of a `Matrix3(H, S, D)` and back. The
split is syntactic; that each index lies within its dimension is a fact the
checker proves (level 2), which is what makes the split mean the same cell."""
from __future__ import annotations

from typing import Optional, Sequence

from . import ir

ZERO = ir.Const("0")
ONE = ir.Const("1")


def terms(e: ir.Expr, sign: int = 1) -> list[tuple[int, ir.Expr]]:
    """`e` as a signed sum: `a - b * c` is [(1, a), (-1, b * c)]."""
    if isinstance(e, ir.Binop) and e.op in ("+", "-"):
        return terms(e.left, sign) + terms(e.right, sign if e.op == "+" else -sign)
    if isinstance(e, ir.Unop) and e.op == "-":
        return terms(e.arg, -sign)
    return [(sign, e)]


def cancelled_sum(*sums: tuple[int, ir.Expr]) -> ir.Expr:
    """The sum of the signed expressions as one signed sum, terms that cancel left out."""
    parts: list[tuple[int, ir.Expr]] = []
    for sign, e in sums:
        for s, t in terms(e, sign):
            if (-s, t) in parts:
                parts.remove((-s, t))
            elif t != ZERO:
                parts.append((s, t))
    return signed_sum(parts)


def factors(e: ir.Expr) -> list[ir.Expr]:
    if isinstance(e, ir.Binop) and e.op == "*":
        return factors(e.left) + factors(e.right)
    return [e]


def signed_sum(terms: Sequence[tuple[int, ir.Expr]]) -> ir.Expr:
    out: Optional[ir.Expr] = None
    for sign, t in terms:
        if out is None:
            out = t if sign > 0 else ir.Unop("-", t)
        else:
            out = ir.Binop("+" if sign > 0 else "-", out, t)
    return ZERO if out is None else out


def product(factors: Sequence[ir.Expr]) -> ir.Expr:
    if not factors:
        return ONE
    out = factors[0]
    for f in factors[1:]:
        out = ir.Binop("*", out, f)
    return out


def delinearize(index: ir.Expr, shape: Sequence[ir.Expr]) -> Optional[tuple[ir.Expr, ...]]:
    """The per-dimension indices of a flattened index, or None when some
    level has no term carrying its dimension (a zero index is all zeros)."""
    if len(shape) <= 1:
        return (index,)
    if index == ZERO:
        return (ZERO,) * len(shape)
    last = shape[-1]
    outer, inner = [], []
    for sign, t in terms(index):
        fs = factors(t)
        if last in fs:
            k = fs.index(last)
            outer.append((sign, product(fs[:k] + fs[k + 1:])))
        else:
            inner.append((sign, t))
    if not outer:
        return None
    rest = delinearize(signed_sum(outer), shape[:-1])
    return None if rest is None else rest + (signed_sum(inner),)


def linearize(index: Sequence[ir.Expr], shape: Sequence[ir.Expr]) -> ir.Expr:
    """The Horner form `(i0 * d1 + i1) * d2 + i2`."""
    out = index[0]
    for i, d in zip(index[1:], shape[1:]):
        scaled = ir.Binop("*", out, d)
        out = i if out == ZERO else (scaled if i == ZERO else ir.Binop("+", scaled, i))
    return out
