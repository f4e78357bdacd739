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
only keeps the floats in range)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import z3

from . import ir
from .dependence import Space, first_conflict, instance_var
from .effects import PROVED, Outcome, _answer, _declared, _exempt_all, _fp, _loop_indices, _pairs, _settle, _within
from .goal import Goal, discharges
from .names import subst, writes_of
from .printer import expr as expr_text, stmt_text
from .smt import solver
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

    def fail(self, node: Any, why: str) -> _Unmodelled:
        text = expr_text(node) if isinstance(node, ir.EXPR_TYPES) else stmt_text(node).strip().splitlines()[0]
        return _Unmodelled(f"'{text}': {why}")

    def value(self, e: ir.Expr) -> z3.ArithRef:
        if isinstance(e, ir.Const):
            v = _float_const(e)
            if v is None:
                raise self.fail(e, "not a number")
            return v
        if isinstance(e, ir.Var):
            if e.name in self.scalars:
                return self.scalars[e.name]
            if e.name == self.l:
                raise self.fail(e, "the running sum is read outside its updates")
            return z3.Real(e.name)
        if isinstance(e, ir.Index) and e.base == ir.Var(self.blk):
            if self.row is None or e.index != ir.Binop("-", ir.Var(self.row), ir.Var(self.loop.index)) \
                    or self.elem is None:
                raise self.fail(e, "not the block cell of the current key")
            return self.elem
        if isinstance(e, ir.Index):
            return z3.Real(f"<{expr_text(e)}>")
        if isinstance(e, ir.Binop) and e.op in "+-*/":
            a, b = self.value(e.left), self.value(e.right)
            return a + b if e.op == "+" else a - b if e.op == "-" else a * b if e.op == "*" else a / b
        if isinstance(e, ir.Unop) and e.op == "-":
            return -self.value(e.arg)
        if isinstance(e, ir.Cast):
            return self.value(e.arg)
        if isinstance(e, ir.Call) and e.name == "expf" and len(e.args) == 1:
            return _exp(self.value(e.args[0]))
        raise self.fail(e, "no real-number meaning here")

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
                raise self.fail(s, "the keys of the block are not those of every other pass of it")
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
        raise self.fail(s, "not a statement of the online-softmax recurrence")

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
            raise self.fail(loop, "not a rescaling of the whole output row")
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
                raise self.fail(loop, f"the scores loop also writes '{sorted(own)[0]}'")
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
        raise self.fail(s, "not a statement of the online-softmax recurrence")

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
