"""Group-wise symmetric int8 quantization (Q8_0, as in llama.cpp and
llama2.c's runq): int8_groups, group_accumulator, integer_product.

A quantized array keeps, for each group of G consecutive elements along its
last dimension, one float scale s = max |v| / 127 and the int8 values
q = round(v / s), so v is approximately q * s. Quantizing the two operands
of a dot product lets each group's inner product run on integers:

    sum_j w_j x_j  ~  sum_g (Ws_g xs_g) * sum_{j in g} Wq_j xq_j

The steps of a script (scripts/quantize.py): tile the reduction loop by G
(loop.tile), replace the float operands by their dequantized values
(int8_groups, the one step that changes values), sum each group unscaled and
scale it once (group_accumulator), then sum the group in int32
(integer_product); vector.vectorize turns that group sum into int8
dot-product instructions.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence, Union

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.frontend import parse_text
from optitrust_py.layout import linearize
from optitrust_py.names import declared_names, free_vars, fresh_name, has_side_effects, subst, writes_of
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, type_name
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, get, replace, walk
from optitrust_py.typeof import env_at, integer_range, type_of, typedefs_of, unqualified, visible_names
from transformations.arith import _contract
from transformations.loop import _trip_count
from transformations.matrix import _accesses, _Array, _find_array

QMAX = 127
"""Quantized values lie in [-QMAX, QMAX]: symmetric, so -128 is never used."""
HALF_STEP = 1.0 / (2 * QMAX)
"""Rounding to the nearest multiple of s = max / QMAX moves a value by at most
s / 2 = max / (2 * QMAX): the error of one dequantized value, relative to
the largest magnitude of its group."""
INT8 = ir.Base(("int8_t",))
INT32 = ir.Base(("int32_t",))
FLOAT = ir.FLOAT
INCLUDES = ("#include <math.h>", "#include <stdint.h>", "#include <stdlib.h>", "#include <otp.h>")
EXACT_SUM = 2 ** 24
"""Integers of magnitude up to 2^24 are exact in float: a group sum of int8
products below it is the same in int32 and in float."""

_QUANTIZER = """
void {name}(int R, int C, const float *src, int8_t *q, float *s) {{
  __requires("R >= 1, C >= 1, C % {g} == 0");
  __reads("src ~> Matrix2(R, C)");
  __writes("q ~> Matrix2(R, C), s ~> Matrix2(R, C / {g})");
  for (int r = 0; r < R; r++) {{
    for (int g = 0; g < C / {g}; g++) {{
      float amax = 0.0f;
      for (int k = 0; k < {g}; k++) {{
        float a = fabsf(src[r * C + g * {g} + k]);
        if (a > amax) {{
          amax = a;
        }}
      }}
      float inv = amax > 0.0f ? {qmax}.0f / amax : 0.0f;
      s[r * (C / {g}) + g] = amax / {qmax}.0f;
      for (int k = 0; k < {g}; k++) {{
        q[r * C + g * {g} + k] = (int8_t)roundf(src[r * C + g * {g} + k] * inv);
      }}
    }}
  }}
}}
"""


def quantizer(name: str, group: int) -> ir.FuncDef:
    """The generated quantizer: rows of C floats to int8 groups of `group`
    with one scale each (the format of llama2.c's runq `quantize`)."""
    text = "#include <math.h>\n#include <stdint.h>\n#include <otp.h>\n" + \
        _QUANTIZER.format(name=name, g=group, qmax=QMAX)
    return parse_text(text, f"<{name}>").functions()[0]


def _group_loop(program: ir.Program, target: str, who: str) -> tuple[Resolver, Any, int]:
    """The loop over one group: unit step, a constant trip count G > 1."""
    res = Resolver(program)
    m = res.one(target, "loop over one group (e.g. 'f > for bj > for j')", (ir.For,))
    loop: ir.For = m.node
    trip = _trip_count(loop)
    if loop.step != ir.Const("1") or trip is None or trip < 2:
        raise TransformError(f"{who}: for {loop.index} (line {m.line}) must step by 1 over a constant number of "
                             f"iterations (the group size), e.g. 'for (int j = bj; j < bj + 32; j++)'; tile the "
                             f"reduction loop first (loop.tile)", loop.loc)
    if loop.pragmas:
        raise TransformError(f"{who}: for {loop.index} (line {m.line}) has pragmas (#pragma {loop.pragmas[0]}); "
                             f"quantize before annotating loops", loop.loc)
    return res, m, trip


# ----------------------------------------------------------------- int8_groups


@dataclasses.dataclass(frozen=True)
class _Quantized:
    """An array being quantized, with the names of its int8 copy and scales."""

    arr: _Array
    q: str
    s: str

    @property
    def rows(self) -> ir.Expr:
        """How many rows of groups: the product of the leading dimensions."""
        return _product(self.arr.shape[:-1]) if len(self.arr.shape) > 1 else ir.Const("1")

    def scale_shape(self, group: int) -> tuple[ir.Expr, ...]:
        return self.arr.shape[:-1] + (ir.Binop("/", self.arr.shape[-1], ir.Const(str(group))),)

    def dequantized(self, index: Sequence[ir.Expr], flat: ir.Expr, group: int) -> ir.Expr:
        """`(float)q[i] * s[i / G]` for the element at `index` (`flat` its
        index as written)."""
        g = ir.Const(str(group))
        at = tuple(index[:-1]) + (ir.Binop("/", index[-1], g),)
        scale = ir.Index(ir.Var(self.s), linearize(at, self.scale_shape(group)))
        return ir.Binop("*", ir.Cast(FLOAT, ir.Index(ir.Var(self.q), flat)), scale)

    def allocation(self, group: int) -> tuple[ir.Stmt, ...]:
        """`int8_t *q = malloc(...); float *s = malloc(...);`"""
        def alloc(name: str, elem: ir.CType, shape: Sequence[ir.Expr]) -> ir.Stmt:
            size = ir.Binop("*", _product(shape), ir.SizeofType(elem))
            return ir.DeclStmt(ir.Decl(name, ir.Ptr(elem), ir.Call(ir.Var("malloc"), (size,))))
        return (alloc(self.q, INT8, self.arr.shape), alloc(self.s, FLOAT, self.scale_shape(group)))

    def quantize_call(self, fn: str) -> ir.Stmt:
        args = (self.rows, self.arr.shape[-1], ir.Var(self.arr.name), ir.Var(self.q), ir.Var(self.s))
        return ir.ExprStmt(ir.Call(ir.Var(fn), args))

    def frees(self) -> tuple[ir.Stmt, ...]:
        return tuple(ir.ExprStmt(ir.Call(ir.Var("free"), (ir.Var(n),))) for n in (self.q, self.s))

    def resources(self, group: int) -> str:
        def res(name: str, shape: Sequence[ir.Expr]) -> str:
            return f"{name} ~> Matrix{len(shape)}({', '.join(expr_text(d) for d in shape)})"
        return f"{res(self.q, self.arr.shape)}, {res(self.s, self.scale_shape(group))}"


def _quantized_arrays(program: ir.Program, res: Resolver, fn: ir.FuncDef, fn_path: Path, loop_path: Path,
                      arrays: Mapping[str, Sequence[Union[str, int]]], taken: set[str],
                      who: str) -> list[tuple[_Quantized, list[Any]]]:
    if not isinstance(arrays, Mapping) or not arrays:
        raise TransformError(f"{who}: arrays maps each float array to quantize to its shape, e.g. "
                             f"{{\"W\": [\"D\", \"N\"], \"x\": [\"N\"]}}, got {arrays!r}", fn.loc)
    params = {p.name for p in fn.params}
    out = []
    for name, shape in arrays.items():
        if name not in params:
            raise TransformError(f"{who}: '{name}' is not a parameter of {fn.name}: only arrays the caller "
                                 f"passes are quantized (their values are known when the function starts)", fn.loc)
        arr = _find_array(program, fn_path, name, shape, who)
        if unqualified(arr.elem) != FLOAT:
            raise TransformError(f"{who}: '{name}' holds {type_name(arr.elem)}, not float", fn.loc)
        accesses = _accesses(program, res, arr, fn_path, who)
        for a in accesses:
            if a.role != "read":
                raise TransformError(f"{who}: {fn.name} writes '{name}' (line {res.line(a.path)}): a quantized copy "
                                     f"made when it starts would go stale", fn.loc)
            if a.path[:len(loop_path)] != loop_path:
                raise TransformError(f"{who}: '{expr_text(get(program, a.path))}' (line {res.line(a.path)}) is "
                                     f"outside the group loop; quantize only arrays that loop reads", fn.loc)
        if not accesses:
            raise TransformError(f"{who}: {fn.name} does not read '{name}'", fn.loc)
        q = fresh_name(taken, f"{name}q")
        taken.add(q)
        s = fresh_name(taken, f"{name}s")
        taken.add(s)
        out.append((_Quantized(arr, q, s), accesses))
    return out


def _kernel_contract(program: ir.Program, fn: ir.FuncDef, ahead: Sequence[_Quantized], group: int,
                     who: str) -> tuple[ir.ContractClause, ...]:
    """The contract of the kernel: the function's, with each array quantized
    ahead replaced by its int8 copy and its scales (read only)."""
    contract = _contract(fn)
    if contract is None:
        raise TransformError(f"{who}: {fn.name} has no contract, so the kernel taking the quantized arrays "
                             f"cannot get one (write it in specs/ or in the source)", fn.loc)
    replaced = {a.arr.name: a for a in ahead}
    clauses = []
    if contract.requires:
        clauses.append(ir.ContractClause("requires", ", ".join(expr_text(r) for r in contract.requires)))
    for mode in ("reads", "writes", "modifies"):
        items = []
        for r in getattr(contract, mode):
            if r.base in replaced:
                if mode != "reads":
                    raise TransformError(f"{who}: the contract of {fn.name} lets it {mode[:-1]} '{r.base}'", fn.loc)
                items.append(replaced[r.base].resources(group))
            else:
                items.append(str(r))
        if items:
            clauses.append(ir.ContractClause(mode, ", ".join(items)))
    return tuple(clauses)


def _kernel(fn: ir.FuncDef, name: str, body: ir.Block, ahead: Sequence[_Quantized],
            contract: tuple[ir.ContractClause, ...]) -> ir.FuncDef:
    """The function with each array quantized ahead replaced, in its
    parameters, by its int8 copy and its scales."""
    replaced = {a.arr.name: a for a in ahead}
    params: list[ir.Decl] = []
    for p in fn.params:
        a = replaced.get(p.name or "")
        if a is None:
            params.append(p)
            continue
        params.append(ir.Decl(a.q, ir.Ptr(ir.Base(("int8_t",), ("const",)))))
        params.append(ir.Decl(a.s, ir.Ptr(ir.Base(("float",), ("const",)))))
    ftype = dataclasses.replace(fn.type, params=tuple(params))
    decl = dataclasses.replace(fn.decl, name=name, type=ftype)
    return ir.FuncDef(decl, body, contract)


@primitive
def int8_groups(program: ir.Program, target: str, arrays: dict[str, list[Union[str, int]]],
                ahead: Optional[list[str]] = None, kernel: Optional[str] = None,
                tolerance: Optional[float] = None) -> Rewrite:
    """Read float arrays through their int8 quantization in groups of G, G
    the trip count of the target loop (one group of the reduction).

    Each array (a parameter the function only reads, given with its shape)
    is quantized along its last dimension by a generated function
    `quantize_q8` (groups of G, scale max|v| / 127, values round(v / scale)),
    and each read becomes the dequantized value. An array listed in
    `ahead` is quantized by the caller: the function becomes a wrapper that
    quantizes it and calls `kernel` (default `<function>_q8`), which takes
    the int8 copy and the scales instead, so a program quantizes its weights
    once and calls the kernel many times; the others are quantized on the
    fly, when the kernel starts.

    Before (`quantize.int8_groups("matvec > for bj > for j", {"W": ["D", "N"],
    "x": ["N"]}, ahead=["W"])`):

        void matvec(int N, int D, const float *W, const float *x, float *y) {
          for (int i = 0; i < D; i++) {
            y[i] = 0.0f;
            for (int bj = 0; bj < N; bj += 32) {
              for (int j = bj; j < bj + 32; j++) {
                y[i] += W[i * N + j] * x[j];

    After (fp lossy; obligations divides: 32 divides N, and inline: the
    wrapper's call meets the kernel's contract, which is the function's with
    W replaced by Wq and Ws):

        void matvec_q8(int N, int D, const int8_t *Wq, const float *Ws, const float *x, float *y) {
          __requires("N >= 1, D >= 1, N % 32 == 0");
          __reads("Wq ~> Matrix2(D, N), Ws ~> Matrix2(D, N / 32), x ~> Matrix1(N)");
          __writes("y ~> Matrix1(D)");
          int8_t *xq = malloc(N * sizeof(int8_t));
          float *xs = malloc(N / 32 * sizeof(float));
          quantize_q8(1, N, x, xq, xs);
          for (int i = 0; i < D; i++) {
            y[i] = 0.0f;
            for (int bj = 0; bj < N; bj += 32) {
              for (int j = bj; j < bj + 32; j++) {
                y[i] += (float)Wq[i * N + j] * Ws[i * (N / 32) + j / 32] * ((float)xq[j] * xs[j / 32]);
          ...
          free(xq);
          free(xs);
        }

        void matvec(int N, int D, const float *W, const float *x, float *y) {
          int8_t *Wq = malloc(D * N * sizeof(int8_t));
          float *Ws = malloc(D * (N / 32) * sizeof(float));
          quantize_q8(D, N, W, Wq, Ws);
          matvec_q8(N, D, Wq, Ws, x, y);
          free(Wq);
          free(Ws);
        }

    Error bound (the step is `lossy`): rounding to the nearest multiple of
    the scale m / 127, m the largest magnitude in the group, moves a value
    by at most half a step: |v - v'| <= e m with e = 1 / 254 (HALF_STEP).
    For a product of k quantized factors, |prod v - prod v'| <=
    ((1 + e)^k - 1) prod m (2e + e^2 ~ 7.9e-3 for k = 2, W and x), and
    for a sum, the sum of these bounds over its terms: the error is relative
    to the magnitude of the terms, not to the possibly cancelling result.
    The declared tolerance is the bound for one group of G terms of
    magnitude at most 1, G ((1 + e)^k - 1) (0.25 for G = 32, k = 2), which
    --exec allows as an absolute error for outputs up to 1 and relative
    above; it measures and reports the max absolute and relative error
    against the step before (the fp32 program). Random data give far less
    (errors of the terms cancel: about 0.5% of the outputs' scale); give
    `tolerance=` to tighten it for a known reduction length.

    Refused: a target that is not a unit-step loop of constant trip count, an
    array that is not a float parameter read only inside that loop, or whose
    accesses do not delinearise for its shape, an `ahead` array not in
    `arrays`, a function that returns a value or returns early (with
    `ahead`: its body moves into the kernel), a kernel name in use, and a
    function without a contract (with `ahead`).
    """
    who = "quantize.int8_groups"
    res, m, group = _group_loop(program, target, who)
    fn_path = m.path[:1]
    fn: ir.FuncDef = get(program, fn_path)
    ahead_names = list(ahead) if isinstance(ahead, (list, tuple)) else [] if ahead is None else [ahead]
    if any(not isinstance(a, str) or a not in (arrays or {}) for a in ahead_names) or isinstance(ahead, str):
        raise TransformError(f"{who}: ahead lists arrays among {sorted(arrays or {})} to quantize in the caller, "
                             f"got {ahead!r}", fn.loc)
    taken = declared_names(fn) | free_vars(fn) | {p.name for p in fn.params if p.name} | \
        {f.name for f in program.functions()} | visible_names(program, m.path)
    found = _quantized_arrays(program, res, fn, fn_path, m.path, arrays, taken, who)
    tol = _tolerance(who, tolerance, group, len(found), fn.loc)
    new = program
    for qa, accesses in found:
        for a in accesses:
            old: ir.Index = get(program, a.path)
            new = replace(new, a.path, qa.dequantized(a.index, old.index, group))
    body: ir.Block = get(new, fn_path).body
    qname = _quantizer_name(program, group)
    on_the_fly = [qa for qa, _ in found if qa.arr.name not in ahead_names]
    early = [qa for qa, _ in found if qa.arr.name in ahead_names]
    if any(isinstance(n, ir.Return) for _, n in walk(fn.body)):
        raise TransformError(f"{who}: {fn.name} has a return statement; the buffers it allocates are freed at its "
                             f"end", fn.loc)
    body = _wrapped(body, on_the_fly, group, qname)
    obligations = [Obligation("divides", f"{group} divides {expr_text(qa.arr.shape[-1])} (the last dimension of "
                              f"'{qa.arr.name}', cut in groups of {group})", m.function, (m.path,),
                              (ir.Const(str(group)), qa.arr.shape[-1]), before=True) for qa, _ in found]
    index = fn_path[0][1]
    assert index is not None
    helpers: tuple[ir.TopLevel, ...] = () if program.function(qname) else (quantizer(qname, group),)
    if early:
        kfn, wrapper, call_at = _split(program, fn, body, early, kernel, taken, group, qname, who)
        site = (("items", index + len(helpers) + 1), ("body", None), ("stmts", call_at))
        obligations.append(Obligation("inline", f"{fn.name} calls {kfn.name} on separate arrays that meet its "
                                      f"contract", m.function, (site, (("items", index + len(helpers)),))))
        fns: tuple[ir.TopLevel, ...] = helpers + (kfn, wrapper)
    elif kernel is not None:
        raise TransformError(f"{who}: kernel= names the function that takes arrays quantized ahead; give ahead=",
                             fn.loc)
    else:
        fns = helpers + (dataclasses.replace(fn, body=body),)
    items = new.items[:index] + fns + new.items[index + 1:]
    return Rewrite(ir.Program(new.includes, items, new.file).with_includes(*INCLUDES), tuple(obligations), "lossy", tol)


def _split(program: ir.Program, fn: ir.FuncDef, body: ir.Block, early: Sequence[_Quantized],
           kernel: Optional[str], taken: set[str], group: int, qname: str,
           who: str) -> tuple[ir.FuncDef, ir.FuncDef, int]:
    """The kernel (the function's `body` on the arrays quantized ahead), the
    function become a wrapper that quantizes them and calls it, and the
    position of that call in the wrapper."""
    if fn.type.ret != ir.Base(("void",)):
        raise TransformError(f"{who}: {fn.name} returns a value; quantizing ahead supports void functions", fn.loc)
    kname = kernel or f"{fn.name}_q8"
    if not isinstance(kname, str) or kname in taken or not kname.isidentifier():
        raise TransformError(f"{who}: the kernel name '{kname}' is not an identifier or is already used", fn.loc)
    kfn = _kernel(fn, kname, body, early, _kernel_contract(program, fn, early, group, who))
    call = ir.ExprStmt(ir.Call(ir.Var(kname), tuple(ir.Var(p.name or "") for p in kfn.params)))
    wrapper = _wrapped(ir.Block((call,)), early, group, qname)
    return kfn, dataclasses.replace(fn, body=wrapper), wrapper.stmts.index(call)


def _tolerance(who: str, tolerance: Optional[float], group: int, factors: int, loc: Optional[ir.Loc]) -> float:
    if tolerance is None:
        return group * ((1 + HALF_STEP) ** factors - 1)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise TransformError(f"{who}: tolerance must be a number in (0, 1), got {tolerance!r}", loc)
    return float(tolerance)


def _quantizer_name(program: ir.Program, group: int) -> str:
    """`quantize_q8` (groups of 32, the Q8_0 format) or `quantize_q8_g<G>`;
    an existing function of that name is reused when it is the generated one."""
    name = "quantize_q8" if group == 32 else f"quantize_q8_g{group}"
    have = program.function(name)
    if have is None or have == quantizer(name, group):
        return name
    raise TransformError(f"quantize.int8_groups: {program.file} already has a function '{name}' that is not the "
                         f"generated quantizer", have.loc)


def _wrapped(body: ir.Block, arrays: Sequence[_Quantized], group: int, qname: str) -> ir.Block:
    """`body` after the allocation and quantization of `arrays`, and before
    freeing them."""
    if not arrays:
        return body
    head: list[ir.Stmt] = []
    tail: list[ir.Stmt] = []
    for qa in arrays:
        head.extend(qa.allocation(group))
        head.append(qa.quantize_call(qname))
        tail.extend(qa.frees())
    return ir.Block(tuple(head) + body.stmts + tuple(tail))


# ----------------------------------------------------------------- group_accumulator


def _factors(e: ir.Expr) -> list[ir.Expr]:
    """The operands of a product `a * b * (c * d)`, flattened."""
    if isinstance(e, ir.Binop) and e.op == "*":
        return _factors(e.left) + _factors(e.right)
    return [e]


def _product(factors: Sequence[ir.Expr]) -> ir.Expr:
    out = factors[0]
    for f in factors[1:]:
        out = ir.Binop("*", out, f)
    return out


def _only_group_index(e: ir.Expr, index: str, group: int) -> bool:
    """`index` occurs in `e` only as `index / group`."""
    g = ir.Const(str(group))
    uses = sum(1 for _, n in walk(e) if n == ir.Var(index))
    return uses == sum(1 for _, n in walk(e) if n == ir.Binop("/", ir.Var(index), g))


@primitive
def group_accumulator(program: ir.Program, target: str) -> Rewrite:
    """Sum a group's products without the factors that are the same for the
    whole group (its scales), and apply them once to the group's sum.

    Before (`quantize.group_accumulator("matvec_q8 > for bj > for j")`):

        for (int j = bj; j < bj + 32; j++) {
          y[i] += (float)Wq[i * N + j] * Ws[i * (N / 32) + j / 32] * ((float)xq[j] * xs[j / 32]);
        }

    After (fp reassoc; obligations equals: each scale's index takes the same
    value for every j of the group, e.g. j / 32 == bj / 32, and unaliased: no
    other access of the loop touches y[i]):

        float acc = 0.0f;
        for (int j = bj; j < bj + 32; j++) {
          acc += (float)Wq[i * N + j] * (float)xq[j];
        }
        y[i] += acc * (Ws[i * (N / 32) + bj / 32] * xs[bj / 32]);

    The loop body must be one statement `cell += f1 * f2 * ...`; a factor
    is a group scale when it is an array access whose index uses the loop
    index only as `j / G` (G the trip count) and reads nothing the loop
    writes; the other factors are summed. Factoring the scales out of the
    sum reassociates float operations (`fp` reassoc). Refused: another body,
    a cell that uses the loop index or is declared in the loop, no scale or
    no summed factor, and a loop with pragmas.
    """
    who = "quantize.group_accumulator"
    res, m, group = _group_loop(program, target, who)
    loop: ir.For = m.node
    where = f"for {loop.index} (line {m.line})"
    body = loop.body.stmts
    if len(body) != 1 or not (isinstance(body[0], ir.ExprStmt) and isinstance(body[0].expr, ir.Assign)
                              and body[0].expr.op == "+="):
        raise TransformError(f"{who}: the body of {where} must be one statement 'cell += a * b * ...'", loop.loc)
    update: ir.Assign = body[0].expr
    cell = update.lhs
    if loop.index in free_vars(cell) or free_vars(cell) & declared_names(loop.body) or has_side_effects(cell):
        raise TransformError(f"{who}: '{expr_text(cell)}' is not the same cell at every iteration of {where}",
                             loop.loc)
    written = writes_of(loop.body)
    scales: list[ir.Index] = []
    summed: list[ir.Expr] = []
    for f in _factors(update.rhs):
        if isinstance(f, ir.Index) and _only_group_index(f, loop.index, group) \
                and not free_vars(f) & written and not has_side_effects(f):
            scales.append(f)
        else:
            summed.append(f)
    if not scales or not summed:
        what = "no factor is the same for the whole group (an access indexed by j / G)" if not scales else \
            "every factor is a group scale: nothing is left to sum"
        raise TransformError(f"{who}: in '{expr_text(update)}', {what}", loop.loc)
    fn = get(program, m.path[:1])
    tds = typedefs_of(program)
    t = unqualified(type_of(cell, env_at(program, m.path + (("body", None), ("stmts", 0))), tds))
    acc = fresh_name(declared_names(fn) | free_vars(fn) | visible_names(program, m.path), "acc")
    first = {loop.index: loop.start}
    scale = _product([subst(f, first) for f in scales])
    zero = ir.Const("0.0f", "float") if t == FLOAT else ir.Const("0")
    new_loop = dataclasses.replace(loop, body=ir.Block((ir.ExprStmt(ir.Assign("+=", ir.Var(acc),
                                                                                _product(summed))),)))
    stmts = (ir.DeclStmt(ir.Decl(acc, t, zero)), new_loop,
             ir.ExprStmt(ir.Assign("+=", cell, ir.Binop("*", ir.Var(acc), scale))))
    block, k = m.path[:-1], m.path[-1][1]
    assert k is not None
    parent: ir.Block = get(program, block)
    new = replace(program, block, dataclasses.replace(parent, stmts=parent.stmts[:k] + stmts + parent.stmts[k + 1:]))
    loop_path = block + (("stmts", k + 1),)
    inside = loop_path + (("body", None), ("stmts", 0))
    obligations = [Obligation("equals", f"'{expr_text(f.index)}' is '{expr_text(subst(f.index, first))}' at every "
                              f"iteration of {where}", m.function, (inside,), (f.index, subst(f.index, first)),
                              before=False)
                   for f in scales if loop.index in free_vars(f)]
    obligations.append(Obligation("unaliased", f"no access of {where} other than the sum of its group, nor a call "
                                  f"in it, touches '{expr_text(cell)}'", m.function, (loop_path,), (cell,)))
    return Rewrite(new, tuple(obligations), "reassoc")


# ----------------------------------------------------------------- integer_product


def _integer_operand(e: ir.Expr, env: Any, tds: Any) -> Optional[ir.Expr]:
    """`x` of `(float)x` when x is an integer of at most 8 bits."""
    if not (isinstance(e, ir.Cast) and unqualified(e.type) == FLOAT):
        return None
    span = integer_range(unqualified(type_of(e.arg, env, tds)), tds)
    return e.arg if span is not None and -128 <= span[0] and span[1] <= 255 else None


def _int8_product(body: tuple[ir.Stmt, ...], acc: str, env: Any, tds: Any) -> Optional[tuple[ir.Expr, ir.Expr]]:
    """a and b of a body `acc += (float)a * (float)b;` (8-bit integers)."""
    if not (len(body) == 1 and isinstance(body[0], ir.ExprStmt) and isinstance(body[0].expr, ir.Assign)
            and body[0].expr.op == "+=" and body[0].expr.lhs == ir.Var(acc)
            and isinstance(body[0].expr.rhs, ir.Binop) and body[0].expr.rhs.op == "*"):
        return None
    a = _integer_operand(body[0].expr.rhs.left, env, tds)
    b = _integer_operand(body[0].expr.rhs.right, env, tds)
    return (a, b) if a is not None and b is not None else None


def _is_zero(e: Optional[ir.Expr]) -> bool:
    return isinstance(e, ir.Const) and e.kind in ("int", "float") and float(e.text.rstrip("fFlLuU") or "1") == 0


@primitive
def integer_product(program: ir.Program, target: str) -> Rewrite:
    """Sum a group of products of 8-bit integers in int32 instead of float.

    Before (`quantize.integer_product("matvec_q8 > for bj > for j")`):

        float acc = 0.0f;
        for (int j = bj; j < bj + 32; j++) {
          acc += (float)Wq[i * N + j] * (float)xq[j];
        }
        y[i] += acc * (Ws[i * (N / 32) + bj / 32] * xs[bj / 32]);

    After (exact):

        int32_t acc = 0;
        for (int j = bj; j < bj + 32; j++) {
          acc += (int32_t)Wq[i * N + j] * (int32_t)xq[j];
        }
        y[i] += (float)acc * (Ws[i * (N / 32) + bj / 32] * xs[bj / 32]);

    Exact by construction, which the step checks structurally: each
    product of two 8-bit integers is at most 2^16 in magnitude and the group
    has G terms, so with G * 2^16 <= 2^24 (G <= 256) every partial sum is an
    integer that float represents exactly: the float and the int32 sums are
    the same number. The accumulator must be a float local declared `= 0`
    right before the loop, summed only there (`acc += (float)a * (float)b`
    with a and b 8-bit integers) and read after it. Refused otherwise, and
    for a group over 256 terms.
    """
    who = "quantize.integer_product"
    res, m, group = _group_loop(program, target, who)
    loop: ir.For = m.node
    where = f"for {loop.index} (line {m.line})"
    if group * 2 ** 16 > EXACT_SUM:
        raise TransformError(f"{who}: {where} sums {group} products; above {EXACT_SUM // 2 ** 16} a float sum of "
                             f"8-bit products may round, so int32 would change the result", loop.loc)
    block, k = m.path[:-1], m.path[-1][1]
    assert k is not None
    parent = get(program, block)
    prev = parent.stmts[k - 1] if isinstance(parent, ir.Block) and k > 0 else None
    if not (isinstance(prev, ir.DeclStmt) and unqualified(prev.decl.type) == FLOAT and _is_zero(prev.decl.init)):
        raise TransformError(f"{who}: {where} must follow the declaration of its float accumulator, "
                             f"'float acc = 0.0f;' (quantize.group_accumulator makes it)", loop.loc)
    acc = prev.decl.name or ""
    ops = _int8_product(loop.body.stmts, acc, env_at(program, m.path + (("body", None), ("stmts", 0))),
                        typedefs_of(program))
    if ops is None:
        raise TransformError(f"{who}: the body of {where} must be '{acc} += (float)a * (float)b;' with a and b "
                             f"8-bit integers", loop.loc)
    after = parent.stmts[k + 1:]
    uses = sum(1 for _, n in walk(loop.body) if n == ir.Var(acc))
    if uses != 1 or any(acc in writes_of(s) for s in after):
        raise TransformError(f"{who}: '{acc}' is used in {where} other than by its sum, or assigned after it",
                             loop.loc)
    product = ir.Binop("*", ir.Cast(INT32, ops[0]), ir.Cast(INT32, ops[1]))
    new_loop = dataclasses.replace(loop, body=ir.Block((ir.ExprStmt(ir.Assign("+=", ir.Var(acc), product)),)))
    as_float = tuple(subst(s, {acc: ir.Cast(FLOAT, ir.Var(acc))}) for s in after)
    decl = ir.DeclStmt(dataclasses.replace(prev.decl, type=INT32, init=ir.Const("0")))
    stmts = parent.stmts[:k - 1] + (decl, new_loop) + as_float
    new = replace(program, block, dataclasses.replace(parent, stmts=stmts))
    return Rewrite(new.with_includes("#include <stdint.h>"))
