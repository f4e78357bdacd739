"""The structure of a quantizing step at level 3 (`quantize.int8_groups`).

Such a step cannot compute the same values as the step before; what level 3
proves instead is that it computes the step before's function of the inputs
read through their quantization. The runs after the step show each int8
code they use as a term

    q = narrow(trunc(round(v * (a > 0 ? 127 / a : 0))), 1)

of an input cell `v`, and `a` there is the largest magnitude of the cells it
was computed from. `dequantized` checks that `a` is the maximum of |cell|
over `v`'s own group (the G consecutive cells of its row, G dividing the
offset of the group's first cell), and gives `v`'s dequantized value,
`q * (a / 127)`: the code times the scale of its group. The step before's
outputs with every such `v` replaced by that value (`canon.substitute`) is
the model the step's outputs must equal (`=` or `≈fp`): a kernel that
multiplies a code by another group's scale, or a quantizer that takes the
maximum over the wrong cells, differs from it although the values move
little.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterable, Optional, TypeGuard

from . import canon, terms as T
from .terms import Term

LEVELS = 127
"""The largest int8 code: a group's scale is its largest magnitude / 127."""


class BadQuantization(Exception):
    """An int8 code not computed from its own group's scale."""


def dequantized(cells: Iterable[object]) -> dict[int, Term]:
    """For each input cell that the terms read through an int8 code, by the
    cell's term number, its dequantized value (`q * (a / 127)`); raises
    `BadQuantization` naming the cell whose code is not made from the
    largest magnitude of its own group."""
    out: dict[int, Term] = {}
    for code in _codes(cells):
        found = _quantized_cell(code)
        if found is None:
            continue
        cell, amax = found
        _check_group(cell, amax)
        scale = T.binary("div", amax, T.const(LEVELS))
        out[cell.number] = T.binary("mul", T.unary("tofloat", code), scale)
    return out


def _codes(cells: Iterable[object]) -> list[Term]:
    """The 1-byte `narrow` subterms of the terms, each once."""
    return [u for u in canon.subterms(cells) if u.op == "narrow" and u.args[1] == 1]


def _quantized_cell(code: Term) -> Optional[tuple[Term, Term]]:
    """The input cell and the magnitude `a` of `narrow(trunc(round(v * (a >
    0 ? 127 / a : 0))), 1)`; None for a code of another shape (not a
    quantization of an input cell)."""
    inner = code.args[0]
    if not (_is(inner, "trunc") and _is(inner.args[0], "round") and _is(inner.args[0].args[0], "mul")):
        return None
    product = inner.args[0].args[0]
    for cell, inv in (product.args, product.args[::-1]):
        if _is(cell, "in") and _is(inv, "ite"):
            cond, then, other = inv.args
            if _is(then, "div") and T.is_const(then.args[0], LEVELS) and isinstance(then.args[1], Term) \
                    and T.is_const(other, 0) and cond is T.binary("lt", T.ZERO, then.args[1]):
                return cell, then.args[1]
    return None


def _is(t: object, op: str) -> TypeGuard[Term]:
    return isinstance(t, Term) and t.op == op


def _check_group(cell: Term, amax: Term) -> None:
    """`amax` is the largest |c| over the cells c of `cell`'s group: the
    input cells it reads, each through fabs, are G consecutive cells of one
    array starting at a multiple of G, `cell` among them."""
    array, offset = cell.args[0], cell.args[1]
    group = _magnitudes(amax)
    offsets = sorted(c.args[1] for c in group if c.args[0] == array)  # type: ignore[type-var]
    size = len(group)
    first = offset - offset % size  # type: ignore[operator]
    if len(offsets) != size or offsets != list(range(first, first + size)):
        shown = ", ".join(T.show(c) for c in sorted(group, key=lambda c: (str(c.args[0]), c.args[1])))  # type: ignore
        raise BadQuantization(f"the int8 code of {T.show(cell)} is scaled by the largest magnitude of {{{shown}}}, "
                              f"not of its own group of {size} ({array}[{first}..{first + size - 1}])")


def _magnitudes(amax: Term) -> set[Term]:
    """The input cells c of the `fabs(c)` a maximum is computed from (by
    `max`, or by `ite` of a comparison as a loop keeping the largest does);
    raises `BadQuantization` on anything else."""
    found: set[Term] = set()
    seen: set[int] = set()
    stack: list[object] = [amax]
    while stack:
        u = stack.pop()
        if not isinstance(u, Term) or u.number in seen:
            continue
        seen.add(u.number)
        if u.op == "call" and u.args[0] == "fabs" and _is(u.args[1], "in"):
            found.add(u.args[1])  # type: ignore[arg-type]
        elif u.op == "ite" and _is(u.args[0], "lt"):
            stack.extend((*u.args[0].args, u.args[1], u.args[2]))  # type: ignore[union-attr]
        elif u.op == "max":
            stack.extend(u.args)
        elif not (u.op == "const" and u.args[0] == Fraction(0)):
            raise BadQuantization(f"a group's largest magnitude is computed from {T.show(u)}, not from |cell|s")
    return found
