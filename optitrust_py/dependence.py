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

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import z3

from . import ir
from .footprint import UNKNOWN, Access, Footprint, Loop, Store, cell_name
from .names import subst
from .smt import Terms, quotient_witnesses, satisfy
from .tree import walk

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
                 assume_bounds: bool = True, ranges: Optional[Mapping[str, tuple[ir.Expr, ir.Expr]]] = None) -> None:
        self.fp = fp
        self.ranges = value_ranges(fp) if ranges is None else ranges
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
            cons.extend(self.loaded_ranges(t))
            cons.extend(v for n in a.mutable if n in self.ranges for v in self.within(t.term(ren[n]), t, n))
            self._cache[key] = Encoded(index, lanes, tuple(cons) + tuple(t.facts), flat)
        return self._cache[key]

    def loaded_ranges(self, t: Terms) -> list[z3.BoolRef]:
        """What the value-range invariants say of the loads `t` made opaque."""
        out: list[z3.BoolRef] = []
        for e, v in list(t.opaque.items()):
            root = e
            while isinstance(root, ir.Index):
                root = root.base
            if isinstance(e, ir.Index) and isinstance(root, ir.Var) and root.name in self.ranges:
                out.extend(self.within(v, t, root.name))
        return out

    def within(self, v: z3.ArithRef, t: Terms, cell: str) -> tuple[z3.BoolRef, z3.BoolRef]:
        """`v` lies in the value range of `cell`."""
        lo, hi = self.ranges[cell]
        return v >= t.term(lo), v < t.term(hi)

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


# ----------------------------------------------------------------- value ranges of integer arrays


_RANGES: dict[tuple[Any, ...], dict[str, tuple[ir.Expr, ir.Expr]]] = {}


def value_ranges(fp: Footprint) -> dict[str, tuple[ir.Expr, ir.Expr]]:
    """The local integer scalars and arrays whose every value lies in
    [lo, hi), lo and hi expressions of the parameters: an inductive
    invariant, proved over all the function's stores to the cell
    (`Footprint.stores`). A store of the index of a loop proposes that
    loop's range, a copy from a cell with a range that range; each store
    must then be proved to write a value in range, where a read of a cell
    of the candidate set is assumed within its own range (the induction
    hypothesis), under the requires, the store's loops and guards. Cells
    whose stores are not all proved are dropped until the set is stable,
    so what remains holds by induction over every write of the run. Cells
    never written hold indeterminate values, which C forbids reading
    (level 2 does not check yet that a cell is written before it is read)."""
    key = (fp.function, fp.stores, fp.requires)
    if key not in _RANGES:
        by_cell: dict[str, list[Store]] = {}
        for st in fp.stores:
            by_cell.setdefault(st.access.cell, []).append(st)
        candidates: dict[str, tuple[ir.Expr, ir.Expr]] = {}
        while True:
            found = {c: r for c, sts in by_cell.items() if c not in candidates
                     and (r := _proposed(sts, candidates)) is not None}
            if not found:
                break
            candidates.update(found)
        whole = dataclasses.replace(fp, accesses=(), outer_loops=(), outer_guards=(), consts=())
        while candidates:
            space = Space(whole, assume_bounds=False, ranges=candidates)
            failed = {c for c in candidates if not all(_stores_within(space, st, candidates[c]) for st in by_cell[c])}
            if not failed:
                break
            candidates = {c: r for c, r in candidates.items() if c not in failed}
        _RANGES[key] = candidates
    return _RANGES[key]


def _proposed(stores: Sequence[Store], known: Mapping[str, tuple[ir.Expr, ir.Expr]]) \
        -> Optional[tuple[ir.Expr, ir.Expr]]:
    """The range of the first loop whose index a store writes (when that
    range reads no loop index nor mutable scalar), else that of an array of
    `known` a store copies from; None when a store's value is not known."""
    if any(st.value is None for st in stores):
        return None
    for st in stores:
        root = st.value
        while isinstance(root, ir.Index):
            root = root.base
        if isinstance(root, ir.Var) and root.name in known:
            return known[root.name]
        loop = next((lp for lp in st.access.loops if st.value == ir.Var(lp.index) and lp.step == ir.Const("1")), None)
        if loop is None:
            continue
        names = {n.name for e in (loop.start, loop.stop) for _, n in walk(e) if isinstance(n, ir.Var)}
        indices = {lp.index for lp in st.access.loops}
        if not names & (indices | set(st.access.mutable)) and not any(
                isinstance(n, (ir.Index, ir.Call)) for e in (loop.start, loop.stop) for _, n in walk(e)):
            return loop.start, loop.stop
    return None


def _stores_within(space: Space, st: Store, bounds: tuple[ir.Expr, ir.Expr]) -> bool:
    """Whether the store writes a value in [lo, hi) whenever it runs: under
    its loops and guards, where the scalars and loads the value reads are
    unknowns of their own (the body may change them after the guards were
    tested), within their ranges when they have one."""
    assert st.value is not None, "only stores of known values are proposed a range"
    enc = space.encode(st.access, 1)
    t = Terms(f"@stored{st.access.uid}")
    v = t.term(subst(st.value, {n: ir.Var(f"{n}#stored") for n in st.mutable}))
    known = [c for n in st.mutable if n in space.ranges for c in space.within(z3.Int(f"{n}#stored"), t, n)]
    outside = z3.Or(v < t.term(bounds[0]), v >= t.term(bounds[1]))
    answer, _, _ = satisfy(space.hypotheses, [*enc.constraints, *t.facts, *space.loaded_ranges(t), *known, outside])
    return answer == "unsat"
