"""GPU transformations: map loops to the blocks and threads of a CUDA grid,
and stage tiles in shared memory.

A mapped loop stays a C loop with a mark (`#pragma otp gpu block y`), so
every step still runs sequentially under gcc, `--exec` and levels 2 and 3;
`otp run --target cuda` prints the marked program as CUDA (see
optitrust_py/cuda_emit.py for how blocks, threads, barriers, shared memory
and registers come out of it).

Running the iterations of a loop at once is valid when they touch disjoint
cells: each mapping declares the obligation `parallel` (the same one as
`parallel.parallel_for`), and level 2 re-proves it for every mapped loop a
later step changes, so a step that merges two thread loops across a
barrier, or makes two threads write one cell, is refuted whichever
transformation made it. Reductions are not privatized here: a scalar every
iteration updates is a race, refuted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import z3

from optitrust_py import ir
from optitrust_py.cuda_map import (AXES, LAST_FIRST, MAX_THREADS, async_copy as async_copy_mark, constant_extent,
                                   mapping, mark, min_blocks, min_blocks_mark, thread_extent, vector_cells, vector_mark)
from optitrust_py.cuda_registers import chain, thread_position
from optitrust_py.errors import TransformError
from optitrust_py.intrinsics import memory_args
from optitrust_py.obligation import Obligation
from optitrust_py.session import Rewrite, composite, current_session, primitive
from optitrust_py.target import Match, Resolver
from optitrust_py.names import INCDEC, free_vars, lvalue_bases, subst, writes_of
from optitrust_py.printer import expr as expr_text, stmt_text, type_name
from optitrust_py.layout import cancelled_sum, signed_sum, terms
from optitrust_py.smt import Terms, int_term, loop_facts, proves
from optitrust_py.tree import Path, block_of, function_path, get, map_children, replace, splice, walk
from optitrust_py.typeof import env_at, resolve, type_of, typedefs_of, unqualified
from transformations import arith, loop as loops, matrix, variable
from transformations.loop import ONE, _check_bounds_stable, _fresh_local, _refuse_early_exit, _top_decls, _where

_WHO = {"block": "gpu.map_blocks", "thread": "gpu.map_threads"}
ZERO = ir.Const("0")


def _enclosing_mapped(program: ir.Program, path: Path) -> list[tuple[str, str]]:
    """The GPU mappings of the loops around the statement at `path`, outermost first."""
    out = []
    for k in range(1, len(path)):
        m = mapping(get(program, path[:k]))
        if m is not None:
            out.append(m)
    return out


def _map(program: ir.Program, target: str, level: str, axis: str, sums: Sequence[str] = ()) -> Rewrite:
    """Mark the loop at `target` as run by the blocks or threads of `axis`."""
    who = _WHO[level]
    res = Resolver(program)
    m: Match = res.one(target, "canonical for loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    _checked_loop(who, res, m, axis)
    around = _enclosing_mapped(program, m.path)
    _check_place(who, where, level, axis, around, loop)
    _check_sums(who, program, m.path, loop, sums)
    new = dataclasses.replace(loop, pragmas=(mark(level, axis, sums),))
    runs = "concurrent blocks of the grid" if level == "block" else "concurrent threads of a block"
    but = f", apart from their additions into {', '.join(sums)}" if sums else ""
    ob = Obligation("parallel", f"distinct iterations of {where} touch disjoint cells{but} (they run as {runs})",
                    m.function, (m.path,), names=tuple(sums))
    return Rewrite(replace(program, m.path, new), (ob,), "reassoc" if sums else "exact")


def _check_sums(who: str, program: ir.Program, path: Path, loop: ir.For, sums: Sequence[str]) -> None:
    """The arrays blocks add into: a list of distinct arrays (pointers or C
    arrays) visible at the loop, each updated in its body."""
    if isinstance(sums, str) or not all(isinstance(a, str) for a in sums) or len(set(sums)) != len(sums):
        raise TransformError(f"{who}: sums must be a list of distinct array names, got {sums!r}", loop.loc)
    env = env_at(program, path)
    tds = typedefs_of(program)
    for a in sums:
        if not isinstance(resolve(unqualified(env.get(a, ir.INT)), tds), (ir.Ptr, ir.Array)):
            raise TransformError(f"{who}: '{a}' is not an array or pointer visible at {loop.index}", loop.loc)
        if a not in writes_of(loop.body):
            raise TransformError(f"{who}: the loop over {loop.index} never adds into '{a}'", loop.loc)


def _check_place(who: str, where: str, level: str, axis: str, around: list[tuple[str, str]],
                 loop: ir.For) -> None:
    """Blocks outermost, threads inside blocks; one loop per axis and level."""
    if level == "block" and any(lv == "thread" for lv, _ in around):
        raise TransformError(f"{who}: {where} is inside a thread loop; map blocks outside threads", loop.loc)
    if level == "thread":
        if not any(lv == "block" for lv, _ in around):
            raise TransformError(f"{who}: {where} is not inside a loop mapped to blocks (gpu.map_blocks): "
                                 f"threads belong to a block", loop.loc)
        if thread_extent(loop) is None:
            raise TransformError(f"{who}: {where} does not run a constant number of iterations (or at most a "
                                 f"constant: a tile of mode 'min') with step 1, so it cannot be a block's threads; "
                                 f"tile it first (loop.tile(..., 32, mode='min'))", loop.loc)
    if (level, axis) in around:
        raise TransformError(f"{who}: {where} is inside another loop mapped to {level} {axis}", loop.loc)


@primitive
def map_blocks(program: ir.Program, target: str, axis: str = "x", sums: Sequence[str] = ()) -> Rewrite:
    """Run the iterations of a loop as the blocks of the grid along `axis`.

    Before (`gpu.map_blocks("matmul > for bi", "y")`):

        for (int bi = 0; bi < M; bi += 16) {
          for (int i = bi; i < bi + 16; i++) { ... }
        }

    After (obligation parallel):

        #pragma otp gpu block y
        for (int bi = 0; bi < M; bi += 16) {
          for (int i = bi; i < bi + 16; i++) { ... }
        }

    In CUDA, `bi` is `0 + (int)blockIdx.y * 16` and the grid has
    `(M + 15) / 16` blocks along y. Nested block loops on distinct axes give
    a 2-D or 3-D grid (no flattening). `sums` names arrays that distinct
    blocks may add into (`out[c] += e;`, a split reduction): the mark gets
    `reduction(+:out)`, the obligation exempts those additions from
    disjointness (they may be reordered: fp "reassoc"), and the CUDA printer
    makes them `atomicAdd`. Refused: a loop with pragmas, inside a thread
    loop or a block loop of the same axis, or leaving early; a sum that is
    not an array the loop writes.
    """
    return _map(program, target, "block", axis, sums)


def _block_loop(who: str, program: ir.Program, target: str) -> tuple[Match, ir.For, str]:
    """The loop at `target`, which must be mapped to blocks; its match and where it is."""
    res = Resolver(program)
    m: Match = res.one(target, "canonical for loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    if mapping(loop) is None or mapping(loop)[0] != "block":  # type: ignore[index]
        raise TransformError(f"{who}: {where} is not mapped to blocks (gpu.map_blocks first)", loop.loc)
    return m, loop, where


@primitive
def last_first(program: ir.Program, target: str) -> Rewrite:
    """Launch the blocks of a block loop from its last iteration to its
    first: in causal attention the last query blocks attend to the most
    keys; started first, the short blocks fill the end of the run (H100,
    attention.py: 1-2% faster).

    Before (`gpu.last_first("attention > for h > for bi")`):

        #pragma otp gpu block x
        for (int bi = 0; bi < S; bi += 64) { ... }

    After (no obligation: the blocks of the grid run in no set order, so
    the loop's `parallel` obligation already covers this one):

        #pragma otp gpu block x
        #pragma otp gpu last_first
        for (int bi = 0; bi < S; bi += 64) { ... }

    In CUDA, `bi` is `((S + (64 - 1)) / 64 - 1 - (int)blockIdx.x) * 64`. The C
    program runs as before. Refused: a loop that is not mapped to blocks,
    or already marked.
    """
    m, loop, where = _block_loop("gpu.last_first", program, target)
    if LAST_FIRST in loop.pragmas:
        raise TransformError(f"gpu.last_first: {where} already launches its last block first", loop.loc)
    return Rewrite(replace(program, m.path, dataclasses.replace(loop, pragmas=loop.pragmas + (LAST_FIRST,))), ())


@primitive
def launch_bounds(program: ir.Program, target: str, blocks: int) -> Rewrite:
    """Ask nvcc to fit `blocks` blocks of a kernel on each multiprocessor:
    it then keeps a thread's registers within 65536 / (blocks x threads),
    trading a few spills for blocks that hide each other's latency (H100,
    matmul.py's SGEMM: 151 registers, one block of 256 threads per
    multiprocessor, 4.20 ms; capped at 128 for two, 3.68 ms).

    Before (`gpu.launch_bounds("matmul > for bi", 2)`):

        #pragma otp gpu block y
        for (int bi = 0; bi < M - M % 128; bi += 128) { ... }

    After (no obligation: the C program is unchanged; the kernel becomes
    `__global__ __launch_bounds__(256, 2) void matmul_kernel2(...)`):

        #pragma otp gpu block y
        #pragma otp gpu min_blocks 2
        for (int bi = 0; bi < M - M % 128; bi += 128) { ... }

    Refused: a loop that is not mapped to blocks or already has a count, a
    count that is not a positive integer.
    """
    m, loop, where = _block_loop("gpu.launch_bounds", program, target)
    if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1:
        raise TransformError(f"gpu.launch_bounds: blocks must be a positive integer, got {blocks!r}", loop.loc)
    if min_blocks(loop) is not None:
        raise TransformError(f"gpu.launch_bounds: {where} already asks for {min_blocks(loop)} blocks per "
                             f"multiprocessor", loop.loc)
    marked = dataclasses.replace(loop, pragmas=loop.pragmas + (min_blocks_mark(blocks),))
    return Rewrite(replace(program, m.path, marked), ())


@primitive
def map_threads(program: ir.Program, target: str, axis: str = "x") -> Rewrite:
    """Run the iterations of a loop inside a block loop as the block's threads along `axis`.

    Before (`gpu.map_threads("matmul > for bi > for i", "y")`):

        #pragma otp gpu block y
        for (int bi = 0; bi < M; bi += 16) {
          for (int i = bi; i < bi + 16; i++) { ... }
        }

    After (obligation parallel):

        #pragma otp gpu block y
        for (int bi = 0; bi < M; bi += 16) {
          #pragma otp gpu thread y
          for (int i = bi; i < bi + 16; i++) { ... }
        }

    In CUDA, `i` is `bi + (int)threadIdx.y`; each nest of thread loops is one
    phase of the block, separated from what comes before and after it by
    `__syncthreads()`. The loop must run a constant number of iterations
    with step 1 (the block's size along the axis). Refused: a loop outside
    any block loop, with pragmas, leaving early, or of non-constant extent.
    """
    return _map(program, target, "thread", axis)


@composite
def stage(target: str, array: str, name: Optional[str] = None, shape: Optional[list[str]] = None,
          axes: Optional[list[Optional[str]]] = None, region: Optional[list[str]] = None,
          threads: "int | Sequence[int]" = 0, width: "int | Sequence[int]" = 1, vector: int = 0,
          index: str = "i", out_axes: Optional[list[Optional[str]]] = None) -> None:
    """Stage the tile of `array` that a loop touches in a block array (shared
    memory, or registers when each thread owns its cells), copied in (and
    back, if the loop writes it) by the block's threads.

    Before (`gpu.stage("matmul > for bk > for i", "A", "As", ["M", "K"])`,
    inside a block loop):

        for (int bk = 0; bk < K - K % 16; bk += 16) {
          for (int i = bi; i < bi + 16; i++) { ... A[i * K + k] ... }
        }

    After (matrix.local_buffer, then gpu.map_threads on each copy loop):

        for (int bk = 0; bk < K - K % 16; bk += 16) {
          float As[16][16];
          #pragma otp gpu thread y
          for (int i0 = 0; i0 < 16; i0++) {
            #pragma otp gpu thread x
            for (int i1 = 0; i1 < 16; i1++) {
              As[i0][i1] = A[(bi + i0) * K + (bk + i1)];
            }
          }
          for (int i = bi; i < bi + 16; i++) { ... As[i - bi][k - bk] ... }
        }

    In CUDA: copy in, `__syncthreads()`, use, `__syncthreads()` (before the
    next iteration overwrites the tile). `axes` are the thread axes of the
    copy loops, outermost first (default: "y", "x" for two dimensions,
    "x" for one); a loop given None stays sequential, swapped under the
    mapped ones (`[None, "x"]`: thread t copies column t of every row);
    `region` is local_buffer's ("bi:64", one origin:size per
    dimension) where it cannot be inferred; with `threads`, a copy loop
    longer than that many iterations is first cut by gpu.thread_tile, so
    that each thread copies several cells (a list gives each copy loop its
    own count, outermost first, as `axes`: `[4, 16]` copies a 16 x 128 tile
    with 4 x 16 threads); `width` (one for all, or a list as `threads`) is
    gpu.thread_tile's: each thread copies runs of that many neighbouring
    cells, as the loop that uses the tile reads them (a register tile's
    copies must give each thread the cells its uses own). With `vector` V
    (instead of `axes`, `threads` and `width`) the V threads of the block
    copy the tile in 16-byte pieces (gpu.vector_pieces): a copy of a 32 x
    128 bfloat16 tile by 128 threads is 4 `int4` loads each, where a thread
    per column makes 32 loads of 2 bytes. `index` names the copy loops'
    indices as local_buffer's (and, with `vector`, the threads' loop
    `<index>t`). `out_axes` are the copy back's own axes when they differ
    from the copy in's: a tile of registers a thread per row fills (`["x",
    None]`) can go back to global memory a thread per column (`[None,
    "x"]`: neighbouring threads write neighbouring cells), once the copy
    back reads a shared copy of it. The obligations are those of the steps
    it makes.
    """
    if vector and (axes is not None or threads or width != 1 or out_axes is not None):
        raise TransformError("gpu.stage: `vector` shares the copies among the block's threads itself; give no "
                             "`axes`, `out_axes`, `threads` or `width` with it", None)
    before = current_session().current()
    matrix.local_buffer(target, array, name, shape, region, index=index)
    program = current_session().current()
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    copies = _copy_loops(program, before, m.path)
    if not copies:
        raise TransformError(f"gpu.stage: matrix.local_buffer made no copy loop for '{array}' around "
                             f"{_where(res, m.path, m.node)}", m.node.loc)
    back = [path for path in copies if path[-1][1] > m.path[-1][1]]  # type: ignore[operator]
    if out_axes is not None and not back:
        raise TransformError(f"gpu.stage: {_where(res, m.path, m.node)} does not write '{array}': there is no copy "
                             f"back for `out_axes`", m.node.loc)
    for path in copies:
        nest = _perfect(program, path)
        chosen = (out_axes if path in back and out_axes is not None else axes) or ["z", "y", "x"][-len(nest):]
        if len(chosen) != len(nest):
            raise TransformError(f"gpu.stage: the copy of '{array}' is a nest of {len(nest)} loops but "
                                 f"{len(chosen)} axes were given ({chosen})", m.node.loc)
        if vector:
            vector_pieces(_target_at(current_session().current(), m.function, path, 0), vector,
                          None if index == "i" else f"{index}t")
            continue
        indices = [lp.index for lp in nest]
        counts, widths = (_per_loop(array, len(nest), given, what, m.node.loc)
                          for given, what in ((threads, "thread counts"), (width, "widths")))
        if any(counts):
            _tile_copy(m.function, _target_at(program, m.function, path, 0), indices, counts, widths)
        order = _mapped_first(m.function, path, list(zip(indices, chosen)))
        top = _target_at(current_session().current(), m.function, path, 0)
        for depth, (_, axis) in enumerate(order):
            if axis is not None:
                map_threads(top + "".join(f" > for {i}" for i, _ in order[1:depth + 1]), axis)


@composite
def vector_pieces(target: str, threads: int, index: Optional[str] = None) -> None:
    """Share a copy nest (a loop, or two: rows, then consecutive cells of
    each) among `threads` threads, each copying 16-byte pieces: the loop
    over a row's cells is cut into runs of 16 bytes, the rows and runs are
    collapsed into one loop of pieces handed out cyclically, and each piece
    is one gpu.vector_copy.

    Before (`gpu.vector_pieces("gqa_decode > for bt > for i0", 128)`, a
    tile of 32 keys of bfloat16 staged by gpu.stage, rows padded to 136):

        for (int i0 = 0; i0 < 32; i0++) {
          for (int i1 = 0; i1 < 128; i1++) {
            ks[i0][i1] = k_cache[(g * SMAX + 32 * bt + i0) * 128 + i1];
          }
        }

    After (loop.tile, loop.shift, arith.simplify, loop.normalize,
    loop.collapse, gpu.cyclic, gpu.vector_copy; their obligations, among
    them that each piece starts 16 bytes apart on both sides):

        for (int p = t; p < 512; p += 128) {   // thread t of 128
          int i0 = p / 16;
          int r1 = p % 16;
          #pragma otp gpu int4 8
          for (int c1 = 0; c1 < 8; c1++) {
            ks[i0][c1 + r1 * 8] = k_cache[(g * SMAX + 32 * bt + i0) * 128 + c1 + r1 * 8];
          }
        }

    The threads' loop is gpu.cyclic's, its index `index` (default a fresh
    `t`). Refused: a nest of more than two loops, a copy that is not one
    statement `dst[...] = src[...];` of a scalar type of 1, 2, 4 or 8 bytes,
    and whatever the steps refuse (a row whose bytes are not a multiple of
    16, a count of pieces not a multiple of `threads`).
    """
    program = current_session().current()
    res = Resolver(program)
    m = res.one(target, "copy loop", (ir.For,))
    paths = _perfect_paths(program, m.path)
    nest: list[ir.For] = [get(program, p) for p in paths]
    copy = nest[-1].body.stmts[0] if len(nest[-1].body.stmts) == 1 else None
    lhs = copy.expr.lhs if isinstance(copy, ir.ExprStmt) and isinstance(copy.expr, ir.Assign) \
        and isinstance(copy.expr.rhs, ir.Index) else None
    env, tds = env_at(program, paths[-1] + (("body", None), ("stmts", 0))), typedefs_of(program)
    size = _BYTES.get(type_name(unqualified(type_of(lhs, env, tds)))) if lhs is not None else None
    if len(nest) > 2 or size is None:
        raise TransformError(f"gpu.vector_pieces: {_where(res, m.path, m.node)} is not a copy nest "
                             f"of one or two loops around `dst[...] = src[...];` of a scalar type", m.node.loc)
    fn = m.function
    cells = f"{target} > for {nest[-1].index}" if len(nest) == 2 else target
    runs, run = thread_tile_name(cells), thread_tile_name(cells, "c")
    loops.tile(cells, VECTOR_BYTES // size, runs)
    loops.shift(f"{fn} > for {runs} > for {nest[-1].index}", f"-{runs}", run)
    top = _target_at(current_session().current(), fn, m.path, 0)
    arith.simplify(top)
    if len(nest) == 2:
        loops.normalize(f"{top} > for {runs}")
        pieces = _fresh_local("gpu.vector_pieces", "piece index", None, "p" + nest[0].index,
                              current_session().current(), m.path, fn, m.node.loc)
        loops.collapse(top, pieces)
    else:
        loops.normalize(top)
        pieces = runs
    cyclic(f"{fn} > for {pieces}", threads, index=index)
    vector_copy(f"{fn} > for {pieces} > for {run}")


def _perfect_paths(program: ir.Program, path: Path) -> list[Path]:
    """The paths of the loops of the perfect nest at `path`."""
    out = [path]
    while len(body := get(program, out[-1]).body.stmts) == 1 and isinstance(body[0], ir.For):
        out.append(out[-1] + (("body", None), ("stmts", 0)))
    return out


def _per_loop(array: str, loops: int, given: "int | Sequence[int]", what: str, loc: Optional[ir.Loc]) -> list[int]:
    """gpu.stage's `threads` or `width`, one per copy loop."""
    out = [given] * loops if isinstance(given, int) else list(given)
    if len(out) != loops:
        raise TransformError(f"gpu.stage: the copy of '{array}' is a nest of {loops} loops but {len(out)} {what} "
                             f"were given ({out})", loc)
    return out


def _mapped_first(function: str, path: Path, order: list[tuple[str, Optional[str]]]) \
        -> list[tuple[str, Optional[str]]]:
    """Swap the copy loops of the nest at `path` that stay sequential (axis
    None) under those mapped to threads; the new order."""
    while True:
        k = next((d for d in range(len(order) - 1) if order[d][1] is None and order[d + 1][1] is not None), None)
        if k is None:
            return order
        loops.swap(_target_at(current_session().current(), function, path, k))
        order[k], order[k + 1] = order[k + 1], order[k]


def _tile_copy(function: str, top: str, indices: list[str], threads: list[int], widths: list[int]) -> None:
    """Cut each loop of a copy nest longer than its count of `threads` (0:
    none) into threads x repeats (of runs of its `widths`), and sink the
    repeat loops under the thread loops."""
    program = current_session().current()
    nest = _perfect(program, Resolver(program).one(top, "loop", (ir.For,)).path)
    repeats: list[str] = []
    for depth, (lp, count, width) in enumerate(zip(nest, threads, widths)):
        extent = thread_extent(lp)
        if count and extent is not None and extent[1] and extent[0] > count:
            inner = top + "".join(f" > for {i}" for i in indices[1:depth + 1])
            repeats.append(thread_tile_name(inner))
            thread_tile(inner, count, repeats[-1], width)
    for r in repeats:
        _sink(function, r, indices)


def _sink(function: str, repeat: str, indices: list[str]) -> None:
    """Swap the repeat loop `repeat` under every thread loop below it."""
    while True:
        program = current_session().current()
        m = Resolver(program).one(f"{function} > for {repeat}", "loop", (ir.For,))
        body = m.node.body.stmts
        if len(body) != 1 or not isinstance(body[0], ir.For) or body[0].index not in indices:
            return
        loops.swap(f"{function} > for {repeat}")


def thread_tile_name(target: str, prefix: str = "r") -> str:
    """The name gpu.thread_tile gives the repeat loop (`prefix` "r") or the
    run loop ("c") of the loop at `target`."""
    program = current_session().current()
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    role = "repeat index" if prefix == "r" else "run index"
    return _fresh_local("gpu.thread_tile", role, None, prefix + m.node.index, program, m.path, m.function,
                        m.node.loc)


@composite
def thread_tile(target: str, threads: int, repeat: Optional[str] = None, width: int = 1) -> None:
    """Cut a loop of constant extent E (a multiple of `threads` x `width`)
    into `threads` iterations, each running E / threads strided iterations:
    thread t takes t, t + threads, t + 2 * threads, ... (neighbouring
    threads, neighbouring cells).

    Before (`gpu.thread_tile("matmul > for bk > for i", 16)`):

        for (int i = bi; i < bi + 64; i++) {
          body(i);
        }

    After (loop.tile, loop.shift, arith.simplify, loop.swap; their obligations):

        for (int i = 0; i < 16; i++) {
          for (int ri = bi; ri < bi + 64; ri += 16) {
            body(i + ri);
          }
        }

    The outer loop is then ready for gpu.map_threads, and the inner one runs
    in each thread (an accumulator indexed by `i + ri - bi` is owned by thread
    `i`: the CUDA printer keeps it in registers). The inner index is
    `repeat`, by default `r<index>` made fresh.

    With `width` W > 1 a thread takes runs of W neighbouring iterations
    instead (`gpu.thread_tile("matmul > for bk > for ri > for j", 16,
    width=4)`: the 4 columns of a run are one 16-byte load of a row;
    loop.tile, loop.shift, loop.normalize first):

        for (int j = 0; j < 16; j++) {
          for (int rj = 0; rj < 32; rj += 16) {
            for (int cj = 0; cj < 4; cj++) {
              body(cj + bj + (j + rj) * 4);
            }
          }
        }

    The run index is `c<index>` made fresh.
    """
    program = current_session().current()
    m = Resolver(program).one(target, "loop", (ir.For,))
    for value, what in ((threads, "threads"), (width, "width")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TransformError(f"gpu.thread_tile: {what} must be a positive integer, got {value!r}", m.node.loc)
    extent = constant_extent(m.node)
    if extent is not None and extent % (threads * width):
        raise TransformError(f"gpu.thread_tile: for {m.node.index} runs {extent} iterations, not a multiple of "
                             f"{threads} threads x {width}", m.node.loc)
    if width > 1:
        run = thread_tile_name(target, "c")
        runs = _fresh_local("gpu.thread_tile", "run loop index", None, "q" + m.node.index, program, m.path,
                            m.function, m.node.loc)
        loops.tile(target, width, runs)
        loops.shift(f"{m.function} > for {runs} > for {m.node.index}", f"-{runs}", run)
        loops.normalize(f"{m.function} > for {runs}", m.node.index)
        target = _target_at(current_session().current(), m.function, m.path, 0)
    repeat = repeat or thread_tile_name(target)
    loops.tile(target, threads, repeat)
    inner = f"{m.function} > for {repeat} > for {m.node.index}"
    loops.shift(inner, f"-{repeat}")
    arith.simplify(f"{m.function} > for {repeat}")
    loops.swap(f"{m.function} > for {repeat}")


def _target_at(program: ir.Program, function: str, path: Path, depth: int) -> str:
    """A target for the loop `depth` levels inside the perfect nest at `path`
    (its index name and occurrence, in source order)."""
    top: ir.For = get(program, path)
    fn = get(program, path[:1])
    same = [p for p, n in walk(fn, path[:1]) if isinstance(n, ir.For) and n.index == top.index]
    inner = "".join(f" > for {lp.index}" for lp in _perfect(program, path)[1:depth + 1])
    return f"{function} > for {top.index}#{same.index(path) + 1}{inner}"


def _copy_loops(program: ir.Program, before: ir.Program, path: Path) -> list[Path]:
    """The loops local_buffer put just before and after the loop at `path`."""
    block, k = path[:-1], path[-1][1]
    assert k is not None
    stmts = get(program, block).stmts
    known = {n.index for n in _all_loops(before)}
    out = []
    for j in (k - 1, k + 1):
        if 0 <= j < len(stmts) and isinstance(stmts[j], ir.For) and stmts[j].index not in known:
            out.append(block + (("stmts", j),))
    return out


def _all_loops(program: ir.Program) -> list[ir.For]:
    return [n for _, n in walk(program) if isinstance(n, ir.For)]


def _perfect(program: ir.Program, path: Path) -> list[ir.For]:
    return [get(program, p) for p in _perfect_paths(program, path)]


# ----------------------------------------------------------------- cyclic loops and reductions


def _threads_count(who: str, threads: int, loop: ir.For) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS \
            or threads & (threads - 1):
        raise TransformError(f"{who}: threads must be a power of two from 1 to {MAX_THREADS}, got {threads!r}",
                             loop.loc)


def _in_block_only(who: str, program: ir.Program, res: Resolver, m: Match) -> None:
    around = [lv for lv, _ in _enclosing_mapped(program, m.path)]
    if "block" not in around or "thread" in around:
        raise TransformError(f"{who}: {_where(res, m.path, m.node)} must be inside a block loop and outside "
                             f"any thread loop", m.node.loc)


def _strided(loop: ir.For, position: ir.Expr, count: int, body: ir.Block, counter: Optional[str] = None) -> ir.For:
    """`for (j = start + position * step; j < stop; j += count * step) body`:
    the share of `loop` of one of `count` workers taking its iterations in turn.
    With a `counter` k, when `loop` runs a constant multiple E of `count`
    iterations (step 1), `for (k = 0; k < E / count; k++)` with j replaced
    by `start + position + count * k`: the same iterations, in a count nvcc
    reads as a constant (it unrolls the loop, and keeps a per-thread array
    the loop indexes in registers; from `j = bj + w % 2` to `j < bj + 64`,
    it put it on the stack)."""
    extent = constant_extent(loop) if counter is not None and not loop.inclusive else None
    if extent and extent % count == 0:
        k = ir.Var(counter)  # type: ignore[arg-type]
        first = position if loop.start == ZERO else ir.Binop("+", loop.start, position)
        at = ir.Binop("+", first, ir.Binop("*", ir.Const(str(count)), k))
        return dataclasses.replace(loop, index=counter, start=ZERO, stop=ir.Const(str(extent // count)), step=ONE,
                                   body=subst(body, {loop.index: at}), inclusive=False, pragmas=())
    literal = loop.step.text if isinstance(loop.step, ir.Const) and loop.step.text.isdigit() else None
    step = ir.Const(str(count * int(literal))) if literal is not None \
        else ir.Binop("*", ir.Const(str(count)), loop.step)  # folded: the checkers read a literal step
    offset = position if loop.step == ONE else ir.Binop("*", position, loop.step)
    start = offset if loop.start == ZERO else ir.Binop("+", loop.start, offset)
    return dataclasses.replace(loop, start=start, step=step, body=body, inclusive=False, pragmas=())


def _thread_loop(t: str, threads: int, axis: str, stmts: tuple[ir.Stmt, ...], loc: Optional[ir.Loc]) -> ir.For:
    return ir.For(t, ZERO, ir.Const(str(threads)), ir.Block(stmts), ONE, ir.INT, False,
                  (mark("thread", axis),), (), loc)


def _cyclic_loop(loop: ir.For, t: str, threads: int, axis: str, body: ir.Block) -> ir.For:
    """`for (t = 0; t < threads; t++) for (j = start + t * step; j < stop; j += threads * step) body`,
    the `t` loop mapped to the threads of `axis`."""
    return _thread_loop(t, threads, axis, (_strided(loop, ir.Var(t), threads, body),), loop.loc)


def _thread_ob(program: ir.Program, function: str, path: Path, claim: str) -> Obligation:
    return Obligation("parallel", f"distinct threads of {claim} touch disjoint cells", function, (path,))


@primitive
def cyclic(program: ir.Program, target: str, threads: int = 256, axis: str = "x",
           index: Optional[str] = None) -> Rewrite:
    """Share the iterations of a loop inside a block among `threads` threads, cyclically.

    Before (`gpu.cyclic("softmax > for j#3", 256)`, inside a block loop):

        for (int j = 0; j < C; j++) {
          y[i * C + j] = y[i * C + j] / sum;
        }

    After (obligation parallel):

        #pragma otp gpu thread x
        for (int t = 0; t < 256; t++) {
          for (int j = t; j < C; j += 256) {
            y[i * C + j] = y[i * C + j] / sum;
          }
        }

    Thread t runs iterations t, t + 256, ...: neighbouring threads touch
    neighbouring cells at each step (coalesced). The thread index is
    `index` (a name unused in the function), by default a fresh `t`.
    Refused: outside a block loop or inside a thread loop, pragmas, leaving
    early, a thread count that is not a power of two up to 1024.
    """
    who = "gpu.cyclic"
    res = Resolver(program)
    m = res.one(target, "canonical for loop", (ir.For,))
    loop: ir.For = m.node
    _threads_count(who, threads, loop)
    _checked_loop(who, res, m, axis)
    _in_block_only(who, program, res, m)
    t = _fresh_local(who, "thread index", index, "t", program, m.path, m.function, loop.loc)
    new = _cyclic_loop(loop, t, threads, axis, loop.body)
    return Rewrite(replace(program, m.path, new), (_thread_ob(program, m.function, m.path, f"for {t}"),))


def _checked_loop(who: str, res: Resolver, m: Match, axis: str) -> None:
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    if axis not in AXES:
        raise TransformError(f"{who}: axis must be one of {', '.join(AXES)}, got {axis!r}", loop.loc)
    if loop.pragmas:
        raise TransformError(f"{who}: {where} already has '#pragma {loop.pragmas[0]}'", loop.loc)
    _refuse_early_exit(who, where, loop.body.stmts, loop)
    _check_bounds_stable(who, res, m.path, loop, loop.body)


_IDENTITY = {"+": "0", "max": "-INFINITY", "min": "INFINITY"}
_COMBINE = {"max": "fmax", "min": "fmin"}


def _elem_code(t: ir.CType) -> Optional[str]:
    """'float' or 'double' for a floating scalar type, else None."""
    names = getattr(t, "names", ())
    return "float" if names == ("float",) else "double" if names == ("double",) else None


def _identity(op: str, code: str) -> ir.Expr:
    if op == "+":
        return ir.Const("0.0f" if code == "float" else "0.0", "float")
    text = _IDENTITY[op]
    return ir.Unop("-", ir.Var("INFINITY")) if text.startswith("-") else ir.Var(text)


def _combine(op: str, code: str, into: ir.Expr, other: ir.Expr) -> ir.Stmt:
    if op == "+":
        return ir.ExprStmt(ir.Assign("+=", into, other))
    fn = _COMBINE[op] + ("f" if code == "float" else "")
    return ir.ExprStmt(ir.Assign("=", into, ir.Call(ir.Var(fn), (into, other))))


@primitive
def reduce(program: ir.Program, target: str, var: str, threads: int = 256, axis: str = "x") -> Rewrite:
    """Run a reduction loop of a block on its threads: partial results per
    thread in a block array, then a tree of halving steps.

    Before (`gpu.reduce("softmax > for j#2", "sum", 256)`, inside a block loop):

        float sum = 0.0f;
        for (int j = 0; j < C; j++) {
          y[i * C + j] = expf(x[i * C + j] - max_val);
          sum += y[i * C + j];
        }

    After (obligations parallel, one per thread loop; fp "reassoc": a sum
    is added in another order, and a tree of fmaxf / fminf may keep the
    other sign of a zero than the comparisons in order, equal values that
    differ in their bits):

        float sum = 0.0f;
        float sum_part[256];
        #pragma otp gpu thread x
        for (int t = 0; t < 256; t++) {
          sum_part[t] = 0.0f;
          for (int j = t; j < C; j += 256) {
            y[i * C + j] = expf(x[i * C + j] - max_val);
            sum_part[t] += y[i * C + j];
          }
        }
        #pragma otp gpu thread x
        for (int t = 0; t < 256; t++) {
          if (t < 128) {
            sum_part[t] += sum_part[t + 128];
          }
        }
        ... (64, 32, ..., 1)
        sum += sum_part[0];

    `var` must be a reduction of the loop (`s += e`, `s -= e`, `m = fmaxf(m, e)`,
    `if (e > m) m = e`, and the min forms, as parallel.parallel_for finds
    them) of type float or double; the partial results start at the
    operator's identity (0, -INFINITY, INFINITY) and the last step folds
    them into `var`. The CUDA printer puts a barrier between the steps,
    and runs the last five (halves 16 to 1) in the first warp as
    `__shfl_down_sync` steps, without barriers.
    Refused: outside a block loop or inside a thread loop, no such
    reduction, an integer max or min, a thread count that is not a power of
    two up to 1024.
    """
    from transformations.parallel import _sharing

    who = "gpu.reduce"
    res = Resolver(program)
    m = res.one(target, "canonical for loop", (ir.For,))
    loop: ir.For = m.node
    _threads_count(who, threads, loop)
    _checked_loop(who, res, m, axis)
    _in_block_only(who, program, res, m)
    op = dict(_sharing(who, program, res, [(m.path, loop)]).reductions).get(var)
    code = _elem_code(resolve(unqualified(env_at(program, m.path).get(var, ir.INT)), typedefs_of(program)))
    if op is None or code is None:
        raise TransformError(f"{who}: '{var}' is not a float or double reduction of {_where(res, m.path, loop)} "
                             f"(s += e, s -= e, m = fmaxf(m, e), if (e > m) m = e, ...)", loop.loc)
    part = _fresh_local(who, "partial results", None, f"{var}_part", program, m.path, m.function, loop.loc)
    t = _fresh_local(who, "thread index", None, "t", program, m.path, m.function, loop.loc)
    mine = ir.Index(ir.Var(part), ir.Var(t))
    body = subst(loop.body, {var: mine})
    first = _cyclic_loop(loop, t, threads, axis, body)
    first = dataclasses.replace(first, body=ir.Block((ir.ExprStmt(ir.Assign("=", mine, _identity(op, code))),)
                                                     + first.body.stmts))
    new: list[ir.Stmt] = [ir.DeclStmt(ir.Decl(part, ir.Array(ir.Base((code,)), ir.Const(str(threads))))), first]
    half = threads // 2
    while half >= 1:
        other = ir.Index(ir.Var(part), ir.Binop("+", ir.Var(t), ir.Const(str(half))))
        step = ir.If(ir.Binop("<", ir.Var(t), ir.Const(str(half))), ir.Block((_combine(op, code, mine, other),)))
        new.append(_thread_loop(t, threads, axis, (step,), loop.loc))
        half //= 2
    new.append(_combine(op, code, ir.Var(var), ir.Index(ir.Var(part), ZERO)))
    block, k = m.path[:-1], m.path[-1][1]
    assert k is not None
    out = splice(program, m.path, tuple(new))
    obs = tuple(_thread_ob(out, m.function, block + (("stmts", k + 1 + n),), f"step {n} of the reduction of {var}")
                for n in range(len(new) - 2))
    return Rewrite(out, obs, "reassoc")


LANE_GROUPS = (2, 4, 8, 16, 32)
"""Lanes a row may take: a power of two that divides a warp (the
printer's xor shuffles stay inside each group)."""


MMA_LANES, MMA_HALVES = 4, 2
"""gpu.warp_rows with mma=True: a row of an accumulator tile lies on the 4
lanes of a quad, and each thread holds 2 rows (g and g + 8)."""


def _mma_row(w: ir.Expr, half: ir.Expr) -> ir.Expr:
    """The row thread `w` holds in its `half` (0 or 1) of gpu.mma's
    accumulator layout: 16 (w / 32) + (w % 32) / 4 + 8 half."""
    tile = _op("*", _op("/", w, 32), TILE_ROWS)
    return _op("+", _op("+", tile, _op("/", _op("%", w, 32), 4)), _op("*", half, 8))


def _paired(who: str, loop: ir.For, lane: ir.Expr, body: ir.Block, pair: str) -> ir.For:
    """gpu.warp_rows' mma form of a row's loop: by tiles of 8 columns, the
    lane taking columns 2 lane and 2 lane + 1 of each (`pair` over the two)."""
    extent = constant_extent(loop)
    if loop.inclusive or extent is None or extent % TILE_COLS:
        raise TransformError(f"{who}: the loop 'for {loop.index}' must run a constant multiple of {TILE_COLS} "
                             f"iterations with step 1, to go by tiles of {TILE_COLS} columns", loop.loc)
    column = ir.Binop("+", ir.Binop("+", ir.Var(loop.index), ir.Binop("*", ir.Const("2"), lane)), ir.Var(pair))
    inner = ir.For(pair, ZERO, ir.Const("2"), subst(body, {loop.index: column}), loc=loop.loc)
    return dataclasses.replace(loop, step=ir.Const(str(TILE_COLS)), body=ir.Block((inner,)), pragmas=())


@dataclasses.dataclass(frozen=True)
class _RowPlan:
    """gpu.warp_rows' reading of a row body: the phases' statements (each
    phase but the first opening with the folds of the reductions the one
    before ended with), the reductions (name, operator, type code, declaration)
    and the row's scalars."""

    phases: tuple[tuple[ir.Stmt, ...], ...]
    folds: tuple[tuple[tuple[str, str, str, ir.DeclStmt], ...], ...]
    scalars: frozenset[str]


def _row_plan(who: str, program: ir.Program, res: Resolver, m: Match) -> _RowPlan:
    """Cut the body of the row loop after each loop with reductions; refuse
    what the lanes of a row could not run together."""
    from transformations.parallel import _sharing

    loop: ir.For = m.node
    body = m.path + (("body", None),)
    scalars = frozenset(s.decl.name for s in loop.body.stmts if isinstance(s, ir.DeclStmt) and s.decl.name)
    phases: list[list[ir.Stmt]] = [[]]
    folds: list[tuple[tuple[str, str, str, ir.DeclStmt], ...]] = [()]
    decls = {s.decl.name: s for s in loop.body.stmts if isinstance(s, ir.DeclStmt)}
    moved: set[str] = set()
    for k, s in enumerate(loop.body.stmts):
        line = res.line(body + (("stmts", k),))
        if isinstance(s, ir.DeclStmt):
            if isinstance(s.decl.type, ir.Array) or s.decl.init is None:
                raise TransformError(f"{who}: '{stmt_text(s)}' (line {line}) declares an array or a scalar without "
                                     f"a value in a row: each lane keeps its own scalars, computed alike", s.loc)
            phases[-1].append(s)
            continue
        local = {n.decl.name for _, n in walk(s) if isinstance(n, ir.DeclStmt)}
        outer = _plain_writes(s) - scalars - local
        if outer:
            raise TransformError(f"{who}: the statement at line {line} sets '{sorted(outer)[0]}', declared outside "
                                 f"the rows: each thread would set its own copy", s.loc)
        if not isinstance(s, ir.For):
            update = isinstance(s, ir.ExprStmt) and _is_update(s, scalars)
            wrong = writes_of(s) - scalars if update else writes_of(s) & scalars
            if wrong:
                what = "memory as well as a row scalar" if update else f"the row's scalar '{sorted(wrong)[0]}'"
                raise TransformError(f"{who}: the statement at line {line} writes {what}: a row's scalars are set "
                                     f"by plain assignments, which every lane runs, and other statements run on "
                                     f"the row's first lane only", s.loc)
            phases[-1].append(s)
            continue
        key = Match(body + (("stmts", k),), s, m.function, line)
        _checked_loop(who, res, key, "x")
        sharing = _sharing(who, program, res, [(key.path, s)])
        found = []
        for var, op in sharing.reductions:
            d = decls.get(var)
            code = _elem_code(resolve(unqualified(d.decl.type), typedefs_of(program))) if d else None
            if d is None or code is None:
                raise TransformError(f"{who}: {_where(res, key.path, s)} reduces '{var}', which is not a float or "
                                     f"double declared in the row before it", s.loc)
            between = loop.body.stmts[loop.body.stmts.index(d) + 1:k]
            if var in free_vars(between):
                raise TransformError(f"{who}: '{var}' is used between its declaration and its reduction at line "
                                     f"{line}: the reduction must be its first use", s.loc)
            before = ir.Block(tuple(between))
            changed = writes_of(before) | ({"a call"} if any(isinstance(n, ir.Call) for _, n in walk(before))
                                           else set())
            if d.decl.init != _identity(op, code) and changed & (free_vars(d.decl.init) | {"a call"}):
                raise TransformError(f"{who}: the value of '{var}' ({expr_text(d.decl.init)}) is read where its "
                                     f"reduction starts, at line {line}, and the statements before it change "
                                     f"{sorted(changed & (free_vars(d.decl.init) | {'a call'}))[0]}", s.loc)
            found.append((var, op, code, d))
        others = (writes_of(s.body) & scalars) - {v for v, *_ in found}
        if others:
            raise TransformError(f"{who}: {_where(res, key.path, s)} sets the row's scalar '{sorted(others)[0]}', "
                                 f"which each lane would then hold apart; only its reductions are combined", s.loc)
        phases[-1].append(s)
        if found:
            moved |= {v for v, *_ in found}
            phases.append([])
            folds.append(tuple(found))
    for n, stmts in enumerate(phases):
        mine = {s.decl.name for s in stmts if isinstance(s, ir.DeclStmt)} - moved
        mine |= {v for v, *_ in folds[n]}
        alien = (free_vars(tuple(stmts)) & scalars) - mine
        if alien:
            name = sorted(alien)[0]
            raise TransformError(f"{who}: the row's scalar '{name}' is set on one side of a reduction loop and used "
                                 f"on the other, in {_where(res, m.path, loop)}: the lanes share only the "
                                 f"reductions' results", loop.loc)
    return _RowPlan(tuple(tuple(s for s in p if not (isinstance(s, ir.DeclStmt) and s.decl.name in moved))
                          for p in phases), tuple(folds), scalars)


def _rows_unmapped(program: ir.Program, m: Match, axis: str) -> ir.Program:
    """`program` with the row loop of gpu.warp_rows as a plain loop: a loop
    already run by a thread each (`#pragma otp gpu thread` of `axis`) loses
    its mapping, its rows being given L threads each instead; and each
    braced block of its body (gpu.partial_sum's) is opened into the row
    when that captures no name."""
    loop: ir.For = m.node
    if loop.pragmas == (mark("thread", axis),):
        loop = dataclasses.replace(loop, pragmas=())
    stmts: list[ir.Stmt] = []
    for k, s in enumerate(loop.body.stmts):
        inner = {d.decl.name for d in s.stmts if isinstance(d, ir.DeclStmt)} if isinstance(s, ir.Block) else None
        rest = loop.body.stmts[:k] + loop.body.stmts[k + 1:]
        declared = {d.decl.name for d in rest if isinstance(d, ir.DeclStmt)}
        if inner is not None and not inner & (free_vars(rest) | declared):
            stmts += s.stmts  # type: ignore[union-attr]
        else:
            stmts.append(s)
    return replace(program, m.path, dataclasses.replace(loop, body=dataclasses.replace(loop.body,
                                                                                       stmts=tuple(stmts))))


def _plain_writes(node: Any) -> set[str]:
    """The variables `node` assigns or increments as a whole (not through an index)."""
    out = set()
    for _, n in walk(node):
        target = n.lhs if isinstance(n, ir.Assign) else n.arg if isinstance(n, ir.Unop) and n.op in INCDEC else None
        if isinstance(target, ir.Var):
            out.add(target.name)
    return out


def _is_update(s: ir.ExprStmt, scalars: frozenset[str]) -> bool:
    """An assignment or increment of one of the row's scalars, calling nothing impure."""
    e = s.expr
    target = e.lhs if isinstance(e, ir.Assign) else e.arg if isinstance(e, ir.Unop) else None
    return isinstance(target, ir.Var) and target.name in scalars


@primitive
def warp_rows(program: ir.Program, target: str, lanes: int = 32, axis: str = "x", mma: bool = False) -> Rewrite:
    """Run each row of a loop of a block on its own group of `lanes`
    threads (a warp for 32): the row's loops shared among its lanes, each
    reduction into a partial result per lane that every lane then folds.

    Before (`gpu.warp_rows("gqa_decode > for g#2 > for bt > for r#1", 32)`,
    the 4 heads of a group, a chunk's max and exp-sum):

        for (int r = 0; r < 4; r++) {
          float m = -INFINITY;
          for (int t = bt * 64; t < bt * 64 + 64; t++) {
            if (sc[r][t - 64 * bt] > m) { m = sc[r][t - 64 * bt]; }
          }
          max_parts[r] = m;
          float l = 0.0f;
          for (int t = bt * 64; t < bt * 64 + 64; t++) {
            sc[r][t - 64 * bt] = expf(sc[r][t - 64 * bt] - m);
            l += sc[r][t - 64 * bt];
          }
          sum_parts[r] = l;
        }

    After (obligations parallel: on the rows (before: the phases run each
    piece of every row before the next piece of any), and on each thread
    loop (its lanes' shares of the row's loops); fp "reassoc"):

        float m_part[128];
        float l_part[128];
        #pragma otp gpu thread x
        for (int w = 0; w < 128; w++) {
          m_part[w] = -INFINITY;
          for (int tk = 0; tk < 2; tk++) {  // t = bt * 64 + w % 32 + 32 * tk
            if (sc[w / 32][bt * 64 + w % 32 + 32 * tk - 64 * bt] > m_part[w]) { m_part[w] = ...; }
          }
        }
        #pragma otp gpu thread x
        for (int w = 0; w < 128; w++) {
          float m = -INFINITY;
          for (int k = 0; k < 32; k++) { m = fmaxf(m, m_part[w / 32 * 32 + k]); }
          if (w % 32 == 0) { max_parts[w / 32] = m; }
          l_part[w] = 0.0f;
          for (int tk = 0; tk < 2; tk++) { ... l_part[w] += sc[w / 32][bt * 64 + w % 32 + 32 * tk - 64 * bt]; }
        }
        #pragma otp gpu thread x
        for (int w = 0; w < 128; w++) {
          float l = 0.0f;
          for (int k = 0; k < 32; k++) { l += l_part[w / 32 * 32 + k]; }
          if (w % 32 == 0) { sum_parts[w / 32] = l; }
        }

    Thread w runs lane w % lanes of row w / lanes. The row loop may be a
    block's loop, or one already run by a thread a row (mapped to the
    threads of `axis`: it then takes `lanes` threads a row). A braced block
    in the row (gpu.partial_sum's) is opened into it when that captures no
    name. The row's body is cut after each loop holding reductions
    (`s += e`, `m = fmaxf(m, e)`, `if (e > m) m = e`, ... of a float or
    double declared in the row): a phase per piece. Each loop of the row is
    shared among the lanes in turn; one of a constant trip count that is a
    multiple of the lanes becomes a loop of constant count (`tk` above),
    which nvcc unrolls, keeping a per-thread array it indexes in registers
    (cuda_registers: the row's lane digit). A reduction's partial results
    start at its operator's identity, but for the first lane's, which
    starts at the declared value (read where the loop starts: `m_part[w] =
    w % 32 == 0 ? x[...] : -INFINITY`), and the next phase opens by folding
    the row's partials, in every lane, into the declared scalar, from the
    identity, so all lanes hold the result (the CUDA printer folds them
    with `__shfl_xor_sync` when the block's threads lie along x in whole
    warps). The row's scalars are computed alike by every lane; any other
    statement runs on the row's first lane. Refused: a loop that is not a
    block's or a thread loop of `axis` (or is inside a thread loop), not a
    constant number of rows with step 1, a lane count not in 2, 4, 8, 16,
    32 or more than 1024 threads; in the row, an array or a scalar without
    a value, a reduction into what is not a float or double declared in
    the row before it (or used in between), a declared value that reads
    what a statement between the declaration and the loop stores into, a
    loop setting a row scalar it does not reduce, a statement writing both
    a row scalar and memory, a write to a scalar declared outside the rows
    (each thread would set its own copy), a row scalar set on one side of a
    cut and used on the other.

    With `mma=True` (4 lanes), the rows and their cells go to the threads
    as gpu.mma's accumulator tiles hold them: the warp w takes rows 16 w
    to 16 w + 15, thread 32 w + 4 g + t its rows 16 w + g and 16 w + g + 8
    (a loop `half` over the two, inside each phase) and, in each tile of 8
    columns, columns 2t and 2t + 1 (the row's loops, of a constant multiple
    of 8 iterations, step by tiles, `for (j = bj; j < bj + 64; j += 8)
    for (jc = 0; jc < 2; jc++)` with j read as j + 2 t + jc). Each cell
    a thread touches is then one its lane holds in gpu.mma's layout, so
    that gpu.fragment_layout keeps scores of a tile product in the
    registers that computed them. The partial results are `float
    m_part[2][2 R]` (R rows), a thread's at [half][w]. Refused besides: a
    lane count other than 4, rows not a multiple of 16, a row's loop not
    of a constant multiple of 8 iterations with step 1.
    """
    who = "gpu.warp_rows"
    res = Resolver(program)
    m = res.one(target, "canonical for loop", (ir.For,))
    program = _rows_unmapped(program, m, axis)
    res = Resolver(program)
    m = res.one(target, "canonical for loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    _checked_loop(who, res, m, axis)
    _in_block_only(who, program, res, m)
    rows = constant_extent(loop)
    if isinstance(lanes, bool) or lanes not in LANE_GROUPS:
        raise TransformError(f"{who}: lanes must be one of {', '.join(map(str, LANE_GROUPS))}, got {lanes!r}",
                             loop.loc)
    per_thread = MMA_HALVES if mma else 1
    if mma and lanes != MMA_LANES:
        raise TransformError(f"{who}: with mma=True a row takes the {MMA_LANES} lanes of a quad (gpu.mma's "
                             f"accumulator layout), got lanes={lanes!r}", loop.loc)
    if rows is None or rows < 1 or rows * lanes > MAX_THREADS * per_thread or (mma and rows % TILE_ROWS):
        what = f"a multiple of {TILE_ROWS}, at most" if mma else "at most"
        raise TransformError(f"{who}: {where} must run a constant number of rows, {what} "
                             f"{MAX_THREADS * per_thread // lanes} for {lanes} lanes each, with step 1", loop.loc)
    plan = _row_plan(who, program, res, m)
    threads = rows * lanes // per_thread
    w = _fresh_local(who, "thread index", None, "w", program, m.path, m.function, loop.loc)
    k = _fresh_local(who, "fold index", None, "k", program, m.path, m.function, loop.loc)
    half = _fresh_local(who, "row half", None, "half", program, m.path, m.function, loop.loc) if mma else ""
    tw, group = ir.Var(w), ir.Const(str(lanes))
    lane, first = ir.Binop("%", tw, group), ir.Binop("/", tw, group)
    row_of = _mma_row(tw, ir.Var(half)) if mma else first
    row = row_of if loop.start == ZERO else ir.Binop("+", loop.start, row_of)
    parts = {var: _fresh_local(who, "partial results", None, f"{var}_part", program, m.path, m.function, loop.loc)
             for fold in plan.folds for var, *_ in fold}

    def part_type(code: str) -> ir.CType:
        t: ir.CType = ir.Array(ir.Base((code,)), ir.Const(str(threads)))
        return ir.Array(t, ir.Const(str(MMA_HALVES))) if mma else t

    def part_cell(part: str, at: ir.Expr) -> ir.Index:
        return ir.Index(ir.Index(ir.Var(part), ir.Var(half)), at) if mma else ir.Index(ir.Var(part), at)

    decls: list[ir.Stmt] = [ir.DeclStmt(ir.Decl(parts[var], part_type(code)))
                            for fold in plan.folds for var, _, code, _ in fold]
    cells = {var: part_cell(part, tw) for var, part in parts.items()}
    reductions = {var: (op, code) for fold in plan.folds for var, op, code, _ in fold}
    mates = ir.Binop("+", ir.Binop("*", first, group), ir.Var(k))
    starts = {var: d.decl.init if d.decl.init == _identity(op, code) else
              ir.Ternary(ir.Binop("==", lane, ZERO), d.decl.init, _identity(op, code))  # type: ignore[arg-type]
              for fold in plan.folds for var, op, code, d in fold}
    new: list[ir.Stmt] = []
    counters: dict[str, str] = {}
    for stmts, fold in zip(plan.phases, plan.folds):
        body: list[ir.Stmt] = []
        for var, op, code, d in fold:
            body += [dataclasses.replace(d, decl=dataclasses.replace(d.decl, init=_identity(op, code))),
                     ir.For(k, ZERO, group, ir.Block((_combine(op, code, ir.Var(var), part_cell(parts[var], mates)),)))]
        for s in stmts:
            if isinstance(s, ir.For):
                own = {v for v in writes_of(s.body) if v in reductions}
                body += [ir.ExprStmt(ir.Assign("=", cells[v], starts[v])) for v in sorted(own)]
                if s.index not in counters:
                    counters[s.index] = _fresh_local(who, "tile's column" if mma else "lane's count", None,
                                                     f"{s.index}{'c' if mma else 'k'}", program, m.path,
                                                     m.function, s.loc)
                inner = subst(s.body, {v: cells[v] for v in own})
                body.append(_paired(who, s, lane, inner, counters[s.index]) if mma
                            else _strided(s, lane, lanes, inner, counters[s.index]))
            elif isinstance(s, ir.DeclStmt) or (isinstance(s, ir.ExprStmt) and _is_update(s, plan.scalars)):
                body.append(s)
            else:
                body.append(ir.If(ir.Binop("==", lane, ZERO), ir.Block((s,))))
        rows_body = subst(ir.Block(tuple(body)), {loop.index: row})
        if mma:  # after the substitution, which would rename the loop's index to keep `half` in `row` free;
            # `bi + (w / 32 * 16 + ...) - bi` as the row it is, which Z3 proves apart without cancelling
            rows_body = ir.Block((ir.For(half, ZERO, ir.Const(str(MMA_HALVES)), _tidy(rows_body), loc=loop.loc),))
        new.append(_thread_loop(w, threads, axis, rows_body.stmts, loop.loc))
    out = splice(program, m.path, tuple(decls + new))
    block, at = m.path[:-1], m.path[-1][1]
    assert at is not None
    obs = [Obligation("parallel", f"distinct rows of {where} touch disjoint cells (they run at once, on distinct "
                                  f"groups of {lanes} threads)", m.function, (m.path,), before=True)]
    obs += [_thread_ob(out, m.function, block + (("stmts", at + len(decls) + n),), f"phase {n + 1} of the rows of "
                       f"{where}") for n in range(len(new))]
    return Rewrite(out, tuple(obs), "reassoc" if reductions else "exact")


@primitive
def partial_sum(program: ir.Program, target: str, cell: str) -> Rewrite:
    """Sum a loop's additions into a memory cell in a local that starts at
    zero, then add the local to the cell once: what a block adds into an
    array that other blocks add into too (gpu.map_blocks' `sums`), one
    atomic addition per block instead of one per iteration.

    Before (`gpu.partial_sum("gqa_decode > for bt > for d > for r > for t", "out[(g * G + r) * D + d]")`):

        for (int t = bt; t < (bt + 64 < pos + 1 ? bt + 64 : pos + 1); t++) {
          out[(g * G + r) * D + d] += scores_b[...] * v_cache[(g * SMAX + t) * D + d];
        }

    After (obligation unaliased, as variable.local_accumulator; fp "reassoc":
    the additions are grouped):

        {
          float acc = 0.0f;
          for (int t = bt; t < (bt + 64 < pos + 1 ? bt + 64 : pos + 1); t++) {
            acc += scores_b[...] * v_cache[(g * SMAX + t) * D + d];
          }
          out[(g * G + r) * D + d] += acc;
        }

    The cell is as variable.local_accumulator takes it (updated only by
    `cell += e;` or `cell -= e;` in the loop, the same cell at every
    iteration) and of type float or double. Refused otherwise (a product
    `cell *= e` cannot be split this way).
    """
    who = "gpu.partial_sum"
    try:
        local = variable.local_accumulator.apply(program, target, cell)
    except TransformError as e:
        raise TransformError(f"{who}: {e.message.split(': ', 1)[-1]}", e.loc) from None
    m = Resolver(program).one(target, "canonical loop", (ir.For,))
    block: ir.Block = get(local.program, m.path)
    decl, loop, store = block.stmts
    assert isinstance(decl, ir.DeclStmt) and isinstance(loop, ir.For) and isinstance(store, ir.ExprStmt) \
        and isinstance(store.expr, ir.Assign) and decl.decl.name  # as local_accumulator builds them
    code = _elem_code(resolve(unqualified(decl.decl.type), typedefs_of(program)))
    acc = decl.decl.name
    if code is None:
        raise TransformError(f"{who}: '{cell}' is not a float or double cell", m.node.loc)
    ops = {n.expr.op for _, n in walk(loop.body) if isinstance(n, ir.ExprStmt) and isinstance(n.expr, ir.Assign)
           and n.expr.lhs == ir.Var(acc)}
    if not ops <= {"+=", "-="}:
        raise TransformError(f"{who}: the loop updates '{cell}' with {sorted(ops - {'+=', '-='})[0]}, not only by "
                             f"additions and subtractions", m.node.loc)
    new = ir.Block((dataclasses.replace(decl, decl=dataclasses.replace(decl.decl, init=_identity("+", code))), loop,
                    ir.ExprStmt(ir.Assign("+=", store.expr.lhs, ir.Var(acc)))), block.loc)
    return Rewrite(replace(local.program, m.path, new), local.obligations, "reassoc")


@primitive
def single(program: ir.Program, target: str, axis: str = "x") -> Rewrite:
    """Run a statement of a block on one of its threads: a loop of one
    iteration mapped to the threads of `axis` (the printer guards it with
    `threadIdx.x < 1`), so that a store every thread would otherwise make
    is made once.

    Before (`gpu.single("matvec_q8 > for i > 'y[i] = acc;'")`, in a block loop):

        y[i] = acc;

    After (obligation parallel, trivially met by one iteration):

        #pragma otp gpu thread x
        for (int t = 0; t < 1; t++) {
          y[i] = acc;
        }

    The statement runs once, as before; in CUDA a barrier separates it from
    what comes before and after. Refused: a declaration (its name would not
    outlive the loop), a statement outside a block loop or inside a thread
    loop, one that leaves the block early.
    """
    who = "gpu.single"
    res = Resolver(program)
    m = res.one(target, "statement (not a declaration)", (ir.ExprStmt, ir.For, ir.If, ir.Block))
    s, where = m.node, f"the statement at line {m.line}"
    if axis not in AXES:
        raise TransformError(f"{who}: axis must be one of {', '.join(AXES)}, got {axis!r}", s.loc)
    around = [lv for lv, _ in _enclosing_mapped(program, m.path)]
    if "block" not in around or "thread" in around or m.path[-1][0] != "stmts":
        raise TransformError(f"{who}: {where} must be a statement of a block loop, outside any thread loop", s.loc)
    esc = loops._escapes((s,))
    if esc is not None:
        raise TransformError(f"{who}: '{stmt_text(esc).splitlines()[0]}' leaves {where} early", s.loc)
    t = _fresh_local(who, "thread index", None, "t", program, m.path, m.function, s.loc)
    loop = ir.For(t, ZERO, ONE, ir.Block((s,)), ONE, ir.INT, False, (mark("thread", axis),), (), s.loc)
    return Rewrite(replace(program, m.path, loop), (_thread_ob(program, m.function, m.path, f"for {t}"),))


def _dims(t: ir.CType) -> list[Optional[ir.Expr]]:
    out: list[Optional[ir.Expr]] = []
    while isinstance(t, ir.Array):
        out.append(t.size)
        t = t.of
    return out


def _padded(t: ir.CType, amount: int) -> ir.CType:
    """`t` with its innermost array dimension `amount` cells longer."""
    assert isinstance(t, ir.Array)
    if isinstance(t.of, ir.Array):
        return dataclasses.replace(t, of=_padded(t.of, amount))
    return dataclasses.replace(t, size=ir.Const(str(int(t.size.text) + amount)))  # type: ignore[union-attr]


@primitive
def pad(program: ir.Program, target: str, amount: int = 1) -> Rewrite:
    """Lengthen the rows of a block's 2-D (or more) array by `amount` unused
    cells, so that the threads of a warp reading down a column hit distinct
    shared-memory banks.

    Before (`gpu.pad("gqa_decode > def ks")`, thread t reading ks[t][d]:
    with rows of 128 floats every thread hits the same bank):

        float ks[64][128];

    After (no obligation: each access ks[i][j] stays within its row, since
    level 2 checked it against the old row length, and distinct (i, j)
    stay distinct cells):

        float ks[64][129];

    A cell whose address goes to an intrinsic or to gpu.mma's tile product,
    which reach the next cells through it, gets the obligation in_range:
    those cells lie in its row (padding puts unused cells after the row).
    Refused: not a local C array of two or more constant dimensions, an
    amount that is not a positive integer, rows that a gpu.vector_copy
    reads or writes 16 bytes at a time, or gpu.mma reads k-major (CUDA's
    ldmatrix), and that would stop being a multiple of 16 bytes, or an
    array used otherwise than
    indexed in every dimension (passed to a call, its address taken
    otherwise: its layout could then matter).
    """
    who = "gpu.pad"
    res = Resolver(program)
    m = res.one(target, "array declaration", (ir.DeclStmt,))
    decl: ir.Decl = m.node.decl
    dims = _dims(decl.type)
    if len(dims) < 2 or not all(isinstance(d, ir.Const) and d.text.isdigit() for d in dims) or decl.init is not None:
        raise TransformError(f"{who}: '{decl.name}' is not a local array of two or more constant dimensions "
                             f"without initializer", decl.loc)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 1:
        raise TransformError(f"{who}: the padding must be a positive integer, got {amount!r}", decl.loc)
    block, k = m.path[:-1], m.path[-1][1]
    assert k is not None
    full, me, obligations = 0, ir.Var(decl.name or ""), []
    for path, n in walk(get(program, block), block):
        if isinstance(n, ir.Index):
            depth, base = 1, n.base
            while isinstance(base, ir.Index):
                depth, base = depth + 1, base.base
            if base == me and depth == len(dims):
                full += 1
                obligations += _row_span(who, program, path, n, int(dims[-1].text), m.function)  # type: ignore[union-attr]
    row = int(dims[-1].text) + amount  # type: ignore[union-attr]
    for _, n in walk(get(program, block)):
        cells = vector_cells(n)
        if cells and row % cells and any(x == me for _, x in walk(n)):
            raise TransformError(f"{who}: the loop over {n.index} copies '{decl.name}' "
                                 f"{cells} cells at a time (gpu.vector_copy), so its rows must stay a multiple of "
                                 f"{cells} cells: pad by {cells - int(dims[-1].text) % cells or cells}", decl.loc)
    if row % LDMATRIX_CELLS and any(isinstance(n, ir.Call) and n.name == MMA_KN and len(n.args) > 5
                                    and any(x == me for a in n.args[4:6] for _, x in walk(a))
                                    for _, n in walk(get(program, block))):
        raise TransformError(f"{who}: '{decl.name}' is read k-major by gpu.mma's tile product, which CUDA loads "
                             f"with ldmatrix.trans, so its rows must stay a multiple of {LDMATRIX_CELLS} cells: pad "
                             f"by a multiple of {LDMATRIX_CELLS}", decl.loc)
    uses = sum(1 for _, n in walk(get(program, block)) if n == me)
    if uses != full:
        raise TransformError(f"{who}: '{decl.name}' is used otherwise than indexed in all its {len(dims)} "
                             f"dimensions, so its layout may matter", decl.loc)
    new = dataclasses.replace(m.node, decl=dataclasses.replace(decl, type=_padded(decl.type, amount)))
    return Rewrite(replace(program, m.path, new), tuple(obligations))


def _row_span(who: str, program: ir.Program, path: Path, cell: ir.Index, row: int,
              function: str) -> list[Obligation]:
    """For a cell whose address is passed to an intrinsic or a tile product
    that reaches `width` cells from it (intrinsics.memory_args), the
    obligation that they stay in the cell's row of `row` cells (0 <= j <=
    row - width, j the last index), which padding moves apart; none for a
    plain access; refused for an address taken otherwise."""
    parent = get(program, path[:-1])
    if not (isinstance(parent, ir.Unop) and parent.op == "&"):
        return []
    call = get(program, path[:-2]) if len(path) > 2 and path[-2][0] == "args" else None
    spans = memory_args(call.name or "", len(call.args)) if isinstance(call, ir.Call) else None
    if not spans or path[-2][1] not in spans:
        raise TransformError(f"{who}: the address of '{expr_text(cell)}' is taken, so its layout may matter",
                             cell.loc)
    width = spans[path[-2][1]][1]
    return [Obligation("in_range", f"the {width} cells from '{expr_text(cell)}' that {call.name} reaches lie in "
                       f"its row of {row}: 0 <= {expr_text(cell.index)} <= {row - width}", function,
                       (path,), (ZERO, cell.index, ir.Const(str(row - width))))]


VECTOR_BYTES = 16
"""The width of the loads and stores gpu.vector_copy asks for (`int4`)."""
_BYTES = {"char": 1, "signed char": 1, "unsigned char": 1, "int8_t": 1, "uint8_t": 1, "int16_t": 2, "uint16_t": 2,
          "_Float16": 2, "otp_bf16": 2, "int": 4, "int32_t": 4, "uint32_t": 4, "float": 4, "double": 8, "int64_t": 8}


def _steps_by_one(e: ir.Expr, k: str) -> Optional[tuple[ir.Expr, ...]]:
    """The indices of the array access `e` when its last one steps by 1 with
    `k` and the others do not depend on it, else None."""
    index: list[ir.Expr] = []
    while isinstance(e, ir.Index):
        index.insert(0, e.index)
        e = e.base
    last = int_term(index[-1]) if index else None
    step = last is not None and z3.simplify(z3.substitute(last, (z3.Int(k), z3.Int(k) + 1)) - last)
    if not index or not isinstance(e, ir.Var) or last is None or not z3.is_int_value(step) \
            or step.as_long() != 1 or any(k in free_vars(i) for i in index[:-1]):  # type: ignore[union-attr]
        return None
    return tuple(index)


def _row_type(access: ir.Index, env: dict[str, ir.CType], tds: dict[str, ir.CType]) -> ir.CType:
    """The type of the row that the last index of `access` (into a C array
    variable) walks: the variable's declared type stripped of the other
    dimensions (an expression's type would have decayed to a pointer, and
    the environment may give an array variable's first dimension as one)."""
    base: ir.Expr = access
    depth = 0
    while isinstance(base, ir.Index):
        base, depth = base.base, depth + 1
    t = resolve(type_of(base, env, tds), tds)
    for _ in range(depth - 1):
        t = resolve(t.of, tds) if isinstance(t, ir.Array) else resolve(t.to, tds) if isinstance(t, ir.Ptr) else t
    return t


def _unit_stride(who: str, e: ir.Expr, k: str, where: str, loc: Optional[ir.Loc]) -> tuple[ir.Expr, ...]:
    """The indices of the access `e`, whose last one must step by 1 with `k`
    and the others not depend on it."""
    index = _steps_by_one(e, k)
    if index is None:
        raise TransformError(f"{who}: the copy in {where} must read and write arrays at consecutive cells of "
                             f"{k} (a[... + {k}])", loc)
    return index


@primitive
def vector_copy(program: ir.Program, target: str) -> Rewrite:
    """Copy a run of consecutive cells with 16-byte loads and stores (`int4`
    in CUDA) instead of one element at a time.

    Before (`gpu.vector_copy("matvec_q8 > for bj > for i0#1")`, the copy
    matrix.local_buffer made of a group of 32 int8 weights):

        int8_t wq[32];
        for (int i0 = 0; i0 < 32; i0++) {
          wq[i0] = Wq[i * N + (bj + i0)];
        }

    After (obligations equals: each side's first cell is a multiple of 16
    bytes from its array's start, `(i * N + bj) % 16 == 0` and `0 % 16 == 0`):

        int8_t wq[32];
        #pragma otp gpu int4 16
        for (int i0 = 0; i0 < 32; i0++) {
          wq[i0] = Wq[i * N + (bj + i0)];
        }

    The loop stays a C loop (gcc, --exec and the levels read it as before);
    the CUDA printer runs it by steps of 16 bytes, `*(int4 *)&wq[i0] =
    *(const int4 *)&Wq[i * N + (bj + i0)];`, and declares a local
    destination `__align__(16)`. Arrays passed to the kernels are assumed
    16-byte aligned (cudaMalloc and torch align to 256). Refused: a loop
    that is not `for (k = a; k < a + n; k++) dst[... + k] = src[... + k];`
    over a constant count of elements of one type whose bytes are a multiple
    of 16, a row of a C array whose bytes are not a multiple of 16, pragmas.
    """
    who = "gpu.vector_copy"
    res = Resolver(program)
    m = res.one(target, "copy loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    if loop.pragmas:
        raise TransformError(f"{who}: {where} already has '#pragma {loop.pragmas[0]}'", loop.loc)
    body = loop.body.stmts
    copy = body[0].expr if len(body) == 1 and isinstance(body[0], ir.ExprStmt) else None
    n = constant_extent(loop)
    if not (isinstance(copy, ir.Assign) and copy.op == "=" and isinstance(copy.lhs, ir.Index)
            and isinstance(copy.rhs, ir.Index)) or n is None:
        raise TransformError(f"{who}: {where} is not a copy `dst[...] = src[...];` over a constant number of "
                             f"cells", loop.loc)
    env, tds = env_at(program, m.path + (("body", None), ("stmts", 0))), typedefs_of(program)
    types = {type_name(unqualified(type_of(e, env, tds))) for e in (copy.lhs, copy.rhs)}
    size = _BYTES.get(next(iter(types))) if len(types) == 1 else None
    if size is None or n * size % VECTOR_BYTES:
        raise TransformError(f"{who}: {where} copies {n} cells of {' and '.join(sorted(types))}: the two sides "
                             f"must have one scalar type and {VECTOR_BYTES} must divide the bytes copied", loop.loc)
    per = VECTOR_BYTES // size
    obs = []
    for side in (copy.lhs, copy.rhs):
        index = _unit_stride(who, side, loop.index, where, loop.loc)
        row = _row_type(side, env, tds) if len(index) > 1 else None
        if row is not None and not (isinstance(row, ir.Array) and isinstance(row.size, ir.Const)
                                    and int(row.size.text) % per == 0):
            raise TransformError(f"{who}: the rows of '{expr_text(side)}' in {where} are not a multiple of "
                                 f"{VECTOR_BYTES} bytes long", loop.loc)
        first = subst(index[-1], {loop.index: loop.start})
        obs.append(Obligation("equals", f"the copy in {where} starts a multiple of {VECTOR_BYTES} bytes into "
                              f"'{expr_text(side)}'", m.function, (m.path,),
                              (ir.Binop("%", first, ir.Const(str(per))), ZERO)))
    return Rewrite(replace(program, m.path, dataclasses.replace(loop, pragmas=(vector_mark(per),))), tuple(obs))


def _declaration(program: ir.Program, path: Path, name: str) -> Optional[Path]:
    """The path of the declaration of `name` that the statement at `path` sees, else None."""
    found = None
    for k in range(len(path)):
        node = get(program, path[:k])
        if isinstance(node, ir.Block):
            for j, s in enumerate(node.stmts[:path[k][1] if path[k][0] == "stmts" else None]):
                if isinstance(s, ir.DeclStmt) and s.decl.name == name:
                    found = path[:k] + (("stmts", j),)
    return found


@primitive
def async_copy(program: ir.Program, target: str) -> Rewrite:
    """Make a 16-byte copy of a tile from global into shared memory
    asynchronous (cp.async): the block goes on while the tile arrives, and
    waits for it only before the first phase that reads it, so that a tile
    copied early (flash.move_up) overlaps the phases before its use.

    Before (`gpu.async_copy("gqa_decode > for g#2 > for bt > for t_3 > for ci1_2_1")`,
    a piece of V's tile, gpu.vector_copy marked):

        #pragma otp gpu int4 8
        for (int ci1_2_1 = 0; ci1_2_1 < 8; ci1_2_1++) {
          vs[i0_3][ci1_2_1 + ri1_2_1 * 8] = v_cache[(g * SMAX + 64 * bt + i0_3) * 128 + ci1_2_1 + ri1_2_1 * 8];
        }

    After (no obligation: the C is the same copy, complete where it stands,
    and the CUDA printer makes the kernel agree, see cuda_async: the copy's
    phase is committed as a group, and the barrier before the first
    statements that touch `vs` waits for that group):

        #pragma otp gpu int4 8 async
        for (...) { vs[...] = v_cache[...]; }

    which CUDA prints as `__pipeline_memcpy_async(&vs[i0_3][...], &v_cache[...], 16);`.
    Refused: a loop gpu.vector_copy did not mark (or already asynchronous),
    a copy outside a thread loop, a destination that is not an array
    declared in the block loop outside its thread loops (a shared tile), a
    source that is not a parameter (global memory).
    """
    who = "gpu.async_copy"
    res = Resolver(program)
    m = res.one(target, "copy loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    cells = vector_cells(loop)
    if cells is None or async_copy_mark(loop):
        raise TransformError(f"{who}: {where} is not a 16-byte copy" + (" that is still synchronous" if cells else
                             ": make it one with gpu.vector_copy first"), loop.loc)
    if "thread" not in [lv for lv, _ in _enclosing_mapped(program, m.path)]:
        raise TransformError(f"{who}: {where} is not inside a thread loop of a block", loop.loc)
    copy = loop.body.stmts[0].expr
    dst, src = (next(iter(lvalue_bases(e))) for e in (copy.lhs, copy.rhs))
    at = _declaration(program, m.path, dst)
    levels = [lv for lv, _ in _enclosing_mapped(program, at)] if at is not None else []
    if at is None or not isinstance(get(program, at).decl.type, ir.Array) or not levels \
            or set(levels) != {"block"}:
        raise TransformError(f"{who}: '{dst}', which {where} writes, is not an array declared in a block loop "
                             f"outside its thread loops (a shared tile): cp.async writes shared memory only",
                             loop.loc)
    if src not in {p.name for p in get(program, function_path(program, m.function)).params}:
        raise TransformError(f"{who}: '{src}', which {where} reads, is not a parameter of {m.function} "
                             f"(global memory): cp.async reads global memory only", loop.loc)
    return Rewrite(replace(program, m.path, dataclasses.replace(loop, pragmas=(vector_mark(cells, True),))), ())


# ----------------------------------------------------------------- tensor cores

MMA = "otp_mma_m16n8k16_bf16"
"""The warp's tile product (include/otp.h): see mma."""
MMA_KN = "otp_mma_m16n8k16_bf16_kn"
"""The same with B read k-major (B[k][j]): see mma."""
TF32X3, TF32X3_KN = "otp_mma_m16n8k16_tf32x3", "otp_mma_m16n8k16_tf32x3_kn"
"""The same two on float operands, as three TF32 products (see mma)."""
TF32X3_TOLERANCE = 5 * 2.0 ** -22
"""The relative error of one product a b that the tf32x3 split declares:
what it leaves of a and of b (each at most 2^-21 of it) and the dropped
product of their small parts (at most 2^-22 |a b|)."""
WARP = 32
_MMA_SHAPE = (16, 8, 16)


def _mma_nest(who: str, where: str, top: ir.For) -> tuple[list[ir.For], ir.Assign]:
    """The loops i, j, k (16, 8, 16 iterations, perfectly nested, unit step)
    from `top` and the update in the innermost."""
    nest: list[ir.For] = []
    node: Any = top
    for n in _MMA_SHAPE:
        if not isinstance(node, ir.For) or constant_extent(node) != n or node.pragmas:
            raise TransformError(f"{who}: {where} must be a nest of three loops of 16, 8 and 16 iterations (i, j, "
                                 f"k: rows, columns and the reduction of a 16 x 8 tile), step 1, unmapped, one "
                                 f"inside the other, or a loop over k-slices holding only such a nest", top.loc)
        nest.append(node)
        node = node.body.stmts[0] if len(node.body.stmts) == 1 else None
    e = node.expr if isinstance(node, ir.ExprStmt) else None
    if not isinstance(e, ir.Assign) or e.op != "+=":
        raise TransformError(f"{who}: the innermost loop of {where} must hold one update "
                             f"C[..] += (float)A[..] * (float)B[..]", top.loc)
    return nest, e


def _operand(who: str, program: ir.Program, path: Path, e: ir.Expr, loc: Optional[ir.Loc]) -> tuple[ir.Expr, str]:
    """`(float)X[..]` of an otp_bf16 array X, or `X[..]` of a float array:
    the access and X's element type."""
    access = e.arg if isinstance(e, ir.Cast) and type_name(e.type) == "float" else e
    if isinstance(access, ir.Index):
        t = type_name(unqualified(type_of(access, env_at(program, path), typedefs_of(program))))
        if t == ("otp_bf16" if access is not e else "float"):
            return access, t
    raise TransformError(f"{who}: '{expr_text(e)}' must read an otp_bf16 array converted to float "
                         f"((float)A[..]; matrix.set_precision(..., \"otp_bf16\") stores one) or a float array", loc)


def _mma_access(who: str, e: ir.Expr, unit: str, absent: str, role: str, loc: Optional[ir.Loc]) -> ir.Expr:
    """An operand whose cells are consecutive along `unit` and do not depend on `absent`."""
    index = _steps_by_one(e, unit)
    if index is None or any(absent in free_vars(i) for i in index):
        raise TransformError(f"{who}: {role} '{expr_text(e)}' must step by one cell with {unit} (its last index "
                             f"... + {unit}) and not depend on {absent}", loc)
    return e


def _evenly_spaced_rows(who: str, e: ir.Expr, j: str, loc: Optional[ir.Loc]) -> None:
    """The rows of B that `j` picks must be evenly spaced in memory: in
    CUDA a lane loads row g of the tile, which it reaches from its own rows
    2t and 2t + 1 by their distance (include/otp.h), so every index but the
    must be affine in `j` (integer arithmetic, no memory reads)."""
    step = ir.Binop("+", ir.Var(j), ONE)
    for index in chain(e)[1]:
        here, after = int_term(index), int_term(subst(index, {j: step}))
        twice = int_term(subst(index, {j: ir.Binop("+", step, ONE)}))
        if here is None or after is None or twice is None or not proves(twice - after == after - here):
            raise TransformError(f"{who}: the right operand '{expr_text(e)}' must pick its rows by an affine "
                                 f"function of {j} (index '{expr_text(index)}'): the lanes reach row g from "
                                 f"rows 2t and 2t + 1 by their distance", loc)


LDMATRIX_CELLS = 8
"""The bfloat16 cells of a row that ldmatrix loads at once (16 bytes, aligned)."""


def _ldmatrix_rows(who: str, program: ir.Program, function: str, path: Path, first: ir.Expr,
                   loc: Optional[ir.Loc]) -> Obligation:
    """The k-major B tile whose first cell is `first` starts its rows on 16
    bytes, as CUDA's ldmatrix needs: its array's rows must be a multiple of
    8 cells (refused otherwise), and the obligation divides says that the
    tile's first column is one too."""
    assert isinstance(first, ir.Index)
    row = _row_type(first, env_at(program, path), typedefs_of(program))
    size = row.size if isinstance(row, ir.Array) else None
    if not (isinstance(size, ir.Const) and size.text.isdigit() and int(size.text) % LDMATRIX_CELLS == 0):
        raise TransformError(f"{who}: the right operand '{expr_text(first)}' is read k-major, which CUDA loads "
                             f"with ldmatrix.trans: its array's rows must be a constant multiple of "
                             f"{LDMATRIX_CELLS} cells (16 bytes)", loc)
    return Obligation("divides", f"the k-major tile of '{expr_text(first)}' starts at a multiple of "
                      f"{LDMATRIX_CELLS} cells in its rows (16-byte aligned for ldmatrix)", function, (path,),
                      (ir.Const(str(LDMATRIX_CELLS)), first.index), before=True)


def _k_major(b: ir.Expr, j: str, k: str, i: str) -> bool:
    """Whether the right operand is read k-major, `B[..][r + k][c + j]`: its
    last index steps by one with j, the one before by one with k, the others
    depend on neither, and none on i."""
    index = _steps_by_one(b, j)
    row = b.base if isinstance(b, ir.Index) else None
    return index is not None and len(index) > 1 and isinstance(row, ir.Index) and k not in free_vars(index[-1]) \
        and _steps_by_one(row, k) is not None and not any(i in free_vars(x) for x in index)


@primitive
def mma(program: ir.Program, target: str, lane: Optional[str] = None) -> Rewrite:
    """A 16 x 8 tile product over a k-slice of 16, C += A * B^T with A and B
    in bfloat16, as one tensor-core operation of a warp (`mma.sync
    m16n8k16`, fp32 accumulation), written as 32 calls, one per lane.

    Before (`gpu.mma("attention > for h#3 > for bi > for mi > for nj > for kd > for i")`):

        for (int i = 0; i < 16; i++)
          for (int j = 0; j < 8; j++)
            for (int k = 0; k < 16; k++)
              S[mi * 16 + i][nj * 8 + j] += (float)q_t[mi * 16 + i][kd * 16 + k]
                                           * (float)k_t[nj * 8 + j][kd * 16 + k];

    After (fp reassoc: the hardware sums the 16 products in its own order):

        for (int lane = 0; lane < 32; lane++) {
          otp_mma_m16n8k16_bf16(&S[mi * 16 + lane / 4][nj * 8 + 2 * (lane % 4)],
                                &S[mi * 16 + (lane / 4 + 8)][nj * 8 + 2 * (lane % 4)],
                                &q_t[mi * 16 + lane / 4][kd * 16], &q_t[mi * 16 + (lane / 4 + 8)][kd * 16],
                                &k_t[nj * 8 + 2 * (lane % 4)][kd * 16],
                                &k_t[nj * 8 + (2 * (lane % 4) + 1)][kd * 16], lane);
        }

    Each call is what one lane of the warp owns in the instruction's
    accumulator layout: the cells (g, 2t), (g, 2t + 1) and (g + 8, 2t),
    (g + 8, 2t + 1) of the tile, g = lane / 4, t = lane % 4, each updated
    with its 16 products; it reads rows g and g + 8 of A and rows 2t and
    2t + 1 of B (B^T's columns), 16 cells each (optitrust_py/intrinsics.py
    gives level 2 these footprints, so the lanes' writes are proved
    disjoint like any thread loop's). On the CPU (include/otp.h) a call adds
    the products in k order, as the loops did. In CUDA the 32 calls must be
    the 32 lanes of one warp, together: map the lane loop (or a loop over
    warps x 32 lanes, `lane` then `t % 32`) to threads along x; the printer
    refuses a call whose lane is not the thread's lane, or that not all
    lanes reach (cuda_emit). There lane 4g + t loads row g of B, which lane
    g / 2 declares: the warp reads exactly the cells its lanes declare, and
    writes only each lane's own.

    B may also be stored k-major, read `B[..][r + k][c + j]` (a tile whose
    rows are the reduction's, as V's rows are keys in attention's P V):
    the call is then `otp_mma_m16n8k16_bf16_kn(.., &B[r][c + 2t],
    &B[r + 8][c + 2t], lane)`, each lane reading cells 2t and 2t + 1 of
    B's 16 rows; in CUDA the warp loads its fragments with one
    ldmatrix.trans, which needs B in shared memory (the printer refuses
    another B) with rows starting on 16 bytes: B's rows must be a constant
    multiple of 8 cells (refused otherwise; gpu.pad keeps them so) and the
    tile's first column a multiple of 8 (obligation divides). This spares
    the tile a transposed copy (H100, bf16 attention D = 128, side by side
    on the emitted kernels: 1.25 against 1.38 ms with V copied transposed,
    a column per thread).

    A and B may instead both be float arrays, read without a cast (fp32
    attention): the calls are then `otp_mma_m16n8k16_tf32x3` (and `_kn`),
    with the same lanes, cells and footprints, which the tensor cores run
    as three TF32 products (each operand split into tf32(x) and the rest,
    the product of the two small parts dropped: include/otp.h),
    as torch's memory-efficient fp32 attention does on sm80 and later.
    That step is lossy, declared at TF32X3_TOLERANCE (5 x 2^-22 of |a b| a
    product); the CPU build makes the same split, so `--exec` compares the
    values the tensor cores get. B k-major is then read with plain loads
    (ldmatrix moves 16-bit cells only), from any memory.

    Targeted at a loop over k-slices whose body is such a nest (`for kd`,
    around the `for i` above), the lane's four cells stay in a local array
    across the slices (registers in CUDA), read before and written back
    after them, so that the accumulation does not go through memory at
    every slice:

        for (int lane = 0; lane < 32; lane++) {
          float lane_acc[4];
          lane_acc[0] = S[mi * 16 + lane / 4][nj * 8 + 2 * (lane % 4)];
          ... (its 4 cells)
          for (int kd = 0; kd < 128; kd += 16) {
            otp_mma_m16n8k16_bf16(&lane_acc[0], &lane_acc[2], &q_t[...][kd], ..., lane);
          }
          S[mi * 16 + lane / 4][nj * 8 + 2 * (lane % 4)] = lane_acc[0];
          ...
        }

    The loops run 16, 8 and 16 iterations with step 1: the update must
    step by one cell with j in C and with k in A and B (their last index;
    or B k-major, as above), C must not depend on k, A on j, B on i, B's
    indices must be affine in j (evenly spaced rows: in CUDA lane 4g + t
    reaches row g of the tile from its rows 2t and 2t + 1 by their
    distance); A and B are otp_bf16 arrays read as `(float)`, or both
    float arrays, C another array of float (the same cells at every slice,
    when targeted at the slices). Refused otherwise. The lane
    index is `lane` (a name unused in the function), by default a fresh
    `lane`.
    """
    who = "gpu.mma"
    res = Resolver(program)
    m = res.one(target, "canonical for loop", (ir.For,))
    where = _where(res, m.path, m.node)
    body = m.node.body.stmts
    slices = m.node if constant_extent(m.node) is None and len(body) == 1 and isinstance(body[0], ir.For) \
        and not m.node.pragmas else None
    top_path = m.path + ((("body", None), ("stmts", 0)) if slices else ())
    (li, lj, lk), update = _mma_nest(who, where, get(program, top_path))
    loc = update.lhs.loc or m.node.loc
    inner = top_path + (("body", None), ("stmts", 0)) * 2 + (("body", None), ("stmts", 0), ("expr", None))
    product = update.rhs
    if not (isinstance(product, ir.Binop) and product.op == "*"):
        raise TransformError(f"{who}: the update must add a product (float)A[..] * (float)B[..], not "
                             f"'{expr_text(product)}'", loc)
    (a, a_type), (b, b_type) = (_operand(who, program, inner, x, loc) for x in (product.left, product.right))
    if a_type != b_type:
        raise TransformError(f"{who}: both operands must be otp_bf16 or both float, not '{expr_text(product.left)}' "
                             f"({a_type}) and '{expr_text(product.right)}' ({b_type})", loc)
    f32 = a_type == "float"
    c = _mma_access(who, update.lhs, lj.index, lk.index, "the accumulator", loc)
    a = _mma_access(who, a, lk.index, lj.index, "the left operand", loc)
    k_major = _k_major(b, lj.index, lk.index, li.index)
    if not k_major:
        index = _steps_by_one(b, lk.index)
        if index is None or any(li.index in free_vars(x) for x in index):
            raise TransformError(f"{who}: the right operand '{expr_text(b)}' must step by one cell with "
                                 f"{lk.index} (B[..][.. + {lk.index}], n-major) or be read k-major "
                                 f"(B[..][.. + {lk.index}][.. + {lj.index}]), and not depend on {li.index}", loc)
        _evenly_spaced_rows(who, b, lj.index, loc)
    c_type = type_of(c, env_at(program, inner), typedefs_of(program))
    arrays = [next(iter(free_vars(_array_base(x)))) for x in (c, a, b)]
    if type_name(unqualified(c_type)) != "float" or arrays[0] in arrays[1:] \
            or (slices is not None and slices.index in free_vars(c)):
        raise TransformError(f"{who}: the accumulator '{expr_text(c)}' must be a float array other than the "
                             f"operands" + (f", the same cells at every {slices.index}" if slices else ""), loc)
    lane = _fresh_local(who, "lane index", lane, "lane", program, m.path, m.function, m.node.loc)
    g = ir.Binop("/", ir.Var(lane), ir.Const("4"))
    t2 = ir.Binop("*", ir.Const("2"), ir.Binop("%", ir.Var(lane), ir.Const("4")))
    g8, t21 = ir.Binop("+", g, ir.Const("8")), ir.Binop("+", t2, ir.Const("1"))

    def cell(x: ir.Expr, **by: ir.Expr) -> ir.Expr:
        return subst(x, {**{lp.index: lp.start for lp in (li, lj, lk)},
                         **{lp.index: _plus(lp.start, by[n]) for n, lp in (("i", li), ("j", lj), ("k", lk)) if n in by}})

    def at(x: ir.Expr, **by: ir.Expr) -> ir.Expr:
        return ir.Unop("&", cell(x, **by))
    operands = (at(a, i=g), at(a, i=g8)) + ((at(b, j=t2), at(b, j=t2, k=ir.Const("8"))) if k_major
                                            else (at(b, j=t2), at(b, j=t21))) + (ir.Var(lane),)
    product = ((TF32X3, TF32X3_KN) if f32 else (MMA, MMA_KN))[k_major]
    obligations = (_ldmatrix_rows(who, program, m.function, inner, cell(b), loc),) if k_major and not f32 else ()
    if slices is None:
        call = ir.Call(ir.Var(product), (at(c, i=g, j=t2), at(c, i=g8, j=t2)) + operands, loc)
        lanes = ir.Block((ir.ExprStmt(call, loc),))
    else:
        lanes = _registers(program, m, slices, lane, product, operands,
                           [cell(c, i=i, j=j) for i in (g, g8) for j in (t2, t21)])
    new = replace(program, m.path, ir.For(lane, ZERO, ir.Const(str(WARP)), lanes, loc=m.node.loc))
    return Rewrite(new.with_includes(matrix.OTP_H), obligations,
                   *(("lossy", TF32X3_TOLERANCE) if f32 else ("reassoc",)))


def _registers(program: ir.Program, m: Match, slices: ir.For, lane: str, product: str,
               operands: tuple[ir.Expr, ...], cells: list[ir.Expr]) -> ir.Block:
    """A lane's body when the tile product runs over k-slices: its four
    accumulator cells in a local array across the slices (registers in
    CUDA), copied in before them and back after them."""
    acc = ir.Var(_fresh_local("gpu.mma", "accumulator", None, f"{lane}_acc", program, m.path, m.function,
                              slices.loc))
    slot = [ir.Index(acc, ir.Const(str(e))) for e in range(4)]
    call = ir.Call(ir.Var(product), (ir.Unop("&", slot[0]), ir.Unop("&", slot[2])) + operands, slices.loc)
    loop_ = dataclasses.replace(slices, body=ir.Block((ir.ExprStmt(call, slices.loc),)))
    return ir.Block((ir.DeclStmt(ir.Decl(acc.name, ir.Array(ir.Base(("float",)), ir.Const("4")))),
                     *(ir.ExprStmt(ir.Assign("=", s, c)) for s, c in zip(slot, cells)), loop_,
                     *(ir.ExprStmt(ir.Assign("=", c, s)) for s, c in zip(slot, cells))))


def _plus(start: ir.Expr, offset: ir.Expr) -> ir.Expr:
    return offset if start == ZERO else ir.Binop("+", start, offset)


def _array_base(e: ir.Expr) -> ir.Expr:
    while isinstance(e, ir.Index):
        e = e.base
    return e


@primitive
def warps(program: ir.Program, target: str, count: int) -> Rewrite:
    """Share a lane loop's tiles among `count` warps: the loop over the 32
    lanes (gpu.mma's) around a loop over tiles becomes a loop over 32 x
    count threads, thread t being lane t % 32 of warp t / 32, which takes
    the warp's consecutive share of the tiles.

    Before (`gpu.warps("attention > for h#3 > for bi > for bj#1 > for lane128", 2)`):

        for (int lane128 = 0; lane128 < 32; lane128++) {
          for (int mi128 = bi; mi128 < bi + 64; mi128 += 16) {
            ... lane128 ...
          }
        }

    After (obligation parallel):

        for (int lane128_t = 0; lane128_t < 64; lane128_t++) {
          for (int mi128 = bi + lane128_t / 32 * 32; mi128 < bi + lane128_t / 32 * 32 + 32; mi128 += 16) {
            ... lane128_t % 32 ...
          }
        }

    Every (lane, tile) instance runs once, each lane's tiles still in order;
    instances of distinct threads change order, which is valid when they
    touch disjoint cells: the obligation parallel on the new loop (the one
    gpu.map_threads would declare). Refused: a loop that is not 32
    iterations from 0 with step 1 holding only a loop over tiles of a
    constant number of iterations (constant step, stop = start + a
    constant) that `count` divides, or a count that is not an integer from
    2 to 32.
    """
    who = "gpu.warps"
    res = Resolver(program)
    m = res.one(target, "canonical for loop", (ir.For,))
    lanes: ir.For = m.node
    where = _where(res, m.path, lanes)
    tiles = lanes.body.stmts[0] if len(lanes.body.stmts) == 1 else None
    if isinstance(count, bool) or not isinstance(count, int) or not 2 <= count <= WARP:
        raise TransformError(f"{who}: the number of warps must be an integer from 2 to {WARP}, got {count!r}",
                             lanes.loc)
    span = _tile_span(tiles)
    if lanes.start != ZERO or constant_extent(lanes) != WARP or lanes.pragmas or span is None \
            or span % count or (span // count) % int(tiles.step.text):  # type: ignore[union-attr]
        raise TransformError(f"{who}: {where} must run the {WARP} lanes from 0 and hold only a loop over tiles "
                             f"whose constant span (stop - start) {count} warps share in whole tiles", lanes.loc)
    t = _fresh_local(who, "thread index", None, f"{lanes.index}_t", program, m.path, m.function, lanes.loc)
    share = ir.Const(str(span // count))
    start = ir.Binop("+", tiles.start, ir.Binop("*", ir.Binop("/", ir.Var(t), ir.Const(str(WARP))), share))
    body = subst(tiles.body, {lanes.index: ir.Binop("%", ir.Var(t), ir.Const(str(WARP)))})
    mine = dataclasses.replace(tiles, start=start, stop=ir.Binop("+", start, share), body=body)
    new = ir.For(t, ZERO, ir.Const(str(WARP * count)), ir.Block((mine,)), loc=lanes.loc)
    return Rewrite(replace(program, m.path, new), (_thread_ob(program, m.function, m.path, f"for {t}"),))


def _tile_span(tiles: Any) -> Optional[int]:
    """stop - start of a loop of constant step whose stop is its start plus
    a constant (or a constant, from 0), else None."""
    if not (isinstance(tiles, ir.For) and isinstance(tiles.step, ir.Const) and tiles.step.text.isdigit()):
        return None
    stop = tiles.stop
    if tiles.start == ZERO and isinstance(stop, ir.Const) and stop.text.isdigit():
        return int(stop.text)
    if isinstance(stop, ir.Binop) and stop.op == "+" and stop.left == tiles.start and isinstance(stop.right, ir.Const) \
            and stop.right.text.isdigit():
        return int(stop.right.text)
    return None


TILE_ROWS, TILE_COLS = 16, 8
"""The shape of an mma accumulator tile (m16n8): lane 4g + t holds its
cells (g, 2t), (g, 2t + 1), (g + 8, 2t) and (g + 8, 2t + 1)."""


def _lane_tiles(who: str, res: Resolver, m: Match) -> tuple[list[ir.For], str, list[tuple[ir.Expr, ir.Expr]]]:
    """The loops of gpu.mma's lane loop at `m`, from the lane loop down to
    the tile whose body opens with the four loads of its accumulator; the
    accumulated array and those four cells (lane_acc[k] = C[r][c])."""
    loops = [m.node]
    while len(loops[-1].body.stmts) == 1 and isinstance(loops[-1].body.stmts[0], ir.For):
        loops.append(loops[-1].body.stmts[0])
    stmts = loops[-1].body.stmts
    acc = stmts[0].decl.name if stmts and isinstance(stmts[0], ir.DeclStmt) else None
    cells: list[ir.Index] = []
    for k, s in enumerate(stmts[1:5]):
        e = s.expr if isinstance(s, ir.ExprStmt) else None
        if isinstance(e, ir.Assign) and e.op == "=" and e.lhs == ir.Index(ir.Var(acc or ""), ir.Const(str(k))) \
                and isinstance(e.rhs, ir.Index) and len(chain(e.rhs)[1]) == 2:
            cells.append(e.rhs)
    bases = {chain(c)[0] for c in cells}
    if len(loops) < 2 or len(cells) != 4 or len(bases) != 1 or not isinstance(next(iter(bases)), ir.Var):
        raise TransformError(f"{who}: {_where(res, m.path, m.node)} is not gpu.mma's lane loop: a loop over "
                             f"lanes around the tiles' loops, each tile loading its four accumulator cells of a "
                             f"2-D array into a local array first", m.node.loc)
    rows_cols = [(chain(c)[1][0], chain(c)[1][1]) for c in cells]
    return loops, next(iter(bases)).name, rows_cols  # type: ignore[union-attr]


def _covers_once(loops: list[ir.For], cells: list[tuple[ir.Expr, ir.Expr]], origin: tuple[ir.Expr, ir.Expr],
                 extents: tuple[int, int]) -> bool:
    """Whether the lanes' cells, over every run of `loops`, are the cells
    origin + [0, rows) x [0, cols), each once: every one in range, no two
    runs (or two of a run's cells) alike, and as many as the region has."""
    trips = 1
    for lp in loops:
        span = _tile_span(lp) if lp is not loops[0] else constant_extent(lp)
        step = int(lp.step.text) if isinstance(lp.step, ir.Const) and lp.step.text.isdigit() else 0
        if span is None or step <= 0 or span % step:
            return False
        trips *= span // step if lp is not loops[0] else span
    if trips * len(cells) != extents[0] * extents[1]:
        return False
    tm = Terms("lane_order")
    other = {lp.index: ir.Var(f"{lp.index}'") for lp in loops}
    mine, theirs = loop_facts(tm, loops, {}), loop_facts(tm, loops, other)
    low = [tm.term(o) for o in origin]
    for r, c in cells:
        at = (tm.term(r), tm.term(c))
        if not proves(z3.And(*(z3.And(lo <= x, x < lo + n) for lo, x, n in zip(low, at, extents))),
                      mine + tm.facts):
            return False
    same = z3.And(*(z3.Int(lp.index) == z3.Int(f"{lp.index}'") for lp in loops))
    for k, (r, c) in enumerate(cells):
        for j, (r2, c2) in enumerate(cells):
            meet = [tm.term(r) == tm.term(subst(r2, other)), tm.term(c) == tm.term(subst(c2, other))]
            if not proves(same if j == k else z3.BoolVal(False), mine + theirs + meet + tm.facts):
                return False
    return True


def _offset(who: str, index: ir.Expr, var: str, others: set[str], loc: Optional[ir.Loc]) -> ir.Expr:
    """`index` - `var`, when `index` is `var` plus an offset free of `var` and `others`."""
    parts = terms(index)
    rest = signed_sum([p for p in parts if p != (1, ir.Var(var))]) if parts.count((1, ir.Var(var))) == 1 else None
    if rest is None or free_vars(rest) & (others | {var}):
        raise TransformError(f"{who}: the index '{expr_text(index)}' must be '{var}' plus an offset free of the "
                             f"nest's indices", loc)
    return rest


def _tidy(node: Any) -> Any:
    """`node` with each sum in it as one signed sum, terms that cancel left
    out: `bi + (mo + lane / 4 - bi)` is `mo + lane / 4` (the indices the
    lanes' cells substitute read as the lanes' own, and Z3 proves the
    threads' cells apart without cancelling first)."""
    if isinstance(node, ir.Binop) and node.op in ("+", "-"):
        return cancelled_sum(*((s, _tidy(t)) for s, t in terms(node)))
    return map_children(node, _tidy)


@primitive
def lane_order(program: ir.Program, target: str, lanes: str) -> Rewrite:
    """Run a nest over the cells of an accumulator array in the order of
    gpu.mma's lane loop that accumulates into them: each thread takes the
    cells its lane holds, so that the nest can be fused with the lane loop
    and the cells kept in the thread's registers (gpu.fragment_layout).

    Before (`gpu.lane_order("attention > for h#1 > for bi > for bj > for i#3", "... > for lane64_pv_t")`,
    the rescaling of the output rows that the online softmax split off):

        for (int i = bi; i < bi + 64; i++) {
          for (int d = 0; d < 64; d++) {
            o64[i - bi][d] = o64[i - bi][d] * rs64[i - bi];
          }
        }

    After (obligations parallel on both loops, before: the cells are
    visited in another order):

        #pragma otp gpu thread x
        for (int lane64_pv_t = 0; lane64_pv_t < 128; lane64_pv_t++) {
          for (int mo64 = bi + lane64_pv_t / 32 * 16; mo64 < bi + lane64_pv_t / 32 * 16 + 16; mo64 += 16) {
            for (int nd64 = 0; nd64 < 64; nd64 += 8) {
              o64[mo64 + lane64_pv_t % 32 / 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4)] = ...;
              ... (the lane's other three cells)
            }
          }
        }

    The nest is two loops of constant trip counts and step 1, the second
    alone in the first; every access of its body to the lane loop's
    accumulator array C is C[a + x][b + y] (a, b its indices, in either
    order, x, y free of them), one cell per iteration. The lane loop's
    headers are copied, and each of the four cells it loads (lane_acc[k] =
    C[r][c]) runs the body with a = r - x, b = c - y. Refused (besides the
    shapes above) unless Z3 proves, from the copied loops' bounds, that
    these cells are exactly the nest's, each once: in range, pairwise
    distinct, as many. Also
    refused: a nest inside a thread loop or outside a block, a body naming
    the lane loop's indices, bounds of the lane loop that name variables
    not visible at the nest. A body that declares names is copied in a
    block of its own each time.
    """
    who = "gpu.lane_order"
    res = Resolver(program)
    m = res.one(target, "canonical for loop", (ir.For,))
    outer: ir.For = m.node
    where = _where(res, m.path, outer)
    inner = outer.body.stmts[0] if len(outer.body.stmts) == 1 and isinstance(outer.body.stmts[0], ir.For) else None
    extents = (constant_extent(outer), constant_extent(inner) if inner else None)
    if inner is None or None in extents:
        raise TransformError(f"{who}: {where} must be a loop of a constant trip count and step 1 holding only "
                             f"another such loop", outer.loc)
    _in_block_only(who, program, res, m)
    lm = res.one(lanes, "canonical for loop", (ir.For,))
    loops, array, cells = _lane_tiles(who, res, lm)
    if lm.function != m.function:
        raise TransformError(f"{who}: {_where(res, lm.path, lm.node)} is not in the function of {where}", outer.loc)
    names = {lp.index for lp in loops}
    heads = set().union(*(free_vars(x) for lp in loops for x in (lp.start, lp.stop, lp.step))) - names
    body_names = free_vars(inner.body) | set(_top_decls(inner.body))
    if names & body_names or not heads <= set(env_at(program, m.path)):
        raise TransformError(f"{who}: the body of {where} names the lane loop's indices ({', '.join(sorted(names))}) "
                             f"or the lane loop's bounds name variables not visible at {where}", outer.loc)
    found = [n for _, n in walk(inner.body) if isinstance(n, ir.Index) and chain(n)[0] == ir.Var(array)
             and len(chain(n)[1]) == 2]
    uses = sum(1 for _, n in walk(inner.body) if n == ir.Var(array))
    if not found or uses != len(found):
        raise TransformError(f"{who}: the body of {where} must reach '{array}', the lane loop's accumulator, "
                             f"through two indices only", outer.loc)
    indices = {outer.index, inner.index}
    # the nest runs the rows outside the columns, or (a copy whose threads take the columns) inside them
    row, col = (outer, inner) if outer.index in free_vars(chain(found[0])[1][0]) else (inner, outer)
    shifts = {(_offset(who, chain(n)[1][0], row.index, indices, n.loc),
               _offset(who, chain(n)[1][1], col.index, indices, n.loc)) for n in found}
    if len(shifts) != 1:
        raise TransformError(f"{who}: the body of {where} reaches more than one cell of '{array}' per iteration",
                             outer.loc)
    x, y = shifts.pop()
    origin = (cancelled_sum((1, row.start), (1, x)), cancelled_sum((1, col.start), (1, y)))
    extents = (constant_extent(row), constant_extent(col))
    if not _covers_once(loops, cells, origin, extents):  # type: ignore[arg-type]
        raise TransformError(f"{who}: the cells the lanes of {_where(res, lm.path, lm.node)} hold are not those "
                             f"of {where}, each once ({extents[0]} x {extents[1]} from "
                             f"[{expr_text(origin[0])}][{expr_text(origin[1])}])", outer.loc)
    bodies = [_tidy(subst(inner.body, {row.index: cancelled_sum((1, r), (-1, x)),
                                       col.index: cancelled_sum((1, c), (-1, y))}))
              for r, c in cells]
    scoped = bool(_top_decls(inner.body))  # each copy of a body that declares names in a block of its own
    new: ir.Stmt = ir.Block(tuple(b for body in bodies for b in ((body,) if scoped else body.stmts)))
    for lp in reversed(loops):
        new = dataclasses.replace(lp, body=new if isinstance(new, ir.Block) else ir.Block((new,)), loc=outer.loc)
    obs = (Obligation("parallel", f"distinct iterations of {where} touch disjoint cells", m.function, (m.path,),
                      before=True),
           Obligation("parallel", f"distinct iterations of the inner loop of {where} touch disjoint cells",
                      m.function, (m.path + (("body", None), ("stmts", 0)),), before=True))
    return Rewrite(replace(program, m.path, new), obs)


def _c(k: int) -> ir.Expr:
    return ir.Const(str(k))


def _op(o: str, a: ir.Expr, b: "ir.Expr | int") -> ir.Expr:
    return ir.Binop(o, a, _c(b) if isinstance(b, int) else b)


def _fragment_formulas(r: ir.Expr, c: ir.Expr) -> tuple[tuple[ir.Expr, ir.Expr, ir.Expr], ir.Expr, ir.Expr]:
    """Where cell (r, c) of an array of 16 x 8 accumulator tiles (one row
    of tiles a warp) lies in its lanes' registers: the thread 32 (r / 16)
    + 4 (r % 8) + (c % 8) / 2 (its three digits: warp, row of the quad's
    group, lane of the quad), its tile c / 8 and its slot 2 ((r % 16) / 8)
    + c % 2 in the tile (the order of gpu.mma's lane_acc)."""
    thread = (_op("/", r, 16), _op("%", r, 8), _op("/", _op("%", c, 8), 2))
    slot = _op("+", _op("*", _c(2), _op("/", _op("%", r, 16), 8)), _op("%", c, 2))
    return thread, _op("/", c, TILE_COLS), slot


def _thread_digits(t: ir.Expr) -> tuple[ir.Expr, ir.Expr, ir.Expr]:
    """Thread t's warp, row of its quad's group and lane of its quad: t / 32, t % 32 / 4, t % 4."""
    return _op("/", t, 32), _op("/", _op("%", t, 32), 4), _op("%", t, 4)


@primitive
def fragment_layout(program: ir.Program, target: str) -> Rewrite:
    """Store a block's array of accumulator tiles as its lanes hold them:
    `C[M][N]` becomes `C[2 M][N / 8][4]`, row t the cells thread t holds in
    gpu.mma's layout (the warp w = t / 32 has rows 16 w to 16 w + 15), so
    that, every access naming its own thread's row, the CUDA printer keeps
    each thread's row in registers across the loops around (a running
    output tile that no longer goes through shared memory).

    Before (`gpu.fragment_layout("attention > for h#1 > for bi > def o64")`,
    every access in gpu.mma's order, gpu.lane_order having reordered the
    nests that were not):

        float o64[64][64];
        ...
        lane64_pv_acc[0] = o64[mo64 + lane64_pv_t % 32 / 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4)];

    After (obligations equals, for each access: the thread, tile and slot
    of its cell are the thread's own position, a loop index over 8 and a
    constant):

        float o64[128][8][4];
        ...
        lane64_pv_acc[0] = o64[lane64_pv_t][nd64 / 8][0];

    Cell (r, c) goes to thread 32 (r / 16) + 4 (r % 8) + (c % 8) / 2, tile
    c / 8, slot 2 ((r % 16) / 8) + c % 2: a bijection from M x N onto
    2M x N / 8 x 4 (r splits into r / 16, (r % 16) / 8 and r % 8, c into
    c / 8, (c % 8) / 2 and c % 2), so the program computes the same; the
    indices are in bounds of the old shape (level 2's check of the program
    before). Each access is rewritten to its thread's position t, the
    index over 8 of one of the loops around it whose step 8 divides, and a
    slot: a constant, or 2 h + c with h and c indices of loops of two
    iterations (gpu.warp_rows' mma form gives its rows' cells so); the
    first of these that Z3 proves equal to the formulas from the bounds of
    the loops around (the thread digit by digit: r / 16 == t / 32, r % 8
    == t % 32 / 4, (c % 8) / 2 == t % 4); refused when there is none (an
    access outside gpu.mma's order: gpu.lane_order first). Also refused: an array
    that is not a float[M][N] without initializer, M a multiple of 16 and
    N of 8; a use other than `C[r][c]` (its address taken); an access
    outside a thread loop of 2M threads.
    """
    who = "gpu.fragment_layout"
    res = Resolver(program)
    m = res.one(target, "array declaration", (ir.DeclStmt,))
    decl = m.node.decl
    t = decl.type
    sizes = []
    while isinstance(t, ir.Array) and isinstance(t.size, ir.Const) and t.size.text.isdigit():
        sizes.append(int(t.size.text))
        t = t.of
    if len(sizes) != 2 or isinstance(t, ir.Array) or type_name(t) != "float" or decl.init is not None \
            or sizes[0] % TILE_ROWS or sizes[1] % TILE_COLS:
        raise TransformError(f"{who}: '{decl.name}' must be declared float {decl.name}[M][N] without a value, M a "
                             f"multiple of {TILE_ROWS} and N of {TILE_COLS}", m.node.loc)
    rows, cols = sizes
    threads = 2 * rows
    block, k = block_of(m.path)
    name = decl.name or ""
    found: list[tuple[Path, ir.Index]] = []
    uses = 0
    for j, s in enumerate(get(program, block).stmts[k + 1:], k + 1):
        for p, n in walk(s, block + (("stmts", j),)):
            uses += n == ir.Var(name)
            if isinstance(n, ir.Index) and chain(n)[0] == ir.Var(name) and len(chain(n)[1]) == 2:
                found.append((p, n))
    if uses != len(found):
        raise TransformError(f"{who}: '{name}' is used other than as {name}[r][c] (its address taken, a row "
                             f"passed on)", m.node.loc)
    program_out, obs = program, []
    for p, n in found:
        new, made = _to_fragment(who, program, block, p, n, threads, m.function)
        program_out = replace(program_out, p, new)
        obs += made
    shape = ir.Array(ir.Array(ir.Array(ir.Base(("float",)), _c(4)), _c(cols // TILE_COLS)), _c(threads))
    program_out = replace(program_out, m.path, dataclasses.replace(m.node, decl=dataclasses.replace(decl, type=shape)))
    return Rewrite(program_out, tuple(obs))


def _slots(loops: list[ir.For]) -> list[ir.Expr]:
    """What an access's slot in its tile may be written as: a constant, or
    2 h + c from loops of two iterations (gpu.warp_rows' mma form: its
    `half` and the pair of columns)."""
    pairs = [ir.Var(lp.index) for lp in loops if mapping(lp) is None and lp.start == ZERO and lp.step == ONE
             and lp.stop == _c(2)]
    out = [_c(k) for k in range(4)]
    for h in pairs:
        out += [ir.Binop("*", _c(2), h), ir.Binop("+", ir.Binop("*", _c(2), h), ONE)]
        out += [ir.Binop("+", ir.Binop("*", _c(2), h), c) for c in pairs if c != h]
        out += [h, ir.Binop("+", h, _c(2))]
    return out


def _to_fragment(who: str, program: ir.Program, block: Path, path: Path, node: ir.Index, threads: int,
                 function: str) -> tuple[ir.Expr, list[Obligation]]:
    """The access at `path` in the fragment layout, and the equalities it rests on."""
    loops = [lp for lp in (get(program, path[:i]) for i in range(len(block), len(path))) if isinstance(lp, ir.For)]
    mapped = [lp for lp in loops if (mapping(lp) or ("",))[0] == "thread"]
    r, c = (_tidy(x) for x in chain(node)[1])  # `bi + (w / 32 * 16 + ...) - bi` as the row it is: easier for Z3
    line = expr_text(node)
    if len(mapped) != 1 or thread_extent(mapped[0]) != (threads, True):
        raise TransformError(f"{who}: '{line}' is not in a thread loop of {threads} threads", node.loc)
    tm = Terms("fragment")
    facts = loop_facts(tm, loops, {})
    position = thread_position(mapped[0])
    tiles = [ir.Binop("/", cancelled_sum((1, ir.Var(lp.index)), (-1, lp.start)), _c(TILE_COLS)) for lp in loops
             if lp not in mapped and isinstance(lp.step, ir.Const) and lp.step.text.isdigit()
             and int(lp.step.text) % TILE_COLS == 0]
    digits, tile, slot = _fragment_formulas(r, c)

    def holds(pairs: list[tuple[ir.Expr, ir.Expr]]) -> bool:
        return all(proves(tm.term(f) == tm.term(x), facts + tm.facts) for f, x in pairs)

    # the thread digit by digit (Z3 gives up on the whole sum of divisions), a tile loop, a slot
    options = ([list(zip(digits, _thread_digits(position)))], [[(tile, x)] for x in tiles],
               [[(slot, x)] for x in _slots(loops)])
    thread = _op("+", _op("+", _op("*", _c(32), digits[0]), _op("*", _c(4), digits[1])), digits[2])
    claims = []
    for what, formula, choices in zip(("thread position", "tile loop", "slot"), (thread, tile, slot), options):
        hit = next((pairs for pairs in choices if holds(pairs)), None)
        if hit is None:
            raise TransformError(f"{who}: '{line}' is not in gpu.mma's order (no {what} equals "
                                 f"'{expr_text(formula)}'): gpu.lane_order its nest first", node.loc)
        claims.append(hit)
    place = (position, claims[1][0][1], claims[2][0][1])
    out: ir.Expr = ir.Var(chain(node)[0].name)  # type: ignore[union-attr]
    for x in place:
        out = ir.Index(out, x, node.loc)
    where = f"'{line}' lies in the registers of thread '{expr_text(place[0])}', tile '{expr_text(place[1])}', " \
            f"slot {expr_text(place[2])}"
    obs = [Obligation("equals", f"{where}: {expr_text(f)} == {expr_text(x)}", function, (path,), (f, x), before=True)
           for pairs in claims for f, x in pairs]
    return out, obs


FAST_MATH = {"expf": "otp_fast_expf", "/": "otp_fast_div"}
FAST_MATH_TOLERANCE = 1e-5
"""The relative error a gpu.fast_math step declares: the CUDA guide bounds
__expf(x) by 2 + floor(|1.173 x|) ulp (under 1e-5 for |x| < 70; the
softmax's arguments are at most 0, and a far smaller exponential weighs
accordingly less in its sum) and __fdividef by 2 ulp."""


@primitive
def fast_math(program: ir.Program, target: str, tolerance: float = FAST_MATH_TOLERANCE) -> Rewrite:
    """Compute the exponentials and float divisions of a statement with the
    GPU's approximate instructions: `expf(x)` becomes `otp_fast_expf(x)` and
    `a / b` on floats `otp_fast_div(a, b)` (include/otp.h: `__expf` and
    `__fdividef` in CUDA, a multiply and the hardware's base-2 exponential,
    and a multiply by the reciprocal; on the CPU, `exp2f(x * log2 e)` and
    `a * (1 / b)`, the same roundings that dominate the GPU's error, so
    `--exec` sees an error of the kind the GPU makes). On the H100, bf16
    attention D = 128 (the emitted kernel, nvcc -O3, side by side): 2.11 ms
    against 2.87 with expf and IEEE division.

    Before (`gpu.fast_math("softmax > for i")`, c_sources/softmax.c):

        for (int j = 0; j < C; j++) {
          y[i * C + j] = expf(x[i * C + j] - max_val);
          sum += y[i * C + j];
        }
        for (int j = 0; j < C; j++) {
          y[i * C + j] = y[i * C + j] / sum;
        }

    After (no obligation: the step changes values on purpose and declares
    it, lossy with relative tolerance `tolerance`, FAST_MATH_TOLERANCE by
    default; level 3 takes each helper as the exact operation):

        for (int j = 0; j < C; j++) {
          y[i * C + j] = otp_fast_expf(x[i * C + j] - max_val);
          sum += y[i * C + j];
        }
        for (int j = 0; j < C; j++) {
          y[i * C + j] = otp_fast_div(y[i * C + j], sum);
        }

    Integer and double divisions, and `exp` of a double, are left alone.
    Refused: a statement with neither `expf` nor a float division, a
    tolerance that is not a positive number.
    """
    who = "gpu.fast_math"
    res = Resolver(program)
    m = res.one(target, "function, loop or instruction")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
        raise TransformError(f"{who}: tolerance must be a positive number, got {tolerance!r}",
                             getattr(m.node, "loc", None))
    tds = typedefs_of(program)
    found = [p for p, n in walk(m.node, m.path)
             if isinstance(n, ir.Call) and n.name == "expf" and len(n.args) == 1
             or isinstance(n, ir.Binop) and n.op == "/"
             and type_name(resolve(type_of(n, env_at(program, p), tds), tds)) == "float"]
    if not found:
        raise TransformError(f"{who}: the target (line {m.line}) has no expf call and no division of floats",
                             getattr(m.node, "loc", None))
    new = program
    for p in reversed(found):  # the innermost first: an outer one's operands are then the rewritten ones
        n = get(new, p)
        args, op = (n.args, "expf") if isinstance(n, ir.Call) else ((n.left, n.right), "/")
        new = replace(new, p, ir.Call(ir.Var(FAST_MATH[op]), args, n.loc))
    return Rewrite(new.with_includes(matrix.OTP_H), (), "lossy", float(tolerance))
