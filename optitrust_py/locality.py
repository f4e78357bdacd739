"""Level 3 where a step changed one statement deep in a loop nest: compare
that statement alone, not the whole function.

When the code before and after a step differ only inside one statement X
(the smallest statement holding every change, in one function), the rest
of the run is the same code. So level 3 finds every time X runs (its
*instances*, each with the integers in scope: loop indices, sizes) by
following only the loops that lead to X, and runs X before and after the
step from the same unknown state at each instance: every float variable and
every memory cell holds an unknown. If both versions leave the same terms
in every variable and cell at every instance, the whole functions are
equal (by induction over the run); the label is the same as a whole run
would give. The check is stronger than needed (any state, not only the
reachable ones), so when it fails, level 3 falls back to whole runs, which
name the output cell that differs.

Following the loops skips what does not lead to X. A skipped statement must
not change an integer or a pointer that the path uses; a cheap one that
does (`n = min(S - bi, 64);`) runs, and one that would need memory to do so
makes the step non-local (`NotLocal`), as do a data condition on the path,
a jump out of X, and X changing an integer or a pointer of the scope.

X may also be a run of statements of one block (a declaration changed
with its uses, statements added or removed), and a step's changes may be
split into several such pieces (`foci`), each compared alone: each equal
from any state, the function is equal, one piece replaced at a time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Sequence

from . import ir, terms as T
from .contract import Contract
from .symexec import Alloc, Machine, Outcome, Ptr, Vec, start
from .terms import Term
from .names import declared_names as declared_in, free_vars
from .tree import Path, get, map_children, walk

_BLOCKS = (ir.Block, ir.For, ir.If, ir.While)
_HAS_STMTS = (ir.FuncDef, ir.Block, ir.For, ir.GenericFor, ir.If, ir.While, ir.DoWhile, ir.Switch, ir.Case, ir.Label)


class NotLocal(Exception):
    """The step cannot be checked statement by statement (see the module doc)."""


@dataclass(frozen=True)
class Focus:
    """The statement a step changed: in `function`, at `path` from the body.
    With `span`, the `span[0]` statements from `path` before the step and
    the `span[1]` after it, each side as one block (`before`, `after`)."""

    function: str
    path: Path
    before: ir.Stmt
    after: ir.Stmt
    span: Optional[tuple[int, int]] = None


def focus(before: ir.Program, after: ir.Program, closure_before: Sequence[ir.FuncDef],
          closure_after: Sequence[ir.FuncDef]) -> Optional[Focus]:
    """The one statement holding every change, when one function of the
    closure changed (functions the step added aside: only the changed code
    can call them) and the change is inside a loop of it."""
    got = _changed(closure_before, closure_after)
    if got is None:
        return None
    name, old, new = got
    path = _lowest(old.body, new.body, ())
    return _focus(name, old.body, new.body, path, None)


def foci(before: ir.Program, after: ir.Program, closure_before: Sequence[ir.FuncDef],
         closure_after: Sequence[ir.FuncDef]) -> list[Focus]:
    """The changes of one function as separate pieces, each a statement or
    a run of statements of one block (with every later use of what the run
    declares), all inside loops; empty when that is not finer than `focus`.
    Each piece equal from any state makes the function equal, one piece
    replaced at a time: a piece changes no integer or pointer of its scope,
    so the others still run at the same instances."""
    got = _changed(closure_before, closure_after)
    if got is None:
        return []
    name, old, new = got
    out = [_focus(name, old.body, new.body, path, span) for path, span in _pieces(old.body, new.body, ())]
    if any(f is None for f in out) or [(f.path, f.span) for f in out] == \
            [(_lowest(old.body, new.body, ()), None)]:  # type: ignore[union-attr]
        return []
    return out  # type: ignore[return-value]


def _changed(closure_before: Sequence[ir.FuncDef],
             closure_after: Sequence[ir.FuncDef]) -> Optional[tuple[str, ir.FuncDef, ir.FuncDef]]:
    """The one function of the closure the step changed, its name unchanged."""
    old = {f.name: f for f in closure_before}
    new = {f.name: f for f in closure_after}
    if not old.keys() <= new.keys():
        return None
    changed = [n for n in old if old[n] != new[n]]
    if len(changed) != 1 or old[changed[0]].decl != new[changed[0]].decl:
        return None
    return changed[0], old[changed[0]], new[changed[0]]


def _focus(name: str, old: ir.Block, new: ir.Block, path: Path, span: Optional[tuple[int, int]]) -> Optional[Focus]:
    if not any(step[0] == "body" for step in path):
        return None  # not inside a loop: X runs once, and a whole run costs less than two of X
    if span is None:
        x, y = get(old, path), get(new, path)
        if isinstance(x, ir.DeclStmt) or isinstance(y, ir.DeclStmt):
            return None
        return Focus(name, path, x, y)
    (field, k), block = path[-1], path[:-1]
    xs, ys = getattr(get(old, block), field), getattr(get(new, block), field)
    return Focus(name, path, ir.Block(tuple(xs[k:k + span[0]])), ir.Block(tuple(ys[k:k + span[1]])), span)


def sequential(closure: Sequence[ir.FuncDef]) -> tuple[ir.FuncDef, ...]:
    """The functions without their pragmas: what a sequential run runs
    (a step that only adds `#pragma omp` is equal; races are level 2's)."""
    return tuple(_unpragma(f) for f in closure)


def _unpragma(node: Any) -> Any:
    if isinstance(node, ir.Block):
        kept = tuple(s for s in node.stmts if not isinstance(s, ir.Pragma))
        node = node if len(kept) == len(node.stmts) else dataclasses.replace(node, stmts=kept)
    elif isinstance(node, (ir.For, ir.GenericFor)) and node.pragmas:
        node = dataclasses.replace(node, pragmas=())
    return map_children(node, _unpragma) if isinstance(node, _HAS_STMTS) else node


def _lowest(a: Any, b: Any, path: Path) -> Path:
    """The path to the smallest statement of `a` holding every difference with `b`."""
    if type(a) is not type(b) or not isinstance(a, _BLOCKS):
        return path
    fields = [f.name for f in dataclasses.fields(a) if f.compare and getattr(a, f.name) != getattr(b, f.name)]
    if len(fields) != 1:
        return path
    name = fields[0]
    x, y = getattr(a, name), getattr(b, name)
    if isinstance(x, ir.Block) and isinstance(y, ir.Block):
        return _lowest(x, y, path + ((name, None),))
    if name == "stmts" and len(x) == len(y):
        differ = [i for i in range(len(x)) if x[i] != y[i]]
        if len(differ) == 1:
            return _lowest(x[differ[0]], y[differ[0]], path + ((name, differ[0]),))
    return path


def _pieces(a: Any, b: Any, path: Path) -> list[tuple[Path, Optional[tuple[int, int]]]]:
    """Paths to the smallest pieces holding every difference of `a` and
    `b`: statements (no span), and runs of a block's statements (with their
    spans) where statements were added or removed or a declaration changed,
    stretched to every later use of a name they declare."""
    if type(a) is not type(b) or not isinstance(a, _BLOCKS):
        return [(path, None)]
    fields = [f.name for f in dataclasses.fields(a) if f.compare and getattr(a, f.name) != getattr(b, f.name)]
    if len(fields) != 1:
        return [(path, None)]
    name = fields[0]
    x, y = getattr(a, name), getattr(b, name)
    if isinstance(x, ir.Block) and isinstance(y, ir.Block):
        return _pieces(x, y, path + ((name, None),))
    if name != "stmts":
        return [(path, None)]
    top = 0
    while top < min(len(x), len(y)) and x[top] == y[top]:
        top += 1
    tail = 0
    while tail < min(len(x), len(y)) - top and x[-1 - tail] == y[-1 - tail]:
        tail += 1
    runs: list[list[int]] = []  # [start, end in x, end in y]
    if len(x) != len(y):
        runs.append([top, len(x) - tail, len(y) - tail])
    else:
        runs.extend([i, i + 1, i + 1] for i in range(top, len(x) - tail)
                    if x[i] != y[i] and (isinstance(x[i], ir.DeclStmt) or isinstance(y[i], ir.DeclStmt)))
    for r in runs:  # stretched over the later uses of what it declares
        while True:
            declared = declared_in(x[r[0]:r[1]]) | declared_in(y[r[0]:r[2]])
            later = [k for k in range(r[1], len(x)) if free_vars(x[k]) & declared] + \
                [k - r[2] + r[1] for k in range(r[2], len(y)) if free_vars(y[k]) & declared]
            if not later:
                break
            grow = max(later) + 1 - r[1]
            r[1] += grow
            r[2] += grow
    merged: list[list[int]] = []
    for r in sorted(runs):
        if merged and r[0] < merged[-1][1]:
            merged[-1][1], merged[-1][2] = max(merged[-1][1], r[1]), max(merged[-1][2], r[2])
        else:
            merged.append(r)
    out: list[tuple[Path, Optional[tuple[int, int]]]] = []
    inside = {i for r in merged for i in range(r[0], r[1])}
    for r in merged:
        out.append((path + ((name, r[0]),), (r[1] - r[0], r[2] - r[0])))
    if len(x) == len(y):
        for i in range(top, len(x) - tail):
            if i not in inside and x[i] != y[i]:
                out.extend(_pieces(x[i], y[i], path + ((name, i),)))
    return sorted(out, key=lambda p: p[0])


# ---------------------------------------------------------------- instances

@dataclass(frozen=True)
class Instance:
    """The state in scope when X starts: variables and their kinds."""

    env: dict[str, Any]
    kinds: dict[str, str]
    allocs: int

    def key(self) -> Optional[tuple[Any, ...]]:
        """What a local run from this instance depends on (`run_at` makes
        every float and cell unknown, named by its variable or memory), or
        None for a value it does not know how to name."""
        parts: list[Any] = [self.allocs, tuple(sorted(self.kinds.items()))]
        for name, v in sorted(self.env.items()):
            seen = seen_as(v, True)
            if seen is None:
                return None
            parts.append((name, seen))
        return tuple(parts)


def seen_as(v: Any, where: bool) -> Any:
    """A value in scope as a local run sees it: an integer, the shape of a
    pointer's object (with `where`, which object and where in it), the kind
    of an unknown; None for a value it does not know how to name."""
    if isinstance(v, int):
        return v
    if isinstance(v, Ptr):
        a = v.alloc
        return ("p", a.extent, a.kind, a.width, v.rows, *((a.name, v.offset) if where else ()))
    if isinstance(v, Term):
        return "t", v.integer
    if isinstance(v, Vec):
        return "v", tuple(("t", x.integer) if isinstance(x, Term) else x for x in v)
    return None


class _Statics:
    """What a statement does, seen from outside it (cached by node)."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[Any, frozenset[str], bool, bool, frozenset[str]]] = {}

    def of(self, s: Any) -> tuple[frozenset[str], bool, bool, frozenset[str]]:
        got = self.memo.get(id(s))
        if got is None:
            got = self.memo[id(s)] = (s, *_statics(s))
        return got[1:]  # type: ignore[return-value]


def _statics(s: Any) -> tuple[frozenset[str], bool, bool, frozenset[str]]:
    """Variables assigned but not declared inside, whether a jump or a
    return leaves it, whether it touches memory (or calls), and the
    functions it calls."""
    declared: set[str] = set()
    assigned: set[str] = set()
    calls: set[str] = set()
    memory = escapes = False
    for path, n in walk(s):
        if isinstance(n, ir.DeclStmt) and n.decl.name:
            declared.add(n.decl.name)
        elif isinstance(n, ir.For):
            declared.add(n.index)
        elif isinstance(n, ir.Assign) and isinstance(n.lhs, ir.Var):
            assigned.add(n.lhs.name)
        elif isinstance(n, ir.Unop) and n.op in ("++", "--", "p++", "p--") and isinstance(n.arg, ir.Var):
            assigned.add(n.arg.name)
        elif isinstance(n, ir.Return) or (isinstance(n, ir.Jump) and not _inside_loop(s, path)):
            escapes = True
        if isinstance(n, (ir.Index, ir.Call)) or (isinstance(n, ir.Unop) and n.op == "*"):
            memory = True
        if isinstance(n, ir.Call) and isinstance(n.func, ir.Var):
            calls.add(n.func.name)
    return frozenset(assigned - declared), escapes, memory, frozenset(calls)


def _inside_loop(s: Any, path: Path) -> bool:
    return any(isinstance(get(s, path[:k]), (ir.For, ir.While, ir.GenericFor, ir.DoWhile)) for k in range(1, len(path)))


class _Slicer(Machine):
    """A run that follows only the loops leading to the focus, and records
    the state each time it reaches it."""

    def __init__(self, program: ir.Program, choices: Mapping[str, bool], where: Focus,
                 reaching: frozenset[str], statics: _Statics) -> None:
        super().__init__(program, choices)
        self.where, self.reaching, self.statics = where, reaching, statics
        self.instances: list[Instance] = []

    def body(self, f: ir.FuncDef) -> None:
        if f.name == self.where.function:
            self._enter(f.body, self.where.path)
        elif f.name in self.reaching:
            self._enter(f.body, None)
        else:
            super().body(f)

    def _walk(self, stmts: Sequence[ir.Stmt], rest: Path, index: Optional[int]) -> None:
        """A block where statement `index` leads to the focus (by `rest`);
        with no index, the statements that call towards it are followed."""
        saved: list[tuple[str, Any, Any]] = []
        run = self.where.span is not None and rest == () and index is not None  # X is a run of statements here
        span = self.where.span[0] if run and self.where.span else 0
        try:
            for i, s in enumerate(stmts):
                if run and i == index:
                    self._reach(self.where.before)
                    if span:
                        continue
                elif run and index is not None and index < i < index + span:
                    continue  # the rest of X
                elif i == index:
                    self._follow(s, rest, saved)
                    continue
                if index is None and self.statics.of(s)[3] & self.reaching:
                    self._follow(s, None, saved)
                elif isinstance(s, (ir.DeclStmt, ir.Pragma)):
                    self.stmt(s, saved)
                else:
                    self._pass(s, saved)
            if run and index == len(stmts):
                self._reach(self.where.before)  # X adds statements at the end of the block
        finally:
            self._unbind(saved)

    def _follow(self, s: ir.Stmt, rest: Optional[Path], saved: list[tuple[str, Any, Any]]) -> None:
        """A statement on the way to the focus (`rest` from it), or, with no
        rest, one that calls towards it."""
        if rest == ():
            self._reach(s)
        elif isinstance(s, ir.For):
            self._loop(s, rest)
        elif isinstance(s, ir.If):
            c = self.expr(s.cond)
            if isinstance(c, Term):
                raise NotLocal("a condition on the data leads to the changed statement")
            taken = s.then if c else s.other
            if taken is None:
                return
            if rest is None or rest[0][0] == ("then" if c else "other"):
                self._enter(taken, rest[1:] if rest else None)
            else:
                self._pass(taken, saved)
        elif isinstance(s, ir.Block):
            self._enter(s, rest)
        elif rest is None and isinstance(s, (ir.ExprStmt, ir.Return, ir.DeclStmt)):
            self.stmt(s, saved)
        else:
            raise NotLocal(f"the path to the changed statement goes through a {type(s).__name__}")

    def _enter(self, block: ir.Block, rest: Optional[Path]) -> None:
        if rest == ():
            self._reach(block)
        elif rest is None:
            self._walk(block.stmts, (), None)
        else:
            self._walk(block.stmts, rest[1:], rest[0][1])

    def _loop(self, s: ir.For, rest: Optional[Path]) -> None:
        from .symexec import _Break, _Continue, _concrete

        inner: list[tuple[str, Any, Any]] = []
        self._bind(s.index, _concrete(self.expr(s.start), s.start), "i", inner)
        try:
            while self.env[s.index] < _concrete(self.expr(s.stop), s.stop):
                try:
                    self._enter(s.body, rest[1:] if rest else None)
                except _Continue:
                    pass
                except _Break:
                    break
                self._set(self.env, s.index, self.env[s.index] + _concrete(self.expr(s.step), s.step))
        finally:
            self._unbind(inner)

    def _pass(self, s: ir.Stmt, saved: list[tuple[str, Any, Any]]) -> None:
        """A statement off the path: skipped, unless it changes what the path
        needs (an integer, a pointer, the control flow)."""
        assigned, escapes, memory, _ = self.statics.of(s)
        if not escapes and not any(self.kinds.get(v) in ("i", "p") for v in assigned):
            return
        if memory:
            raise NotLocal("a statement off the path changes an integer or a pointer from memory")
        self.stmt(s, saved)

    def _reach(self, s: ir.Stmt) -> None:
        assigned, escapes, _, _ = self.statics.of(s)
        if escapes:
            raise NotLocal("the changed statement may jump out of itself")
        if any(self.kinds.get(v) in ("i", "p") for v in assigned):
            raise NotLocal("the changed statement changes an integer or a pointer of its scope")
        self.instances.append(Instance(dict(self.env), dict(self.kinds), self.allocs))


def instances(program: ir.Program, function: str, contract: Contract, sizes: Mapping[str, int],
              choices: Mapping[str, bool], where: Focus, reaching: frozenset[str]) -> tuple[list[Instance],
                                                                                           dict[str, bool]]:
    """Every state in which X starts in a run of `function`, and the choices asked."""
    m = _Slicer(program, choices, where, reaching, _Statics())
    start(m, function, contract, sizes)
    return m.instances, dict(m.asked)


# ---------------------------------------------------------------- local runs

@dataclass(frozen=True)
class Local:
    """What X left at one instance: every cell and variable of the scope it
    touched, and the unknown memory it started from (to fill the cells the
    other version did not touch)."""

    cells: dict[Any, Any]
    memory: dict[str, Alloc]
    asked: dict[str, bool]
    steps: int


def run_at(program: ir.Program, stmt: ir.Stmt, at: Instance, choices: Mapping[str, bool]) -> Local:
    """Runs X alone from an instance whose every float and memory cell is unknown."""
    from .symexec import _Break, _Continue, _Return

    m = Machine(program, choices)
    shadows: dict[int, Alloc] = {}
    m.env = {name: _unknown(name, v, shadows) for name, v in at.env.items()}
    m.kinds, m.allocs = dict(at.kinds), at.allocs
    try:
        m.stmt(stmt, [])
    except (_Break, _Continue, _Return):
        raise NotLocal("the changed statement jumped out of itself") from None
    cells: dict[Any, Any] = {}
    for a in shadows.values():
        for off, v in a.cells.items():
            cells[(a.name, off)] = v
    for name in at.env:
        for key, v in _flat(("var", name), m.env.get(name)):
            cells[key] = v
    return Local(cells, {a.name: a for a in shadows.values()}, dict(m.asked), m.steps)


def _unknown(name: str, v: Any, shadows: dict[int, Alloc]) -> Any:
    """The value a variable starts with in a local run: the same memory
    object, all of it unknown; an unknown for a float (an integer stays)."""
    if isinstance(v, Ptr):
        a = shadows.get(id(v.alloc))
        if a is None:
            a = shadows[id(v.alloc)] = Alloc(v.alloc.name, v.alloc.extent, v.alloc.kind, "in", v.alloc.width)
        return Ptr(a, v.offset, v.rows)
    if isinstance(v, Vec):
        return Vec(T.leaf("in", f"{name}@", k) if isinstance(x, Term) else x for k, x in enumerate(v))
    if isinstance(v, Term):
        return T.leaf("in_int", f"{name}@", 0, 4) if v.integer else T.leaf("in", f"{name}@", 0)
    return v


def _flat(key: tuple[str, str], v: Any) -> Iterator[tuple[Any, Any]]:
    if isinstance(v, Vec):
        for k, x in enumerate(v):
            yield (*key, k), x
    elif isinstance(v, Ptr):
        yield key, (v.alloc.name, v.offset, v.rows)
    else:
        yield key, v


def outcomes(old: Local, new: Local) -> tuple[Outcome, Outcome]:
    """Both local runs over the same cells: a cell one run never touched
    holds its unknown starting value."""
    keys = old.cells.keys() | new.cells.keys()
    for k in keys & old.cells.keys() & new.cells.keys():
        x, y = old.cells[k], new.cells[k]
        if not isinstance(x, (Term, int)) and x != y:
            raise NotLocal(f"'{k[1]}' holds different pointers after the two versions")

    def fill(run: Local) -> Outcome:
        cells = {}
        for k in keys:
            if k in run.cells:
                cells[k] = run.cells[k]
            elif k[0] == "var" or k[0] not in run.memory:
                raise NotLocal(f"'{k[1]}' is bound after one version of the changed statement only")
            else:
                cells[k] = run.memory[k[0]].unknown(k[1])
        return Outcome(cells, run.asked, 0)
    return fill(old), fill(new)
