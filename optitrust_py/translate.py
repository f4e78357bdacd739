"""Level 3: instances of a changed statement that are translates of one
another share one verdict.

`locality` compares the statement X before and after a step at each of its
instances (the integers and pointers in scope when X starts). Attention
checked at two heads runs X once per head, and the two runs differ only in
where they read and write: the head index occurs in X only inside
addresses, as in `q[(h * S + i) * 64 + d]`. Such runs are one run up to a
renaming of memory: each object the first instance reaches maps to one
object of the second, and every cell moves by one amount per object.
Renaming the unknowns both runs start from, one to one, changes no equality
between their results, so the verdict at one instance is the verdict at the
other, for the code before and after the step alike.

`pattern` reads both versions of X once: which integers occur only inside
the indices of accesses from names of the scope, in polynomial indices
(`(h * S + i) * 64 + d`, never times a variable X declares). `place` gives
an instance a key: every value X reads from its scope but those integers,
the shape of each object it reaches, and how far apart its accesses to
one object are. Two instances with one key are translates when their
objects map one to one and every cell the first instance's runs touched
still lies inside its object once shifted (`translates`); else the second
runs on its own. Anything else (an integer in a condition or a bound, a
cast that would show an address, accesses to one object that move apart)
keeps instances apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Iterable, Optional

from . import ir
from .contract import int_literal
from .locality import Instance, seen_as
from .names import declared_names, free_vars
from .symexec import Ptr, _scalar_kind
from .tree import children

Poly = dict[tuple[str, ...], int]
"""An integer polynomial: each monomial (its variables, sorted) to its coefficient."""


def _poly(e: ir.Expr) -> Optional[Poly]:
    """`e` as a polynomial over its variables; None if it is anything but
    integer literals, variables, +, - and *."""
    if isinstance(e, ir.Const):
        return {(): int_literal(e.text)} if e.kind == "int" else None
    if isinstance(e, ir.Var):
        return {(e.name,): 1}
    if isinstance(e, ir.Unop) and e.op in ("-", "+"):
        p = _poly(e.arg)
        return None if p is None else {m: -c for m, c in p.items()} if e.op == "-" else p
    if isinstance(e, ir.Binop) and e.op in ("+", "-", "*"):
        a, b = _poly(e.left), _poly(e.right)
        if a is None or b is None:
            return None
        out: Poly = {} if e.op == "*" else dict(a)
        if e.op == "*":
            for ma, ca in a.items():
                for mb, cb in b.items():
                    m = tuple(sorted(ma + mb))
                    out[m] = out.get(m, 0) + ca * cb
        else:
            for m, c in b.items():
                out[m] = out.get(m, 0) + (c if e.op == "+" else -c)
        return {m: c for m, c in out.items() if c}
    return None


@dataclass(frozen=True)
class Chain:
    """An access `root[e0][e1]...` from a name X does not declare: each
    index as a polynomial, kept to the monomials with a movable integer."""

    root: str
    levels: tuple[Poly, ...]


@dataclass(frozen=True)
class Pattern:
    """What both versions of X let move between translated instances."""

    free: frozenset[str]
    """The names X reads from its scope: nothing else in scope matters to it."""
    movable: frozenset[str]
    """Integers that occur only in the indices of chains, each a polynomial."""
    chains: tuple[Chain, ...]
    bare: frozenset[str]
    """Names X uses other than as the root of a chain (a pointer passed on, added to)."""
    exposes: bool
    """X casts something to an integer: an address could become a value."""


def pattern(*versions: ir.Stmt) -> Pattern:
    """The pattern of X from its versions."""
    declared: set[str] = set()
    free: set[str] = set()
    for s in versions:
        declared |= declared_names(s)
        free |= free_vars(s)
    found: list[tuple[str, list[ir.Expr]]] = []
    direct: dict[str, int] = {}  # occurrences of each name in the arithmetic of an index of a chain from a free root
    uses: dict[str, int] = {}
    bare: set[str] = set()
    exposes = False

    def visit(n: Any, counted: bool) -> None:
        nonlocal exposes
        if isinstance(n, ir.Index):
            indices: list[ir.Expr] = []
            base: Any = n
            while isinstance(base, ir.Index):
                indices.append(base.index)
                base = base.base
            indices.reverse()
            rooted = isinstance(base, ir.Var) and base.name not in declared
            if rooted:
                found.append((base.name, indices))
                uses[base.name] = uses.get(base.name, 0) + 1
            else:
                visit(base, False)
            for e in indices:
                visit(e, rooted)
            return
        if isinstance(n, ir.Var):
            uses[n.name] = uses.get(n.name, 0) + 1
            bare.add(n.name)
            if counted:
                direct[n.name] = direct.get(n.name, 0) + 1
            return
        if isinstance(n, ir.Cast) and _scalar_kind(n.type) == "i" and not isinstance(n.arg, ir.Const):
            exposes = True
        for _, c in children(n):
            visit(c, counted and isinstance(n, (ir.Binop, ir.Unop)))
    for s in versions:
        visit(s, False)
    movable = {n for n in free - declared if direct.get(n) == uses.get(n)}
    polys: list[tuple[str, list[Optional[Poly]]]] = []
    for root, indices in found:
        levels = [_poly(e) if movable & free_vars(e) else {} for e in indices]
        for e, poly in zip(indices, levels):
            if poly is None:
                movable -= free_vars(e)
            else:  # a movable integer times a variable X declares moves the index by a different amount each time
                movable -= {x for m in poly if declared.intersection(m) for x in m}
        polys.append((root, levels))
    chains = tuple(Chain(root, tuple({m: c for m, c in (poly or {}).items() if movable.intersection(m)}
                                     for poly in levels)) for root, levels in polys)
    return Pattern(frozenset(free - declared), frozenset(movable), chains, frozenset(bare - declared), exposes)


@dataclass(frozen=True)
class Place:
    """An instance as `translates` sees it: a key (two instances with one
    key are translates, memory bounds aside), the objects X reaches, by
    class, and where the first access of each class lands."""

    key: tuple[Any, ...]
    objects: tuple[Any, ...]
    origins: tuple[int, ...]


def place(p: Pattern, at: Instance) -> Optional[Place]:
    """`at`'s place: every value X reads from its scope but the movable
    integers and where pointers point (the objects' shapes stay), which of
    X's accesses reach one object, and how far apart they are (by the
    movable part of their indices); None where sharing is not sound."""
    if p.exposes:
        return None
    parts: list[Any] = [tuple(sorted((k, v) for k, v in at.kinds.items() if k in p.free))]
    for name, v in sorted(at.env.items()):
        if name not in p.free:
            continue
        seen = "moves" if isinstance(v, int) and name in p.movable else seen_as(v, False)
        if seen is None:
            return None
        parts.append((name, seen))
    classes: dict[int, int] = {}  # object (by id) -> its class: the order X first reaches it
    objects: list[Any] = []
    origins: list[int] = []

    def reach(ptr: Ptr, offset: int) -> None:
        k = classes.get(id(ptr.alloc))
        if k is None:
            k = classes[id(ptr.alloc)] = len(objects)
            objects.append(ptr.alloc)
            origins.append(offset)
        parts.append((k, offset - origins[k]))

    for name in sorted(p.bare):
        v = at.env.get(name)
        if isinstance(v, Ptr):
            reach(v, v.offset)
    for c in p.chains:
        v = at.env.get(c.root)
        moving = any(c.levels)
        if not isinstance(v, Ptr) or len(c.levels) > len(v.rows) + 1:
            if moving:
                return None  # not an object of the scope (or a pointer loaded from memory)
            continue
        offset = v.offset
        for k, poly in enumerate(c.levels):
            for m, coef in poly.items():
                values = [at.env.get(x) for x in m]
                if not all(isinstance(x, int) for x in values):
                    return None
                offset += prod(v.rows[k:]) * coef * prod(values)  # type: ignore[arg-type]
        reach(v, offset)
    return Place(tuple(parts), tuple(objects), tuple(origins))


def translates(a: Place, b: Place, touched: Iterable[tuple[str, int]]) -> bool:
    """Whether X at `b` is X at `a` with memory renamed (the module doc),
    given places with one key and the cells (object, offset) X touched at
    `a` in both versions: objects map one to one, and every touched cell,
    shifted, lies in its object."""
    if len({id(o) for o in b.objects}) != len(b.objects):
        return False
    shift = {x.name: (y.extent, ob - oa) for x, y, oa, ob in zip(a.objects, b.objects, a.origins, b.origins)}
    for name, off in touched:
        got = shift.get(name)
        if got is None or not 0 <= off + got[1] < got[0]:
            return False
    return True
