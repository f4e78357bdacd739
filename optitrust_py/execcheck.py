"""The execution check (`otp run/check --exec`): build a reference program and
a step's program with gcc, run both on the same pseudo-random inputs shaped by
the contracts, and compare every output.

What is checked, per step: every function that has a contract, exists in both
programs with the same parameter list (names and types; `const`/`restrict`
may change) and is *affected* by the step: its printed text differs, or it
calls (transitively) a function whose text differs or that is new, or uses a
global whose declaration changed. Nothing affected: the step is reported as
`unchanged`. A contract function that disappeared or whose signature changed
is reported `not-checkable` with the reason, never passed silently; so is a
changed function without a contract that no checked function calls. The one
signature change that is checked: float pointer parameters narrowed to a
storage type of otp.h (`otp_bf16`, matrix.set_precision of a parameter),
the inputs a caller holding such arrays passes are the float inputs rounded
(see below), and the result names the parameters (`narrowed`).

`functions=[...]` replaces that choice: exactly the named contract functions
are run at every step, changed or not.

Sizes come from one dict for the whole program (`{"M": 64, "N": 48}`: integer
parameters, and float scalar parameters). A changed function whose sizes are
missing is an error listing what is missing, unless a checked caller runs it
(then it is reported `covered` by that caller); a function only affected
through a callee and missing sizes is reported `skipped`. `requires` are
evaluated on the sizes first: sizes that break one are a SpecError naming the
fact and the values.

The harness (C appended to the printed program; one `main` dispatching on the
function name) allocates every pointer parameter with exactly the number of
elements its contract shape gives (`Cell` = 1), fills inputs (`reads`,
`modifies`) with a fixed-seed xorshift64* sequence (floats uniform in
[-1, 1), signed integers in [-8, 7], unsigned in [0, 15]; an array of
`otp_bf16`, a float on the CPU, gets the same floats through otp_to_bf16,
so a program taking float arrays and one taking otp_bf16 arrays get the
same inputs, the second rounded to bfloat16 as its callers hold them),
fills `writes`
outputs with NaN (integers: bytes 0xA5) so an output left unwritten is
caught, calls the function and writes every output (and a scalar return
value, as `return`) as raw binary. After the call it checks that read-only
inputs are unchanged and, without sanitizers, that the GUARD canary
elements around every array are intact (an out-of-bounds write); with
`sanitize=True` ASan and UBSan catch out-of-bounds reads and undefined
behaviour too. Any of these is a `crash` result with the first lines of
stderr. Each distinct program text is built once
(gcc -O1 -ffp-contract=off -fno-fast-math, optionally with ASan+UBSan), the
builds run in parallel, and each (program, function) runs once.

Comparison (pure Python, `array` module). An element passes when
`a == b` (so -0.0 == 0.0), when both are NaN, or, for a tolerance `tol > 0`,
when `|a - b| <= tol * max(1, |a|, |b|)`: a relative bound for values of
magnitude above 1 and an absolute bound `tol` below, because inputs are in
[-1, 1] and rounding differences of a reordered reduction scale with the
magnitude of its terms (O(1)), not of its possibly-cancelling result. NaN
against a number, or infinities of different values, never pass. Reported:
max absolute error, max relative error `|a - b| / max(|a|, |b|)` over the
differing elements, number of elements, and the first failing element as
`C[3, 0]` (row-major multi-index from the contract's Matrix shape).

By default each step is compared with the step before it (`reference =
"previous"`; step 1 with the original), which attributes every difference to
the step that made it and lets each step's tolerance stand for itself. With
`reference="original"` each step is compared with the original program, with
tolerance the sum of the tolerances of the steps so far.
"""
from __future__ import annotations

import ctypes
import dataclasses
import math
import signal
import subprocess
import tempfile
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from . import ir
from .build import (EXEC_FLAGS, SANITIZE_ENV, SANITIZE_FLAGS, BuildFailed, check_sanitizers,
                    compile_exe, parallel_map, run_env)
from .contract import Contract, evaluate, free_names
from .errors import SpecError
from .intrinsics import CONVERSIONS
from .printer import expr as c_expr
from .printer import to_c, type_name
from .tree import walk
from .typeof import param_type

FORCE_INCLUDE = ("-include", "otp.h")
"""Exec builds force-include otp.h, so contract clauses a step adds compile."""

LOSSY_SHOWN = 1e-4
"""A step whose tolerance is above this changes values on purpose (a lossy
step): its header shows the max absolute error as well as the relative one."""

STDERR_LINES = 20
"""How many lines of a crashed run's stderr a result keeps."""

# ----------------------------------------------------------------- results


def _num(x: Union[int, float]) -> Union[int, float, str]:
    """A JSON-safe number: inf / nan as strings."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def _fmt(x: Union[int, float], code: str) -> str:
    if isinstance(x, int):
        return str(x)
    if math.isnan(x):
        return "nan"
    return f"{x:.9g}" if code == "f" else f"{x:.17g}"


@dataclass(frozen=True)
class Mismatch:
    """The first output element that failed the comparison."""

    output: str
    index: tuple[int, ...]
    expected: Union[int, float]
    """The reference program's value."""
    actual: Union[int, float]
    """The checked program's value."""
    typecode: str = "f"

    @property
    def where(self) -> str:
        """`C[3, 0]` (or `C` for a Cell / scalar return)."""
        return f"{self.output}[{', '.join(map(str, self.index))}]" if self.index else self.output

    def __str__(self) -> str:
        return (f"{self.where}: expected {_fmt(self.expected, self.typecode)}, "
                f"got {_fmt(self.actual, self.typecode)}")

    def to_json(self) -> dict[str, Any]:
        return {"output": self.output, "index": list(self.index), "where": self.where,
                "expected": _num(self.expected), "actual": _num(self.actual)}


@dataclass(frozen=True)
class OutputResult:
    """The comparison of one output (a `writes`/`modifies` parameter or `return`)."""

    name: str
    elements: int
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    mismatches: int = 0
    first: Optional[Mismatch] = None

    @property
    def passed(self) -> bool:
        return self.mismatches == 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "elements": self.elements, "max_abs_error": _num(self.max_abs_error),
                "max_rel_error": _num(self.max_rel_error), "mismatches": self.mismatches,
                "first_mismatch": self.first.to_json() if self.first else None}


FUNCTION_STATUSES = ("pass", "fail", "crash", "not-checkable", "covered", "skipped")


@dataclass(frozen=True)
class FunctionResult:
    """One function at one step.

    status: `pass`; `fail` (an output differs beyond the tolerance, or the
    program does not build); `crash` (non-zero exit, signal, sanitizer report,
    time-out: `stderr` holds the first lines); `not-checkable` (disappeared,
    signature changed, unsupported parameter types, no contract: `reason`);
    `covered` (changed but no sizes of its own; run through `covered_by`);
    `skipped` (only affected through a callee, and no sizes of its own)."""

    function: str
    status: str
    elements: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    first_mismatch: Optional[Mismatch] = None
    outputs: tuple[OutputResult, ...] = ()
    reason: str = ""
    stderr: str = ""
    covered_by: Optional[str] = None
    narrowed: tuple[str, ...] = ()
    """Float parameters the checked program takes narrowed (otp_bf16): it
    got their inputs rounded, the reference the plain ones."""

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "crash")

    def summary(self) -> str:
        if self.status == "pass":
            err = "exact" if self.max_abs_error == 0 else \
                f"max abs err {self.max_abs_error:.3g}, max rel err {self.max_rel_error:.3g}"
            given = f"; {', '.join(self.narrowed)} narrowed, given the inputs rounded" if self.narrowed else ""
            return f"{self.function}: pass ({self.elements} elements, {err}{given})"
        if self.status == "fail" and self.first_mismatch is not None:
            bad = sum(o.mismatches for o in self.outputs)
            return (f"{self.function}: FAIL at {self.first_mismatch} ({bad} of {self.elements} elements differ; "
                    f"max abs err {self.max_abs_error:.3g}, max rel err {self.max_rel_error:.3g})")
        text = f"{self.function}: {self.status.upper() if self.failed else self.status}"
        if self.reason:
            text += f": {self.reason}"
        if self.stderr:
            text += "\n    " + "\n    ".join(self.stderr.splitlines())
        return text

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "status": self.status, "elements": self.elements,
                "max_abs_error": _num(self.max_abs_error), "max_rel_error": _num(self.max_rel_error),
                "first_mismatch": self.first_mismatch.to_json() if self.first_mismatch else None,
                "outputs": [o.to_json() for o in self.outputs], "reason": self.reason,
                "stderr": self.stderr, "covered_by": self.covered_by, "narrowed": list(self.narrowed)}


@dataclass(frozen=True)
class StepResult:
    """The exec check of one step against its reference.

    status: `pass` (every checked function passed), `fail` (one failed or
    crashed), `unchanged` (the step changed no checked function), `unchecked`
    (it changed something but nothing could be run: see the entries)."""

    step: int
    reference: str
    tolerance: float
    status: str
    functions: tuple[FunctionResult, ...] = ()
    note: str = ""

    @property
    def ok(self) -> bool:
        """Nothing wrong found and something (or nothing needed) was checked."""
        return self.status in ("pass", "unchanged")

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def function(self, name: str) -> Optional[FunctionResult]:
        return next((f for f in self.functions if f.function == name), None)

    def short(self) -> str:
        """A few words for a step's header: `=` (bit-exact) or the max error
        (absolute too when the step may change values beyond rounding: a
        relative error says little about elements near zero)."""
        if self.status == "unchanged":
            return "(no checked function changed)"
        if self.status != "pass":
            return self.status
        worst = max((f.max_rel_error for f in self.functions), default=0.0)
        if worst == 0 and self.tolerance == 0:
            return "="
        rel = f"max rel err {worst:.1e}"
        narrowed = sorted({n for f in self.functions for n in f.narrowed})
        given = f", {', '.join(narrowed)} narrowed" if narrowed else ""
        if self.tolerance <= LOSSY_SHOWN:
            return rel + given
        return f"max abs err {max(f.max_abs_error for f in self.functions):.1e}, {rel}{given}"

    @property
    def problems(self) -> tuple[str, ...]:
        return tuple(f.summary() for f in self.functions if f.status not in ("pass", "covered", "skipped")) \
            if not self.ok else ()

    def summary(self) -> str:
        tol = "exact" if self.tolerance == 0 else f"tol {self.tolerance:g}"
        head = f"exec step {self.step} vs {self.reference} ({tol}): {self.status}"
        if self.note:
            head += f" ({self.note})"
        return "\n".join([head] + ["  " + f.summary() for f in self.functions])

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "reference": self.reference, "tolerance": self.tolerance,
                "status": self.status, "ok": self.ok, "note": self.note,
                "functions": [f.to_json() for f in self.functions]}


@dataclass(frozen=True)
class ExecReport:
    """Every step's result, with the sizes and options they were run with."""

    steps: tuple[StepResult, ...]
    sizes: tuple[tuple[str, Union[int, float]], ...] = ()
    sanitize: bool = False
    reference: str = "previous"

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)

    @property
    def failed(self) -> bool:
        return any(s.failed for s in self.steps)

    def summary(self) -> str:
        return "\n".join(s.summary() for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {"sizes": dict(self.sizes), "sanitize": self.sanitize, "reference": self.reference,
                "ok": self.ok, "steps": [s.to_json() for s in self.steps]}


# ----------------------------------------------------------------- C types


@dataclass(frozen=True)
class _Elem:
    """A scalar C type the harness can fill and Python can read back."""

    c: str     # C spelling without qualifiers
    code: str  # array typecode of the same size and signedness
    kind: str  # 'float', 'int', 'uint', 'bool'
    conversion: str = ""  # a storage type of otp.h (a float on the CPU): what each value it holds went through

    @property
    def tag(self) -> str:
        return self.c.replace(" ", "_")


def _typecode(size: int, signed: bool) -> str:
    for code in ("bhilq" if signed else "BHILQ"):
        if array(code).itemsize == size:
            return code
    raise KeyError(size)


_INT_TYPEDEFS = {
    "int8_t": (1, True), "uint8_t": (1, False), "int16_t": (2, True), "uint16_t": (2, False),
    "int32_t": (4, True), "uint32_t": (4, False), "int64_t": (8, True), "uint64_t": (8, False),
    "size_t": (ctypes.sizeof(ctypes.c_size_t), False), "ssize_t": (ctypes.sizeof(ctypes.c_ssize_t), True),
    "ptrdiff_t": (ctypes.sizeof(ctypes.c_ssize_t), True), "intptr_t": (ctypes.sizeof(ctypes.c_ssize_t), True),
    "uintptr_t": (ctypes.sizeof(ctypes.c_size_t), False),
}
_INT_WORDS = {
    (): ctypes.sizeof(ctypes.c_int), ("char",): 1, ("short",): ctypes.sizeof(ctypes.c_short),
    ("long",): ctypes.sizeof(ctypes.c_long), ("long", "long"): ctypes.sizeof(ctypes.c_longlong),
}


def _elem(t: ir.CType) -> Optional[_Elem]:
    """The scalar type `t` (qualifiers ignored), or None if unsupported."""
    if isinstance(t, ir.EnumT):
        return _Elem(type_name(dataclasses.replace(t, quals=())), _typecode(ctypes.sizeof(ctypes.c_int), True), "int")
    if not isinstance(t, ir.Base):
        return None
    names = t.names
    c = " ".join(names)
    if names == ("float",):
        return _Elem(c, "f", "float")
    if c in CONVERSIONS:
        return _Elem(c, "f", "float", CONVERSIONS[c])
    if names == ("double",):
        return _Elem(c, "d", "float")
    if names in (("_Bool",), ("bool",)):
        return _Elem(c, "B", "bool")
    if len(names) == 1 and names[0] in _INT_TYPEDEFS:
        size, signed = _INT_TYPEDEFS[names[0]]
        return _Elem(c, _typecode(size, signed), "int" if signed else "uint")
    unsigned = "unsigned" in names
    rest = tuple(w for w in names if w not in ("unsigned", "signed", "int"))
    if "int" in names and "char" in rest:
        return None
    if rest not in _INT_WORDS:
        return None
    return _Elem(c, _typecode(_INT_WORDS[rest], not unsigned), "uint" if unsigned else "int")


def _type_key(t: ir.CType) -> str:
    """A type's spelling with every qualifier removed (const/restrict may
    change between steps without changing what the harness passes)."""
    def strip(x: Any) -> Any:
        if isinstance(x, (ir.Base, ir.StructT, ir.EnumT)):
            return dataclasses.replace(x, quals=())
        if isinstance(x, ir.Ptr):
            return ir.Ptr(strip(x.to))
        if isinstance(x, ir.Array):
            return ir.Array(strip(x.of), x.size)
        if isinstance(x, ir.FuncT):
            ps = None if x.params is None else tuple(dataclasses.replace(p, type=strip(p.type)) for p in x.params)
            return ir.FuncT(strip(x.ret), ps, x.variadic)
        return x
    return type_name(strip(t))


def narrowed_params(f0: ir.FuncDef, f1: ir.FuncDef) -> Optional[tuple[str, ...]]:
    """The parameters `f1` takes as pointers to a storage type of otp.h
    where `f0` takes float pointers (none when the signatures are the same,
    qualifiers aside); None when they differ in any other way."""
    if _type_key(f0.type.ret) != _type_key(f1.type.ret) or f0.type.variadic != f1.type.variadic or \
            [p.name for p in f0.params] != [p.name for p in f1.params]:
        return None
    out = []
    for p0, p1 in zip(f0.params, f1.params):
        if _type_key(p0.type) == _type_key(p1.type):
            continue
        t0, t1 = param_type(p0.type), param_type(p1.type)
        e0 = _elem(t0.to) if isinstance(t0, ir.Ptr) else None
        e1 = _elem(t1.to) if isinstance(t1, ir.Ptr) else None
        if e0 is None or e1 is None or e0.c != "float" or not e1.conversion:
            return None
        out.append(p0.name or "")
    return tuple(out)


def _signature_text(f: ir.FuncDef) -> str:
    from .printer import declaration
    return declaration(dataclasses.replace(f.decl, storage=(), funcspec=()))


# ----------------------------------------------------------------- planning a function


class _NotCheckable(Exception):
    """The function cannot be run by the harness (the message says why)."""


class _MissingSizes(Exception):
    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(", ".join(names))
        self.names = tuple(names)


@dataclass(frozen=True)
class _Param:
    name: str
    role: str  # 'int', 'float' (scalars from sizes), 'buffer'
    elem: _Elem
    value: Union[int, float, None] = None  # scalars
    count: int = 0  # buffers: elements
    fill: str = ""  # buffers: 'random' or 'poison'
    output: bool = False
    dims: tuple[int, ...] = ()  # buffers: Matrix dims for messages; () = flat


@dataclass(frozen=True)
class _Plan:
    """How the harness runs one function."""

    function: str
    params: tuple[_Param, ...]
    ret: Optional[_Elem]

    def outputs(self) -> list[tuple[str, _Elem, int, tuple[int, ...]]]:
        outs = [(p.name, p.elem, p.count, p.dims) for p in self.params if p.output]
        if self.ret is not None:
            outs.append(("return", self.ret, 1, ()))
        return outs


def _int_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            isinstance(value, float) and not value.is_integer():
        raise SpecError(f"size {name} must be an integer, got {value!r}")
    return int(value)


def param_extent(param: str, contract: Contract, env: Mapping[str, int]) -> tuple[int, tuple[int, ...]]:
    """Elements to allocate for `param` (the furthest cell any of its
    resources reaches) and its Matrix dims when one plain resource covers it."""
    resources = contract.resources_of(param)
    if not resources:
        raise _NotCheckable(f"pointer parameter '{param}' owns no resource in the contract, so its size is unknown")
    extent = 0
    dims: tuple[int, ...] = ()
    for r in resources:
        ds = tuple(evaluate(d, env) for d in r.shape.dims)
        if any(d < 0 for d in ds):
            raise SpecError(f"the sizes give '{param} ~> {r.shape}' a negative dimension {ds} "
                            f"({_env_text(r.shape.dims, env)})", r.loc)
        size = math.prod(ds)
        if not r.group and isinstance(r.subject, ir.Var):
            extent = max(extent, size)
            if len(resources) == 1 and r.shape.kind == "matrix":
                dims = ds
            continue
        subj = r.subject
        if not (isinstance(subj, ir.Unop) and subj.op == "&" and isinstance(subj.arg, ir.Index)
                and isinstance(subj.arg.base, ir.Var)):
            raise _NotCheckable(f"cannot size '{param}' from the resource '{r}'")
        ranges = [(b.index, b.lo, b.hi) for b in r.group]
        total = 1

        def enum(level: int, local: dict[str, int]) -> None:
            nonlocal extent, total
            if level == len(ranges):
                off = evaluate(subj.arg.index, local)  # type: ignore[union-attr]
                if off < 0:
                    raise SpecError(f"the sizes make '{r}' start before '{param}' (offset {off})", r.loc)
                extent = max(extent, off + size)
                return
            idx, lo, hi = ranges[level]
            a, b = evaluate(lo, local), evaluate(hi, local)
            total *= max(b - a, 1)
            if total > 1 << 22:
                raise _NotCheckable(f"the group of '{r}' is too large to enumerate at these sizes")
            for v in range(a, b):
                enum(level + 1, {**local, idx: v})

        enum(0, dict(env))
    return extent, dims


def _env_text(exprs: Iterable[ir.Expr], env: Mapping[str, Any]) -> str:
    names: list[str] = []
    for e in exprs:
        for v in free_names(e):
            if v.name not in names:
                names.append(v.name)
    return ", ".join(f"{n} = {env[n]}" for n in names if n in env)


def _plan(f: ir.FuncDef, contract: Contract, sizes: Mapping[str, Any]) -> _Plan:
    """How to run `f`; _NotCheckable / _MissingSizes / SpecError otherwise."""
    names = tuple(p.name for p in f.params)
    if contract.params != names:
        raise _NotCheckable(f"its parameters ({', '.join(str(n) for n in names)}) are not the contract's "
                            f"({', '.join(contract.params)})")
    if f.type.variadic:
        raise _NotCheckable("it is variadic")
    scalars: dict[str, tuple[str, _Elem]] = {}
    missing: list[str] = []
    for p in f.params:
        if isinstance(p.type, (ir.Base, ir.EnumT)):
            e = _elem(p.type)
            if e is None:
                raise _NotCheckable(f"parameter '{p.name}' has type '{type_name(p.type)}', which the harness "
                                    "cannot pass")
            if e.conversion:
                raise _NotCheckable(f"parameter '{p.name}' has type '{type_name(p.type)}': the harness passes "
                                    f"that type in arrays only")
            scalars[p.name] = ("float" if e.kind == "float" else "int", e)
            if p.name not in sizes:
                missing.append(p.name)  # type: ignore[arg-type]
        elif isinstance(p.type, (ir.Ptr, ir.Array)):
            to = p.type.to if isinstance(p.type, ir.Ptr) else p.type.of
            if _elem(to) is None:
                raise _NotCheckable(f"parameter '{p.name}' has type '{type_name(p.type)}': the harness only "
                                    "passes scalars and pointers to scalars")
        else:
            raise _NotCheckable(f"parameter '{p.name}' has type '{type_name(p.type)}', which the harness "
                                "cannot pass")
    if missing:
        raise _MissingSizes(missing)
    env: dict[str, int] = {}
    values: dict[str, Union[int, float]] = {}
    for n, (role, _) in scalars.items():
        if role == "int":
            env[n] = values[n] = _int_size(n, sizes[n])
        else:
            v = sizes[n]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
                raise SpecError(f"value of {n} must be a finite number, got {v!r}")
            values[n] = float(v)
    for req in contract.requires:
        if not evaluate(req, env):
            raise SpecError(f"the sizes break the requirement '{c_expr(req)}' of {f.name} "
                            f"({_env_text([req], env)})", req.loc)
    params: list[_Param] = []
    for p in f.params:
        assert p.name is not None
        if p.name in scalars:
            role, e = scalars[p.name]
            params.append(_Param(p.name, role, e, value=values[p.name]))
            continue
        to = p.type.to if isinstance(p.type, ir.Ptr) else p.type.of  # type: ignore[union-attr]
        e = _elem(to)
        assert e is not None
        count, dims = param_extent(p.name, contract, env)
        modes = {m for m, r in contract.resources() if r.base == p.name}
        fill = "random" if modes & {"reads", "modifies"} else "poison"
        output = bool(modes & {"writes", "modifies"})
        if dims and math.prod(dims) != count:
            dims = ()
        params.append(_Param(p.name, "buffer", e, count=count, fill=fill, output=output, dims=dims))
    ret_t = f.type.ret
    ret: Optional[_Elem] = None
    if not (isinstance(ret_t, ir.Base) and ret_t.names == ("void",)):
        ret = _elem(ret_t)  # pointer / struct results are not compared
    return _Plan(f.name, tuple(params), ret)


def plan_call(f: ir.FuncDef, contract: Contract, sizes: Mapping[str, Any]) -> _Plan:
    """How to call `f` on contract-shaped buffers at `sizes` (for benchmarks):
    the harness's plan, with every reason it cannot be made a SpecError
    (unsupported parameter, missing sizes, sizes that break a `requires`)."""
    try:
        return _plan(f, contract, sizes)
    except _NotCheckable as e:
        raise SpecError(f"otp cannot call {f.name} on generated inputs: {e}") from None
    except _MissingSizes as e:
        raise SpecError(f"{f.name} needs sizes for {', '.join(e.names)} (give them with --size NAME=VALUE)") from None


# ----------------------------------------------------------------- harness


def _seed(function: str, param: str) -> int:
    """FNV-1a of `function.param`: fixed per parameter, so before and after
    get the same inputs, and resizing one input does not shift another."""
    h = 0xCBF29CE484222325
    for b in f"{function}.{param}".encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h | 1


_FILL = {
    "f": "(float)((int64_t)(otp__next(&s) >> 40) - 8388608) * 0x1p-23f",
    "d": "((double)(int64_t)(otp__next(&s) >> 11) - 4503599627370496.0) * 0x1p-52",
}


def _fill_expr(e: _Elem) -> str:
    if e.conversion:
        return f"{e.conversion}({_FILL[e.code]})"
    if e.kind == "float":
        return _FILL[e.code]
    if e.kind == "bool":
        return "(otp__next(&s) >> 63)"
    if e.kind == "uint":
        return "(otp__next(&s) >> 60)"
    return "((int)(otp__next(&s) >> 60) - 8)"


_PRELUDE = r"""
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

static uint64_t otp__next(uint64_t *state) {
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545F4914F6CDD1DULL;
}

static void *otp__alloc(size_t n, size_t size) {
  void *p = malloc((n ? n : 1) * size);
  if (!p) {
    fprintf(stderr, "otp harness: out of memory (%zu elements of %zu bytes)\n", n, size);
    exit(3);
  }
  return p;
}

static int otp__dump(const char *dir, const char *name, const void *p, size_t bytes) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.bin", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f) {
    perror(path);
    return 1;
  }
  size_t w = fwrite(p, 1, bytes, f);
  int bad = fclose(f) != 0 || w != bytes;
  if (bad) fprintf(stderr, "otp harness: cannot write %s\n", path);
  return bad;
}
"""


def _c_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _scalar_literal(p: _Param) -> str:
    if p.role == "int":
        return f"({p.elem.c})({int(p.value)}LL)"  # type: ignore[arg-type]
    return f"({p.elem.c})({float(p.value)!r})"  # type: ignore[arg-type]


GUARD = 16
"""Without sanitizers, each array gets GUARD canary elements on each side;
a run that changes one reports an out-of-bounds write (exit 88)."""

EXIT_CODES = {
    86: "AddressSanitizer found an invalid memory access",
    87: "UndefinedBehaviorSanitizer found undefined behaviour",
    88: "the function wrote outside an array (beyond the contract's shape)",
    89: "the function changed an input it only reads",
}

_GUARD_C = r"""
static void otp__guard_set(unsigned char *p, size_t n) { memset(p, 0xCD, n); }

static long otp__guard_bad(const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != 0xCD) return (long)i;
  return -1;
}
"""


def harness(plans: Sequence[_Plan], guard: bool = True) -> str:
    """C text (a `main`) that runs the planned functions: `./prog FUNCTION
    OUTDIR`. With `guard` (no sanitizer), arrays get canaries on both sides
    that are checked after the call; read-only inputs are checked unchanged."""
    out = [_PRELUDE]
    if guard:
        out.append(_GUARD_C)
    elems: dict[str, _Elem] = {}
    for pl in plans:
        for p in pl.params:
            if p.role == "buffer":
                elems.setdefault(p.elem.tag, p.elem)
    for e in elems.values():
        out.append(f"static void otp__fill_{e.tag}({e.c} *p, size_t n, uint64_t seed) {{\n"
                   f"  uint64_t s = seed;\n"
                   f"  for (size_t i = 0; i < n; i++) p[i] = ({e.c})({_fill_expr(e)});\n}}\n")
        out.append(f"static long otp__changed_{e.tag}(const {e.c} *p, size_t n, uint64_t seed) {{\n"
                   f"  uint64_t s = seed;\n"
                   f"  for (size_t i = 0; i < n; i++) {{\n"
                   f"    {e.c} v = ({e.c})({_fill_expr(e)});\n"
                   f"    if (memcmp(&v, &p[i], sizeof v) != 0) return (long)i;\n"
                   f"  }}\n  return -1;\n}}\n")
        poison = f"p[i] = ({e.c})NAN;" if e.kind == "float" else "memset(&p[i], 0xA5, sizeof p[i]);"
        out.append(f"static void otp__poison_{e.tag}({e.c} *p, size_t n) {{\n"
                   f"  for (size_t i = 0; i < n; i++) {poison}\n}}\n")
    g = GUARD if guard else 0
    for k, pl in enumerate(plans):
        body = [f"static int otp__run_{k}(const char *dir) {{", "  int bad = 0;", "  long at;"]
        args = []
        buffers = [(i, p) for i, p in enumerate(pl.params) if p.role == "buffer"]
        for i, p in buffers:
            v, c = f"otp__a{i}", p.elem.c
            body.append(f"  {c} *otp__m{i} = ({c} *)otp__alloc({p.count}u + {2 * g}u, sizeof({c}));")
            body.append(f"  {c} *{v} = otp__m{i} + {g};")
            if guard:
                body.append(f"  otp__guard_set((unsigned char *)otp__m{i}, {g} * sizeof({c}));")
                body.append(f"  otp__guard_set((unsigned char *)({v} + {p.count}u), {g} * sizeof({c}));")
            if p.fill == "random":
                body.append(f"  otp__fill_{p.elem.tag}({v}, {p.count}u, 0x{_seed(pl.function, p.name):016x}ULL);")
            else:
                body.append(f"  otp__poison_{p.elem.tag}({v}, {p.count}u);")
        for i, p in enumerate(pl.params):
            args.append(f"otp__a{i}" if p.role == "buffer" else _scalar_literal(p))
        call = f"{pl.function}({', '.join(args)})"
        if pl.ret is not None:
            body.append(f"  {pl.ret.c} otp__ret = {call};")
        else:
            body.append(f"  {call};")
        for i, p in buffers:
            c = p.elem.c
            if guard:
                for side, base, sign in (("before", f"otp__m{i}", "-"), ("after", f"(otp__a{i} + {p.count}u)", "+")):
                    first = f"({g} - at)" if side == "before" else f"({p.count} + at)"
                    body.append(
                        f"  at = otp__guard_bad((const unsigned char *){base}, {g} * sizeof({c}));\n"
                        f"  if (at >= 0) {{\n"
                        f"    at /= (long)sizeof({c});\n"
                        f"    fprintf(stderr, \"otp harness: {pl.function} wrote {p.name}[%s%ld], outside its %lu "
                        f"elements\\n\", \"{'-' if sign == '-' else ''}\", {first}, (unsigned long){p.count}u);\n"
                        f"    return 88;\n  }}")
            if p.fill == "random" and not p.output:
                body.append(
                    f"  at = otp__changed_{p.elem.tag}(otp__a{i}, {p.count}u, "
                    f"0x{_seed(pl.function, p.name):016x}ULL);\n"
                    f"  if (at >= 0) {{\n"
                    f"    fprintf(stderr, \"otp harness: {pl.function} changed {p.name}[%ld], which it only reads\\n\", at);\n"
                    f"    return 89;\n  }}")
        if pl.ret is not None:
            body.append("  bad |= otp__dump(dir, \"return\", &otp__ret, sizeof otp__ret);")
        for i, p in enumerate(pl.params):
            if p.output:
                body.append(f"  bad |= otp__dump(dir, \"{p.name}\", otp__a{i}, {p.count}u * sizeof(*otp__a{i}));")
        for i, p in buffers:
            body.append(f"  free(otp__m{i});")
        body += ["  return bad ? 3 : 0;", "}", ""]
        out.append("\n".join(body))
    out.append("int main(int argc, char **argv) {")
    out.append("  if (argc != 3) {\n    fprintf(stderr, \"usage: %s FUNCTION OUTDIR\\n\", argv[0]);\n    return 2;\n  }")
    for k, pl in enumerate(plans):
        out.append(f"  if (strcmp(argv[1], \"{pl.function}\") == 0) return otp__run_{k}(argv[2]);")
    out.append("  fprintf(stderr, \"otp harness: no function %s\\n\", argv[1]);\n  return 2;\n}\n")
    return "\n".join(out)


def harness_program(program: ir.Program, name: str, plans: Sequence[_Plan], guard: bool = True) -> str:
    """The printed program with the harness appended (a user `main` is
    renamed); `#line` directives make gcc and sanitizer reports name `name`
    and the printed program's own line numbers."""
    head = "#define main otp__user_main\n" if program.function("main") is not None else ""
    tail = "#undef main\n" if head else ""
    return (f"{head}#line 1 {_c_string(name)}\n{to_c(program)}\n{tail}"
            f"#line 1 \"<otp harness>\"\n{harness(plans, guard)}")


# ----------------------------------------------------------------- program analysis


def _func_text(f: ir.FuncDef) -> str:
    return to_c(ir.Program((), (f,)))


def _calls(program: ir.Program) -> dict[str, set[str]]:
    """Direct callees (functions of `program`) of each function."""
    names = {f.name for f in program.functions()}
    out: dict[str, set[str]] = {}
    for f in program.functions():
        out[f.name] = {n.name for _, n in walk(f.body) if isinstance(n, ir.Call) and n.name in names}
    return out


def _reach(calls: Mapping[str, set[str]], start: str) -> set[str]:
    """`start` and every function it calls, transitively."""
    seen = {start}
    todo = [start]
    while todo:
        for g in calls.get(todo.pop(), ()):
            if g not in seen:
                seen.add(g)
                todo.append(g)
    return seen


def _uses(f: ir.FuncDef) -> set[str]:
    return {n.name for _, n in walk(f.body) if isinstance(n, ir.Var)}


def _globals(program: ir.Program) -> dict[str, str]:
    from .printer import declaration
    return {d.name: declaration(d) for d in program.items
            if isinstance(d, ir.Decl) and d.name is not None and not isinstance(d.type, ir.FuncT)}


# ----------------------------------------------------------------- the check


@dataclass
class _Built:
    """One distinct program: its text, plans, and build outcome."""

    program: ir.Program
    label: str
    plans: dict[str, _Plan] = field(default_factory=dict)
    exe: Optional[Path] = None
    error: Optional[BuildFailed] = None


@dataclass(frozen=True)
class _Run:
    outputs: Optional[dict[str, array]]
    error: str = ""
    stderr: str = ""


@dataclass
class _StepPlan:
    step: int
    ref: int  # index into programs (0 = original)
    new: int
    tolerance: float
    entries: dict[str, FunctionResult] = field(default_factory=dict)  # decided without running
    run: list[str] = field(default_factory=list)  # functions to compare
    narrowed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per function: narrowed parameters
    order: tuple[str, ...] = ()  # how results are listed: the contracts' order
    note: str = ""


def check_step(before: ir.Program, after: ir.Program, contracts: Mapping[str, Contract],
               sizes: Mapping[str, Any], tolerance: float = 0.0,
               functions: Optional[Iterable[str]] = None, *, sanitize: bool = False,
               timeout_s: float = 60.0) -> StepResult:
    """The exec check of one step: `after` against `before`."""
    return check_steps(before, [after], contracts, sizes, tolerance, functions,
                       sanitize=sanitize, timeout_s=timeout_s, reference="original").steps[0]


def check_steps(original: ir.Program, programs: Sequence[ir.Program], contracts: Mapping[str, Contract],
                sizes: Mapping[str, Any], tolerance: Union[float, Sequence[float]] = 0.0,
                functions: Optional[Iterable[str]] = None, *, reference: str = "previous",
                sanitize: bool = False, timeout_s: float = 60.0) -> ExecReport:
    """The exec check of every step (`programs[i]` is the program after step
    i+1). `tolerance` is one value for all steps or one per step (0.0 =
    exact). `functions` names the contract functions to check: exactly
    those, run even where a step did not change them (default: every
    affected contract function, see the module's docstring).
    Raises SpecError for missing sizes or sizes that break a `requires`,
    BuildFailed when the original program does not build, ToolError when gcc
    is missing; everything a step gets wrong is in the returned report."""
    if reference not in ("previous", "original"):
        raise ValueError("reference must be 'previous' or 'original'")
    tols = [float(tolerance)] * len(programs) if isinstance(tolerance, (int, float)) else \
        [float(t) for t in tolerance]
    if len(tols) != len(programs):
        raise ValueError(f"{len(tols)} tolerances for {len(programs)} steps")
    if any(t < 0 or not math.isfinite(t) for t in tols):
        raise ValueError("tolerances must be finite and >= 0")
    wanted = None if functions is None else list(functions)
    for name in wanted or ():
        if name not in contracts:
            raise SpecError(f"--exec: no contract for function '{name}' (functions with contracts: "
                            f"{', '.join(contracts) or 'none'})")
    if sanitize:
        check_sanitizers()

    # distinct programs, by printed text
    all_programs = [original, *programs]
    texts = [to_c(p) for p in all_programs]
    first_of: dict[str, int] = {}
    canon = [first_of.setdefault(t, i) for i, t in enumerate(texts)]
    labels = ["original"] + [f"step {i}" for i in range(1, len(all_programs))]

    plans: list[_StepPlan] = []
    for i in range(len(programs)):
        ref = 0 if reference == "original" else i
        tol = sum(tols[: i + 1]) if reference == "original" else tols[i]
        plans.append(_plan_step(i + 1, all_programs[ref], all_programs[i + 1], ref, i + 1, tol,
                                contracts, sizes, wanted))

    # build every distinct program that some comparison runs
    needed: dict[int, set[str]] = {}
    for sp in plans:
        for fn in sp.run:
            needed.setdefault(canon[sp.ref], set()).add(fn)
            needed.setdefault(canon[sp.new], set()).add(fn)
    built: dict[int, _Built] = {}
    for k in needed:
        b = _Built(all_programs[k], labels[k])
        for f in b.program.functions():
            c = contracts.get(f.name)
            if c is None:
                continue
            try:
                b.plans[f.name] = _plan(f, c, sizes)
            except (_NotCheckable, _MissingSizes, SpecError):
                continue  # not needed here: the needed ones were planned per step
        built[k] = b
    flags = EXEC_FLAGS + FORCE_INCLUDE + (SANITIZE_FLAGS if sanitize else ())

    def build(k: int) -> Path:
        b = built[k]
        return compile_exe(harness_program(b.program, b.label, list(b.plans.values()), guard=not sanitize),
                           b.label, flags)

    keys = sorted(built)
    for k, res in zip(keys, parallel_map(build, keys)):
        if isinstance(res, BuildFailed):
            if k == 0:
                raise res
            built[k].error = res
        elif isinstance(res, BaseException):
            raise res
        else:
            built[k].exe = res

    # run every (program, function) once
    jobs = sorted({(k, fn) for k, fns in needed.items() for fn in fns if built[k].exe is not None})
    with tempfile.TemporaryDirectory(prefix="otp-exec-") as tmp:
        def run(job: tuple[int, str]) -> _Run:
            k, fn = job
            d = Path(tmp) / f"{k}-{fn}"
            d.mkdir()
            return _run_one(built[k], fn, d, sanitize, timeout_s)

        runs = dict(zip(jobs, parallel_map(run, jobs)))
        for job, r in runs.items():
            if isinstance(r, BaseException):
                raise r
        results = tuple(_finish_step(sp, built.get(canon[sp.ref]), built.get(canon[sp.new]),
                                     runs, canon) for sp in plans)  # type: ignore[arg-type]
    return ExecReport(results, tuple(sorted((k, v) for k, v in sizes.items())), sanitize, reference)


def _plan_step(number: int, before: ir.Program, after: ir.Program, ref: int, new: int, tol: float,
               contracts: Mapping[str, Contract], sizes: Mapping[str, Any],
               wanted: Optional[list[str]]) -> _StepPlan:
    sp = _StepPlan(number, ref, new, tol)
    old_f = {f.name: f for f in before.functions()}
    new_f = {f.name: f for f in after.functions()}
    changed = {n for n, f in new_f.items() if n not in old_f or _func_text(f) != _func_text(old_f[n])}
    changed |= set(old_f) - set(new_f)
    og, ng = _globals(before), _globals(after)
    changed_globals = {n for n in set(og) | set(ng) if og.get(n) != ng.get(n)}
    calls = _calls(after)

    def affected(name: str) -> bool:
        for g in _reach(calls, name):
            if g != name and g in changed:
                return True
            if g in new_f and _uses(new_f[g]) & changed_globals:
                return True
        return False

    names = [n for n in contracts if n in old_f and (wanted is None or n in wanted)]
    sp.order = tuple(contracts)
    direct_missing: dict[str, tuple[str, ...]] = {}
    for name in names:
        f0, f1 = old_f[name], new_f.get(name)
        if f1 is None:
            sp.entries[name] = FunctionResult(name, "not-checkable",
                                              reason=f"it is no longer defined in step {number}'s program")
            continue
        direct = name in changed
        if not direct and not affected(name) and wanted is None:
            continue  # functions named explicitly are run even when unchanged
        narrowed = narrowed_params(f0, f1)
        if narrowed is None:
            sp.entries[name] = FunctionResult(
                name, "not-checkable",
                reason=f"its signature changed: '{_signature_text(f0)}' became '{_signature_text(f1)}'")
            continue
        try:
            _plan(f0, contracts[name], sizes)
            _plan(f1, contracts[name], sizes)
        except _NotCheckable as e:
            sp.entries[name] = FunctionResult(name, "not-checkable", reason=str(e))
            continue
        except _MissingSizes as e:
            if direct or wanted is not None:
                direct_missing[name] = e.names
            else:
                sp.entries[name] = FunctionResult(
                    name, "skipped", reason=f"its own code did not change and there are no sizes for "
                                            f"{', '.join(e.names)}")
            continue
        sp.run.append(name)
        if narrowed:
            sp.narrowed[name] = narrowed
    # a changed function without sizes is fine if a checked caller runs it
    running_reach = {name: _reach(calls, name) for name in sp.run}
    errors = []
    for name, missing in direct_missing.items():
        by = next((r for r, reach in running_reach.items() if name in reach and r != name), None)
        if by is None or wanted is not None:
            errors.append(f"{name} needs {', '.join(missing)}")
        else:
            sp.entries[name] = FunctionResult(
                name, "covered", covered_by=by,
                reason=f"no sizes for {', '.join(missing)}; its new code runs inside {by}, which is checked")
    if errors:
        raise SpecError("--exec needs sizes: " + "; ".join(errors) +
                        " (give them with load(..., sizes={...}) or --size NAME=VALUE)")
    # changed functions without a contract must be reached by a checked one
    reached = set().union(*running_reach.values()) if running_reach else set()
    if wanted is None:
        for name in sorted(n for n in changed if n in new_f and n not in contracts):
            if name not in reached:
                sp.entries[name] = FunctionResult(
                    name, "not-checkable", reason="it changed, has no contract, and no checked function calls it")
    if not sp.run and not sp.entries:
        sp.note = "the step changed no checked function"
    return sp


def _run_one(b: _Built, function: str, outdir: Path, sanitize: bool, timeout_s: float) -> _Run:
    assert b.exe is not None
    env = run_env(SANITIZE_ENV if sanitize else None)
    try:
        proc = subprocess.run([str(b.exe), function, str(outdir)], capture_output=True, env=env,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return _Run(None, f"timed out after {timeout_s:g} s")
    except OSError as e:
        return _Run(None, f"could not run: {e}")
    stderr = proc.stderr.decode("utf-8", "replace")
    # debug info names files relative to gcc's working directory (the cache)
    stderr = stderr.replace(f"{b.exe.parent}/", "")
    lines = []
    for ln in stderr.splitlines():
        if ln.startswith("Shadow bytes around"):
            break  # the rest of an ASan report is a memory map
        if ln.strip() and not ln.startswith("====="):
            lines.append(ln)
    head = "\n".join(lines[:STDERR_LINES])
    if proc.returncode != 0:
        rc = proc.returncode
        if rc < 0:
            try:
                why = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                why = f"killed by signal {-rc}"
        elif rc in EXIT_CODES:
            why = EXIT_CODES[rc]
        else:
            why = f"exited with status {rc}"
        return _Run(None, why, head)
    plan = b.plans[function]
    outs: dict[str, array] = {}
    for name, elem, count, _ in plan.outputs():
        path = outdir / f"{name}.bin"
        try:
            data = path.read_bytes()
        except OSError:
            return _Run(None, f"the harness wrote no file for output '{name}'", head)
        a = array(elem.code)
        if len(data) != count * a.itemsize:
            return _Run(None, f"output '{name}' has {len(data)} bytes, expected {count * a.itemsize}", head)
        a.frombytes(data)
        outs[name] = a
    return _Run(outs, stderr=head)


def _unravel(i: int, dims: tuple[int, ...]) -> tuple[int, ...]:
    if not dims:
        return (i,)
    idx = []
    for d in reversed(dims):
        idx.append(i % d)
        i //= d
    return tuple(reversed(idx))


def compare(name: str, ref: array, got: array, tolerance: float, dims: tuple[int, ...] = (),
            scalar: bool = False) -> OutputResult:
    """Compare one output element by element (see the module's docstring for
    the pass rule and the error measures)."""
    n = len(ref)
    if ref.tobytes() == got.tobytes():
        return OutputResult(name, n)
    isfloat = ref.typecode in "fd"
    max_abs = max_rel = 0.0
    bad = 0
    first: Optional[Mismatch] = None
    inf = math.inf
    for i, (a, b) in enumerate(zip(ref, got)):
        if a == b:
            continue
        if isfloat and (a != a or b != b):
            if a != a and b != b:
                continue
            d = r = inf
            m = inf
        else:
            d = float(abs(a - b))
            m = float(max(abs(a), abs(b)))
            if d != d:  # inf - inf of the same sign cannot happen (a != b); -inf vs inf gives inf
                d = inf
            r = d / m if m > 0 else inf
        if d > max_abs:
            max_abs = d
        if r > max_rel:
            max_rel = r
        if tolerance > 0 and d < inf and d <= tolerance * max(1.0, m):
            continue  # (NaN against a number, and infinities, never pass)
        bad += 1
        if first is None:
            index = () if scalar else _unravel(i, dims)
            first = Mismatch(name, index, a, b, ref.typecode)
    return OutputResult(name, n, max_abs, max_rel, bad, first)


def _finish_step(sp: _StepPlan, before: Optional[_Built], after: Optional[_Built],
                 runs: Mapping[tuple[int, str], _Run], canon: Sequence[int]) -> StepResult:
    ref_label = "original" if sp.ref == 0 else f"step {sp.ref}"
    results: dict[str, FunctionResult] = dict(sp.entries)
    for name in sp.run:
        results[name] = _compare_function(name, sp, before, after, runs, canon)
    rank = {n: i for i, n in enumerate(sp.order)}
    ordered = tuple(sorted(results.values(), key=lambda r: rank.get(r.function, len(rank))))
    if any(r.failed for r in ordered):
        status = "fail"
    elif any(r.status == "pass" for r in ordered):
        status = "pass"
    elif any(r.status == "not-checkable" for r in ordered):
        status = "unchecked"
    elif ordered and all(r.status in ("covered", "skipped") for r in ordered):
        status = "unchecked"
    else:
        status = "unchanged"
    note = sp.note if status == "unchanged" else ""
    return StepResult(sp.step, ref_label, sp.tolerance, status, ordered, note)


def _compare_function(name: str, sp: _StepPlan, before: Optional[_Built], after: Optional[_Built],
                      runs: Mapping[tuple[int, str], _Run], canon: Sequence[int]) -> FunctionResult:
    ref_label = "original" if sp.ref == 0 else f"step {sp.ref}"
    assert before is not None and after is not None
    if after.error is not None:
        return FunctionResult(name, "fail", reason=f"step {sp.step}'s program does not build",
                              stderr="\n".join(after.error.diagnostics[:STDERR_LINES]))
    if before.error is not None:
        return FunctionResult(name, "not-checkable", reason=f"the reference ({ref_label}) does not build")
    r0 = runs[(canon[sp.ref], name)]
    r1 = runs[(canon[sp.new], name)]
    if r0.outputs is None:
        return FunctionResult(name, "crash", reason=f"the reference ({ref_label}) crashed: {r0.error}",
                              stderr=r0.stderr)
    if r1.outputs is None:
        return FunctionResult(name, "crash", reason=r1.error, stderr=r1.stderr)
    plan = after.plans[name]
    outs = []
    for out_name, elem, count, dims in plan.outputs():
        outs.append(compare(out_name, r0.outputs[out_name], r1.outputs[out_name], sp.tolerance, dims,
                            scalar=out_name == "return" or count == 1 and not dims))
    bad = [o for o in outs if not o.passed]
    return FunctionResult(
        name, "fail" if bad else "pass",
        elements=sum(o.elements for o in outs),
        max_abs_error=max((o.max_abs_error for o in outs), default=0.0),
        max_rel_error=max((o.max_rel_error for o in outs), default=0.0),
        first_mismatch=bad[0].first if bad else None, outputs=tuple(outs),
        reason=f"{sum(o.mismatches for o in bad)} element(s) differ" if bad else "",
        narrowed=sp.narrowed.get(name, ()))


__all__ = ["Mismatch", "OutputResult", "FunctionResult", "StepResult", "ExecReport", "check_step",
           "check_steps", "compare", "harness", "harness_program", "narrowed_params", "plan_call", "FORCE_INCLUDE"]
