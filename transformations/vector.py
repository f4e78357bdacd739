"""Explicit x86 SIMD intrinsics (AVX2, AVX-512) for the lane loops of a
register-blocked kernel.

Intrinsics only compile where their instruction set is enabled, and only run
on a CPU that has it. So `vectorize` never edits a function in place: it adds
a copy compiled for the instruction set (`#pragma GCC target`), and the
original function, still plain C, calls the copy when the CPU it runs on has
the set (`__builtin_cpu_supports`). The file compiles with any x86-64 gcc, and
runs everywhere: fast where it can.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path as FsPath
from typing import Optional

import z3

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import free_vars, fresh_name, has_side_effects, subst, writes_of
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text
from optitrust_py.session import Rewrite, primitive
from optitrust_py.smt import int_term, proves
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, get, replace, walk
from optitrust_py.typeof import env_at, type_of, typedefs_of, unqualified
from transformations.loop import _trip_count

FLOAT = ir.Base(("float",))
INCLUDE = "#include <immintrin.h>"
STDINT = "#include <stdint.h>"  # uintptr_t, to align streaming stores


@dataclasses.dataclass(frozen=True)
class Isa:
    name: str
    width: int          # float lanes per vector
    vtype: str          # the C vector type
    prefix: str         # of the intrinsics' names
    gcc_target: str     # for `#pragma GCC target`
    cpu_feature: str    # for `__builtin_cpu_supports`

    def op(self, name: str, *args: ir.Expr) -> ir.Call:
        return ir.Call(ir.Var(f"{self.prefix}_{name}_ps"), args)


ISAS = {
    "avx512": Isa("avx512", 16, "__m512", "_mm512", "avx512f", "avx512f"),
    "avx2": Isa("avx2", 8, "__m256", "_mm256", "avx2", "avx2"),
}
_ARITH = {"+": "add", "-": "sub", "*": "mul", "/": "div"}

# expf on 16 lanes: exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2,
# ln 2 split in two for an exact-enough r, exp(r) by its Taylor polynomial of
# degree 7 (truncation below 6e-9), 2^n applied by vscalefps, which also
# gives inf, 0 and subnormals at the ends. The clamp keeps -inf from making
# a NaN (and passes NaN through: min/max return their second operand on NaN).
EXP_HELPERS = {"avx512": """
static __m512 otp_expf_avx512(__m512 x) {
  __m512 t = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(1.44269504f)), 8);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), t);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.98412698e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.38888889e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.33333333e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.16666667e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.66666667e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
"""}
EXP_TOLERANCE = 1e-6  # declared relative error of the vector expf, a few ulp
REDUCTION_COPIES = 4  # independent vector accumulators of a reduction loop


@lru_cache(maxsize=None)
def _exp_helper(isa: str) -> ir.FuncDef:
    from optitrust_py.frontend import parse_text
    fn = parse_text("#include <immintrin.h>\n" + EXP_HELPERS[isa], f"<otp_expf_{isa}>").functions()[0]
    return fn


@lru_cache(maxsize=1)
def host_isa() -> Optional[str]:
    """The widest instruction set of this machine that `vectorize` knows."""
    try:
        flags = set(FsPath("/proc/cpuinfo").read_text().split())
    except OSError:
        return None
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else None


def _pick_isa(isa: Optional[str]) -> Isa:
    if isa is None:
        isa = host_isa()
        if isa is None:
            raise TransformError("vector.vectorize: this machine has neither AVX2 nor AVX-512; "
                                 "name the instruction set to generate for (isa='avx2' or isa='avx512')")
    if isa not in ISAS:
        raise TransformError(f"vector.vectorize: unknown instruction set {isa!r}; known: {', '.join(ISAS)}")
    return ISAS[isa]


def _chain(e: ir.Expr) -> tuple[Optional[str], list[ir.Expr]]:
    """`a[i][j]` -> ("a", [i, j]); (None, []) for anything else."""
    idx: list[ir.Expr] = []
    while isinstance(e, ir.Index):
        idx.insert(0, e.index)
        e = e.base
    return (e.name, idx) if isinstance(e, ir.Var) and idx else (None, [])


def _unit_stride(index: ir.Expr, lane: str) -> bool:
    """Proved with Z3: stepping the lane index by one steps `index` by one."""
    t = int_term(index)
    if t is None:
        return False
    x = z3.Int(lane)
    return proves(z3.substitute(t, (x, x + 1)) - t == 1)


def _is_float(t: ir.CType, program: ir.Program) -> bool:
    return unqualified(t) == FLOAT


class _Lanes:
    """Rewrites one lane loop: `W * chunks` iterations become `chunks`
    vector iterations, statement by statement."""

    def __init__(self, program: ir.Program, fn_path: Path, path: Path, loop: ir.For, isa: Isa,
                 vector_arrays: dict[str, int], taken: set[str], stream: bool = False,
                 reduce: bool = False) -> None:
        self.program, self.path, self.loop, self.isa = program, path, loop, isa
        self.fn_path = fn_path
        self.vector_arrays = vector_arrays
        self.taken = taken
        trip = _trip_count(loop)
        # None: a count only known at run time, the last `count % W` iterations
        # then stay scalar in a remainder loop
        self.chunks = trip // isa.width if trip is not None and trip % isa.width == 0 else None
        self.written = writes_of(loop.body)
        self.locals: set[str] = set()
        self.reductions: list[tuple[str, str, str]] = []  # (scalar, vector accumulator, "+" or "max")
        self.helpers: set[str] = set()
        self.stream = stream
        self.reduce = reduce  # combine a reduction's lanes with one reduce intrinsic
        self.streamed: list[ir.Expr] = []  # first-lane addresses of the stores made streaming
        self.env = env_at(program, path + (("body", None), ("stmts", 0)))
        self.typedefs = typedefs_of(program)
        self.copy, self.copies = 0, 1  # copies of the body per vector iteration (reductions: REDUCTION_COPIES)
        if self.chunks == 1:
            self.chunk: ir.Expr = ir.Const("0")
            self.first = loop.start
        elif self.chunks is None:
            self.chunk = self.first = ir.Var(self._fresh(loop.index + "v"))
        else:
            self.chunk = ir.Var(self._fresh(loop.index + "v"))
            first: ir.Expr = ir.Binop("*", ir.Const(str(isa.width)), self.chunk)
            self.first = first if loop.start == ir.Const("0") else ir.Binop("+", loop.start, first)

    @property
    def first_lane(self) -> ir.Expr:
        """The index of the first lane of the current copy of the body."""
        return self.first if not self.copy else ir.Binop("+", self.first, ir.Const(str(self.copy * self.isa.width)))

    def _acc(self, acc: str) -> ir.Expr:
        return ir.Var(acc) if self.copies == 1 else ir.Index(ir.Var(acc), ir.Const(str(self.copy)))

    def _fresh(self, base: str) -> str:
        name = fresh_name(self.taken, base)
        self.taken.add(name)
        return name

    def refuse(self, what: str) -> TransformError:
        return TransformError(f"vector.vectorize: cannot vectorize for {self.loop.index} "
                              f"(line {Resolver(self.program).line(self.path)}): {what}", self.loop.loc)

    # ---------------------------------------------------------------- values

    def _type(self, e: ir.Expr) -> ir.CType:
        return type_of(e, self.env, self.typedefs)

    def _invariant(self, e: ir.Expr) -> bool:
        names = free_vars(e)
        return (self.loop.index not in names and not names & (self.written | self.locals)
                and not has_side_effects(e))

    def value(self, e: ir.Expr) -> ir.Expr:
        """The vector of the values `e` takes in the lanes of one chunk."""
        if self._invariant(e):
            return self.isa.op("set1", e)
        if isinstance(e, ir.Var) and e.name in self.locals:
            return e
        if isinstance(e, ir.Index):
            return self._load(e)
        if isinstance(e, ir.Binop) and e.op in _ARITH and _is_float(self._type(e), self.program):
            return self.isa.op(_ARITH[e.op], self.value(e.left), self.value(e.right))
        if isinstance(e, ir.Unop) and e.op == "-" and _is_float(self._type(e), self.program):
            return self.isa.op("mul", self.isa.op("set1", ir.Const("-1.0f", "float")), self.value(e.arg))
        if isinstance(e, ir.Cast) and _is_float(e.type, self.program) and _is_float(self._type(e.arg), self.program):
            return self.value(e.arg)
        if isinstance(e, ir.Call) and e.name == "expf" and len(e.args) == 1 and self.isa.name in EXP_HELPERS:
            self.helpers.add(self.isa.name)
            return ir.Call(ir.Var(f"otp_expf_{self.isa.name}"), (self.value(e.args[0]),))
        if isinstance(e, ir.Var) and e.name == self.loop.index:
            raise self.refuse(f"the lane index '{e.name}' is used as a value")
        raise self.refuse(f"no vector form for '{expr_text(e)}'" +
                          (f" with {self.isa.name}" if isinstance(e, ir.Call) and e.name == "expf" else ""))

    def _vector_slot(self, e: ir.Expr) -> Optional[ir.Expr]:
        """`acc[i][j]` with `acc` a vector array: `acc[i][chunk]`."""
        name, idx = _chain(e)
        if name not in self.vector_arrays:
            return None
        if idx[-1] != _lane_offset(self.loop):
            raise self.refuse(f"'{expr_text(e)}': a vector array must be indexed last by "
                              f"'{expr_text(_lane_offset(self.loop))}'")
        assert isinstance(e, ir.Index)
        return dataclasses.replace(e, index=self.chunk)

    def _address(self, e: ir.Expr) -> ir.Expr:
        """`&x[...]` of the first lane of a contiguous access."""
        name, idx = _chain(e)
        lane = self.loop.index
        if name is None or any(lane in free_vars(i) for i in idx[:-1]) or not _is_float(self._type(e), self.program):
            raise self.refuse(f"'{expr_text(e)}' is not a contiguous float access")
        names = set().union(*(free_vars(i) for i in idx)) - {lane}
        if names & (self.written | self.locals) or not _unit_stride(idx[-1], lane):
            raise self.refuse(f"'{expr_text(e)}' does not step by one element per lane (not proved)")
        assert isinstance(e, ir.Index)
        return ir.Unop("&", subst(e, {lane: self.first_lane}))

    def _load(self, e: ir.Expr) -> ir.Expr:
        slot = self._vector_slot(e)
        return slot if slot is not None else self.isa.op("loadu", self._address(e))

    # ---------------------------------------------------------------- statements

    def stmt(self, s: ir.Stmt) -> ir.Stmt:
        if isinstance(s, ir.DeclStmt) and s.decl.init is not None and _is_float(s.decl.type, self.program) \
                and not s.decl.storage:
            value = self.value(s.decl.init)
            self.locals.add(s.decl.name or "")
            return ir.DeclStmt(dataclasses.replace(s.decl, type=ir.Base((self.isa.vtype,)), init=value))
        running_max = _running_max(s)
        if running_max is not None:
            name, value = running_max
            acc = self._accumulator(name, "max", 2, f"'if ({expr_text(value)} > {name}) {name} = ...'")
            return ir.ExprStmt(ir.Assign("=", self._acc(acc), self.isa.op("max", self.value(value), self._acc(acc))))
        if not (isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign)):
            raise self.refuse(f"'{stmt_text(s).strip()}' is not an assignment")
        a = s.expr
        op = a.op[:-1] if a.op != "=" else ""
        if op and op not in _ARITH:
            raise self.refuse(f"no vector form for the operator '{a.op}'")
        rhs = self.value(a.rhs)
        if isinstance(a.lhs, ir.Var) and a.lhs.name in self.locals:
            return ir.ExprStmt(ir.Assign("=", a.lhs, self.isa.op(_ARITH[op], a.lhs, rhs) if op else rhs))
        if isinstance(a.lhs, ir.Var):
            return self._reduction(a, rhs)
        slot = self._vector_slot(a.lhs)
        if slot is not None:
            return ir.ExprStmt(ir.Assign("=", slot, self.isa.op(_ARITH[op], slot, rhs) if op else rhs))
        addr = self._address(a.lhs)
        if op:
            rhs = self.isa.op(_ARITH[op], self.isa.op("loadu", addr), rhs)
        elif self.stream and self.chunks is None:
            base = _chain(a.lhs)[0]
            if sum(1 for _, n in walk(self.loop.body) if n == ir.Var(base)) == 1:
                if not self.copy:
                    self.streamed.append(addr)
                return ir.ExprStmt(self.isa.op("stream", addr, rhs))
        return ir.ExprStmt(self.isa.op("storeu", addr, rhs))

    def _reduction(self, a: ir.Assign, rhs: ir.Expr) -> ir.Stmt:
        assert isinstance(a.lhs, ir.Var)
        if a.op != "+=":
            raise self.refuse(f"'{expr_text(a)}': a scalar may only be summed into (`{a.lhs.name} += ...`)")
        acc = self._accumulator(a.lhs.name, "+", 1, f"'{expr_text(a)}'")
        return ir.ExprStmt(ir.Assign("=", self._acc(acc), self.isa.op("add", self._acc(acc), rhs)))

    def _accumulator(self, name: str, kind: str, uses: int, shown: str) -> str:
        """A vector of per-lane partial results for the scalar `name`, which
        the loop may use nowhere else."""
        for scalar, acc, _ in self.reductions:
            if scalar == name:
                return acc
        found = sum(1 for _, n in walk(self.loop.body) if n == ir.Var(name))
        if found != uses or not _is_float(self._type(ir.Var(name)), self.program):
            raise self.refuse(f"{shown}: the float scalar '{name}' is reduced into, so the loop may not use it "
                              f"otherwise")
        acc = self._fresh(f"{name}_v")
        self.reductions.append((name, acc, kind))
        return acc

    def _body(self) -> ir.Block:
        self.locals = set()
        return ir.Block(tuple(self.stmt(s) for s in self.loop.body.stmts))

    def rewrite(self) -> ir.Stmt:
        body = self._body()
        rest: tuple[ir.Stmt, ...] = ()
        peel: tuple[ir.Stmt, ...] = ()
        if self.chunks is None and self.reductions:
            # one accumulator per copy: the additions into them do not wait
            # for each other, and the loop streams at the speed of memory
            self.copies = REDUCTION_COPIES
            copies: list[ir.Stmt] = []
            for self.copy in range(self.copies):
                one = self._body()
                declares = any(isinstance(x, ir.DeclStmt) for x in one.stmts)
                copies.extend((one,) if declares else one.stmts)
            self.copy = 0
            body = ir.Block(tuple(copies))
        width = ir.Const(str(self.isa.width * self.copies))
        if self.chunks == 1:
            core: ir.Stmt = body
        elif self.chunks is None:
            assert isinstance(self.chunk, ir.Var)
            loop = self.loop
            first, peel = self._alignment_peel()
            core = ir.For(self.chunk.name, first,
                          ir.Binop("-", loop.stop, ir.Const(str(self.isa.width * self.copies - 1))), body, width)
            count = loop.stop if first == ir.Const("0") else ir.Binop("-", loop.stop, first)
            done: ir.Expr = ir.Binop("*", ir.Binop("/", count, width), width)
            if first != ir.Const("0"):
                done = ir.Binop("+", first, done)
            rest = (dataclasses.replace(loop, start=done, inclusive=False),)
            if self.streamed:
                rest += (ir.ExprStmt(ir.Call(ir.Var("_mm_sfence"), ())),)
        else:
            assert isinstance(self.chunk, ir.Var)
            core = ir.For(self.chunk.name, ir.Const("0"), ir.Const(str(self.chunks)), body)
        pre: list[ir.Stmt] = []
        post: list[ir.Stmt] = []
        width = ir.Const(str(self.isa.width))
        for name, acc, kind in self.reductions:
            start = self.isa.op("setzero") if kind == "+" else self.isa.op("set1", ir.Var(name))
            vtype: ir.CType = ir.Base((self.isa.vtype,))
            if self.copies > 1:
                vtype = ir.Array(vtype, ir.Const(str(self.copies)))
                start = ir.InitList((start,) * self.copies)
            pre.append(ir.DeclStmt(ir.Decl(acc, vtype, start)))
            lanes, lane, copy = self._fresh(f"{name}_lanes"), self._fresh("l"), self._fresh("u")
            one = ir.Index(ir.Var(lanes), ir.Var(lane))
            combine: ir.Stmt = (ir.ExprStmt(ir.Assign("+=", ir.Var(name), one)) if kind == "+" else
                                ir.If(ir.Binop(">", one, ir.Var(name)),
                                      ir.Block((ir.ExprStmt(ir.Assign("=", ir.Var(name), one)),))))
            whole: ir.Expr = ir.Var(acc)
            if self.copies > 1:
                whole = ir.Index(ir.Var(acc), ir.Const("0"))
                merge = self.isa.op("add" if kind == "+" else "max", ir.Index(ir.Var(acc), ir.Var(copy)), whole)
                post.append(ir.For(copy, ir.Const("1"), ir.Const(str(self.copies)),
                                   ir.Block((ir.ExprStmt(ir.Assign("=", whole, merge)),))))
            if self.reduce:
                post.extend(self._reduced(name, kind, whole))
                continue
            post.append(ir.DeclStmt(ir.Decl(lanes, ir.Array(FLOAT, width))))
            post.append(ir.ExprStmt(self.isa.op("storeu", ir.Var(lanes), whole)))
            post.append(ir.For(lane, ir.Const("0"), width, ir.Block((combine,))))
        if not pre and not rest:
            return core
        return ir.Block((*peel, *pre, core, *post, *rest))

    def _reduced(self, name: str, kind: str, whole: ir.Expr) -> tuple[ir.Stmt, ...]:
        """`name` combined with the lanes of `whole` by one reduce intrinsic."""
        if kind == "+":
            return (ir.ExprStmt(ir.Assign("+=", ir.Var(name), self.isa.op("reduce_add", whole))),)
        top = self._fresh(f"{name}_top")
        return (ir.DeclStmt(ir.Decl(top, FLOAT, self.isa.op("reduce_max", whole))),
                ir.If(ir.Binop(">", ir.Var(top), ir.Var(name)),
                      ir.Block((ir.ExprStmt(ir.Assign("=", ir.Var(name), ir.Var(top))),))))

    def _alignment_peel(self) -> tuple[ir.Expr, tuple[ir.Stmt, ...]]:
        """Where the vector loop starts, and the scalar iterations before it:
        streaming stores need an address aligned to the vector size, so the
        first iterations run scalar until the streamed array is aligned."""
        loop = self.loop
        if not self.streamed:
            return loop.start, ()
        if len({expr_text(a) for a in self.streamed}) > 1:
            raise self.refuse("streaming stores to more than one array: only one can be aligned")
        size = ir.Const(str(self.isa.width * 4))
        mask = ir.Const(str(self.isa.width * 4 - 1))
        assert isinstance(self.chunk, ir.Var)
        at_start = subst(self.streamed[0], {self.chunk.name: loop.start})
        misaligned = ir.Binop("&", ir.Cast(ir.Base(("uintptr_t",)), at_start), mask)
        count = ir.Cast(ir.INT, ir.Binop("/", ir.Binop("&", ir.Binop("-", size, misaligned), mask), ir.Const("4")))
        peel = ir.Var(self._fresh(f"{loop.index}_peel"))
        end = peel if loop.start == ir.Const("0") else ir.Binop("+", loop.start, peel)
        first = ir.Var(self._fresh(f"{loop.index}_aligned"))
        decls = (ir.DeclStmt(ir.Decl(peel.name, ir.INT, count)),
                 ir.DeclStmt(ir.Decl(first.name, ir.INT, ir.Ternary(ir.Binop("<", end, loop.stop), end, loop.stop))))
        return first, decls + (dataclasses.replace(loop, stop=first, inclusive=False),)


def _lane_loops(region: ir.For, width: int) -> list[Path]:
    """Innermost unit-step loops whose trip count is a multiple of the
    vector width or only known at run time (those get a remainder loop)."""
    out = []
    for p, n in walk(region):
        if not isinstance(n, ir.For) or n.step != ir.Const("1"):
            continue
        if not _innermost(n):
            continue
        trip = _trip_count(n)
        if trip is None or trip % width == 0:
            out.append(p)
    return out


def _running_max(s: ir.Stmt) -> Optional[tuple[str, ir.Expr]]:
    """`if (e > m) { m = e; }` (or `m < e`) -> ("m", e)."""
    if not (isinstance(s, ir.If) and s.other is None and len(s.then.stmts) == 1
            and isinstance(s.cond, ir.Binop) and s.cond.op in (">", "<")):
        return None
    value, m = (s.cond.left, s.cond.right) if s.cond.op == ">" else (s.cond.right, s.cond.left)
    body = s.then.stmts[0]
    if isinstance(m, ir.Var) and body == ir.ExprStmt(ir.Assign("=", m, value)):
        return m.name, value
    return None


def _lane_offset(loop: ir.For) -> ir.Expr:
    """How a vector array's last dimension is indexed in a lane loop: by
    the lane's offset from the loop's start."""
    lane = ir.Var(loop.index)
    return lane if loop.start == ir.Const("0") else ir.Binop("-", lane, loop.start)


def _innermost(loop: ir.For) -> bool:
    return not any(isinstance(m, (ir.For, ir.GenericFor, ir.While, ir.DoWhile)) for _, m in walk(loop.body))


def _vector_arrays(fn: ir.FuncDef, loops: list[ir.For], width: int) -> dict[str, int]:
    """Local float arrays that live in vector registers: last dimension a
    constant multiple of the width, every use inside a lane loop that starts
    at 0 and spans that dimension, indexed by the lane index last."""
    out: dict[str, int] = {}
    for _, d in walk(fn.body):
        if not (isinstance(d, ir.DeclStmt) and isinstance(d.decl.type, ir.Array) and d.decl.init is None):
            continue
        t: ir.CType = d.decl.type
        while isinstance(t, ir.Array) and isinstance(t.of, ir.Array):
            t = t.of
        assert isinstance(t, ir.Array)
        if unqualified(t.of) != FLOAT or not (isinstance(t.size, ir.Const) and t.size.kind == "int"):
            continue
        last = int(t.size.text, 0)
        name = d.decl.name or ""
        if last % width:
            continue
        dims = _rank(d.decl.type)
        total = sum(1 for _, n in walk(fn.body) if n == ir.Var(name))
        fitting = 0
        for loop in loops:
            if _trip_count(loop) != last:
                continue
            fitting += sum(1 for _, n in walk(loop.body)
                           if isinstance(n, ir.Index) and _chain(n)[0] == name and len(_chain(n)[1]) == dims
                           and n.index == _lane_offset(loop))
        if total and fitting == total:
            out[name] = last
    return out


def _rank(t: ir.CType) -> int:
    return 1 + _rank(t.of) if isinstance(t, ir.Array) else 0


def _retype(t: ir.CType, isa: Isa) -> ir.CType:
    if isinstance(t, ir.Array) and isinstance(t.of, ir.Array):
        return dataclasses.replace(t, of=_retype(t.of, isa))
    assert isinstance(t, ir.Array) and isinstance(t.size, ir.Const)
    return ir.Array(ir.Base((isa.vtype,)), ir.Const(str(int(t.size.text, 0) // isa.width)))


def _pragmas_before(program: ir.Program, index: int) -> tuple[str, ...]:
    """The pragmas right before item `index`, looking past the helpers
    (`otp_expf_*`) that vectorize puts between them and the function."""
    out = []
    while index > 0 and (isinstance(program.items[index - 1], ir.Pragma) or _is_helper(program.items[index - 1])):
        index -= 1
        if isinstance(program.items[index], ir.Pragma):
            out.append(program.items[index].text)  # type: ignore[union-attr]
    return tuple(out)


def _is_helper(item: ir.TopLevel) -> bool:
    return isinstance(item, ir.FuncDef) and item.name.startswith("otp_expf_")


def _dispatch(fn: ir.FuncDef, variant: str, isa: Isa) -> ir.Stmt:
    call = ir.Call(ir.Var(variant), tuple(ir.Var(p.name or "") for p in fn.params))
    void = fn.type.ret == ir.Base(("void",))
    then = (ir.ExprStmt(call), ir.Return(None)) if void else (ir.Return(call),)
    return ir.If(ir.Call(ir.Var("__builtin_cpu_supports"), (ir.Const(f'"{isa.cpu_feature}"', "string"),)),
                 ir.Block(then))


# ----------------------------------------------------------------- int8 group dot products

INT32 = ir.Base(("int32_t",))
VNNI = ",avx512bw,avx512vnni"  # added to the avx512 target for the int8 dot products
INT8_CHUNK = 32  # int8 elements widened to one vector of 32 int16


@dataclasses.dataclass(frozen=True)
class _GroupDot:
    """A loop over groups whose body sums one group of int8 products in
    int32 and adds it, scaled, to a float scalar (quantize.integer_product
    makes it):

        for (int bj = 0; bj < N; bj += 32) {
          int32_t acc = 0;
          for (int j = bj; j < bj + 32; j++) {
            acc += (int32_t)Wq[i * N + j] * (int32_t)xq[j];
          }
          sum += (float)acc * (Ws[...] * xs[...]);
        }
    """

    inner: ir.For
    acc: str
    operands: tuple[ir.Expr, ir.Expr]
    total: str
    scale: ir.Expr


def _group_dot(program: ir.Program, path: Path, loop: ir.For) -> Optional[_GroupDot]:
    body = loop.body.stmts
    if len(body) != 3 or not isinstance(body[0], ir.DeclStmt) or not isinstance(body[1], ir.For):
        return None
    decl, inner, update = body[0].decl, body[1], body[2]
    trip = _trip_count(inner)
    if unqualified(decl.type) != INT32 or decl.init != ir.Const("0") or inner.step != ir.Const("1") \
            or trip is None or trip % INT8_CHUNK or len(inner.body.stmts) != 1:
        return None
    acc = ir.Var(decl.name or "")
    sum_ = inner.body.stmts[0]
    if not (isinstance(sum_, ir.ExprStmt) and isinstance(sum_.expr, ir.Assign) and sum_.expr.op == "+="
            and sum_.expr.lhs == acc and isinstance(sum_.expr.rhs, ir.Binop) and sum_.expr.rhs.op == "*"):
        return None
    env = env_at(program, path + (("body", None), ("stmts", 1), ("body", None), ("stmts", 0)))
    tds = typedefs_of(program)
    operands = []
    for f in (sum_.expr.rhs.left, sum_.expr.rhs.right):
        if not (isinstance(f, ir.Cast) and unqualified(f.type) == INT32 and isinstance(f.arg, ir.Index)
                and unqualified(type_of(f.arg, env, tds)) == ir.Base(("int8_t",))):
            return None
        name, idx = _chain(f.arg)
        if name is None or len(idx) != 1 or not _unit_stride(idx[0], inner.index) \
                or free_vars(idx[0]) & (writes_of(loop.body) - {inner.index}):
            return None
        operands.append(f.arg)
    if not (isinstance(update, ir.ExprStmt) and isinstance(update.expr, ir.Assign) and update.expr.op == "+="
            and isinstance(update.expr.lhs, ir.Var) and isinstance(update.expr.rhs, ir.Binop)
            and update.expr.rhs.op == "*" and update.expr.rhs.left == ir.Cast(FLOAT, acc)):
        return None
    total, scale = update.expr.lhs.name, update.expr.rhs.right
    if {acc.name, total, inner.index} & free_vars(scale) or has_side_effects(scale) \
            or sum(1 for _, n in walk(loop.body) if n == ir.Var(total)) != 1 \
            or unqualified(type_of(ir.Var(total), env, tds)) != FLOAT:
        return None
    return _GroupDot(inner, acc.name, (operands[0], operands[1]), total, scale)


def _intrinsic(name: str, *args: ir.Expr) -> ir.Call:
    return ir.Call(ir.Var(name), args)


def _int8_load(access: ir.Expr, lane: str, first: ir.Expr) -> ir.Expr:
    """32 int8 values from `access` at lane `first` on, widened to int16."""
    address = ir.Cast(ir.Ptr(ir.Base(("__m256i",), ("const",))), ir.Unop("&", subst(access, {lane: first})))
    return _intrinsic("_mm512_cvtepi8_epi16", _intrinsic("_mm256_loadu_si256", address))


def _group_dot_code(loop: ir.For, dot: _GroupDot, taken: set[str]) -> ir.Stmt:
    """The loop with each group summed by VNNI int16 dot products
    (`vpdpwssd`: 16 lanes, each the exact sum of its pairs of products), the
    group's 16 partial sums scaled in float and added to a vector of partial
    totals, combined after the loop."""
    def fresh(base: str) -> str:
        name = fresh_name(taken, base)
        taken.add(name)
        return name

    call = _intrinsic
    acc_v, total_v = ir.Var(fresh(f"{dot.acc}_v")), ir.Var(fresh(f"{dot.total}_v"))
    chunks = (_trip_count(dot.inner) or 0) // INT8_CHUNK
    chunk = ir.Var(fresh(f"{dot.inner.index}v")) if chunks > 1 else ir.Const("0")
    first: ir.Expr = dot.inner.start if chunks == 1 else \
        ir.Binop("+", dot.inner.start, ir.Binop("*", ir.Const(str(INT8_CHUNK)), chunk))
    step: ir.Stmt = ir.ExprStmt(ir.Assign("=", acc_v, call("_mm512_dpwssd_epi32", acc_v, *(
        _int8_load(a, dot.inner.index, first) for a in dot.operands))))
    if chunks > 1:
        assert isinstance(chunk, ir.Var)
        step = ir.For(chunk.name, ir.Const("0"), ir.Const(str(chunks)), ir.Block((step,)))
    scaled = call("_mm512_fmadd_ps", call("_mm512_cvtepi32_ps", acc_v), call("_mm512_set1_ps", dot.scale), total_v)
    body = ir.Block((ir.DeclStmt(ir.Decl(acc_v.name, ir.Base(("__m512i",)), call("_mm512_setzero_si512"))), step,
                     ir.ExprStmt(ir.Assign("=", total_v, scaled))))
    lanes, lane = fresh(f"{dot.total}_lanes"), fresh("l")
    width = ir.Const(str(ISAS["avx512"].width))
    return ir.Block((
        ir.DeclStmt(ir.Decl(total_v.name, ir.Base(("__m512",)), call("_mm512_setzero_ps"))),
        dataclasses.replace(loop, body=body),
        ir.DeclStmt(ir.Decl(lanes, ir.Array(FLOAT, width))),
        ir.ExprStmt(call("_mm512_storeu_ps", ir.Var(lanes), total_v)),
        ir.For(lane, ir.Const("0"), width, ir.Block((ir.ExprStmt(ir.Assign("+=", ir.Var(dot.total),
                                                                           ir.Index(ir.Var(lanes), ir.Var(lane)))),))),
    ))


@primitive
def vectorize(program: ir.Program, target: str, isa: Optional[str] = None, stream: bool = False,
              reduce: bool = False) -> Rewrite:
    """Turn the lane loops inside a loop into x86 SIMD intrinsics.

    A lane loop is an innermost unit-step loop of the target whose constant
    trip count is a multiple of the vector width W (16 floats for AVX-512, 8
    for AVX2). Its statements (float `=`, `+=`, `-=`, `*=`, `/=` and local
    float temporaries) run W lanes at a time: an access that steps by one
    element per lane (proved with Z3) becomes a load or store, a value the
    loop does not change becomes a broadcast, `+ - * /` become vector
    operations, and a scalar summed into (`s += ...`) gets a vector of
    partial sums added to it after the loop. A local float array whose last
    dimension is only indexed by lane offsets (`acc[ii][j - bj]` in a loop
    `for (j = bj; j < bj + 32; j++)`) becomes an array of vectors,
    which gcc keeps in registers once the loops around are unrolled.

    Before (`vector.vectorize("matmul > for bj", isa="avx512")`):

        void matmul(...) {
          ...
          for (int bj = 0; bj < N; bj += 32) {
            float acc[8][32];
            ...
                for (int jj = 0; jj < 32; jj++) {
                  acc[ii][jj] += A[(bi + ii) * K + k] * Bp[k * 32 + jj];
                }

    After:

        #pragma GCC push_options
        #pragma GCC target("avx512f")
        static void matmul_avx512(...) {
          ...
            __m512 acc[8][2];
            ...
                for (int jjv = 0; jjv < 2; jjv++) {
                  acc[ii][jjv] = _mm512_add_ps(acc[ii][jjv],
                      _mm512_mul_ps(_mm512_set1_ps(A[(bi + ii) * K + k]),
                                    _mm512_loadu_ps(&Bp[k * 32 + 16 * jjv])));
                }
        }
        #pragma GCC pop_options
        void matmul(...) {
          if (__builtin_cpu_supports("avx512f")) {
            matmul_avx512(M, N, K, A, B, C);
            return;
          }
          ...the function as it was...
        }

    Lanes compute exactly what the scalar iterations computed, in the same
    order, so the step is exact (`mul` then `add`: gcc may contract them to
    an FMA only where it may contract the scalar code too); summing into a
    scalar reassociates. `isa` defaults to this machine's widest set. The
    obligation: running the W iterations of a chunk statement by statement
    in lockstep does not break a dependence between them. The target must be
    in a plain-C function (a function already vectorized for the set is
    edited in place); a lane loop with a statement that has no vector form
    (a call, integer arithmetic, a gather) is refused with that statement.

    `reduce=True` (AVX-512 only) combines the lanes of each reduction with
    one `_mm512_reduce_add_ps` / `_mm512_reduce_max_ps` (a tree of shuffles)
    instead of storing them and looping over the 16 lanes: the sum's lanes
    are added in another order (reassociated either way, the max is exact),
    and a loop that combines few lanes, as a row of 64 scores does, no
    longer spends a sixth of its time there.

    Int8 group dot products (quantize.integer_product's output, AVX-512
    only): a loop over groups whose body is `int32_t acc = 0;`, a loop
    summing `(int32_t)a[..] * (int32_t)b[..]` over a multiple of 32 int8
    elements that step by one, then `s += (float)acc * k;` (s a float
    scalar used nowhere else in the loop) widens each 32 values of a and b
    to int16 and sums them with AVX-512 VNNI `vpdpwssd` into 16 int32 lanes
    (exact, for any int8 values), then adds the lanes, converted and times
    k, to a vector of partial sums combined after the loop (reassociated).
    The copy is compiled for avx512f,avx512bw,avx512vnni and called when
    the CPU has `avx512vnni`; the obligation: the products of a group can
    run at once (`lanes`, with acc a reduction). Widening is exact for every
    int8 value; the u8 x s8 `vpdpbusd` sign trick (|a| times b with a's
    sign, 64 values an instruction) is wrong when b is -128, which nothing
    proves absent from memory, although it measured about 15% faster on a
    4096 x 4096 int8 matvec on one thread here (0.53-0.56 against
    0.63-0.66 ms; four accumulators instead of one gained nothing, 0.64).
    """
    chosen = _pick_isa(isa)
    if reduce and chosen.name != "avx512":
        raise TransformError(f"vector.vectorize: reduce=True needs AVX-512's reduce intrinsics, not {chosen.name}")
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    fn_index = m.path[0][1]
    assert fn_index is not None
    fn = program.items[fn_index]
    assert isinstance(fn, ir.FuncDef)
    dots = [(p, d) for p, n in walk(m.node) if isinstance(n, ir.For)
            for d in [_group_dot(program, m.path + p, n)] if d is not None]
    if dots and chosen.name != "avx512":
        raise TransformError(f"vector.vectorize: for {m.node.index} (line {m.line}) sums int8 products by groups, "
                             f"which otp vectorizes with AVX-512 VNNI only (isa='avx512')", m.node.loc)
    if dots:
        chosen = dataclasses.replace(chosen, gcc_target=chosen.gcc_target + VNNI, cpu_feature="avx512vnni")
    in_place = f'GCC target("{chosen.gcc_target}")' in _pragmas_before(program, fn_index)
    lane_paths = [()] if _innermost(m.node) else _lane_loops(m.node, chosen.width)
    lane_paths = [p for p in lane_paths if not any(p[:len(d)] == d for d, _ in dots)]
    if not lane_paths and not dots:
        raise TransformError(f"vector.vectorize: no innermost loop in for {m.node.index} (line {m.line}) has a "
                             f"constant trip count that is a multiple of {chosen.width} ({chosen.name} vectors "
                             f"of {chosen.width} floats); target an innermost loop to vectorize it with a "
                             f"remainder loop", m.node.loc)
    bounds = free_vars(m.node.start) | free_vars(m.node.stop)
    if lane_paths == [()] and (m.node.step != ir.Const("1") or bounds & writes_of(m.node.body)):
        raise TransformError(f"vector.vectorize: for {m.node.index} (line {m.line}) must step by 1 and have "
                             f"bounds its body does not change", m.node.loc)
    full = [m.path + p for p in lane_paths]
    loops = [get(program, p) for p in full]
    arrays = _vector_arrays(fn, loops, chosen.width)
    taken = {n for _, x in walk(fn) for n in ([x.name] if isinstance(x, ir.Var) else
                                            [x.decl.name] if isinstance(x, ir.DeclStmt) and x.decl.name else
                                            [x.index] if isinstance(x, ir.For) else [])}
    new = program
    reassoc, streaming, helpers = False, False, set()
    reduced: list[str] = []
    for p, loop in zip(full, loops):
        lanes = _Lanes(program, m.path[:1], p, loop, chosen, arrays, set(taken), stream, reduce)
        new = replace(new, p, lanes.rewrite())
        reassoc = reassoc or bool(lanes.reductions)
        reduced.extend(name for name, _, _ in lanes.reductions if name not in reduced)
        helpers |= lanes.helpers
        streaming = streaming or bool(lanes.streamed)
    for p, dot in dots:
        new = replace(new, m.path + p, _group_dot_code(get(program, m.path + p), dot, taken))
        reassoc = True
    body = get(new, m.path[:1]).body
    for p, d in list(walk(body)):
        if isinstance(d, ir.DeclStmt) and d.decl.name in arrays:
            body = replace(body, p, ir.DeclStmt(dataclasses.replace(d.decl, type=_retype(d.decl.type, chosen))))
    obligation = Obligation("lanes", f"the iterations of each vectorized loop inside for {m.node.index} can run "
                                     f"{chosen.width} at a time, statement by statement", m.function, tuple(full),
                            (ir.Const(str(chosen.width)),), before=True, names=tuple(reduced))
    obligations = ((obligation,) if full else ()) + tuple(
        Obligation("lanes", f"the {_trip_count(d.inner)} iterations of for {d.inner.index} (the int8 products of a "
                   f"group) can run at once", m.function, (m.path + p + (("body", None), ("stmts", 1)),),
                   (ir.Const(str(_trip_count(d.inner))),), before=True, names=(d.acc,)) for p, d in dots)
    known = {f.name for f in program.functions()}
    extra = tuple(_exp_helper(h) for h in sorted(helpers) if f"otp_expf_{h}" not in known)
    if in_place:
        vfn: ir.TopLevel = dataclasses.replace(fn, body=body)
        items = program.items[:fn_index] + extra + (vfn,) + program.items[fn_index + 1:]
        variant = fn.name
    else:
        variant = fresh_name(known, f"{fn.name}_{chosen.name}")
        vfn = dataclasses.replace(fn, decl=dataclasses.replace(fn.decl, name=variant, storage=("static",)), body=body)
        plain = dataclasses.replace(fn, body=ir.Block((_dispatch(fn, variant, chosen),) + fn.body.stmts))
        items = (program.items[:fn_index]
                 + (ir.Pragma("GCC push_options"), ir.Pragma(f'GCC target("{chosen.gcc_target}")'))
                 + extra + (vfn, ir.Pragma("GCC pop_options"), plain) + program.items[fn_index + 1:])
    out = ir.Program(program.includes, items, program.file).with_includes(INCLUDE, *((STDINT,) if streaming else ()))
    inherits = ((variant, fn.name),) if variant != fn.name else ()
    if helpers:
        return Rewrite(out, obligations, "lossy", EXP_TOLERANCE, inherits)
    return Rewrite(out, obligations, "reassoc" if reassoc else "exact", inherits=inherits)
