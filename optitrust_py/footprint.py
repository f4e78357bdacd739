"""Footprints: every memory access of a piece of code, as a symbolic cell.

An access names the array (or scalar) it touches, its per-dimension
indices, how many consecutive cells it spans from there (a vector load, a
callee's region), whether it writes, and the context it runs in: the
canonical loops around it inside the analysed region and the conditions
that hold there. Indices are rewritten so that they mention only
parameters, loop indices and opaque values:

- a local that is assigned only by its declaration is replaced by its
  initializer (`int off = i * N; C[off + j]` is `C[i * N + j]`), pointer
  locals included (`float *row = &x[i * C]; row[j]` is `x[i * C + j]`);
- any other scalar that the function assigns is *mutable*: each occurrence
  in an index or a bound becomes its own unknown (`Access.mutable`);
- a flattened access to an array whose contract gives it a shape is split
  into per-dimension indices (`layout.delinearize`, `_split`), which the
  resource check proves within their dimensions.

Anything whose effect is not modelled (an unknown call, an opaque node) is
an access to `UNKNOWN` that conflicts with everything."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from . import ir
from .intrinsics import memory_args
from .layout import ONE, ZERO, delinearize, factors, linearize, signed_sum, terms
from .names import PURE_FUNCTIONS, has_side_effects, subst
from .printer import expr as expr_text
from .tree import Path, children, function_path, get, walk as _walk

UNKNOWN = "?"
"""The cell of an access whose target is not modelled."""

_ALLOCATORS = frozenset({"malloc", "calloc", "aligned_alloc", "posix_memalign"})
_ORDER_ONLY = frozenset({"_mm_sfence", "_mm_mfence", "_mm_lfence", "__builtin_cpu_supports", "assert"})


@dataclass(frozen=True)
class Loop:
    """A canonical loop around an access: `index` runs from `start` by
    `step` while below `stop`."""

    index: str
    start: ir.Expr
    stop: ir.Expr
    step: ir.Expr
    path: Path


@dataclass(frozen=True)
class Access:
    cell: str
    index: tuple[ir.Expr, ...]
    lanes: ir.Expr
    write: bool
    read: bool
    update: Optional[str]
    text: str
    path: Path
    line: Optional[int]
    loops: tuple[Loop, ...]
    guards: tuple[ir.Expr, ...]
    stmt: int
    mutable: tuple[str, ...] = ()
    shape: Optional[tuple[ir.Expr, ...]] = None
    whole: bool = False
    via: str = ""
    uid: int = field(default=0, compare=False)

    def describe(self) -> str:
        verb = "updates" if self.update else "writes" if self.write else "reads"
        at = f" (line {self.line})" if self.line else ""
        return f"'{self.text}'{at} {verb} {self.cell if self.cell != UNKNOWN else 'unknown memory'}"

    def flat(self) -> Optional[ir.Expr]:
        """The index as one offset into the cell (None without a shape)."""
        if len(self.index) <= 1:
            return self.index[0] if self.index else ZERO
        return linearize(self.index, self.shape) if self.shape is not None else None


def _split(index: ir.Expr, shape: tuple[ir.Expr, ...]) -> Optional[tuple[ir.Expr, ...]]:
    """The per-dimension indices of a flattened index. A term that is the
    last dimension alone stays in the last index when that index subtracts
    something: `k * N + (N - 1 - j)` is (k, N - 1 - j), within N columns,
    not (k + 1, -1 - j). None when nothing else carries a dimension (the
    access is then checked flat)."""
    parts = terms(index)
    bare = [(sign, t) for sign, t in parts if t == shape[-1]]
    rest = [(sign, t) for sign, t in parts if t != shape[-1]]
    if not bare or not any(sign < 0 and not factors(t).count(shape[-1]) for sign, t in rest):
        return delinearize(index, shape)
    split = delinearize(signed_sum(rest), shape)
    return None if split is None else split[:-1] + (signed_sum(bare + terms(split[-1])),)


@dataclass(frozen=True)
class Footprint:
    """The accesses of a region, and the context it runs in: the loops and
    conditions around the region inside its function, and the function's
    contract requires (`outside`)."""

    function: str
    accesses: tuple[Access, ...]
    outer_loops: tuple[Loop, ...]
    outer_guards: tuple[ir.Expr, ...]
    requires: tuple[ir.Expr, ...]
    sizes: Mapping[str, tuple[ir.Expr, ...]] = field(default_factory=dict)
    consts: tuple[tuple[str, ir.Expr], ...] = ()
    stores: tuple["Store", ...] = ()

    def resolve(self, e: ir.Expr) -> ir.Expr:
        """`e` as it reads at the footprint's place, constant locals replaced."""
        return subst(e, dict(self.consts)) if self.consts else e

    def of_stmt(self, k: int) -> tuple[Access, ...]:
        return tuple(a for a in self.accesses if a.stmt == k)


@dataclass(frozen=True)
class Store:
    """A write, anywhere in the function, to a local integer scalar whose
    address is never taken or to a local integer array that never escapes
    (only indexed, or freed): the value it stores (None when it is not a
    plain `=` or an initializer), as the write's access would read it, and
    the mutable scalars that value reads. What the value-range invariants
    of level 2 are proved from."""

    access: Access
    value: Optional[ir.Expr]
    mutable: tuple[str, ...] = ()


_uids = itertools.count(1)


class _Collector:
    """Walks one function, knowing its constant locals, its mutable scalars
    and the shapes of its arrays."""

    def __init__(self, program: ir.Program, fn: ir.FuncDef, contracts: Mapping[str, Any]) -> None:
        self.program = program
        self.fn = fn
        self.contracts = contracts
        contract = contracts.get(fn.decl.name or "")
        self.pointers = {p.name for p in _params(fn) if isinstance(p.type, (ir.Ptr, ir.Array)) and p.name}
        self.defined = {f.name: f for f in program.functions()}
        self.assigned, declared_pointers, addressed, self.redeclared, self.int_cells = _body_facts(fn.body)
        self.pointers |= declared_pointers
        self.shapes: dict[str, tuple[ir.Expr, ...]] = {}
        self.sizes: dict[str, tuple[ir.Expr, ...]] = {}
        self.scalars = self.assigned | addressed
        if contract is not None:
            for _, r in contract.resources():
                if r.shape.kind == "matrix" and not r.group and isinstance(r.subject, ir.Var):
                    self.shapes.setdefault(r.base, r.shape.dims)
        self.out: list[Access] = []
        self.values: dict[int, tuple[ir.Expr, tuple[str, ...]]] = {}

    def stored(self, a: Access, value: ir.Expr, ctx: "_Ctx") -> None:
        """Remember the value the write `a` stores, as read where it runs."""
        value = ctx.resolve(value)
        names = {n.name for n in _nodes(value) if isinstance(n, ir.Var)}
        self.values[a.uid] = value, tuple(sorted(names & ctx.mutable))

    def stores(self) -> tuple[Store, ...]:
        """The writes to the private integer cells, with their values."""
        return tuple(Store(a, *self.values.get(a.uid, (None, ()))) for a in self.out
                     if a.write and a.cell in self.int_cells and not _is_free(a))

    def target(self, e: ir.Expr) -> Optional[tuple[str, ir.Expr]]:
        """The array a pointer expression points into, and the offset."""
        if isinstance(e, ir.Var):
            return (e.name, ZERO) if e.name in self.pointers else None
        if isinstance(e, ir.Cast):
            return self.target(e.arg)
        if isinstance(e, ir.Unop) and e.op == "&" and isinstance(e.arg, ir.Index) \
                and isinstance(e.arg.base, ir.Var):
            return e.arg.base.name, e.arg.index
        if isinstance(e, ir.Unop) and e.op == "&" and isinstance(e.arg, ir.Index):
            # `&a[i][j]` into a local array of known shape: its flattened offset (split back by `add`)
            chain, base, _ = _chain(e.arg, ())
            shape = self.shapes.get(base.name) if isinstance(base, ir.Var) else None
            if shape is not None and len(shape) == len(chain):
                return base.name, linearize(tuple(i for i, _ in chain), shape)
        if isinstance(e, ir.Unop) and e.op == "&" and isinstance(e.arg, ir.Var) and e.arg.name in self.scalars:
            return e.arg.name, ZERO
        if isinstance(e, ir.Binop) and e.op == "+":
            for ptr, off in ((e.left, e.right), (e.right, e.left)):
                t = self.target(ptr)
                if t is not None:
                    return t[0], _plus(t[1], off)
        return None

    def base_name(self, e: ir.Expr) -> Optional[str]:
        t = self.target(e)
        return t[0] if t else None

    # -------------------------------------------------------------- expressions

    def declare(self, d: ir.Decl, ctx: "_Ctx") -> "_Ctx":
        """The context after a declaration: a local assigned nowhere else,
        initialised without side effects, stands for its initializer; any
        other declaration hides an outer one of the same name. Arrays and
        allocations record their sizes."""
        if not d.name:
            return ctx
        if d.name in self.redeclared:
            ctx = ctx.naming(d.name, f"{d.name}@{d.loc.line if d.loc else id(d)}")
        cell = ctx.cell(d.name)
        dims = tuple(ctx.resolve(x) for x in _array_dims(d.type))
        count = _allocated_count(d.init) if isinstance(d.type, ir.Ptr) else None
        if dims:
            self.shapes[cell] = self.sizes[cell] = dims
        elif count is not None and isinstance(d.type, ir.Ptr):
            # T (*p)[D] = malloc(n * sizeof(T[D])) has rows of D; malloc(A * B * sizeof(T)) is seen as A x B,
            # so that `p[a * B + b]` splits into (a, b), each proved within its dimension
            rows = tuple(ctx.resolve(x) for x in _array_dims(d.type.to))
            self.sizes[cell] = (ctx.resolve(count),) + rows if rows else tuple(factors(ctx.resolve(count)))
            if len(self.sizes[cell]) > 1:
                self.shapes[cell] = self.sizes[cell]
        if d.name not in self.assigned and d.init is not None and not dims \
                and not isinstance(d.init, ir.InitList) and not has_side_effects(d.init):
            return ctx.bind(d.name, ctx.resolve(d.init))
        return ctx.bind(d.name, None)

    def add(self, cell: str, index: tuple[ir.Expr, ...], lanes: ir.Expr, role: str, node: Any, path: Path,
            ctx: "_Ctx", whole: bool = False, via: str = "") -> None:
        index = tuple(ctx.resolve(i) for i in index)
        shape = self.shapes.get(cell)
        if shape is not None and len(index) == 1 and len(shape) > 1:
            split = _split(index[0], shape)
            if split is not None:
                index = split
        lanes = ctx.resolve(lanes)
        mutable = {n.name for i in index + (lanes,) + ctx.guards for n in _nodes(i) if isinstance(n, ir.Var)}
        mutable = (mutable | {n.name for lp in ctx.loops for e in (lp.start, lp.stop, lp.step) for n in _nodes(e)
                              if isinstance(n, ir.Var)}) & ctx.mutable
        loc = getattr(node, "loc", None)
        self.out.append(Access(cell, index, lanes, role in ("write", "update"),
                               role in ("read", "update"), ctx.update if role == "update" else None,
                               expr_text(node) if isinstance(node, ir.EXPR_TYPES) else cell, path,
                               loc.line if loc else None, ctx.loops, ctx.guards, ctx.stmt,
                               tuple(sorted(mutable)), shape if shape and len(index) == len(shape) else shape,
                               whole or cell == UNKNOWN, via or cell, next(_uids)))

    def lvalue(self, e: ir.Expr, path: Path, role: str, ctx: "_Ctx") -> None:
        """An lvalue being written, updated or read."""
        if isinstance(e, ir.Cast):
            self.lvalue(e.arg, path + (("arg", None),), role, ctx)
            return
        if isinstance(e, ir.Var):
            cell = ctx.cell(e.name)
            if e.name in self.scalars or cell in self.shapes:
                self.add(cell, (), ONE, role, e, path, ctx, whole=cell in self.shapes)
            return
        if isinstance(e, ir.Index):
            chain, base, base_path = _chain(e, path)
            for k, (i, p) in enumerate(chain):
                self.expr(i, p, ctx)
            self.pointer_access(base, tuple(i for i, _ in chain), ONE, role, e, path, ctx, base_path)
            return
        if isinstance(e, ir.Unop) and e.op == "*":
            self.pointer_access(e.arg, (ZERO,), ONE, role, e, path, ctx, path + (("arg", None),))
            return
        self.expr(e, path, ctx)
        self.add(UNKNOWN, (), ONE, role, e, path, ctx)

    def pointer_access(self, base: ir.Expr, index: tuple[ir.Expr, ...], lanes: ir.Expr, role: str, node: Any,
                       path: Path, ctx: "_Ctx", base_path: Path) -> None:
        """An access `base[index...]` (lanes cells from there) where `base` is
        a pointer expression: an array name, a constant pointer local, or an
        offset from one."""
        target = self.target(ctx.resolve(base))
        if target is None:
            self.expr(base, base_path, ctx)
            self.add(UNKNOWN, (), ONE, role, node, path, ctx)
            return
        name, offset = target
        self.expr(base, base_path, ctx, skip_array=name)
        name = ctx.cell(name)
        if offset != ZERO:
            index = (_plus(offset, index[0]),) + index[1:] if len(index) == 1 else (offset,) + index
            if len(index) > 1 and offset != ZERO and name not in self.shapes:
                self.add(name, (), ONE, role, node, path, ctx, whole=True)
                return
        self.add(name, index, lanes, role, node, path, ctx, via=_syntactic_base(base))

    def expr(self, e: Any, path: Path, ctx: "_Ctx", skip_array: Optional[str] = None) -> None:
        """The reads of evaluating `e` (and the writes of its side effects)."""
        if isinstance(e, ir.Var):
            if e.name in self.scalars and e.name != skip_array:
                self.add(ctx.cell(e.name), (), ONE, "read", e, path, ctx)
            return
        if isinstance(e, ir.Index):
            self.lvalue(e, path, "read", ctx)
            return
        if isinstance(e, ir.Assign):
            self.expr(e.rhs, path + (("rhs", None),), ctx)
            written = len(self.out)
            self.lvalue(e.lhs, path + (("lhs", None),), "write" if e.op == "=" else "update",
                        ctx.updating(e.op[:-1]))
            if e.op == "=" and len(self.out) > written:
                self.stored(self.out[-1], e.rhs, ctx)
            return
        if isinstance(e, ir.Unop):
            if e.op in ("++", "--", "p++", "p--"):
                self.lvalue(e.arg, path + (("arg", None),), "update", ctx.updating("+"))
            elif e.op == "*":
                self.lvalue(e, path, "read", ctx)
            elif e.op == "&":
                self.address(e.arg, path + (("arg", None),), ctx)
            elif e.op != "sizeof":
                self.expr(e.arg, path + (("arg", None),), ctx)
            return
        if isinstance(e, ir.Call):
            self.call(e, path, ctx)
            return
        if isinstance(e, (ir.OpaqueExpr,)):
            self.add(UNKNOWN, (), ONE, "update", e, path, ctx)
            return
        for step, child in _expr_children(e, path):
            self.expr(child, step, ctx)

    def address(self, e: ir.Expr, path: Path, ctx: "_Ctx") -> None:
        """`&e` outside a call argument we model: the indices are read; the
        cell escapes only if the pointer is stored, which `lvalue` of the
        pointer's later uses sees through `constants`."""
        if isinstance(e, ir.Index):
            chain, base, base_path = _chain(e, path)
            for i, p in chain:
                self.expr(i, p, ctx)
            self.expr(base, base_path, ctx, skip_array=self.base_name(base))
        else:
            self.expr(e, path, ctx, skip_array=self.base_name(e))

    def call(self, c: ir.Call, path: Path, ctx: "_Ctx") -> None:
        name = c.func.name if isinstance(c.func, ir.Var) else None
        arg_paths = [path + (("args", k),) for k in range(len(c.args))]
        if name in PURE_FUNCTIONS or name in _ORDER_ONLY or name in _ALLOCATORS:
            for a, p in zip(c.args, arg_paths):
                self.expr(a, p, ctx)
            return
        touched = memory_args(name, len(c.args)) if name else None
        if touched is not None:
            for k, (a, p) in enumerate(zip(c.args, arg_paths)):
                if k not in touched:
                    self.expr(a, p, ctx)
                    continue
                role, lanes, rows = touched[k]
                for row in range(rows):
                    moved = _rows_on(a, row)
                    if moved is None:
                        self.expr(a, p, ctx)
                        self.add(UNKNOWN, (), ONE, role, c, path, ctx)
                        break
                    self.pointer_access(moved, (ZERO,), ir.Const(str(lanes)), role, c, path, ctx, p)
            return
        contract = self.contracts.get(name) if name in self.defined else None
        if contract is not None:
            self.callee_footprint(c, contract, path, ctx)
            return
        if name in self.defined and self.value_only(self.defined[name]):
            for a, p in zip(c.args, arg_paths):
                self.expr(a, p, ctx)
            return
        callee = self.defined.get(name) if name else None
        params = _params(callee) if callee is not None else ()
        for k, (a, p) in enumerate(zip(c.args, arg_paths)):
            self.expr(a, p, ctx)
            target = self.target(ctx.resolve(a))
            read_only = k < len(params) and isinstance(params[k].type, ir.Ptr) and "const" in _quals(params[k].type.to)
            if target is not None:
                self.add(ctx.cell(target[0]), (), ONE, "read" if read_only else "update", c, path, ctx, whole=True)
        if name is None or name not in ("free",):
            self.add(UNKNOWN, (), ONE, "update", c, path, ctx)

    def callee_footprint(self, c: ir.Call, contract: Any, path: Path, ctx: "_Ctx") -> None:
        """A call to a function with a contract touches, through each pointer
        argument, the region its contract gives that parameter."""
        binding = dict(zip(contract.params, c.args))
        for k, a in enumerate(c.args):
            self.expr(a, path + (("args", k),), ctx)
        for mode, r in contract.resources():
            arg = binding.get(r.base)
            if arg is None or r.group or not isinstance(r.subject, ir.Var):
                self.add(UNKNOWN, (), ONE, "update", c, path, ctx)
                continue
            size: ir.Expr = ONE
            for d in r.shape.dims:
                size = ir.Binop("*", size, subst(d, binding)) if size != ONE else subst(d, binding)
            role = "read" if mode == "reads" else "write" if mode == "writes" else "update"
            target = self.target(ctx.resolve(arg))
            if target is None:
                self.add(UNKNOWN, (), ONE, role, c, path, ctx)
                continue
            name, offset = target
            self.out.append(Access(name, (ctx.resolve(offset),), ctx.resolve(size), role != "read",
                                   role != "write", None, expr_text(c), path,
                                   c.loc.line if c.loc else None, ctx.loops, ctx.guards, ctx.stmt,
                                   tuple(sorted(ctx.mutable)), self.shapes.get(name), False,
                                   _syntactic_base(arg), next(_uids)))

    def value_only(self, callee: ir.FuncDef) -> bool:
        """A function without a contract that takes no pointer and touches
        only its own locals computes a value from its arguments."""
        if any(isinstance(p.type, (ir.Ptr, ir.Array)) for p in _params(callee)) or callee is self.fn:
            return False
        inner = _Collector(self.program, callee, self.contracts)
        inner.stmt(callee.body, (), _Ctx(mutable=frozenset(inner.assigned)))
        own = {n.decl.name for n in _nodes(callee.body) if isinstance(n, ir.DeclStmt)} | \
            {p.name for p in _params(callee)}
        return all(a.cell in own for a in inner.out)

    # -------------------------------------------------------------- statements

    def enter(self, s: ir.For, path: Path, ctx: "_Ctx") -> "_Ctx":
        """The context of a loop's body: a canonical loop bounds its index;
        one whose body assigns its index only makes it mutable."""
        if s.index in assigned_scalars(s.body):
            return ctx.bind(s.index, None)
        loop = Loop(s.index, ctx.resolve(s.start), ctx.resolve(s.stop), ctx.resolve(s.step), path)
        return ctx.bind(s.index, None, mutable=False).inside(loop)

    def stmt(self, s: Any, path: Path, ctx: "_Ctx") -> None:
        if isinstance(s, ir.Block):
            for k, x in enumerate(s.stmts):
                self.stmt(x, path + (("stmts", k),), ctx)
                if isinstance(x, ir.DeclStmt):
                    ctx = self.declare(x.decl, ctx)
        elif isinstance(s, ir.ExprStmt):
            self.expr(s.expr, path + (("expr", None),), ctx)
        elif isinstance(s, ir.DeclStmt):
            d = s.decl
            if d.init is not None:
                self.expr(d.init, path + (("decl", None), ("init", None)), ctx)
                if d.name in self.scalars:
                    named = self.declare(d, ctx)
                    self.add(named.cell(d.name), (), ONE, "write", ir.Var(d.name, s.loc), path, named)
                    self.stored(self.out[-1], d.init, ctx)
        elif isinstance(s, ir.For):
            for part in ("start", "stop", "step"):
                self.expr(getattr(s, part), path + ((part, None),), ctx)
            self.stmt(s.body, path + (("body", None),), self.enter(s, path, ctx))
        elif isinstance(s, ir.If):
            self.expr(s.cond, path + (("cond", None),), ctx)
            cond = ctx.resolve(s.cond)
            self.stmt(s.then, path + (("then", None),), ctx.guarded(cond))
            if s.other is not None:
                self.stmt(s.other, path + (("other", None),), ctx.guarded(ir.Unop("!", cond)))
        elif isinstance(s, (ir.While, ir.DoWhile, ir.GenericFor)):
            inner = ctx.bind_all(assigned_scalars(s))
            for step, child in _expr_children(s, path):
                self.expr(child, step, inner)
            self.stmt(s.body, path + (("body", None),), inner)
        elif isinstance(s, ir.Return):
            if s.value is not None:
                self.expr(s.value, path + (("value", None),), ctx)
        elif isinstance(s, ir.Label):
            self.stmt(s.stmt, path + (("stmt", None),), ctx)
        elif isinstance(s, (ir.Pragma, ir.Jump, ir.ContractClause)):
            return
        else:
            self.add(UNKNOWN, (), ONE, "update", s, path, ctx)


@dataclass(frozen=True)
class _Ctx:
    """Where the walk is: the loops and guards around, the statement number
    in the region, the constant locals in scope (name -> initializer), the
    names whose value may change (mutable), and the operator of the update
    being walked."""

    loops: tuple[Loop, ...] = ()
    guards: tuple[ir.Expr, ...] = ()
    stmt: int = 0
    consts: tuple[tuple[str, ir.Expr], ...] = ()
    mutable: frozenset[str] = frozenset()
    update: Optional[str] = None
    cells: tuple[tuple[str, str], ...] = ()

    def cell(self, name: str) -> str:
        """The cell a name denotes here: itself, or `name@line` for one of
        several locals of that name."""
        return next((c for n, c in reversed(self.cells) if n == name), name)

    def naming(self, name: str, cell: str) -> "_Ctx":
        return self._with(cells=self.cells + ((name, cell),))

    def _with(self, **changes: Any) -> "_Ctx":
        return dataclasses.replace(self, **changes)

    def resolve(self, e: ir.Expr) -> ir.Expr:
        """`e` with the constant locals in scope replaced by their values."""
        return subst(e, dict(self.consts)) if self.consts else e

    def bind(self, name: str, value: Optional[ir.Expr], mutable: Optional[bool] = None) -> "_Ctx":
        """`name` now stands for `value` (None: for itself); it is mutable
        when it is assigned somewhere, unless told."""
        consts = tuple((n, v) for n, v in self.consts if n != name) + (((name, value),) if value is not None else ())
        mut = self.mutable if mutable is None else (self.mutable | {name} if mutable else self.mutable - {name})
        return self._with(consts=consts, mutable=mut)

    def bind_all(self, names: set[str]) -> "_Ctx":
        out = self
        for n in names:
            out = out.bind(n, None, mutable=True)
        return out

    def inside(self, loop: Loop) -> "_Ctx":
        return self._with(loops=self.loops + (loop,))

    def guarded(self, cond: ir.Expr) -> "_Ctx":
        return self._with(guards=self.guards + (cond,))

    def updating(self, op: str) -> "_Ctx":
        return self._with(update=op)

    def at(self, k: int) -> "_Ctx":
        return self._with(stmt=k)


def footprint(program: ir.Program, path: Path, contracts: Mapping[str, Any], node: Any = None) -> Footprint:
    """The accesses of the statement at `path` (a loop: its header and all
    its iterations; a block: its statements, numbered by `Access.stmt`), or
    of `node` (a statement or an expression) as if it stood there."""
    fn_path = path[:1]
    fn: ir.FuncDef = get(program, fn_path)
    col = _Collector(program, fn, contracts)
    outer = _Ctx(mutable=frozenset(col.assigned))
    override, node = node, fn
    for k in range(1, len(path)):
        step = path[k]
        parent, node = node, get(node, (step,))
        if isinstance(parent, ir.Block) and step[0] == "stmts":
            for s in parent.stmts[:step[1]]:
                if isinstance(s, ir.DeclStmt):
                    outer = col.declare(s.decl, outer)
        elif isinstance(parent, ir.For) and step == ("body", None):
            outer = col.enter(parent, path[:k], outer)
        elif isinstance(parent, ir.If) and step[0] in ("then", "other"):
            cond = outer.resolve(parent.cond)
            outer = outer.guarded(cond if step[0] == "then" else ir.Unop("!", cond))
        elif isinstance(parent, (ir.While, ir.DoWhile, ir.GenericFor)):
            outer = outer.bind_all(assigned_scalars(parent))
    inner = outer._with(loops=(), guards=())
    if override is not None:
        node = override
    if isinstance(node, ir.EXPR_TYPES):
        col.expr(node, path, inner)
    elif isinstance(node, ir.Block):
        for k, s in enumerate(node.stmts):
            col.stmt(s, path + (("stmts", k),), inner.at(k))
            if isinstance(s, ir.DeclStmt):
                inner = col.declare(s.decl, inner)
    else:
        col.stmt(node, path, inner)
    contract = contracts.get(fn.decl.name or "")
    requires = tuple(contract.requires) if contract is not None else ()
    whole = path == fn_path + (("body", None),) and override is None
    stores = col.stores() if whole else function_footprint(program, fn.decl.name or "", contracts).stores
    return Footprint(fn.decl.name or "", tuple(col.out), outer.loops, outer.guards, requires, dict(col.sizes),
                     outer.consts, stores)


def function_footprint(program: ir.Program, function: str, contracts: Mapping[str, Any]) -> Footprint:
    """All the accesses of a function's body (cached: programs are immutable)."""
    key = (id(program), function, id(contracts))
    hit = _CACHE.get(key)
    if hit is None or hit[0] is not program:
        path = function_path(program, function) + (("body", None),)
        hit = _CACHE[key] = (program, footprint(program, path, contracts))
        if len(_CACHE) > 64:
            _CACHE.pop(next(iter(_CACHE)))
    return hit[1]


def under(a: Access, path: Path) -> bool:
    return a.path[:len(path)] == path


_CACHE: dict[tuple[int, str, int], tuple[ir.Program, Footprint]] = {}


# ----------------------------------------------------------------- helpers


def _nodes(node: Any) -> Iterator[Any]:
    for _, n in _walk(node):
        yield n


def _expr_children(e: Any, path: Path) -> Iterator[tuple[Path, Any]]:
    for step, child in children(e):
        if isinstance(child, ir.EXPR_TYPES):
            yield path + (step,), child


def _rows_on(pointer: ir.Expr, rows: int) -> Optional[ir.Expr]:
    """`&a[..][r + rows][c]` for the pointer `&a[..][r][c]` (itself for 0
    rows), or None when it does not name a cell of an array of two or more
    dimensions: an intrinsic that reaches cells in several rows."""
    if rows == 0:
        return pointer
    if not (isinstance(pointer, ir.Unop) and pointer.op == "&" and isinstance(pointer.arg, ir.Index)
            and isinstance(pointer.arg.base, ir.Index)):
        return None
    row = pointer.arg.base
    moved = ir.Index(ir.Index(row.base, ir.Binop("+", row.index, ir.Const(str(rows))), row.loc), pointer.arg.index,
                     pointer.arg.loc)
    return ir.Unop("&", moved, pointer.loc)


def _chain(e: ir.Index, path: Path) -> tuple[list[tuple[ir.Expr, Path]], ir.Expr, Path]:
    """`a[i][j]` as ([(i, path of i), (j, ...)], a, path of a)."""
    chain: list[tuple[ir.Expr, Path]] = []
    node: ir.Expr = e
    while isinstance(node, ir.Index):
        chain.append((node.index, path + (("index", None),)))
        node, path = node.base, path + (("base", None),)
    return list(reversed(chain)), node, path


def _plus(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    if a == ZERO:
        return b
    if b == ZERO:
        return a
    return ir.Binop("+", a, b)


def _array_dims(t: ir.CType) -> tuple[ir.Expr, ...]:
    dims: list[ir.Expr] = []
    while isinstance(t, ir.Array) and t.size is not None:
        dims.append(t.size)
        t = t.of
    return tuple(dims)


def assigned_scalars(node: Any) -> set[str]:
    """Variables assigned as a whole (`x = ...`, `x += ...`, `x++`), not
    through an index or a pointer (once per node: level 2 asks again for
    every loop of every step)."""
    got = _ASSIGNED.get(id(node))
    if got is None or got[0] is not node:
        out: set[str] = set()
        for n in _nodes(node):
            if isinstance(n, ir.Assign) and isinstance(n.lhs, ir.Var):
                out.add(n.lhs.name)
            elif isinstance(n, ir.Unop) and n.op in ("++", "--", "p++", "p--") and isinstance(n.arg, ir.Var):
                out.add(n.arg.name)
        if len(_ASSIGNED) > 50_000:
            _ASSIGNED.clear()  # nodes of programs long gone
        got = _ASSIGNED[id(node)] = (node, frozenset(out))
    return set(got[1])


_ASSIGNED: dict[int, tuple[Any, frozenset[str]]] = {}
_BODIES: dict[int, tuple[ir.Block, tuple[set[str], set[str], set[str], set[str], set[str]]]] = {}


def _body_facts(body: ir.Block) -> tuple[set[str], set[str], set[str], set[str], set[str]]:
    """A function body's assigned scalars, declared pointers and arrays,
    scalars whose address is taken, names declared twice, and private
    integer cells (`_private_ints`), once per body."""
    got = _BODIES.get(id(body))
    if got is None or got[0] is not body:
        pointers: set[str] = set()
        addressed: set[str] = set()
        counts: dict[str, int] = {}
        for n in _nodes(body):
            if isinstance(n, ir.DeclStmt) and n.decl.name:
                counts[n.decl.name] = counts.get(n.decl.name, 0) + 1
                if isinstance(n.decl.type, (ir.Ptr, ir.Array)):
                    pointers.add(n.decl.name)
            elif isinstance(n, ir.Unop) and n.op == "&" and isinstance(n.arg, ir.Var):
                addressed.add(n.arg.name)
        redeclared = {n for n, k in counts.items() if k > 1}
        if len(_BODIES) > 1000:
            _BODIES.clear()
        got = _BODIES[id(body)] = (body, (assigned_scalars(body), pointers, addressed, redeclared,
                                          _private_ints(body, addressed) - redeclared))
    return tuple(set(x) for x in got[1])  # type: ignore[return-value]


def _syntactic_base(e: ir.Expr) -> str:
    """The variable a pointer expression is written with (`row` in `row + j`)."""
    for _, n in _walk(e):
        if isinstance(n, ir.Var):
            return n.name
    return ""


def _allocated_count(e: Optional[ir.Expr]) -> Optional[ir.Expr]:
    """`n` for `malloc(n * sizeof(T))` (under a cast), else None."""
    while isinstance(e, ir.Cast):
        e = e.arg
    if not (isinstance(e, ir.Call) and isinstance(e.func, ir.Var) and e.func.name == "malloc" and len(e.args) == 1):
        return None
    size = e.args[0]
    if isinstance(size, ir.Binop) and size.op == "*":
        for count, unit in ((size.left, size.right), (size.right, size.left)):
            if isinstance(unit, ir.SizeofType) or isinstance(unit, ir.Unop) and unit.op == "sizeof":
                return count
    return None


def _is_free(a: Access) -> bool:
    """The release of a buffer: no value of it may be read after."""
    return a.whole and a.text == f"free({a.via})"


def _private_ints(body: ir.Block, addressed: set[str]) -> set[str]:
    """Local integer scalars whose address is never taken and that are no
    loop's index (a loop writes its index without an assignment), and local
    arrays (or pointers to allocated ones) of integers whose name is only
    ever indexed or freed: no other name reaches their cells."""
    decls = [n.decl for n in _nodes(body) if isinstance(n, ir.DeclStmt) and n.decl.name]
    indices = {n.index for n in _nodes(body) if isinstance(n, ir.For)}
    scalars = {d.name for d in decls if _integer(d.type)} - addressed - indices
    declared = {d.name for d in decls if isinstance(d.type, (ir.Array, ir.Ptr)) and _integer_elements(d.type)}
    used: dict[str, int] = {}
    fair: dict[str, int] = {}
    for n in _nodes(body):
        if isinstance(n, ir.Var):
            used[n.name] = used.get(n.name, 0) + 1
        elif isinstance(n, ir.Index) and isinstance(n.base, ir.Var):
            fair[n.base.name] = fair.get(n.base.name, 0) + 1
        elif isinstance(n, ir.Call) and isinstance(n.func, ir.Var) and n.func.name == "free" \
                and len(n.args) == 1 and isinstance(n.args[0], ir.Var):
            fair[n.args[0].name] = fair.get(n.args[0].name, 0) + 1
    return scalars | {d for d in declared if used.get(d, 0) == fair.get(d, 0)}


def _integer_elements(t: ir.CType) -> bool:
    """An array or pointer (to arrays) of a plain integer type."""
    while isinstance(t, (ir.Array, ir.Ptr)):
        t = t.of if isinstance(t, ir.Array) else t.to
    return _integer(t)


def _integer(t: ir.CType) -> bool:
    return isinstance(t, ir.Base) and bool(set(t.names) & {"int", "long", "short"})


def _quals(t: ir.CType) -> tuple[str, ...]:
    return getattr(t, "quals", ())


def cell_name(cell: str) -> str:
    """The variable a cell belongs to (`val` for `val@12`)."""
    return cell.split("@")[0]


def _params(fn: ir.FuncDef) -> tuple[ir.Decl, ...]:
    t = fn.decl.type
    return tuple(t.params or ()) if isinstance(t, ir.FuncT) else ()
