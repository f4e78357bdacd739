"""Functional models: what a function computes, stated in its contract and
checked at level 3.

    softmax(R, C, x, y):
      ...
      ensures  y == softmax(x)

The right-hand side is a call of a definition of `LIBRARY` (calls may nest:
`y == matvec(W, rmsnorm(x, w))`); its arguments are the function's pointer
parameters, read as the arrays their contract's `MatrixN` gives them (their
values on entry), or its integer parameters. Each definition builds, at
concrete sizes, every cell of its result as a `terms` term over the input
leaves `symexec` uses (`in(x, offset)`), written the mathematical way:
softmax(x)_j = exp(x_j - max x) / sum_k exp(x_k - max x). Reductions and
row-wise definitions work on the last dimension, once per index of the
leading ones.

Level 3 runs the original function (`symexec`) at its chosen sizes and
compares each output cell with the model's, as it compares two steps
(`level3.compare_outcomes`): the same term (`=`) or the same normal form over the
reals (`≈fp`), else refuted with the cell and both values on random inputs.
Every later step computes what the step before did (`=` or `≈fp`), so the
model carries over to the final program.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from . import ir, terms as T
from .contract import Contract, evaluate
from .errors import OtpError, SpecError
from .printer import expr as c_expr
from .typeof import header_typedefs, resolve

if TYPE_CHECKING:
    from .level3 import Runs

EPS = Fraction("1e-5")
"""rmsnorm's epsilon (llama's)."""


class ModelError(OtpError):
    """A model applied to arrays whose shapes do not fit it (at the sizes checked)."""


@dataclass(frozen=True)
class Tensor:
    """An array of terms: its dimensions and its cells in row-major order."""

    dims: tuple[int, ...]
    cells: tuple[Any, ...]

    def rows(self) -> list[tuple[Any, ...]]:
        """The vectors along the last dimension, in order."""
        n = self.dims[-1] if self.dims else 1
        return [self.cells[i:i + n] for i in range(0, len(self.cells), n)] if n else []

    def matrices(self) -> list["Tensor"]:
        """The 2-D slices over the last two dimensions, in order."""
        size = self.dims[-2] * self.dims[-1]
        return [Tensor(self.dims[-2:], self.cells[i:i + size]) for i in range(0, len(self.cells), size)]


Arg = Any
"""A model's argument: a `Tensor`, or an `int` (an integer parameter)."""


@dataclass(frozen=True)
class Definition:
    """One definition of the library: its argument kinds ('t' an array,
    'i' an integer) and the function that builds its result."""

    name: str
    kinds: str
    build: Callable[..., Tensor]
    doc: str


# ---------------------------------------------------------------- helpers

def _add(terms: Sequence[Any]) -> Any:
    total: Any = T.ZERO
    for t in terms:
        total = T.binary("add", total, t)
    return total


def _max(terms: Sequence[Any]) -> Any:
    """The maximum, from -inf; max(m, t) is written `t > m ? t : m`, which
    is what `canon` reads as a maximum, so code that computes it so meets
    the model term for term (normalising attention's cells costs minutes)."""
    m: Any = T.NEG_INF
    for t in terms:
        m = T.ite(T.binary("lt", m, t), t, m)
    return m


def _dot(a: Sequence[Any], b: Sequence[Any]) -> Any:
    return _add([T.binary("mul", x, y) for x, y in zip(a, b)])


def _softmax(row: Sequence[Any]) -> list[Any]:
    m = _max(row)
    e = [T.unary("exp", T.binary("sub", x, m)) for x in row]
    total = _add(e)
    return [T.binary("div", x, total) for x in e]


def _sqrt(x: Any) -> Any:
    """sqrt(x) as level 3's run of `sqrtf(x)` has it (exact for a square)."""
    from .symexec import _sqrt as run_sqrt

    return run_sqrt(x)


def _attend(query: Sequence[Any], keys: Sequence[Sequence[Any]], values: Sequence[Sequence[Any]]) -> list[Any]:
    """sum_j softmax_j(query . key_j / sqrt(D)) value_j."""
    scale = _sqrt(len(query))
    p = _softmax([T.binary("div", _dot(query, key), scale) for key in keys])
    return [_dot(p, [v[d] for v in values]) for d in range(len(query))]


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ModelError(message)


def _rank(name: str, x: Tensor, low: int, high: int = 8) -> None:
    _need(low <= len(x.dims) <= high, f"{name} takes an array of rank {low}"
          f"{'' if high == low else ' or more'}, not one of dimensions {_dims(x)}")


def _dims(x: Tensor) -> str:
    return "x".join(map(str, x.dims)) or "(a cell)"


def _rowwise(x: Tensor, f: Callable[[Sequence[Any]], Sequence[Any]]) -> Tensor:
    return Tensor(x.dims, tuple(c for row in x.rows() for c in f(row)))


def _reduce(x: Tensor, f: Callable[[Sequence[Any]], Any]) -> Tensor:
    return Tensor(x.dims[:-1], tuple(f(row) for row in x.rows()))


# ---------------------------------------------------------------- the library

def exp(x: Tensor) -> Tensor:
    return Tensor(x.dims, tuple(T.unary("exp", c) for c in x.cells))


def sum_(x: Tensor) -> Tensor:
    _rank("sum", x, 1)
    return _reduce(x, _add)


def max_(x: Tensor) -> Tensor:
    _rank("max", x, 1)
    return _reduce(x, _max)


def softmax(x: Tensor) -> Tensor:
    _rank("softmax", x, 1)
    return _rowwise(x, _softmax)


def rmsnorm(x: Tensor, w: Tensor) -> Tensor:
    _rank("rmsnorm", x, 1)
    _need(w.dims == x.dims[-1:], f"rmsnorm: the weights w must have the length of x's rows ({x.dims[-1]}), "
                                 f"not dimensions {_dims(w)}")

    def norm(row: Sequence[Any]) -> list[Any]:
        mean = T.binary("div", _add([T.binary("mul", c, c) for c in row]), len(row))
        root = _sqrt(T.binary("add", mean, T.const(EPS)))
        return [T.binary("div", T.binary("mul", wj, c), root) for wj, c in zip(w.cells, row)]
    return _rowwise(x, norm)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    _rank("matmul", a, 2, 2)
    _rank("matmul", b, 2, 2)
    (m, k), (k2, n) = a.dims, b.dims
    _need(k == k2, f"matmul: A is {_dims(a)} and B is {_dims(b)}: A's columns must be B's rows")
    cols = [b.cells[j::n] for j in range(n)]
    return Tensor((m, n), tuple(_dot(row, col) for row in a.rows() for col in cols))


def matvec(w: Tensor, x: Tensor) -> Tensor:
    _rank("matvec", w, 2, 2)
    _rank("matvec", x, 1, 1)
    _need(w.dims[1] == x.dims[0], f"matvec: W is {_dims(w)} and x has {x.dims[0]} cells: W's columns must be "
                                  f"x's length")
    return Tensor(w.dims[:1], tuple(_dot(row, x.cells) for row in w.rows()))


def _attention(q: Tensor, k: Tensor, v: Tensor, name: str, causal: bool) -> Tensor:
    for x in (q, k, v):
        _rank(name, x, 2)
    _need(k.dims == v.dims and q.dims[:-2] == k.dims[:-2] and q.dims[-1] == k.dims[-1],
          f"{name}: q is {_dims(q)}, k {_dims(k)}, v {_dims(v)}: k and v must have one shape, and q its leading "
          f"dimensions and its last")
    cells: list[Any] = []
    for qm, km, vm in zip(q.matrices(), k.matrices(), v.matrices()):
        keys, values = km.rows(), vm.rows()
        for i, query in enumerate(qm.rows()):
            seen = i + 1 if causal else len(keys)
            cells.extend(_attend(query, keys[:seen], values[:seen]))
    return Tensor(q.dims, tuple(cells))


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _attention(q, k, v, "attention", False)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    return _attention(q, k, v, "causal_attention", True)


def decode_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, k_new: Tensor, v_new: Tensor, pos: int) -> Tensor:
    """Grouped-query attention of one new token: query head h (of H) uses kv
    head h / (H / KVH), whose keys are its cache rows 0..pos-1, then the new
    key (values likewise)."""
    _rank("decode_attention", q, 2, 2)
    for x in (k_cache, v_cache):
        _rank("decode_attention", x, 3, 3)
    (h, d), (kvh, smax, d2) = q.dims, k_cache.dims
    _need(v_cache.dims == k_cache.dims and k_new.dims == v_new.dims == (kvh, d) and d2 == d and kvh
          and h % kvh == 0 and 0 <= pos < smax,
          f"decode_attention: q is {_dims(q)}, the caches {_dims(k_cache)} and {_dims(v_cache)}, the new rows "
          f"{_dims(k_new)} and {_dims(v_new)}, pos {pos}: expected q H x D, caches KVH x SMAX x D, new rows "
          f"KVH x D, H a multiple of KVH, 0 <= pos < SMAX")
    group = h // kvh
    cells: list[Any] = []
    for head, query in enumerate(q.rows()):
        g = head // group
        keys = k_cache.matrices()[g].rows()[:pos] + [k_new.rows()[g]]
        values = v_cache.matrices()[g].rows()[:pos] + [v_new.rows()[g]]
        cells.extend(_attend(query, keys, values))
    return Tensor(q.dims, tuple(cells))


def cache_write(cache: Tensor, new: Tensor, pos: int) -> Tensor:
    """The cache [..., SMAX, D] with row pos of each matrix replaced by the
    matching row of `new` [..., D]."""
    _rank("cache_write", cache, 2)
    _need(new.dims == cache.dims[:-2] + cache.dims[-1:] and 0 <= pos < cache.dims[-2],
          f"cache_write: the cache is {_dims(cache)}, the new rows {_dims(new)}, pos {pos}: expected a cache "
          f"... x SMAX x D, new rows ... x D and 0 <= pos < SMAX")
    cells: list[Any] = []
    for m, row in zip(cache.matrices(), new.rows()):
        for t, old in enumerate(m.rows()):
            cells.extend(row if t == pos else old)
    return Tensor(cache.dims, tuple(cells))


LIBRARY: dict[str, Definition] = {d.name: d for d in (
    Definition("exp", "t", exp, "exp of every cell"),
    Definition("sum", "t", sum_, "sum along the last dimension"),
    Definition("max", "t", max_, "maximum along the last dimension"),
    Definition("softmax", "t", softmax, "exp(x_j - max x) / sum_k exp(x_k - max x) along the last dimension"),
    Definition("rmsnorm", "tt", rmsnorm, "w_j * x_j / sqrt(mean_k x_k^2 + 1e-5) along the last dimension"),
    Definition("matmul", "tt", matmul, "A (M x K) times B (K x N)"),
    Definition("matvec", "tt", matvec, "W (D x N) times x (N)"),
    Definition("attention", "ttt", attention,
               "out_i = sum_j softmax_j(q_i . k_j / sqrt(D)) v_j over the last two dimensions (S x D)"),
    Definition("causal_attention", "ttt", causal_attention, "attention where query i sees keys 0..i"),
    Definition("decode_attention", "ttttti", decode_attention,
               "decode_attention(q, k_cache, v_cache, k_new, v_new, pos): grouped-query attention of one token "
               "over cache rows 0..pos-1 and the new row"),
    Definition("cache_write", "tti", cache_write, "cache_write(cache, new, pos): the cache with row pos replaced"),
)}


# ---------------------------------------------------------------- contracts

def check_ensures(contract: Contract, types: Mapping[str, ir.CType]) -> None:
    """SpecError, at the offending place, unless each `ensures` is
    `OUT == MODEL(ARGS)`: OUT a float array the function writes or modifies,
    MODEL a definition of the library with its number of arguments, each
    argument a float array the function reads or modifies (or a nested
    model), or an integer parameter where the definition takes an integer."""
    seen: set[str] = set()
    for e in contract.ensures:
        if not (isinstance(e, ir.Binop) and e.op == "==" and isinstance(e.left, ir.Var)):
            raise SpecError(f"'{c_expr(e)}': an ensures clause reads 'OUT == MODEL(ARGS)' (models: "
                            f"{', '.join(LIBRARY)})", e.loc)
        out = e.left.name
        if contract.mode_of(out) not in ("writes", "modifies"):
            raise SpecError(f"'{out}' in ensures is not an array the function writes or modifies", e.left.loc)
        if out in seen:
            raise SpecError(f"two ensures clauses for '{out}'", e.left.loc)
        seen.add(out)
        _array(e.left, contract, types, "the output of ensures")
        _check_model(e.right, contract, types)


def _check_model(e: ir.Expr, contract: Contract, types: Mapping[str, ir.CType]) -> None:
    if not (isinstance(e, ir.Call) and isinstance(e.func, ir.Var)):
        raise SpecError(f"'{c_expr(e)}' is not a model: expected a call of one of {', '.join(LIBRARY)}", e.loc)
    name = e.func.name
    d = LIBRARY.get(name)
    if d is None:
        raise SpecError(f"unknown model '{name}' (the library: {', '.join(LIBRARY)})", e.func.loc or e.loc)
    if len(e.args) != len(d.kinds):
        raise SpecError(f"model '{name}' takes {len(d.kinds)} argument{'s' if len(d.kinds) > 1 else ''}, "
                        f"{len(e.args)} given ({name}: {d.doc})", e.loc)
    for kind, a in zip(d.kinds, e.args):
        if kind == "i":
            if not (isinstance(a, ir.Var) and a.name in contract.params and not _pointer(types[a.name])):
                raise SpecError(f"argument '{c_expr(a)}' of '{name}' must be an integer parameter", a.loc)
        elif isinstance(a, ir.Call):
            _check_model(a, contract, types)
        elif not isinstance(a, ir.Var):
            raise SpecError(f"argument '{c_expr(a)}' of '{name}' must be an array parameter or a model", a.loc)
        elif contract.mode_of(a.name) not in ("reads", "modifies"):
            raise SpecError(f"argument '{a.name}' of '{name}' is not an array the function reads or modifies",
                            a.loc)
        else:
            _array(a, contract, types, f"an argument of '{name}'")


def _pointer(t: ir.CType) -> bool:
    return isinstance(t, (ir.Ptr, ir.Array))


def _array(v: ir.Var, contract: Contract, types: Mapping[str, ir.CType], role: str) -> None:
    """`v` must be a float array covered by one whole `MatrixN` (or `Cell`);
    its elements may be of a header's float type (`otp_bf16`: a caller's
    array narrowed by matrix.set_precision holds the same values, rounded)."""
    t = types[v.name]
    while isinstance(t, (ir.Ptr, ir.Array)):
        t = t.to if isinstance(t, ir.Ptr) else t.of
    t = resolve(t, header_typedefs())
    if not (isinstance(t, ir.Base) and {"float", "double"} & set(t.names)):
        raise SpecError(f"'{v.name}', {role}, must be an array of floats", v.loc)
    rs = contract.resources_of(v.name)
    if len(rs) != 1 or rs[0].group or not isinstance(rs[0].subject, ir.Var):
        raise SpecError(f"'{v.name}', {role}, must own one whole resource '{v.name} ~> MatrixN(...)'", v.loc)


# ---------------------------------------------------------------- level 3

def evaluate_model(e: ir.Expr, contract: Contract, sizes: Mapping[str, int]) -> Tensor:
    """The model `e` (a checked call) at concrete sizes, over the input leaves."""
    assert isinstance(e, ir.Call) and isinstance(e.func, ir.Var)
    d = LIBRARY[e.func.name]
    args: list[Arg] = []
    for kind, a in zip(d.kinds, e.args):
        if isinstance(a, ir.Call):
            args.append(evaluate_model(a, contract, sizes))
        else:
            assert isinstance(a, ir.Var)
            args.append(sizes[a.name] if kind == "i" else inputs(a.name, contract, sizes))
    return d.build(*args)


def shape(name: str, contract: Contract, sizes: Mapping[str, int]) -> tuple[int, ...]:
    r = contract.resources_of(name)[0]
    env = {p: sizes[p] for p in contract.params if p in sizes}
    return tuple(evaluate(d, env) for d in r.shape.dims)


def inputs(name: str, contract: Contract, sizes: Mapping[str, int]) -> Tensor:
    """The array `name` on entry: one unknown per cell, as `symexec` names them."""
    dims = shape(name, contract, sizes)
    n = 1
    for d in dims:
        n *= d
    return Tensor(dims, tuple(T.leaf("in", name, i) for i in range(n)))


@dataclass(frozen=True)
class ModelCheck:
    """One `ensures` of one function, checked on the original program at one size set."""

    function: str
    clause: str
    model: str
    sizes: tuple[tuple[str, int], ...]
    status: str  # "=", "≈fp", "refuted", "wrong shape", "not checkable" (symexec cannot run it), "unknown"
    detail: str
    cells: int
    time_s: float

    @property
    def ok(self) -> bool:
        return self.status in ("=", "≈fp")

    def text(self) -> str:
        at = ",".join(f"{k}={v}" for k, v in self.sizes)
        if self.ok:
            return (f"model: {self.function}: {self.clause} ✓ ({self.status}, {self.cells} cells at {at}); every "
                    f"later step labelled = or ≈fp at these sizes keeps it")
        return f"model: {self.function}: {self.clause} ✗ {self.status} at {at}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "ensures": self.clause, "model": self.model, "sizes": dict(self.sizes),
                "status": self.status, "ok": self.ok, "detail": self.detail, "cells": self.cells,
                "time_s": round(self.time_s, 3)}


def check_models(program: ir.Program, contracts: Mapping[str, Contract], size_sets: Sequence[Mapping[str, int]],
                 runs: "Runs") -> list[ModelCheck]:
    """Every `ensures` of the contract of every function of the original
    `program` (not those later steps add: they inherit from the function
    they were made from), run at each size set (the runs are `runs`', so
    level 3's first step reuses them)."""
    out: list[ModelCheck] = []
    for name, contract in contracts.items():
        if program.function(name) is None:
            continue
        own = _own_sizes(program, name, contract, size_sets)
        for e in contract.ensures:
            for sizes in own:
                out.extend(_check_one(program, name, contract, e, sizes, runs))
    return out


OWN_SIZE_CAP = 8
"""The largest size chosen for a function the script's sizes do not size."""


def _own_sizes(program: ir.Program, name: str, contract: Contract,
               size_sets: Sequence[Mapping[str, int]]) -> Sequence[Mapping[str, int]]:
    """`size_sets`, or for a function whose integer parameters they do not
    all name (a helper: `matvec(n, d, ...)` in transformer.c), sizes level 3
    chooses from its own code and `requires`, each at most OWN_SIZE_CAP."""
    from .level3 import choose_sizes

    scalars = [p for p in contract.params if contract.mode_of(p) is None]
    if all(p in s for s in size_sets for p in scalars):
        return size_sets
    return choose_sizes({name: contract}, {p: OWN_SIZE_CAP for p in scalars}, None, [program])


def _check_one(program: ir.Program, name: str, contract: Contract, e: ir.Expr, sizes: Mapping[str, int],
               runs: "Runs") -> list[ModelCheck]:
    """One `ensures` at one size set: the model's cells against the run's,
    compared as level 3 compares two steps (the model on the side of the
    step before), once per choice of `__builtin_cpu_supports` the run meets."""
    from .level3 import choice_sets, compare_outcomes
    from .symexec import Outcome, Unsupported

    assert isinstance(e, ir.Binop) and isinstance(e.left, ir.Var) and isinstance(e.right, ir.Call)
    t0 = time.perf_counter()
    own = {p: sizes[p] for p in contract.params if p in sizes}
    key = tuple(sorted(own.items()))
    out_name = e.left.name

    def result(status: str, detail: str, cells: int = 0) -> ModelCheck:
        return ModelCheck(name, c_expr(e), e.right.func.name, key, status, detail, cells,  # type: ignore[union-attr]
                          time.perf_counter() - t0)
    try:
        model = evaluate_model(e.right, contract, own)
    except ModelError as err:
        return [result("wrong shape", err.message)]
    dims = shape(out_name, contract, own)
    if model.dims != dims:
        return [result("wrong shape", f"the model gives an array of dimensions {_dims(model)}, and "
                                      f"'{out_name}' has dimensions {'x'.join(map(str, dims))}")]
    expected = Outcome({(out_name, i): c for i, c in enumerate(model.cells)}, {}, 0)
    checks: list[ModelCheck] = []
    try:
        for choices in choice_sets(lambda c: runs.run(program, name, contract, sizes, c).choices):
            got = runs.run(program, name, contract, sizes, choices)
            status, detail = compare_outcomes(expected, got, runs.normalizer)
            if status not in ("=", "≈fp"):
                detail += "; here 'before the step' is the model's value and 'after' the source's"
            checks.append(result(status, detail, len(model.cells)))
    except Unsupported as err:
        return [result("not checkable", err.message)]
    return checks
