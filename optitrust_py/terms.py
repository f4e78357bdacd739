"""The values of level 3's symbolic execution: a hash-consed DAG of terms.

Every term is built once (`Term.make` interns it), so two runs that compute
the same value term for term get the very same object, and comparing an
output cell of two runs is a pointer comparison; that is the `=` label.
Only rewrites that hold bit for bit in IEEE float are made here (operands
of a commutative operation in a fixed order, `x + 0`, `x * 1`, constants
folded where the float result is exact), so identity still means "rounds
the same". Equality over the reals is `canon`'s job.

Integers computed from float data (an int8 code, the index of a maximum)
are terms too, with the same operators; integer arithmetic is exact.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Union

Value = Union[int, "Term"]

COMMUTATIVE = frozenset({"add", "mul", "max", "min", "eq", "ne", "and", "or"})
COMPARISONS = frozenset({"lt", "le", "eq", "ne"})


class Term:
    """One node: `op` with `args` (terms, or plain data for leaves). Hashing
    and equality are by identity, which interning makes sound."""

    __slots__ = ("op", "args", "number", "integer")
    _table: dict[tuple[object, ...], "Term"] = {}

    def __init__(self, op: str, args: tuple[object, ...], number: int) -> None:
        self.op = op
        self.args = args
        self.number = number
        self.integer = _integer(op, args)
        """Whether the value is an integer computed from the data (an int8
        code, an int32 sum of their products): set once, here."""

    @classmethod
    def make(cls, op: str, *args: object) -> "Term":
        key = (op, *args)
        t = cls._table.get(key)
        if t is None:
            t = cls._table[key] = Term(op, args, len(cls._table))
        return t

    def __repr__(self) -> str:
        return show(self)


INTEGER_OPS = frozenset({"trunc", "idiv", "imod", "in_int", "undef_int", "narrow"})
_KEEPS_INTEGER = frozenset({"add", "sub", "mul", "neg", "ite", "max", "min"})


def _integer(op: str, args: tuple[object, ...]) -> bool:
    if op in INTEGER_OPS:
        return True
    if op not in _KEEPS_INTEGER:
        return False
    some = op == "ite"
    for a in args[1:] if some else args:
        if a.__class__ is not Term:
            continue
        if a.integer:  # type: ignore[attr-defined]
            some = True
        elif not (a.op == "const" and a.args[0].denominator == 1):  # type: ignore[attr-defined]
            return False
    return some


def const(x: Union[int, float, Fraction]) -> Term:
    return Term.make("const", Fraction(x))


ZERO = const(0)
ONE = const(1)
NEG_INF = Term.make("neginf")
POS_INF = Term.make("posinf")


def is_const(t: object, value: object = None) -> bool:
    return isinstance(t, Term) and t.op == "const" and (value is None or t.args[0] == value)


def lift(x: Value) -> Term:
    """An operand as a term (a concrete integer becomes a constant)."""
    return x if isinstance(x, Term) else const(x)


def _float_exact(x: Fraction) -> bool:
    """Whether a constant is a float32 value, so folding to it is exact."""
    if x == 0:
        return True
    num, den = abs(x.numerator), x.denominator
    if den & (den - 1):
        return False
    while num % 2 == 0:
        num //= 2
    return num < (1 << 24) and den.bit_length() < 127


def binary(op: str, a: Value, b: Value) -> Term:
    """`a op b` for the arithmetic and comparison operators of the model."""
    if a.__class__ is not Term:
        a = const(a)  # type: ignore[arg-type]
    if b.__class__ is not Term:
        b = const(b)  # type: ignore[arg-type]
    if a.op != "const" and b.op != "const" and op not in _SAME:  # type: ignore[union-attr]
        if op in COMMUTATIVE and b.number < a.number:  # type: ignore[union-attr]
            a, b = b, a
        t = Term._table.get((op, a, b))
        return t if t is not None else Term.make(op, a, b)
    if a.op == "const" and b.op == "const" and op in _FOLD:
        r = _FOLD[op](a.args[0], b.args[0])
        if isinstance(r, bool):
            return ONE if r else ZERO
        if r is not None and _float_exact(r):
            return const(r)
    unit = _UNITS.get(op)
    if unit is not None:
        if is_const(b, unit):
            return a
        if op in COMMUTATIVE and is_const(a, unit):
            return b
    elif op in ("max", "min") and a is b:
        return a
    if op in COMMUTATIVE and b.number < a.number:
        a, b = b, a
    return Term.make(op, a, b)


_SAME = frozenset({"max", "min"})
"""Operators for which `a op a` is `a`."""

_UNITS = {"and": 1, "add": 0, "mul": 1, "sub": 0, "div": 1}
"""The operand that leaves the other unchanged (on the right; on either side
for a commutative operator)."""

_FOLD = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
    "div": lambda x, y: x / y if y else None, "max": max, "min": min,
    "lt": lambda x, y: x < y, "le": lambda x, y: x <= y, "eq": lambda x, y: x == y, "ne": lambda x, y: x != y,
    "and": lambda x, y: x != 0 and y != 0, "or": lambda x, y: x != 0 or y != 0,
}


def unary(op: str, a: Value) -> Term:
    """`op(a)`: neg, not, and the math functions (exp, sqrt, ...) as symbols."""
    a = lift(a)
    if op == "neg" and a.op == "const":
        return const(-a.args[0])
    if op == "neg" and a.op == "neg":
        return a.args[0]  # type: ignore[return-value]
    if op == "not" and a.op == "const":
        return ONE if a.args[0] == 0 else ZERO
    return Term.make(op, a)


def ite(cond: Term, then: Value, other: Value) -> Value:
    """`cond ? then : other`; a decided condition picks its branch."""
    if cond.op == "const":
        return then if cond.args[0] != 0 else other
    if then is other or (not isinstance(then, Term) and not isinstance(other, Term) and then == other):
        return then
    return Term.make("ite", cond, lift(then), lift(other))


def leaf(kind: str, *data: object) -> Term:
    """An unknown: an input cell (`in`, array, offset), memory never written
    (`undef`), the result of an opaque call."""
    return Term.make(kind, *data)


def integer_bound(t: object, memo: dict[int, float]) -> float:
    """A bound on |t| when t is computed from integers of known width by
    +, -, * (and conversions to float), else infinity: float arithmetic on
    such values is exact while the bound stays under 2^24."""
    if not isinstance(t, Term):
        return abs(float(t))  # type: ignore[arg-type]
    got = memo.get(t.number)
    if got is not None:
        return got
    op = t.op
    if op == "const":
        out = abs(float(t.args[0])) if t.args[0].denominator == 1 else math.inf  # type: ignore[union-attr]
    elif op in ("in_int", "undef_int", "narrow"):
        out = float(2 ** (8 * t.args[-1] - 1))  # type: ignore[operator]
    elif op in ("tofloat", "neg", "widen"):
        out = integer_bound(t.args[0], memo)
    elif op in ("add", "sub"):
        out = integer_bound(t.args[0], memo) + integer_bound(t.args[1], memo)
    elif op == "mul":
        out = integer_bound(t.args[0], memo) * integer_bound(t.args[1], memo)
    else:
        out = math.inf
    memo[t.number] = out
    return out


def show(t: object, depth: int = 4) -> str:
    """A short readable form of a term, for messages."""
    if not isinstance(t, Term):
        return str(t)
    if t.op == "const":
        v = t.args[0]
        return str(v) if isinstance(v, int) or v.denominator == 1 else str(float(v))  # type: ignore[union-attr]
    if t.op in ("in", "in_int", "undef_int"):
        return f"{t.args[0]}[{t.args[1]}]"
    if t.op in ("neginf", "posinf"):
        return "-inf" if t.op == "neginf" else "inf"
    if depth == 0:
        return "…"
    inner = ", ".join(show(a, depth - 1) for a in t.args)
    return f"{t.op}({inner})"
