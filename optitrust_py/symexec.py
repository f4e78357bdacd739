"""Symbolic execution of a function for level 3: integers concrete (sizes
are fixed small numbers), float data symbolic (`terms`).

`run(program, function, contract, sizes)` runs the function on inputs
whose every cell is an unknown (`in(q, 17)`) and returns the terms its
outputs (the `writes`/`modifies` resources of its contract) hold at the end.

What the model does with C:
- control flow on integers runs as C runs; a condition on data (`if
  (scores[j] > m) m = scores[j];`) runs both branches and merges what they
  changed into `ite` terms; a data-dependent index reads every cell it may
  name (`ite` over them), so a routing decision can pick a row;
- a call of a function of the program runs its body; `expf`, `sqrtf`,
  `roundf` and friends are uninterpreted symbols; `malloc`ed memory starts
  as `undef` unknowns, so reading a cell never written shows in the terms;
- OpenMP pragmas are ignored (races are level 2's business); the AVX-512
  intrinsics otp emits act lane by lane; `otp_expf_avx512`, the vector
  exponential `vector.vectorize` emits, is taken to be exp on each lane
  (like `expf`: its accuracy is what `--exec` measures);
- `__builtin_cpu_supports(...)` is a choice the caller makes (`choices`),
  so both the vector and the scalar path of a dispatch are run.

Whatever the model lacks raises `Unsupported` with the location.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from . import ir, terms as T
from .contract import Contract
from .errors import OtpError
from .intrinsics import TILE_PRODUCTS
from .terms import Term
from .typeof import resolve, typedefs_of

Unsupported = type("Unsupported", (OtpError,), {"__doc__": "C that level 3's model does not cover."})

_MISSING = object()
_VECTOR_TYPES = {"__m512": ("f", 16), "__m512i": ("i", 16), "__m256i": ("i", 8), "__m256": ("f", 8)}
_FLOAT_NAMES = {"float", "double", "long double", "_Float16", "__fp16", "__bf16", "__half", "__nv_bfloat16"}


class Alloc:
    """One object in memory: its cells (flat, in elements), its extent, and
    what an unwritten cell holds."""

    __slots__ = ("name", "cells", "extent", "kind", "fresh", "address", "width")
    _count = 0

    def __init__(self, name: str, extent: int, kind: str, fresh: str, width: int = 4) -> None:
        self.name, self.extent, self.kind, self.fresh, self.width = name, extent, kind, fresh, width
        self.cells: dict[int, Any] = {}
        Alloc._count += 1
        self.address = Alloc._count * (1 << 20) + 12
        """Where it starts, 12 bytes past a 64-byte boundary, so code that
        peels iterations to reach an aligned address runs its peel."""

    def unknown(self, offset: int) -> Term:
        """What a cell holds before anything is written to it."""
        return T.leaf(self.fresh + "_int", self.name, offset, self.width) if self.kind == "i" \
            else T.leaf(self.fresh, self.name, offset)


class Ptr(NamedTuple):
    alloc: Alloc
    offset: int
    rows: tuple[int, ...] = ()
    """Lengths of the inner dimensions when the pointer is to an array of
    arrays (`float t[n][64]`, `float (*p)[D]`)."""


class Vec(tuple):  # type: ignore[type-arg]
    """A vector register: its lanes (terms or integers)."""


class _Return(Exception):
    def __init__(self, value: Any) -> None:
        self.value = value


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


def _base_name(t: ir.CType) -> str:
    return " ".join(n for n in t.names if n not in ("const", "volatile", "restrict")) \
        if isinstance(t, ir.Base) else ""


def _scalar_kind(t: ir.CType, typedefs: Mapping[str, ir.CType] = {}) -> str:  # noqa: B006 (read only)
    """'f' for floats, 'i' for integers, 'v' for a vector, 'p' for pointers
    and arrays, through the program's `typedefs` (`typedef float real;`)."""
    t = resolve(t, typedefs)
    if isinstance(t, (ir.Ptr, ir.Array)):
        return "p"
    name = _base_name(t)
    if name in _VECTOR_TYPES:
        return "v"
    return "f" if name in _FLOAT_NAMES else "i"


def _elem_kind(t: ir.CType, typedefs: Mapping[str, ir.CType] = {}) -> tuple[str, int]:  # noqa: B006 (read only)
    """The kind of the elements a pointer or array type reaches, and their bytes."""
    t = resolve(t, typedefs)
    while isinstance(t, (ir.Ptr, ir.Array)):
        t = resolve(t.to if isinstance(t, ir.Ptr) else t.of, typedefs)
    return _scalar_kind(t), _WIDTHS.get(_base_name(t), 4)


_TYPEDEFS: dict[int, tuple[ir.Program, dict[str, ir.CType]]] = {}


def typedefs(program: ir.Program) -> dict[str, ir.CType]:
    """`typeof.typedefs_of`, once per program (kept): a local run starts a
    machine for every instance."""
    got = _TYPEDEFS.get(id(program))
    if got is None or got[0] is not program:
        if len(_TYPEDEFS) > 256:
            _TYPEDEFS.clear()
        got = _TYPEDEFS[id(program)] = (program, typedefs_of(program))
    return got[1]


_WIDTHS = {"char": 1, "signed char": 1, "unsigned char": 1, "short": 2, "unsigned short": 2, "_Float16": 2,
           "__fp16": 2, "__bf16": 2, "__half": 2, "__nv_bfloat16": 2, "double": 8, "long": 8, "unsigned long": 8,
           "long long": 8, "unsigned long long": 8}
"""Bytes of the types that are not 4 wide, after typedefs (`int8_t` is `signed char`)."""


def _rows_of_ptr(t: ir.CType, ev: Callable[[ir.Expr], Any]) -> tuple[int, ...]:
    """Inner dimensions of `T (*p)[A][B]` (a pointer to arrays)."""
    rows: list[int] = []
    inner = t.to if isinstance(t, ir.Ptr) else t
    while isinstance(inner, ir.Array):
        if inner.size is None:
            break
        rows.append(_concrete(ev(inner.size), inner.size))
        inner = inner.of
    return tuple(rows)


def _concrete(v: Any, where: Optional[ir.Node]) -> int:
    if isinstance(v, int):
        return v
    if isinstance(v, Term) and v.op == "const" and v.args[0].denominator == 1:  # type: ignore[union-attr]
        return int(v.args[0])  # type: ignore[arg-type]
    raise Unsupported(f"level 3 needs an integer known at these sizes here, and this one depends on the data "
                      f"({T.show(v)})", getattr(where, "loc", None))


def _c_div(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _c_mod(a: int, b: int) -> int:
    return a - _c_div(a, b) * b


def _literal(c: ir.Const) -> Any:
    text = c.text.lower()
    if c.kind == "int":
        return int(text.rstrip("ul"), 0)
    text = text.rstrip("fl")
    if c.kind in ("float", "double"):
        return T.const(Fraction(text))
    if c.kind == "char":
        return ord(c.text.strip("'"))
    raise Unsupported(f"level 3 does not model the constant {c.text}", c.loc)


class Machine:
    """One run: the memory, the variables in scope, and the journal of
    writes kept while a branch on data runs (to undo it and merge)."""

    def __init__(self, program: ir.Program, choices: Mapping[str, bool]) -> None:
        self.program = program
        self.typedefs = typedefs(program)
        self.functions = {f.name: f for f in program.functions()}
        self.choices = dict(choices)
        self.asked: dict[str, bool] = {}
        self.env: dict[str, Any] = {}
        self.kinds: dict[str, str] = {}
        self.journal: Optional[list[tuple[Any, Any, Any]]] = None
        self.allocs = 0
        self.steps = 0
        self.born: dict[int, tuple[Alloc, Any]] = {}
        """Memory allocated while a branch on data runs, by its cells, with
        that branch's journal: it dies with the branch, so its cells are
        neither merged nor read back before a write."""

    # ------------------------------------------------------------ state

    def _set(self, container: dict[Any, Any], key: Any, value: Any) -> None:
        if self.journal is not None:
            self.journal.append((container, key, container.get(key, _MISSING)))
        container[key] = value

    def _bind(self, name: str, value: Any, kind: str, saved: list[tuple[str, Any, Any]]) -> None:
        saved.append((name, self.env.get(name, _MISSING), self.kinds.get(name, _MISSING)))
        self._set(self.env, name, value)
        self._set(self.kinds, name, kind)

    def _unbind(self, saved: list[tuple[str, Any, Any]]) -> None:
        for name, value, kind in reversed(saved):
            for container, old in ((self.env, value), (self.kinds, kind)):
                if old is _MISSING:
                    if self.journal is not None:
                        self.journal.append((container, name, container.get(name, _MISSING)))
                    container.pop(name, None)
                else:
                    self._set(container, name, old)

    def load(self, alloc: Alloc, offset: int, where: ir.Node) -> Any:
        v = alloc.cells.get(offset, _MISSING)
        if v is _MISSING:
            if not 0 <= offset < alloc.extent:
                raise Unsupported(f"read of {alloc.name}[{offset}], outside its {alloc.extent} cells", where.loc)
            v = alloc.cells[offset] = alloc.unknown(offset)
        return v

    def store(self, alloc: Alloc, offset: int, value: Any, where: ir.Node) -> None:
        if not 0 <= offset < alloc.extent:
            raise Unsupported(f"write of {alloc.name}[{offset}], outside its {alloc.extent} cells", where.loc)
        if offset not in alloc.cells and (self.journal is None or self._outer(alloc.cells)):
            self.load(alloc, offset, where)  # a branch's merge needs the value the cell had before
        value = convert(value, alloc.kind)
        if alloc.kind == "i" and alloc.width < 4 and isinstance(value, Term) and value.op != "narrow":
            value = Term.make("narrow", value, alloc.width)
        self._set(alloc.cells, offset, value)

    def new_alloc(self, name: str, extent: int, kind: str, width: int = 4) -> Alloc:
        self.allocs += 1
        alloc = Alloc(f"{name}#{self.allocs}", extent, kind, "undef", width)
        if self.journal is not None:
            self.born[id(alloc.cells)] = (alloc, self.journal)
        return alloc

    def _outer(self, container: dict[Any, Any]) -> bool:
        """Whether a container lives on after the branch now running."""
        got = self.born.get(id(container))
        return got is None or got[1] is not self.journal

    # ------------------------------------------------------------ statements

    def block(self, stmts: Sequence[ir.Stmt]) -> None:
        code = _BLOCKS.get(id(stmts))
        if code is None:
            code = _BLOCKS[id(stmts)] = (stmts, [_stmt_code(s) for s in stmts])
        saved: list[tuple[str, Any, Any]] = []
        try:
            for run in code[1]:
                run(self, saved)
        finally:
            if saved:
                self._unbind(saved)

    def stmt(self, s: ir.Stmt, saved: list[tuple[str, Any, Any]]) -> None:
        self.steps += 1
        handler = _STMTS.get(type(s))
        if handler is None:
            raise Unsupported(f"level 3 does not model this statement ({type(s).__name__})", getattr(s, "loc", None))
        handler(self, s, saved)

    def _decl(self, s: ir.DeclStmt, saved: list[tuple[str, Any, Any]]) -> None:
        d = s.decl
        if d.name is None or "extern" in d.storage:
            return
        t = resolve(d.type, self.typedefs)
        if isinstance(t, ir.Array):
            dims: list[int] = []
            inner: ir.CType = t
            while isinstance(inner, ir.Array):
                if inner.size is None:
                    raise Unsupported(f"array '{d.name}' without a size", d.loc)
                dims.append(_concrete(self.expr(inner.size), inner.size))
                inner = inner.of
            alloc = self.new_alloc(d.name, math.prod(dims), *_elem_kind(inner, self.typedefs))
            if d.init is not None:
                self._init_list(alloc, d.init)
            self._bind(d.name, Ptr(alloc, 0, tuple(dims[1:])), "p", saved)
            return
        kind = _scalar_kind(t, self.typedefs)
        value: Any = _MISSING
        if d.init is not None:
            value = self.expr(d.init)
            if kind == "p" and isinstance(value, Ptr) and isinstance(t, ir.Ptr):
                if value.alloc.name.startswith("malloc#") and not value.alloc.cells:
                    value.alloc.kind, value.alloc.width = _elem_kind(t, self.typedefs)
                rows = _rows_of_ptr(t, self.expr)
                if rows:
                    value = Ptr(value.alloc, value.offset, rows)
            value = convert(value, kind)
        elif kind in ("f", "i"):
            value = T.leaf("undef", f"{d.name}#{self.allocs}", 0)
        self._bind(d.name, value, kind, saved)

    def _init_list(self, alloc: Alloc, init: ir.Expr) -> None:
        if not isinstance(init, ir.InitList):
            raise Unsupported("an array initialised by something other than a brace list", init.loc)
        flat: list[ir.Expr] = []
        stack = list(reversed(init.items))
        while stack:
            e = stack.pop()
            if isinstance(e, ir.InitList):
                stack.extend(reversed(e.items))
            else:
                flat.append(e)
        for i in range(alloc.extent):
            self.store(alloc, i, self.expr(flat[i]) if i < len(flat) else 0, init)

    def _expr_stmt(self, s: ir.ExprStmt, saved: list[tuple[str, Any, Any]]) -> None:
        self.expr(s.expr)

    def _block(self, s: ir.Block, saved: list[tuple[str, Any, Any]]) -> None:
        self.block(s.stmts)

    def _for(self, s: ir.For, saved: list[tuple[str, Any, Any]]) -> None:
        start = _concrete(self.expr(s.start), s.start)
        inner: list[tuple[str, Any, Any]] = []
        self._bind(s.index, start, "i", inner)
        try:
            while True:
                i = self.env[s.index]
                stop = _concrete(self.expr(s.stop), s.stop)
                if i >= stop:
                    break
                if not self._iteration(s.body):
                    break
                self._set(self.env, s.index, self.env[s.index] + _concrete(self.expr(s.step), s.step))
        finally:
            self._unbind(inner)

    def _generic_for(self, s: ir.GenericFor, saved: list[tuple[str, Any, Any]]) -> None:
        inner: list[tuple[str, Any, Any]] = []
        try:
            if isinstance(s.init, tuple):
                for d in s.init:
                    self._decl(ir.DeclStmt(d), inner)
            elif s.init is not None:
                self.expr(s.init)
            while s.cond is None or self._decided(s.cond):
                if not self._iteration(s.body):
                    break
                if s.next is not None:
                    self.expr(s.next)
        finally:
            self._unbind(inner)

    def _while(self, s: ir.While, saved: list[tuple[str, Any, Any]]) -> None:
        while self._decided(s.cond):
            if not self._iteration(s.body):
                break

    def _iteration(self, body: ir.Block) -> bool:
        """Runs one iteration of a loop body; False when it breaks out."""
        try:
            self.block(body.stmts)
        except _Continue:
            pass
        except _Break:
            return False
        return True

    def _decided(self, cond: ir.Expr) -> bool:
        return _concrete(self.expr(cond), cond) != 0

    def _if(self, s: ir.If, saved: list[tuple[str, Any, Any]]) -> None:
        c = self.expr(s.cond)
        if isinstance(c, Term) and c.op == "const":
            c = int(c.args[0] != 0)
        if not isinstance(c, Term):
            if c:
                self.block(s.then.stmts)
            elif s.other is not None:
                self.block(s.other.stmts)
            return
        self._merge(c, lambda: self.block(s.then.stmts),
                    lambda: self.block(s.other.stmts) if s.other is not None else None, s)

    def _merge(self, cond: Term, then: Callable[[], Any], other: Callable[[], Any], where: ir.Node) -> None:
        """Runs both branches of a condition on data, then keeps in every
        place either wrote `ite(cond, then value, else value)`."""
        outer = self.journal
        finals: list[dict[tuple[int, Any], tuple[Any, Any, Any]]] = []
        journals: list[list[tuple[Any, Any, Any]]] = []
        for branch in (then, other):
            self.journal = []
            journals.append(self.journal)
            try:
                branch()
            except (_Break, _Continue, _Return):
                raise Unsupported("break, continue or return under a condition on the data", where.loc)
            journal = self.journal
            finals.append({(id(c), k): (c, k, c.get(k, _MISSING)) for c, k, _ in journal})
            for c, k, old in reversed(journal):
                if old is _MISSING:
                    c.pop(k, None)
                else:
                    c[k] = old
        self.journal = outer
        for key in dict.fromkeys([*finals[0], *finals[1]]):
            c, k, _ = finals[0].get(key) or finals[1][key]
            born = self.born.get(id(c))
            if born is not None and any(born[1] is j for j in journals):
                continue
            now = c.get(k, _MISSING)
            a = finals[0][key][2] if key in finals[0] else now
            b = finals[1][key][2] if key in finals[1] else now
            if a is _MISSING or b is _MISSING:
                continue
            self._set(c, k, _select(cond, a, b, where))

    def _return(self, s: ir.Return, saved: list[tuple[str, Any, Any]]) -> None:
        raise _Return(self.expr(s.value) if s.value is not None else None)

    def _jump(self, s: ir.Jump, saved: list[tuple[str, Any, Any]]) -> None:
        if s.kind == "break":
            raise _Break()
        if s.kind == "continue":
            raise _Continue()
        raise Unsupported("goto", s.loc)

    def _skip(self, s: ir.Stmt, saved: list[tuple[str, Any, Any]]) -> None:
        return None

    # ------------------------------------------------------------ expressions

    def expr(self, e: ir.Expr) -> Any:
        code = _CODE.get(id(e))
        if code is None:
            code = _CODE[id(e)] = (e, _compile(e))
        return code[1](self)

    def _expr(self, e: ir.Expr) -> Any:
        """The interpreter's way, by the node's handler."""
        handler = _EXPRS.get(type(e))
        if handler is None:
            raise Unsupported(f"level 3 does not model this expression ({type(e).__name__})", getattr(e, "loc", None))
        return handler(self, e)

    def _var(self, e: ir.Var) -> Any:
        v = self.env.get(e.name, _MISSING)
        if v is _MISSING:
            if e.name == "INFINITY" or e.name == "HUGE_VALF":
                return T.POS_INF
            if e.name == "NULL":
                return 0
            raise Unsupported(f"'{e.name}' has no value in the model", e.loc)
        return v

    def _place(self, e: ir.Expr) -> tuple[str, Any, Any]:
        """Where an lvalue lives: ("var", name, None) or ("mem", alloc, offset)."""
        if isinstance(e, ir.Var):
            if e.name not in self.env:
                raise Unsupported(f"'{e.name}' has no value in the model", e.loc)
            return ("var", e.name, None)
        if isinstance(e, ir.Index):
            p = self._index_ptr(e)
            return ("mem", p.alloc, p.offset)
        if isinstance(e, ir.Unop) and e.op == "*":
            p = self.expr(e.arg)
            if not isinstance(p, Ptr):
                raise Unsupported("dereference of something that is not a pointer", e.loc)
            return ("mem", p.alloc, p.offset)
        raise Unsupported(f"level 3 does not model an assignment to this ({type(e).__name__})", e.loc)

    def _index_ptr(self, e: ir.Index) -> Ptr:
        base = self.expr(e.base)
        i = self.expr(e.index)
        if not isinstance(base, Ptr):
            raise Unsupported("indexing something that is not an array", e.loc)
        if not isinstance(i, int):
            i = _concrete(i, e.index)
        step = math.prod(base.rows) if base.rows else 1
        return Ptr(base.alloc, base.offset + i * step, base.rows[1:])

    def _read(self, place: tuple[str, Any, Any], where: ir.Node) -> Any:
        kind, a, b = place
        return self.env[a] if kind == "var" else self.load(a, b, where)

    def _write(self, place: tuple[str, Any, Any], value: Any, where: ir.Node) -> None:
        kind, a, b = place
        if kind == "var":
            self._set(self.env, a, convert(value, self.kinds.get(a, "i")))
        else:
            self.store(a, b, value, where)

    def _index(self, e: ir.Index) -> Any:
        return self._index_of(self.expr(e.base), self.expr(e.index), e)

    def _index_of(self, base: Any, i: Any, e: ir.Index) -> Any:
        if not isinstance(base, Ptr):
            raise Unsupported("indexing something that is not an array", e.loc)
        if isinstance(i, Term) and i.op != "const":
            return self._data_index(base, i, e)
        if not isinstance(i, int):
            i = _concrete(i, e.index)
        if base.rows:
            return Ptr(base.alloc, base.offset + i * math.prod(base.rows), base.rows[1:])
        return self.load(base.alloc, base.offset + i, e)

    def _data_store(self, e: ir.Assign, i: Term) -> Any:
        """A write at an index computed from the data: every cell the index
        may name gets `ite(the index names it, new value, old value)`."""
        assert isinstance(e.lhs, ir.Index)
        base = self.expr(e.lhs.base)
        if not isinstance(base, Ptr) or base.rows:
            raise Unsupported("a write at an index computed from the data, into a matrix", e.loc)
        value = self.expr(e.rhs)
        for cond, k in _leaves(i, T.ONE, e):
            old = self.load(base.alloc, base.offset + k, e)
            new = value if e.op == "=" else _arith(e.op[:-1], old, value, e)
            self.store(base.alloc, base.offset + k, T.ite(cond, new, old), e)
        return value

    def _data_index(self, base: Ptr, i: Term, e: ir.Index) -> Any:
        """A read at an index computed from the data: an `ite` over the
        cells the index may name."""
        if base.rows:
            raise Unsupported("a row of a matrix chosen by the data", e.loc)
        leaves = _leaves(i, T.ONE, e)
        value = self.load(base.alloc, base.offset + leaves[-1][1], e)
        for cond, k in reversed(leaves[:-1]):
            value = T.ite(cond, self.load(base.alloc, base.offset + k, e), value)
        return value

    def _assign(self, e: ir.Assign) -> Any:
        if isinstance(e.lhs, ir.Index):
            i = self.expr(e.lhs.index)
            if isinstance(i, Term) and i.op != "const":
                return self._data_store(e, i)
        place = self._place(e.lhs)
        value = self.expr(e.rhs)
        if e.op != "=":
            value = _arith(e.op[:-1], self._read(place, e), value, e)
        self._write(place, value, e)
        return self._read(place, e)

    def _unop(self, e: ir.Unop) -> Any:
        op = e.op
        if op in ("++", "--", "p++", "p--"):
            place = self._place(e.arg)
            old = self._read(place, e)
            new = _arith("+" if "+" in op else "-", old, 1, e)
            self._write(place, new, e)
            return new if op in ("++", "--") else old
        if op == "&":
            if isinstance(e.arg, ir.Index):
                return self._index_ptr(e.arg)
            raise Unsupported("the address of something other than an array element", e.loc)
        if op == "*":
            p = self.expr(e.arg)
            if not isinstance(p, Ptr):
                raise Unsupported("dereference of something that is not a pointer", e.loc)
            return self.load(p.alloc, p.offset, e)
        v = self.expr(e.arg)
        if op == "-":
            if isinstance(v, int):
                return -v
            if v is T.POS_INF:
                return T.NEG_INF
            return T.unary("neg", v)
        if op == "+":
            return v
        if op == "!":
            return int(not v) if isinstance(v, int) else T.unary("not", v)
        if op == "sizeof":
            raise Unsupported("sizeof of an expression", e.loc)
        raise Unsupported(f"the operator {op}", e.loc)

    def _binop(self, e: ir.Binop) -> Any:
        op = e.op
        if op in ("&&", "||"):
            a = self.expr(e.left)
            if isinstance(a, int):
                if (op == "&&") != bool(a):
                    return int(bool(a))
                b = self.expr(e.right)
                return int(bool(b)) if isinstance(b, int) else T.binary("ne", b, 0)
            b = self.expr(e.right)
            return T.binary("and" if op == "&&" else "or", a, b)
        return _arith(op, self.expr(e.left), self.expr(e.right), e)

    def _ternary(self, e: ir.Ternary) -> Any:
        c = self.expr(e.cond)
        if isinstance(c, Term) and c.op == "const":
            c = int(c.args[0] != 0)
        if isinstance(c, int):
            return self.expr(e.then if c else e.other)
        return _select(c, self.expr(e.then), self.expr(e.other), e)

    def _cast(self, e: ir.Cast) -> Any:
        v = self.expr(e.arg)
        kind = _scalar_kind(e.type, self.typedefs)
        if isinstance(v, Ptr) and kind == "i":
            return v.alloc.address + v.offset * v.alloc.width
        if kind == "p":
            if isinstance(v, Ptr):
                return Ptr(v.alloc, v.offset, _rows_of_ptr(e.type, self.expr)) if isinstance(e.type, ir.Ptr) else v
            raise Unsupported("a cast to a pointer of something that is not one", e.loc)
        return convert(v, kind)

    def _sizeof(self, e: ir.SizeofType) -> Any:
        return 1  # memory is counted in elements of the allocation's type

    def _call(self, e: ir.Call) -> Any:
        if not isinstance(e.func, ir.Var):
            raise Unsupported("a call through a pointer", e.loc)
        name = e.func.name
        if name in self.functions and name not in _OTP_HELPERS:
            return self.call(name, [self.expr(a) for a in e.args], e)
        if name in ("malloc", "calloc", "aligned_alloc"):
            return self._malloc(name, e)
        if name == "free":
            return None
        if name == "__builtin_cpu_supports":
            key = f"cpu_supports({', '.join(a.text if isinstance(a, ir.Const) else '?' for a in e.args)})"
            value = self.choices.get(key, True)
            self.asked[key] = value
            return int(value)
        if name.startswith("_mm") or name in _OTP_HELPERS:
            from .symvector import intrinsic

            return intrinsic(self, name, [self.expr(a) for a in e.args], e)
        fn = _MATH.get(name)
        if fn is None:
            raise Unsupported(f"level 3 does not model the function '{name}'", e.loc)
        return fn(*[self.expr(a) for a in e.args])

    def _malloc(self, name: str, e: ir.Call) -> Ptr:
        """`malloc(n * sizeof(T))`: n cells (sizeof counts as 1)."""
        sizes = [_concrete(self.expr(a), a) for a in e.args]
        count = sizes[0] * sizes[1] if name == "calloc" else sizes[-1]
        alloc = self.new_alloc("malloc", count, "f")
        if name == "calloc":
            for i in range(count):
                alloc.cells[i] = 0
        return Ptr(alloc, 0)

    def call(self, name: str, args: list[Any], where: ir.Node) -> Any:
        f = self.functions[name]
        if len(args) != len(f.params):
            raise Unsupported(f"'{name}' called with {len(args)} arguments", where.loc)
        saved: list[tuple[str, Any, Any]] = []
        outer = (self.env, self.kinds)
        self.env, self.kinds = {}, {}
        try:
            for p, a in zip(f.params, args):
                assert p.name is not None
                kind = _scalar_kind(p.type, self.typedefs)
                if kind == "p" and isinstance(a, Ptr):
                    rows = _rows_of_ptr(p.type, self.expr)
                    a = Ptr(a.alloc, a.offset, rows) if rows else Ptr(a.alloc, a.offset)
                self._bind(p.name, convert(a, kind), kind, saved)
            try:
                self.body(f)
            except _Return as r:
                return r.value
            return None
        finally:
            self.env, self.kinds = outer

    def body(self, f: ir.FuncDef) -> None:
        """Runs a called function's body (`locality` follows only part of it)."""
        self.block(f.body.stmts)

    def _comma(self, e: ir.Comma) -> Any:
        out = None
        for x in e.exprs:
            out = self.expr(x)
        return out

    def _const(self, e: ir.Const) -> Any:
        return _literal(e)


_StmtCode = Callable[[Machine, list[tuple[str, Any, Any]]], None]
_STMT_CODE: dict[int, tuple[ir.Stmt, _StmtCode]] = {}
"""Statements compiled to closures (`_compile_stmt`), by node (kept)."""
_BLOCKS: dict[int, tuple[Sequence[ir.Stmt], list[_StmtCode]]] = {}
"""A block's statements' closures, by its statement tuple (kept)."""


def _stmt_code(s: ir.Stmt) -> _StmtCode:
    code = _STMT_CODE.get(id(s))
    if code is None:
        code = _STMT_CODE[id(s)] = (s, _compile_stmt(s))
    return code[1]


def _compile_stmt(s: ir.Stmt) -> _StmtCode:
    """`s` as a closure over a machine and the bindings of its block: an
    expression statement and a counted loop go straight (the loop's bounds
    and body compiled once), anything else through `Machine.stmt`."""
    if type(s) is ir.ExprStmt:
        expr = _code(s.expr)

        def expr_stmt(m: Machine, saved: list[tuple[str, Any, Any]]) -> None:
            m.steps += 1
            expr(m)
        return expr_stmt
    if type(s) is ir.For:
        return _for_code(s)
    return lambda m, saved: m.stmt(s, saved)


def _for_code(s: ir.For) -> _StmtCode:
    start, stop, step, index, body = _code(s.start), _code(s.stop), _code(s.step), s.index, s.body.stmts

    def for_(m: Machine, saved: list[tuple[str, Any, Any]]) -> None:
        m.steps += 1
        first = start(m)
        inner: list[tuple[str, Any, Any]] = []
        m._bind(index, first if first.__class__ is int else _concrete(first, s.start), "i", inner)
        env = m.env
        try:
            while True:
                n = stop(m)
                if env[index] >= (n if n.__class__ is int else _concrete(n, s.stop)):
                    break
                try:
                    m.block(body)
                except _Continue:
                    pass
                except _Break:
                    break
                d = step(m)
                m._set(env, index, env[index] + (d if d.__class__ is int else _concrete(d, s.step)))
        finally:
            m._unbind(inner)
    return for_


_CODE: dict[int, tuple[ir.Expr, Callable[[Machine], Any]]] = {}
"""Expressions compiled to closures (`_compile`), by node (the node is kept
so its id is not reused)."""

_INT_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
    "<": lambda a, b: int(a < b), "<=": lambda a, b: int(a <= b), ">": lambda a, b: int(a > b),
    ">=": lambda a, b: int(a >= b), "==": lambda a, b: int(a == b), "!=": lambda a, b: int(a != b),
    "/": lambda a, b: _c_div(a, b), "%": lambda a, b: _c_mod(a, b),
}


def _code(e: ir.Expr) -> Callable[[Machine], Any]:
    code = _CODE.get(id(e))
    if code is None:
        code = _CODE[id(e)] = (e, _compile(e))
    return code[1]


def _compile(e: ir.Expr) -> Callable[[Machine], Any]:
    """`e` as a closure over a machine. What runs most (integer arithmetic
    on integers, a variable, a cell at a known index, an assignment to one)
    goes straight; anything else goes through the handler (`Machine._expr`),
    which is also where the straight path falls back to."""
    t = type(e)
    if t is ir.Var:
        name = e.name

        def var(m: Machine) -> Any:
            v = m.env.get(name, _MISSING)
            return m._var(e) if v is _MISSING else v
        return var
    if t is ir.Const and e.kind == "int":
        value = _literal(e)
        return lambda m: value
    if t is ir.Binop and e.op in _INT_OPS:
        return _integers_code(e, _binop_code(e))
    if t is ir.Index:
        return _index_code(e)
    if t is ir.Assign and _pure(e.lhs):
        return _assign_code(e)
    return lambda m: m._expr(e)


def _integers_code(e: ir.Binop, otherwise: Callable[[Machine], Any]) -> Callable[[Machine], Any]:
    """An expression of integer constants, variables and operators as one
    Python expression, tried first: what is not an integer (a term has no
    arithmetic, a pointer none with an integer, a missing name) makes it
    fail or give a non-integer, and the node goes `otherwise` from then on."""
    src = _py(e)
    if src is None:
        return otherwise
    fast: list[Optional[Callable[[dict[str, Any]], Any]]] = [
        eval(f"lambda env: {src}", {"_div": _c_div, "_mod": _c_mod})]  # noqa: S307 (our own generated text)

    def integers(m: Machine) -> Any:
        f = fast[0]
        if f is not None:
            try:
                v = f(m.env)
                if v.__class__ is int:
                    return v
            except (TypeError, KeyError, ZeroDivisionError):
                pass
            fast[0] = None
        return otherwise(m)
    return integers


def _py(e: ir.Expr) -> Optional[str]:
    if isinstance(e, ir.Const):
        return str(int(e.text.rstrip("uUlL"), 0)) if e.kind == "int" else None
    if isinstance(e, ir.Var):
        return f"env[{e.name!r}]"
    if isinstance(e, ir.Binop) and e.op in _INT_OPS:
        a, b = _py(e.left), _py(e.right)
        if a is None or b is None:
            return None
        if e.op in ("+", "-", "*"):
            return f"({a} {e.op} {b})"
        if e.op in ("/", "%"):
            return f"{'_div' if e.op == '/' else '_mod'}({a}, {b})"
        return f"int({a} {e.op} {b})"
    if isinstance(e, ir.Unop) and e.op == "-":
        a = _py(e.arg)
        return None if a is None else f"(-{a})"
    return None


def _binop_code(e: ir.Binop) -> Callable[[Machine], Any]:
    left, right, op, fn = _code(e.left), _code(e.right), e.op, _INT_OPS[e.op]
    on_terms = _ARITH.get(op) if op != "/" else None  # what `_arith` makes of two terms

    def binop(m: Machine) -> Any:
        a = left(m)
        b = right(m)
        if a.__class__ is int and b.__class__ is int:
            return fn(a, b)
        if on_terms is not None and a.__class__ is Term and b.__class__ is Term:
            return T.binary(on_terms, a, b)
        return _arith(op, a, b, e)
    return binop


def _index_code(e: ir.Index) -> Callable[[Machine], Any]:
    base_of, index_of = _code(e.base), _code(e.index)

    def index(m: Machine) -> Any:
        base = base_of(m)
        i = index_of(m)
        if i.__class__ is int and base.__class__ is Ptr and not base.rows:
            off = base.offset + i
            v = base.alloc.cells.get(off, _MISSING)
            return m.load(base.alloc, off, e) if v is _MISSING else v
        return m._index_of(base, i, e)
    return index


def _assign_code(e: ir.Assign) -> Callable[[Machine], Any]:
    rhs, op = _code(e.rhs), (e.op[:-1] if e.op != "=" else None)
    if isinstance(e.lhs, ir.Var):
        name = e.lhs.name

        def to_var(m: Machine) -> Any:
            env = m.env
            if name not in env:
                return m._expr(e)
            value = rhs(m)
            if op is not None:
                value = _arith(op, env[name], value, e)
            value = convert(value, m.kinds.get(name, "i"))
            m._set(env, name, value)
            return value
        return to_var
    if not isinstance(e.lhs, ir.Index):
        return lambda m: m._expr(e)
    base_of, index_of = _code(e.lhs.base), _code(e.lhs.index)

    def to_cell(m: Machine) -> Any:
        base = base_of(m)
        i = index_of(m)
        if i.__class__ is not int or base.__class__ is not Ptr or base.rows:
            return m._expr(e)
        value = rhs(m)
        alloc, off = base.alloc, base.offset + i
        if op is not None:
            value = _arith(op, m.load(alloc, off, e), value, e)
        m.store(alloc, off, value, e)
        return alloc.cells[off]
    return to_cell


def _pure(e: ir.Expr) -> bool:
    """No side effect: evaluating it twice (the fallback does) is harmless."""
    from .tree import walk

    return not any(isinstance(n, (ir.Assign, ir.Call)) or (isinstance(n, ir.Unop) and n.op in ("++", "--", "p++", "p--"))
                   for _, n in walk(e))


def convert(v: Any, kind: str) -> Any:
    """A value stored into (or cast to) a place of `kind`: an integer into a
    float becomes a constant; a float term into an integer is truncated."""
    if kind == "f":
        if isinstance(v, int):
            return T.const(v)
        if isinstance(v, Term) and v.integer:
            return T.unary("tofloat", v)
        return v
    if kind == "i" and isinstance(v, Term):
        if v.op == "const":
            return int(math.trunc(v.args[0]))  # type: ignore[arg-type]
        if not v.integer:
            return T.unary("trunc", v)
    return v


def _leaves(t: Any, cond: Term, where: ir.Node) -> list[tuple[Term, int]]:
    """The integers a choice (`ite` nest over integer constants, possibly
    offset or scaled by a constant) may be, each with the condition under
    which it is."""
    if isinstance(t, int):
        return [(cond, t)]
    if isinstance(t, Term) and t.op == "const":
        return [(cond, _concrete(t, where))]
    if isinstance(t, Term) and t.op == "trunc":
        return _leaves(t.args[0], cond, where)
    if isinstance(t, Term) and t.op == "ite":
        c, a, b = t.args
        return _leaves(a, T.binary("and", cond, c), where) + \
            _leaves(b, T.binary("and", cond, T.unary("not", c)), where)  # type: ignore[arg-type]
    if isinstance(t, Term) and t.op in ("add", "mul", "sub") and any(
            isinstance(x, Term) and x.op == "const" for x in t.args):
        k = next(x for x in t.args if isinstance(x, Term) and x.op == "const")
        other = t.args[1] if t.args[0] is k else t.args[0]
        return [(c, _concrete(T.binary(t.op, *((v, k) if other is t.args[0] else (k, v))), where))
                for c, v in _leaves(other, cond, where)]
    raise Unsupported(f"an index computed from the data that is not a choice between known values "
                      f"({T.show(t)})", getattr(where, "loc", None))


def _select(cond: Term, a: Any, b: Any, where: ir.Node) -> Any:
    if isinstance(a, Vec) and isinstance(b, Vec):
        return Vec(T.ite(cond, x, y) for x, y in zip(a, b))
    if isinstance(a, Ptr) or isinstance(b, Ptr):
        if a == b:
            return a
        raise Unsupported("a pointer chosen by the data", where.loc)
    return T.ite(cond, a, b)


_ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div", "<": "lt", "<=": "le", "==": "eq", "!=": "ne"}
_INT_ONLY = {"%": lambda a, b: _c_mod(a, b), "<<": lambda a, b: a << b, ">>": lambda a, b: a >> b,
             "&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b}


def _arith(op: str, a: Any, b: Any, where: ir.Node) -> Any:
    """A binary operator: C integer arithmetic on two known integers, pointer
    arithmetic on a pointer, a term otherwise."""
    if isinstance(a, int) and isinstance(b, int):
        if op == "/":
            return _c_div(a, b)
        if op in _INT_ONLY:
            return _INT_ONLY[op](a, b)
        if op == ">":
            return int(a > b)
        if op == ">=":
            return int(a >= b)
        return {"+": a + b, "-": a - b, "*": a * b, "<": int(a < b), "<=": int(a <= b), "==": int(a == b),
                "!=": int(a != b)}[op]
    if isinstance(a, Ptr):
        if isinstance(b, Ptr) and op == "-" and a.alloc is b.alloc:
            return a.offset - b.offset
        if op in ("+", "-"):
            n = _concrete(b, where)
            return Ptr(a.alloc, a.offset + (n if op == "+" else -n) * (math.prod(a.rows) if a.rows else 1), a.rows)
        if op in ("==", "!="):
            return int((a == b) == (op == "=="))
        if isinstance(b, Ptr) and a.alloc is b.alloc and op in ("<", "<=", ">", ">="):
            return _arith(op, a.offset, b.offset, where)
    if isinstance(b, Ptr) and op == "+":
        return _arith("+", b, a, where)
    if op == ">":
        return T.binary("lt", b, a)
    if op == ">=":
        return T.binary("le", b, a)
    if op == "/" and isinstance(a, Term) and a.integer and (isinstance(b, int) or T.lift(b).integer):
        return T.binary("idiv", a, b)
    if op in _ARITH:
        return T.binary(_ARITH[op], a, b)
    if op == "%":
        return T.binary("imod", a, b)
    raise Unsupported(f"the operator {op} on data", where.loc)


def _sqrt(x: Any) -> Any:
    t = T.lift(x)
    if t.op == "const" and t.args[0] >= 0:  # type: ignore[operator]
        v: Fraction = t.args[0]  # type: ignore[assignment]
        n, d = math.isqrt(v.numerator), math.isqrt(v.denominator)
        if n * n == v.numerator and d * d == v.denominator:
            return T.const(Fraction(n, d))
    return T.unary("sqrt", t)


def _opaque(name: str) -> Callable[..., Any]:
    return lambda *args: T.Term.make("call", name, *(T.lift(a) for a in args))


_OTP_HELPERS = frozenset({"otp_expf_avx512", "otp_to_bf16", *TILE_PRODUCTS})
"""otp's own helpers (include/otp.h) whose values `symvector` gives: the
program may define them too (the CPU build's versions), but level 3 runs
what they stand for."""

_MATH: dict[str, Callable[..., Any]] = {
    "expf": lambda x: T.unary("exp", x), "exp": lambda x: T.unary("exp", x),
    "otp_fast_expf": lambda x: T.unary("exp", x),  # gpu.fast_math: a lossy step, its approximations taken as exact
    "otp_fast_div": lambda a, b: T.binary("div", a, b),
    "sqrtf": _sqrt, "sqrt": _sqrt,
    "fmaxf": lambda a, b: T.binary("max", a, b), "fminf": lambda a, b: T.binary("min", a, b),
    "roundf": lambda x: T.unary("round", x),
    **{n: _opaque(n.rstrip("f")) for n in ("powf", "sinf", "cosf", "logf", "tanhf", "fabsf")},
}

_STMTS: dict[type, Callable[[Machine, Any, list[tuple[str, Any, Any]]], None]] = {
    ir.DeclStmt: Machine._decl, ir.ExprStmt: Machine._expr_stmt, ir.Block: Machine._block,
    ir.For: Machine._for, ir.GenericFor: Machine._generic_for, ir.While: Machine._while, ir.If: Machine._if,
    ir.Return: Machine._return, ir.Jump: Machine._jump, ir.Pragma: Machine._skip,
}
_EXPRS: dict[type, Callable[[Machine, Any], Any]] = {
    ir.Const: Machine._const, ir.Var: Machine._var, ir.Index: Machine._index, ir.Assign: Machine._assign,
    ir.Unop: Machine._unop, ir.Binop: Machine._binop, ir.Ternary: Machine._ternary, ir.Cast: Machine._cast,
    ir.SizeofType: Machine._sizeof, ir.Call: Machine._call, ir.Comma: Machine._comma,
}


# ---------------------------------------------------------------- entry point

@dataclass(frozen=True)
class Outcome:
    """The end state of one run: every output cell's term, by (parameter,
    offset), and the choices (`cpu_supports(...)`) the run depended on."""

    cells: dict[tuple[str, int], Any]
    choices: dict[str, bool]
    steps: int


def run(program: ir.Program, function: str, contract: Contract, sizes: Mapping[str, int],
        choices: Mapping[str, bool]) -> Outcome:
    """Runs `function` on symbolic inputs shaped by its contract at `sizes`."""
    m = Machine(program, choices)
    outputs = start(m, function, contract, sizes)
    cells = {(name, i): a.cells.get(i, T.leaf("in", name, i)) for name, a in outputs for i in range(a.extent)}
    return Outcome(cells, dict(m.asked), m.steps)


def start(m: Machine, function: str, contract: Contract, sizes: Mapping[str, int]) -> list[tuple[str, Alloc]]:
    """Calls `function` in `m` on unknown inputs; its output arrays."""
    from .execcheck import param_extent

    f = m.program.function(function)
    if f is None:
        raise Unsupported(f"no function '{function}' in the program")
    args: list[Any] = []
    outputs: list[tuple[str, Alloc]] = []
    written = {r.base for mode, r in contract.resources() if mode in ("writes", "modifies")}
    for p in f.params:
        assert p.name is not None
        if _scalar_kind(p.type, m.typedefs) == "p":
            extent, _ = param_extent(p.name, contract, sizes)
            kind, width = _elem_kind(p.type, m.typedefs)
            alloc = Alloc(p.name, extent, kind, "in", width)
            args.append(Ptr(alloc, 0))
            if p.name in written:
                outputs.append((p.name, alloc))
        elif p.name in sizes:
            args.append(sizes[p.name])
        else:
            raise Unsupported(f"no size given for the parameter '{p.name}' of '{function}'", p.loc)
    m.call(function, args, f)
    return outputs
