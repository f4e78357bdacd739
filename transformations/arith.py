"""Integer index arithmetic, rewritten only where Z3 proves the rewrite.

Integers are read as mathematical integers: signed overflow is undefined
behaviour in C, so a valid program does not overflow, and an expression
equal to the original over the integers computes the same value. The
rewritten expression may compute other intermediate values than the
original (`bi + i - bi` becomes `i`); that is safe as long as the new
intermediate values fit too, which holds for the forms produced here (terms
of the original's own expansion, with fewer or smaller summands), but the
step does not prove it. Unsigned arithmetic wraps around, so unsigned
expressions are left alone, as are floating-point ones, but for
arith.reciprocal: a float division as a product by the divisor's
reciprocal, a lossy step that says so.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterator, Optional, Union

import z3

from optitrust_py import ir
from optitrust_py.contract import Contract, c_div as int_div, c_mod as int_mod, int_literal
from optitrust_py.errors import ScriptError, TransformError
from optitrust_py.names import address_taken, free_vars, has_side_effects
from optitrust_py.printer import expr as expr_text
from optitrust_py.session import Rewrite, current_session, primitive
from optitrust_py.smt import Terms, settle
from optitrust_py.spec import contract_from_clauses
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, children, get, replace, walk
from optitrust_py.typeof import Env, env_at, is_arithmetic, resolve, type_of, typedefs_of
from transformations.variable import written_by

_ARITH = ("+", "-", "*", "/", "%")
_LOGIC = ("<", "<=", ">", ">=", "==", "!=", "&&", "||")

Monomial = tuple[ir.Expr, ...]  # opaque factors, in order of first appearance
Poly = dict[Monomial, int]  # monomial -> non-zero coefficient; () is the constant
Key = Union[Monomial, frozenset]


def _is_arith(e: Any) -> bool:
    return isinstance(e, ir.Binop) and e.op in _ARITH or isinstance(e, ir.Unop) and e.op in ("-", "+")


def _is_sum(e: Any) -> bool:
    return isinstance(e, ir.Binop) and e.op in ("+", "-") or isinstance(e, ir.Unop) and e.op in ("-", "+")


def _leaves(e: ir.Expr, path: Path) -> Iterator[tuple[Path, ir.Expr]]:
    """The operands of an arithmetic expression that are not arithmetic
    themselves (variables, constants, loads, casts, calls), with paths."""
    if not _is_arith(e):
        yield path, e
        return
    for step, c in children(e):
        yield from _leaves(c, path + (step,))


def _value(e: ir.Expr) -> Optional[int]:
    """The value of an integer literal, or of its negation."""
    if isinstance(e, ir.Const) and e.kind == "int":
        return int_literal(e.text)
    if isinstance(e, ir.Unop) and e.op == "-" and isinstance(e.arg, ir.Const) and e.arg.kind == "int":
        return -int_literal(e.arg.text)
    return None


def _number(v: int) -> ir.Expr:
    return ir.Const(str(v)) if v >= 0 else ir.Unop("-", ir.Const(str(-v)))


def _cost(e: ir.Expr) -> tuple[int, int]:
    """Smaller is simpler: the number of nodes, then of parentheses."""
    return sum(1 for _ in walk(e)), expr_text(e).count("(")


# ----------------------------------------------------------------- types


def _signed_integer(t: ir.CType, tds: Env) -> bool:
    r = resolve(t, tds)
    if isinstance(r, ir.EnumT):
        return True
    return isinstance(r, ir.Base) and is_arithmetic(r, tds) \
        and not {"unsigned", "float", "double", "_Bool"} & set(r.names)


def _integer_root(e: ir.Expr, env: Env, tds: Env) -> bool:
    """Whether `e` is arithmetic on signed integers only, with no call and
    no side effect among its operands."""
    for _, leaf in _leaves(e, ()):
        if has_side_effects(leaf, ()):
            return False
        try:
            if not _signed_integer(type_of(leaf, env, tds), tds):
                return False
        except TransformError:
            return False
    return True


def _integer_formula(f: ir.Expr, env: Env, tds: Env) -> bool:
    """Whether fact `f` is made only of signed integer variables, integer
    literals, arithmetic, comparisons and logic (no load, no call, no cast:
    nothing whose value could change behind the variables' backs)."""
    for _, n in walk(f):
        if isinstance(n, ir.Var):
            if n.name not in env or not _signed_integer(env[n.name], tds):
                return False
        elif not (isinstance(n, ir.Const) and n.kind == "int" or isinstance(n, ir.Ternary)
                  or isinstance(n, ir.Binop) and n.op in _ARITH + _LOGIC
                  or isinstance(n, ir.Unop) and n.op in ("-", "+", "!")):
            return False
    return True


# ----------------------------------------------------------------- hypotheses


def _assigned(node: Any) -> set[str]:
    """Variables stored into as a whole in `node`, or whose address it takes."""
    return set().union(*(written_by(n, memory=False) for _, n in walk(node)))


def _contract(fn: ir.FuncDef) -> Optional[Contract]:
    """The running script's contract of `fn` (from its spec file), else the
    clauses written in `fn`'s body."""
    try:
        found = current_session().contracts.get(fn.name)
    except ScriptError:
        found = None
    return found or contract_from_clauses(fn)


def _loop_facts(loop: ir.For, env: Env, tds: Env, pointed: set[str]) -> list[ir.Expr]:
    """What holds in the body of `loop`: `i < stop`, and for a positive
    constant step, `start <= i` and `(i - start) % step == 0`; each only if
    the body changes none of its variables (none of which may be in
    `pointed`, variables a pointer may change)."""
    i = ir.Var(loop.index)
    facts: list[ir.Expr] = [ir.Binop("<", i, loop.stop)]
    step = _value(loop.step)
    if step is not None and step > 0:
        facts.append(ir.Binop("<=", loop.start, i))
        if step > 1:
            facts.append(ir.Binop("==", ir.Binop("%", ir.Binop("-", i, loop.start), loop.step), ir.Const("0")))
    changed = _assigned(loop.body) | pointed
    return [f for f in facts if _integer_formula(f, env, tds) and not free_vars(f) & changed]


def _facts(program: ir.Program, path: Path, contract: Optional[Contract], tds: Env) -> list[ir.Expr]:
    """Facts about the local integer variables visible at `path`: the
    contract's `requires` (if the function never changes their variables)
    and the ranges of the enclosing loops; a fact is dropped where a
    declaration shadows one of its variables. Globals and variables whose
    address is taken are left out: a call or a pointer may change them."""
    fn = get(program, path[:1])
    pointed = address_taken(fn)
    facts: list[ir.Expr] = []
    if contract is not None:
        env = env_at(program, path[:1] + (("body", None),), globals=False)
        changed = _assigned(fn.body) | pointed
        facts = [f for f in contract.requires if _integer_formula(f, env, tds) and not free_vars(f) & changed]
    node = fn
    for k in range(1, len(path)):
        name, index = path[k]
        declared: set[str] = set()
        if isinstance(node, (ir.Block, ir.Case)) and name == "stmts":
            declared = {s.decl.name for s in node.stmts[:index] if isinstance(s, ir.DeclStmt) and s.decl.name}
        elif isinstance(node, ir.For) and name in ("stop", "step", "body"):
            declared = {node.index}
        elif isinstance(node, ir.GenericFor) and name != "init" and isinstance(node.init, tuple):
            declared = {d.name for d in node.init if d.name}
        facts = [f for f in facts if not free_vars(f) & declared]
        if isinstance(node, ir.For) and name == "body":
            facts += _loop_facts(node, env_at(program, path[:k + 1], globals=False), tds, pointed)
        node = get(node, (path[k],))
    return facts


# ----------------------------------------------------------------- one expression


class _Simplifier:
    """Simplifies integer expressions under facts (C expressions taken as
    true); every rewrite it makes is proved with Z3 first."""

    def __init__(self, facts: list[ir.Expr]) -> None:
        self.terms = Terms()
        self.facts = [self.terms.formula(f) for f in facts]
        self.rank: dict[ir.Expr, int] = {}
        self.unknown = False

    def proves(self, old: ir.Expr, new: ir.Expr) -> bool:
        """Whether `new` equals `old` and divides by no zero, under the facts
        and `old`'s own divisors being non-zero (the program evaluates `old`,
        and dividing by zero is undefined behaviour). Z3's 'unknown' is
        not a proof; it is remembered to be reported."""
        before = len(self.terms.divisors)
        a = self.terms.term(old)
        middle = len(self.terms.divisors)
        b = self.terms.term(new)
        defined = [d != 0 for d in self.terms.divisors[before:middle]]
        needed = [d != 0 for d in self.terms.divisors[middle:]]
        answer = settle(z3.And(a == b, *needed), self.facts + defined)
        self.unknown |= answer == "unknown"
        return answer == "proved"

    def candidate(self, e: ir.Expr) -> Optional[ir.Expr]:
        """A simpler expression equal to `e` (not yet proved as a whole), or
        None: the structure-preserving form, or the fully expanded one if it
        has fewer nodes (terms cancelled), if simpler than `e`."""
        for _, leaf in _leaves(e, ()):
            self.order(leaf)
        kept = self.local(e)
        expanded = self.render(self.poly(kept))
        best = expanded if _cost(expanded)[0] < _cost(kept)[0] else kept
        return best if _cost(best) < _cost(e) else None

    def order(self, atom: ir.Expr) -> int:
        return self.rank.setdefault(atom, len(self.rank))

    # ------------------------------------------------------------ polynomials

    def poly(self, e: ir.Expr) -> Poly:
        if isinstance(e, ir.Const) and e.kind == "int":
            v = int_literal(e.text)
            return {(): v} if v else {}
        if isinstance(e, ir.Unop) and e.op in ("-", "+"):
            p = self.poly(e.arg)
            return {m: -c for m, c in p.items()} if e.op == "-" else p
        if isinstance(e, ir.Binop) and e.op in ("+", "-", "*"):
            a, b = self.poly(e.left), self.poly(e.right)
            if e.op == "*":
                return self.times(a, b)
            return _add(a, b if e.op == "+" else {m: -c for m, c in b.items()})
        self.order(e)
        return {(e,): 1}

    def times(self, a: Poly, b: Poly) -> Poly:
        out: Poly = {}
        for ma, ca in a.items():
            for mb, cb in b.items():
                out = _add(out, {tuple(sorted(ma + mb, key=self.order)): ca * cb})
        return out

    def render(self, p: Poly) -> ir.Expr:
        """A readable expression for `p`: terms in order of appearance (the
        constant last, a positive term first), coefficients after factors."""
        terms = [(m, c) for m, c in p.items() if m] + ([((), p[()])] if () in p else [])
        return _chain([(1 if c > 0 else -1, _monomial(m, abs(c))) for m, c in terms])

    # ------------------------------------------------------------ structure-preserving form

    def local(self, e: ir.Expr) -> ir.Expr:
        if _is_sum(e):
            return self.sum(e)
        if isinstance(e, ir.Binop) and e.op == "*":
            return self.product(e)
        if isinstance(e, ir.Binop) and e.op in ("/", "%"):
            return self.division(e)
        return e

    def sum(self, e: ir.Expr) -> ir.Expr:
        """Flatten a sum, simplify each summand, and merge the summands that
        are multiples of one monomial (or equal sums); summands merged with
        nothing keep their form."""
        parts: list[tuple[int, ir.Expr]] = []
        for sign, s in _summands(e, 1):
            s2 = self.local(s)
            parts.extend(_summands(s2, sign) if s2 is not s and _is_sum(s2) else [(sign, s2)])
        groups: dict[Key, list[Any]] = {}
        for sign, s in parts:
            p = self.poly(s)
            key: Key
            if len(p) <= 1:
                (key, coeff), = p.items() if p else [((), 0)]
                coeff *= sign
            else:
                key, coeff = frozenset(p.items()), sign
            g = groups.setdefault(key, [0, sign, s, 0])
            g[0] += coeff
            g[3] += 1
        terms = []
        for key, (coeff, sign, s, count) in groups.items():
            if coeff == 0:
                continue
            if count == 1:
                terms.append((sign, s))
            elif isinstance(key, frozenset):
                terms.append((1 if coeff > 0 else -1, s if abs(coeff) == 1 else ir.Binop("*", s, _number(abs(coeff)))))
            else:
                terms.append((1 if coeff > 0 else -1, _monomial(key, abs(coeff))))
        return _chain(terms)

    def product(self, e: ir.Binop) -> ir.Expr:
        a, b = self.local(e.left), self.local(e.right)
        ka, kb = _value(a), _value(b)
        if ka is not None and kb is not None:
            return _number(ka * kb)
        for k, other in ((ka, b), (kb, a)):
            if k == 0:
                return ir.Const("0")
            if k == 1:
                return other
        node = e if a is e.left and b is e.right else ir.Binop("*", a, b)
        for x, y in ((a, b), (b, a)):
            if isinstance(x, ir.Binop) and x.op == "/" and x.right == y and self.proves(node, x.left):
                return x.left  # (n / d) * d is n when d divides n
        return node

    def division(self, e: ir.Binop) -> ir.Expr:
        """`a / b` as the quotient, `a % b` as the remainder, of the terms of
        a that b divides (b a positive constant or a monomial), when proved."""
        a, b = self.local(e.left), self.local(e.right)
        node = e if a is e.left and b is e.right else ir.Binop(e.op, a, b)
        ka, kb = _value(a), _value(b)
        if kb == 0:
            return node
        if ka is not None and kb is not None:
            return _number(int_div(ka, kb) if e.op == "/" else int_mod(ka, kb))
        if kb == 1:
            return a if e.op == "/" else ir.Const("0")
        split = self.split(self.poly(a), b, kb)
        if split is None:
            return node
        new = self.render(split[0] if e.op == "/" else split[1])
        return new if self.proves(node, new) else node

    def split(self, p: Poly, b: ir.Expr, kb: Optional[int]) -> Optional[tuple[Poly, Poly]]:
        """p as quotient and remainder terms: q * b + r == p."""
        q: Poly = {}
        r: Poly = {}
        if kb is not None:
            if kb < 0:
                return None
            for m, c in p.items():
                q, r = (_add(q, {m: c // kb}), r) if c % kb == 0 else (q, _add(r, {m: c}))
        else:
            pb = self.poly(b)
            if len(pb) != 1 or () in pb or next(iter(pb.values())) != 1:
                return None
            mb = next(iter(pb))
            for m, c in p.items():
                rest = _without(m, mb)
                q, r = (_add(q, {rest: c}), r) if rest is not None else (q, _add(r, {m: c}))
        return (q, r) if q else None


def _add(a: Poly, b: Poly) -> Poly:
    out = dict(a)
    for m, c in b.items():
        out[m] = out.get(m, 0) + c
        if out[m] == 0:
            del out[m]
    return out


def _without(m: Monomial, d: Monomial) -> Optional[Monomial]:
    """m with the factors of d removed once each, or None if d does not divide m."""
    rest = list(m)
    for f in d:
        if f not in rest:
            return None
        rest.remove(f)
    return tuple(rest)


def _summands(e: ir.Expr, sign: int) -> list[tuple[int, ir.Expr]]:
    if isinstance(e, ir.Binop) and e.op in ("+", "-"):
        return _summands(e.left, sign) + _summands(e.right, sign if e.op == "+" else -sign)
    if isinstance(e, ir.Unop) and e.op in ("-", "+"):
        return _summands(e.arg, -sign if e.op == "-" else sign)
    return [(sign, e)]


def _monomial(m: Monomial, k: int) -> ir.Expr:
    """The product of m's factors and of k > 0 (written last, left out if 1)."""
    factors = list(m) + ([ir.Const(str(k))] if k != 1 or not m else [])
    out = factors[0]
    for f in factors[1:]:
        out = ir.Binop("*", out, f)
    return out


def _chain(terms: list[tuple[int, ir.Expr]]) -> ir.Expr:
    """`t1 + t2 - t3 ...` from signed terms, starting with a positive one
    when there is one; 0 when there is none."""
    if not terms:
        return ir.Const("0")
    first = next((k for k, (sign, _) in enumerate(terms) if sign > 0), 0)
    terms = [terms[first]] + terms[:first] + terms[first + 1:]
    sign, out = terms[0]
    if sign < 0:
        out = ir.Unop("-", out)
    for sign, t in terms[1:]:
        out = ir.Binop("+" if sign > 0 else "-", out, t)
    return out


# ----------------------------------------------------------------- the transformation


def _roots(program: ir.Program, path: Path, node: Any, tds: Env) -> Iterator[Path]:
    """The maximal signed-integer arithmetic expressions under `node`, outer
    ones before those inside their operands (`a[i + 0] + 1`). The `+ 1`
    that an inclusive loop bound (`j <= i`) is stored with is left alone."""
    if _is_arith(node) and _integer_root(node, env_at(program, path), tds):
        yield path
        for p, leaf in _leaves(node, path):
            for step, c in children(leaf):
                yield from _roots(program, p + (step,), c, tds)
        return
    for step, c in children(node):
        if isinstance(node, ir.For) and node.inclusive and step == ("stop", None) and isinstance(c, ir.Binop):
            yield from _roots(program, path + (step, ("left", None)), c.left, tds)
        else:
            yield from _roots(program, path + (step,), c, tds)


@primitive
def simplify(program: ir.Program, target: str) -> Rewrite:
    """Normalise the integer arithmetic of a function, loop, instruction or
    expression: cancel and merge terms, fold constants, and resolve `/` and
    `%` that the enclosing loop ranges and the function's `requires` make
    exact.

    Before (`arith.simplify("f > for jj")`):

        for (int jj = 0; jj < N / 16; jj++) {
          for (int jjj = 0; jjj < 16; jjj++) {
            y[(jj * 16 + jjj) / 16] += x[i * N + (jj * 16 + jjj) - i * N];
          }
        }

    After (no obligation: each rewrite was proved by Z3 in this step):

        for (int jj = 0; jj < N / 16; jj++) {
          for (int jjj = 0; jjj < 16; jjj++) {
            y[jj] += x[jj * 16 + jjj];
          }
        }

    Each maximal expression of `+ - * / %` over signed integer operands is
    rewritten: sums flattened, equal terms merged or cancelled, constants
    folded, `(a * d + r) / d` to `a` and `% d` to `r` when proved, and
    `(n / d) * d` to `n` when d divides n; the result is the simpler of a
    form that keeps the written structure and the fully expanded one, terms
    in order of first appearance, and replaces the expression only if it is
    simpler (fewer nodes, then fewer parentheses). Every replacement is
    proved with Z3, over mathematical integers (see the module's note on
    overflow) with C's truncating `/` and `%`, from the facts that hold
    there: `start <= i < stop` (and the step's stride) of each enclosing
    loop whose body does not change their variables, and the `requires` of
    the function's contract (its spec in a script, else its `__requires`
    clauses) when the function does not change their variables. A rewrite Z3
    refutes is not made; one Z3 cannot settle in time is not made either,
    and a warning says so. Floating-point and unsigned expressions, and
    expressions with calls or side effects, are left unchanged (integer
    parts inside them are simplified); a target that is itself such an
    expression is refused.
    """
    res = Resolver(program)
    m = res.one(target, "function, loop, instruction or expression")
    tds = typedefs_of(program)
    if isinstance(m.node, ir.EXPR_TYPES) and not (_is_arith(m.node) and _integer_root(m.node, env_at(program, m.path),
                                                                                        tds)):
        raise TransformError(f"arith.simplify: '{expr_text(m.node)}' (line {m.line}) is not arithmetic on signed "
                             f"integers without calls or side effects; only such expressions are rewritten",
                             getattr(m.node, "loc", None))
    contract = _contract(get(program, m.path[:1]))
    new = program
    unsettled = []
    for path in reversed(list(_roots(program, m.path, m.node, tds))):
        e = get(new, path)
        s = _Simplifier(_facts(new, path, contract, tds))
        out = s.candidate(e)
        env = env_at(new, path)
        if out is not None and resolve(type_of(out, env, tds), tds) == resolve(type_of(e, env, tds), tds) \
                and s.proves(e, out):
            new = replace(new, path, out)
        elif s.unknown:
            unsettled.append(f"'{expr_text(e)}' (line {res.line(path)})")
    if unsettled:
        warnings.warn(f"arith.simplify: Z3 could not settle the rewrite of {', '.join(reversed(unsettled))} in time; "
                      f"left unchanged", RuntimeWarning)
    return Rewrite(new)


RECIPROCAL_TOLERANCE = 3 * 2.0 ** -24
"""The relative error of `a * (1.0f / b)` against the rounded `a / b`: the
reciprocal's rounding, the product's and the quotient's, half an ulp each."""


@primitive
def reciprocal(program: ir.Program, target: str) -> Rewrite:
    """Divide by a float once: `a / b` becomes `a * (1.0f / b)`, so that
    variable.bind and loop.move_out can take the reciprocal out of the
    loops, leaving a product where a division ran at every iteration (a
    division is a reciprocal and a product on the GPU, and several cycles
    on the CPU).

    Before (`arith.reciprocal("attention > expr 's / scale'")`):

        scores[j] = s / scale;

    After (no obligation; lossy, relative tolerance RECIPROCAL_TOLERANCE,
    3 x 2^-24: the reciprocal and the product each round where the
    quotient rounded once):

        scores[j] = s * (1.0f / scale);

    Refused: a target that is not a division, a division whose operands are
    not both float (a double or an integer division keeps its exact
    rounding or its truncation).
    """
    who = "arith.reciprocal"
    res = Resolver(program)
    m = res.one(target, "division", (ir.Binop,))
    e: ir.Binop = m.node
    if e.op != "/":
        raise TransformError(f"{who}: '{expr_text(e)}' (line {m.line}) is not a division", e.loc)
    env, tds = env_at(program, m.path), typedefs_of(program)
    kinds = {resolve(type_of(x, env, tds), tds) for x in (e.left, e.right)}
    if kinds != {ir.Base(("float",))}:
        raise TransformError(f"{who}: '{expr_text(e)}' (line {m.line}) does not divide a float by a float", e.loc)
    one = ir.Binop("/", ir.Const("1.0f", "float"), e.right, e.loc)
    return Rewrite(replace(program, m.path, ir.Binop("*", e.left, one, e.loc)), (), "lossy", RECIPROCAL_TOLERANCE)
