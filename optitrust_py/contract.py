"""Function and loop contracts as data, and the evaluation of their integer
formulas.

A contract says what a function may touch (`reads` / `writes` / `modifies`
resources), what it may assume (`requires`, pure integer facts over its size
parameters) and, optionally, what it computes (`ensures`, kept as parsed
formulas for the level-3 model). Formulas and shape dimensions are ordinary IR
expressions (`ir.Const`, `ir.Var`, `ir.Binop`, ...) so that the checkers, Z3
encoders and printers that work on C code work on contracts unchanged.

Parsing lives in `spec.py`; this module holds only the data and helpers that
every consumer (resource checker, exec checker, transformations) needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Mapping, Optional

from . import ir
from .errors import SpecError
from .ir import Expr, Loc
from .printer import expr as c_expr

MODES = ("reads", "writes", "modifies")
"""The function-level resource modes, in the order a contract is printed."""

LOOP_MODES = ("xreads", "xwrites", "xmodifies", "sreads", "smodifies")
"""Loop-contract modes: per-iteration exclusive (x*) and shared invariant (s*)."""


def _loc() -> Optional[Loc]:
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Shape:
    """What a subject points to: one `Cell`, or a row-major `MatrixN(d1..dN)`
    (sugar for a group of N nested cell groups, which is how accesses like
    `q[(h*S+i)*D+d]` are recognised as `q[h,i,d]`)."""

    kind: str  # 'cell' or 'matrix'
    dims: tuple[Expr, ...] = ()

    @property
    def rank(self) -> int:
        return len(self.dims)

    def size(self, env: Mapping[str, int]) -> int:
        """Number of cells for given sizes: what the exec checker allocates."""
        n = 1
        for d in self.dims:
            n *= evaluate(d, env)
        return n

    def __str__(self) -> str:
        if self.kind == "cell":
            return "Cell"
        return f"Matrix{len(self.dims)}({', '.join(c_expr(d) for d in self.dims)})"


@dataclass(frozen=True)
class Binder:
    """One `for i in lo..hi ->` group level; `hi` is exclusive (lo <= i < hi)."""

    index: str
    lo: Expr
    hi: Expr
    loc: Optional[Loc] = _loc()

    def __str__(self) -> str:
        return f"for {self.index} in {c_expr(self.lo)}..{c_expr(self.hi)}"


@dataclass(frozen=True)
class Resource:
    """`subject ~> shape`, under zero or more group binders (outermost first).

    `subject` is a `Var` (`q`) or an address `&A[i]` (Unop('&', Index(...)))
    whose indices may use the group indices.
    """

    subject: Expr
    shape: Shape
    group: tuple[Binder, ...] = ()
    loc: Optional[Loc] = _loc()

    @property
    def base(self) -> str:
        """The array or pointer name the resource is about (`A` in `&A[i]`)."""
        name = subject_base(self.subject)
        assert name is not None, "a parsed resource always has a named base"
        return name

    def __str__(self) -> str:
        head = "".join(f"{b} -> " for b in self.group)
        return f"{head}{c_expr(self.subject)} ~> {self.shape}"


@dataclass(frozen=True)
class Contract:
    """A function's contract, from a spec file or from in-source clauses.

    `params` is the header's parameter list (it must equal the C function's:
    `spec.check_contract`); `param_locs` only serves error messages.
    """

    function: str
    params: tuple[str, ...]
    requires: tuple[Expr, ...] = ()
    reads: tuple[Resource, ...] = ()
    writes: tuple[Resource, ...] = ()
    modifies: tuple[Resource, ...] = ()
    ensures: tuple[Expr, ...] = ()
    loc: Optional[Loc] = _loc()
    param_locs: tuple[Optional[Loc], ...] = field(default=(), compare=False, repr=False)

    def resources(self) -> Iterator[tuple[str, Resource]]:
        """Every resource with its mode, reads first, in written order."""
        for mode in MODES:
            for r in getattr(self, mode):
                yield mode, r

    def resources_of(self, param: str) -> tuple[Resource, ...]:
        """All resources about `param` (several when it is split in cells)."""
        return tuple(r for _, r in self.resources() if r.base == param)

    def resource_of(self, param: str) -> Optional[Resource]:
        """The (first) resource whose subject is `param`, or None."""
        found = self.resources_of(param)
        return found[0] if found else None

    def mode_of(self, param: str) -> Optional[str]:
        """'reads', 'writes', 'modifies', or None when `param` owns nothing."""
        for mode, r in self.resources():
            if r.base == param:
                return mode
        return None

    def outputs(self) -> tuple[str, ...]:
        """Parameters the function writes (writes or modifies), in header
        order: what the exec checker compares between two versions."""
        return tuple(p for p in self.params if self.mode_of(p) in ("writes", "modifies"))

    def inputs(self) -> tuple[str, ...]:
        """Parameters whose initial contents matter (reads or modifies), in
        header order: what the exec checker fills with random data."""
        return tuple(p for p in self.params if self.mode_of(p) in ("reads", "modifies"))

    def __str__(self) -> str:
        """The contract in spec-file syntax (parses back to an equal Contract)."""
        lines = [f"{self.function}({', '.join(self.params)}):"]
        if self.requires:
            lines.append("  requires " + ", ".join(c_expr(e) for e in self.requires))
        for mode in MODES:
            rs = getattr(self, mode)
            if rs:
                lines.append(f"  {mode:<8} " + ", ".join(str(r) for r in rs))
        if self.ensures:
            lines.append("  ensures  " + ", ".join(c_expr(e) for e in self.ensures))
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class LoopContract:
    """A loop's clauses: per-iteration exclusive resources (x*, which may use
    the loop index) and shared invariant ones (s*)."""

    xreads: tuple[Resource, ...] = ()
    xwrites: tuple[Resource, ...] = ()
    xmodifies: tuple[Resource, ...] = ()
    sreads: tuple[Resource, ...] = ()
    smodifies: tuple[Resource, ...] = ()

    def resources(self) -> Iterator[tuple[str, Resource]]:
        for mode in LOOP_MODES:
            for r in getattr(self, mode):
                yield mode, r

    def is_empty(self) -> bool:
        return not any(getattr(self, m) for m in LOOP_MODES)


# ----------------------------------------------------------------- helpers


def subject_base(e: Expr) -> Optional[str]:
    """`A` for `A`, `&A[i]`, `&A[i][j]`; None when `e` is not such a subject."""
    if isinstance(e, ir.Var):
        return e.name
    if isinstance(e, ir.Unop) and e.op == "&" and isinstance(e.arg, ir.Index):
        e = e.arg
        while isinstance(e, ir.Index):
            e = e.base
        return e.name if isinstance(e, ir.Var) else None
    return None


def free_names(e: Expr) -> tuple[ir.Var, ...]:
    """The variables a formula uses (first occurrence of each, in reading
    order), leaving out the names of called functions (`f` in `f(x)`), which
    are model functions, not values."""
    seen: dict[str, ir.Var] = {}

    def go(x: Expr) -> None:
        if isinstance(x, ir.Var):
            seen.setdefault(x.name, x)
        elif isinstance(x, ir.Call):
            for a in x.args:
                go(a)
        elif isinstance(x, ir.Binop):
            go(x.left)
            go(x.right)
        elif isinstance(x, ir.Unop):
            go(x.arg)
        elif isinstance(x, ir.Index):
            go(x.base)
            go(x.index)
        elif isinstance(x, ir.Ternary):
            go(x.cond)
            go(x.then)
            go(x.other)

    go(e)
    return tuple(seen.values())


def c_div(a: int, b: int) -> int:
    """C's `/` on integers: the quotient truncated toward zero."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def c_mod(a: int, b: int) -> int:
    """C's `%`: the remainder has the sign of the dividend (a == b*(a/b) + a%b)."""
    return a - b * c_div(a, b)


def int_literal(text: str) -> int:
    """The value of a C integer literal (decimal, hex, octal; suffixes ignored)."""
    t = text.rstrip("uUlL")
    if t[:2] in ("0x", "0X"):
        return int(t[2:], 16)
    if len(t) > 1 and t[0] == "0":
        return int(t[1:], 8)
    return int(t, 10)


_COMPARE = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def evaluate(e: Expr, env: Mapping[str, int]) -> int:
    """The integer value of a formula under `env`, with C semantics: `/` and
    `%` truncate toward zero, comparisons and `&&` `||` `!` give 0 or 1, `&&`
    and `||` short-circuit. The exec checker uses it to size arrays from shapes
    and to check `requires` on user-given sizes, so an unknown name or a
    non-integer construct is a SpecError at the formula's location.
    (Python integers do not overflow; a formula that overflows `int` in C is
    the contract's bug, not evaluated as C would.)"""
    if isinstance(e, ir.Const):
        if e.kind != "int":
            raise SpecError(f"cannot evaluate the {e.kind} constant {e.text}: formulas are integer", e.loc)
        try:
            return int_literal(e.text)
        except ValueError:
            raise SpecError(f"bad integer literal '{e.text}'", e.loc) from None
    if isinstance(e, ir.Var):
        if e.name not in env:
            known = ", ".join(sorted(env)) or "none"
            raise SpecError(f"unknown name '{e.name}' in formula (known: {known})", e.loc)
        return int(env[e.name])
    if isinstance(e, ir.Unop):
        if e.op == "-":
            return -evaluate(e.arg, env)
        if e.op == "+":
            return evaluate(e.arg, env)
        if e.op == "!":
            return int(not evaluate(e.arg, env))
    if isinstance(e, ir.Binop):
        if e.op == "&&":
            return int(bool(evaluate(e.left, env)) and bool(evaluate(e.right, env)))
        if e.op == "||":
            return int(bool(evaluate(e.left, env)) or bool(evaluate(e.right, env)))
        a = evaluate(e.left, env)
        b = evaluate(e.right, env)
        if e.op in _COMPARE:
            return int(_COMPARE[e.op](a, b))
        if e.op == "+":
            return a + b
        if e.op == "-":
            return a - b
        if e.op == "*":
            return a * b
        if e.op in ("/", "%"):
            if b == 0:
                raise SpecError(f"division by zero in '{c_expr(e)}'", e.loc)
            return c_div(a, b) if e.op == "/" else c_mod(a, b)
    if isinstance(e, ir.Ternary):
        return evaluate(e.then, env) if evaluate(e.cond, env) else evaluate(e.other, env)
    raise SpecError(f"cannot evaluate '{c_expr(e)}': only integer formulas over names can be evaluated", e.loc)
