"""Normal forms over the reals, so that level 3 can tell two output terms are
equal although the floats round differently (`≈fp`).

A term becomes a polynomial with rational coefficients over *atoms*: input
cells and the values a polynomial cannot express (a quotient by a sum, a
square root, a maximum, a condition's outcome). Sums and products are
flattened and merged, so reassociated or reordered reductions meet. Four
real identities do the rest:

- exp is a homomorphism: `exp(c1*m1 + ... + c0) = E(m1)^c1 * ... * E(1)^c0`
  with one atom `E(m)` per monomial, so `exp(a - m1) * exp(m1 - m2)` and
  `exp(a - m2)` meet (the online-softmax rescaling);
- `exp(-inf + ...)` is 0, -inf is dropped from a maximum and +inf from a
  minimum;
- max and min are associative, commutative and idempotent: an atom holds
  the set of its arguments' normal forms;
- a quotient by a single monomial is a product by its inverse.

Conditions (`a < b`, a flag) stay as atoms of their own. `split` lists
every assignment of the conditions two terms depend on and gives each term
under each one, so terms whose branches are laid out differently (a
routing decision tested in one and used as an index in the other) compare
branch by branch.
"""
from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, Optional, TypeVar

from .terms import NEG_INF, POS_INF, Term

Mono = tuple[tuple[int, Fraction], ...]
Poly = tuple[tuple[Mono, Fraction], ...]

_ONE_MONO: Mono = ()


K = TypeVar("K")


class _Numbering(Generic[K]):
    """Numbers for keys, in order of first use, and the key of a number."""

    def __init__(self) -> None:
        self.numbers: dict[K, int] = {}
        self.keys: list[K] = []

    def number(self, key: K) -> int:
        n = self.numbers.get(key)
        if n is None:
            n = self.numbers[key] = len(self.keys)
            self.keys.append(key)
        return n


class Normalizer:
    """Normal forms of terms, memoised per term; atoms are numbered by
    their content so equal atoms of two runs are one atom."""

    def __init__(self) -> None:
        self._atoms: _Numbering[tuple[object, ...]] = _Numbering()
        self._memo: dict[int, Poly] = {}
        self._polys: _Numbering[Poly] = _Numbering()
        self._exp_memo: dict[tuple[tuple[int, Fraction], ...], int] = {}
        self._inputs = Inputs(1)
        self._values: dict[int, float] = {}
        self._shapes: _Numbering[tuple[object, ...]] = _Numbering()
        self._shape_of: dict[int, int] = {}

    def regrouped(self, a: object, b: object) -> bool:
        """Whether the terms are the same once every chain of `+`, `*`,
        max or min is read as the multiset of what it combines: equal over
        the reals, at a fraction of a normal form's cost (no product is
        expanded, no exp rewritten), which is all a vectorized reduction
        changes."""
        return self.shape(a) == self.shape(b)

    def shape(self, t: object) -> int:
        if not isinstance(t, Term):
            return self._shapes.number(("value", t))
        stack = [t]
        while stack:
            u = stack[-1]
            if u.number in self._shape_of:
                stack.pop()
                continue
            parts = _chain(u) if u.op in _REGROUPED else u.args
            todo = [x for x in parts if isinstance(x, Term) and x.number not in self._shape_of]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            shapes = [self._shape_of[x.number] if isinstance(x, Term) else self._shapes.number(("value", x))
                      for x in parts]
            key = (u.op, *sorted(shapes)) if u.op in _REGROUPED else (u.op, *shapes)
            self._shape_of[u.number] = self._shapes.number(key)
        return self._shape_of[t.number]

    def value(self, t: object) -> float:
        """`t` over the reals on the first seed's inputs (memoised: the
        cells of every comparison of a script share their subterms)."""
        return evaluate(t, self._inputs, self._values)

    def atom(self, *key: object) -> int:
        return self._atoms.number(key)

    def poly_id(self, p: Poly) -> int:
        return self._polys.number(p)

    def normal(self, t: object) -> Poly:
        if not isinstance(t, Term):
            return _constant(Fraction(t))  # type: ignore[arg-type]
        got = self._memo.get(t.number)
        if got is None:
            got = self._memo[t.number] = self._normal(t)
        return got

    def _normal(self, t: Term) -> Poly:
        op, args = t.op, t.args
        if op == "const":
            return _constant(args[0])  # type: ignore[arg-type]
        if op == "add":
            return _sum(self._addends(t))
        if op == "sub":
            return _sum([self.normal(args[0]), _scale(self.normal(args[1]), -1)])
        if op == "neg":
            return _scale(self.normal(args[0]), -1)
        if op == "mul":
            return self._product(self.normal(args[0]), self.normal(args[1]))
        if op == "div":
            return self._divide(self.normal(args[0]), self.normal(args[1]))
        if op == "exp":
            return self._exp(self.normal(args[0]))
        if op in ("fma", "fnma"):
            prod = self._product(self.normal(args[0]), self.normal(args[1]))
            return _sum([_scale(prod, Fraction(1 if op == "fma" else -1)), self.normal(args[2])])
        if op in ("max", "min"):
            return self._extremum(op, t)
        if op == "ite":
            return self._ite(t)
        if op in ("tofloat", "widen"):
            return self.normal(args[0])
        if op in ("neginf", "posinf"):
            return self._unit(t)
        kids = tuple(self.poly_id(self.normal(a)) if isinstance(a, Term) else ("data", a) for a in args)
        return _monomial(((self.atom(op, *kids), 1),))

    def _product(self, p: Poly, q: Poly) -> Poly:
        if len(p) == 1 and p[0][0] == _ONE_MONO:
            return _scale(q, p[0][1])
        if len(q) == 1 and q[0][0] == _ONE_MONO:
            return _scale(p, q[0][1])
        acc: dict[Mono, Fraction] = {}
        for m1, c1 in p:
            for m2, c2 in q:
                m = self._merge(m1, m2)
                acc[m] = _small(acc.get(m, 0) + c1 * c2)
        return tuple(sorted((m, c) for m, c in acc.items() if c != 0))

    def _merge(self, m1: Mono, m2: Mono) -> Mono:
        """The product of two monomials; exponentials meet in one atom,
        `E(a)^x * E(b)^y = E(x*a + y*b)`."""
        powers: dict[int, Fraction] = dict(m1)
        for a, e in m2:
            powers[a] = _small(powers.get(a, 0) + e)
        exps = [(a, e) for a, e in powers.items() if self._atoms.keys[a][0] == "E" and e != 0]
        if len(exps) > 1 or (exps and exps[0][1] != 1):
            for a, _ in exps:
                del powers[a]
            key = tuple(sorted(exps))
            merged = self._exp_memo.get(key)
            if merged is None:
                parts = [_scale(self._polys.keys[self._atoms.keys[a][1]], e) for a, e in exps]  # type: ignore[index]
                total = _sum(parts)
                merged = self._exp_memo[key] = self.atom("E", self.poly_id(total)) if total else -1
            if merged >= 0:
                powers[merged] = 1
        return tuple(sorted((a, e) for a, e in powers.items() if e != 0))

    def _addends(self, t: Term) -> list[Poly]:
        """The normal forms of the leaves of a tree of additions, without
        normalising the partial sums (a running sum of n terms would cost n²)."""
        out: list[Poly] = []
        stack = [t]
        while stack:
            u = stack.pop()
            if isinstance(u, Term) and u.op == "add" and u.number not in self._memo:
                stack.extend(u.args)  # type: ignore[arg-type]
            else:
                out.append(self.normal(u))
        return out

    def _divide(self, num: Poly, den: Poly) -> Poly:
        if len(den) == 1:
            mono, coef = den[0]
            if coef != 0:
                inv = tuple((a, -e) for a, e in mono)
                return self._product(num, ((inv, 1 / coef),))
        return self._product(num, _monomial(((self.atom("inv", self.poly_id(den)), 1),)))

    def _exp(self, arg: Poly) -> Poly:
        neginf = self._atoms.numbers.get(("neginf",))
        if neginf is not None and any(m == ((neginf, 1),) and c > 0 for m, c in arg):
            return _constant(Fraction(0))
        if not arg:
            return _constant(Fraction(1))
        return _monomial(((self.atom("E", self.poly_id(arg)), 1),))

    def _extremum(self, op: str, t: Term) -> Poly:
        members: set[int] = set()
        stack = list(t.args)
        unit = NEG_INF if op == "max" else POS_INF
        while stack:
            u = stack.pop()
            if isinstance(u, Term) and u.op == op:
                stack.extend(u.args)
                continue
            if u is unit:
                continue
            p = self.normal(u)
            inner = self._atom_key(p)
            if inner is not None and inner[0] == op:
                members.update(inner[1])  # type: ignore[arg-type]
            else:
                members.add(self.poly_id(p))
        if len(members) <= 1:
            return self._polys.keys[members.pop()] if members else self._unit(unit)
        return _monomial(((self.atom(op, frozenset(members)), 1),))

    def _unit(self, t: Term) -> Poly:
        """An infinity as a polynomial: an atom of its own (a maximum of
        nothing but -inf, a minimum of nothing but +inf)."""
        return _monomial(((self.atom(t.op), 1),))

    def _atom_key(self, p: Poly) -> Optional[tuple[object, ...]]:
        """The key of the atom a polynomial is exactly (coefficient 1), if any."""
        if len(p) == 1 and p[0][1] == 1 and len(p[0][0]) == 1 and p[0][0][0][1] == 1:
            return self._atoms.keys[p[0][0][0][0]]
        return None

    def _ite(self, t: Term) -> Poly:
        cond, then, other = t.args
        c, a, b = (self.normal(x) for x in (cond, then, other))
        if c == _constant(Fraction(0)):
            return b
        if len(c) == 1 and c[0][0] == _ONE_MONO:
            return a
        if a == b:
            return a
        if isinstance(cond, Term) and cond.op == "lt":
            lo, hi = cond.args
            if then is hi and other is lo:
                return self._extremum("max", Term.make("max", lo, hi))
            if then is lo and other is hi:
                return self._extremum("min", Term.make("min", lo, hi))
        return _monomial(((self.atom("ite", self.poly_id(c), self.poly_id(a), self.poly_id(b)), 1),))


def _constant(x: Fraction) -> Poly:
    return () if x == 0 else ((_ONE_MONO, _small(x)),)


def _monomial(mono: Mono) -> Poly:
    return ((mono, 1),)


def _small(x: Fraction) -> Fraction:
    """An integral coefficient or exponent as an int: equal, with the same
    hash, and far cheaper to hash and add than a Fraction (polynomials are
    dictionary keys all the time)."""
    return x.numerator if x.__class__ is Fraction and x.denominator == 1 else x  # type: ignore[return-value]


def _sum(parts: list[Poly]) -> Poly:
    acc: dict[Mono, Fraction] = {}
    for p in parts:
        for mono, coef in p:
            acc[mono] = _small(acc.get(mono, 0) + coef)
    return tuple(sorted((m, c) for m, c in acc.items() if c != 0))


def _scale(p: Poly, k: Fraction) -> Poly:
    return tuple((m, _small(c * k)) for m, c in p) if k else ()


# ---------------------------------------------------------------- case splits

def subterms(terms: Iterable[object]) -> Iterator[Term]:
    """Every subterm of the terms, each once (the DAG, not the tree)."""
    seen: set[int] = set()
    stack = [t for t in terms if isinstance(t, Term)]
    while stack:
        u = stack.pop()
        if u.number in seen:
            continue
        seen.add(u.number)
        yield u
        stack.extend(a for a in u.args if isinstance(a, Term))


def conditions(terms: list[object], limit: int, first: bool = False) -> Optional[list[Term]]:
    """The conditions of the `ite`s the terms contain (None past `limit`);
    with `first`, only those that hold no other one: the ones to split on
    first (a routing's second choice compares against the winner of its
    first: deciding that one decides or rewrites it, and splitting on it
    alone would try cases that cannot happen)."""
    found: dict[int, Term] = {}
    for t in terms:
        if isinstance(t, Term):
            for c in _conditions_in(t):
                found.setdefault(c.number, c)
            if len(found) > limit:
                return None
    inner = _inner_conditions(list(found.values()), found.keys()) if first else {}
    return sorted((c for c in found.values() if not inner.get(c.number)), key=lambda c: c.number)


_NONE: frozenset[Term] = frozenset()
_CONDITIONS: dict[int, frozenset[Term]] = {}
"""The conditions of the `ite`s under each term, by its number: the cells of
a run share most of their DAG, so each node is visited once per script."""


def _conditions_in(t: Term) -> frozenset[Term]:
    def own(u: Term, kids: list[Term]) -> frozenset[Term]:
        sets = [s for s in (_CONDITIONS[k.number] for k in kids) if s]
        got = sets[0] if len(sets) == 1 else frozenset().union(*sets) if sets else _NONE
        if u.op != "ite":
            return got
        bases, mine = [u.args[0]], set()
        while bases:
            c = bases.pop()
            assert isinstance(c, Term)
            if c.op in ("and", "or", "not"):
                bases.extend(c.args)  # type: ignore[arg-type]
            elif c.op != "const":
                mine.add(c)
        return got | mine
    _bottom_up([t], _CONDITIONS, own)
    return _CONDITIONS[t.number]


def _inner_conditions(conds: list[Term], found: Iterable[int]) -> dict[int, bool]:
    """For each condition, whether another one is inside it: one pass over
    their DAG, bottom up."""
    wanted = set(found)
    holds: dict[int, bool] = {}
    _bottom_up(conds, holds, lambda u, kids: any(a.number in wanted or holds[a.number] for a in kids))
    return holds


def _bottom_up(roots: list[Term], memo: dict[int, Any], value: Callable[[Term, list[Term]], Any]) -> None:
    """Fills `memo` (by term number) for every term under `roots`, each
    from the term and its operands (whose values are in `memo` by then),
    without recursion: a long chain of sums is deep."""
    stack: list[tuple[Term, bool]] = [(t, False) for t in roots]
    while stack:
        u, ready = stack.pop()
        if u.number in memo:
            continue
        kids = [a for a in u.args if isinstance(a, Term)]
        if not ready:
            stack.append((u, True))
            stack.extend((k, False) for k in kids if k.number not in memo)
            continue
        memo[u.number] = value(u, kids)


def split(terms: list[object], conds: list[Term]) -> Iterator[tuple[dict[int, bool], list[object]]]:
    """For each assignment of `conds`, the terms with those conditions
    decided (conditions between decided ones are decided in turn)."""
    for values in itertools.product((True, False), repeat=len(conds)):
        choice = {c.number: v for c, v in zip(conds, values)}
        memo: dict[int, object] = {}
        yield choice, [_decide(t, choice, memo) for t in terms]


def _decide(t: object, choice: Mapping[int, bool], memo: dict[int, object]) -> object:
    from . import terms as T

    return substitute(t, {n: T.ONE if v else T.ZERO for n, v in choice.items()}, memo)


def substitute(t: object, table: Mapping[int, object], memo: dict[int, object]) -> object:
    """`t` with each subterm whose number `table` holds replaced by its
    value, rebuilt through the constructors of `terms` (so folds, operand
    order and interning hold: a rebuilt term is the term a run computing it
    would have built); an `ite` whose condition becomes a constant is
    replaced by its branch, the other never rebuilt."""
    from . import terms as T

    if not isinstance(t, Term):
        return t
    if t.number in table:
        return table[t.number]
    if not t.args or t.op in ("const", "in", "undef", "in_int", "undef_int"):
        return t
    got = memo.get(t.number)
    if got is not None:
        return got
    cond = substitute(t.args[0], table, memo) if t.op == "ite" else None
    if isinstance(cond, Term) and cond.op == "const":
        out = substitute(t.args[1] if cond.args[0] != 0 else t.args[2], table, memo)
    else:
        args = tuple(substitute(a, table, memo) for a in t.args)
        if all(a is b for a, b in zip(args, t.args)):
            out = t
        elif t.op == "ite":
            out = T.ite(args[0], args[1], args[2])  # type: ignore[arg-type]
        elif len(args) == 2 and t.op in T._FOLD:
            out = T.binary(t.op, args[0], args[1])  # type: ignore[arg-type]
        elif t.op == "not":
            out = T.unary("not", args[0])  # type: ignore[arg-type]
        else:
            out = Term.make(t.op, *args)
    memo[t.number] = out
    return out


_REGROUPED = frozenset({"add", "mul", "max", "min"})
"""Operators associative and commutative over the reals."""


def _chain(t: Term) -> list[object]:
    """What a chain of `t`'s operator combines, through nested ones."""
    out: list[object] = []
    stack: list[object] = [t]
    while stack:
        u = stack.pop()
        if isinstance(u, Term) and u.op == t.op:
            stack.extend(u.args)
        else:
            out.append(u)
    return out


def evaluate(t: object, inputs: "Inputs", memo: dict[int, float]) -> float:
    """The value of a term over the reals (as a double) on given inputs."""
    if not isinstance(t, Term):
        return float(t)  # type: ignore[arg-type]
    stack = [t]
    while stack:
        u = stack[-1]
        if u.number in memo:
            stack.pop()
            continue
        todo = [x for x in u.args if isinstance(x, Term) and x.number not in memo]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        a = [memo[x.number] if isinstance(x, Term) else x for x in u.args]
        memo[u.number] = _EVAL[u.op](a, u, inputs) if u.op in _EVAL else _EVAL_BINARY[u.op](a[0], a[1])
    return memo[t.number]


class Inputs:
    """Reproducible pseudo-random values for the unknowns of a run."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._values: dict[tuple[object, ...], float] = {}

    def value(self, key: tuple[object, ...]) -> float:
        v = self._values.get(key)
        if v is None:
            v = self._values[key] = random.Random(f"{self.seed}:{key}").uniform(-2.0, 2.0)
        return v


_CALLS = {"pow": lambda x, y: math.pow(abs(x), y), "sin": math.sin, "cos": math.cos, "tanh": math.tanh,
          "log": lambda x: math.log(abs(x) or 1e-300), "fabs": abs}


def _safe_exp(x: float) -> float:
    return math.exp(min(x, 700.0))


_EVAL = {
    "const": lambda a, t, i: float(t.args[0]),
    "in": lambda a, t, i: i.value(("in", *t.args)),
    "undef": lambda a, t, i: i.value(("undef", *t.args)),
    "in_int": lambda a, t, i: float(round(i.value(("in", *t.args)) * 63)),
    "undef_int": lambda a, t, i: float(round(i.value(("undef", *t.args)) * 63)),
    "narrow": lambda a, t, i: float((int(a[0]) + 2 ** (8 * a[1] - 1)) % 2 ** (8 * a[1]) - 2 ** (8 * a[1] - 1)),
    "neginf": lambda a, t, i: -math.inf,
    "posinf": lambda a, t, i: math.inf,
    "neg": lambda a, t, i: -a[0],
    "not": lambda a, t, i: float(a[0] == 0),
    "exp": lambda a, t, i: _safe_exp(a[0]),
    "sqrt": lambda a, t, i: math.sqrt(abs(a[0])),
    "round": lambda a, t, i: math.copysign(math.floor(abs(a[0]) + 0.5), a[0]),  # C's roundf: halves away from 0
    "trunc": lambda a, t, i: float(math.trunc(a[0])) if math.isfinite(a[0]) else a[0],
    "tofloat": lambda a, t, i: a[0],
    "widen": lambda a, t, i: a[0],
    "ite": lambda a, t, i: a[1] if a[0] != 0 else a[2],
    "fma": lambda a, t, i: a[0] * a[1] + a[2],
    "call": lambda a, t, i: _CALLS[a[0]](*a[1:]),
    "fnma": lambda a, t, i: a[2] - a[0] * a[1],
}
_EVAL_BINARY = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: 0.0 if x == 0 or y == 0 else x * y,
    "div": lambda x, y: x / y if y else math.copysign(math.inf, x),
    "max": max, "min": min, "lt": lambda x, y: float(x < y), "le": lambda x, y: float(x <= y),
    "eq": lambda x, y: float(x == y), "ne": lambda x, y: float(x != y),
    "and": lambda x, y: float(bool(x) and bool(y)), "or": lambda x, y: float(bool(x) or bool(y)),
    "idiv": lambda x, y: float(math.trunc(x / y)) if y else 0.0, "imod": lambda x, y: math.fmod(x, y) if y else 0.0,
}
