"""Conflicts between accesses, decided by Z3.

Two accesses conflict when some run of each touches the same cell and one
of them writes. Each access is encoded for an *instance*, a tag: the loop
indices that the caller says vary between instances (`bound`) are renamed
per tag (`i` and `i'`), so "two distinct iterations of loop i" is the
relation `i != i'`; everything else (parameters, indices of the loops
around the region) is shared. A mutable scalar, a load used as an index, or
the value of an opaque expression is a fresh unknown at each access. The
hypotheses are the contract's `requires`, the ranges of the loops around
each access and the conditions that guard it.

A query answers with a counterexample (the values of both instances and of
the parameters) or proves that none exists; a time-out is neither."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import z3

from . import ir
from .footprint import UNKNOWN, Access, Footprint, Loop, cell_name
from .names import subst
from .smt import Terms, quotient_witnesses, satisfy

PRIME = {1: "", 2: "'"}


class Unknown(Exception):
    """Z3 could not decide a query (time-out or beyond its theories)."""


@dataclass(frozen=True)
class Encoded:
    index: tuple[z3.ArithRef, ...]
    lanes: z3.ArithRef
    constraints: tuple[z3.BoolRef, ...]
    flat: Optional[z3.ArithRef]


@dataclass(frozen=True)
class Conflict:
    first: Access
    second: Access
    witness: str

    def message(self, verb: str = "") -> str:
        a, b = self.first, self.second
        both = a.text == b.text and a.line == b.line and a.write == b.write and a.update == b.update
        who = f"{a.describe()} in both runs" if both else f"{a.describe()}, and {b.describe()}"
        return f"{who}: {verb} {self.witness}" if verb else f"{who} {self.witness}"


class Space:
    """Encodes the accesses of footprints for instances of a region and asks
    Z3 whether two of them can meet."""

    def __init__(self, fp: Footprint, bound: Iterable[str] = (), private: Iterable[str] = (),
                 assume_bounds: bool = True) -> None:
        self.fp = fp
        self.assume_bounds = assume_bounds
        self.bound = frozenset(bound)
        self.private = frozenset(private)
        self._cache: dict[tuple[int, int], Encoded] = {}
        shared = Terms("@shared")
        self.hypotheses: list[z3.BoolRef] = [shared.formula(r) for r in fp.requires]
        self.hypotheses.extend(quotient_witnesses(fp.requires, shared))
        for loop in fp.outer_loops:
            self.hypotheses.extend(_range(loop, shared, {}))
        self.hypotheses.extend(shared.formula(g) for g in fp.outer_guards)
        self.hypotheses.extend(shared.facts)
        self.shared_names: set[str] = set()

    def renaming(self, a: Access, tag: int) -> dict[str, ir.Expr]:
        out: dict[str, ir.Expr] = {n: ir.Var(f"{n}{PRIME[tag]}") for n in self.bound}
        for n in a.mutable:
            out[n] = ir.Var(f"{n}~{a.uid}{PRIME[tag]}")
        return out

    def encode(self, a: Access, tag: int) -> Encoded:
        key = (a.uid, tag)
        if key not in self._cache:
            ren = self.renaming(a, tag)
            t = Terms(f"~{a.uid}{PRIME[tag]}")
            index = tuple(t.term(subst(i, ren)) for i in a.index)
            cons: list[z3.BoolRef] = []
            for loop in a.loops:
                cons.extend(_range(loop, t, ren))
            cons.extend(t.formula(subst(g, ren)) for g in a.guards)
            if self.assume_bounds and a.shape is not None and len(a.index) == len(a.shape) > 1:
                # within their dimensions, as the resource check proves
                for i, d in zip(index[1:], a.shape[1:]):
                    cons.extend((i >= 0, i < t.term(subst(d, ren))))
            flat_expr = a.flat()
            flat = t.term(subst(flat_expr, ren)) if flat_expr is not None else None
            lanes = t.term(subst(a.lanes, ren))
            self._cache[key] = Encoded(index, lanes, tuple(cons) + tuple(t.facts), flat)
        return self._cache[key]

    def same_cell(self, a: Access, ta: int, b: Access, tb: int) -> Optional[z3.BoolRef]:
        """A formula for `a` (instance ta) and `b` (instance tb) touching one
        cell; None when they cannot (distinct arrays, private copies)."""
        if UNKNOWN in (a.cell, b.cell):
            return z3.BoolVal(True)
        if a.cell != b.cell or cell_name(a.cell) in self.private and ta != tb:
            return None
        if a.whole or b.whole:
            return z3.BoolVal(True)
        ea, eb = self.encode(a, ta), self.encode(b, tb)
        la, lb = z3.Int(f"lane~{a.uid}{PRIME[ta]}"), z3.Int(f"lane~{b.uid}{PRIME[tb]}")
        lanes = [la >= 0, la < ea.lanes, lb >= 0, lb < eb.lanes]
        if len(ea.index) == len(eb.index) and ea.index:
            eq = [x == y for x, y in zip(ea.index[:-1], eb.index[:-1])]
            return z3.And(*eq, ea.index[-1] + la == eb.index[-1] + lb, *lanes)
        if not ea.index and not eb.index:
            return z3.BoolVal(True)
        if ea.flat is None or eb.flat is None:
            return z3.BoolVal(True)
        return z3.And(ea.flat + la == eb.flat + lb, *lanes)

    def cell_text(self, a: Access, tag: int, model: z3.ModelRef) -> str:
        if a.cell == UNKNOWN or a.whole or not a.index:
            return a.cell if a.cell != UNKNOWN else "unknown memory"
        enc = self.encode(a, tag)
        return a.cell + "".join(f"[{model.eval(i, model_completion=True)}]" for i in enc.index)

    def meet(self, a: Access, ta: int, b: Access, tb: int, relation: Sequence[z3.BoolRef] = ()) \
            -> Optional[Conflict]:
        """A run of `a` in instance ta and of `b` in instance tb, related by
        `relation`, that touch the same cell; None when Z3 proves there is
        none. Raises Unknown when Z3 cannot decide."""
        same = self.same_cell(a, ta, b, tb)
        if same is None:
            return None
        answer, model, why = satisfy(self.hypotheses, [*self.encode(a, ta).constraints,
                                                       *self.encode(b, tb).constraints, *relation, same])
        if answer == "unsat":
            return None
        if model is None:
            raise Unknown(f"Z3 could not decide whether {a.describe()} and {b.describe()} touch the same cell "
                          f"({why})")
        return Conflict(a, b, self.witness(a, ta, b, tb, model))

    def witness(self, a: Access, ta: int, b: Access, tb: int, model: z3.ModelRef) -> str:
        cells = {self.cell_text(a, ta, model), self.cell_text(b, tb, model)}
        return f"({self.values(((a, ta), (b, tb)), model)}: {' and '.join(sorted(cells))})"

    def values(self, runs: Sequence[tuple[Access, int]], model: z3.ModelRef) -> str:
        """The loop indices of the runs, then the parameters, in a model."""
        values: list[str] = []
        shown: set[str] = set()
        for acc, tag in runs:
            for loop in self.fp.outer_loops + acc.loops:
                name = f"{loop.index}{PRIME[tag]}" if loop.index in self.bound else loop.index
                if name not in shown:
                    shown.add(name)
                    values.append(f"{name}={model.eval(z3.Int(name), model_completion=True)}")
        params = sorted({str(d) for d in model.decls() if _is_parameter(str(d))} - shown)
        sizes = ", ".join(f"{p}={model.eval(z3.Int(p), model_completion=True)}" for p in params[:6])
        return f"e.g. {', '.join(values) or 'any run'}{' with ' + sizes if sizes else ''}"


def _is_parameter(name: str) -> bool:
    return name.isidentifier()


def _range(loop: Loop, t: Terms, ren: dict[str, ir.Expr]) -> list[z3.BoolRef]:
    """A canonical loop's index: from start, below stop (always exclusive in
    the IR), by a positive step."""
    i = t.term(subst(ir.Var(loop.index), ren))
    start, stop = t.term(subst(loop.start, ren)), t.term(subst(loop.stop, ren))
    out = [i >= start, i < stop]
    if isinstance(loop.step, ir.Const) and loop.step.text.isdigit() and int(loop.step.text) > 1:
        out.append((i - start) % int(loop.step.text) == 0)
    return out


def first_conflict(space: Space, pairs: Iterable[tuple[Access, int, Access, int]],
                   relation: Callable[[Access, Access], Sequence[z3.BoolRef]],
                   keep: Callable[[Access, Access], bool] = lambda a, b: True) -> Optional[Conflict]:
    """The first pair (at least one of which writes) that can meet."""
    for a, ta, b, tb in pairs:
        if not (a.write or b.write) or not keep(a, b):
            continue
        found = space.meet(a, ta, b, tb, relation(a, b))
        if found is not None:
            return found
    return None


def instance_var(name: str, tag: int) -> z3.ArithRef:
    return z3.Int(f"{name}{PRIME[tag]}")
