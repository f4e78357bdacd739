"""Parallel loops: OpenMP parallel_for, simd, privatize_reduction.

The three share one structural analysis of the loop body (`_sharing`):
it finds the reductions (a scalar declared outside the loop and only
updated in it as `s += e`, `s -= e`, `s = s + e`, `s = fmaxf(s, e)`,
`if (e > s) s = e;` or the min forms), which get OpenMP reduction clauses,
and it refuses what is structurally wrong: a loop with pragmas, inside or
around another parallel construct, leaving its body early (break,
continue, return, goto), or whose bounds the body changes.

Whether the iterations are independent is not decided here: that is the
obligation `parallel`, which level 2 proves or refutes from the accesses
(a shared scalar that is not a reduction, a cell every iteration writes, a
buffer a callee writes through, a global a callee writes: each is a
refutation naming the conflict, at any nesting depth).

The obligation `parallel` on the loop claims: distinct
iterations touch disjoint cells apart from the reductions, and the
functions called that are not defined in the file (named in the claim) can
run concurrently. A reduction on a float changes the order of the additions:
the step is then `fp="reassoc"`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import INCDEC, PURE_FUNCTIONS, declared_names, free_vars, fresh_name, subst
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Match, Resolver
from optitrust_py.tree import Path, children, get, replace, splice, walk
from optitrust_py.typeof import env_at, is_arithmetic, resolve, typedefs_of, unqualified
from transformations.loop import _check_bounds_stable, _in_block, _refuse_early_exit, _where

SCHEDULE_KINDS = ("static", "dynamic", "guided", "auto", "runtime")
REDUCTION_OPS = ("+", "max", "min")
_MAX_MIN = {"fmaxf": "max", "fmax": "max", "fminf": "min", "fmin": "min"}
_GREATER = {">": "max", ">=": "max", "<": "min", "<=": "min"}
_FLIP = {">": "<", ">=": "<=", "<": ">", "<=": ">="}
_LOOPS = (ir.For, ir.GenericFor, ir.While, ir.DoWhile)
_ZERO = {"float": "0.0f", "double": "0.0"}


@dataclasses.dataclass(frozen=True)
class _Sharing:
    """What the analysis found: reductions (name -> operator), whether one of
    them is on a floating type, and the impure functions called that are not
    defined in the file."""

    reductions: tuple[tuple[str, str], ...]
    floating: bool
    external_calls: tuple[str, ...]

    def clause(self, skip: str = "") -> str:
        """The reduction clauses (leaving out `skip`), each after a space."""
        out = ""
        for op in REDUCTION_OPS:
            names = [n for n, o in self.reductions if o == op and n != skip]
            if names:
                out += f" reduction({op}:{', '.join(names)})"
        return out

    def claim(self, where: str) -> str:
        red = f", apart from the reductions on {', '.join(n for n, _ in self.reductions)}" if self.reductions else ""
        calls = (f"; the calls to {', '.join(self.external_calls)} can run concurrently"
                 if self.external_calls else "")
        return f"distinct iterations of {where} touch disjoint cells{red}{calls}"


# ----------------------------------------------------------------- reductions


def _update_op(node: Any, var: str) -> Optional[str]:
    """The operator when the statement `node` is a reduction update of `var`
    (`v += e`, `v -= e`, `v = v + e`, `v = e + v`, `v = v - e`,
    `v = fmaxf(v, e)`, `if (e > v) v = e;`, and the min forms), else None."""
    v = ir.Var(var)
    if isinstance(node, ir.If):
        c = node.cond
        if node.other is not None or len(node.then.stmts) != 1 or not isinstance(c, ir.Binop) \
                or c.op not in _GREATER or v not in (c.left, c.right):
            return None
        op, e = (c.op, c.left) if c.right == v else (_FLIP[c.op], c.right)
        ok = node.then.stmts[0] == ir.ExprStmt(ir.Assign("=", v, e)) and var not in free_vars(e)
        return _GREATER[op] if ok else None
    if not (isinstance(node, ir.ExprStmt) and isinstance(node.expr, ir.Assign) and node.expr.lhs == v):
        return None
    a = node.expr
    rest: Optional[ir.Expr] = None
    op = "+"
    if a.op in ("+=", "-="):
        rest = a.rhs
    elif a.op == "=" and isinstance(a.rhs, ir.Binop) and a.rhs.op in ("+", "-"):
        r = a.rhs
        rest = r.right if r.left == v else r.left if r.op == "+" and r.right == v else None
    elif a.op == "=" and isinstance(a.rhs, ir.Call) and a.rhs.name in _MAX_MIN and len(a.rhs.args) == 2:
        others = [x for x in a.rhs.args if x != v]
        rest, op = (others[0] if len(others) == 1 else None), _MAX_MIN[a.rhs.name]
    return op if rest is not None and var not in free_vars(rest) else None


def _misuse(node: Any, var: str, path: Path, ops: set[str]) -> Optional[Path]:
    """Collect into `ops` the operators of the reduction updates of `var` in
    `node`; return the path of the first other use of `var`, if any."""
    op = _update_op(node, var)
    if op is not None:
        ops.add(op)
        return None
    if isinstance(node, ir.Var) and node.name == var:
        return path
    for step, c in children(node):
        bad = _misuse(c, var, path + (step,), ops)
        if bad is not None:
            return bad
    return None


def _own_base(lv: ir.Expr) -> Optional[str]:
    """The variable whose own storage the lvalue is (`s`, `p.f`), or None for
    a cell reached through a pointer or an index."""
    if isinstance(lv, ir.Var):
        return lv.name
    if isinstance(lv, ir.Member) and not lv.arrow:
        return _own_base(lv.base)
    return None


def _lvalues(node: Any, path: Path) -> list[tuple[Path, ir.Expr, bool]]:
    """Every lvalue written in `node`, or whose address is taken (then it
    may be written through the pointer): the path, the lvalue, and whether
    it is only its address."""
    out = []
    for p, n in walk(node, path):
        if isinstance(n, ir.Assign):
            out.append((p, n.lhs, False))
        elif isinstance(n, ir.Unop) and n.op in INCDEC + ("&",):
            out.append((p, n.arg, n.op == "&"))
    return out


# ----------------------------------------------------------------- calls


def _calls(node: Any, path: Path = ()) -> list[tuple[Path, ir.Call]]:
    return [(p, n) for p, n in walk(node, path) if isinstance(n, ir.Call) and n.name is not None]


# ----------------------------------------------------------------- the analysis


def _parallel_pragma(pragmas: tuple[str, ...]) -> Optional[str]:
    for p in pragmas:
        words = p.split()
        if words[:1] == ["omp"] and "parallel" in words:
            return p
    return None


def _enclosing_parallel(program: ir.Program, path: Path) -> Optional[str]:
    """The pragma of a parallel construct around the statement at `path`: a
    parallel loop, or a block right after `#pragma omp parallel`."""
    for k in range(len(path) - 1, 0, -1):
        node = get(program, path[:k])
        if isinstance(node, (ir.For, ir.GenericFor)) and _parallel_pragma(node.pragmas):
            return _parallel_pragma(node.pragmas)
        name, index = path[k - 1]
        if isinstance(node, ir.Block) and name == "stmts" and index:
            before = getattr(get(program, path[:k - 1]), name)[index - 1]
            if isinstance(before, ir.Pragma) and _parallel_pragma((before.text,)):
                return before.text
    return None


def _nested_parallel(body: ir.Block) -> Optional[str]:
    for _, n in walk(body):
        found = _parallel_pragma(n.pragmas if isinstance(n, (ir.For, ir.GenericFor)) else
                                 (n.text,) if isinstance(n, ir.Pragma) else ())
        if found:
            return found
    return None


def _sharing(name: str, program: ir.Program, res: Resolver, levels: list[tuple[Path, ir.For]],
             lanes: bool = False) -> _Sharing:
    """Enforce the structural conditions on the loop nest `levels` (outermost
    first; the iterations of all of them run in parallel) and find its
    reductions. With `lanes` (simd), an enclosing parallel construct is fine:
    SIMD lanes inside threads are the usual nest."""
    path, loop = levels[0]
    where = _where(res, path, loop)
    body_path = levels[-1][0] + (("body", None),)
    body = levels[-1][1].body
    for p, lp in levels:
        if lp.pragmas:
            raise TransformError(f"{name}: {_where(res, p, lp)} already has '#pragma {lp.pragmas[0]}'", lp.loc)
    outer = None if lanes else _enclosing_parallel(program, path)
    inner = _nested_parallel(body)
    if outer or inner:
        side = "is inside" if outer else "contains"
        raise TransformError(f"{name}: {where} {side} a parallel construct ('#pragma {outer or inner}'); nested "
                             f"parallelism is refused", loop.loc)
    _refuse_early_exit(name, where, body.stmts, loop)
    for p, lp in levels:
        _check_bounds_stable(name, res, p, lp, body)
    env = env_at(program, path)
    tds = typedefs_of(program)
    writes = _lvalues(body, body_path)
    assigned = {b for _, lv, _ in writes if (b := _own_base(lv)) is not None}
    reductions = []
    floating = False
    for var in sorted(assigned & set(env)):
        ops: set[str] = set()
        if _misuse(body, var, body_path, ops) is not None or len(ops) != 1 or not is_arithmetic(env[var], tds):
            continue  # shared, not a reduction: level 2 refutes the step if the iterations race on it
        reductions.append((var, ops.pop()))
        t = resolve(unqualified(env[var]), tds)
        floating |= isinstance(t, ir.Base) and bool({"float", "double"} & set(t.names))
    external = {call.name for _, call in _calls(body, body_path)
                if program.function(call.name) is None and call.name not in PURE_FUNCTIONS}
    return _Sharing(tuple(reductions), floating, tuple(sorted(external)))


def _one_loop(program: ir.Program, target: str) -> tuple[Resolver, Match]:
    res = Resolver(program)
    return res, res.one(target, "canonical for loop", (ir.For,))


def _annotate(program: ir.Program, res: Resolver, m: Match, construct: str, sharing: _Sharing) -> Rewrite:
    """The loop of `m` with the pragma `construct` and its reduction clauses."""
    new = dataclasses.replace(m.node, pragmas=(construct + sharing.clause(),))
    ob = Obligation("parallel", sharing.claim(_where(res, m.path, m.node)), m.function, (m.path,))
    return Rewrite(replace(program, m.path, new), (ob,), "reassoc" if sharing.floating else "exact")


# ----------------------------------------------------------------- parallel_for


def _schedule_clause(schedule: Optional[str], loop: ir.For) -> str:
    if schedule is None:
        return ""
    if not isinstance(schedule, str):
        raise TransformError(f"parallel.parallel_for: schedule must be a string such as 'static' or "
                             f"'dynamic, 4', got {schedule!r}", loop.loc)
    kind, comma, chunk = (x.strip() for x in schedule.partition(","))
    if kind not in SCHEDULE_KINDS:
        raise TransformError(f"parallel.parallel_for: the schedule kind must be one of {', '.join(SCHEDULE_KINDS)}, "
                             f"got {kind!r}", loop.loc)
    if comma and (not chunk.isdigit() or int(chunk) == 0 or kind in ("auto", "runtime")):
        raise TransformError(f"parallel.parallel_for: the chunk size of schedule {schedule!r} must be a positive "
                             f"integer, and schedules auto and runtime take none", loop.loc)
    return f" schedule({kind}, {int(chunk)})" if comma else f" schedule({kind})"


def _collapsed(res: Resolver, path: Path, loop: ir.For, collapse: int) -> list[tuple[Path, ir.For]]:
    """The `collapse` loops of a perfect, rectangular nest starting at `loop`."""
    if isinstance(collapse, bool) or not isinstance(collapse, int) or collapse < 1:
        raise TransformError(f"parallel.parallel_for: collapse must be a positive integer, got {collapse!r}",
                             loop.loc)
    levels = [(path, loop)]
    while len(levels) < collapse:
        p, lp = levels[-1]
        stmts = lp.body.stmts
        if len(stmts) != 1 or not isinstance(stmts[0], ir.For):
            raise TransformError(f"parallel.parallel_for: collapse({collapse}) needs a perfect nest of {collapse} "
                                 f"canonical loops, but the body of {_where(res, p, lp)} is not a single loop",
                                 loop.loc)
        inner_path, inner = p + (("body", None), ("stmts", 0)), stmts[0]
        outer_indices = {x.index for _, x in levels}
        for b in (inner.start, inner.stop, inner.step):
            if free_vars(b) & outer_indices:
                raise TransformError(f"parallel.parallel_for: the bounds of {_where(res, inner_path, inner)} "
                                     f"depend on an outer index ('{expr_text(b)}'): the nest is not rectangular, "
                                     f"so it cannot be collapsed", inner.loc)
        levels.append((inner_path, inner))
    return levels


@primitive
def parallel_for(program: ir.Program, target: str, schedule: Optional[str] = None, collapse: int = 1) -> Rewrite:
    """Run the iterations of a loop on several threads: `#pragma omp parallel for`.

    Before (`parallel.parallel_for("rmsnorm > for j#1")`):

        float ss = 0.0f;
        for (int j = 0; j < C; j++) {
          ss += x[i * C + j] * x[i * C + j];
        }

    After (obligation parallel; the sum is reassociated, fp "reassoc"):

        float ss = 0.0f;
        #pragma omp parallel for reduction(+:ss)
        for (int j = 0; j < C; j++) {
          ss += x[i * C + j] * x[i * C + j];
        }

    The clauses come from the body: `reduction(+:s)` for a sum into a scalar
    declared outside, `reduction(max:m)` / `reduction(min:m)` for
    `m = fmaxf(m, e)` or `if (e > m) m = e`; any other scalar declared
    outside and assigned inside stays shared, and level 2 refutes the step
    when the iterations race on it. `schedule` adds `schedule(static)`, `schedule(dynamic, 4)`...
    (kind, then an optional chunk size); `collapse=2` adds `collapse(2)` on a
    perfect nest of two loops whose inner bounds do not use the outer index
    (`parallel.parallel_for("matmul > for i", collapse=2)`), and the analysis
    covers the iterations of both.
    """
    res, m = _one_loop(program, target)
    path, loop = m.path, m.node
    sched = _schedule_clause(schedule, loop)
    levels = _collapsed(res, path, loop, collapse)
    sharing = _sharing("parallel.parallel_for", program, res, levels)
    coll = f" collapse({collapse})" if collapse > 1 else ""
    return _annotate(program, res, m, f"omp parallel for{coll}{sched}", sharing)


# ----------------------------------------------------------------- simd


@primitive
def simd(program: ir.Program, target: str) -> Rewrite:
    """Run the iterations of an innermost loop in SIMD lanes: `#pragma omp simd`.

    Before (`parallel.simd("attention > for d#1")`):

        float s = 0.0f;
        for (int d = 0; d < D; d++) {
          s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
        }

    After (obligation parallel; the sum is reassociated, fp "reassoc"):

        float s = 0.0f;
        #pragma omp simd reduction(+:s)
        for (int d = 0; d < D; d++) {
          s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
        }

    The loop must contain no other loop. Clauses and refusals are those of
    `parallel_for` (minus schedule and collapse); the obligation is the same,
    stronger than SIMD needs (no dependence between iterations at a distance
    shorter than the vector length), and simpler to prove. `omp simd` inside
    a `parallel for` is the usual nest and is accepted.
    """
    res, m = _one_loop(program, target)
    path, loop = m.path, m.node
    inner = next((n for _, n in walk(loop.body) if isinstance(n, _LOOPS)), None)
    if inner is not None:
        raise TransformError(f"parallel.simd: {_where(res, path, loop)} is not an innermost loop: it contains "
                             f"'{stmt_text(inner).splitlines()[0]}'", loop.loc)
    sharing = _sharing("parallel.simd", program, res, [(path, loop)], lanes=True)
    return _annotate(program, res, m, "omp simd", sharing)


# ----------------------------------------------------------------- privatize_reduction


@primitive
def privatize_reduction(program: ir.Program, target: str, var: str) -> Rewrite:
    """Parallelize a sum into a scalar with explicit per-thread partial sums.

    Before (`parallel.privatize_reduction("rmsnorm > for j#1", "ss")`):

        float ss = 0.0f;
        for (int j = 0; j < C; j++) {
          ss += x[i * C + j] * x[i * C + j];
        }

    After (obligation parallel on the `omp for` loop; fp "reassoc"):

        float ss = 0.0f;
        #pragma omp parallel
        {
          float ss_p = 0.0f;
          #pragma omp for
          for (int j = 0; j < C; j++) {
            ss_p += x[i * C + j] * x[i * C + j];
          }
          #pragma omp atomic
          ss += ss_p;
        }

    What `reduction(+:ss)` does, spelled out, so that later steps (or a GPU
    port) can work on the partial sums. `var` must be declared before the
    loop and updated in it only as a sum (`s += e`, `s -= e`, `s = s + e`);
    max/min reductions are refused (use `parallel_for`, which writes
    `reduction(max:m)`). Other reductions of the loop go to a `reduction`
    clause of the `omp for`; the rest is analysed and refused as for
    `parallel_for`. The partial sum is named `<var>_p` (made fresh).
    """
    name = "parallel.privatize_reduction"
    res, m = _one_loop(program, target)
    path, loop = m.path, m.node
    where = _where(res, path, loop)
    block, k = _in_block(name, res, path, loop)
    sharing = _sharing(name, program, res, [(path, loop)])
    op = dict(sharing.reductions).get(var)
    if op != "+":
        why = f"its updates are a {op} reduction; use parallel.parallel_for" if op else \
            "it is not a reduction: a scalar declared before the loop and only updated in it, by one operator"
        raise TransformError(f"{name}: '{var}' cannot be privatized in {where}: {why}", loop.loc)
    vtype = unqualified(env_at(program, path)[var])
    t = resolve(vtype, typedefs_of(program))
    zero = next((ir.Const(text, "float") for n, text in _ZERO.items() if isinstance(t, ir.Base) and n in t.names),
                ir.Const("0"))
    fn = program.items[path[0][1]]
    private = fresh_name(declared_names(fn) | free_vars(fn), f"{var}_p")
    partial = dataclasses.replace(sharing, reductions=tuple((private if n == var else n, o)
                                                            for n, o in sharing.reductions))
    worker = dataclasses.replace(loop, body=subst(loop.body, {var: ir.Var(private)}),
                                 pragmas=("omp for" + partial.clause(skip=private),))
    region = ir.Block((ir.DeclStmt(ir.Decl(private, vtype, zero)), worker, ir.Pragma("omp atomic"),
                       ir.ExprStmt(ir.Assign("+=", ir.Var(var), ir.Var(private)))))
    new = splice(program, path, (ir.Pragma("omp parallel"), region))
    worker_path = block + (("stmts", k + 1), ("stmts", 1))
    ob = Obligation("parallel", partial.claim(_where(Resolver(new), worker_path, worker)), m.function,
                    (worker_path,))
    return Rewrite(new, (ob,), "reassoc" if sharing.floating else "exact")
