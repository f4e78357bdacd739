"""Mixture-of-experts transformations: dispatch the per-token work items
to a loop over experts, push the expert test into the loops of an item, and
`regroup`, which composes them with fission and swaps so that each expert
runs its FFN on all its tokens at once (its weights streamed once per batch,
not once per token)."""
from __future__ import annotations

import dataclasses

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import free_vars, has_side_effects, writes_of
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text
from optitrust_py.session import Rewrite, composite, current_session, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, get, replace, splice, walk
from transformations import loop as loops
from transformations.loop import _loop_amount, _refuse_annotated, _refuse_early_exit, _where

ZERO = ir.Const("0")


def _item_nest(name: str, res: Resolver, path: Path, outer: ir.For) -> list[tuple[Path, ir.For]]:
    """The loops from `outer` down while a body is exactly one loop: the
    nest whose iterations are the work items."""
    nest = [(path, outer)]
    while len(nest[-1][1].body.stmts) == 1:
        p, child = nest[-1][0], nest[-1][1].body.stmts[0]
        if not isinstance(child, ir.For):
            break
        nest.append((p + (("body", None), ("stmts", 0)), child))
    for p, lp in nest:
        _refuse_annotated(name, "dispatch before annotating the loops", _where(res, p, lp), lp)
    return nest


def _selector(name: str, inner: ir.For, where: str, expert: str) -> ir.Expr:
    """The selector of the item's first statement, `int expert = <selector>;`."""
    first = inner.body.stmts[0] if inner.body.stmts else None
    d = first.decl if isinstance(first, ir.DeclStmt) else None
    if d is None or d.name != expert or d.init is None or not isinstance(d.type, ir.Base) \
            or not set(d.type.names) & {"int", "long", "short"}:
        raise TransformError(f"{name}: the body of {where} does not start with the integer declaration "
                             f"'int {expert} = ...;' that names the item's expert", inner.loc)
    if has_side_effects(d.init):
        raise TransformError(f"{name}: the expert '{expr_text(d.init)}' has side effects", d.loc)
    return d.init


def _reductions(body: ir.Block) -> tuple[str, ...]:
    """The arrays the items only add into (`out[...] += ...`): the updates
    that may be reordered; any other access to them stays a conflict."""
    adds: set[str] = set()
    other: set[str] = set()
    for _, n in walk(body):
        if isinstance(n, ir.Assign) and isinstance(n.lhs, ir.Index):
            base: ir.Expr = n.lhs
            while isinstance(base, ir.Index):
                base = base.base
            if isinstance(base, ir.Var):
                (adds if n.op == "+=" else other).add(base.name)
    return tuple(sorted(adds - other))


@primitive
def dispatch(program: ir.Program, target: str, expert: str = "e", experts: str = "E") -> Rewrite:
    """Run the work items of a loop nest expert by expert: an outer loop
    over the experts, and in it the items whose expert it is, in their
    original order.

    Before (`moe.dispatch("moe > for t#2")`):

        for (int t = 0; t < T; t++) {
          for (int s = 0; s < K; s++) {
            int e = sel[t * K + s];
            ... the FFN of expert e on token t, out[t * dim + i] += ...
          }
        }

    After (obligations parallel over the items (t, s) with the reduction
    out, pure: no item changes its own sel[t * K + s], and in_range:
    0 <= sel[t * K + s] <= E - 1):

        for (int e = 0; e < E; e++) {
          for (int t = 0; t < T; t++) {
            for (int s = 0; s < K; s++) {
              if (sel[t * K + s] == e) {
                ... the FFN of expert e on token t, out[t * dim + i] += ...
              }
            }
          }
        }

    `target` is the outermost loop of the item nest (loops whose bodies are
    one loop); the innermost body starts with `int <expert> = <selector>;`.
    The expert loop takes that name, so the rest of the item is unchanged.
    Each item now runs inside the iteration of its expert and the items
    of different experts change order: valid when distinct items touch
    disjoint cells apart from the arrays they only add into (obligation
    parallel on the nest, with those reductions: a scratch buffer the items
    share must be expanded first) and when every selector is an expert
    number, 0 .. experts - 1 (in_range), and stays the same while its item
    runs (pure), so that each item runs exactly once. The additions into an output cell happen in another order: fp
    reassoc. Refused for a nest with pragmas or a contract, bodies that
    leave early, a selector with side effects, bounds or an expert count
    that use the expert's name or that the items write.
    """
    name = "moe.dispatch"
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    nest = _item_nest(name, res, m.path, m.node)
    inner_path, inner = nest[-1]
    where = _where(res, inner_path, inner)
    selector = _selector(name, inner, where, expert)
    if len(inner.body.stmts) < 2:
        raise TransformError(f"{name}: the items of {where} do nothing after naming their expert", inner.loc)
    _refuse_early_exit(name, where, inner.body.stmts, inner)
    count = _loop_amount(name, "the expert count", experts, program, m.path, m.function, m.node,
                         _where(res, m.path, m.node))
    bounds = [e for _, lp in nest for e in (lp.start, lp.stop, lp.step)]
    used = set().union(*(free_vars(e) for e in bounds)) | free_vars(selector) | free_vars(count)
    if expert in used or expert in {lp.index for _, lp in nest} | writes_of(inner.body):
        raise TransformError(f"{name}: '{expert}' is used by the bounds of the nest, the selector or the expert "
                             f"count, where the expert loop would capture it, or assigned by the item", inner.loc)
    hit = sorted(writes_of(m.node.body) & set().union(*(free_vars(e) for e in bounds)))
    if hit:
        raise TransformError(f"{name}: the items write '{hit[0]}', which the bounds of the nest read", m.node.loc)
    guard = ir.If(ir.Binop("==", selector, ir.Var(expert)), ir.Block(inner.body.stmts[1:]))
    body = dataclasses.replace(inner.body, stmts=(guard,))
    items = replace(m.node, inner_path[len(m.path):], dataclasses.replace(inner, body=body)) \
        if len(nest) > 1 else dataclasses.replace(inner, body=body)
    group = ir.For(expert, ZERO, count, ir.Block((items,)), loc=m.node.loc)
    depth = str(len(nest))
    indices = ", ".join(lp.index for _, lp in nest)
    reductions = _reductions(inner.body)
    item = inner_path + (("body", None),)
    obligations = (
        Obligation("parallel", f"distinct items ({indices}) of {_where(res, m.path, m.node)} touch disjoint cells"
                   + (f" apart from their additions into {', '.join(reductions)}" if reductions else ""),
                   m.function, (m.path,), (ir.Const(depth),), before=True, names=reductions),
        Obligation("pure", f"no item changes its expert '{expr_text(selector)}', which is now tested once per "
                   f"expert", m.function, tuple(item + (("stmts", k),) for k in (0, len(inner.body.stmts) - 1)),
                   (selector,), before=True),
        Obligation("in_range", f"the expert '{expr_text(selector)}' of every item lies in 0 .. "
                   f"{expr_text(count)} - 1", m.function, (item + (("stmts", 0),),),
                   (ZERO, selector, ir.Binop("-", count, ir.Const("1"))), before=True),
    )
    return Rewrite(replace(program, m.path, group), obligations, fp="reassoc")


@primitive
def sink_guard(program: ir.Program, target: str) -> Rewrite:
    """Push an `if` into the statements of its branch: each loop of the
    branch tests the condition at every iteration, each other statement
    under its own copy of the `if`; what lets loops inside a dispatched
    item be split off and swapped outward.

    Before (`moe.sink_guard("moe > 'if (sel[t * K + s] == e)'")`):

        if (sel[t * K + s] == e) {
          for (int i = 0; i < hidden; i++) {
            hb[i] = ...;
          }
          out[t] += hb[0];
        }

    After (obligation pure: nothing in the branch writes what the
    condition reads):

        for (int i = 0; i < hidden; i++) {
          if (sel[t * K + s] == e) {
            hb[i] = ...;
          }
        }
        if (sel[t * K + s] == e) {
          out[t] += hb[0];
        }

    The condition keeps its value through the branch, so each copy decides
    as the single test did; a loop whose condition is false runs empty
    iterations. Refused for an if with an else branch, a condition with
    side effects, a branch that declares names at its top level or leaves
    early, a loop of the branch whose index the condition reads, whose
    bounds have side effects, or that has pragmas or a contract.
    """
    name = "moe.sink_guard"
    res = Resolver(program)
    m = res.one(target, "if statement", (ir.If,))
    branch: ir.If = m.node
    what = f"the if of '{expr_text(branch.cond)}' (line {m.line})"
    if branch.other is not None:
        raise TransformError(f"{name}: {what} has an else branch", branch.loc)
    if has_side_effects(branch.cond):
        raise TransformError(f"{name}: the condition of {what} has side effects", branch.loc)
    stmts = branch.then.stmts
    if not stmts:
        raise TransformError(f"{name}: {what} has an empty branch", branch.loc)
    leaves = loops._escapes(stmts)
    if leaves is not None:
        raise TransformError(f"{name}: '{stmt_text(leaves).splitlines()[0]}' leaves the branch of {what}",
                             branch.loc)
    out: list[ir.Stmt] = []
    for k, s in enumerate(stmts):
        if isinstance(s, ir.DeclStmt):
            raise TransformError(f"{name}: the branch of {what} declares '{s.decl.name}' at its top level; "
                                 f"each statement gets its own if", s.loc)
        if isinstance(s, ir.For):
            at = _where(res, m.path + (("then", None), ("stmts", k)), s)
            _refuse_annotated(name, "sink the guard before annotating the loop", at, s)
            if s.index in free_vars(branch.cond):
                raise TransformError(f"{name}: the condition of {what} reads '{s.index}', the index of {at}",
                                     s.loc)
            if any(has_side_effects(e) for e in (s.start, s.stop, s.step)):
                raise TransformError(f"{name}: the bounds of {at} have side effects", s.loc)
            inner = ir.If(branch.cond, s.body, loc=branch.loc)
            out.append(dataclasses.replace(s, body=ir.Block((inner,))))
        else:
            out.append(ir.If(branch.cond, ir.Block((s,)), None, branch.loc))
    first = m.path + (("then", None), ("stmts", 0))
    paths = tuple(first[:-1] + (("stmts", k),) for k in range(len(stmts)))
    ob = Obligation("pure", f"nothing in the branch of {what} changes what its condition reads", m.function,
                    paths, (branch.cond,), before=True)
    return Rewrite(splice(program, m.path, tuple(out)), (ob,))


def _has_inner_loop(node: ir.For) -> bool:
    return any(isinstance(n, ir.For) for p, n in walk(node.body) if p)


@composite
def regroup(target: str, expert: str = "e", experts: str = "E") -> None:
    """Regroup the per-token work items of a mixture of experts per expert:
    each expert runs its FFN on the batch of items routed to it, every
    matrix-vector product of the items becoming one matrix-matrix product
    whose weight rows are read once per batch instead of once per token.

    Before (`moe.regroup("moe > for t#2")`, hidden rows per (token, slot)):

        for (int t = 0; t < T; t++) {
          for (int s = 0; s < K; s++) {
            int e = sel[t * K + s];
            for (int i = 0; i < hidden; i++) {
              for (int j = 0; j < dim; j++) {
                hb[(t * K + s) * hidden + i] += w1[(e * hidden + i) * dim + j] * x[t * dim + j];
              }
            }
            for (int i = 0; i < dim; i++) {
              ... out[t * dim + i] += wsel[t * K + s] * acc;
            }
          }
        }

    After (sub-steps moe.dispatch, moe.sink_guard, loop.fission of the
    item loops, loop.reorder of each product; their obligations):

        for (int e = 0; e < E; e++) {
          for (int i = 0; i < hidden; i++) {
            for (int t = 0; t < T; t++) {
              for (int s = 0; s < K; s++) {
                if (sel[t * K + s] == e) {
                  for (int j = 0; j < dim; j++) {
                    hb[(t * K + s) * hidden + i] += w1[(e * hidden + i) * dim + j] * x[t * dim + j];
                  }
                }
              }
            }
          }
          for (int i = 0; i < dim; i++) {
            for (int t = 0; t < T; t++) { ... }
          }
        }

    The items are dispatched to their expert, the expert test goes into
    each statement of the item, the item loops are split between those
    statements (each phase runs for every item of the expert before the
    next), and each phase that holds a product (a loop inside its loop)
    gets its row loop outermost, so one weight row meets every item of the
    batch while it is in cache. Phases without a product (zeroing, the
    activation) keep the items outermost, walking their rows in order.
    Scratch buffers the items share must have a row per item first
    (llm.expand_buffer, llm.batch_buffer), or the sub-steps' obligations
    are refuted.
    """
    session = current_session()
    program = session.current()
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    nest = [p for p, _ in _item_nest("moe.regroup", res, m.path, m.node)]
    dispatch(target, expert, experts)
    items = [m.path + (("body", None), ("stmts", 0)) + p[len(m.path):] for p in nest]
    program = session.current()
    fn, inner = loops._loop_target(program, items[-1])
    guard: ir.If = get(program, items[-1] + (("body", None), ("stmts", 0)))
    sink_guard(f"{fn} > {inner} > 'if ({expr_text(guard.cond)})'")
    for path in reversed(items):
        if len(get(session.current(), path).body.stmts) > 1:
            loops.fission(" > ".join(loops._loop_target(session.current(), path)))
    indices = [get(session.current(), p).index for p in items]
    for k in range(len(get(session.current(), m.path).body.stmts)):
        phase = m.path + (("body", None), ("stmts", k))
        program = session.current()
        row = get(program, phase + (("body", None), ("stmts", 0)) * len(indices))
        if isinstance(row, ir.For) and _has_inner_loop(row):
            loops.reorder(" > ".join(loops._loop_target(program, phase)), [row.index] + indices)
