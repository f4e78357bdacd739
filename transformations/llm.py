"""LLM transformations: grouped-query attention head grouping (and, from the
prefill work, microbatching)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.footprint import _allocated_count, assigned_scalars
from optitrust_py.names import address_taken, declared_names, free_vars, has_side_effects, subst, writes_of
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text
from optitrust_py.session import Rewrite, composite, current_session, primitive
from optitrust_py.target import Match, Resolver
from optitrust_py.tree import Path, block_of, get, map_children, replace, splice, walk
from transformations import function, variable
from transformations.arith import simplify
from transformations.loop import (_check_bounds_stable, _const_offset, _fresh_local, _in_block, _loop_amount,
                                  _loop_target, _minus, _plus_expr, _refuse_annotated, _refuse_early_exit,
                                  _require_unit_step, _where, fission, swap)
from transformations.matrix import _exprs, _local_array


def _plain_loop(name: str, program: ir.Program, target: str, verb: str,
                advice: str) -> tuple[Resolver, Match, ir.For, str]:
    """The loop `target` names, refused unless its iterations can be
    regrouped: unit step, no pragma or contract, no early exit, bounds that
    the body does not write."""
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    _require_unit_step(name, verb, where, loop)
    _refuse_annotated(name, advice, where, loop)
    _refuse_early_exit(name, where, loop.body.stmts, loop)
    _check_bounds_stable(name, res, m.path, loop, loop.body)
    return res, m, loop, where

# ----------------------------------------------------------------- grouped-query attention


@primitive
def tile_groups(program: ir.Program, target: str, size: Union[int, str], outer: Optional[str] = None,
                inner: Optional[str] = None) -> Rewrite:
    """Cut the iterations of a unit-step loop into consecutive groups of
    `size`, a C expression (the GQA group size `H / KVH`) or an integer: a
    loop over groups around a loop over the members of a group.

    Before (`llm.tile_groups("gqa_decode > for h", "G", "kv", "r")`):

        for (int h = 0; h < H; h++) {
          body(h);
        }

    After (obligation divides: G divides H - 0, which also says G > 0):

        for (int kv = 0; kv < H / G; kv++) {
          for (int r = 0; r < G; r++) {
            body(kv * G + r);
          }
        }

    Unlike `loop.tile`, whose inner loop keeps the index and whose size is
    a constant, both new loops count from 0 and the body reads the index as
    `start + outer * size + inner`, so that `(kv * G + r) / G` simplifies to
    `kv` (arith.simplify): the group number becomes a loop index. The
    iterations run in the same order, exactly once each, when `size`
    divides the iteration count (left to the checker). The names default to
    `<index>_g` and `<index>_m` made fresh. Refused for a loop with a step
    other than 1, pragmas or a contract, a body that leaves it early or
    writes what its bounds or `size` read, and a size that uses the index,
    has side effects, names an undeclared variable or is not positive.
    """
    name = "llm.tile_groups"
    res, m, loop, where = _plain_loop(name, program, target, "tiled", "tile it before annotating it")
    g = _loop_amount(name, "the group size", size, program, m.path, m.function, loop, where)
    rest, k = _const_offset(g)
    if rest is None and k <= 0:
        raise TransformError(f"{name}: the group size must be positive, got '{expr_text(g)}'", loop.loc)
    outer = _fresh_local(name, "group index", outer, f"{loop.index}_g", program, m.path, m.function, loop.loc)
    inner = _fresh_local(name, "member index", inner, f"{loop.index}_m", program, m.path, m.function, loop.loc)
    if outer == inner:
        raise TransformError(f"{name}: the group and member indices must differ, both are '{outer}'", loop.loc)
    extent = _minus(loop.stop, loop.start)
    value = _plus_expr(loop.start, ir.Binop("+", ir.Binop("*", ir.Var(outer), g), ir.Var(inner)))
    member = dataclasses.replace(loop, index=inner, start=ir.Const("0"), stop=g, inclusive=False,
                                 body=subst(loop.body, {loop.index: value}))
    group = dataclasses.replace(loop, index=outer, start=ir.Const("0"), stop=ir.Binop("/", extent, g),
                                inclusive=False, body=ir.Block((member,)))
    ob = Obligation("divides", f"{expr_text(g)} divides {expr_text(extent)} (the iteration count of {where})",
                    m.function, (m.path,), (g, extent))
    return Rewrite(replace(program, m.path, group), (ob,))


def _statements_using(program: ir.Program, block: Path, name: str) -> list[int]:
    """The positions of the statements of a block that use `name` (not its
    declaration)."""
    return [k for k, s in enumerate(get(program, block).stmts) if name in free_vars(s)]


@primitive
def expand_buffer(program: ir.Program, target: str, array: str, row: Union[int, str]) -> Rewrite:
    """Give each iteration of a loop its own row of a scratch buffer that
    the iterations shared, so that the loop can later be swapped with the
    loops inside it or run in parallel.

    Before (`llm.expand_buffer("gqa_decode > for kv > for r", "scores", "pos + 1")`):

        float *scores = malloc((pos + 1) * sizeof(float));
        ...
        for (int kv = 0; kv < H / G; kv++) {
          for (int r = 0; r < G; r++) {
            for (int t = 0; t <= pos; t++) {
              scores[t] = ...;
            }
            ... scores[t] ...
          }
        }
        free(scores);

    After (obligations in_region and covers on the loop before the step):

        for (int kv = 0; kv < H / G; kv++) {
          float *scores = malloc(G * (pos + 1) * sizeof(float));
          for (int r = 0; r < G; r++) {
            for (int t = 0; t <= pos; t++) {
              scores[r * (pos + 1) + t] = ...;
            }
            ... scores[r * (pos + 1) + t] ...
          }
          free(scores);
        }

    The buffer, a local pointer allocated by malloc in a block around the
    loop and freed in that block, must be used only inside the loop (its
    declaration and `free` aside); the allocation moves around the loop and
    holds one row of `row` elements per iteration, iteration i using row
    i - start. This keeps every value when no iteration reads a cell that it
    did not write itself: the first statement of the body that touches the
    buffer is a loop that only writes it, and the obligations are that it
    writes every cell of [0, row) (covers) and that every access of the loop
    lies in [0, row), within the old allocation (in_region). Refused for a
    loop with a step other than 1, pragmas or a contract, a body that
    leaves it early or writes what its bounds read, a buffer that is not
    such a malloc'd local, used elsewhere, or read before that first loop.
    """
    name = "llm.expand_buffer"
    res, m, loop, where = _plain_loop(name, program, target, "expanded over",
                                      "expand the buffer before annotating the loop")
    n = _loop_amount(name, "the row size", row, program, m.path, m.function, loop, where)
    decl_path, arr, accesses = _local_array(program, f"{m.function} > def {array}", name, None, need_shape=False)
    if not isinstance(arr.decl.type, ir.Ptr):
        raise TransformError(f"{name}: '{array}' is a C array; only a buffer allocated by malloc is expanded",
                             arr.decl.loc)
    block = decl_path[:-1]
    if m.path[:len(block)] != block or m.path == decl_path:
        raise TransformError(f"{name}: '{array}' is not declared in a block around {where}", arr.decl.loc)
    users = _statements_using(program, block, array)
    holder = block_of(m.path[:len(block) + 1])[1]
    free = ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(array),)))
    tail = [k for k in users if k > holder]
    if users[:1] != [holder] or len(tail) != 1 or block_of(decl_path)[1] > holder \
            or stmt_text(get(program, block).stmts[tail[0]]) != stmt_text(free):
        raise TransformError(f"{name}: '{array}' must be used only by its declaration, {where} and a "
                             f"'free({array});' after it in the same block", arr.decl.loc)
    outside = [a for a in accesses if a.path[:len(m.path)] != m.path]
    if outside:
        raise TransformError(f"{name}: '{array}' is used outside {where}, at line {res.line(outside[0].path)}",
                             arr.decl.loc)
    first = _first_writer(program, res, m.path, loop, array, accesses, name, where)
    count = _minus(loop.stop, loop.start)
    slot = _minus(ir.Var(loop.index), loop.start)
    new = program
    for a in accesses:
        index = ir.Binop("+", ir.Binop("*", slot, n), a.index[0])
        new = replace(new, a.path, dataclasses.replace(get(new, a.path), index=index))
    new_loop = get(new, m.path)
    new = splice(new, block + (("stmts", tail[0]),), ())
    new = splice(new, decl_path, ())
    loop_path = block + (("stmts", holder - 1),) + m.path[len(block) + 1:]
    size = ir.Binop("*", ir.Binop("*", count, n), ir.SizeofType(arr.elem))
    decl = dataclasses.replace(arr.decl, init=ir.Call(ir.Var("malloc"), (size,)))
    new = splice(new, loop_path, (ir.DeclStmt(decl), new_loop, free))
    region = (ir.Const("0"), n, n)
    obs = (Obligation("in_region", f"every access of {where} to '{array}' lies in [0, {expr_text(n)}), within "
                      f"its allocation", m.function, (m.path,), region, before=True, names=(array,)),
           Obligation("covers", f"in each iteration of {where}, the loop at line {res.line(first)} writes every "
                      f"cell of '{array}' in [0, {expr_text(n)}) before the rest of the body reads one", m.function,
                      (first,), region, before=True, names=(array,)))
    return Rewrite(new, obs)


def _first_writer(program: ir.Program, res: Resolver, loop_path: Path, loop: ir.For, array: str,
                  accesses: Sequence[Any], name: str, where: str) -> Path:
    """The path of the first statement of the loop body that touches
    `array`, which must be a loop that writes it and does not read it."""
    body = loop_path + (("body", None),)
    k = next((k for k, s in enumerate(loop.body.stmts) if array in free_vars(s)), None)
    if k is None:
        raise TransformError(f"{name}: the body of {where} does not use '{array}'", loop.loc)
    path = body + (("stmts", k),)
    mine = [a for a in accesses if a.path[:len(path)] == path]
    if not isinstance(get(program, path), ir.For) or any(a.role != "write" for a in mine):
        raise TransformError(f"{name}: the first statement of {where} that uses '{array}' (line {res.line(path)}) "
                             f"is not a loop that only writes it, so an iteration could read a value written "
                             f"by another one", loop.loc)
    return path


def _group_local(who: str, program: ir.Program, res: Resolver, path: Path, loop: ir.For, size: ir.Expr) -> str:
    """The name of the local that the head loop's body starts with, `int g =
    h / size;`: the kv head of query head h."""
    first = loop.body.stmts[0] if loop.body.stmts else None
    want = ir.Binop("/", ir.Var(loop.index), size)
    if not (isinstance(first, ir.DeclStmt) and first.decl.name and first.decl.init is not None
            and expr_text(first.decl.init) == expr_text(want)):
        raise TransformError(f"{who}: the body of {_where(res, path, loop)} does not start with the kv "
                             f"head of the query head, 'int g = {expr_text(want)};'", loop.loc)
    return first.decl.name


def _sibling(path: Path, k: int) -> Path:
    """The path of the statement k places after the one at `path`."""
    block, i = block_of(path)
    return block + (("stmts", i + k),)


def _name(program: ir.Program, path: Path, point: str = "") -> str:
    """A target naming the loop at `path`, `f > for i#n`, or the point
    `before` or `after` it."""
    fn, ref = _loop_target(program, path)
    return f"{fn} > {point} {ref}" if point else f"{fn} > {ref}"


@composite
def group_index(target: str, size: str, member: str = "r") -> None:
    """Make the kv head of a loop over query heads a loop index: the head
    loop becomes a loop over kv heads around one over the `size` query heads
    of a group, named as the body's local kv head was.

    Before (`llm.group_index("gqa_decode > for h", "G")`):

        for (int h = 0; h < H; h++) {
          int g = h / G;
          body(h, g);
        }

    After (sub-steps: llm.tile_groups, arith.simplify and variable.inline of
    g, variable.rename of the group index to g):

        for (int g = 0; g < H / G; g++) {
          for (int r = 0; r < G; r++) {
            body(g * G + r, g);
          }
        }

    The head loop's body must start with `int g = h / size;`. The
    obligations are those of the sub-steps (tile_groups: size divides the
    head count).
    """
    session = current_session()
    program = session.current()
    res = Resolver(program)
    m = res.one(target, "loop over query heads", (ir.For,))
    (size_expr,) = _exprs("llm.group_index", [size], "group size", m.node.loc)
    local = _group_local("llm.group_index", program, res, m.path, m.node, size_expr)
    tile_groups(target, size, None, member)
    group = _name(session.current(), m.path)
    simplify(f"{group} > def {local}")
    decl = get(session.current(), m.path + (("body", None), ("stmts", 0), ("body", None), ("stmts", 0)))
    if expr_text(decl.decl.init) != get(session.current(), m.path).index:
        raise TransformError(f"llm.group_index: '{local}' did not simplify to the group index "
                             f"('{stmt_text(decl)}')", m.node.loc)
    variable.inline(f"{group} > def {local}")
    variable.rename(group, local)


@composite
def group_heads(target: str, size: str, buffer: str, row: str, member: str = "r") -> None:
    """Make the query heads that share a kv head iterate together, inside
    the loops over cache positions, so that each K and V row is loaded once
    per group of heads instead of once per head.

    Before (`llm.group_heads("gqa_decode > for h", "G", "scores", "pos + 1")`,
    G = H / KVH, scores a buffer of pos + 1 floats):

        for (int h = 0; h < H; h++) {
          int g = h / G;
          for (int t = 0; t <= pos; t++) {
            ... scores[t] = q[h] . k_cache[g][t] ...
          }
          ... softmax of scores ...
          for (int t = 0; t <= pos; t++) {
            ... out[h] += scores[t] * v_cache[g][t] ...
          }
        }

    After (sub-steps: llm.group_index, llm.expand_buffer, loop.fission
    twice, loop.swap twice):

        for (int g = 0; g < H / G; g++) {
          float *scores = malloc(G * (pos + 1) * sizeof(float));
          for (int t = 0; t <= pos; t++) {
            for (int r = 0; r < G; r++) {
              ... scores[r * (pos + 1) + t] = q[g * G + r] . k_cache[g][t] ...
            }
          }
          for (int r = 0; r < G; r++) {
            ... softmax of row r of scores ...
          }
          for (int t = 0; t <= pos; t++) {
            for (int r = 0; r < G; r++) {
              ... out[g * G + r] += scores[r * (pos + 1) + t] * v_cache[g][t] ...
            }
          }
          free(scores);
        }

    The head loop's body must start with `int g = h / size;` and its first
    and last statements be the loops over positions (scores, weighted sum);
    `buffer` is the scores buffer, which gets one row of `row` elements per
    head of the group; `member` names the loop over the heads of a group.
    The obligations are those of the sub-steps.
    """
    session = current_session()
    res = Resolver(session.current())
    m = res.one(target, "loop over query heads", (ir.For,))
    (size_expr,) = _exprs("llm.group_heads", [size], "group size", m.node.loc)
    _group_local("llm.group_heads", session.current(), res, m.path, m.node, size_expr)  # its own error first
    group_index(target, size, member)
    group = _name(session.current(), m.path)
    expand_buffer(f"{group} > for {member}", buffer, row)
    first = Resolver(session.current()).one(f"{group} > for {member}", "loop").path
    body: ir.Block = get(session.current(), first).body
    for end in (0, -1):
        if not isinstance(body.stmts[end], ir.For):
            raise TransformError(f"llm.group_heads: the {'first' if end == 0 else 'last'} statement of the head "
                                 f"loop is not a loop over positions", m.node.loc)
    fission(_name(session.current(), first + (("body", None), ("stmts", 0)), "after"))
    fission(_name(session.current(), _sibling(first, 1) + (("body", None), ("stmts", len(body.stmts) - 2)), "before"))
    swap(_name(session.current(), first))
    swap(_name(session.current(), _sibling(first, 2)))


# ----------------------------------------------------------------- microbatched prefill


@primitive
def unblock(program: ir.Program, target: str) -> Rewrite:
    """Put the statements of a nested block `{ ... }` in the block around
    it, as `function.inline` leaves them; what lets the loop steps see the
    inlined statements as the loop body's own. `target` names a statement
    of the nested block.

    Before (`llm.unblock("transformer_prefill > def head_size")`):

        for (int t = 0; t < T; t++) {
          {
            int head_size = dim / H;
            ...
          }
        }

    After (no obligation: the same statements run in the same order):

        for (int t = 0; t < T; t++) {
          int head_size = dim / H;
          ...
        }

    The locals of the block then live until the end of the outer block,
    which changes nothing since nothing there names them: refused when a
    local of the block has the name of a local of the outer block, or of a
    variable that the statements after the block use.
    """
    res = Resolver(program)
    m = res.one(target, "statement", (ir.DeclStmt, ir.ExprStmt, ir.For, ir.If))
    inner_path, _ = block_of(m.path)
    if len(inner_path) < 2 or inner_path[-1][0] != "stmts" or not isinstance(get(program, inner_path), ir.Block):
        raise TransformError(f"llm.unblock: '{stmt_text(m.node).splitlines()[0]}' (line {m.line}) is not in a "
                             f"block that is itself a statement of a block", m.node.loc)
    clash = _unblock_clash(program, inner_path)
    if clash:
        raise TransformError(f"llm.unblock: the block around line {m.line} declares '{clash}', a name that the "
                             f"block around it declares or uses after it; rename it first", m.node.loc)
    return Rewrite(splice(program, inner_path, get(program, inner_path).stmts))


def _unblock_clash(program: ir.Program, inner_path: Path) -> Optional[str]:
    """A local of the block at `inner_path` that the block around it
    declares too or uses after it, if any."""
    outer_path, k = block_of(inner_path)
    outer: ir.Block = get(program, outer_path)
    inner = {s.decl.name for s in get(program, inner_path).stmts if isinstance(s, ir.DeclStmt) and s.decl.name}
    rest = outer.stmts[:k] + outer.stmts[k + 1:]
    taken = set().union(*(declared_names(s) for s in rest)) | free_vars(ir.Block(outer.stmts[k + 1:]))
    return min(inner & taken, default=None)


@primitive
def batch_buffer(program: ir.Program, target: str, array: str, row: Union[int, str, None] = None,
                 name: Optional[str] = None) -> Rewrite:
    """Turn a scratch buffer that each iteration of a loop allocates and
    frees into one allocation before the loop with a row per iteration: the
    per-token buffers of a forward pass become per-prompt (or
    per-microbatch) ones, so that the loop over tokens can move inside the
    loops of the body (loop.swap, loop.fission).

    Before (`llm.batch_buffer("transformer_prefill > for t", "xb")`):

        for (int t = 0; t < T; t++) {
          float *xb = malloc(dim * sizeof(float));
          ... xb[i] ... f(xb) ...
          free(xb);
        }

    After (obligation ordered_bounds: 0 <= T, the allocation's row count):

        float *xb_b = malloc(T * dim * sizeof(float));
        for (int t = 0; t < T; t++) {
          ... xb_b[t * dim + i] ... f(&xb_b[t * dim]) ...
        }
        free(xb_b);

    Iteration t uses row t - start, which lies in the allocation because
    the loop has unit step and its bounds do not change; rows are disjoint,
    and no iteration sees another's row since the old buffer died with its
    iteration. The row holds what the iteration allocated, which must not
    depend on the iteration; or `row` elements (a C expression read where
    the loop is, or an integer), with the obligation in_range: the old
    count lies in 0..row at the allocation (`att`, allocated with `t + 1`
    cells, gets rows of SMAX). The buffer is a pointer declared in the
    loop's body with `malloc(n * sizeof(T))`, never assigned, redeclared
    or freed but by one `free(array);` of the body after which the body
    does not use it. Refused for a loop with a step other than 1, pragmas or
    a contract, a body that leaves it early or writes what its bounds read.
    The name is `name`, by default `<array>_b` made fresh.
    """
    who = "llm.batch_buffer"
    res, m, loop, where = _plain_loop(who, program, target, "batched over",
                                      "batch the buffer before annotating the loop")
    stmts = loop.body.stmts
    decls = [(k, s.decl) for k, s in enumerate(stmts) if isinstance(s, ir.DeclStmt) and s.decl.name == array]
    if not decls:
        raise TransformError(f"{who}: the body of {where} declares no '{array}' at its top level", loop.loc)
    at, decl = decls[0]
    pointer = decl.type if isinstance(decl.type, ir.Ptr) else None
    count = _allocated_count(decl.init) if pointer is not None else None
    if pointer is None or count is None:
        raise TransformError(f"{who}: '{array}' (line {decl.loc.line if decl.loc else m.line}) is not a pointer "
                             f"initialized with malloc(n * sizeof(T))", decl.loc)
    free = ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(array),)))
    frees = [k for k, s in enumerate(stmts) if stmt_text(s) == stmt_text(free)]
    if len(frees) != 1 or frees[0] < at or any(array in free_vars(s) for s in stmts[frees[0] + 1:]):
        raise TransformError(f"{who}: the body of {where} must free '{array}' once, with 'free({array});' after "
                             f"which it does not use it", decl.loc)
    body = ir.Block(stmts[at + 1:frees[0]])
    freed = any(isinstance(n, ir.Call) and n.func == ir.Var("free") and ir.Var(array) in n.args for _, n in walk(body))
    if array in assigned_scalars(body) or array in declared_names(body) or array in address_taken(body) or freed:
        raise TransformError(f"{who}: '{array}' is assigned, redeclared, freed or has its address taken in "
                             f"{where} before its last 'free({array});'", decl.loc)
    n, obligations = _batch_row(program, m, loop, where, count, row, at)
    bname = _fresh_local(who, "buffer", name, f"{array}_b", program, m.path, m.function, loop.loc)
    offset = ir.Binop("*", _minus(ir.Var(loop.index), loop.start), n)
    new_body = stmts[:at] + tuple(_rebased(s, array, bname, offset) for s in body.stmts) + stmts[frees[0] + 1:]
    new_loop = dataclasses.replace(loop, body=dataclasses.replace(loop.body, stmts=new_body))
    size = ir.Binop("*", ir.Binop("*", _minus(loop.stop, loop.start), n), ir.SizeofType(pointer.to))
    alloc = ir.DeclStmt(ir.Decl(bname, decl.type, ir.Call(ir.Var("malloc"), (size,))), decl.loc)
    release = ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(bname),)))
    _in_block(who, res, m.path, loop)
    new = splice(program, m.path, (alloc, new_loop, release))
    rows = Obligation("ordered_bounds", f"{where} runs {expr_text(_minus(loop.stop, loop.start))} >= 0 times, the "
                      f"row count of '{bname}'", m.function, (m.path,), (loop.start, loop.stop), before=True)
    return Rewrite(new, (rows,) + obligations)


def _batch_row(program: ir.Program, m: Any, loop: ir.For, where: str, count: ir.Expr,
               row: Union[int, str, None], at: int) -> tuple[ir.Expr, tuple[Obligation, ...]]:
    """The row size of a batched buffer: its allocated count, which must
    not change between iterations, or `row` and the in_range obligation."""
    if row is None:
        before = {s.decl.name for s in loop.body.stmts[:at] if isinstance(s, ir.DeclStmt) and s.decl.name}
        varying = sorted(free_vars(count) & ({loop.index} | writes_of(loop.body) | before))
        if varying:
            raise TransformError(f"llm.batch_buffer: the allocated count '{expr_text(count)}' depends on "
                                 f"'{varying[0]}', which changes in {where}; give the row size (row=...)", loop.loc)
        return count, ()
    n = _loop_amount("llm.batch_buffer", "the row size", row, program, m.path, m.function, loop, where)
    decl_path = m.path + (("body", None), ("stmts", at))
    return n, (Obligation("in_range", f"the allocated count '{expr_text(count)}' lies in 0..{expr_text(n)}, the "
                          f"row size", m.function, (decl_path,), (ir.Const("0"), count, n), before=True),)


def _rebased(node: Any, array: str, bname: str, offset: ir.Expr) -> Any:
    """`node` with `array[e]` read as `bname[offset + e]` and any other use
    of `array` as `&bname[offset]`."""
    if isinstance(node, ir.Index) and node.base == ir.Var(array):
        index = _rebased(node.index, array, bname, offset)
        return ir.Index(ir.Var(bname), index if offset == ir.Const("0") else ir.Binop("+", offset, index), node.loc)
    if isinstance(node, ir.Var) and node.name == array:
        return ir.Var(bname, node.loc) if offset == ir.Const("0") else \
            ir.Unop("&", ir.Index(ir.Var(bname), offset), node.loc)
    return map_children(node, lambda c: _rebased(c, array, bname, offset))


@primitive
def inline_pointer(program: ir.Program, target: str) -> Rewrite:
    """Replace a local pointer into an array by the array at its uses, with
    the offset folded into each index, and delete its declaration: what
    `variable.inline` does, without leaving `(&a[e])[i]` behind, which the
    vector and layout steps cannot read.

    Before (`llm.inline_pointer("transformer_prefill > def W")`):

        const float *W = &wq[l * dim * dim];
        for (...) { acc += W[i * dim + j] * x[j]; }

    After (no obligation: the address reads no memory and none of its
    variables changes in the pointer's scope, so it is the same at every
    use):

        for (...) { acc += wq[l * dim * dim + (i * dim + j)] * x[j]; }

    The pointer is initialized with `a` or `&a[e]`, a an array or pointer
    variable and e without side effects or loads; its other uses become
    `&a[e]`. Refused when the pointer, `a` or a variable of e is assigned
    or has its address taken in the pointer's scope, or when the pointer is
    redeclared there.
    """
    res = Resolver(program)
    m = res.one(target, "declaration", (ir.DeclStmt,))
    d: ir.Decl = m.node.decl
    what = f"'{d.name}' (line {m.line})"
    init = d.init
    base = init if isinstance(init, ir.Var) else init.arg.base \
        if isinstance(init, ir.Unop) and isinstance(init.arg, ir.Index) and _plain(init) else None
    offset = _address_offset(init) if init is not None else ir.Const("0")
    if not isinstance(d.type, ir.Ptr) or not isinstance(base, ir.Var) or not d.name or _reads_memory(offset):
        raise TransformError(f"llm.inline_pointer: {what} is not a pointer initialized with 'a' or '&a[e]', e "
                             f"reading no memory", m.node.loc)
    block_path, k = block_of(m.path)
    scope = ir.Block(get(program, block_path).stmts[k + 1:])
    fixed = ({d.name, base.name} | free_vars(offset)) & (assigned_scalars(scope) | address_taken(scope))
    if fixed or d.name in declared_names(scope):
        name = sorted(fixed)[0] if fixed else d.name
        raise TransformError(f"llm.inline_pointer: '{name}' is assigned, has its address taken or is redeclared "
                             f"in the scope of {what}", m.node.loc)
    stmts = tuple(_rebased(s, d.name, base.name, offset) for s in scope.stmts)
    block = get(program, block_path)
    new_block = dataclasses.replace(block, stmts=block.stmts[:k] + stmts)
    return Rewrite(replace(program, block_path, new_block))


def _reads_memory(e: ir.Expr) -> bool:
    return any(isinstance(n, (ir.Index, ir.Call, ir.Member)) or isinstance(n, ir.Unop) and n.op == "*"
               for _, n in walk(e))


@composite
def inline_call(target: str) -> None:
    """Inline a call and tidy the result: `function.inline`, then
    `llm.inline_pointer` (`variable.inline` for a non-pointer) of each
    parameter bound to a plain argument (a variable, a literal, an address
    `&a[e]`) that the callee never assigns, then `llm.unblock` of the block
    when its locals clash with nothing.

    Before (`llm.inline_call("transformer_prefill > call transformer_token")`):

        for (int t = 0; t < T; t++) {
          transformer_token(L, dim, ..., t, ..., &xs[t * dim], k_cache, v_cache);
        }

    After (sub-steps function.inline, variable.inline of L_1, ..., pos,
    llm.inline_pointer of wq_1, ..., x, ..., llm.unblock; obligation
    inline and those of the sub-steps):

        for (int t = 0; t < T; t++) {
          int head_size = dim / H;
          ...
          rmsnorm_vec(dim, &xs[t * dim], &rms_att_w[l * dim], xb);
          ...
        }
    """
    session = current_session()
    m = Resolver(session.current()).one(target, "call", (ir.Call,))
    callee = session.current().function(m.node.name) if m.node.name else None
    function.inline(target)
    block_path = m.path[:-1]
    if callee is None:
        return
    fixed = assigned_scalars(callee.body) | address_taken(callee.body)
    params = [p.name for p in callee.type.params or () if p.name]
    kept = 0
    for param in params:
        program = session.current()
        path = block_path + (("stmts", kept),)
        decl = get(program, path).decl
        if param in fixed or not _plain(decl.init):
            kept += 1
            continue
        pointer = isinstance(decl.type, ir.Ptr) and not _reads_memory(_address_offset(decl.init))
        (inline_pointer if pointer else variable.inline)(f"{m.function} > {_def_target(program, path)}")
    program = session.current()
    first = _stmt_target(program, block_path + (("stmts", 0),)) if get(program, block_path).stmts else None
    if first is not None and _unblock_clash(program, block_path) is None:
        unblock(f"{m.function} > {first}")


def _stmt_target(program: ir.Program, path: Path) -> Optional[str]:
    """A target component naming the declaration or loop at `path` (None
    for another statement)."""
    node = get(program, path)
    if isinstance(node, ir.For):
        return _loop_target(program, path)[1]
    return _def_target(program, path) if isinstance(node, ir.DeclStmt) else None


def _def_target(program: ir.Program, path: Path) -> str:
    """`def x#n`, which names the declaration at `path` in its function."""
    name = get(program, path).decl.name
    hits = [p for p, n in walk(get(program, path[:1]), path[:1]) if isinstance(n, ir.DeclStmt) and n.decl.name == name]
    return f"def {name}#{hits.index(path) + 1}"


def _address_offset(e: ir.Expr) -> ir.Expr:
    """e in `&a[e]` (0 for a plain variable)."""
    return e.arg.index if isinstance(e, ir.Unop) and isinstance(e.arg, ir.Index) else ir.Const("0")


def _plain(e: Optional[ir.Expr]) -> bool:
    """A variable, a literal, or the address of an element `&a[e]` with a
    side-effect-free index: an argument whose uses may be its text."""
    if isinstance(e, (ir.Var, ir.Const)):
        return True
    return isinstance(e, ir.Unop) and e.op == "&" and isinstance(e.arg, ir.Index) \
        and isinstance(e.arg.base, ir.Var) and not has_side_effects(e.arg.index)


@composite
def batch_matvec(target: str) -> None:
    """Turn a matrix-vector product called for each token of a loop into a
    matrix-matrix product that reads each row of the matrix once for all
    the tokens: inline the call, put the token loop inside the row loop,
    sum each dot product in a local accumulator (which `vector.vectorize`
    then keeps in vector registers). The rows are independent:
    `parallel.parallel_for` on the row loop runs them on several cores.

    Before (`llm.batch_matvec("transformer_prefill > call matvec#1")`):

        for (int t = bt; t < (bt + 16 < T ? bt + 16 : T); t++) {
          matvec(dim, dim, &wq[l * dim * dim], &xb_b[t * dim], &q_b[t * dim]);
        }

    After (sub-steps llm.inline_call, loop.swap, variable.local_accumulator,
    with their obligations):

        for (int i = 0; i < dim; i++) {
          for (int t = bt; t < (bt + 16 < T ? bt + 16 : T); t++) {
            q_b[t * dim + i] = 0.0f;
            {
              float acc = q_b[t * dim + i];
              for (int j = 0; j < dim; j++) {
                acc += wq[l * dim * dim + (i * dim + j)] * xb_b[t * dim + j];
              }
              q_b[t * dim + i] = acc;
            }
          }
        }

    The call must be the only statement of its loop, and the callee a
    loop over rows whose body ends by summing `+=` into the row's output in
    a loop, as transformer.c's matvec; refused otherwise.
    """
    who = "llm.batch_matvec"
    session = current_session()
    m = Resolver(session.current()).one(target, "call", (ir.Call,))
    tokens = m.path[:-3]
    outer = get(session.current(), tokens) if len(m.path) > 3 else None
    if not isinstance(outer, ir.For) or len(outer.body.stmts) != 1 or m.path[-3:-1] != (("body", None), ("stmts", 0)):
        raise TransformError(f"{who}: the call at line {m.line} must be the only statement of a loop's body",
                             m.node.loc)
    inline_call(target)
    rows = tokens + (("body", None), ("stmts", 0))
    row_loop = get(session.current(), rows)
    sums = row_loop.body.stmts[-1] if isinstance(row_loop, ir.For) and row_loop.body.stmts else None
    update = sums.body.stmts[-1] if isinstance(sums, ir.For) and sums.body.stmts else None
    if not (isinstance(update, ir.ExprStmt) and isinstance(update.expr, ir.Assign) and update.expr.op == "+="):
        raise TransformError(f"{who}: {m.node.name} is not a loop over rows whose last statement sums into the "
                             f"row's output in a loop (y[i] += ...)", m.node.loc)
    fn = m.function
    swap(f"{fn} > {_loop_target(session.current(), tokens)[1]}")
    sums_path = tokens + (("body", None), ("stmts", 0), ("body", None), ("stmts", len(row_loop.body.stmts) - 1))
    variable.local_accumulator(f"{fn} > {_loop_target(session.current(), sums_path)[1]}", expr_text(update.expr.lhs))
