"""Data-layout transformations of arrays: local_buffer, drop_overwritten, tile_dim, reorder_dims,
set_precision.

They work on two kinds of arrays:

- C arrays declared in the function, `float Bp[64][N];`: the shape is the
  type and every use is a full access `Bp[k][j]`;
- flattened arrays: a pointer (a parameter, or `float *s = malloc(...)`) or a
  1-D array, with a shape the caller states as C expressions
  (`shape=["K", "N"]`). Every access must *delinearise*: the terms of its
  index (a sum of products) that have the last dimension as a factor form
  the outer part, the others the last index, recursively: `k * N + j` is
  (k, j) for the shape (K, N); `(h * S + i) * D + d` and
  `h * S * D + i * D + d` are (h, i, d) for (H, S, D). The split is an
  identity of integers; it names the element the access touches only when
  each index lies within its dimension (0 <= ik < dk) and the array holds
  d0 * ... * d(n-1) elements, which the step declares as a `delinearize`
  obligation. An access whose index has no term carrying the dimension
  (`B[j]` for the shape (K, N)) is refused.

Every transformation refuses an array that escapes where it works: used
other than through full accesses (passed to a call other than `free`, its
address taken, copied to another pointer, indexed with fewer indices than
its dimensions), or an access whose index reads the array itself or has a
side effect. Layout changes (tile_dim, reorder_dims, set_precision) only
apply to arrays the function allocates (a local array, or a local pointer
initialised by malloc/calloc): the layout of a parameter belongs to the
caller. Work on a parameter through a local copy made by local_buffer.
The one exception is set_precision of a float pointer parameter to
otp_bf16 (`f > param x`): the type of the array the callers pass changes,
and the step says so (see set_precision).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from optitrust_py import ir
from optitrust_py.errors import SpecError, TransformError
from optitrust_py.intrinsics import CONVERSIONS
from optitrust_py.layout import delinearize, linearize, signed_sum
from optitrust_py.names import INCDEC, declared_names, free_vars, fresh_name, has_side_effects, is_identifier, writes_of
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, type_name
from optitrust_py.session import Rewrite, primitive
from optitrust_py.spec import parse_formula
from optitrust_py.target import Resolver, parse as parse_target
from optitrust_py.tree import Path, get, map_children, replace, splice, walk
from optitrust_py.typeof import env_at, param_type, type_of, typedefs_of, unqualified
from transformations.loop import ONE, _const_offset, _in_block, _refuse_early_exit, _where

Shape = tuple[ir.Expr, ...]
ZERO = ir.Const("0")
_ALLOCATORS = ("malloc", "calloc")
_LOOPS = (ir.For, ir.GenericFor, ir.While, ir.DoWhile)


# ----------------------------------------------------------------- arrays and their accesses


@dataclass(frozen=True)
class _Array:
    """An array as the family sees it: its declaration, shape and element
    type; `flat` when its accesses are one index to delinearise."""

    name: str
    function: str
    decl: ir.Decl
    decl_path: Optional[Path]  # None for a parameter
    shape: Shape
    elem: ir.CType
    flat: bool

    @property
    def rank(self) -> int:
        return 1 if self.flat else len(self.shape)

    def shape_text(self) -> str:
        return "(" + ", ".join(expr_text(d) for d in self.shape) + ")"


@dataclass(frozen=True)
class _Access:
    """A full access: where it is, its per-dimension indices, and whether it
    is read, written (`=`) or updated (`+=`, `++`, ...)."""

    path: Path
    index: tuple[ir.Expr, ...]
    role: str


def _exprs(who: str, texts: Sequence[Union[str, int]], what: str, loc: Optional[ir.Loc]) -> Shape:
    out = []
    for t in texts:
        if isinstance(t, bool) or not isinstance(t, (str, int)):
            raise TransformError(f"{who}: each {what} must be a C expression or an integer, got {t!r}", loc)
        try:
            out.append(parse_formula(str(t)))
        except SpecError as e:
            raise TransformError(f"{who}: cannot read the {what} {t!r}: {e.message}", loc) from None
    return tuple(out)


def _find_array(program: ir.Program, fn_path: Path, name: str, shape: Optional[Sequence[Union[str, int]]],
                who: str, need_shape: bool = True) -> _Array:
    """The array `name` of a function; a pointer without a given shape is
    refused unless `need_shape` is false (then its shape is empty: accesses
    are taken as they are, one index each)."""
    fn: ir.FuncDef = get(program, fn_path)
    found: list[tuple[Optional[Path], ir.Decl]] = [(None, p) for p in fn.params if p.name == name]
    found += [(p, n.decl) for p, n in walk(fn.body, fn_path + (("body", None),))
              if isinstance(n, ir.DeclStmt) and n.decl.name == name]
    loops = [n for _, n in walk(fn.body) if isinstance(n, ir.For) and n.index == name]
    if not found:
        raise TransformError(f"{who}: no array named '{name}' in {fn.name}", fn.loc)
    if len(found) + len(loops) > 1:
        raise TransformError(f"{who}: '{name}' is declared {len(found) + len(loops)} times in {fn.name}; "
                             f"rename all but one first", fn.loc)
    path, decl = found[0]
    t = param_type(decl.type) if path is None else decl.type
    sizes: list[Optional[ir.Expr]] = []
    while isinstance(t, ir.Array):
        sizes.append(t.size)
        t = t.of
    loc = decl.loc or fn.loc
    if sizes and shape is None:
        if any(s is None for s in sizes):
            raise TransformError(f"{who}: '{name}' is an array of unknown size; give its shape", loc)
        return _Array(name, fn.name, decl, path, tuple(sizes), t, flat=False)  # type: ignore[arg-type]
    if len(sizes) > 1:
        raise TransformError(f"{who}: '{name}' is a {len(sizes)}-dimensional C array: its shape is its type, "
                             f"do not give shape=", loc)
    if not sizes:
        if not isinstance(t, ir.Ptr):
            raise TransformError(f"{who}: '{name}' is not an array nor a pointer", loc)
        t = t.to
    if shape is None and not need_shape:
        return _Array(name, fn.name, decl, path, (), t, flat=True)
    if shape is None:
        raise TransformError(f"{who}: '{name}' is a pointer: give the shape it is used with, e.g. "
                             f"shape=[\"K\", \"N\"]", loc)
    if isinstance(shape, str) or not isinstance(shape, (list, tuple)) or not shape:
        raise TransformError(f"{who}: shape must be a non-empty list of dimensions, got {shape!r}", loc)
    return _Array(name, fn.name, decl, path, _exprs(who, shape, "dimension", loc), t, flat=True)


def _access_expr(arr: _Array, index: Sequence[ir.Expr]) -> ir.Expr:
    if arr.flat:
        return ir.Index(ir.Var(arr.name), linearize(index, arr.shape))
    out: ir.Expr = ir.Var(arr.name)
    for i in index:
        out = ir.Index(out, i)
    return out


def _chain(e: ir.Index) -> tuple[tuple[ir.Expr, ...], ir.Expr]:
    """`a[i][j]` as ((i, j), a)."""
    index: list[ir.Expr] = []
    base: ir.Expr = e
    while isinstance(base, ir.Index):
        index.append(base.index)
        base = base.base
    return tuple(reversed(index)), base


def _role(program: ir.Program, path: Path) -> str:
    parent = get(program, path[:-1])
    if isinstance(parent, ir.Assign) and path[-1] == ("lhs", None):
        return "write" if parent.op == "=" else "update"
    if isinstance(parent, ir.Unop) and parent.op in INCDEC:
        return "update"
    return "read"


def _misuse(program: ir.Program, path: Path, arr: _Array) -> str:
    parent = get(program, path[:-1])
    if isinstance(parent, ir.Call):
        return "is passed to a call"
    if isinstance(parent, ir.Unop) and parent.op == "&":
        return "has its address taken"
    if isinstance(parent, ir.Index) and path[-1] == ("base", None):
        return f"is indexed with fewer than its {arr.rank} dimensions"
    return "is used as a pointer value (copied, compared or offset)"


def _is_free(program: ir.Program, path: Path) -> bool:
    parent = get(program, path[:-1])
    return isinstance(parent, ir.Call) and parent.name == "free" and len(parent.args) == 1


def _accesses(program: ir.Program, res: Resolver, arr: _Array, root: Path, who: str) -> list[_Access]:
    """Every access to `arr` under `root`; refuses a use that is not one and
    a flattened index that does not delinearise."""
    me = ir.Var(arr.name)
    nodes = list(walk(get(program, root), root))
    out: list[_Access] = []
    direct: set[Path] = set()
    for path, n in nodes:
        if not isinstance(n, ir.Index):
            continue
        index, base = _chain(n)
        if base != me or len(index) != arr.rank:
            continue
        text, line = expr_text(n), res.line(path)
        direct.add(path + (("base", None),) * arr.rank)
        parent = get(program, path[:-1])
        if isinstance(parent, ir.Unop) and parent.op in ("&", "sizeof"):
            raise TransformError(f"{who}: '{arr.name}' {'has its address taken' if parent.op == '&' else 'is measured'}"
                                 f" in '{expr_text(parent)}' (line {line})", n.loc)
        for i in index:
            if arr.name in free_vars(i) or has_side_effects(i):
                why = "reads the array itself" if arr.name in free_vars(i) else "has a side effect"
                raise TransformError(f"{who}: the index of '{text}' (line {line}) {why}", n.loc)
        if arr.flat:
            split = delinearize(index[0], arr.shape)
            if split is None:
                raise TransformError(f"{who}: '{text}' (line {line}) does not delinearise for the shape "
                                     f"{arr.shape_text()}: no term of its index is a multiple of "
                                     f"'{expr_text(arr.shape[-1])}'", n.loc)
            index = split
        out.append(_Access(path, index, _role(program, path)))
    for path, n in nodes:
        if n == me and path not in direct and not _is_free(program, path):
            where = get(program, path[:-1])
            raise TransformError(f"{who}: '{arr.name}' {_misuse(program, path, arr)} in "
                                 f"'{expr_text(where) if isinstance(where, ir.EXPR_TYPES) else arr.name}' "
                                 f"(line {res.line(path)})", getattr(where, "loc", None))
    return out


def _rewrite(program: ir.Program, accesses: Sequence[_Access], make: Callable[[_Access], ir.Expr]) -> ir.Program:
    """Replace each access by `make(access)` (accesses never nest: an index
    reading the array is refused)."""
    for a in accesses:
        program = replace(program, a.path, dataclasses.replace(make(a), loc=get(program, a.path).loc))
    return program


def _delinearize_obligation(arr: _Array, accesses: Sequence[_Access]) -> tuple[Obligation, ...]:
    if not arr.flat or not accesses:
        return ()
    distinct = list(dict.fromkeys(f"({', '.join(expr_text(i) for i in a.index)})" for a in accesses))
    shown = ", ".join(distinct[:4])
    more = f" and {len(distinct) - 4} more" if len(distinct) > 4 else ""
    return (Obligation("delinearize", f"'{arr.name}' holds the shape {arr.shape_text()} and each index of its "
                       f"accesses {shown}{more} lies within its dimension", arr.function,
                       tuple(a.path for a in accesses), arr.shape, before=True),)


# ----------------------------------------------------------------- linear index arithmetic


@dataclass(frozen=True)
class _Lin:
    """An integer expression as a sum of coefficient * atom plus a constant;
    the atoms are the parts that are not linear (`N`, `N / 16`, `i * j`)."""

    terms: tuple[tuple[ir.Expr, int], ...] = ()
    const: int = 0

    def plus(self, other: "_Lin", k: int = 1) -> "_Lin":
        terms = dict(self.terms)
        for atom, c in other.terms:
            terms[atom] = terms.get(atom, 0) + k * c
        return _Lin(tuple((a, c) for a, c in terms.items() if c), self.const + k * other.const)

    def expr(self) -> ir.Expr:
        parts = [(1 if c > 0 else -1, a if abs(c) == 1 else ir.Binop("*", ir.Const(str(abs(c))), a))
                 for a, c in self.terms]
        if self.const:
            parts.append((1 if self.const > 0 else -1, ir.Const(str(abs(self.const)))))
        return signed_sum(parts)


def _lin(e: ir.Expr) -> _Lin:
    rest, k = _const_offset(e) if isinstance(e, ir.Const) else (e, 0)
    if rest is None:
        return _Lin((), k)
    if isinstance(e, ir.Binop) and e.op in ("+", "-"):
        return _lin(e.left).plus(_lin(e.right), 1 if e.op == "+" else -1)
    if isinstance(e, ir.Unop) and e.op == "-":
        return _Lin().plus(_lin(e.arg), -1)
    if isinstance(e, ir.Binop) and e.op == "*":
        left, right = _lin(e.left), _lin(e.right)
        if not left.terms:
            return _Lin().plus(right, left.const)
        if not right.terms:
            return _Lin().plus(left, right.const)
    return _Lin(((e, 1),), 0)


# ----------------------------------------------------------------- local_buffer


def _loops_between(program: ir.Program, top: Path, path: Path) -> dict[str, ir.For]:
    """The canonical loops from `top` (included) down to `path`, by index."""
    out: dict[str, ir.For] = {}
    for k in range(len(top), len(path)):
        n = get(program, path[:k])
        if isinstance(n, ir.For) and path[k] == ("body", None):
            out[n.index] = n
    return out


def _bounds(e: _Lin, loops: dict[str, ir.For], varying: set[str]) -> Optional[tuple[_Lin, _Lin]]:
    """Inclusive lower and upper bounds of `e` over the iterations of
    `loops`, in terms of names that do not vary inside them; None when `e`
    is not affine in unit-step loop indices with such bounds."""
    lo = hi = _Lin((), e.const)
    for atom, c in e.terms:
        if isinstance(atom, ir.Var) and atom.name in loops:
            loop = loops[atom.name]
            start, stop = _bounds(_lin(loop.start), loops, varying), _bounds(_lin(loop.stop), loops, varying)
            if loop.step != ONE or start is None or stop is None:
                return None
            low, high = start[0], stop[1].plus(_Lin((), -1))
        elif free_vars(atom) & varying or has_side_effects(atom):
            return None
        else:
            low = high = _Lin(((atom, 1),))
        lo, hi = (lo.plus(low, c), hi.plus(high, c)) if c > 0 else (lo.plus(high, c), hi.plus(low, c))
    return lo, hi


def _widen(cur: Optional[_Lin], new: _Lin, lower: bool) -> Optional[_Lin]:
    """The lesser (or greater) of two bounds that differ by a constant;
    None when they do not."""
    if cur is None:
        return new
    diff = new.plus(cur, -1)
    if diff.terms:
        return None
    return new if (diff.const < 0) == lower else cur


def _infer_region(program: ir.Program, res: Resolver, top: Path, arr: _Array, accesses: Sequence[_Access],
                  varying: set[str], who: str, where: str) -> tuple[list[_Lin], list[_Lin]]:
    lo: list[Optional[_Lin]] = [None] * len(arr.shape)
    hi: list[Optional[_Lin]] = [None] * len(arr.shape)
    for a in accesses:
        loops = _loops_between(program, top, a.path)
        for d, i in enumerate(a.index):
            b = _bounds(_lin(i), loops, varying)
            text = f"'{expr_text(get(program, a.path))}' (line {res.line(a.path)})"
            if b is None:
                raise TransformError(f"{who}: cannot infer the region of '{arr.name}' that {where} touches: index "
                                     f"{d} of {text} is not affine in loop indices with bounds invariant in the "
                                     f"loop; give region=[\"origin:size\", ...]")
            lo[d], hi[d] = _widen(lo[d], b[0], True), _widen(hi[d], b[1], False)
            if lo[d] is None or hi[d] is None:
                raise TransformError(f"{who}: cannot infer the region of '{arr.name}' that {where} touches: the "
                                     f"range of index {d} of {text} is not comparable with that of the other "
                                     f"accesses; give region=[\"origin:size\", ...]")
    origins = [x for x in lo if x is not None]
    return origins, [h.plus(o, -1).plus(_Lin((), 1)) for h, o in zip(hi, origins) if h is not None]


def _given_region(region: Sequence[str], arr: _Array, varying: set[str], who: str,
                  loc: Optional[ir.Loc]) -> tuple[list[_Lin], list[_Lin]]:
    if isinstance(region, str) or not isinstance(region, (list, tuple)) or len(region) != len(arr.shape):
        raise TransformError(f"{who}: region must be a list of {len(arr.shape)} \"origin:size\" strings, one "
                             f"per dimension of '{arr.name}' {arr.shape_text()}, got {region!r}", loc)
    origins, sizes = [], []
    for r in region:
        if not isinstance(r, str) or ":" not in r:
            raise TransformError(f"{who}: each region entry is \"origin:size\" (e.g. \"bk:64\"), got {r!r}", loc)
        origin, size = _exprs(who, r.rsplit(":", 1), "region bound", loc)
        for e in (origin, size):
            if free_vars(e) & varying or has_side_effects(e):
                raise TransformError(f"{who}: the region bound '{expr_text(e)}' varies inside the loop", loc)
        origins.append(_lin(origin))
        sizes.append(_lin(size))
    return origins, sizes


def _nest(indices: Sequence[str], sizes: Sequence[ir.Expr], body: ir.Stmt) -> ir.Stmt:
    for i, n in reversed(list(zip(indices, sizes))):
        body = ir.For(i, ZERO, n, ir.Block((body,)))
    return body


def _md_type(elem: ir.CType, sizes: Sequence[ir.Expr]) -> ir.CType:
    for n in reversed(sizes):
        elem = ir.Array(elem, n)
    return elem


def _contract_naming(program: ir.Program, root: Path, name: str) -> Optional[Path]:
    """A loop under `root` whose contract mentions `name`."""
    for path, n in walk(get(program, root), root):
        if isinstance(n, ir.For) and any(name in re.findall(r"[A-Za-z_]\w*", c.text) for c in n.contract):
            return path
    return None


@primitive
def local_buffer(program: ir.Program, target: str, array: str, name: Optional[str] = None,
                 shape: Optional[list[Union[str, int]]] = None, region: Optional[list[str]] = None,
                 init: bool = False, index: str = "i") -> Rewrite:
    """Make a loop work on a local copy of the tile of an array it touches.

    The packing step of GotoBLAS matmul, or keeping a tile of Q in a small
    local array in attention: the loop's accesses go to a contiguous buffer
    declared right before it, filled before the loop (when the loop reads
    the array) and copied back after it (when it writes it).

    Before (`matrix.local_buffer("matmul > for bk > for i", "B", shape=["K", "N"])`,
    after tiling k by 64 and moving `for bk` outermost):

        for (int bk = 0; bk < K; bk += 64) {
          for (int i = 0; i < M; i++) {
            for (int k = bk; k < bk + 64; k++) {
              for (int j = 0; j < N; j++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }
            }
          }
        }

    After (obligations in_region, no_alias, delinearize):

        for (int bk = 0; bk < K; bk += 64) {
          float B_local[64][N];
          for (int i0 = 0; i0 < 64; i0++) {
            for (int i1 = 0; i1 < N; i1++) {
              B_local[i0][i1] = B[(bk + i0) * N + i1];
            }
          }
          for (int i = 0; i < M; i++) {
            for (int k = bk; k < bk + 64; k++) {
              for (int j = 0; j < N; j++) {
                C[i * N + j] += A[i * K + k] * B_local[k - bk][j];
              }
            }
          }
        }

    The region is, per dimension of the array, an origin and a size. By
    default it is inferred: each index of each access must be affine in the
    indices of unit-step loops inside the target (the target included), with
    bounds that do not vary in the loop; its range over those loops gives
    the dimension's extent (the union over the accesses, when their bounds
    differ by constants). Otherwise give `region=["bk:64", "0:N"]`: one
    "origin:size" per dimension, C expressions that do not vary in the loop.
    Dimensions of size 1 are dropped from the buffer. The buffer, named
    `name` (default `<array>_local`), has the array's element type without
    qualifiers; a size that is not a constant makes it a variable-length
    array. Copying moves values unchanged, so the step is exact. The copy
    loops' indices are `<index>0`, `<index>1`, ... (`i0`, `i1` by default;
    a name in use gets a suffix), so that later steps can name them.

    With `init`, the statement just before the loop must be a nest of
    loops storing one constant into the array (the zeroing before a sum,
    `for (r...) out[...] = 0.0f;`): the buffer starts at that constant
    instead of being copied in, and the nest goes, since the copy back
    writes every cell of the region (obligations in_region and covers on the
    nest: it stores into the region and into all of it). Refused: no such
    nest right before the loop.

    Obligations: `in_region` (every access of the loop lies in the region,
    whose sizes are at least 1 and which lies within the array), `no_alias`
    (inside the loop no other name reaches the region's cells), `covers`
    when the loop writes the array without reading it (no copy-in: it must
    write the whole region), and `delinearize` for a flattened array.
    Refused: a loop that is not a statement of a block or leaves early
    (return, goto, break), no access to the array in the loop, escapes (see
    the module), a region that cannot be inferred or varies in the loop, a
    region of one element (use variable.bind), a loop whose contract names
    the array, and a name already in use.
    """
    who = "matrix.local_buffer"
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    loop: ir.For = m.node
    where = _where(res, m.path, loop)
    arr = _find_array(program, m.path[:1], array, shape, who)
    accesses = _accesses(program, res, arr, m.path, who)
    if not accesses:
        raise TransformError(f"{who}: {where} does not access '{array}'", loop.loc)
    block, k = _in_block(who, res, m.path, loop)
    _refuse_early_exit(who, where, loop.body.stmts, loop)
    hit = _contract_naming(program, m.path, array)
    if hit is not None:
        raise TransformError(f"{who}: the loop contract of {_where(res, hit, get(program, hit))} names '{array}', "
                             f"whose accesses would move to the buffer; remove it", loop.loc)
    fn = get(program, m.path[:1])
    taken = declared_names(fn) | free_vars(fn)
    name = f"{array}_local" if name is None else name
    if not is_identifier(name) or name in taken:
        why = "is not a valid C name" if not is_identifier(name) else f"is already used in {m.function}"
        raise TransformError(f"{who}: the buffer name '{name}' {why}", loop.loc)
    varying = declared_names(loop) | writes_of(loop)
    if region is None:
        origins, sizes = _infer_region(program, res, m.path, arr, accesses, varying, who, where)
    else:
        origins, sizes = _given_region(region, arr, varying, who, loop.loc)
    for s in sizes:
        if not s.terms and s.const < 1:
            raise TransformError(f"{who}: the region of '{array}' has a dimension of size {s.const}", loop.loc)
    keep = [d for d, s in enumerate(sizes) if s != _Lin((), 1)]
    if not keep:
        raise TransformError(f"{who}: {where} touches a single element of '{array}'; bind it to a variable "
                             f"instead (variable.bind)", loop.loc)
    buf_shape = tuple(sizes[d].expr() for d in keep)
    decl = ir.Decl(name, _md_type(unqualified(arr.elem), buf_shape))
    buf = _Array(name, m.function, decl, None, buf_shape, unqualified(arr.elem), flat=False)
    new = _rewrite(program, accesses, lambda a: _access_expr(
        buf, [_lin(a.index[d]).plus(origins[d], -1).expr() for d in keep]))
    indices: list[str] = []
    if not is_identifier(f"{index}0"):
        raise TransformError(f"{who}: the copy loops' index prefix '{index}' does not make C names", loop.loc)
    for d in keep:
        indices.append(fresh_name(taken | {name} | set(indices), f"{index}{len(indices)}"))
    at = {d: ir.Var(i) for d, i in zip(keep, indices)}
    inside = _access_expr(buf, list(at.values()))
    outside = _access_expr(arr, [o.plus(_lin(at[d])).expr() if d in at else o.expr()
                                 for d, o in enumerate(origins)])
    roles = {a.role for a in accesses}
    start = _initial_value(who, program, res, arr, block, k, where, loop.loc) if init else None
    copy_in = roles != {"write"} and start is None
    stmts: list[ir.Stmt] = [ir.DeclStmt(decl)]
    if copy_in or start is not None:
        first_value = start if start is not None else outside
        stmts.append(_nest(indices, buf_shape, ir.ExprStmt(ir.Assign("=", inside, first_value))))
    stmts.append(get(new, m.path))
    if roles != {"read"} or start is not None:
        stmts.append(_nest(indices, buf_shape, ir.ExprStmt(ir.Assign("=", outside, inside))))
    new = splice(new, m.path, tuple(stmts))
    if start is not None:
        new = splice(new, block + (("stmts", k - 1),), ())
    shown = " x ".join(f"[{expr_text(o.expr())}, {expr_text(o.plus(s).expr())})" for o, s in zip(origins, sizes))
    region_exprs = tuple(o.expr() for o in origins) + tuple(s.expr() for s in sizes) + tuple(arr.shape)
    obligations = [
        Obligation("in_region", f"every access of {where} to '{array}' lies in {shown}, and that region (sizes "
                   f">= 1) lies within '{array}' {arr.shape_text()}", m.function, (m.path,),
                   tuple(o.expr() for o in origins) + tuple(s.expr() for s in sizes) + tuple(arr.shape),
                   before=True, names=(array,)),
        Obligation("no_alias", f"inside {where}, no name other than '{array}' reaches the cells of {shown}",
                   m.function, (m.path,), before=True, names=(array,)),
    ]
    if not copy_in and start is None:
        obligations.append(Obligation("covers", f"{where} writes every cell of {shown} before '{name}' is copied "
                                      f"back to '{array}'", m.function, (m.path,), region_exprs, before=True,
                                      names=(array,)))
    if start is not None:
        first = block + (("stmts", k - 1),)
        obligations += [
            Obligation("in_region", f"the stores of {expr_text(start)} before {where} lie in {shown}", m.function,
                       (first,), region_exprs, before=True, names=(array,)),
            Obligation("covers", f"the stores of {expr_text(start)} before {where} reach every cell of {shown}, "
                       f"which '{name}' then starts with", m.function, (first,), region_exprs, before=True,
                       names=(array,))]
    return Rewrite(new, tuple(obligations) + _delinearize_obligation(arr, accesses))


def _initial_value(who: str, program: ir.Program, res: Resolver, arr: _Array, block: Path, k: int, where: str,
                   loc: Optional[ir.Loc]) -> ir.Expr:
    """The constant that the nest of loops just before the loop stores into
    `arr`, its only effect (local_buffer's `init`)."""
    stmt = get(program, block).stmts[k - 1] if k > 0 else None
    inner = stmt
    while isinstance(inner, ir.For) and len(inner.body.stmts) == 1 and not inner.pragmas:
        inner = inner.body.stmts[0]
    store = inner.expr if isinstance(inner, ir.ExprStmt) else None
    if not (isinstance(stmt, ir.For) and isinstance(store, ir.Assign) and store.op == "="
            and isinstance(store.lhs, ir.Index) and _chain(store.lhs)[1] == ir.Var(arr.name)
            and not free_vars(store.rhs) and not has_side_effects(store.rhs)):
        raise TransformError(f"{who}: with init, the statement before {where} must be a nest of loops storing a "
                             f"constant into '{arr.name}'", loc)
    _accesses(program, res, arr, block + (("stmts", k - 1),), who)
    return store.rhs


def _stored_array(who: str, nest: ir.For, where: str) -> str:
    """The array A of a nest of loops around one store `A[...] = e;` (e and
    the loops' bounds free of side effects: removing the nest drops nothing else)."""
    node: ir.Stmt = nest
    bounds: list[ir.Expr] = []
    while isinstance(node, ir.For) and len(node.body.stmts) == 1:
        bounds += [node.start, node.stop, node.step]
        node = node.body.stmts[0]
    store = node.expr if isinstance(node, ir.ExprStmt) else None
    if not (isinstance(store, ir.Assign) and store.op == "=" and isinstance(store.lhs, ir.Index)
            and isinstance(_chain(store.lhs)[1], ir.Var)) or any(map(has_side_effects, bounds + [store.rhs])):
        raise TransformError(f"{who}: {where} is not a nest of loops around one store `A[...] = e;` with no "
                             f"side effect in e or in the loops' bounds", nest.loc)
    return _chain(store.lhs)[1].name  # type: ignore[union-attr]


@primitive
def drop_overwritten(program: ir.Program, target: str) -> Rewrite:
    """Remove a nest of loops that only stores into a local array when the
    next statement that names the array stores into every cell of it
    before reading any: no value the nest stores is ever read. The copy
    into a tile that the tile's first user writes whole is such a nest.

    Before (`matrix.drop_overwritten("gqa_decode > for g#2 > for bt > for i1#1")`,
    the copy in of the chunk's scores, which gpu.stage made):

        float sc[4][64];
        for (int i1 = 0; i1 < 64; i1++) {
          for (int i0 = 0; i0 < 4; i0++) {
            sc[i0][i1] = scores[(4 * g + i0) * (pos + 1) + (64 * bt + i1)];
          }
        }
        ... (nothing names sc) ...
        for (int t = bt * 64; t < bt * 64 + 64; t++) {
          ...
          for (int r = 0; r < 4; r++) {
            sc[r][t - 64 * bt] = s4[r] / sqrtf(128);
          }
        }

    After: the first nest is gone (obligation covers: the loop after it
    stores into every cell of sc). Refused: a target that is not a nest of
    loops (thread mappings allowed) around one store `A[...] = e;` into a C
    array A declared in the function, with `e` and the indices free of side
    effects; no later statement of its block naming A; that statement
    reading or updating A, or leaving early.
    """
    who = "matrix.drop_overwritten"
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    where = _where(res, m.path, m.node)
    name = _stored_array(who, m.node, where)
    fn = get(program, m.path[:1])
    if not any(isinstance(n, ir.DeclStmt) and n.decl.name == name and isinstance(n.decl.type, ir.Array)
               for _, n in walk(fn.body)):
        raise TransformError(f"{who}: '{name}' is not a C array declared in {m.function}: other names may reach "
                             f"its cells", m.node.loc)
    arr = _find_array(program, m.path[:1], name, None, who)
    _accesses(program, res, arr, m.path, who)
    block, k = _in_block(who, res, m.path, m.node)
    stmts = get(program, block).stmts
    later = next((j for j in range(k + 1, len(stmts)) if name in free_vars(stmts[j])), None)
    if later is None:
        raise TransformError(f"{who}: no statement after {where} in its block names '{name}'", m.node.loc)
    user = block + (("stmts", later),)
    line = res.line(user)
    roles = {a.role for a in _accesses(program, res, arr, user, who)}
    if roles != {"write"}:
        raise TransformError(f"{who}: the statement at line {line}, the next to name '{name}', "
                             f"{'reads' if 'read' in roles else 'updates'} it: the values {where} stores may be "
                             f"read", m.node.loc)
    _refuse_early_exit(who, f"the statement at line {line}", (stmts[later],), m.node)
    zeros = tuple(ir.Const("0") for _ in arr.shape)
    shown = " x ".join(f"[0, {expr_text(d)})" for d in arr.shape)
    ob = Obligation("covers", f"the statement at line {line} stores into every cell of '{name}' {shown} before "
                    f"anything reads one, so that nothing reads what {where} stored", m.function, (user,),
                    zeros + arr.shape + arr.shape, before=True, names=(name,))
    return Rewrite(splice(program, m.path, ()), (ob,))


def _freed_at(body: ir.Block, name: str) -> Optional[int]:
    """The position of `free(name);` among the function body's statements, else None."""
    for k, st in enumerate(body.stmts):
        e = st.expr if isinstance(st, ir.ExprStmt) else None
        if isinstance(e, ir.Call) and e.name == "free" and e.args == (ir.Var(name),):
            return k
    return None


def _only_indexed(node: object, name: str, free_call: ir.Stmt) -> bool:
    """Every use of `name` under node is `name[...]` (or the free): the pointer itself goes nowhere."""
    bases = {id(n.base) for _, n in walk(node) if isinstance(n, ir.Index)}
    return all(id(n) in bases for _, n in walk(node) if n == ir.Var(name)
               and not any(n is a for a in free_call.expr.args))  # type: ignore[attr-defined]


@primitive
def drop_dead_store(program: ir.Program, target: str) -> Rewrite:
    """Remove a nest of loops that only stores into a buffer the function
    allocates and frees, when nothing after it reads those cells before the
    free: the stores are never seen. The copy of a tile back out to a
    scratch buffer that no later statement reads is such a nest.

    Before (`matrix.drop_dead_store("gqa_decode > for g#2 > for bt > for i1")`,
    the chunk's scores copied back to the scratch buffer `scores`, which
    only the last chunk's kernel reads after, at other cells):

        float *scores = malloc(H * (pos + 1) * sizeof(float));
        ...
        for (int g = 0; g < H / 4; g++) {
          for (int bt = 0; bt < (pos + 1) / 64; bt++) {
            ...
            for (int i1 = 0; i1 < 64; i1++) {
              for (int i0 = 0; i0 < 4; i0++) {
                scores[(4 * g + i0) * (pos + 1) + (64 * bt + i1)] = sc[i1][i0];
              }
            }
          }
        }
        for (int g = 0; g < H / G; g++) { ... scores[(g * G + r) * (pos + 1) + t] ... }
        ...
        free(scores);

    After: the nest is gone (obligation commute, on the program before: the
    nest, in every run of the loops around it, commutes with each statement
    after them that names the buffer, up to its free; then it could run
    last, right before the free, where nothing sees what it stores).
    Refused: a target that is not a nest of loops around one store
    `A[...] = e;` (e and the bounds free of side effects); A not allocated
    (malloc, calloc) in the function's body and freed there after the
    nest; A used other than as `A[...]` (the pointer could escape); A named
    elsewhere in the loops around the nest (a later iteration could read
    what it stores); labels in the function (a goto could run statements
    again).
    """
    who = "matrix.drop_dead_store"
    res = Resolver(program)
    m = res.one(target, "loop", (ir.For,))
    where = _where(res, m.path, m.node)
    name = _stored_array(who, m.node, where)
    fn: ir.FuncDef = get(program, m.path[:1])
    top = m.path[:3]  # the statement of the function's body that holds the nest
    allocated = any(isinstance(st, ir.DeclStmt) and st.decl.name == name and _allocation(st.decl.init) is not None
                    for st in fn.body.stmts[:top[2][1]])
    freed = _freed_at(fn.body, name)
    if not allocated or freed is None or freed < top[2][1]:
        raise TransformError(f"{who}: '{name}' is not a buffer that {m.function} allocates (malloc, calloc) before "
                             f"{where} and frees after it, in its body: the caller could read what it stores",
                             m.node.loc)
    if not _only_indexed(fn.body, name, fn.body.stmts[freed]):
        raise TransformError(f"{who}: '{name}' is used other than as {name}[...] in {m.function}: its cells "
                             f"could be reached through another name", m.node.loc)
    if any(isinstance(n, ir.Label) for _, n in walk(fn.body)):
        raise TransformError(f"{who}: {m.function} has labels: a goto could run statements again", m.node.loc)
    loops = [k for k in range(3, len(m.path)) if isinstance(get(program, m.path[:k]), _LOOPS)]
    outer = m.path[:loops[0]] if loops else m.path
    if any(name in free_vars(st) for p, st in walk(get(program, outer), outer)
           if isinstance(st, ir.Stmt) and not p[:len(m.path)] == m.path and not m.path[:len(p)] == p):
        raise TransformError(f"{who}: the loops around {where} name '{name}' elsewhere: a later iteration could "
                             f"read what it stores", m.node.loc)
    later: list[Path] = []
    for depth in range(len(outer), 2, -1):
        step = outer[:depth]
        if step[-1][0] != "stmts":
            continue
        block, k = step[:-1], step[-1][1]
        stop = freed if len(block) == 2 else len(get(program, block).stmts)
        later += [block + (("stmts", j),) for j in range(k + 1, stop)
                  if name in free_vars(get(program, block + (("stmts", j),)))]
    ob = Obligation("commute", f"nothing after {where} reads what it stores into '{name}' before free({name})",
                    m.function, (m.path,) + tuple(later), before=True)
    return Rewrite(splice(program, m.path, ()), (ob,))


# ----------------------------------------------------------------- layout changes of local arrays


def _allocation(e: Optional[ir.Expr]) -> Optional[ir.Call]:
    """The malloc/calloc call that initialises a pointer (under a cast)."""
    while isinstance(e, ir.Cast):
        e = e.arg
    return e if isinstance(e, ir.Call) and e.name in _ALLOCATORS else None


def _local_array(program: ir.Program, target: str, who: str, shape: Optional[Sequence[Union[str, int]]],
                 need_shape: bool = True) -> tuple[Path, _Array, list[_Access]]:
    """The local array a layout change targets (`f > def Bp`), and all its
    accesses in the function."""
    sels = parse_target(target)
    fn = program.function(sels[0].value)
    last = sels[-1]
    if fn is not None and last.kind == "def" and any(p.name == last.value for p in fn.params):
        raise TransformError(f"{who}: '{last.value}' is a parameter of {fn.name}: its layout is its caller's; "
                             f"change the layout of a local copy instead (matrix.local_buffer)", fn.loc)
    res = Resolver(program)
    m = res.one(target, "local array declaration (e.g. 'f > def Bp')", (ir.DeclStmt,))
    decl: ir.Decl = m.node.decl
    arr = _find_array(program, m.path[:1], decl.name or "", shape, who, need_shape)
    if isinstance(decl.type, ir.Ptr) and _allocation(decl.init) is None:
        raise TransformError(f"{who}: '{arr.name}' is a pointer not initialised by malloc or calloc in its "
                             f"declaration (line {res.line(m.path)}): the function does not own its layout", decl.loc)
    if isinstance(decl.type, ir.Array) and decl.init is not None:
        raise TransformError(f"{who}: '{arr.name}' has an initializer (line {res.line(m.path)}), laid out for "
                             f"its current shape", decl.loc)
    hit = _contract_naming(program, m.path[:1], arr.name)
    if hit is not None:
        raise TransformError(f"{who}: the loop contract of {_where(res, hit, get(program, hit))} names "
                             f"'{arr.name}'; remove it (level 3 infers loop contracts)", decl.loc)
    return m.path, arr, _accesses(program, res, arr, m.path[:1], who)


def _relayout(program: ir.Program, decl_path: Path, arr: _Array, accesses: Sequence[_Access], shape: Shape,
              index: Callable[[tuple[ir.Expr, ...]], tuple[ir.Expr, ...]]) -> ir.Program:
    """Rewrite every access for the new `shape`, and the declaration of a C
    array (a flattened one keeps its allocation)."""
    new_arr = dataclasses.replace(arr, shape=shape)
    program = _rewrite(program, accesses, lambda a: _access_expr(new_arr, index(a.index)))
    if arr.flat:
        return program
    return replace(program, decl_path + (("decl", None),),
                   dataclasses.replace(arr.decl, type=_md_type(arr.elem, shape)))


def _int_arg(who: str, value: object, what: str, loc: Optional[ir.Loc]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransformError(f"{who}: {what} must be an integer, got {value!r}", loc)
    return value


@primitive
def tile_dim(program: ir.Program, target: str, dim: int, size: Union[int, str],
             shape: Optional[list[Union[str, int]]] = None) -> Rewrite:
    """Split dimension `dim` of a local array into blocks of `size`.

    Before (`matrix.tile_dim("matmul > def B_local", 1, 16)`):

        float B_local[64][N];
        ... B_local[k - bk][j] ...

    After (obligation divides: 16 divides N):

        float B_local[64][N / 16][16];
        ... B_local[k - bk][j / 16][j % 16] ...

    The step names the same cells when `size` divides the dimension, which
    is left to the checker (a `divides` obligation), or refused when both
    are constants and it does not (a constant quotient is folded:
    `float Bp[64][256]` becomes `float Bp[64][16][16]`). The indices are
    non-negative (a C array access stays within its dimensions; a flattened
    array declares `delinearize`), so `/` and `%` split them exactly. A
    flattened array (`shape=` given) keeps its allocation and cells: its
    accesses are rewritten in Horner form for the new shape, which is what
    a following reorder_dims needs. Refused: a parameter, a pointer not
    allocated in its declaration, an array with an initializer, escapes (see
    the module), a dimension out of range, a size that is not a positive
    integer or expression, and a loop contract naming the array.
    """
    who = "matrix.tile_dim"
    decl_path, arr, accesses = _local_array(program, target, who, shape)
    loc = arr.decl.loc
    n = len(arr.shape)
    if not 0 <= _int_arg(who, dim, "dim", loc) < n:
        raise TransformError(f"{who}: '{arr.name}' has {n} dimension(s) {arr.shape_text()}; dim must be in "
                             f"0..{n - 1}, got {dim}", loc)
    (step,) = _exprs(who, [size], "tile size", loc)
    extent = arr.shape[dim]
    a, b = _lin(extent), _lin(step)
    if not b.terms and b.const <= 0:
        raise TransformError(f"{who}: the tile size must be positive, got {expr_text(step)}", loc)
    obligations: tuple[Obligation, ...] = ()
    if not a.terms and not b.terms:
        if a.const % b.const:
            raise TransformError(f"{who}: {b.const} does not divide dimension {dim} of '{arr.name}' "
                                 f"({a.const})", loc)
        blocks: ir.Expr = ir.Const(str(a.const // b.const))
    else:
        blocks = ir.Binop("/", extent, step)
        obligations = (Obligation("divides", f"{expr_text(step)} divides {expr_text(extent)} (dimension {dim} "
                                  f"of '{arr.name}')", arr.function, (decl_path,), (step, extent)),)
    shape_ = arr.shape[:dim] + (blocks, step) + arr.shape[dim + 1:]

    def split(index: tuple[ir.Expr, ...]) -> tuple[ir.Expr, ...]:
        i = index[dim]
        return index[:dim] + (ir.Binop("/", i, step), ir.Binop("%", i, step)) + index[dim + 1:]

    new = _relayout(program, decl_path, arr, accesses, shape_, split)
    return Rewrite(new, obligations + _delinearize_obligation(arr, accesses))


@primitive
def reorder_dims(program: ir.Program, target: str, order: list[int],
                 shape: Optional[list[Union[str, int]]] = None) -> Rewrite:
    """Permute the dimensions of a local array: new dimension k is old
    dimension `order[k]`, in the declaration and in every access.

    Before (`matrix.reorder_dims("matmul > def B_local", [1, 0, 2])`):

        float B_local[64][N / 16][16];
        ... B_local[k - bk][j / 16][j % 16] ...

    After (no obligation for a C array: a permutation of indices is a
    bijection between the cells):

        float B_local[N / 16][64][16];
        ... B_local[j / 16][k - bk][j % 16] ...

    For a flattened array allocated by malloc, give its current shape; the
    accesses are rewritten in Horner form for the permuted shape (the
    allocation, d0 * ... * d(n-1) elements, is unchanged) and the step
    declares `delinearize`, on which the bijection rests. Refused: a
    parameter, a pointer not allocated in its declaration, an array with an
    initializer, escapes (see the module), an order that is not a
    permutation of 0..n-1, and a loop contract naming the array.
    """
    who = "matrix.reorder_dims"
    decl_path, arr, accesses = _local_array(program, target, who, shape)
    n = len(arr.shape)
    if not isinstance(order, (list, tuple)) or sorted(_int_arg(who, o, "each entry of order", arr.decl.loc)
                                                      for o in order) != list(range(n)):
        raise TransformError(f"{who}: order must be a permutation of 0..{n - 1} (the dimensions of '{arr.name}' "
                             f"{arr.shape_text()}), got {order!r}", arr.decl.loc)
    shape_ = tuple(arr.shape[o] for o in order)
    new = _relayout(program, decl_path, arr, accesses, shape_, lambda index: tuple(index[o] for o in order))
    return Rewrite(new, _delinearize_obligation(arr, accesses))


# ----------------------------------------------------------------- set_precision


def _converted_stores(program: ir.Program, accesses: Sequence[_Access], conversion: str, who: str,
                      arr: _Array) -> ir.Program:
    """Every store into the array made through `conversion` (a type that C
    does not convert to on assignment); an update cannot be."""
    for a in accesses:
        if a.role == "update":
            raise TransformError(f"{who}: '{expr_text(get(program, a.path))}' updates '{arr.name}', whose new type "
                                 f"is stored through {conversion}(): write it as a store", get(program, a.path).loc)
        if a.role == "write":
            store = get(program, a.path[:-1])
            call = ir.Call(ir.Var(conversion), (store.rhs,), store.rhs.loc)
            program = replace(program, a.path[:-1], dataclasses.replace(store, rhs=call))
    return program

UNIT_ROUNDOFF = {"_Float16": 2.0 ** -11, "otp_bf16": 2.0 ** -8, "float": 2.0 ** -24, "double": 2.0 ** -53}
"""The floating types set_precision knows, with their unit roundoff."""

OTP_H = "#include <otp.h>"
"""Where otp_bf16 and its conversion are defined (optitrust_py/include/otp.h)."""

LOSSY_FACTOR = 8
"""Default tolerance of set_precision, in units of the new type's roundoff:
a value read back has one rounding error, and a few operations on values
read back can add a few more."""


def _float_name(t: ir.CType) -> Optional[str]:
    return " ".join(t.names) if isinstance(t, ir.Base) and " ".join(t.names) in UNIT_ROUNDOFF else None


def _retyped(e: ir.Expr, old: ir.CType, new: ir.CType) -> tuple[ir.Expr, int]:
    """`e` with `sizeof(old)` and casts to `old *` retyped to `new`, and how
    many `sizeof(old)` it had."""
    count = 0

    def go(n: object) -> object:
        nonlocal count
        if isinstance(n, ir.SizeofType) and unqualified(n.type) == old:
            count += 1
            return dataclasses.replace(n, type=new)
        if isinstance(n, ir.Cast) and isinstance(n.type, ir.Ptr) and unqualified(n.type.to) == old:
            return dataclasses.replace(n, type=ir.Ptr(new, n.type.quals), arg=go(n.arg))
        return map_children(n, go)

    return go(e), count  # type: ignore[return-value]


def _narrowing(who: str, arr: _Array, ctype: str, tolerance: Optional[float], loc: Optional[ir.Loc]) -> float:
    """The step's tolerance, once `ctype` is known to narrow the array's elements."""
    old = _float_name(arr.elem)
    if ctype not in UNIT_ROUNDOFF:
        raise TransformError(f"{who}: unknown floating type {ctype!r} (known: {', '.join(UNIT_ROUNDOFF)})", loc)
    if old is None or UNIT_ROUNDOFF[ctype] <= UNIT_ROUNDOFF[old]:
        raise TransformError(f"{who}: '{arr.name}' holds {type_name(arr.elem)}, which {ctype} does not narrow",
                             loc)
    tol = LOSSY_FACTOR * UNIT_ROUNDOFF[ctype] if tolerance is None else tolerance
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol > 0:
        raise TransformError(f"{who}: tolerance must be a positive number, got {tolerance!r}", loc)
    return float(tol)


def _stored_as(program: ir.Program, arr: _Array, accesses: Sequence[_Access], ctype: str,
               who: str) -> ir.Program:
    """The accesses of an array whose elements become `ctype`: reads cast
    back to the old type, stores through the type's conversion if it has
    one (and otp.h included for it)."""
    plain_old = unqualified(arr.elem)
    new = _rewrite(program, [a for a in accesses if a.role == "read"],
                   lambda a: ir.Cast(plain_old, get(program, a.path)))
    conversion = CONVERSIONS.get(ctype)
    if conversion is None:
        return new
    new = _converted_stores(new, accesses, conversion, who, arr)
    return new.with_includes(OTP_H)


PARAM_TYPES = {"otp_bf16": "float"}
"""The types a pointer parameter may be narrowed to, each from the one type
whose values a caller's narrowed array holds rounded (what the execution
check and the CUDA bench give the new program: see execcheck)."""


def _param_array(program: ir.Program, target: str, ctype: str,
                 who: str) -> tuple[Path, _Array, list[_Access]]:
    """The pointer parameter `f > param x` that set_precision narrows, and
    its accesses; refused where a caller in the program passes another
    element type or the function's address is taken."""
    res = Resolver(program)
    m = res.one(target, "parameter (e.g. 'f > param x')")
    fn_path = m.path[:1]
    fn: ir.FuncDef = get(program, fn_path)
    loc = m.node.loc or fn.loc
    arr = _find_array(program, fn_path, m.node.name, None, who, need_shape=False)
    if ctype not in PARAM_TYPES:
        raise TransformError(f"{who}: a parameter is narrowed to {' or '.join(PARAM_TYPES)} only (its callers then "
                             f"pass arrays of that type), not {ctype!r}", loc)
    if _float_name(arr.elem) != PARAM_TYPES[ctype]:
        raise TransformError(f"{who}: '{arr.name}' holds {type_name(arr.elem)}: a parameter narrowed to {ctype} "
                             f"must hold {PARAM_TYPES[ctype]}", loc)
    k = m.path[-1][1]
    tds = typedefs_of(program)
    for path, node in walk(program):
        if node != ir.Var(fn.name):
            continue
        parent = get(program, path[:-1])
        line = res.line(path)
        if not (isinstance(parent, ir.Call) and path[-1] == ("func", None)):
            raise TransformError(f"{who}: the address of {fn.name} is taken (line {line}): whoever calls it through "
                                 f"that pointer passes {type_name(arr.elem)} arrays as '{arr.name}'", loc)
        if k is None or k >= len(parent.args):
            continue  # a call with too few arguments does not compile anyway
        arg = parent.args[k]
        try:
            t = type_of(arg, env_at(program, path), tds)
        except TransformError:
            t = None
        if not (isinstance(t, ir.Ptr) and unqualified(t.to) == ir.Base((ctype,))):
            shown = type_name(t) if t is not None else "a value of unknown type"
            raise TransformError(f"{who}: {fn.name} is called with '{expr_text(arg)}' ({shown}) as '{arr.name}' "
                                 f"(line {line}): narrowed, it would read those values as {ctype}; narrow the "
                                 f"caller's array first", parent.loc or loc)
    return m.path, arr, _accesses(program, res, arr, fn_path, who)


def _retyped_param(program: ir.Program, path: Path, arr: _Array, new_elem: ir.CType) -> ir.Program:
    """The parameter at `path` pointing to `new_elem`, in the definition and
    in every prototype of its function (`const` kept)."""
    k = path[-1][1]

    def retyped(p: ir.Decl) -> ir.Decl:
        t = p.type
        t = dataclasses.replace(t, to=new_elem) if isinstance(t, ir.Ptr) else dataclasses.replace(t, of=new_elem)
        return dataclasses.replace(p, type=t)

    program = replace(program, path, retyped(get(program, path)))
    for i, item in enumerate(program.items):
        if isinstance(item, ir.Decl) and item.name == arr.function and isinstance(item.type, ir.FuncT) \
                and item.type.params is not None and k is not None and k < len(item.type.params):
            program = replace(program, (("items", i), ("type", None), ("params", k)), retyped(item.type.params[k]))
    return program


@primitive
def set_precision(program: ir.Program, target: str, ctype: str, tolerance: Optional[float] = None) -> Rewrite:
    """Store the elements of a local array, or of a pointer parameter, in a
    narrower floating type.

    Halves the memory traffic of a scratch buffer or a packed tile; the
    arithmetic stays in the old type: every read is cast back explicitly,
    stores and updates (`+=`) convert on assignment.

    Before (`matrix.set_precision("attention > def scores", "_Float16")`):

        float *scores = malloc(S * sizeof(float));
        ...
        scores[j] = expf(scores[j] - max_val);
        sum += scores[j];

    After (fp "lossy", obligation in_type_range):

        _Float16 *scores = malloc(S * sizeof(_Float16));
        ...
        scores[j] = expf((float)scores[j] - max_val);
        sum += (float)scores[j];

    This step changes values on purpose: it is marked `lossy` with a
    relative `tolerance` (default LOSSY_FACTOR times the unit roundoff of
    the new type, 2^-11 for _Float16), which the execution check allows and
    reports. Long reductions over values read back round more: give a
    larger tolerance for them. Obligation `in_type_range`: every value stored
    is within the new type's range (65504 for _Float16), or it becomes an
    infinity. Types known: _Float16, otp_bf16, float, double
    (UNIT_ROUNDOFF); the new one must be narrower than the old.

    `otp_bf16` (bfloat16, `#include <otp.h>`, added to the program) is
    `__nv_bfloat16` in CUDA and, on the CPU, a float that holds bfloat16
    values only: each store goes through the conversion
    (`k_tile[j][d] = otp_to_bf16(k[...]);`), which rounds to bfloat16 and
    saturates at its largest finite value, so level 2 proves in_type_range
    from it; an update (`+=`) of such an array is refused (write the store).

    A pointer parameter is named `f > param x` and narrowed from float to
    otp_bf16 only (PARAM_TYPES): the KV cache an LLM decode keeps in
    bfloat16. The function's interface changes, its callers now pass
    bfloat16 arrays (the execution check gives the new program the inputs
    rounded to bfloat16 and the old one the plain inputs, and compares
    within the tolerance); `const` stays. Before
    (`matrix.set_precision("gqa_decode > param k_cache", "otp_bf16")`):

        void gqa_decode(..., float *k_cache, ...) {
          k_cache[(g * SMAX + pos) * D + d] = k_new[g * D + d];
          ...
          s += q[h * D + d] * k_cache[(g * SMAX + t) * D + d];

    After (fp "lossy", tolerance 8 x 2^-8, obligation in_type_range):

        void gqa_decode(..., otp_bf16 *k_cache, ...) {
          k_cache[(g * SMAX + pos) * D + d] = otp_to_bf16(k_new[g * D + d]);
          ...
          s += q[h * D + d] * (float)k_cache[(g * SMAX + t) * D + d];

    Refused: a local pointer not allocated in its declaration or whose
    allocation does not say `sizeof(old type)`, an array with an
    initializer, escapes (see the module), a loop contract naming a local
    array, an unknown or not narrower type, and a tolerance that is not a
    positive number; for a parameter, a type other than float or a target
    type other than otp_bf16, a call in the program that passes another
    element type (its caller's array must be narrowed first: a float array
    would be read as bfloat16), and the function's address taken. A local
    target (`def x`) that names a parameter is refused, naming `param x`.
    """
    who = "matrix.set_precision"
    sels = parse_target(target)
    fn = program.function(sels[0].value)
    last = sels[-1]
    if fn is not None and last.kind == "def" and any(p.name == last.value for p in fn.params):
        raise TransformError(f"{who}: '{last.value}' is a parameter of {fn.name}: name it "
                             f"'{fn.name} > param {last.value}' to narrow it (its callers then pass the new type)",
                             fn.loc)
    param = last.kind == "param"
    path, arr, accesses = _param_array(program, target, ctype, who) if param else \
        _local_array(program, target, who, None, need_shape=False)
    loc = arr.decl.loc or (fn.loc if fn is not None else None)
    tol = _narrowing(who, arr, ctype, tolerance, loc)
    new_elem = dataclasses.replace(arr.elem, names=(ctype,))
    new = _stored_as(program, arr, accesses, ctype, who)
    if param:
        new = _retyped_param(new, path, arr, new_elem)
    elif isinstance(arr.decl.type, ir.Ptr):
        old = _float_name(arr.elem)
        init, sizes = _retyped(arr.decl.init, unqualified(arr.elem), unqualified(new_elem))  # type: ignore[arg-type]
        if not sizes:
            raise TransformError(f"{who}: the allocation of '{arr.name}' does not say sizeof({old}); write it "
                                 f"as n * sizeof({old})", loc)
        decl_ = dataclasses.replace(arr.decl, type=dataclasses.replace(arr.decl.type, to=new_elem), init=init)
        new = replace(new, path + (("decl", None),), decl_)
    else:
        decl_ = dataclasses.replace(arr.decl, type=_md_type(new_elem, arr.shape))
        new = replace(new, path + (("decl", None),), decl_)
    ob = Obligation("in_type_range", f"every value stored into '{arr.name}' is within the range of {ctype}",
                    arr.function, (path,))
    return Rewrite(new, (ob,), fp="lossy", tolerance=tol)
