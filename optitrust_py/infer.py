"""Loop contracts inferred from the footprints, and the program printed with
them as comments.

Level 2 never needs a loop contract: it reasons on access footprints. This
module makes visible the contract each loop implicitly has, in the contract
language (`spec.py`), so a user can read what each loop owns:

- the cells an iteration touches are grouped the way the language writes
  groups: over the ranges of the inner loops the index uses
  (`for d in 0..D -> &out[(h * S + i) * D + d] ~> Cell`), with trailing
  whole dimensions written as `MatrixN` (`&A[i * K] ~> Matrix1(K)`);
- a group that mentions the loop index is exclusive to an iteration (x*) only
  when Z3 proves that two different iterations never touch one of its cells;
  otherwise it is widened until it no longer depends on the index (up to the
  whole array) and shared (s*);
- xreads: only read; xwrites: each cell written before it is read (the first
  access is an unconditional plain store that covers the group), else
  xmodifies; sreads: only read, else smodifies;
- locals declared in the loop body are not part of the contract.

Every printed resource is proved within its array's bounds, parses back with
`spec.parse_resource` to the same resource, and the groups of one array are
proved disjoint; when one of these fails, the array's groups are widened a
trailing dimension at a time, up to the whole array. A loop whose body
touches memory level 2 does not model, or whose cells need a size the
language cannot write (a `?:`), gets a note instead of a contract."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence

from . import ir
from .contract import LOOP_MODES, Binder, LoopContract, Resource, Shape, free_names, int_literal
from .dependence import Space, Unknown, instance_var
from .errors import SpecError
from .footprint import UNKNOWN, Access, Footprint, Loop, cell_name, function_footprint, under
from .layout import ONE, ZERO, delinearize, linearize, product, signed_sum, terms
from .printer import print_program
from .resources import within_bounds
from .spec import loop_contract, parse_resource
from .tree import Path, function_path, get, walk

COMMENT_OPEN = "/* "
_uids = itertools.count(1 << 40)
_PLAIN = (ir.Block, ir.ExprStmt, ir.DeclStmt, ir.Assign, ir.Call, ir.Cast, ir.Index, ir.Unop, ir.Label)


@dataclass(frozen=True)
class Inferred:
    """The inferred contract of the loop at `path`, or why there is none."""

    path: Path
    contract: Optional[LoopContract]
    note: str = ""


@dataclass(frozen=True)
class _Group:
    """Cells of one array an iteration touches: `cell[index]` (per dimension
    of `dims`, `lanes` consecutive cells from the last) for every value of the
    binders (inner loops, or fresh names over widened dimensions). `exact`:
    the cells are those its accesses touch, no more (not widened, merged or
    re-stepped); `parts` are the groups of consecutive cells it was
    coalesced from, if any."""

    cell: str
    index: tuple[ir.Expr, ...]
    lanes: ir.Expr
    binders: tuple[Loop, ...]
    dims: tuple[ir.Expr, ...]
    accesses: tuple[Access, ...]
    exact: bool
    parts: tuple["_Group", ...] = ()

    @property
    def key(self) -> tuple[Any, ...]:
        return self.cell, self.index, self.lanes, tuple((b.index, b.start, b.stop, b.step) for b in self.binders)

    @property
    def read(self) -> bool:
        return any(a.read for a in self.accesses)

    @property
    def write(self) -> bool:
        return any(a.write for a in self.accesses)


class _Array:
    """What the inference knows of one array or scalar of a function."""

    def __init__(self, cell: str, dims: Optional[tuple[ir.Expr, ...]], c_array: bool) -> None:
        self.name = cell_name(cell)
        self.dims = dims
        self.c_array = c_array


# ----------------------------------------------------------------- inference


def infer_program(program: ir.Program, contracts: Mapping[str, Any]) -> tuple[Inferred, ...]:
    """The inferred contract of every canonical loop of every function that
    has a contract."""
    out: list[Inferred] = []
    for f in program.functions():
        if contracts.get(f.name) is not None:
            out.extend(infer_function(program, f.name, contracts))
    return tuple(out)


def infer_function(program: ir.Program, function: str, contracts: Mapping[str, Any]) -> tuple[Inferred, ...]:
    """The inferred contract of each canonical loop of `function`, outermost first."""
    fp = function_footprint(program, function, contracts)
    fn_path = function_path(program, function)
    fn: ir.FuncDef = get(program, fn_path)
    arrays = _arrays(fn, contracts.get(function), fp)
    loops = [p for p, n in walk(fn.body, fn_path + (("body", None),)) if isinstance(n, ir.For)]
    return tuple(_infer_loop(program, fp, arrays, p) for p in loops)


def _infer_loop(program: ir.Program, fp: Footprint, arrays: Mapping[str, _Array], path: Path) -> Inferred:
    loop: ir.For = get(program, path)
    body = path + (("body", None),)
    inside = [a for a in fp.accesses if under(a, body)]
    unknown = next((a for a in inside if a.cell == UNKNOWN), None)
    if unknown is not None:
        return Inferred(path, None, f"'{unknown.text}' touches memory level 2 does not model")
    if not inside:
        return Inferred(path, LoopContract())
    header = next((lp for lp in inside[0].loops if lp.path == path), None)
    if header is None:
        return Inferred(path, None, f"the loop assigns its index '{loop.index}' in its body")
    local = _declared_cells(loop.body, program, path)
    by_cell: dict[str, list[Access]] = {}
    for a in inside:
        if a.cell not in local:
            by_cell.setdefault(a.cell, []).append(a)
    rank = max((len(a.dims or ()) for a in arrays.values()), default=0)
    space = _Spaces(fp, header, inside, max(rank, 1))
    chosen: dict[str, list[tuple[str, Resource]]] = {m: [] for m in LOOP_MODES}
    for cell, accesses in by_cell.items():
        array = arrays.get(cell) or _Array(cell, None, False)
        found = _array_clauses(program, space, array, accesses, header)
        if found is None:
            return Inferred(path, None, f"the cells of '{array.name}' it touches cannot be written in the "
                                        f"contract language (an index or size it cannot express)")
        for mode, r in found:
            chosen[mode].append((cell, r))
    return Inferred(path, LoopContract(*(tuple(r for _, r in chosen[m]) for m in LOOP_MODES)))


class _Spaces:
    """The Z3 spaces of one loop: `bounds` for the in-bounds proofs, `pairs`
    for two instances of the loop (its index and every inner index renamed)."""

    def __init__(self, fp: Footprint, header: Loop, inside: Sequence[Access], rank: int) -> None:
        self.header = header
        self.bounds = Space(fp, assume_bounds=False)
        inner = {lp.index for a in inside for lp in a.loops[a.loops.index(header):]} | {_fresh(k) for k in range(rank)}
        self.pairs = Space(fp, inner)
        self.context = (fp.requires, tuple(sorted(self.pairs.ranges.items())), header.index)
        self._accesses: dict[tuple[Any, ...], Access] = {}

    def access(self, g: _Group) -> Access:
        """The group as one access (the same one each time, so Z3 encodes it once)."""
        if g.key not in self._accesses:
            self._accesses[g.key] = _access(g, self.header)
        return self._accesses[g.key]

    def meet(self, a: _Group, b: _Group, same_iteration: bool) -> bool:
        """Whether `a` (in one iteration) and `b` (in the same one, or in a
        different one) may share a cell; an undecided query counts as yes."""
        if not same_iteration and _apart(a, b, self.header.index):
            return False
        first, second = self.access(a), self.access(b)
        key = (_content(first), _content(second), same_iteration, self.context)
        if key not in _MEETS:
            i1, i2 = instance_var(self.header.index, 1), instance_var(self.header.index, 2)
            relation = [i1 == i2] if same_iteration else [i1 != i2]
            try:
                _MEETS[key] = self.pairs.meet(first, 1, second, 2, relation) is not None
            except Unknown:
                _MEETS[key] = True
        return _MEETS[key]


def _apart(a: _Group, b: _Group, index: str) -> bool:
    """A quick proof that two iterations i != i' never share a cell: both
    groups have, in one dimension that is not the last (or with one cell in
    it), the same index `i + e` where e uses no name bound in the groups, so
    the cells differ there. Sound because every group is proved within its
    dimensions before it is used (or spans a whole dimension)."""
    if len(a.index) != len(b.index) or a.dims != b.dims:
        return False
    bound = {lp.index for lp in a.binders + b.binders} - {index}
    for k, (x, y) in enumerate(zip(a.index, b.index)):
        if x != y or k == len(a.index) - 1 and (a.lanes != ONE or b.lanes != ONE):
            continue
        parts = terms(x)
        names = {v.name for _, t in parts for v in free_names(t)}
        if parts.count((1, ir.Var(index))) == 1 and not any(index in {v.name for v in free_names(t)}
                                                            for sign, t in parts if (sign, t) != (1, ir.Var(index))) \
                and not names & bound:
            return True
    return False


_MEETS: dict[tuple[Any, ...], bool] = {}
"""Answers of `_Spaces.meet` by what they depend on (not where the loop
sits), so the next step of a script asks Z3 only about the loops it changed."""


def _content(a: Access) -> tuple[Any, ...]:
    return a.cell, a.index, a.lanes, tuple((lp.index, lp.start, lp.stop, lp.step) for lp in a.loops), a.guards, a.shape


def _array_clauses(program: ir.Program, space: _Spaces, array: _Array, accesses: Sequence[Access],
                   header: Loop) -> Optional[list[tuple[str, Resource]]]:
    """The clauses of one array for the loop: its least widened groups that
    are printable, in bounds and disjoint, each under its mode; a wider
    choice when it says the same with fewer group binders (the union over a
    triangle `for i in 0..S -> for j in 0..i + 1` is all rows)."""
    rank = len(array.dims) if array.dims is not None else 0
    best: Optional[list[tuple[str, Resource]]] = None
    for m in range(rank + 1):
        groups = _widened(space, array, accesses, header, m)
        if groups is None or not (m == rank > 0 or _acceptable(space, groups, array)):
            continue
        clauses = _classified(program, space, array, header, groups)
        if clauses is None:
            continue
        if best is None:
            best = clauses
            if not any(_hidden_binders(r) for _, r in best):
                return best
        elif sorted(m for m, _ in clauses) == sorted(m for m, _ in best) \
                and _binder_count(clauses) < _binder_count(best):
            return clauses
    return best


def _classified(program: ir.Program, space: _Spaces, array: _Array, header: Loop,
                groups: list[_Group]) -> Optional[list[tuple[str, Resource]]]:
    """Each group under its mode; None when a group that mentions the loop
    index is not proved exclusive to an iteration (a wider choice, up to the
    whole array, shares it) or when one is not printable."""
    moving = [g for g in groups if header.index in _names(g)]
    if moving and any(space.meet(g, h, False) for g in moving for h in groups):
        return None
    clauses = [(_mode(program, g, g in moving, header), _printed(g, array)) for g in groups]
    return clauses if all(_printable(r) for _, r in clauses) else None


def _hidden_binders(r: Resource) -> bool:
    """A group binder used only in the bounds of another one."""
    used = {v.name for v in free_names(r.subject)}
    return any(b.index not in used for b in r.group)


def _binder_count(clauses: Sequence[tuple[str, Resource]]) -> int:
    return sum(len(r.group) for _, r in clauses)


def _acceptable(space: _Spaces, groups: Sequence[_Group], array: _Array) -> bool:
    """Every group printable and in bounds, and no two sharing a cell."""
    for g in groups:
        if not _printable(_printed(g, array)):
            return False
        if g.dims and within_bounds(space.bounds, space.access(g), g.dims, array.name) is not None:
            return False
    return not any(space.meet(g, h, True) for g, h in itertools.combinations(groups, 2))


def _printable(r: Resource) -> bool:
    """The contract language writes `r` (no conditional or cast in it): its
    text parses back to the same resource."""
    try:
        return parse_resource(str(r)) == r
    except SpecError:
        return False


def _widened(space: _Spaces, array: _Array, accesses: Sequence[Access], header: Loop, m: int) \
        -> Optional[list[_Group]]:
    """Each access's group with its last `m` dimensions taken whole, merged
    when equal; None when some access cannot be written so."""
    merged: dict[tuple[Any, ...], _Group] = {}
    for a in accesses:
        g = _group(a, array, header, m, space)
        if g is None:
            return None
        old = merged.get(g.key)
        merged[g.key] = g if old is None else dataclasses.replace(old, accesses=old.accesses + g.accesses,
                                                                   exact=old.exact and g.exact)
    return _merged([_unstepped(g) for g in _coalesced(list(merged.values()))])


def _merged(groups: list[_Group]) -> list[_Group]:
    """Equal groups as one."""
    out: dict[tuple[Any, ...], _Group] = {}
    for g in groups:
        old = out.get(g.key)
        out[g.key] = g if old is None else dataclasses.replace(
            old, accesses=tuple(sorted(old.accesses + g.accesses, key=lambda a: a.uid)), exact=False)
    return list(out.values())


def _unstepped(g: _Group) -> _Group:
    """The group with binders the contract language can write: a binder
    stepping by s that only moves the last index (`b + c`) over s cells at a
    time covers a contiguous run, `(stop - start + s - 1) / s * s` cells from
    `start + c` (a vector loop); any other stepped binder is taken by steps
    of 1 (a superset of the cells, which the bounds proof covers)."""
    for k, b in enumerate(g.binders):
        s = _int(b.step)
        if s is None or s == 1 or _int(g.lanes) != s or not g.index:
            continue
        base, c = _offset(g.index[-1])
        others = g.index[:-1] + tuple(x for o in g.binders if o is not b for x in (o.start, o.stop))
        if base != ir.Var(b.index) or any(v.name == b.index for x in others for v in free_names(x)):
            continue
        span, extra = _offset(ir.Binop("-", b.stop, b.start))
        count = _plus_int(span, extra + s - 1)
        last = _plus_int(*_offset(_plus_int(b.start, c)))
        lanes = ir.Binop("*", ir.Binop("/", count, ir.Const(str(s))), ir.Const(str(s)))
        return _unstepped(dataclasses.replace(g, index=g.index[:-1] + (last,), lanes=lanes,
                                              binders=g.binders[:k] + g.binders[k + 1:], exact=False))
    return dataclasses.replace(g, binders=tuple(dataclasses.replace(b, step=ONE) for b in g.binders))


def _plus_int(e: ir.Expr, c: int) -> ir.Expr:
    """`e + c`, folded when e is a literal or c is 0."""
    v = _int(e)
    if v is not None:
        return ir.Const(str(v + c))
    if c == 0:
        return e
    return ir.Binop("+" if c > 0 else "-", e, ir.Const(str(abs(c))))


def _coalesced(groups: list[_Group]) -> list[_Group]:
    """Groups that differ only by their last index, `b`, `b + L`, ...,
    `b + (k - 1) * L` with L cells each (an unrolled vector loop), as one
    group of k * L cells from `b`."""
    runs: dict[tuple[Any, ...], list[tuple[int, _Group]]] = {}
    for g in groups:
        lanes = _int(g.lanes)
        if not g.index or lanes is None:
            runs[("alone", id(g))] = [(0, g)]
            continue
        base, offset = _offset(g.index[-1])
        runs.setdefault((g.index[:-1], base, lanes, g.key[3]), []).append((offset, g))
    out: list[_Group] = []
    for run in runs.values():
        run.sort(key=lambda x: x[0])
        first, lanes = run[0], _int(run[0][1].lanes) or 1
        if len(run) == 1 or [o for o, _ in run] != list(range(first[0], first[0] + lanes * len(run), lanes)):
            out.extend(g for _, g in run)
            continue
        parts = tuple(g for _, g in run)
        accesses = tuple(sorted((a for g in parts for a in g.accesses), key=lambda a: a.uid))
        out.append(dataclasses.replace(first[1], lanes=ir.Const(str(lanes * len(run))), accesses=accesses,
                                       exact=False, parts=parts))
    return out


def _offset(e: ir.Expr) -> tuple[ir.Expr, int]:
    """`e` as `base + c` with c an integer literal (0 when it has none)."""
    c, rest = 0, []
    for sign, t in terms(e):
        v = _int(t)
        if v is None:
            rest.append((sign, t))
        else:
            c += sign * v
    return signed_sum(rest), c


def _int(e: ir.Expr) -> Optional[int]:
    return int_literal(e.text) if isinstance(e, ir.Const) and e.kind == "int" else None


def _group(a: Access, array: _Array, header: Loop, m: int, space: _Spaces) -> Optional[_Group]:
    """The cells of `a` in one iteration of the loop `header`, with its last
    `m` dimensions whole."""
    dims = array.dims
    if not a.index and not a.whole:
        return _Group(a.cell, (), ONE, (), (), (a,), True)
    if a.whole:
        if dims is None or m < len(dims):
            return None
        index: tuple[ir.Expr, ...] = tuple(ZERO for _ in dims)
        lanes: ir.Expr = ONE
        shape, tail = dims, len(dims)
    elif dims is None:
        if m > 0 or len(a.index) != 1:
            return None
        index, lanes, shape, tail = a.index, a.lanes, (), 0
    else:
        split, lanes, shape, tail = _indexed(a, array)
        if split is None and m < len(dims):
            return None
        if split is None:
            split, lanes, shape, tail = tuple(ZERO for _ in dims), ONE, dims, len(dims)
        index = split
    m = min(max(m, tail), len(shape))
    fresh = tuple(Loop(_fresh(k), ZERO, d, ONE, ()) for k, d in enumerate(shape[len(shape) - m:], len(shape) - m))
    if m:
        index = index[:-m] + tuple(ir.Var(lp.index) for lp in fresh)
        lanes = ONE
    inner = a.loops[a.loops.index(header) + 1:]
    binders = _binders(inner, index + (lanes,)) + fresh
    used = {v.name for e in index + (lanes,) for v in free_names(e)} | \
        {v.name for b in binders for e in (b.start, b.stop) for v in free_names(e)}
    if used & set(a.mutable) or any(isinstance(n, (ir.Index, ir.Ternary)) for e in index + (lanes,)
                                    for _, n in walk(e)):
        return None
    return _Group(a.cell, index, lanes, binders, shape, (a,), m == tail and not a.whole)


def _fresh(k: int) -> str:
    """The binder of a widened dimension (never printed: `MatrixN` takes its place)."""
    return f"otp_d{k}"


def _indexed(a: Access, array: _Array) \
        -> tuple[Optional[tuple[ir.Expr, ...]], ir.Expr, tuple[ir.Expr, ...], int]:
    """The access's index over the array's dimensions, or flattened over
    their product when it does not split (not for a C array of arrays), and
    how many last dimensions it covers whole: a callee's region
    `&W[l * d * n]` of `d * n` cells is `W[l][0..d][0..n]`."""
    dims = array.dims or ()
    split = a.index if len(a.index) == len(dims) else \
        delinearize(a.index[0], dims) if len(a.index) == 1 and dims and not array.c_array else None
    if split is None:
        flat = None if array.c_array else a.flat()
        return ((flat,) if flat is not None else None), a.lanes, (product(dims),), 0
    if a.lanes != ONE:
        for tail in range(len(dims), 0, -1):
            if a.lanes == product(dims[len(dims) - tail:]) and all(x == ZERO for x in split[len(dims) - tail:]):
                return split, ONE, dims, tail
    return split, a.lanes, dims, 0


def _binders(inner: Sequence[Loop], exprs: Iterable[ir.Expr]) -> tuple[Loop, ...]:
    """The inner loops whose indices the expressions use (directly or through
    the bounds of another kept loop), with their steps (`_unstepped` takes
    them off)."""
    names = {v.name for e in exprs for v in free_names(e)}
    kept: list[Loop] = []
    for lp in reversed(inner):
        if lp.index in names:
            kept.insert(0, lp)
            names |= {v.name for e in (lp.start, lp.stop) for v in free_names(e)}
    return tuple(kept)


def _names(g: _Group) -> set[str]:
    bound = {b.index for b in g.binders}
    used = {v.name for e in g.index + (g.lanes,) for v in free_names(e)}
    used |= {v.name for b in g.binders for e in (b.start, b.stop) for v in free_names(e)}
    return used - bound


def _access(g: _Group, header: Loop) -> Access:
    """The group as one access, for the Z3 machinery of `dependence`: the
    loops around the analysed loop, the loop, then the binders, under the
    conditions that hold wherever the loop runs (the `if`s around it)."""
    first = g.accesses[0]
    outer = first.loops[:first.loops.index(header) + 1]
    guards = first.guards[:sum(1 for step in header.path if step[0] in ("then", "other"))]
    return Access(g.cell, g.index, g.lanes, g.write, g.read, None, g.cell, header.path, None, outer + g.binders,
                  guards, 0, (), g.dims if len(g.dims) > 1 else None, False, g.cell, next(_uids))


# ----------------------------------------------------------------- modes


def _mode(program: ir.Program, g: _Group, exclusive: bool, header: Loop) -> str:
    if not g.write:
        return "xreads" if exclusive else "sreads"
    if not exclusive:
        return "smodifies"
    return "xwrites" if _written_first(program, g, header) else "xmodifies"


def _written_first(program: ir.Program, g: _Group, header: Loop) -> bool:
    """Every cell of the group is written in an iteration before any access
    reads it: the group's first access is a plain store, not conditional,
    run for every value of the group's binders (the loops around it are
    exactly the binders, by steps of 1), and its statement reads no cell of
    the group (the arguments of a store intrinsic are read before it writes).
    A coalesced group is when each of its parts is."""
    if g.parts:
        return all(_written_first(program, p, header) for p in g.parts)
    first = g.accesses[0]
    if not g.exact or not first.write or first.read:
        return False
    inner = first.loops[first.loops.index(header) + 1:]
    if {lp.index for lp in inner} != {b.index for b in g.binders} or any(lp.step != ONE for lp in inner):
        return False
    stmt = _statement(program, first.path, len(header.path) + 1, {b.index for b in g.binders})
    return stmt is not None and not any(a.read and under(a, stmt) for a in g.accesses)


def _statement(program: ir.Program, path: Path, start: int, loops: set[str]) -> Optional[Path]:
    """The path of the statement holding the access at `path`, when nothing
    between the loop body (`path[:start]`) and it makes it conditional:
    only blocks, canonical loops among `loops`, and plain expressions."""
    stmt: Optional[Path] = None
    for k in range(start, len(path) + 1):
        node = get(program, path[:k])
        if isinstance(node, ir.For):
            if node.index not in loops:
                return None
        elif not isinstance(node, _PLAIN):
            return None
        if stmt is None and isinstance(node, (ir.ExprStmt, ir.DeclStmt)):
            stmt = path[:k]
    return stmt


# ----------------------------------------------------------------- printing resources


def _printed(g: _Group, array: _Array) -> Resource:
    """The group in the contract language: trailing indices that run over
    whole dimensions become `MatrixN`, lanes a `Matrix1(lanes)`."""
    if not g.dims and not g.index:
        return Resource(ir.Var(array.name), Shape("cell"))
    whole = _whole_suffix(g)
    kept = tuple(b for b in g.binders if b.index not in {v.name for v in whole})
    group = tuple(Binder(b.index, b.start, b.stop) for b in kept)
    n = len(whole)
    if n == len(g.dims):
        return Resource(ir.Var(array.name), Shape("matrix", array.dims or g.dims), group)
    index = g.index[:len(g.index) - n] + tuple(ZERO for _ in range(n))
    subject = _address(array, index, g.dims)
    if n:
        shape = Shape("matrix", g.dims[len(g.dims) - n:])
    else:
        shape = Shape("cell") if g.lanes == ONE else Shape("matrix", (g.lanes,))
    return Resource(subject, shape, group)


def _whole_suffix(g: _Group) -> tuple[ir.Var, ...]:
    """The longest run of last indices that are distinct binders ranging
    over their whole dimension and used nowhere else (none with lanes)."""
    if g.lanes != ONE or not g.dims:
        return ()
    ranges = {b.index: b for b in g.binders}
    out: list[ir.Var] = []
    for k in range(len(g.index) - 1, -1, -1):
        e, d = g.index[k], g.dims[k]
        if not isinstance(e, ir.Var):
            break
        b = ranges.get(e.name)
        if b is None or b.start != ZERO or b.stop != d or e in out:
            break
        others = g.index[:k] + tuple(x for c in g.binders if c.index != e.name for x in (c.start, c.stop))
        if any(v.name == e.name for x in others for v in free_names(x)):
            break
        out.insert(0, e)
    return tuple(out)


def _address(array: _Array, index: tuple[ir.Expr, ...], dims: tuple[ir.Expr, ...]) -> ir.Expr:
    """`&A[flat]` for a pointer to a flattened array, `&A[i][j]` for a C
    array of arrays."""
    base: ir.Expr = ir.Var(array.name)
    if array.c_array:
        for i in index:
            base = ir.Index(base, i)
        return ir.Unop("&", base)
    return ir.Unop("&", ir.Index(base, linearize(index, dims)))


# ----------------------------------------------------------------- arrays of a function


def _arrays(fn: ir.FuncDef, contract: Any, fp: Footprint) -> dict[str, _Array]:
    """By cell: the parameters with a resource (the dimensions of a matrix),
    and the local arrays and allocations of known size (those declared as C
    arrays of arrays are printed `&A[i][j]`)."""
    out: dict[str, _Array] = {}
    if contract is not None:
        for _, r in contract.resources():
            if isinstance(r.subject, ir.Var) and not r.group:
                out.setdefault(r.base, _Array(r.base, r.shape.dims if r.shape.kind == "matrix" else None, False))
    nested = {n.decl.name for _, n in walk(fn.body) if isinstance(n, ir.DeclStmt) and n.decl.name
              and isinstance(n.decl.type, ir.Array) and isinstance(n.decl.type.of, ir.Array)}
    for cell, dims in fp.sizes.items():
        out.setdefault(cell, _Array(cell, dims, cell_name(cell) in nested and len(dims) > 1))
    return out


def _declared_cells(body: ir.Block, program: ir.Program, path: Path) -> set[str]:
    """The cells of the locals declared in a loop body, named as footprints
    name them (`x@line` for a name declared more than once in the function)."""
    fn: ir.FuncDef = get(program, path[:1])
    counts: dict[str, int] = {}
    for _, n in walk(fn.body):
        if isinstance(n, ir.DeclStmt) and n.decl.name:
            counts[n.decl.name] = counts.get(n.decl.name, 0) + 1
    out: set[str] = set()
    for _, n in walk(body):
        if isinstance(n, ir.DeclStmt) and n.decl.name:
            name, loc = n.decl.name, n.decl.loc
            out.add(name if counts[name] == 1 else f"{name}@{loc.line if loc else id(n.decl)}")
    return out


# ----------------------------------------------------------------- comments


LINE = 100
"""A clause longer than this is written one resource per line (its keyword repeated)."""


def clause_lines(contract: LoopContract) -> list[str]:
    """One line per mode that has resources (`xreads    R1, R2`), or one per
    resource when that line would be long."""
    out: list[str] = []
    for mode in LOOP_MODES:
        texts = [str(r) for r in getattr(contract, mode)]
        line = f"{mode:<9} " + ", ".join(texts)
        out.extend([line] if len(line) <= LINE or len(texts) == 1 else [f"{mode:<9} {t}" for t in texts])
    return [ln for ln in out if ln.split(" ", 1)[1].strip()]


def comment(inferred: Inferred) -> list[str]:
    """The C comment shown above the loop (empty for an empty contract)."""
    if inferred.contract is None:
        return [f"{COMMENT_OPEN}no inferred contract: {inferred.note} */"]
    lines = clause_lines(inferred.contract)
    if not lines:
        return []
    out = [COMMENT_OPEN + lines[0]] + ["   " + ln for ln in lines[1:]]
    out[-1] += " */"
    return out


def read_comment(text: str) -> LoopContract:
    """The loop contract of a comment `comment` printed, through the
    contract language's own parser."""
    body = text.strip()
    body = body.removeprefix("/*").removesuffix("*/")
    clauses = []
    for line in body.splitlines():
        mode, _, rest = line.strip().partition(" ")
        if mode:
            clauses.append(ir.ContractClause(mode, rest.strip()))
    return loop_contract(clauses)


def annotate(program: ir.Program, contracts: Mapping[str, Any]) -> str:
    """The program's C text with each loop's inferred contract as a comment
    just above it (above its pragmas), at its indentation."""
    printed = print_program(program)
    lines = printed.text.split("\n")
    for inf in sorted(infer_program(program, contracts), key=lambda x: -printed.where[x.path]):
        at = printed.where[inf.path] - 1
        pad = lines[at][:len(lines[at]) - len(lines[at].lstrip())]
        lines[at:at] = [pad + ln for ln in comment(inf)]
    return "\n".join(lines)

