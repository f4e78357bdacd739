"""What the vector intrinsics otp emits compute, lane by lane, for level 3's
symbolic execution (memory effects as in `intrinsics`: a load reads the
consecutive cells its pointer names, a store writes them).

A fused multiply-add is its own operator (`fma`: it rounds once, so a step
that turns `s += a * b` into one is `≈fp`, not `=`); a horizontal reduction
combines its lanes as a balanced tree, one association among others, which
is all level 3 needs since any association is equal over the reals. otp's
bfloat16 helpers (include/otp.h) are here too: `otp_to_bf16` as the value
itself (level 3 takes a lossy step's rounding as exact) and gpu.mma's
per-lane tile products `otp_mma_m16n8k16_bf16` (and `_kn`, and the
tf32x3 ones on float operands, their split taken as exact) as their 4 sums
in k order."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from . import ir, terms as T
from .intrinsics import TILE_PRODUCTS
from .symexec import Machine, Ptr, Unsupported, Vec, convert
from .terms import Term

_FLOAT_LANES = {"_mm512": 16, "_mm256": 8, "_mm": 4}
_BYTE_LANES = {"si512": 64, "si256": 32, "si128": 16}


def _lanes(name: str) -> int:
    return _FLOAT_LANES.get("_" + name.split("_")[1], 16)


def _tree(op: str, lanes: Sequence[Any]) -> Any:
    if len(lanes) == 1:
        return lanes[0]
    half = len(lanes) // 2
    return T.binary(op, _tree(op, lanes[:half]), _tree(op, lanes[half:]))


def _lanewise(fn: Callable[..., Any]) -> Callable[[Machine, list[Any], ir.Call], Any]:
    def apply(m: Machine, args: list[Any], e: ir.Call) -> Any:
        if not all(isinstance(a, Vec) for a in args):
            raise Unsupported(f"{e.func} on something that is not a vector", e.loc)
        return Vec(fn(*lanes) for lanes in zip(*args))
    return apply


def _binary(op: str) -> Callable[[Machine, list[Any], ir.Call], Any]:
    return _lanewise(lambda a, b: T.binary(op, a, b))


def _load(m: Machine, p: Any, count: int, e: ir.Call) -> Vec:
    if not isinstance(p, Ptr):
        raise Unsupported("a vector load from something that is not a pointer", e.loc)
    return Vec(m.load(p.alloc, p.offset + k, e) for k in range(count))


def _store(m: Machine, p: Any, v: Any, e: ir.Call) -> None:
    if not isinstance(p, Ptr) or not isinstance(v, Vec):
        raise Unsupported("a vector store of something that is not a vector, or to no pointer", e.loc)
    for k, x in enumerate(v):
        m.store(p.alloc, p.offset + k, x, e)


def _dpwssd(m: Machine, args: list[Any], e: ir.Call) -> Vec:
    """Each 32-bit lane adds the products of two adjacent pairs of 16-bit lanes."""
    src, a, b = args
    return Vec(T.binary("add", T.binary("add", src[j], T.binary("mul", a[2 * j], b[2 * j])),
                        T.binary("mul", a[2 * j + 1], b[2 * j + 1])) for j in range(len(src)))


def _mma(m: Machine, args: list[Any], e: ir.Call, k_major: bool) -> None:
    """gpu.mma's per-lane tile products (include/otp.h): c_top[n] and
    c_bottom[n] (n = 0, 1) each add the 16 products of their row of A with
    column n of B, in k order, as the CPU versions do. B's column n is row n
    of B^T (b_even, b_odd) or, k-major (`_kn`), cell n of B's rows 0 to 7
    from b_top and 8 to 15 from b_bottom, a row stride apart."""
    c_top, c_bottom, a_top, a_bottom, b_first, b_second = args[:6]
    if not all(isinstance(p, Ptr) for p in args[:6]) or (k_major and b_first.alloc is not b_second.alloc):
        raise Unsupported(f"{e.func} on something that is not a pointer into B", e.loc)
    row = (b_second.offset - b_first.offset) // 8

    def b_cell(n: int, k: int) -> int:
        if k_major:
            return (b_first if k < 8 else b_second).offset + k % 8 * row + n
        return (b_first, b_second)[n].offset + k
    for c, a in ((c_top, a_top), (c_bottom, a_bottom)):
        for n in range(2):
            acc = m.load(c.alloc, c.offset + n, e)
            for k in range(16):
                b = b_first if k_major else (b_first, b_second)[n]
                product = T.binary("mul", m.load(a.alloc, a.offset + k, e), m.load(b.alloc, b_cell(n, k), e))
                acc = T.binary("add", acc, product)
            m.store(c.alloc, c.offset + n, acc, e)


def intrinsic(m: Machine, name: str, args: list[Any], e: ir.Call) -> Any:
    """The value of one intrinsic call (None for a store)."""
    if name == "otp_expf_avx512":
        return Vec(T.unary("exp", x) for x in args[0])
    if name == "otp_to_bf16":
        return args[0]  # a lossy step's rounding, taken as exact (as a store into _Float16 is)
    if name in TILE_PRODUCTS:  # the tf32x3 split of float operands: a lossy step, taken as exact
        return _mma(m, args, e, name.endswith("_kn"))
    op = name.split("_", 2)[-1]
    lanes = _lanes(name)
    if op in ("loadu_ps", "load_ps"):
        return _load(m, args[0], lanes, e)
    if op in ("storeu_ps", "store_ps", "stream_ps"):
        return _store(m, args[0], args[1], e)
    if op in ("loadu_si512", "loadu_si256", "loadu_si128"):
        return _load(m, args[0], _BYTE_LANES[op.split("_")[1]], e)
    if op == "set1_ps":
        return Vec([T.lift(args[0])] * lanes)
    if op == "setzero_ps":
        return Vec([T.ZERO] * lanes)
    if op == "setzero_si512":
        return Vec([0] * 16)
    if op == "sfence":
        return None
    if op in _REDUCE:
        return _tree(_REDUCE[op], list(args[0]))
    fn = _OPS.get(op)
    if fn is None:
        raise Unsupported(f"level 3 does not model the intrinsic {name}", e.loc)
    return fn(m, args, e)


_REDUCE = {"reduce_add_ps": "add", "reduce_max_ps": "max", "reduce_min_ps": "min", "reduce_add_epi32": "add"}
_OPS: dict[str, Callable[[Machine, list[Any], ir.Call], Any]] = {
    "add_ps": _binary("add"), "sub_ps": _binary("sub"), "mul_ps": _binary("mul"), "div_ps": _binary("div"),
    "max_ps": _binary("max"), "min_ps": _binary("min"),
    "fmadd_ps": _lanewise(lambda a, b, c: Term.make("fma", T.lift(a), T.lift(b), T.lift(c))),
    "fnmadd_ps": _lanewise(lambda a, b, c: Term.make("fnma", T.lift(a), T.lift(b), T.lift(c))),
    "add_epi32": _binary("add"), "mullo_epi32": _binary("mul"),
    "cvtepi8_epi16": _lanewise(lambda a: a), "cvtepi8_epi32": _lanewise(lambda a: a),
    "cvtepi32_ps": _lanewise(lambda a: convert(a, "f")),
    "dpwssd_epi32": _dpwssd,
}
