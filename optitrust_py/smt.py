"""Integer arithmetic of the IR as Z3 terms, for the facts transformations
must prove before they rewrite (a stride, an exact division). A query that Z3
cannot settle within its time limit counts as not proved."""
from __future__ import annotations

from typing import Iterable, Optional

import z3

from . import ir
from .contract import int_literal
from .names import subst

TIMEOUT_MS = 10000
RLIMIT = 3_000_000
"""Z3's deterministic work limit per query: a query that needs more is
'unknown' however loaded the machine is (the wall-clock TIMEOUT_MS is only
a backstop), so a proof never depends on the machine's speed."""


def solver(flattened: bool = False) -> z3.Solver:
    """A solver with the work limit. `flattened`: one that first names each
    `If` and each division's operands (Z3's tactics purify-arith and
    elim-term-ite), which settles at once the lane digits `w / 32`, `w %
    32 / 4`, `w % 4` of two threads that its default strategy case-splits
    past the limit (gpu.warp_rows' mma form: 0.01 s against unknown)."""
    s = z3.Then("simplify", "purify-arith", "elim-term-ite", "smt").solver() if flattened else z3.Solver()
    s.set("rlimit", RLIMIT)
    s.set("timeout", TIMEOUT_MS)
    return s


def int_term(e: ir.Expr) -> Optional[z3.ArithRef]:
    """`e` over mathematical integers, or None where it leaves +, -, * of
    integer literals and variables (variables are free Z3 integers)."""
    if isinstance(e, ir.Const) and e.kind == "int":
        try:
            return z3.IntVal(int(e.text.rstrip("uUlL"), 0))
        except ValueError:
            return None
    if isinstance(e, ir.Var):
        return z3.Int(e.name)
    if isinstance(e, ir.Unop) and e.op == "-":
        a = int_term(e.arg)
        return None if a is None else -a
    if isinstance(e, ir.Binop) and e.op in ("+", "-", "*"):
        a, b = int_term(e.left), int_term(e.right)
        if a is None or b is None:
            return None
        return a + b if e.op == "+" else a - b if e.op == "-" else a * b
    return None


def proves(claim: z3.BoolRef, hypotheses: Iterable[z3.BoolRef] = ()) -> bool:
    """Whether `claim` holds for every value of its variables that satisfies
    the hypotheses (unsat of the negation; unknown is not a proof)."""
    return _check([*hypotheses, z3.Not(claim)])[0] == z3.unsat


def _check(formulas: list[z3.BoolRef]) -> tuple[z3.CheckSatResult, Optional[z3.ModelRef], str]:
    """Z3's answer on `formulas` together, asked again of the flattened
    solver where the default one gives up: the answer, a model when sat,
    and why the first solver gave up when neither decides."""
    why = ""
    for flattened in (False, True):
        s = solver(flattened)
        s.add(*formulas)
        answer = s.check()
        if answer != z3.unknown:
            return answer, s.model() if answer == z3.sat else None, ""
        why = why or unknown_reason(s)
    return z3.unknown, None, why


# ----------------------------------------------------------------- C semantics, opaque parts, three-way answers


def c_div(a: z3.ArithRef, b: z3.ArithRef) -> z3.ArithRef:
    """C's `/` on Z3 integers: the quotient truncated toward zero (Z3's own
    `/` rounds down for a positive divisor). Meaningless when b is 0. Built
    once per pair of operands: level 2's lemmas ask for the same remainders
    again and again, and building a term through Z3's Python API is slow."""
    key = (a.get_id(), b.get_id())
    got = _DIVIDED.get(key)
    if got is not None:
        return got[0]
    q = z3.If(a >= 0, a, -a) / z3.If(b >= 0, b, -b)
    out = z3.If((a >= 0) == (b >= 0), q, -q)
    if len(_QUOTIENTS) > _QUOTIENTS_MAX:
        _QUOTIENTS.clear()
        _DIVIDED.clear()
    _QUOTIENTS[out.get_id()] = (out, a, b)
    _DIVIDED[key] = (out, a, b)
    return out


_QUOTIENTS: dict[int, tuple[z3.ArithRef, z3.ArithRef, z3.ArithRef]] = {}
"""Every `c_div(a, b)` term built, by its Z3 id: (term, a, b), so that
`satisfy` can name quotients by variables (forgetting them is harmless)."""
_QUOTIENTS_MAX = 200_000
_DIVIDED: dict[tuple[int, int], tuple[z3.ArithRef, z3.ArithRef, z3.ArithRef]] = {}
"""`c_div`'s terms by the ids of their operands (kept, so the ids stay theirs)."""


def c_mod(a: z3.ArithRef, b: z3.ArithRef) -> z3.ArithRef:
    """C's `%`: the remainder has the sign of the dividend."""
    return a - b * c_div(a, b)


def settle(claim: z3.BoolRef, hypotheses: Iterable[z3.BoolRef] = ()) -> str:
    """'proved', 'refuted' (a counterexample exists) or 'unknown' (time
    limit, or beyond what Z3 decides): only 'proved' may be relied on."""
    s = solver()
    s.add(*hypotheses)
    s.add(z3.Not(claim))
    answer = s.check()
    return "proved" if answer == z3.unsat else "refuted" if answer == z3.sat else "unknown"


_SIGNED_INTEGER = {"int", "long", "short", "signed", "ptrdiff_t"}

_COMPARE = {"<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}


class Terms:
    """Integer expressions and formulas of the IR as Z3 terms over
    mathematical integers, with C's meaning of `/`, `%` (truncating),
    comparisons, `&&`, `||`, `!` and `?:`. Any other subexpression (a load
    `a[i]`, a cast, a call, a char literal) is *opaque*: one integer constant
    per distinct subexpression, shared by every term this object builds, so
    the caller must make sure it has one value wherever it is used.
    `divisors` lists the divisor of every `/` and `%` encoded so far, and
    `facts` what is known of opaque values (`x & 63` lies in 0..63): callers
    add them to their hypotheses. A cast to a signed integer type is taken
    as the identity (the checker assumes index arithmetic does not wrap). Terms
    objects with different `tag`s never share an opaque constant."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.opaque: dict[ir.Expr, z3.ArithRef] = {}
        self.facts: list[z3.BoolRef] = []
        self.divisors: list[z3.ArithRef] = []

    def term(self, e: ir.Expr) -> z3.ArithRef:
        if isinstance(e, ir.Const) and e.kind == "int":
            return z3.IntVal(int_literal(e.text))
        if isinstance(e, ir.Var):
            return z3.Int(e.name)
        if isinstance(e, ir.Unop) and e.op in ("-", "+"):
            a = self.term(e.arg)
            return -a if e.op == "-" else a
        if isinstance(e, ir.Binop) and e.op in ("+", "-", "*", "/", "%"):
            a, b = self.term(e.left), self.term(e.right)
            if e.op in ("/", "%"):
                self.divisors.append(b)
                return c_div(a, b) if e.op == "/" else c_mod(a, b)
            return a + b if e.op == "+" else a - b if e.op == "-" else a * b
        if isinstance(e, ir.Ternary):
            return z3.If(self.formula(e.cond), self.term(e.then), self.term(e.other))
        if isinstance(e, ir.Cast) and isinstance(e.type, ir.Base) and set(e.type.names) <= _SIGNED_INTEGER:
            return self.term(e.arg)
        if isinstance(e, ir.Binop) and e.op == "&":
            mask = next((int_literal(x.text) for x in (e.left, e.right)
                         if isinstance(x, ir.Const) and x.kind == "int" and int_literal(x.text) >= 0), None)
            if mask is not None:
                v = self._opaque(e)
                self.facts.extend((v >= 0, v <= mask))
                return v
        if _is_formula(e):
            return z3.If(self.formula(e), z3.IntVal(1), z3.IntVal(0))
        return self._opaque(e)

    def _opaque(self, e: ir.Expr) -> z3.ArithRef:
        if e not in self.opaque:
            self.opaque[e] = z3.Int(f"{len(self.opaque)}:opaque{self.tag}")
        return self.opaque[e]

    def formula(self, e: ir.Expr) -> z3.BoolRef:
        """`e` as a truth value (non-zero is true, as in a C condition)."""
        if isinstance(e, ir.Binop) and e.op in _COMPARE:
            return _COMPARE[e.op](self.term(e.left), self.term(e.right))
        if isinstance(e, ir.Binop) and e.op in ("&&", "||"):
            a, b = self.formula(e.left), self.formula(e.right)
            return z3.And(a, b) if e.op == "&&" else z3.Or(a, b)
        if isinstance(e, ir.Unop) and e.op == "!":
            return z3.Not(self.formula(e.arg))
        return self.term(e) != 0


def loop_facts(terms: Terms, loops: Iterable[ir.For], rename: dict[str, ir.Expr]) -> list[z3.BoolRef]:
    """`v = start + step * n, n >= 0, v < stop` for each loop of a positive
    literal step (the others say nothing), its names renamed by `rename`:
    what holds of the indices inside the loops."""
    out = []
    for lp in loops:
        if not (isinstance(lp.step, ir.Const) and lp.step.text.isdigit() and int(lp.step.text) > 0):
            continue
        v, n = terms.term(subst(ir.Var(lp.index), rename)), z3.Int(f"n_{lp.index}_{len(rename)}")
        start, stop = terms.term(subst(lp.start, rename)), terms.term(subst(lp.stop, rename))
        out += [v == start + int(lp.step.text) * n, n >= 0, v < stop]
    return out


QUOTIENT = "quotient:"
"""The prefix of the witnesses' names: each one's value follows from the
values of x and y, so a model that shows them is reachable."""


def quotient_witnesses(facts: Iterable[ir.Expr], terms: Terms) -> list[z3.BoolRef]:
    """For each fact `x % y == 0` (or `0 == x % y`), `x == y * q` with q a
    fresh integer, and the exact quotients it makes (`x / y` is q when y is
    not 0, `x / q` is y when q is not 0): consequences of the fact (q is
    C's `x / y`) that Z3's non-linear arithmetic does not find by itself;
    with them, `H % KVH == 0` proves at once that `H / KVH` divides H and
    that `H / (H / KVH)` is KVH."""
    out: list[z3.BoolRef] = []
    for f in facts:
        if not (isinstance(f, ir.Binop) and f.op == "=="):
            continue
        for mod, zero in ((f.left, f.right), (f.right, f.left)):
            if isinstance(mod, ir.Binop) and mod.op == "%" and zero == ir.Const("0"):
                q = z3.Int(f"{QUOTIENT}{len(out)}{terms.tag}")
                x, y = terms.term(mod.left), terms.term(mod.right)
                out += [x == y * q, z3.Implies(y != 0, c_div(x, y) == q), z3.Implies(q != 0, c_div(x, q) == y)]
                break
    return out


def _is_formula(e: ir.Expr) -> bool:
    return isinstance(e, ir.Binop) and e.op in tuple(_COMPARE) + ("&&", "||") or isinstance(e, ir.Unop) and e.op == "!"


# ----------------------------------------------------------------- queries with non-linear hypotheses


def satisfy(hypotheses: Iterable[z3.BoolRef], constraints: Iterable[z3.BoolRef]) \
        -> tuple[str, Optional[z3.ModelRef], str]:
    """Whether hypotheses and constraints hold together: ('sat', a model,
    ''), ('unsat', None, '') or ('unknown', None, why). Non-linear
    hypotheses (`dim % H == 0`) make Z3 slow even when the question does
    not need them, so it first asks without them when the question itself
    is linear (decided at once): no solution then means none with them
    either. Next it asks with each quotient by a variable named
    (`_with_named_quotients`), then without the non-linear hypotheses
    whatever the question: a solution that happens to satisfy them is one.
    Then it looks for a solution with every divisor variable set to 1, 2
    or 4 (which leaves linear arithmetic), and only then asks the whole
    question, once more with the `If`s and divisions named when Z3's
    default strategy gives up."""
    hyps, cons = list(hypotheses), list(constraints)
    hard = [h for h in hyps if _nonlinear(h)]
    if hard:
        easy = solver()
        easy.add(*(h for h in hyps if not _nonlinear(h)), *cons)
        linear = not any(_nonlinear(c) for c in cons)
        answer = easy.check() if linear else None
        if answer == z3.unsat:
            return "unsat", None, ""
        quotient_answer, model = _with_named_quotients(hyps, cons)
        if quotient_answer == "unsat" or model is not None:
            return quotient_answer, model, ""
        answer = easy.check() if answer is None else answer
        if answer == z3.unsat:
            return "unsat", None, ""
        if answer == z3.sat and all(z3.is_true(easy.model().eval(h, model_completion=True)) for h in hard):
            return "sat", easy.model(), ""
        divisors = _divisor_vars(hard + cons)
        for value in SMALL_DIVISORS:
            s = solver()
            s.add(*hyps, *cons, *(v == value for v in divisors))
            if s.check() == z3.sat:
                return "sat", s.model(), ""
    answer, model, why = _check(hyps + cons)
    return ("sat" if answer == z3.sat else "unsat" if answer == z3.unsat else "unknown"), model, why


def unknown_reason(s: z3.Solver) -> str:
    """Why a query came back unknown, in words."""
    why = s.reason_unknown()
    return "Z3's work limit was reached" if why == "canceled" else why


SMALL_DIVISORS = (1, 2, 4)
_DIVISIONS = (z3.Z3_OP_IDIV, z3.Z3_OP_MOD, z3.Z3_OP_REM, z3.Z3_OP_DIV)


def _nonlinear(e: z3.ExprRef) -> bool:
    return any(_is_nonlinear_node(n) for n in _subterms(e))


def _is_nonlinear_node(n: z3.ExprRef) -> bool:
    return _facts(n)[1]


_FACTS: dict[int, tuple[z3.ExprRef, tuple[Optional[int], bool]]] = {}
"""Each term's operator kind and whether it is non-linear, by its id (kept,
so the id stays its own): every query asks again of the hypotheses'
terms, and each question through Z3's Python API costs several calls."""


def _facts(n: z3.ExprRef) -> tuple[Optional[int], bool]:
    got = _FACTS.get(n.get_id())
    if got is None:
        kind = n.decl().kind() if z3.is_app(n) else None
        nonlinear = (not z3.is_int_value(n.arg(1))) if kind in _DIVISIONS else \
            sum(not z3.is_int_value(a) for a in n.children()) > 1 if kind == z3.Z3_OP_MUL else False
        if len(_FACTS) >= _WALKED_MAX * 10:
            _FACTS.clear()
        got = _FACTS[n.get_id()] = (n, (kind, nonlinear))
    return got[1]


def _divisor_vars(exprs: Iterable[z3.ExprRef]) -> list[z3.ArithRef]:
    out: dict[str, z3.ArithRef] = {}
    for e in exprs:
        for n in _subterms(e):
            if z3.is_app(n) and n.decl().kind() in _DIVISIONS and not z3.is_int_value(n.arg(1)):
                for v in _subterms(n.arg(1)):
                    if z3.is_const(v) and not z3.is_int_value(v):
                        out[str(v)] = v
    return list(out.values())


def _subterms(e: z3.ExprRef) -> list[z3.ExprRef]:
    return _subterms_of([e])


_WALKED: dict[int, tuple[z3.ExprRef, dict[int, z3.ExprRef]]] = {}
"""Each formula's subterms, by the formula (kept, so its id stays its own):
the requires and loop ranges are the hypotheses of most queries, and
walking them through z3's Python API cost a quarter of level 2."""
_WALKED_MAX = 20000


def _subterms_of(exprs: Iterable[z3.ExprRef]) -> list[z3.ExprRef]:
    """The distinct subterms of some formulas, each once."""
    seen: dict[int, z3.ExprRef] = {}
    for e in exprs:
        got = _WALKED.get(e.get_id())
        if got is None:
            if len(_WALKED) >= _WALKED_MAX:
                _WALKED.clear()
            got = _WALKED[e.get_id()] = (e, _walk(e))
        seen.update(got[1])
    return list(seen.values())


def _walk(e: z3.ExprRef) -> dict[int, z3.ExprRef]:
    seen: dict[int, z3.ExprRef] = {}
    todo = [e]
    while todo:
        n = todo.pop()
        if n.get_id() in seen:
            continue
        seen[n.get_id()] = n
        if z3.is_app(n):
            todo.extend(n.children())
    return seen


def _with_named_quotients(hyps: list[z3.BoolRef], cons: list[z3.BoolRef]) -> tuple[str, Optional[z3.ModelRef]]:
    """The query with each quotient `a / b` by a non-constant b replaced by
    a variable d tied to it by division's definition (when b != 0: a == b*d
    + r with r between 0 and b, of a's sign), plus two kinds of lemmas that
    hold for all integers and that Z3's non-linear arithmetic does not find
    by itself: an exact quotient of a multiple (`a == b * d'` makes
    `(a * y) / b` equal to `d' * y`), a product of a multiple of c is a
    multiple of c (`(dim / H) % 2 == 0` makes `dim` even), and products
    with a common non-negative factor grow with the other factor (`t < T`
    makes `t * kv_dim + kv_dim <= T * kv_dim`); signs of products and of
    quotients of non-negative numbers. It asks first with the
    products named too (linear arithmetic, which the lemmas often settle). Every model of
    the query gives one of the named query (d its quotient), so 'unsat' is
    a proof; a model is returned only when it satisfies the query itself."""
    terms = _quotients(hyps + cons)
    named = [q for q in terms if not z3.is_int_value(q[2])]
    var = {q[0].get_id(): z3.Int(f"{k}:quotient") for k, q in enumerate(named)}
    sub = [(q[0], var[q[0].get_id()]) for q in named]

    def named_in(e: z3.ExprRef) -> z3.ExprRef:
        return z3.substitute(e, *sub) if sub else e

    defs: list[z3.BoolRef] = []
    for k, (q, a, b) in enumerate(named):
        d, r, a2, b2 = var[q.get_id()], z3.Int(f"{k}:remainder"), named_in(a), named_in(b)
        size = z3.If(b2 >= 0, b2, -b2)
        defs.append(z3.Implies(b2 != 0, z3.And(a2 == b2 * d + r, r > -size, r < size,
                                                z3.Implies(a2 >= 0, r >= 0), z3.Implies(a2 <= 0, r <= 0))))
        defs.append(z3.Implies(z3.And(a2 >= 0, b2 > 0), z3.And(d >= 0, d <= a2)))
    for q, a, b in named:
        for q2, a2, b2 in named:
            if q2 is not q and b2.eq(b) and _is_mul(a) and any(f.eq(a2) for f in a.children()):
                rest = _product([f for f in a.children() if not f.eq(a2)] or [z3.IntVal(1)])
                defs.append(z3.Implies(z3.And(b != 0, a2 == b * var[q2.get_id()]),
                                       var[q.get_id()] == var[q2.get_id()] * named_in(rest)))
    body = [named_in(z3.And(*hyps, *cons, *defs))]  # one call: each call checks every pair
    moduli = {q[2].as_long() for q in terms if z3.is_int_value(q[2]) and q[2].as_long() > 1}
    products = [m for m in _subterms_of(body) if _is_mul(m) and _is_nonlinear_node(m) and m.num_args() == 2]
    lemmas = [z3.Implies(c_mod(f, z3.IntVal(c)) == 0, c_mod(m, z3.IntVal(c)) == 0)
              for m in products for f in m.children() for c in sorted(moduli)]
    sharing: dict[int, list[tuple[int, int]]] = {}  # a factor (by id) -> the products with it, and where
    for k, m in enumerate(products):
        for i in (0, 1):
            sharing.setdefault(m.arg(i).get_id(), []).append((k, i))
    lemmas += [lemma for pairs in sharing.values() for k, i in pairs for k2, j in pairs if k2 != k
               for lemma in _monotone(products[k], i, products[k2], j)]
    lemmas += [z3.Implies(z3.And(m.arg(0) >= 0, m.arg(1) >= 0), m >= 0) for m in products]
    if not named and not lemmas:
        return "unknown", None
    s = solver()
    s.add(*_products_named(body + lemmas))
    if s.check() == z3.unsat:
        return "unsat", None
    s = solver()
    s.add(*body, *lemmas)
    answer = s.check()
    if answer == z3.unsat:
        return "unsat", None
    if answer == z3.sat and all(z3.is_true(s.model().eval(e, model_completion=True)) for e in hyps + cons):
        return "sat", s.model()
    return "unknown", None


def _products_named(formulas: list[z3.BoolRef]) -> list[z3.BoolRef]:
    """The formulas with each product of variables replaced by a variable:
    linear, so decided at once, and weaker (a model of the formulas is one
    of these), so that 'unsat' here is 'unsat' there; the lemmas given with
    them carry what is known of the products."""
    products = [m for m in _subterms_of(formulas) if _is_mul(m) and _is_nonlinear_node(m)]
    sub = [(m, z3.Int(f"{k}:product")) for k, m in enumerate(products)]
    return [z3.substitute(z3.And(*formulas), *sub)] if sub else formulas  # one call: each checks every pair


def _monotone(m: z3.ArithRef, i: int, m2: z3.ArithRef, j: int) -> list[z3.BoolRef]:
    """For products a*y and b*y of a common factor y >= 0 (argument i of m,
    j of m2): a <= b makes a*y <= b*y, and a < b makes a*y + y <= b*y
    (facts of all integers)."""
    y, a, b = m.arg(i), m.arg(1 - i), m2.arg(1 - j)
    return [z3.Implies(z3.And(y >= 0, a <= b), m <= m2), z3.Implies(z3.And(y >= 0, a < b), m + y <= m2)]


def _quotients(exprs: list[z3.BoolRef]) -> list[tuple[z3.ArithRef, z3.ArithRef, z3.ArithRef]]:
    return [_QUOTIENTS[n.get_id()] for n in _subterms_of(exprs) if n.get_id() in _QUOTIENTS
            and _QUOTIENTS[n.get_id()][0].eq(n)]


def _is_mul(e: z3.ExprRef) -> bool:
    return _facts(e)[0] == z3.Z3_OP_MUL


def _product(factors: list[z3.ArithRef]) -> z3.ArithRef:
    out = factors[0]
    for f in factors[1:]:
        out = out * f
    return out
