"""The CUDA back end: a program whose loops are mapped to the GPU
(`cuda_map`) becomes CUDA C++ with `__global__` kernels and host wrappers.

A function with mapped loops becomes
- one kernel per nest of block loops at the top of its body
  (`<function>_kernel<k>`): the block indices come from `blockIdx`; the
  statements inside the nest run on every thread of the block, except the
  nests of thread loops (*phases*), whose iterations are the threads
  (`threadIdx`; a phase with fewer iterations than the block has threads on
  an axis is guarded, and so is the last tile of a loop tiled in mode
  "min", which runs at most as many iterations as it has threads). A `__syncthreads()` separates a phase from whatever
  comes before or after it, and ends the body of a sequential loop that
  holds one, so every phase sees all writes of the phases before it, as in
  the sequential C (a copy gpu.async_copy marked is waited for at the
  barrier before its tile's first use, cuda_async); between phases that
  meet only within warps, a `__syncwarp()` (cuda_warpsync). Arrays declared in the
  block are shared memory, pointers into one 16-byte aligned buffer
  (cuda_shared), except an array each of whose cells one thread owns (a
  tile of accumulators, see cuda_registers): that becomes a small array
  per thread, or a scalar, kept in registers;
- a host wrapper, `extern "C"`, with the function's name and parameters
  (pointers to device memory), that launches the kernels in order, each
  after the first as a programmatic dependent launch (cuda_launch).

Statements the GPU cannot run as written (a store to memory by every thread
of a block, host code between kernels) are refused with a `CudaError`. The
output is printed by the C printer: the CUDA constructs are ordinary IR
(storage `__shared__`, `__global__`, calls, members) but the launch, kept as
an opaque statement.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

from . import ir
from .cuda_async import Groups, check_sources, memcpy_async, window
from .cuda_launch import WAIT, launch
from .cuda_map import (MAX_THREADS, async_copy, last_first, mapped_loops, mapping, min_blocks, sums,
                       thread_extent, vector_cells)
from .cuda_registers import Register, phase_positions, register_of, to_registers
from .cuda_shared import SHARED_ALIGN, SYNC, layout_shared
from .cuda_shuffle import lane_folds
from .cuda_warpsync import SYNCWARP, WARP, warp_local
from .errors import OtpError
from .intrinsics import TILE_PRODUCTS
from .names import PURE_FUNCTIONS, free_vars, lvalue_bases
from .printer import expr as expr_text, stmt_text, to_c
from .tree import children, map_children, walk

CUDA_INCLUDE = "#include <cuda_runtime.h>"
PIPELINE_INCLUDE = "#include <cuda_pipeline.h>"  # gpu.async_copy's __pipeline_memcpy_async
ZERO, ONE = ir.Const("0"), ir.Const("1")
VOID = ir.Base(("void",))


class CudaError(OtpError):
    """The program has a structure the CUDA back end does not map."""


def to_cuda(program: ir.Program) -> str:
    """The CUDA text of `program` (functions without mapped loops stay host code)."""
    gpu = _gpu_functions(program)
    if not gpu:
        raise CudaError("the final program has no loop mapped to the GPU, so there is no kernel to emit: give the "
                        "script a CUDA ending (if target() == \"cuda\": ... gpu.map_blocks(...)), see "
                        "scripts/matmul.py")
    items: list[ir.TopLevel] = []
    scratch = _Scratch()
    for item in program.items:
        if isinstance(item, ir.FuncDef) and item.name in gpu:
            items.extend(_function(item, gpu, scratch))
        else:
            items.append(item)
    if scratch.slots:
        items.insert(0, ir.Opaque(SCRATCH_HELPER))
    pipeline = (PIPELINE_INCLUDE,) if any(async_copy(n) for _, n in walk(program)) else ()
    return to_c(ir.Program((CUDA_INCLUDE,) + pipeline + program.includes, tuple(items), program.file))


def _gpu_functions(program: ir.Program) -> set[str]:
    """The functions that become host wrappers: those with loops mapped to
    the GPU, and those that call one of them (their arguments are device
    pointers too)."""
    gpu = {f.name for f in program.functions() if next(mapped_loops(f.body), None) is not None}
    while True:
        more = {f.name for f in program.functions() if f.name not in gpu
                and any(isinstance(n, ir.Call) and n.name in gpu for _, n in walk(f.body))}
        if not more:
            return gpu
        gpu |= more


def _first_line(s: ir.Stmt) -> str:
    return stmt_text(s).split("\n", 1)[0]


def _refuse(fn: str, s: Any, why: str) -> CudaError:
    what = f"'{_first_line(s)}'" if not isinstance(s, ir.Decl) else f"'{s.name}'"
    return CudaError(f"cannot emit CUDA for {fn}: {what} {why}", getattr(s, "loc", None))


SCRATCH_SLOTS = 16
SCRATCH_HELPER = f"""/* device scratch buffers, one per malloc of a host wrapper, kept between calls
   and grown when a call needs more (a cudaMalloc per call would cost more than a decode step) */
static void *otp_scratch(int slot, size_t bytes) {{
  static void *buffers[{SCRATCH_SLOTS}];
  static size_t sizes[{SCRATCH_SLOTS}];
  if (bytes > sizes[slot]) {{
    cudaFree(buffers[slot]);
    if (cudaMalloc(&buffers[slot], bytes) != cudaSuccess) {{
      sizes[slot] = 0;
      return NULL;
    }}
    sizes[slot] = bytes;
  }}
  return buffers[slot];
}}"""


class _Scratch:
    """The scratch slots handed out to the wrappers' allocations."""

    def __init__(self) -> None:
        self.slots = 0

    def take(self, fn: str, s: ir.DeclStmt) -> int:
        if self.slots == SCRATCH_SLOTS:
            raise _refuse(fn, s, f"is one allocation too many: the host wrappers may hold {SCRATCH_SLOTS} scratch "
                                 f"buffers")
        self.slots += 1
        return self.slots - 1


def _allocation(s: ir.Stmt) -> Optional[ir.Expr]:
    """The byte count of `T *p = malloc(n);`, else None."""
    if isinstance(s, ir.DeclStmt) and isinstance(s.decl.type, ir.Ptr):
        init = s.decl.init
        if isinstance(init, ir.Cast):
            init = init.arg
        if isinstance(init, ir.Call) and init.name == "malloc" and len(init.args) == 1:
            return init.args[0]
    return None


def _freed(s: ir.Stmt, names: set[str]) -> bool:
    """`free(p);` of a scratch buffer."""
    e = s.expr if isinstance(s, ir.ExprStmt) else None
    return isinstance(e, ir.Call) and e.name == "free" and len(e.args) == 1 and isinstance(e.args[0], ir.Var) \
        and e.args[0].name in names


def _function(fn: ir.FuncDef, gpu: set[str], scratch: _Scratch) -> list[ir.TopLevel]:
    """The kernels of `fn` and its host wrapper."""
    host = _Host(fn, gpu, scratch)
    body = host.stmts(fn.body.stmts, [])
    wrapper = ir.FuncDef(dataclasses.replace(fn.decl, storage=('extern "C"',)), ir.Block(tuple(body)), (), fn.loc)
    return [*host.kernels, wrapper]


class _Host:
    """The host wrapper's statements: scalar declarations, ifs on them, and
    a launch for each nest of block loops (its kernel is kept)."""

    def __init__(self, fn: ir.FuncDef, gpu: set[str], scratch: _Scratch) -> None:
        self.fn = fn
        self.gpu = gpu
        self.scratch = scratch
        self.buffers: set[str] = set()
        self.kernels: list[ir.FuncDef] = []

    def stmts(self, stmts: tuple[ir.Stmt, ...], scalars: list[ir.Decl]) -> list[ir.Stmt]:
        out: list[ir.Stmt] = []
        scalars = list(scalars)
        for s in stmts:
            m = mapping(s)
            if isinstance(s, ir.For) and m is not None and m[0] == "block":
                kernel, launch = _kernel(self.fn, s, f"{self.fn.name}_kernel{len(self.kernels) + 1}", scalars,
                                         follows=bool(self.kernels))
                self.kernels.append(kernel)
                out.append(launch)
            elif isinstance(s, ir.DeclStmt) and _is_scalar(s.decl) and next(mapped_loops(s), None) is None:
                out.append(s)
                scalars.append(s.decl)
            elif _allocation(s) is not None:
                out.append(self.buffer(s))  # type: ignore[arg-type]
                scalars.append(s.decl)  # type: ignore[union-attr]
            elif _freed(s, self.buffers):
                continue
            elif self.launches(s):
                out.append(s)
            elif isinstance(s, ir.If) and not _impure_call(s.cond):
                then = ir.Block(tuple(self.stmts(s.then.stmts, scalars)))
                other = ir.Block(tuple(self.stmts(s.other.stmts, scalars))) if s.other is not None else None
                out.append(dataclasses.replace(s, then=then, other=other))
            else:
                raise _refuse(self.fn.name, s, "runs on the host between kernels: the host wrapper only declares "
                                               "scalars and scratch buffers, tests scalars, calls other wrappers "
                                               "and launches kernels (map every loop nest to blocks, outermost "
                                               "first)")
        return out

    def buffer(self, s: ir.DeclStmt) -> ir.Stmt:
        """`T *p = malloc(n);` as a device scratch buffer of the wrapper."""
        d = s.decl
        self.buffers.add(d.name or "")
        slot = self.scratch.take(self.fn.name, s)
        call = ir.Call(ir.Var("otp_scratch"), (ir.Const(str(slot)), _allocation(s)))  # type: ignore[arg-type]
        return dataclasses.replace(s, decl=dataclasses.replace(d, init=ir.Cast(d.type, call)))

    def launches(self, s: ir.Stmt) -> bool:
        """A call of another host wrapper (its arguments are device pointers
        and scalars the host has)."""
        e = s.expr if isinstance(s, ir.ExprStmt) else None
        return isinstance(e, ir.Call) and e.name in self.gpu and not any(_impure_call(a) for a in e.args)


def _is_scalar(d: ir.Decl) -> bool:
    return isinstance(d.type, ir.Base)


def _nest(first: ir.For, level: str) -> list[ir.For]:
    """`first` and the loops of `level` perfectly nested in it."""
    nest = [first]
    while len(nest[-1].body.stmts) == 1:
        inner = nest[-1].body.stmts[0]
        if not isinstance(inner, ir.For) or (mapping(inner) or ("",))[0] != level:
            break
        nest.append(inner)
    return nest


def _check_axes(fn: str, nest: list[ir.For], what: str) -> None:
    axes = [mapping(lp)[1] for lp in nest]  # type: ignore[index]
    if len(set(axes)) != len(axes):
        raise _refuse(fn, nest[0], f"maps two {what} loops of one nest to the same axis ({', '.join(axes)})")


def _position(loop: ir.For, builtin: str) -> ir.Expr:
    """The loop index of the block or thread at `builtin.<axis>` (blocks
    counted from the last iteration for gpu.last_first)."""
    _, axis = mapping(loop)  # type: ignore[misc]
    pos: ir.Expr = ir.Cast(loop.itype, ir.Member(ir.Var(builtin), axis, False))
    if builtin == "blockIdx" and last_first(loop):
        pos = ir.Binop("-", ir.Binop("-", _count(loop), ONE), pos)
    if loop.step != ONE:
        pos = ir.Binop("*", pos, loop.step)
    return pos if loop.start == ZERO else ir.Binop("+", loop.start, pos)


def _index_decls(nest: list[ir.For], builtin: str) -> tuple[ir.Stmt, ...]:
    return tuple(ir.DeclStmt(ir.Decl(lp.index, lp.itype, _position(lp, builtin))) for lp in nest)


def _count(loop: ir.For) -> ir.Expr:
    """The iteration count of a block loop, as a host expression."""
    span = loop.stop if loop.start == ZERO else ir.Binop("-", loop.stop, loop.start)
    if loop.step == ONE:
        return span
    return ir.Binop("/", ir.Binop("+", span, ir.Binop("-", loop.step, ONE)), loop.step)


def _kernel(fn: ir.FuncDef, top: ir.For, name: str, scalars: list[ir.Decl], follows: bool) \
        -> tuple[ir.FuncDef, ir.Stmt]:
    blocks = _nest(top, "block")
    _check_axes(fn.name, blocks, "block")
    indices = {lp.index for lp in blocks}
    for lp in blocks:
        if free_vars((lp.start, lp.stop, lp.step)) & indices:
            raise _refuse(fn.name, lp, "has bounds that depend on another block index: the grid must be "
                                       "rectangular")
    body = blocks[-1].body
    dims = _thread_dims(fn.name, body)
    body = lane_folds(body, dims, _array_decls(body))
    registers = _register_arrays(body, blocks, dims)
    uniform = {p.name for p in fn.params if p.name} | {d.name for d in scalars if d.name} | indices \
        | _block_level_indices(body)
    emitter = _BlockEmitter(fn.name, dims, registers, _array_decls(body), uniform)
    check_sources(body, lambda node, why: _refuse(fn.name, node, why))
    stmts = _index_decls(blocks, "blockIdx") + tuple(emitter.stmts(body.stmts))
    added = {a for lp in blocks for a in sums(lp)}
    if added:
        stmts = tuple(_atomic(fn.name, s, added) for s in stmts)
    wide = {side for s in stmts for _, n in walk(s) if vector_cells(n)
            for side in (n.body.stmts[0].expr.lhs, n.body.stmts[0].expr.rhs)}
    if wide:
        stmts = tuple(_aligned(_vectors(s), {lvalue_bases(e).pop() for e in wide}) for s in stmts)
    stmts, dynamic = layout_shared(stmts)
    if follows:
        stmts = (WAIT,) + stmts
    used = free_vars(top)
    extra = tuple(dataclasses.replace(d, init=None) for d in scalars if d.name in used)
    params = fn.params + extra
    threads = [str(dims.get(a, 1)) for a in "xyz"]
    wanted = [n for n in map(min_blocks, blocks) if n is not None]
    bounds = tuple(f"__launch_bounds__({math.prod(dims.values())}, {n})" for n in wanted)
    kernel = ir.FuncDef(ir.Decl(name, ir.FuncT(VOID, params), funcspec=("__global__",) + bounds),
                        ir.Block(stmts), (), top.loc)
    grid = {mapping(lp)[1]: _count(lp) for lp in blocks}  # type: ignore[index]
    sizes = [expr_text(grid.get(a, ONE)) for a in "xyz"]
    args = ", ".join(p.name or "" for p in params)
    statements = launch(name, f"dim3({', '.join(sizes)})", f"dim3({', '.join(threads)})", dynamic, args, follows)
    cond = _all([ir.Binop(">", g, ZERO) for g in grid.values()])
    return kernel, ir.If(cond, ir.Block(statements))


def _atomic(fn: str, node: Any, added: set[str]) -> Any:
    """`a[i] += e;` as `atomicAdd(&a[i], e);` for the arrays that distinct
    blocks add into (gpu.map_blocks' sums); any other write to them is refused."""
    if isinstance(node, ir.ExprStmt) and isinstance(node.expr, (ir.Assign, ir.Unop)):
        e = node.expr
        target = e.lhs if isinstance(e, ir.Assign) else e.arg
        if lvalue_bases(target) & added:
            if not (isinstance(e, ir.Assign) and e.op in ("+=", "-=") and isinstance(target, ir.Index)):
                raise _refuse(fn, node, f"writes {', '.join(sorted(lvalue_bases(target) & added))}, which distinct "
                                        f"blocks add into: only `a[i] += e;` can be made atomic")
            value = e.rhs if e.op == "+=" else ir.Unop("-", e.rhs)
            return dataclasses.replace(node, expr=ir.Call(ir.Var("atomicAdd"), (ir.Unop("&", target), value)))
        return node
    return map_children(node, lambda c: _atomic(fn, c, added))


def _int4(e: ir.Expr, const: bool) -> ir.Expr:
    """`*(int4 *)&e`: the 16 bytes at `e`."""
    return ir.Unop("*", ir.Cast(ir.Ptr(ir.Base(("int4",), ("const",) if const else ())), ir.Unop("&", e)))


def _vectors(node: Any) -> Any:
    """The copy loops gpu.vector_copy marked, by steps of one `int4` (or of
    one 16-byte cp.async, gpu.async_copy)."""
    cells = vector_cells(node)
    if cells:
        copy = node.body.stmts[0].expr
        body = (memcpy_async(copy.lhs, copy.rhs, 16) if async_copy(node) else
                ir.ExprStmt(ir.Assign("=", _int4(copy.lhs, False), _int4(copy.rhs, True))))
        return dataclasses.replace(node, step=ir.Const(str(cells)), body=ir.Block((body,)), pragmas=())
    return map_children(node, _vectors)


def _aligned(node: Any, names: set[str]) -> Any:
    """The declarations of `names` 16-byte aligned (`int4` loads and stores reach them)."""
    if isinstance(node, ir.DeclStmt) and node.decl.name in names and SHARED_ALIGN not in node.decl.storage:
        return dataclasses.replace(node, decl=dataclasses.replace(node.decl, storage=(SHARED_ALIGN,)
                                                                   + node.decl.storage))
    return map_children(node, lambda c: _aligned(c, names))


def _all(conds: Sequence[ir.Expr]) -> ir.Expr:
    out = conds[0]
    for c in conds[1:]:
        out = ir.Binop("&&", out, c)
    return out


# ----------------------------------------------------------------- threads


def _phase_nest(fn: str, top: ir.For) -> list[ir.For]:
    nest = _nest(top, "thread")
    _check_axes(fn, nest, "thread")
    inner = next(mapped_loops(nest[-1].body), None)
    if inner is not None:
        raise _refuse(fn, inner[1], "is mapped to the GPU inside a thread loop, not directly under it: a nest "
                                    "of thread loops must be perfect, with at most one loop per axis")
    return nest


def _phase_extents(fn: str, nest: list[ir.For]) -> dict[str, int]:
    out: dict[str, int] = {}
    for lp in nest:
        n = thread_extent(lp)
        if n is None or n[0] < 1:
            raise _refuse(fn, lp, "is mapped to threads but does not run a constant, positive number of "
                                  "iterations (or at most that many) with step 1 (tile it first: for (i = b; "
                                  "i < b + 32; i++))")
        out[mapping(lp)[1]] = n[0]  # type: ignore[index]
    return out


def _phases(body: Any) -> list[ir.For]:
    """The outermost thread loops under `body`."""
    out: list[ir.For] = []

    def visit(node: Any) -> None:
        m = mapping(node)
        if m is not None and m[0] == "thread":
            out.append(node)
            return
        for _, child in children(node):
            visit(child)
    visit(body)
    return out


def _thread_dims(fn: str, body: ir.Block) -> dict[str, int]:
    """Threads per axis: the largest extent of any phase on that axis."""
    dims: dict[str, int] = {}
    for top in _phases(body):
        for axis, n in _phase_extents(fn, _phase_nest(fn, top)).items():
            dims[axis] = max(dims.get(axis, 1), n)
    total = 1
    for n in dims.values():
        total *= n
    if total > MAX_THREADS:
        raise CudaError(f"cannot emit CUDA for {fn}: a block would have {total} threads "
                        f"({' x '.join(str(n) for n in dims.values())}), over the {MAX_THREADS} a block may have")
    return dims


# ----------------------------------------------------------------- registers


def _block_level_indices(body: ir.Block) -> set[str]:
    """The indices of the sequential loops outside the phases: every thread of the block sees the same values."""
    out: set[str] = set()

    def visit(node: Any) -> None:
        if mapping(node) is not None:
            return
        if isinstance(node, ir.For):
            out.add(node.index)
        for _, child in children(node):
            visit(child)
    visit(body)
    return out


def _array_decls(body: ir.Block) -> dict[str, ir.Decl]:
    """Arrays declared in the block, outside its phases."""
    out: dict[str, ir.Decl] = {}

    def visit(node: Any) -> None:
        if mapping(node) is not None:
            return
        if isinstance(node, ir.DeclStmt) and isinstance(node.decl.type, ir.Array) and node.decl.name:
            out[node.decl.name] = node.decl
        for _, child in children(node):
            visit(child)
    visit(body)
    return out


def _register_arrays(body: ir.Block, blocks: list[ir.For], dims: dict[str, int]) -> dict[str, Register]:
    """Block arrays whose cells are each owned by one thread (cuda_registers)."""
    out = {}
    for name, d in _array_decls(body).items():
        reg = register_of(body, blocks, d, dims)
        if reg is not None:
            out[name] = reg
    return out


# ----------------------------------------------------------------- the block's statements


def _impure_call(e: Optional[ir.Expr]) -> bool:
    return e is not None and any(isinstance(n, ir.Call) and n.name not in PURE_FUNCTIONS for _, n in walk(e))


WARP_STEPS = (16, 8, 4, 2, 1)
_SHUFFLED = ("fmaxf", "fminf", "fmax", "fmin")


def _tree_step(s: ir.Stmt) -> Optional[tuple[str, str, int, str]]:
    """(array, combine, half, thread index) of a step of gpu.reduce's tree,
    a phase `for (t = 0; t < T; t++) if (t < half) p[t] += p[t + half];`
    (or `p[t] = fmaxf(p[t], p[t + half])`, fminf, fmax, fmin), else None."""
    m = mapping(s)
    if m != ("thread", "x") or not isinstance(s, ir.For) or len(s.body.stmts) != 1:
        return None
    cond, t = s.body.stmts[0], ir.Var(s.index)
    if not (isinstance(cond, ir.If) and cond.other is None and len(cond.then.stmts) == 1
            and isinstance(cond.cond, ir.Binop) and cond.cond.op == "<" and cond.cond.left == t
            and isinstance(cond.cond.right, ir.Const) and cond.cond.right.text.isdigit()):
        return None
    half = int(cond.cond.right.text)
    step = cond.then.stmts[0]
    e = step.expr if isinstance(step, ir.ExprStmt) else None
    if not (isinstance(e, ir.Assign) and isinstance(e.lhs, ir.Index) and isinstance(e.lhs.base, ir.Var)
            and e.lhs.index == t):
        return None
    other = ir.Index(e.lhs.base, ir.Binop("+", t, ir.Const(str(half))))
    if e.op == "+=" and e.rhs == other:
        return e.lhs.base.name, "+", half, s.index
    if e.op == "=" and isinstance(e.rhs, ir.Call) and e.rhs.name in _SHUFFLED and e.rhs.args == (e.lhs, other):
        return e.lhs.base.name, e.rhs.name or "", half, s.index
    return None


def _warp_chain(stmts: tuple[ir.Stmt, ...], k: int, dims: dict[str, int]) -> Optional[tuple[str, str, str]]:
    """(array, combine, thread index) when stmts[k:] starts with the tree
    steps of halves 16, 8, 4, 2, 1 over one array, in a block whose threads
    all lie along x (a warp is 32 neighbouring x), the array is declared
    among the statements before them and those after them read it only at
    [0] (the shuffles leave its other cells as they were before these
    steps, where the sequential steps change them)."""
    if set(dims) != {"x"} or dims["x"] < WARP or dims["x"] % WARP or len(stmts) < k + len(WARP_STEPS):
        return None
    steps = [st for st in map(_tree_step, stmts[k:k + len(WARP_STEPS)]) if st is not None]
    if [st[2] for st in steps] != list(WARP_STEPS) or len({(st[0], st[1], st[3]) for st in steps}) != 1:
        return None
    name, combine, _, t = steps[0]
    if not any(isinstance(d, ir.DeclStmt) and d.decl.name == name for d in stmts[:k]):
        return None  # declared here, so nothing outside these statements reads it
    for later in stmts[k + len(WARP_STEPS):]:
        for _, n in walk(later):
            if isinstance(n, ir.Index) and n.base == ir.Var(name) and n.index != ZERO:
                return None
    return name, combine, t


def _shuffles(name: str, combine: str, t: str, array: ir.CType) -> ir.Stmt:
    """The first warp's lanes fold p[0..31] by `__shfl_down_sync`, in the
    tree's order (lane t adds lane t + half's value to its own, half = 16,
    ..., 1: the sequential steps' operations on the cells they read), and
    lane 0 stores the result in p[0]."""
    elem = array.of if isinstance(array, ir.Array) else array
    v, lane = ir.Var(f"{name}_lane"), ir.Var(t)
    body: list[ir.Stmt] = [ir.DeclStmt(ir.Decl(t, ir.INT, ir.Cast(ir.INT, ir.Member(ir.Var("threadIdx"), "x", False)))),
                           ir.DeclStmt(ir.Decl(v.name, elem, ir.Index(ir.Var(name), lane)))]
    for half in WARP_STEPS:
        down = ir.Call(ir.Var("__shfl_down_sync"), (ir.Const("0xffffffffu"), v, ir.Const(str(half))))
        body.append(ir.ExprStmt(ir.Assign("+=", v, down) if combine == "+"
                                else ir.Assign("=", v, ir.Call(ir.Var(combine), (v, down)))))
    body.append(ir.If(ir.Binop("==", lane, ZERO), ir.Block((ir.ExprStmt(ir.Assign("=", ir.Index(ir.Var(name), ZERO),
                                                                                   v)),))))
    first = ir.Binop("<", ir.Cast(ir.INT, ir.Member(ir.Var("threadIdx"), "x", False)), ir.Const(str(WARP)))
    return ir.If(first, ir.Block(tuple(body)))


def _whole_warps(fn: str, nest: list[ir.For], dims: dict[str, int], shared: set[str]) -> None:
    """Refuse a warp's tile product (gpu.mma, intrinsics.TILE_PRODUCTS) that
    the 32 lanes of a warp would not call together with their own lane: the
    phase's x loop must start at 0 and run exactly a multiple of 32
    iterations in a block whose x size is a multiple of 32 (a warp is then 32
    neighbouring x), the call's lane must be that index (modulo 32), and no
    test or loop bound inside the phase may depend on the thread otherwise
    than through its warp (x / 32: gpu.warps' share of the tiles). A bfloat16
    product that reads B k-major (`_kn`) loads it with ldmatrix.trans, which reads
    shared memory only: its B must be one of the block's `shared` arrays."""
    x = next((lp for lp in nest if mapping(lp)[1] == "x"), None)  # type: ignore[index]
    threads = {lp.index for lp in nest}

    def lane_dependent(e: Any) -> bool:
        """`e` depends on the thread otherwise than through its warp (x / 32)."""
        def warp(n: Any) -> Any:
            if isinstance(n, ir.Binop) and n.op == "/" and x is not None and n.left == ir.Var(x.index) \
                    and isinstance(n.right, ir.Const) and n.right.text.isdigit() and int(n.right.text) % WARP == 0:
                return ZERO
            return map_children(n, warp)
        return bool(free_vars(warp(e)) & threads)

    def visit(node: Any, divergent: Optional[str]) -> None:
        if isinstance(node, ir.Call) and node.name in TILE_PRODUCTS:
            why = _lane_problem(node.args[-1] if node.args else None, x, dims) or divergent
            if not why and node.name.endswith("bf16_kn") and _pointed_array(node.args[4]) not in shared:
                why = (f"its B ('{expr_text(node.args[4])}') is not a shared tile of the block, which the warp's "
                       f"ldmatrix.trans needs: stage it (gpu.stage)")
            if why:
                raise CudaError(f"cannot emit CUDA for {fn}: '{expr_text(node)}' is a warp's tile product, which "
                                f"the 32 lanes of a warp must make together, each with its own lane; {why}",
                                node.loc)
        if isinstance(node, ir.If) and lane_dependent(node.cond):
            divergent = f"it is under a test on the thread ('{expr_text(node.cond)}')"
        if isinstance(node, ir.For) and any(lane_dependent(e) for e in (node.start, node.stop, node.step)):
            divergent = f"it is in a loop whose bounds depend on the thread (for {node.index})"
        for _, child in children(node):
            visit(child, divergent)
    visit(nest[-1].body, None)


def _pointed_array(pointer: ir.Expr) -> Optional[str]:
    """`a` for `&a[..]..[..]`, else None."""
    e = pointer.arg if isinstance(pointer, ir.Unop) and pointer.op == "&" else None
    while isinstance(e, ir.Index):
        e = e.base
    return e.name if isinstance(e, ir.Var) else None


def _lane_problem(lane: Optional[ir.Expr], x: Optional[ir.For], dims: dict[str, int]) -> str:
    """Why `lane` is not the lane of the thread in the phase whose x loop is `x`; empty when it is."""
    if x is None:
        return "its phase has no thread loop along x"
    n = thread_extent(x)
    if x.start != ZERO or n is None or not n[1] or n[0] % WARP or dims.get("x", 1) % WARP:
        return (f"the phase's x loop (for {x.index}) must start at 0 and run a multiple of {WARP} iterations, in "
                f"a block of a multiple of {WARP} threads along x")
    t = ir.Var(x.index)
    if lane not in (ir.Binop("%", t, ir.Const(str(WARP))),) + ((t,) if n[0] == WARP else ()):
        return f"its lane '{expr_text(lane) if lane is not None else ''}' is not {x.index} % {WARP}"
    return ""


class _BlockEmitter:
    """Rewrites the statements of a block (run by every thread) into the kernel's."""

    def __init__(self, fn: str, dims: dict[str, int], registers: dict[str, Register],
                 arrays: dict[str, ir.Decl], uniform: set[str]) -> None:
        self.fn = fn
        self.dims = dims
        self.registers = registers
        self.arrays = arrays
        self.uniform = uniform  # the names whose value every thread shares (parameters, block-level loop indices)
        self.locals: set[str] = set()

    def stmts(self, stmts: tuple[ir.Stmt, ...]) -> list[ir.Stmt]:
        """The statements with barriers: before a phase when anything ran
        since the last barrier, and before any statement that follows a
        phase (it may read what the phase wrote)."""
        out: list[ir.Stmt] = []
        pending = after_phase = False
        groups = Groups(set(self.arrays) - set(self.registers), lambda node, why: _refuse(self.fn, node, why))
        since: Optional[list[ir.For]] = []  # the phases since the last __syncthreads(), None after anything else
        k = 0
        while k < len(stmts):
            s = stmts[k]
            k += 1
            if isinstance(s, ir.DeclStmt) and s.decl.init is None:
                out.append(self.decl(s))
                continue
            has = bool(_phases(s))
            if (pending and has) or after_phase:
                waits = groups.before_barrier(window(stmts, k - 1), stmts[k - 1:])
                warp = not waits and self._warp_only(since, stmts, k - 1)
                out.extend(waits)
                out.append(SYNCWARP if warp else SYNC)
                pending = after_phase = False
                since = since if warp else []
            chain = _warp_chain(stmts, k - 1, self.dims)
            if chain is not None and chain[0] in self.arrays:
                out.append(_shuffles(*chain, self.arrays[chain[0]].type))
                k += len(WARP_STEPS) - 1
            else:
                out.append(self.stmt(s))
            is_phase = mapping(s) is not None
            if is_phase:
                out.extend(groups.issue(s))
            since = since + [s] if is_phase and since is not None else None
            pending = pending or not has or is_phase
            after_phase = is_phase
        return out + groups.at_end()

    def _warp_only(self, since: Optional[list[ir.For]], stmts: tuple[ir.Stmt, ...], k: int) -> bool:
        """Whether the barrier before `stmts[k]` may be a `__syncwarp()`:
        only phases ran since the last `__syncthreads()`, the block's
        threads are whole warps along x, the next statement, a phase, meets
        each of them within warps only (cuda_warpsync), and it starts using
        no shared array while a shared array of this list is done with in
        those phases (used there and not after): cuda_shared lets two
        arrays share bytes only across a `__syncthreads()`, and a tile's
        bytes are worth more than the barrier."""
        nxt, rest = stmts[k], stmts[k:]
        if not since or mapping(nxt) is None or set(self.dims) != {"x"} or self.dims["x"] % WARP:
            return False
        shared = set(self.arrays) - set(self.registers)
        before = free_vars(tuple(since)) & shared
        mine = {s.decl.name for s in stmts if isinstance(s, ir.DeclStmt)}
        if (free_vars(nxt) & shared) - before and (before & mine) - free_vars(rest):
            return False
        return all(warp_local(p, nxt, set(self.registers), self.uniform) for p in since)  # type: ignore[arg-type]

    def closed(self, b: ir.Block) -> ir.Block:
        """A nested body that holds a phase ends with a barrier (it may run again, or be followed)."""
        body = self.stmts(b.stmts)
        return ir.Block(tuple(body + ([SYNC] if _phases(b) and body[-1:] != [SYNC] else [])), b.loc)

    def stmt(self, s: ir.Stmt) -> ir.Stmt:
        m = mapping(s)
        if m is not None and m[0] == "thread":
            assert isinstance(s, ir.For)
            return self.phase(s)
        if m is not None:
            raise _refuse(self.fn, s, "is mapped to blocks inside a block: block loops must form the "
                                      "outermost nest of a kernel")
        if isinstance(s, ir.DeclStmt):
            return self.decl(s)
        if isinstance(s, ir.For) and not s.pragmas:
            return dataclasses.replace(s, body=self.closed(s.body))
        if isinstance(s, ir.Block):
            return self.closed(s)
        if isinstance(s, ir.If):
            other = self.closed(s.other) if s.other is not None else None
            return dataclasses.replace(s, then=self.closed(s.then), other=other)
        if isinstance(s, ir.ExprStmt) and self.local_update(s.expr):
            return s
        raise _refuse(self.fn, s, "would run on every thread of the block: only declarations, updates of the "
                                  "block's own scalars, sequential loops and ifs may sit outside the thread loops "
                                  "(map the loop that holds it to threads)")

    def local_update(self, e: ir.Expr) -> bool:
        """An assignment to a scalar of the block that calls nothing impure."""
        if _impure_call(e):
            return False
        target = e.lhs if isinstance(e, ir.Assign) else e.arg if isinstance(e, ir.Unop) else None
        return isinstance(target, ir.Var) and target.name in self.locals

    def decl(self, s: ir.DeclStmt) -> ir.Stmt:
        d = s.decl
        if d.name in self.registers:
            return ir.DeclStmt(dataclasses.replace(d, type=self.registers[d.name].ctype()), s.loc)
        if isinstance(d.type, ir.Array):
            t: ir.CType = d.type
            while isinstance(t, ir.Array):
                if not (isinstance(t.size, ir.Const) and t.size.kind == "int"):
                    raise _refuse(self.fn, d, "is a block array (shared memory) whose size is not a constant")
                t = t.of
            if d.init is not None:
                raise _refuse(self.fn, d, "is a block array (shared memory) with an initializer")
            return ir.DeclStmt(dataclasses.replace(d, storage=("__shared__", SHARED_ALIGN) + d.storage), s.loc)
        if _impure_call(d.init):
            raise _refuse(self.fn, d, "is initialized by a call every thread of the block would make (an "
                                      "allocation?): give it a constant size, or compute it on the host")
        if d.name:
            self.locals.add(d.name)
        return s

    def phase(self, top: ir.For) -> ir.Stmt:
        nest = _phase_nest(self.fn, top)
        extents = _phase_extents(self.fn, nest)
        _whole_warps(self.fn, nest, self.dims, set(self.arrays) - set(self.registers))
        inner = to_registers(nest[-1].body, self.registers, phase_positions(nest))
        bounded = [ir.Binop("<", ir.Var(lp.index), lp.stop) for lp in nest
                   if not thread_extent(lp)[1]]  # type: ignore[index]
        body = (ir.If(_all(bounded), inner),) if bounded else inner.stmts
        used = free_vars(body)
        kept: list[ir.Stmt] = []
        for d, lp in reversed(list(zip(_index_decls(nest, "threadIdx"), nest))):
            if lp.index in used:  # an inner thread loop may start at an outer one's index
                kept.insert(0, d)
                used |= free_vars(d)
        indices = tuple(kept)
        block = ir.Block(indices + body, top.loc)
        guards = [ir.Binop("<", ir.Cast(ir.INT, ir.Member(ir.Var("threadIdx"), a, False)),
                            ir.Const(str(extents.get(a, 1))))
                  for a, n in self.dims.items() if extents.get(a, 1) < n]
        return ir.If(_all(guards), block, None, top.loc) if guards else block
