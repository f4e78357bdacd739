"""LLM transformations: grouped-query attention head grouping (and, from the
prefill work, microbatching)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import free_vars, subst
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, get, replace, splice
from transformations.loop import (_check_bounds_stable, _fresh_local, _loop_amount, _minus, _plus_expr,
                                  _refuse_annotated, _refuse_early_exit, _require_unit_step, _where)
from transformations.matrix import _local_array

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
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    name = "llm.tile_groups"
    _require_unit_step(name, "tiled", where, loop)
    _refuse_annotated(name, "tile it before annotating it", where, loop)
    _refuse_early_exit(name, where, loop.body.stmts, loop)
    _check_bounds_stable(name, res, m.path, loop, loop.body)
    g = _loop_amount(name, "the group size", size, program, m.path, m.function, loop, where)
    if isinstance(g, ir.Unop) or isinstance(g, ir.Const) and int(g.text, 0) <= 0:
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
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    _require_unit_step(name, "expanded over", where, loop)
    _refuse_annotated(name, "expand the buffer before annotating the loop", where, loop)
    _refuse_early_exit(name, where, loop.body.stmts, loop)
    _check_bounds_stable(name, res, m.path, loop, loop.body)
    n = _loop_amount(name, "the row size", row, program, m.path, m.function, loop, where)
    decl_path, arr, accesses = _local_array(program, f"{m.function} > def {array}", name, None, need_shape=False)
    if not isinstance(arr.decl.type, ir.Ptr):
        raise TransformError(f"{name}: '{array}' is a C array; only a buffer allocated by malloc is expanded",
                             arr.decl.loc)
    block = decl_path[:-1]
    if m.path[:len(block)] != block or m.path == decl_path:
        raise TransformError(f"{name}: '{array}' is not declared in a block around {where}", arr.decl.loc)
    users = _statements_using(program, block, array)
    holder = m.path[len(block)][1]
    free = ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(array),)))
    tail = [k for k in users if k > holder]
    if users[:1] != [holder] or len(tail) != 1 or decl_path[-1][1] > holder \
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
    k = next(k for k, s in enumerate(loop.body.stmts) if array in free_vars(s))
    path = body + (("stmts", k),)
    mine = [a for a in accesses if a.path[:len(path)] == path]
    if not isinstance(get(program, path), ir.For) or any(a.role != "write" for a in mine):
        raise TransformError(f"{name}: the first statement of {where} that uses '{array}' (line {res.line(path)}) "
                             f"is not a loop that only writes it, so an iteration could read a value written "
                             f"by another one", loop.loc)
    return path
