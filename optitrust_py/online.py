"""Level 2 for the online softmax: the passes over a row can be streamed
(`stream`, from access footprints), and the rescaling recurrence the step
emitted keeps the softmax invariant (`online_softmax`, over the reals).

The recurrence is read back from the emitted key-block loop by running its
body symbolically on one generic key: the running sum `l` and each output
lane `o` are linear in what earlier blocks contributed,
`l' = a * l + Σ_block t(s)`, `o' = b * o + Σ_block u(s, v)`, and the loop
ends with `m' = M`. With the invariant `l = Σ_k exp(s_k - m)`,
`o = Σ_k exp(s_k - m) v_k` before the block, it holds after the block when,
for any old key s_k and any key s of the block,

    a * exp(s_k - m) = exp(s_k - M),   b * exp(s_k - m) = exp(s_k - M),
    t(s) = exp(s - M),                 u(s, v) = exp(s - M) * v,

which Z3 proves with `exp` uninterpreted and the instances of
exp(x + y) = exp(x) * exp(y) over the arguments that occur. The invariant
holds before the first block (l = 0, o = 0: empty sums, for any m), and the
final `o = o / l` is then the softmax-weighted sum, whatever M was (the max
only keeps the floats in range).

Flash-decoding splits the row into chunks instead (`softmax_merge`): the
emitted chunk loop is run on one generic key s of a chunk, which must add
exp(s - m_c) to the chunk's sum and exp(s - m_c) v to its partial output;
the combination must turn each chunk's max into a weight w with
w * exp(s - m_c) = exp(s - m), and the chunks' key ranges must cover the
row once each (Z3 over the integers)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import z3

from . import ir
from .dependence import Space, first_conflict, instance_var
from .effects import PROVED, Outcome, _answer, _declared, _exempt_all, _fp, _loop_indices, _pairs, _settle, _within
from .goal import Goal, discharges
from .names import free_vars, has_side_effects, subst, writes_of
from .printer import expr as expr_text, stmt_text
from .smt import Terms, proves, solver
from .tree import get


@discharges("stream")
def stream(goal: Goal) -> Outcome:
    """Runs j of the first pass and j' != j of the second touch disjoint
    cells (one writing), the running reductions aside: every cell a pass
    shares with an earlier one is the one of its own iteration."""
    p, q = goal.obligation.paths[:2]
    first: ir.For = get(goal.program, p)
    second: ir.For = get(goal.program, q)
    fp = _fp(goal)
    space = Space(fp, _loop_indices(first) | _loop_indices(second), _declared(first.body) | _declared(second.body))
    rel = [instance_var(first.index, 1) != instance_var(second.index, 2)]
    return _settle(lambda: _answer(first_conflict(space, _pairs(_within(fp, p), _within(fp, q)), lambda a, b: rel,
                                                  _exempt_all(set(goal.obligation.names))),
                                   f"the first pass at {first.index}, the second at {second.index}' != "
                                   f"{first.index}, which streaming runs in another order"))


class _Unmodelled(Exception):
    """A statement of the block loop outside the recurrence's forms."""


def _exp(x: z3.ArithRef) -> z3.ArithRef:
    return z3.Function("exp", z3.RealSort(), z3.RealSort())(x)


@dataclass
class _Linear:
    """coef * (what earlier blocks summed) + Σ over the block of `new`."""

    coef: z3.ArithRef
    new: z3.ArithRef

    def scaled(self, x: z3.ArithRef) -> "_Linear":
        return _Linear(self.coef * x, self.new * x)


def _float_const(c: ir.Const) -> Optional[z3.ArithRef]:
    try:
        return z3.RealVal(float(c.text.rstrip("fFlL")))
    except ValueError:
        return None


def _canon(lv: ir.Expr, index: str) -> ir.Expr:
    return subst(lv, {index: ir.Var("otp_lane")})


def _same_range(a: ir.For, b: ir.For) -> bool:
    return (a.start, a.stop, a.step) == (b.start, b.stop, b.step)


def _fail(node: Any, why: str) -> _Unmodelled:
    text = expr_text(node) if isinstance(node, ir.EXPR_TYPES) else stmt_text(node).strip().splitlines()[0]
    return _Unmodelled(f"'{text}': {why}")


def _real(e: ir.Expr, known: Callable[[ir.Expr], Optional[z3.ArithRef]]) -> z3.ArithRef:
    """The real number an expression denotes: `known` gives the values of
    the names and cells that carry state; any other name or cell is an
    unknown of its own."""
    if isinstance(e, ir.Const):
        v = _float_const(e)
        if v is None:
            raise _fail(e, "not a number")
        return v
    if isinstance(e, (ir.Var, ir.Index)):
        v = known(e)
        return v if v is not None else z3.Real(e.name if isinstance(e, ir.Var) else f"<{expr_text(e)}>")
    if isinstance(e, ir.Binop) and e.op in "+-*/":
        a, b = _real(e.left, known), _real(e.right, known)
        return a + b if e.op == "+" else a - b if e.op == "-" else a * b if e.op == "*" else a / b
    if isinstance(e, ir.Unop) and e.op == "-":
        return -_real(e.arg, known)
    if isinstance(e, ir.Cast):
        return _real(e.arg, known)
    if isinstance(e, ir.Call) and e.name == "expf" and len(e.args) == 1:
        return _exp(_real(e.args[0], known))
    raise _fail(e, "no real-number meaning here")


class _Recurrence:
    """The symbolic run of one iteration of the key-block loop."""

    def __init__(self, loop: ir.For, zero: ir.For, out: ir.Expr, m: str, l: str, blk: str) -> None:
        self.loop, self.zero, self.m, self.l, self.blk = loop, zero, m, l, blk
        self.out = _canon(out, zero.index)
        self.scalars: dict[str, z3.ArithRef] = {m: z3.Real("m")}
        self.sum, self.acc = _Linear(z3.RealVal(1), z3.RealVal(0)), _Linear(z3.RealVal(1), z3.RealVal(0))
        self.elem: Optional[z3.ArithRef] = None
        self.row: Optional[str] = None
        self.maxima = 0
        self.m_end: Optional[z3.ArithRef] = None

    def value(self, e: ir.Expr) -> z3.ArithRef:
        return _real(e, self.known)

    def known(self, e: ir.Expr) -> Optional[z3.ArithRef]:
        """The value of a running scalar or of the current key's block cell."""
        if isinstance(e, ir.Var) and e.name in self.scalars:
            return self.scalars[e.name]
        if isinstance(e, ir.Var) and e.name == self.l:
            raise _fail(e, "the running sum is read outside its updates")
        if isinstance(e, ir.Index) and e.base == ir.Var(self.blk):
            if self.row is None or e.index != ir.Binop("-", ir.Var(self.row), ir.Var(self.loop.index)) \
                    or self.elem is None:
                raise _fail(e, "not the block cell of the current key")
            return self.elem
        return None

    def run(self) -> None:
        for s in self.loop.body.stmts:
            self.top(s)
        if self.m_end is None:
            raise _Unmodelled(f"the key-block loop never updates the running max '{self.m}'")

    def top(self, s: ir.Stmt) -> None:
        if isinstance(s, ir.DeclStmt) and s.decl.name == self.blk and s.decl.init is None:
            return
        if isinstance(s, ir.DeclStmt) and s.decl.init is not None and s.decl.name:
            self.scalars[s.decl.name] = self.value(s.decl.init)
            return
        if isinstance(s, ir.For) and s.start == ir.Var(self.loop.index):
            if (s.stop, s.step) != (self.block_end(), ir.Const("1")):
                raise _fail(s, "the keys of the block are not those of every other pass of it")
            self.row = s.index
            self.keys(s)
            self.row = None
            return
        if isinstance(s, ir.For):
            self.rescale_out(s)
            return
        a = s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) else None
        if a is not None and a.op == "=" and a.lhs == ir.Var(self.l) and isinstance(a.rhs, ir.Binop) \
                and a.rhs.op == "*" and a.rhs.left == ir.Var(self.l):
            self.sum = self.sum.scaled(self.value(a.rhs.right))
            return
        if a is not None and a.op == "=" and a.lhs == ir.Var(self.m):
            self.m_end = self.scalars[self.m] = self.value(a.rhs)
            return
        raise _fail(s, "not a statement of the online-softmax recurrence")

    def block_end(self) -> ir.Expr:
        """`jb + B < n ? jb + B : n`: the block's keys end there (B the step of
        the block loop, n its stop), so the blocks partition the row."""
        end = ir.Binop("+", ir.Var(self.loop.index), self.loop.step)
        return ir.Ternary(ir.Binop("<", end, self.loop.stop), end, self.loop.stop)

    def rescale_out(self, loop: ir.For) -> None:
        """`for d: out = out * x` over the output row."""
        (s,) = loop.body.stmts if len(loop.body.stmts) == 1 else (None,)
        a = s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) else None
        if a is None or not _same_range(loop, self.zero) or _canon(a.lhs, loop.index) != self.out \
                or not (isinstance(a.rhs, ir.Binop) and a.rhs.op == "*" and a.rhs.left == a.lhs):
            raise _fail(loop, "not a rescaling of the whole output row")
        self.acc = self.acc.scaled(self.value(a.rhs.right))

    def keys(self, loop: ir.For) -> None:
        """A loop over the keys of the block, on one generic key."""
        stmts = loop.body.stmts
        last = stmts[-1] if stmts else None
        if isinstance(last, ir.ExprStmt) and isinstance(last.expr, ir.Assign) and last.expr.op == "=" \
                and last.expr.lhs == ir.Index(ir.Var(self.blk), ir.Binop("-", ir.Var(loop.index),
                                                                      ir.Var(self.loop.index))) \
                and self.elem is None:
            own = writes_of(loop.body) - _declared(loop.body) - {self.blk}
            if own:
                raise _fail(loop, f"the scores loop also writes '{sorted(own)[0]}'")
            self.elem = z3.Real("s")
            return
        for s in stmts:
            self.key_stmt(s)

    def key_stmt(self, s: ir.Stmt) -> None:
        """One statement of a loop over the keys of the block."""
        cell = ir.Index(ir.Var(self.blk), ir.Binop("-", ir.Var(self.row or ""), ir.Var(self.loop.index)))
        biggest = _running_max(s)
        if biggest is not None and biggest[1] == cell and biggest[0] in self.scalars:
            self.maxima += 1
            self.scalars[biggest[0]] = z3.Real(f"M{self.maxima}")  # any value: the max only keeps floats in range
            return
        a = s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) else None
        if a is not None and a.op == "=" and a.lhs == cell:
            self.elem = self.value(a.rhs)
            return
        if a is not None and a.op == "+=" and a.lhs == ir.Var(self.l):
            self.sum.new = self.sum.new + self.value(a.rhs)
            return
        inner = s.body.stmts[0] if isinstance(s, ir.For) and len(s.body.stmts) == 1 else None
        a = inner.expr if isinstance(inner, ir.ExprStmt) and isinstance(inner.expr, ir.Assign) else None
        if isinstance(s, ir.For) and a is not None and a.op == "+=" and _same_range(s, self.zero) \
                and _canon(a.lhs, s.index) == self.out:
            self.acc.new = self.acc.new + self.value(a.rhs)
            return
        raise _fail(s, "not a statement of the online-softmax recurrence")

    def claims(self, v: z3.ArithRef) -> list[tuple[str, z3.BoolRef]]:
        """What makes one block keep the invariant (see the module's doc)."""
        assert self.m_end is not None
        m0, big, old, s = z3.Real("m"), self.m_end, z3.Real("s_old"), z3.Real("s")
        return [
            ("the running sum's factor rescales an earlier key to the new max",
             self.sum.coef * _exp(old - m0) == _exp(old - big)),
            ("the output's factor rescales an earlier key to the new max",
             self.acc.coef * _exp(old - m0) == _exp(old - big)),
            ("a key of the block adds exp(s - max) to the running sum", self.sum.new == _exp(s - big)),
            ("a key of the block adds exp(s - max) * v to the output", self.acc.new == _exp(s - big) * v),
        ]


def _running_max(s: ir.Stmt) -> Optional[tuple[str, ir.Expr]]:
    """`if (e > x) { x = e; }` -> ("x", e)."""
    if not (isinstance(s, ir.If) and s.other is None and len(s.then.stmts) == 1
            and isinstance(s.cond, ir.Binop) and s.cond.op == ">" and isinstance(s.cond.right, ir.Var)):
        return None
    if s.then.stmts[0] != ir.ExprStmt(ir.Assign("=", s.cond.right, s.cond.left)):
        return None
    return s.cond.right.name, s.cond.left


def _exp_args(e: z3.ExprRef) -> set[z3.ExprRef]:
    out: set[z3.ExprRef] = set()
    if z3.is_app(e):
        if e.decl().name() == "exp":
            out.add(e.arg(0))
        for c in e.children():
            out |= _exp_args(c)
    return out


def _instances(claim: z3.BoolRef) -> list[z3.BoolRef]:
    """exp(x + y) = exp(x) * exp(y) for the arguments x, y of exp in the claim."""
    args = sorted(_exp_args(claim), key=str)
    return [_exp(x + y) == _exp(x) * _exp(y) for x in args for y in args]


def _decide(claim: z3.BoolRef) -> Optional[str]:
    """None when proved; else why not ('refuted: ...' or 'unknown: ...')."""
    s = solver()
    s.add(*_instances(claim))
    s.add(z3.Not(claim))
    r = s.check()
    if r == z3.unsat:
        return None
    if r == z3.sat:
        return f"refuted: {claim} fails (exp uninterpreted), e.g. {s.model()}"
    return f"unknown: Z3 gave up ({s.reason_unknown()})"


def _row_assign(loop: ir.For) -> Optional[ir.Assign]:
    s = loop.body.stmts[0] if len(loop.body.stmts) == 1 else None
    return s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) and s.expr.op == "=" else None


def _is_zero(e: Optional[ir.Expr]) -> bool:
    return isinstance(e, ir.Const) and _float_const(e) is not None and float(e.text.rstrip("fFlL")) == 0.0


@discharges("online_softmax")
def online_softmax(goal: Goal) -> Outcome:
    """The emitted key-block loop keeps l = Σ exp(s_k - m), o = Σ exp(s_k - m) v_k;
    l and o start at 0 and o / l is stored at the end."""
    ob = goal.obligation
    blocks, _, sum_decl, zero, final = (get(goal.program, p) for p in ob.paths[:5])
    m, l, blk = ob.names[:3]
    start = _row_assign(zero)
    if not (isinstance(sum_decl, ir.DeclStmt) and sum_decl.decl.name == l and _is_zero(sum_decl.decl.init)):
        return "refuted", f"the running sum '{l}' does not start at 0"
    if start is None or not _is_zero(start.rhs):
        return "refuted", f"for {zero.index} (line {zero.loc.line if zero.loc else '?'}) does not zero the output"
    end = _row_assign(final)
    lv = start.lhs
    if end is None or not _same_range(final, zero) or _canon(end.lhs, final.index) != _canon(lv, zero.index) \
            or end.rhs != ir.Binop("/", end.lhs, ir.Var(l)):
        return "refuted", f"the output is not divided by the running sum '{l}' after the key-block loop"
    rec = _Recurrence(blocks, zero, lv, m, l, blk)
    try:
        rec.run()
        v = rec.value(ob.exprs[0])
    except _Unmodelled as e:
        return "unknown", f"the key-block loop for {blocks.index}: {e}"
    for what, claim in rec.claims(v):
        why = _decide(claim)
        if why is not None:
            status, reason = why.split(": ", 1)
            return status, f"{what}: {reason}"
    return PROVED


class _Chunk:
    """The symbolic run of one chunk of a split row (flash.split_softmax), on
    one generic key s of the chunk: its max, the sum and partial output it
    adds to, and what it stores in the parts."""

    def __init__(self, loop: ir.For, names: tuple[str, ...], width: ir.Expr, d_range: ir.For) -> None:
        self.loop = loop
        self.mc, self.lc, self.mp, self.lp, self.op, self.buf = names
        self.width, self.d_range = width, d_range
        self.keys_of: Optional[ir.For] = None
        self.cell: Optional[ir.Expr] = None
        self.scalars: dict[str, z3.ArithRef] = {}
        self.elem: Optional[z3.ArithRef] = None
        self.sum: Optional[z3.ArithRef] = None
        self.acc: Optional[z3.ArithRef] = None
        self.stored: dict[str, z3.ArithRef] = {}

    def known(self, e: ir.Expr) -> Optional[z3.ArithRef]:
        if isinstance(e, ir.Var) and e.name in self.scalars:
            return self.scalars[e.name]
        if isinstance(e, ir.Var) and e.name in (self.lc, self.mp, self.lp, self.op):
            raise _fail(e, "read outside its updates")
        if isinstance(e, ir.Index) and e.base == ir.Var(self.buf):
            if e != self.cell or self.elem is None:
                raise _fail(e, "not the row cell of the current key")
            return self.elem
        if isinstance(e, ir.Index) and e.base in (ir.Var(self.mp), ir.Var(self.lp), ir.Var(self.op)):
            raise _fail(e, "a part read inside the chunk")
        return None

    def _key_cell(self, e: ir.Expr, key: str) -> bool:
        """`buf[key]` or `buf[row + key]` with a row that the chunk loop
        does not change: one cell per key, the same in every pass."""
        if not (isinstance(e, ir.Index) and e.base == ir.Var(self.buf)):
            return False
        if e.index == ir.Var(key):
            return True
        i = e.index
        return isinstance(i, ir.Binop) and i.op == "+" and i.right == ir.Var(key) \
            and not free_vars(i.left) & (writes_of(self.loop.body) | {key, self.loop.index}) \
            and not has_side_effects(i.left)

    def part(self, index: str) -> ir.Index:
        return ir.Index(ir.Var(self.op), ir.Binop("+", ir.Binop("*", ir.Var(self.loop.index), self.width),
                                                   ir.Var(index)))

    def run(self) -> None:
        for s in self.loop.body.stmts:
            self.top(s)
        if set(self.stored) != {self.mp, self.lp} or self.acc is None:
            raise _Unmodelled(f"the chunk loop for {self.loop.index} does not store its max, sum and partial output")

    def top(self, s: ir.Stmt) -> None:
        if isinstance(s, ir.DeclStmt) and s.decl.name == self.mc:
            self.scalars[self.mc] = z3.Real("m_start")
            return
        if isinstance(s, ir.DeclStmt) and s.decl.name == self.lc:
            if not (isinstance(s.decl.init, ir.Const) and _is_zero(s.decl.init)):
                raise _fail(s, "the chunk's sum does not start at 0")
            self.sum = z3.RealVal(0)
            return
        if isinstance(s, ir.For) and s.start != ir.Const("0"):
            self.keys(s)
            return
        zero = _row_assign(s) if isinstance(s, ir.For) and _same_range(s, self.d_range) else None
        if zero is not None and zero.lhs == self.part(s.index) and _is_zero(zero.rhs) and self.acc is None:
            self.acc = z3.RealVal(0)
            return
        a = s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) else None
        at = ir.Var(self.loop.index)
        if a is not None and a.op == "=" and a.lhs == ir.Index(ir.Var(self.mp), at) and a.rhs == ir.Var(self.mc):
            self.stored[self.mp] = self.scalars[self.mc]
            return
        if a is not None and a.op == "=" and a.lhs == ir.Index(ir.Var(self.lp), at) and a.rhs == ir.Var(self.lc) \
                and self.sum is not None:
            self.stored[self.lp] = self.sum
            return
        raise _fail(s, "not a statement of a chunk of the split row")

    def keys(self, loop: ir.For) -> None:
        """A loop over the chunk's keys, which must be those of every other."""
        if self.keys_of is None:
            self.keys_of = loop
        elif (loop.index, loop.start, loop.stop, loop.step) != (self.keys_of.index, self.keys_of.start,
                                                                 self.keys_of.stop, self.keys_of.step):
            raise _fail(loop, "the keys of the chunk are not those of its other passes")
        stmts = loop.body.stmts
        last = stmts[-1] if stmts else None
        if self.elem is None and isinstance(last, ir.ExprStmt) and isinstance(last.expr, ir.Assign) \
                and last.expr.op == "=" and self._key_cell(last.expr.lhs, loop.index):
            own = writes_of(loop.body) - _declared(loop.body) - {self.buf}
            if own:
                raise _fail(loop, f"the scores loop also writes '{sorted(own)[0]}'")
            self.cell = last.expr.lhs
            self.elem = z3.Real("s")
            return
        cell = self.cell
        for s in stmts:
            biggest = _running_max(s)
            a = s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) else None
            inner = s.body.stmts[0] if isinstance(s, ir.For) and len(s.body.stmts) == 1 else None
            update = inner.expr if isinstance(inner, ir.ExprStmt) and isinstance(inner.expr, ir.Assign) else None
            if biggest == (self.mc, cell) and self.mc in self.scalars:
                self.scalars[self.mc] = z3.Real("m_chunk")  # any value: the max only keeps floats in range
            elif a is not None and a.op == "=" and a.lhs == cell:
                self.elem = _real(a.rhs, self.known)
            elif a is not None and a.op == "+=" and a.lhs == ir.Var(self.lc) and self.sum is not None:
                self.sum = self.sum + _real(a.rhs, self.known)
            elif isinstance(s, ir.For) and update is not None and update.op == "+=" and self.acc is not None \
                    and _same_range(s, self.d_range) and update.lhs == self.part(s.index):
                self.acc = self.acc + _real(update.rhs, self.known)
            else:
                raise _fail(s, "not a statement of a chunk of the split row")


def _factor(loop: ir.For, target: ir.Expr, part: ir.Expr) -> Optional[ir.Expr]:
    """F, when the body of `loop` is `target += part * F;`, else None."""
    s = loop.body.stmts[0] if len(loop.body.stmts) == 1 else None
    a = s.expr if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign) else None
    if a is None or a.op != "+=" or a.lhs != target or not isinstance(a.rhs, ir.Binop) or a.rhs.op != "*" \
            or a.rhs.left != part:
        return None
    return a.rhs.right


@discharges("softmax_merge")
def softmax_merge(goal: Goal) -> Outcome:
    """Each chunk adds exp(s - m_c) and exp(s - m_c) v for its keys to its
    parts, the combination multiplies them by factors that make them
    exp(s - m) and exp(s - m) v, and the output is then divided by the sum."""
    ob = goal.obligation
    paths = ob.paths[:9]
    parent, first = paths[0][:-1], paths[0][-1][1]
    if any(p[:-1] != parent or p[-1] != ("stmts", first + n) for n, p in enumerate(paths)):
        return "unknown", "the chunk loop and the combination are not consecutive statements of one block"
    chunks, _, top, weights, sum_decl, sums, zero, acc, final = (get(goal.program, p) for p in paths)
    mc, lc, mp, lp, op, buf, m, l = ob.names[:8]
    start = _row_assign(zero)
    if not isinstance(chunks, ir.For) or chunks.start != ir.Const("0") or chunks.step != ir.Const("1"):
        return "unknown", "the chunks are not counted from 0 by steps of 1"
    if not (isinstance(sum_decl, ir.DeclStmt) and sum_decl.decl.name == l and _is_zero(sum_decl.decl.init)):
        return "refuted", f"the combined sum '{l}' does not start at 0"
    if start is None or not _is_zero(start.rhs):
        return "refuted", f"for {zero.index} (line {zero.loc.line if zero.loc else '?'}) does not zero the output"
    end = _row_assign(final)
    out = _canon(start.lhs, zero.index)
    if end is None or not _same_range(final, zero) or _canon(end.lhs, final.index) != out \
            or end.rhs != ir.Binop("/", end.lhs, ir.Var(l)):
        return "refuted", f"the output is not divided by the combined sum '{l}' after the combination"
    width = _part_width(chunks, op)
    if width is None:
        return "unknown", f"the chunk loop for {chunks.index} does not zero its partial output '{op}'"
    run = _Chunk(chunks, (mc, lc, mp, lp, op, buf), width, zero)
    inner = acc.body.stmts[0] if isinstance(acc, ir.For) and len(acc.body.stmts) == 1 else None
    try:
        run.run()
        assert run.keys_of is not None  # run() saw the scores loop
        gap = _gap(chunks, run.keys_of, ob.exprs[1])
        if gap is not None:
            return "unknown" if gap.startswith("cannot") else "refuted", gap
        v = _real(ob.exprs[0], lambda e: None)
        if not (isinstance(top, ir.For) and _same_range(top, chunks) and len(top.body.stmts) == 1
                and _running_max(top.body.stmts[0]) == (m, ir.Index(ir.Var(mp), ir.Var(top.index)))):
            raise _fail(top, "not the running max of the chunks' maxima")
        f_sum = _factor(sums, ir.Var(l), ir.Index(ir.Var(lp), ir.Var(sums.index))) \
            if isinstance(sums, ir.For) and _same_range(sums, chunks) else None
        f_out = _factor(inner, subst(start.lhs, {zero.index: ir.Var(inner.index)}),
                        subst(run.part(inner.index), {chunks.index: ir.Var(acc.index)})) \
            if isinstance(inner, ir.For) and _same_range(inner, zero) and _same_range(acc, chunks) else None
        if f_sum is None or f_out is None:
            raise _fail(sums if f_sum is None else acc, "not a sum over the chunks of a part times a factor")
        weight = _weight(weights, chunks, mp, lambda x: run.stored[mp] if x == ir.Index(ir.Var(mp), ir.Var(
            weights.index)) else z3.Real("m") if x == ir.Var(m) else _no_state(x, (lp, op, l, mp)))

        def scale(e: ir.Expr, index: str) -> z3.ArithRef:
            """A factor of the combination: the chunk's weight, the combined max m, nothing else of state."""
            return _real(e, lambda x: weight if x == ir.Index(ir.Var(mp), ir.Var(index))
                         else z3.Real("m") if x == ir.Var(m) else _no_state(x, (lp, op, l, mp)))
        k_sum, k_out = scale(f_sum, sums.index), scale(f_out, acc.index)
    except _Unmodelled as e:
        return "unknown", f"the split row of chunks {chunks.index}: {e}"
    assert run.sum is not None and run.acc is not None  # run() stored both
    s, big = z3.Real("s"), z3.Real("m")
    claims = [("a chunk's sum holds exp(s - its max) for each of its keys", run.stored[lp] == _exp(s - run.stored[mp])),
              ("a chunk's partial output holds exp(s - its max) v for each of its keys",
               run.acc == _exp(s - run.stored[mp]) * v),
              ("the combined sum rescales each key to exp(s - max)", run.stored[lp] * k_sum == _exp(s - big)),
              ("the combined output rescales each key to exp(s - max) v", run.acc * k_out == _exp(s - big) * v)]
    for what, claim in claims:
        why = _decide(claim)
        if why is not None:
            status, reason = why.split(": ", 1)
            return status, f"{what}: {reason}"
    return PROVED


def _weight(loop: Any, chunks: ir.For, mp: str, known: Callable[[ir.Expr], Optional[z3.ArithRef]]) -> z3.ArithRef:
    """What `for c: mp[c] = F;` leaves in a chunk's cell of the maxima: F
    over the chunk's own max (its weight in the combination)."""
    a = _row_assign(loop) if isinstance(loop, ir.For) and _same_range(loop, chunks) else None
    if a is None or a.lhs != ir.Index(ir.Var(mp), ir.Var(loop.index)):
        raise _fail(loop, "not the chunks' weights, each computed from its own max")
    return _real(a.rhs, known)


def _no_state(e: ir.Expr, names: tuple[str, ...]) -> Optional[z3.ArithRef]:
    """None (an unknown of its own) unless e is state of the combination."""
    base = e.base if isinstance(e, ir.Index) else e
    if isinstance(base, ir.Var) and base.name in names:
        raise _fail(e, "state of the combination read in a factor")
    return None


def _part_width(chunks: ir.For, op: str) -> Optional[ir.Expr]:
    """W, where the chunk loop zeroes `op[c * W + d]`."""
    for s in chunks.body.stmts:
        a = _row_assign(s) if isinstance(s, ir.For) and len(s.body.stmts) == 1 else None
        idx = a.lhs.index if a is not None and isinstance(a.lhs, ir.Index) and a.lhs.base == ir.Var(op) else None
        if isinstance(idx, ir.Binop) and idx.op == "+" and isinstance(idx.left, ir.Binop) and idx.left.op == "*" \
                and idx.left.left == ir.Var(chunks.index):
            return idx.left.right
    return None


def _gap(chunks: ir.For, keys: ir.For, n: ir.Expr) -> Optional[str]:
    """None when the chunks' key ranges, one after the other, are exactly
    0..n: the first starts at 0, each ends where the next starts, none is
    empty, and the last ends at n (no chunk when n <= 0)."""
    terms = Terms("merge")
    c, count, row = z3.Int(chunks.index), terms.term(chunks.stop), terms.term(n)
    lo, hi = terms.term(keys.start), terms.term(keys.stop)
    at = lambda e, x: z3.substitute(e, (c, x))  # noqa: E731
    if keys.step != ir.Const("1") or keys.index == chunks.index:
        return "cannot tell the chunks' keys apart: their loop has a step other than 1 or rebinds the chunk index"
    hyps = terms.facts + [d != 0 for d in terms.divisors]
    claims = [
        ("no chunk runs when the row is empty", z3.Implies(row <= 0, count <= 0)),
        ("the first chunk starts at key 0", z3.Implies(row > 0, at(lo, z3.IntVal(0)) == 0)),
        ("each chunk ends where the next starts",
         z3.Implies(z3.And(c >= 0, c + 1 < count), hi == at(lo, c + 1))),
        ("no chunk is empty", z3.Implies(z3.And(c >= 0, c < count), lo < hi)),
        ("the last chunk ends at the row's end", z3.Implies(count > 0, at(hi, count - 1) == row)),
    ]
    for what, claim in claims:
        if not proves(claim, hyps):
            return f"the chunks do not cover the row's keys once each: {what} is not proved"
    return None

