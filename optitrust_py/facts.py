"""Level-2 dischargers for the arithmetic and layout facts that steps claim:
divisibility, ranges, signs, loop bounds and equalities at a place; the
per-dimension bounds of delinearised accesses; the region of a local buffer
(every access lies in it, every cell of it is written); the value range of
a narrowed array; and the side conditions of inlining a call.

A claim is decided by Z3 under what holds at its place (the contract's
`requires`, the ranges of the loops around it, the conditions guarding it:
`dependence.Space`). A scalar that the function assigns is a fresh unknown
in the claim, since the hypotheses may speak of another of its values. A
counterexample shows the parameters and loop indices; when it also rests on
a value that level 2 does not follow (a local, an assigned scalar, a load),
Z3's model may not be reachable, so the verdict is "unknown", never
"refuted"."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import z3

from . import ir
from .dependence import Space, Unknown
from .footprint import UNKNOWN, Access, Footprint, assigned_scalars, footprint
from .goal import Goal, discharges
from .intrinsics import CONVERSIONS
from .layout import ONE, ZERO, delinearize, linearize, product, signed_sum, terms as sum_terms
from .names import free_vars, has_side_effects, subst
from .printer import expr as expr_text, type_name
from .smt import QUOTIENT, Terms, c_mod, solver as new_solver, unknown_reason
from .tree import Path, get, walk
from .typeof import env_at, integer_range, is_arithmetic, type_of, typedefs_of, unqualified

Outcome = tuple[str, str]
PROVED: Outcome = ("proved", "")


# ----------------------------------------------------------------- claims and places


@dataclass(frozen=True)
class _Fact:
    """One conjunct of a claim, and what fails, in words, under a model."""

    formula: z3.BoolRef
    failure: Callable[[z3.ModelRef], str]


class _Claim:
    """The Z3 facts a claim needs, over expressions as they read at one
    place: constant locals replaced by their values (`Footprint.resolve`),
    and each scalar the function assigns a fresh unknown. C semantics of /
    and %; each divisor must be non-zero."""

    def __init__(self, fp: Footprint, mutable: frozenset[str]) -> None:
        self.fp = fp
        self.mutable = mutable
        self.terms = Terms("@claim")
        self.facts: list[_Fact] = []

    def resolve(self, e: ir.Expr, at: Optional[Footprint] = None) -> ir.Expr:
        """`e` as it reads at the claim's place, or at the place of `at`."""
        return (at or self.fp).resolve(e)

    def term(self, e: ir.Expr, at: Optional[Footprint] = None) -> z3.ArithRef:
        return self.terms.term(self._fresh(self.resolve(e, at)))

    def formula(self, e: ir.Expr) -> z3.BoolRef:
        return self.terms.formula(self._fresh(self.resolve(e)))

    def _fresh(self, e: ir.Expr) -> ir.Expr:
        return subst(e, {n: ir.Var(f"{n}~") for n in free_vars(e) & self.mutable})

    def need(self, formula: z3.BoolRef, failure: Callable[[z3.ModelRef], str]) -> None:
        self.facts.append(_Fact(formula, failure))

    def all_facts(self) -> list[_Fact]:
        """The divisors first: a claim that divides by zero means nothing."""
        return [_nonzero(d) for d in self.terms.divisors] + self.facts


def _nonzero(divisor: z3.ArithRef) -> _Fact:
    return _Fact(divisor != 0, lambda m: f"it divides by {divisor}, which is 0")


@dataclass(frozen=True)
class _Place:
    """What holds at a place (its footprint context as Z3 hypotheses), which
    names a counterexample may show as real values (parameters the function
    never assigns, indices of the loops around), the scalars that may have
    changed, and the place's line."""

    fp: Footprint
    hypotheses: tuple[z3.BoolRef, ...]
    tracked: frozenset[str]
    mutable: frozenset[str]
    line: Optional[int]
    space: Optional[Space] = None

    def loaded(self, terms: Terms) -> list[z3.BoolRef]:
        """What the value-range invariants say of the loads a claim reads."""
        return self.space.loaded_ranges(terms) if self.space is not None else []

    def claim(self) -> _Claim:
        return _Claim(self.fp, self.mutable)


def _place(goal: Goal, path: Path, program: Optional[ir.Program] = None) -> _Place:
    """The place at `path` in `program` (default: the goal's): its context
    only, the statement there is not walked."""
    program = program or goal.program
    fp = footprint(program, path, goal.contracts, node=ir.Const("0"))
    fn: ir.FuncDef = get(program, path[:1])
    indices = {loop.index for loop in fp.outer_loops}
    assigned = assigned_scalars(fn.body) - indices
    params = {p.name for p in fn.params if p.name} - assigned
    space = Space(fp, assume_bounds=False)
    return _Place(fp, tuple(space.hypotheses), frozenset(params | indices), frozenset(assigned),
                  _line(program, path), space)


def _line(program: ir.Program, path: Path) -> Optional[int]:
    """The line of the node at `path`, or of the nearest node above it that has one."""
    for k in range(len(path), 0, -1):
        loc = getattr(get(program, path[:k]), "loc", None)
        if loc is not None:
            return loc.line
    return None


def _decide(place: _Place, claim: _Claim, what: str) -> Outcome:
    """Proved when no model of the hypotheses breaks a fact of the claim;
    otherwise the first fact that breaks, with the model's values."""
    facts = claim.all_facts()
    solver = new_solver()
    solver.add(*place.hypotheses, *claim.terms.facts, *place.loaded(claim.terms),
               z3.Not(z3.And(*[f.formula for f in facts])))
    answer = solver.check()
    at = f"line {place.line}: " if place.line else ""
    if answer == z3.unsat:
        return PROVED
    if answer != z3.sat:
        return "unknown", f"{at}Z3 could not decide whether {what} ({unknown_reason(solver)})"
    model = solver.model()
    failed = next((f for f in facts if z3.is_false(model.eval(f.formula, model_completion=True))), facts[-1])
    return _counterexample(place, model, failed.formula, at + failed.failure(model))


def _counterexample(place: _Place, model: z3.ModelRef, formula: z3.BoolRef, failure: str,
                    extra: Sequence[z3.BoolRef] = ()) -> Outcome:
    """"refuted" with the values of the model, or "unknown" when the query
    rests on a value level 2 does not follow."""
    names = sorted(_constants(*place.hypotheses, *extra, formula))
    untracked = [n for n in names if n not in place.tracked and not _is_cell(n) and not n.startswith(QUOTIENT)]
    first = sorted(n for n in _constants(formula) if n in place.tracked)
    shown = first + [n for n in names if n in place.tracked and n not in first]
    values = ", ".join(f"{n}={model.eval(z3.Int(n), model_completion=True)}" for n in shown[:8]) or "any values"
    if untracked:
        readable = ", ".join(sorted({_readable(n) for n in untracked}))
        return "unknown", (f"not proved: {failure} (e.g. {values}), but this rests on {readable}, whose value "
                           f"at this place level 2 does not follow")
    return "refuted", f"{failure} (e.g. {values})"


def _constants(*formulas: z3.ExprRef) -> set[str]:
    """The names of the free integer constants of some formulas."""
    out: set[str] = set()
    seen: set[int] = set()
    todo = list(formulas)
    while todo:
        e = todo.pop()
        if e.get_id() in seen:
            continue
        seen.add(e.get_id())
        if z3.is_const(e) and e.decl().kind() == z3.Z3_OP_UNINTERPRETED:
            out.add(e.decl().name())
        elif z3.is_quantifier(e):
            todo.append(e.body())
        elif z3.is_app(e):
            todo.extend(e.children())
    return out


def _readable(name: str) -> str:
    """A Z3 name as the user knows it: `n~` and `n~12` are the scalar `n`
    the function assigns, `0:opaque...` a value read from memory or a call."""
    if "opaque" in name:
        return "a value read from memory or returned by a call"
    return f"'{name.split('~')[0]}'"


def _is_cell(name: str) -> bool:
    return name.startswith("cell[")


def _shown(e: ir.Expr, t: z3.ArithRef, model: z3.ModelRef) -> str:
    """`e`, with its value under the model unless it is a literal."""
    text = expr_text(e)
    value = str(model.eval(t, model_completion=True))
    return text if text == value else f"{text} = {value}"


# ----------------------------------------------------------------- arithmetic at a place


def _divides(c: _Claim, size: ir.Expr, extent: ir.Expr) -> None:
    s, x = c.term(size), c.term(extent)
    c.need(s > 0, lambda m: f"the size {_shown(size, s, m)} is not positive")
    c.need(c_mod(x, s) == 0, lambda m: f"{_shown(size, s, m)} does not divide {_shown(extent, x, m)}")


def _in_range(c: _Claim, start: ir.Expr, at: ir.Expr, stop: ir.Expr) -> None:
    a, p, b = c.term(start), c.term(at), c.term(stop)
    c.need(a <= p, lambda m: f"the point {_shown(at, p, m)} is below the start {_shown(start, a, m)}")
    c.need(p <= b, lambda m: f"the point {_shown(at, p, m)} is beyond the stop {_shown(stop, b, m)}")


def _positive(c: _Claim, e: ir.Expr) -> None:
    t = c.term(e)
    c.need(t > 0, lambda m: f"{_shown(e, t, m)} is not positive")


def _nonempty(c: _Claim, start: ir.Expr, stop: ir.Expr) -> None:
    a, b = c.term(start), c.term(stop)
    c.need(a < b, lambda m: f"the loop runs no iteration: {_shown(start, a, m)} is not below {_shown(stop, b, m)}")


def _ordered(c: _Claim, start: ir.Expr, stop: ir.Expr) -> None:
    a, b = c.term(start), c.term(stop)
    c.need(a <= b, lambda m: f"the start {_shown(start, a, m)} is beyond the stop {_shown(stop, b, m)}")


def _equals(c: _Claim, e: ir.Expr, value: ir.Expr) -> None:
    while isinstance(value, ir.Cast) and isinstance(value.arg, (ir.Const, ir.Unop)):
        value = value.arg  # a literal cast to the parameter's type has the literal's value
    t, v = c.term(e), c.term(value)
    c.need(t == v, lambda m: f"{_shown(e, t, m)}, not {expr_text(value)}")


_ARITHMETIC: dict[str, Callable[..., None]] = {
    "divides": _divides, "in_range": _in_range, "positive": _positive, "nonempty": _nonempty,
    "ordered_bounds": _ordered, "equals": _equals,
}
_ARITY = {"divides": 2, "in_range": 3, "positive": 1, "nonempty": 2, "ordered_bounds": 2, "equals": 2}


@discharges(*_ARITHMETIC)
def arithmetic(goal: Goal) -> Outcome:
    """An integer fact about the obligation's expressions, at its first path."""
    ob = goal.obligation
    if len(ob.exprs) != _ARITY[ob.kind] or not ob.paths:
        return "unknown", f"a '{ob.kind}' obligation needs {_ARITY[ob.kind]} expressions and a place"
    place = _place(goal, ob.paths[0])
    claim = place.claim()
    _ARITHMETIC[ob.kind](claim, *ob.exprs)
    return _decide(place, claim, ob.claim)


# ----------------------------------------------------------------- accesses to an array


def _chain(e: ir.Expr) -> tuple[tuple[ir.Expr, ...], ir.Expr]:
    """`a[i][j]` as ((i, j), a)."""
    index: list[ir.Expr] = []
    while isinstance(e, ir.Index):
        index.append(e.index)
        e = e.base
    return tuple(reversed(index)), e


def _array_accesses(program: ir.Program, root: Path, array: str) -> Iterator[tuple[Path, ir.Index]]:
    """The outermost `array[...]...[...]` expressions under `root`."""
    for path, n in walk(get(program, root), root):
        if isinstance(n, ir.Index) and _chain(n)[1] == ir.Var(array) and not (
                path[-1:] == (("base", None),) and isinstance(get(program, path[:-1]), ir.Index)):
            yield path, n


def _parts(node: ir.Index, shape: Sequence[ir.Expr]) -> Optional[tuple[ir.Expr, ...]]:
    """The per-dimension indices of an access for `shape`: its own indices,
    or its one flattened index split as the layout transformations split it."""
    index, _ = _chain(node)
    if len(index) == len(shape):
        return index
    return delinearize(index[0], shape) if len(index) == 1 else None


def _between(c: _Claim, label: str, e: ir.Expr, low: ir.Expr, high: ir.Expr, what: str) -> None:
    """low <= e < high."""
    t, a, b = c.term(e), c.term(low), c.term(high)
    c.need(a <= t, lambda m: f"{label}, {_shown(e, t, m)}, is below {_shown(low, a, m)} ({what})")
    c.need(t < b, lambda m: f"{label}, {_shown(e, t, m)}, is not below {_shown(high, b, m)} ({what})")


def _within(c: _Claim, text: str, parts: Sequence[ir.Expr], lows: Sequence[ir.Expr], highs: Sequence[ir.Expr],
            what: str) -> None:
    """lows[d] <= parts[d] < highs[d] for each dimension d of an access."""
    for d, (p, lo, hi) in enumerate(zip(parts, lows, highs)):
        _between(c, f"index {d} of '{text}'", p, lo, hi, what)


@discharges("delinearize")
def delinearized(goal: Goal) -> Outcome:
    """Each index that an access splits into lies within its dimension, under
    the hypotheses at the access (its loops and guards included)."""
    ob = goal.obligation
    shape = ob.exprs
    zeros = [ZERO] * len(shape)
    for path in ob.paths:
        node = get(goal.program, path)
        parts = _parts(node, shape) if isinstance(node, ir.Index) else None
        text = expr_text(node)
        if parts is None:
            return "unknown", f"'{text}' does not split into {len(shape)} indices"
        place = _place(goal, path)
        claim = place.claim()
        _within(claim, text, parts, zeros, shape, "its dimension")
        status, reason = _decide(place, claim, f"the indices of '{text}' lie within their dimensions")
        if status != "proved":
            return status, reason
    return PROVED


@dataclass(frozen=True)
class _Region:
    """The region of an array that a local buffer holds, the shape its
    accesses are split with, the loop's footprint, and each access to the
    array with its per-dimension indices."""

    array: str
    origins: tuple[ir.Expr, ...]
    sizes: tuple[ir.Expr, ...]
    shape: tuple[ir.Expr, ...]
    own: Optional[tuple[ir.Expr, ...]]
    fp: Footprint
    accesses: tuple[tuple[Path, ir.Index, tuple[ir.Expr, ...]], ...]

    def ends(self) -> list[ir.Expr]:
        return [ir.Binop("+", o, s) for o, s in zip(self.origins, self.sizes)]

    def access_at(self, path: Path) -> Optional[Access]:
        return next((a for a in self.fp.accesses if a.path == path and a.cell == self.array), None)


def _region(goal: Goal) -> "_Region | Outcome":
    """The region of an `in_region` or `covers` obligation (exprs: the
    origins, the sizes, and the shape the accesses are split with), or why
    it cannot be read. The array's own extent (its contract, declaration or
    allocation) is kept to check a region stated in another shape."""
    ob = goal.obligation
    program, loop_path = goal.program, ob.paths[0]
    if not ob.names:
        return "unknown", "the obligation does not name the array"
    array = ob.names[0]
    found = dict(_array_accesses(program, loop_path, array))
    fp = footprint(program, loop_path, goal.contracts)
    stray = [a for a in fp.accesses if a.cell == UNKNOWN or a.cell == array and a.path not in found]
    if stray:
        return "unknown", f"{stray[0].describe()} may reach '{array}' other than by indexing it"
    own = fp.sizes.get(array) or next((a.shape for a in fp.accesses if a.cell == array and a.shape), None)
    shape = _split_shape(ob.exprs, {len(_chain(n)[0]) for n in found.values()})
    if shape is None:
        return "unknown", (f"the {len(ob.exprs)} expressions of the region do not match the accesses to '{array}' "
                           f"(expected the origins, the sizes and the shape they are split with)")
    rank = len(shape)
    accesses = []
    for path, node in found.items():
        split = _parts(node, shape)
        if split is None:
            return "unknown", f"'{expr_text(node)}' does not split for the shape {_shape_text(shape)}"
        accesses.append((path, node, split))
    return _Region(array, ob.exprs[:rank], ob.exprs[rank:2 * rank], shape, own, fp, tuple(accesses))


def _split_shape(exprs: Sequence[ir.Expr], lengths: set[int]) -> Optional[tuple[ir.Expr, ...]]:
    """The shape the region's accesses are split with, the last third of
    `exprs` (origins, sizes, shape); None when the accesses do not index
    that many dimensions nor one flattened index."""
    rank = len(exprs) // 3
    if rank < 1 or len(exprs) % 3 or not lengths <= {1, rank}:
        return None
    return tuple(exprs[2 * rank:])


@discharges("in_region")
def in_region(goal: Goal) -> Outcome:
    """The region has sizes >= 1 and lies within the array, and every access
    of the loop to the array lies in it."""
    region = _region(goal)
    if isinstance(region, tuple):
        return region
    ob = goal.obligation
    place = _place(goal, ob.paths[0])
    claim = place.claim()
    ends = region.ends()
    for d, (o, size, end, dim) in enumerate(zip(region.origins, region.sizes, ends, region.shape)):
        _region_within(claim, f"dimension {d} of '{region.array}' {_shape_text(region.shape)}", o, size, end, dim)
    if region.own is not None and region.own != region.shape:
        last = linearize([ir.Binop("-", e, ONE) for e in ends], region.shape)
        _last_cell(claim, region.array, last, product(list(region.own)))
    status, reason = _decide(place, claim, ob.claim)
    if status != "proved":
        return status, reason
    for path, node, split in region.accesses:
        at = _place(goal, path)
        claim = at.claim()
        _within(claim, expr_text(node), split, region.origins, ends, "the region")
        status, reason = _decide(at, claim, f"'{expr_text(node)}' lies in the region")
        if status != "proved":
            return status, reason
    return PROVED


def _region_within(c: _Claim, where: str, origin: ir.Expr, size: ir.Expr, end: ir.Expr, dim: ir.Expr) -> None:
    """size >= 1 and 0 <= origin, origin + size <= dim."""
    o, s, e, d = c.term(origin), c.term(size), c.term(end), c.term(dim)
    c.need(s >= 1, lambda m: f"the region's size {_shown(size, s, m)} along {where} is not positive")
    c.need(o >= 0, lambda m: f"the region starts at {_shown(origin, o, m)}, before {where}")
    c.need(e <= d, lambda m: f"the region ends at {_shown(end, e, m)}, beyond {where}, whose size is "
           f"{_shown(dim, d, m)}")


def _last_cell(c: _Claim, array: str, last: ir.Expr, cells: ir.Expr) -> None:
    """The region's last cell, in the flattened array, is one of its cells."""
    t, n = c.term(last), c.term(cells)
    c.need(t < n, lambda m: f"the region's last cell, {_shown(last, t, m)}, lies beyond the {_shown(cells, n, m)} "
           f"cells of '{array}'")


def _shape_text(shape: Sequence[ir.Expr]) -> str:
    return "(" + ", ".join(expr_text(d) for d in shape) + ")"


# ----------------------------------------------------------------- covers


@discharges("covers")
def covers(goal: Goal) -> Outcome:
    """Every cell of the region is written by some run of the loop: first
    with a witness per write (each index is a loop index plus an offset, the
    other loops take their first iteration), proved without quantifiers;
    else with one quantified query over all the writes."""
    region = _region(goal)
    if isinstance(region, tuple):
        return region
    ob = goal.obligation
    program, loop_path = goal.program, ob.paths[0]
    jump = next((n for _, n in walk(get(program, loop_path)) if isinstance(n, (ir.Jump, ir.Return))), None)
    if jump is not None:
        kind = jump.kind if isinstance(jump, ir.Jump) else "return"
        return "unknown", f"the loop has a '{kind}' (line {jump.loc.line if jump.loc else '?'}), which may skip a write"
    place = _place(goal, loop_path)
    space = Space(region.fp, assume_bounds=False)
    writes = [_Write(a, split, _place(goal, p).fp) for p, _, split in region.accesses
              if (a := region.access_at(p)) is not None and _always_stored(program, loop_path, a)]
    if not writes:
        return "unknown", f"no store to '{region.array}' in the loop runs unconditionally at each of its iterations"
    claim = place.claim()
    cells = [z3.Int(f"cell[{d}]") for d in range(len(region.shape))]
    box = [z3.And(claim.term(o) <= c, c < claim.term(o) + claim.term(s))
           for o, s, c in zip(region.origins, region.sizes, cells)]
    if any(_witnessed(place, claim, space, w, cells, box) for w in writes):
        return PROVED
    return _covered(place, claim, space, writes, cells, box, region)


@dataclass(frozen=True)
class _Write:
    """A store to the region's array: its footprint access (loops and guards
    inside the loop), its per-dimension indices, and the footprint of its
    place (to read them there)."""

    access: Access
    split: tuple[ir.Expr, ...]
    at: Footprint


def _always_stored(program: ir.Program, loop_path: Path, a: Access) -> bool:
    """Whether the access `a` is the target of a plain store reached from the
    loop only through blocks, the canonical loops of `a.loops` and ifs
    (whose conditions are its guards): a conditional expression or another
    loop on the way would make the store conditional in ways the footprint
    does not record."""
    path = a.path
    canonical = {loop.path for loop in a.loops}
    for k in range(len(loop_path), len(path) - 2):
        node, step = get(program, path[:k]), path[k]
        ok = isinstance(node, ir.Block) or isinstance(node, ir.For) and step == ("body", None) \
            and path[:k] in canonical or isinstance(node, ir.If) and step[0] in ("then", "other")
        if not ok:
            return False
    stmt, assign = get(program, path[:-2]), get(program, path[:-1])
    return isinstance(stmt, ir.ExprStmt) and isinstance(assign, ir.Assign) and assign.op == "=" \
        and path[-2:] == (("expr", None), ("lhs", None))


def _witnessed(place: _Place, claim: _Claim, space: Space, w: _Write, cells: Sequence[z3.ArithRef],
               box: Sequence[z3.BoolRef]) -> bool:
    """Whether the store reaches every cell of the box at one iteration named
    without quantifiers: index d reads `l + rest` with `l` the index of one
    of its loops, so l = cell - rest, or reads no such index and must equal
    the cell; a loop no index uses takes its first iteration."""
    a = w.access
    indices = {loop.index for loop in a.loops}
    equations: list[z3.BoolRef] = []
    used: set[str] = set()
    fixed: list[z3.BoolRef] = []
    for p, cell in zip(w.split, cells):
        summands = sum_terms(claim.resolve(p, w.at))
        moving = [k for k, (_, t) in enumerate(summands) if free_vars(t) & indices]
        if not moving:
            fixed.append(claim.term(p, w.at) == cell)
            continue
        if len(moving) != 1:
            return False
        sign, t = summands[moving[0]]
        if sign != 1 or not isinstance(t, ir.Var) or t.name in used:
            return False
        used.add(t.name)
        rest = signed_sum([s for k, s in enumerate(summands) if k != moving[0]])
        equations.append(z3.Int(t.name) == cell - claim.term(rest, w.at))
    equations += [z3.Int(loop.index) == claim.term(loop.start, w.at) for loop in a.loops if loop.index not in used]
    runs = z3.And(*space.encode(a, 1).constraints, *fixed, *[f.formula for f in claim.all_facts()])
    solver = new_solver()
    solver.add(*place.hypotheses, *claim.terms.facts, *box, *equations, z3.Not(runs))
    return solver.check() == z3.unsat


def _covered(place: _Place, claim: _Claim, space: Space, writes: Sequence[_Write], cells: Sequence[z3.ArithRef],
             box: Sequence[z3.BoolRef], region: _Region) -> Outcome:
    """For every cell of the box, some store has an iteration that hits it:
    one query, quantified over the iterations of each store."""
    hits = []
    for w in writes:
        a = w.access
        body = z3.And(*space.encode(a, 1).constraints, *[claim.term(p, w.at) == c for p, c in zip(w.split, cells)])
        bound = [z3.Int(loop.index) for loop in a.loops]
        hits.append(z3.Exists(bound, body) if bound else body)
    missed = z3.Not(z3.Or(*hits))
    solver = new_solver()
    solver.add(*place.hypotheses, *claim.terms.facts, *box, missed)
    answer = solver.check()
    at = f"line {place.line}: " if place.line else ""
    if answer == z3.unsat:
        return PROVED
    if answer != z3.sat:
        return "unknown", (f"{at}no store to '{region.array}' has indices of the form loop index + offset over "
                           f"the region, and Z3 could not decide the quantified query ({unknown_reason(solver)})")
    model = solver.model()
    cell = region.array + "".join(f"[{model.eval(c, model_completion=True)}]" for c in cells)
    return _counterexample(place, model, missed, f"{at}the loop never writes {cell}, which is copied back",
                           extra=box)


# ----------------------------------------------------------------- set_precision


def _element(t: ir.CType) -> ir.CType:
    while isinstance(t, (ir.Ptr, ir.Array)):
        t = t.to if isinstance(t, ir.Ptr) else t.of
    return t


@discharges("in_type_range")
def in_type_range(goal: Goal) -> Outcome:
    """Stores into an array of an integer type: each stored integer value
    is proved within the type (a clamp, or a narrower source type). Stores
    into a narrower floating type change values by design (rounding, and
    overflow to infinity): no static proof, the step stands on its declared
    tolerance, checked by --exec; unless the type is one that every store
    reaches through its saturating conversion (`otp_to_bf16`, see
    intrinsics.CONVERSIONS), whose results are within the type by definition."""
    ob = goal.obligation
    program = goal.program
    node = get(program, ob.paths[0])
    decl = node.decl if isinstance(node, ir.DeclStmt) else node  # a local's declaration, or a parameter
    elem = unqualified(_element(decl.type))
    tds = typedefs_of(program)
    span = integer_range(elem, tds)
    conversion = CONVERSIONS.get(type_name(elem))
    if span is None and conversion is None:
        kind = "floating" if is_arithmetic(elem, tds) else "non-arithmetic"
        return "unknown", (f"'{decl.name}' now holds {type_name(elem)}, a {kind} type: storing into it rounds (and "
                           f"overflows to infinity beyond its range), a value-changing step that level 2 cannot "
                           f"bound; it is accepted only by --exec within its declared tolerance")
    fn_path = ob.paths[0][:1]
    for path, node in walk(get(program, fn_path), fn_path):
        stored = _stored_value(program, path, node, decl.name or "")
        if stored is None:
            continue
        if isinstance(stored, str):
            return "unknown", stored
        status, reason = _converted(program, path, stored, conversion, decl.name or "") \
            if span is None else _fits(goal, path, stored, span, elem, tds)
        if status != "proved":
            return status, reason
    return PROVED


def _stored_value(program: ir.Program, path: Path, node: Any, name: str) -> "ir.Expr | str | None":
    """The value a plain store `name[...] = v` at `path` writes; a message
    for another kind of write to `name`; None for anything else."""
    target = node.lhs if isinstance(node, ir.Assign) else node.arg \
        if isinstance(node, ir.Unop) and node.op in ("++", "--", "p++", "p--") else None
    if not isinstance(target, ir.Index) or _chain(target)[1] != ir.Var(name):
        return None
    if isinstance(node, ir.Assign) and node.op == "=":
        return node.rhs
    return f"'{expr_text(node)}' (line {_line(program, path)}) updates '{name}' in place; its range is not followed"


def _converted(program: ir.Program, path: Path, value: ir.Expr, conversion: Optional[str], name: str) -> Outcome:
    """A store into an array of a saturating storage type is in range when
    its value is the conversion's result."""
    if isinstance(value, ir.Call) and value.name == conversion:
        return PROVED
    return "unknown", (f"'{expr_text(value)}' (line {_line(program, path)}) is stored into '{name}' without "
                       f"{conversion}(), so nothing bounds it to the type's range")


def _fits(goal: Goal, path: Path, value: ir.Expr, span: tuple[int, int], elem: ir.CType,
          tds: dict[str, ir.CType]) -> Outcome:
    program = goal.program
    text = expr_text(value)
    try:
        source = integer_range(type_of(value, env_at(program, path), tds), tds)
    except Exception as e:  # a type otp cannot compute is a reason to stop, not to pass
        return "unknown", f"the type of '{text}' is not known ({e})"
    if source is None:
        return "unknown", f"'{text}' is not an integer: its conversion to {type_name(elem)} is not followed"
    if span[0] <= source[0] and source[1] <= span[1]:
        return PROVED
    place = _place(goal, path)
    claim = place.claim()
    v = claim.term(value)
    lo, hi = span
    claim.need(z3.And(lo <= v, v <= hi), lambda m: f"the stored value {_shown(value, v, m)} is outside "
               f"{type_name(elem)} [{lo}, {hi}]")
    return _decide(place, claim, f"'{text}' fits in {type_name(elem)}")


# ----------------------------------------------------------------- inline


@discharges("inline")
def inlined(goal: Goal) -> Outcome:
    """Inlining binds each parameter to a local initialised with its
    argument, which is C's own call by value; what remains to prove is the
    callee's contract at the call site (its requires, and that what it
    writes is disjoint from its other pointer arguments), that the bindings
    fix no order C leaves open between side effects, and, for an extracted
    function, that the values it receives by copy cannot change under it.
    An inline obligation has one path, the block that replaced the call
    (the call is at that path in `before`); an extract one has two, the
    new call and the new function (in `after`)."""
    ob = goal.obligation
    extract = len(ob.paths) == 2
    program = goal.after if extract else goal.before
    site = ob.paths[0]
    call_path = _call_path(program, site)
    if call_path is None:
        return "unknown", f"no call statement at the place of the obligation (line {_line(program, site)})"
    call: ir.Call = get(program, call_path)
    callee = program.function(call.name or "")
    if callee is None:
        return "unknown", f"the callee of '{expr_text(call)}' is not defined in the program"
    effects = [a for a in call.args if has_side_effects(a)]
    if len(effects) > 1:
        return "unknown", (f"the arguments '{expr_text(effects[0])}' and '{expr_text(effects[1])}' have side "
                           f"effects, whose order C leaves open and the inlined bindings fix")
    if extract:
        stale = _stale_copy(program, site, call, callee)
        if stale:
            return "unknown", stale
    contract = goal.contracts.get(callee.name)
    if contract is None:
        return PROVED
    status, reason = _callee_requires(goal, program, call_path, call, callee, contract)
    if status != "proved":
        return status, reason
    return _separate_arguments(goal, program, call_path, call)


def _call_path(program: ir.Program, stmt_path: Path) -> Optional[Path]:
    """The call of a statement `f(...);` or `x = f(...);`."""
    stmt = get(program, stmt_path)
    if isinstance(stmt, ir.ExprStmt) and isinstance(stmt.expr, ir.Call):
        return stmt_path + (("expr", None),)
    if isinstance(stmt, ir.ExprStmt) and isinstance(stmt.expr, ir.Assign) and isinstance(stmt.expr.rhs, ir.Call):
        return stmt_path + (("expr", None), ("rhs", None))
    return None


def _stale_copy(program: ir.Program, site: Path, call: ir.Call, callee: ir.FuncDef) -> str:
    """Why a value passed by copy to an extracted function could differ from
    the variable the statements used: the function assigns its copy, or the
    caller takes the variable's address (so a write through a pointer could
    change it under the copy). Empty when neither."""
    assigned = assigned_scalars(callee.body)
    caller = get(program, site[:1])
    addressed = {n.arg.name for _, n in walk(caller) if isinstance(n, ir.Unop) and n.op == "&"
                 and isinstance(n.arg, ir.Var)}
    for p, a in zip(callee.params, call.args):
        if not isinstance(a, ir.Var):
            continue
        if p.name in assigned:
            return f"{callee.name} assigns its copy of '{a.name}', which the caller would not see"
        if a.name in addressed:
            return (f"'{a.name}' is passed to {callee.name} by copy, but its address is taken in "
                    f"{caller.name}, so the statements may change it through a pointer")
    return ""


def _callee_requires(goal: Goal, program: ir.Program, call_path: Path, call: ir.Call, callee: ir.FuncDef,
                     contract: Any) -> Outcome:
    """The callee's requires, with its parameters bound to the arguments,
    hold at the call under the caller's hypotheses."""
    binding = dict(zip(contract.params, call.args))
    place = _place(goal, call_path, program)
    claim = place.claim()
    for req in contract.requires:
        _requirement(claim, callee.name, req, subst(req, binding))
    return _decide(place, claim, f"the requirements of {callee.name} hold at '{expr_text(call)}'")


def _requirement(c: _Claim, callee: str, req: ir.Expr, bound: ir.Expr) -> None:
    c.need(c.formula(bound), lambda m: f"the requirement '{expr_text(req)}' of {callee} fails for the call: "
           f"'{expr_text(bound)}' is false")


def _separate_arguments(goal: Goal, program: ir.Program, call_path: Path, call: ir.Call) -> Outcome:
    """No region the callee's contract lets it write overlaps another region
    it is passed (read or written): the contract was checked for separate
    arguments, and the inlined body may rely on it."""
    fp = footprint(program, call_path, goal.contracts)
    regions = [a for a in fp.accesses if a.path == call_path]
    if any(a.cell == UNKNOWN for a in regions):
        return "unknown", f"an argument of '{expr_text(call)}' does not name a region of an array level 2 follows"
    space = Space(fp, assume_bounds=False)
    for k, a in enumerate(regions):
        for b in regions[k + 1:]:
            if not (a.write or b.write):
                continue
            try:
                conflict = space.meet(a, 1, b, 1)
            except Unknown as e:
                return "unknown", str(e)
            if conflict is None:
                continue
            what = (f"line {a.line}: '{expr_text(call)}' passes overlapping regions of '{a.cell}' through "
                    f"'{a.via}' and '{b.via}', one of which it writes {conflict.witness}")
            if a.mutable or b.mutable or _reads_memory(a) or _reads_memory(b):
                return "unknown", f"not proved: {what}, but the regions depend on values level 2 does not follow"
            return "refuted", what
    return PROVED


def _reads_memory(a: Access) -> bool:
    """Whether an access's offset or extent depends on a load or a call."""
    return any(isinstance(n, (ir.Index, ir.Call)) for e in a.index + (a.lanes,) for _, n in walk(e))
