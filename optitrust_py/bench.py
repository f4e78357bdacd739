"""`otp bench`: build a script's original and final programs as real code
(gcc BENCH_FLAGS: -O3 -march=native -fopenmp), check that the final program
computes what the original computes, and time both side by side, optionally
next to a numpy or torch formulation of the same kernel.

What is measured comes from a declaration in the script:

    bench("matmul", sizes={"M": 1024, "N": 1024, "K": 1024}, flops="2*M*N*K",
          numpy="C = A.reshape(M, K) @ B.reshape(K, N)")

`flops=` (reported as GFLOP/s) or `bytes=` (GB/s, for memory-bound kernels)
is an integer formula over the sizes, in the contract language (C
operators). `numpy=` / `torch=` is a Python statement run with every input
(`reads`/`modifies` pointer parameter) bound, by name, to a flat array of the
values the C code gets
(numpy arrays; torch tensors sharing their memory), the sizes bound as
numbers, and `np` / `torch` imported; it must leave each output of the
contract (`writes`/`modifies`) under its name (a scalar return value:
`result`), as an array of any shape with the right number of elements.
Read-only inputs are read-only arrays.

Inputs. Every buffer is allocated with the extent the contract's shape
gives (execcheck's planning), inputs are filled once from a fixed seed per
parameter (floats uniform in [-1, 1), signed integers in [-8, 7], unsigned
in [0, 15]), and every variant gets its own copy of the same values; outputs
start as NaN (integers: bytes 0xA5) for the checking call, and `modifies`
buffers are restored before every call, outside the timing.

Check. The checking call of each variant is compared with the original's:
`max_rel_err = max |got - ref| / max |ref|` over all elements of each output
(the largest difference relative to the largest magnitude of the original's
output), which a reordered float reduction keeps near `K * eps * E|term| /
max|C|` (about 1e-7 for a 1024-term dot product of [-1, 1) values) while an
element that is wrong by a relative 1e-5 of the scale is caught. It passes
at `max_rel_err <= TOLERANCE` (1e-5, or the declaration's `tolerance=`);
NaN or infinities where the original has a different value never pass. A
failing check stops before timing. (A sum of n same-sign terms, as in a
softmax denominator, drifts by about sqrt(n) * 6e-8 relative when it is
reordered: near 1e-5 at n ~ 30 000, where `tolerance=` must be raised.)

Timing. One fresh Python process (`python -m optitrust_py.bench JOB`) runs
every variant, started with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
MKL_NUM_THREADS set to `--threads` before numpy loads (torch also gets
`torch.set_num_threads`), so the C code and the library use the same
number of threads and the same inputs in one run. The original and the
final program are loaded with ctypes from two shared objects. Each variant
in turn: the checking call, warm-up calls until WARMUP_S has passed (which
also lets the previous variant's thread pool go idle), then the timed calls
(`time.perf_counter` around each call): `--repeats R` of them, or by default
up to DEFAULT_REPEATS, stopping after MIN_REPEATS once BUDGET_S has been
spent. Reported: median, min and max seconds, and the rate at the median.
"""
from __future__ import annotations

import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from . import ir
from .errors import CheckFailed, OtpError, ScriptError, SpecError

TOLERANCE = 1e-5
"""Largest max_rel_err (see the module's docstring) that passes, unless the
declaration gives `tolerance=`."""
DEFAULT_REPEATS = 10
MIN_REPEATS = 3
BUDGET_S = 1.0
"""Without --repeats, a variant stops being timed after MIN_REPEATS calls
once its timed calls have taken this long."""
WARMUP_S = 0.05
NOISY = 2.0
"""A variant whose median time is this many times its fastest is flagged as noisy."""
UNITS = {"flops": ("gflops", "GFLOP/s"), "bytes": ("gbps", "GB/s")}
"""Work unit -> (JSON key of the rate, column title)."""
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PROGRESS = "otp bench: "
"""How the measuring process says on stderr what it is running (named when it crashes)."""
RESULT_NAME = "result"
"""The name a library formulation gives a function's scalar return value."""

# ----------------------------------------------------------------- the declaration


@dataclass(frozen=True)
class BenchSpec:
    """A script's `bench(...)`: the function, default sizes, the work per
    call (`unit` is "flops" or "bytes"), and library formulations."""

    function: str
    sizes: tuple[tuple[str, float], ...]
    work: str
    unit: str
    formulations: tuple[tuple[str, str], ...] = ()
    tolerance: float = TOLERANCE

    def formulation(self, library: str) -> Optional[str]:
        return dict(self.formulations).get(library)


def declare(function: str, sizes: Optional[Mapping[str, float]], flops: Optional[str],
            bytes_: Optional[str], formulations: Mapping[str, Optional[str]],
            tolerance: float = TOLERANCE) -> BenchSpec:
    """A checked BenchSpec (ScriptError on a malformed one)."""
    if not isinstance(function, str) or not function.isidentifier():
        raise ScriptError(f"bench(): the first argument is the name of the C function to time, got {function!r}")
    if (flops is None) == (bytes_ is None):
        raise ScriptError("bench(): give exactly one of flops=\"...\" (compute-bound, reported as GFLOP/s) "
                          "or bytes=\"...\" (memory-bound, reported as GB/s)")
    unit, work = ("flops", flops) if flops is not None else ("bytes", bytes_)
    if not isinstance(work, str):
        raise ScriptError(f"bench(): {unit}= is a formula over the sizes in a string, e.g. \"2*M*N*K\"")
    _formula(work, unit)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise ScriptError(f"bench(): tolerance= is a relative error in [0, 1), got {tolerance!r}")
    for name, value in (sizes or {}).items():
        if not (isinstance(name, str) and isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ScriptError(f"bench(): sizes maps names to numbers, got {name!r}: {value!r}")
    stmts = []
    for lib, stmt in formulations.items():
        if stmt is None:
            continue
        if not isinstance(stmt, str):
            raise ScriptError(f"bench(): {lib}= is a Python statement in a string, got {stmt!r}")
        try:
            compile(stmt, f"<bench {lib}>", "exec")
        except SyntaxError as e:
            raise ScriptError(f"bench(): the {lib}= statement is not valid Python: {e.msg}") from None
        stmts.append((lib, stmt))
    return BenchSpec(function, tuple((sizes or {}).items()), work, unit, tuple(stmts), float(tolerance))


def _formula(text: str, unit: str) -> ir.Expr:
    """The parsed `flops=`/`bytes=` formula; a ScriptError (placed at the
    script's line by the runner) when it does not parse."""
    from .spec import parse_formula

    try:
        return parse_formula(text)
    except SpecError as e:
        raise ScriptError(f"bench(): cannot read {unit}={text!r}: {e.message}") from None


_declared: "weakref.WeakKeyDictionary[Any, BenchSpec]" = weakref.WeakKeyDictionary()


def record(session: Any, spec: BenchSpec) -> None:
    """Attach the script's declaration to its session (once)."""
    if session in _declared:
        raise ScriptError("bench() was already called: a script declares one benchmark")
    _declared[session] = spec


def declared(session: Any) -> Optional[BenchSpec]:
    return _declared.get(session)


# ----------------------------------------------------------------- results


@dataclass(frozen=True)
class Timing:
    """The timed calls of one variant (seconds) and its rate at the median."""

    times: tuple[float, ...]
    work: int
    unit: str

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def rate(self) -> float:
        """GFLOP/s or GB/s at the median time."""
        return self.work / self.median / 1e9 if self.median > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        return {"median_s": self.median, "min_s": min(self.times), "max_s": max(self.times),
                UNITS[self.unit][0]: self.rate, "repeats": len(self.times)}


@dataclass(frozen=True)
class BenchReport:
    """A benchmark's outcome. `failure` (a check failed: no timings) or
    `timings` for "original", "optimized" and the library, if any;
    `errors` holds each variant's max_rel_err against the original."""

    function: str
    sizes: dict[str, float]
    threads: int
    work: int
    unit: str
    library: Optional[str]
    tolerance: float
    errors: dict[str, float]
    timings: dict[str, Timing]
    failure: str = ""

    @property
    def ok(self) -> bool:
        return not self.failure

    def speedup(self, variant: str = "optimized", over: str = "original") -> float:
        """How many times faster `variant` is than `over` (median times)."""
        return self.timings[over].median / self.timings[variant].median

    def to_json(self, script: str, target: str) -> dict[str, Any]:
        out: dict[str, Any] = {"script": script, "target": target, "function": self.function,
                               "sizes": self.sizes, "threads": self.threads, "ok": self.ok,
                               "max_rel_err": _finite(self.errors.get("optimized", math.nan)),
                               "tolerance": self.tolerance}
        if self.failure:
            out["error"] = self.failure
            return out
        out["baseline"] = self.timings["original"].to_json()
        out["optimized"] = self.timings["optimized"].to_json()
        out["speedup"] = self.speedup()
        if self.library:
            out[self.library] = {**self.timings[self.library].to_json(),
                                 "max_rel_err": _finite(self.errors[self.library])}
            out[f"ratio_vs_{self.library}"] = self.speedup("optimized", self.library)
        return out


def _finite(x: float) -> Any:
    return x if math.isfinite(x) else str(x)


# ----------------------------------------------------------------- running a benchmark


def run_bench(original: ir.Program, final: ir.Program, contracts: Mapping[str, Any], spec: BenchSpec,
              overrides: Mapping[str, float], threads: int, repeats: Optional[int] = None,
              library: Optional[str] = None) -> BenchReport:
    """Build, check and time `spec.function` of `original` and `final` (and
    the `library` formulation). Bad input is an OtpError (exit 2); a crash of
    the C code is a CheckFailed; a failed comparison is a report with
    `failure` set."""
    from .build import BENCH_FLAGS, BuildFailed, compile_many
    from .contract import evaluate
    from .execcheck import FORCE_INCLUDE, plan_call
    from .printer import to_c

    if threads < 1:
        raise OtpError(f"--threads must be at least 1, got {threads}")
    if repeats is not None and repeats < 1:
        raise OtpError(f"--repeats must be at least 1, got {repeats}")
    require_library("numpy")
    statement = None
    if library is not None:
        require_library(library)
        statement = spec.formulation(library)
        if statement is None:
            raise ScriptError(f"--compare {library}: the script's bench() gives no {library}= formulation "
                              f"(e.g. bench(\"{spec.function}\", ..., {library}=\"...\"))")
    name = spec.function
    f0, f1 = original.function(name), final.function(name)
    if f0 is None or f1 is None:
        which = "original" if f0 is None else "final"
        raise ScriptError(f"bench(): the {which} program defines no function '{name}'")
    contract = contracts.get(name)
    if contract is None:
        raise SpecError(f"bench(): '{name}' has no contract, so otp cannot size its arrays "
                        f"(write one in specs/ or in the source)")
    if "static" in f1.decl.storage or "static" in f0.decl.storage:
        raise ScriptError(f"bench(): '{name}' is static, so it cannot be called from outside its file")
    sizes = _sizes(f0, spec, overrides)
    plan = plan_call(f0, contract, sizes)
    if plan != plan_call(f1, contract, sizes):
        raise ScriptError(f"bench(): the final program's '{name}' takes other parameters than the original's, "
                          f"so they cannot be run on the same inputs")
    values = {p.name: p.value for p in plan.params if p.role != "buffer"}
    try:
        work = evaluate(_formula(spec.work, spec.unit), {n: v for n, v in values.items() if isinstance(v, int)})
    except SpecError as e:
        raise ScriptError(f"bench(): cannot evaluate {spec.unit}={spec.work!r}: {e.message}") from None
    built = compile_many([(to_c(original), "original program"), (to_c(final), "final program")],
                         BENCH_FLAGS + FORCE_INCLUDE, kind="shared")
    for b in built:
        if isinstance(b, BuildFailed):
            raise b
    job = {"function": name, "libs": [["original", str(built[0])], ["optimized", str(built[1])]],
           "params": [_param_json(p) for p in plan.params],
           "ret": None if plan.ret is None else plan.ret.code,
           "sizes": values, "threads": threads, "tolerance": spec.tolerance, "repeats": repeats,
           "library": library, "statement": statement}
    result = _run_worker(job, threads)
    errors = {k: float(v) for k, v in result["errors"].items()}
    timings = {k: Timing(tuple(v), work, spec.unit) for k, v in result.get("times", {}).items()}
    return BenchReport(name, values, threads, work, spec.unit, library, spec.tolerance, errors, timings,
                       result.get("failure", ""))


def require_library(library: str) -> None:
    """OtpError (exit 2) unless `library` can be imported here."""
    import importlib.util

    if importlib.util.find_spec(library) is None:
        hint = "pip install 'otp[bench]'" if library == "numpy" else "pip install torch"
        what = "otp bench" if library == "numpy" else f"--compare {library}"
        raise OtpError(f"{what} needs {library}, which is not installed in this Python ({sys.executable}): {hint}")


def _sizes(f: ir.FuncDef, spec: BenchSpec, overrides: Mapping[str, float]) -> dict[str, float]:
    """The function's scalar arguments: the declaration's, then --size's."""
    scalars = [p.name for p in f.params if isinstance(p.type, (ir.Base, ir.EnumT))]
    known = ", ".join(str(s) for s in scalars) or "none"
    for source, given in (("bench(sizes=...)", dict(spec.sizes)), ("--size", overrides)):
        for n in given:
            if n not in scalars:
                raise OtpError(f"{source}: '{n}' is not a size of {f.name} (its scalar parameters: {known})")
    merged = {**dict(spec.sizes), **overrides}
    return {n: merged[n] for n in scalars if n is not None and n in merged}


def _param_json(p: Any) -> dict[str, Any]:
    return {"name": p.name, "role": p.role, "code": p.elem.code, "kind": p.elem.kind, "value": p.value,
            "count": p.count, "fill": p.fill, "output": p.output, "dims": list(p.dims)}


def _run_worker(job: dict[str, Any], threads: int) -> dict[str, Any]:
    """Run the measuring process; its result, or the error it reports."""
    from .build import run_env

    env = run_env({k: str(threads) for k in THREAD_ENV})
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
    with tempfile.TemporaryDirectory(prefix="otp-bench-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps({**job, "result": str(result_path)}))
        proc = subprocess.run([sys.executable, "-m", "optitrust_py.bench", str(job_path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if "error" in result:
                raise ScriptError(result["error"])
            return result  # type: ignore[no-any-return]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    doing = next((ln[len(PROGRESS):] for ln in reversed(lines) if ln.startswith(PROGRESS)), "")
    if proc.returncode < 0 and doing:
        import signal

        raise CheckFailed(f"the benchmark process was killed by {signal.Signals(-proc.returncode).name} while "
                          f"{doing} (otp run --exec --size ... finds the step that breaks it)")
    raise RuntimeError(f"the benchmark process failed (status {proc.returncode}): " + "\n".join(lines[-15:]))


# ----------------------------------------------------------------- the measuring process


def relative_error(ref: Any, got: Any) -> tuple[float, int]:
    """`max |got - ref| / max |ref|` (see the module's docstring) and the
    flat index of the worst element; inf when NaN or an infinity differs,
    or when the original's output is all zero and `got` is not."""
    import numpy as np

    a = np.asarray(ref, dtype=np.float64).ravel()
    b = np.asarray(got, dtype=np.float64).ravel()
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if same.all():
        return 0.0, 0
    diff = np.where(same, 0.0, np.abs(a - b))
    diff[np.isnan(diff)] = math.inf
    worst = int(np.argmax(diff))
    finite = np.abs(a[np.isfinite(a)])
    scale = float(finite.max()) if finite.size else 0.0
    if not math.isfinite(diff[worst]) or scale == 0:
        return math.inf, worst
    return float(diff[worst]) / scale, worst


def _unravel(i: int, dims: Sequence[int]) -> str:
    if len(dims) < 2:
        return f"[{i}]"
    idx = []
    for d in reversed(dims):
        idx.append(i % d)
        i //= d
    return "[" + ", ".join(map(str, reversed(idx))) + "]"


class _WorkerError(Exception):
    """A problem of the script's formulation, reported to the user."""


class _Variant:
    """One way of computing the outputs: its own buffers, a call to time."""

    what = "program"

    def __init__(self, label: str, job: dict[str, Any], pristine: dict[str, Any]) -> None:
        self.label, self.job, self.pristine = label, job, pristine
        self.buffers = {n: a.copy() for n, a in pristine.items()}
        self.ret: Any = None

    def prepare(self, poison: bool = False) -> None:
        """Restore `modifies` buffers (and with `poison`, fill `writes` ones)."""
        import numpy as np

        for p in self.job["params"]:
            if p["role"] != "buffer" or not p["output"]:
                continue
            buf = self.buffers[p["name"]]
            if p["fill"] == "random":
                np.copyto(buf, self.pristine[p["name"]])
            elif poison:
                if p["kind"] == "float":
                    buf.fill(np.nan)
                else:
                    buf.view(np.uint8).fill(0xA5)

    def call(self) -> None:
        raise NotImplementedError

    def outputs(self) -> dict[str, Any]:
        raise NotImplementedError

    def timed(self) -> float:
        self.prepare()
        t0 = time.perf_counter()
        self.call()
        return time.perf_counter() - t0


class _CVariant(_Variant):
    def __init__(self, label: str, job: dict[str, Any], pristine: dict[str, Any], lib: str) -> None:
        import ctypes

        import numpy as np

        super().__init__(label, job, pristine)
        try:
            fn = getattr(ctypes.CDLL(lib), job["function"])
        except AttributeError:
            raise _WorkerError(f"the {label} program exports no function '{job['function']}' "
                               f"(an inline function without an external definition?)") from None
        types, self.args = [], []
        for p in job["params"]:
            if p["role"] == "buffer":
                types.append(ctypes.c_void_p)
                self.args.append(ctypes.c_void_p(self.buffers[p["name"]].ctypes.data))
            else:
                t = np.ctypeslib.as_ctypes_type(np.dtype(p["code"]))
                types.append(t)
                self.args.append(t(p["value"]))
        fn.argtypes = types
        fn.restype = None if job["ret"] is None else np.ctypeslib.as_ctypes_type(np.dtype(job["ret"]))
        self.fn = fn

    def call(self) -> None:
        self.ret = self.fn(*self.args)

    def outputs(self) -> dict[str, Any]:
        import numpy as np

        outs = {p["name"]: self.buffers[p["name"]].copy() for p in self.job["params"] if p["output"]}
        if self.job["ret"] is not None:
            outs["return"] = np.array([self.ret])
        return outs


class _LibraryVariant(_Variant):
    what = "formulation"

    def __init__(self, label: str, job: dict[str, Any], pristine: dict[str, Any]) -> None:
        import numpy as np

        super().__init__(label, job, pristine)
        self.code = compile(job["statement"], f"<bench {label}>", "exec")
        self.base: dict[str, Any] = {"np": np, "numpy": np, **job["sizes"]}
        wrap: Any = None
        if label == "torch":
            import torch

            torch.set_num_threads(job["threads"])
            self.base["torch"] = torch
            wrap = torch.from_numpy
        for p in job["params"]:
            if p["fill"] == "random":  # inputs; `writes` outputs are the statement's to assign
                buf = self.buffers[p["name"]]
                if wrap is None and not p["output"]:
                    buf.flags.writeable = False
                self.base[p["name"]] = wrap(buf) if wrap else buf
        self.ns: dict[str, Any] = {}

    def call(self) -> None:
        self.ns = dict(self.base)
        try:
            exec(self.code, self.ns)
        except Exception as e:
            raise _WorkerError(f"the script's {self.label}= formulation raised {type(e).__name__}: {e}") from None

    def outputs(self) -> dict[str, Any]:
        import numpy as np

        outs = {}
        wanted = [(p["name"], p["name"], p["count"]) for p in self.job["params"] if p["output"]]
        if self.job["ret"] is not None:
            wanted.append(("return", RESULT_NAME, 1))
        for out, name, count in wanted:
            value = self.ns.get(name)
            if hasattr(value, "detach"):
                value = value.detach().cpu().numpy()
            arr = np.asarray(value).ravel() if isinstance(value, (np.ndarray, np.generic, int, float)) else None
            if arr is None or arr.size != count:
                got = "nothing" if value is None else type(value).__name__ + \
                    (f" with {arr.size} elements" if arr is not None else "")
                raise _WorkerError(f"the script's {self.label}= formulation must leave the output '{name}' "
                                   f"({count} elements) in a variable of that name; it left {got}")
            outs[out] = arr
        return outs


def _fill(p: dict[str, Any], rng: Any) -> Any:
    import numpy as np

    dtype, n = np.dtype(p["code"]), p["count"]
    if p["kind"] == "float":
        return rng.uniform(-1.0, 1.0, n).astype(dtype)
    lo, hi = {"int": (-8, 8), "uint": (0, 16), "bool": (0, 2)}[p["kind"]]
    return rng.integers(lo, hi, n).astype(dtype)


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    pristine = {}
    for p in job["params"]:
        if p["role"] == "buffer":
            seed = zlib.crc32(f"{job['function']}.{p['name']}".encode())
            pristine[p["name"]] = _fill(p, np.random.default_rng(seed)) if p["fill"] == "random" else \
                np.zeros(p["count"], np.dtype(p["code"]))
    # made in turn, so a library (and its thread pool) is only loaded after the C code is timed
    variants: list[Callable[[], _Variant]] = [
        functools.partial(_CVariant, label, job, pristine, lib) for label, lib in job["libs"]]
    if job["library"]:
        variants.append(functools.partial(_LibraryVariant, job["library"], job, pristine))
    errors: dict[str, float] = {}
    times: dict[str, list[float]] = {}
    reference: dict[str, Any] = {}
    for make in variants:
        v = make()
        print(f"{PROGRESS}running the {v.label} {v.what}", file=sys.stderr, flush=True)
        v.prepare(poison=True)
        spent = v.timed()
        outs = v.outputs()
        reference = reference or outs
        errors[v.label], failure = _check(v, outs, reference, job)
        if failure:
            return {"errors": errors, "failure": failure}
        while spent < WARMUP_S:
            spent += v.timed()
        times[v.label] = _timed_calls(v, job["repeats"])
    return {"errors": errors, "times": times}


def _check(v: _Variant, outs: dict[str, Any], reference: dict[str, Any], job: dict[str, Any]) -> tuple[float, str]:
    """The variant's max_rel_err against the original, and what it got wrong
    (read-only inputs changed, an output beyond the tolerance), if anything."""
    import numpy as np

    changed = [p["name"] for p in job["params"] if p["fill"] == "random" and not p["output"]
               and not np.array_equal(v.buffers[p["name"]], v.pristine[p["name"]])]
    if changed:
        return math.nan, f"the {v.label} {v.what} changed {', '.join(changed)}, which the contract says it only reads"
    worst = 0.0
    dims = {p["name"]: p["dims"] for p in job["params"]}
    for name, ref in reference.items():
        err, at = relative_error(ref, outs[name])
        worst = max(worst, err)
        if not err <= job["tolerance"]:
            where = name + ("" if name == "return" else _unravel(at, dims[name]))
            return worst, (f"the {v.label} {v.what} computes other values than the original program: output "
                           f"{name} has max_rel_err {err:.3g} (max |difference| / max |original|; tolerance "
                           f"{job['tolerance']:g}); worst at {where}: original {ref.ravel()[at]:.9g}, "
                           f"{v.label} {outs[name].ravel()[at]:.9g}")
    return worst, ""


def _timed_calls(v: _Variant, repeats: Optional[int]) -> list[float]:
    times: list[float] = []
    while len(times) < (repeats or DEFAULT_REPEATS):
        times.append(v.timed())
        if repeats is None and len(times) >= MIN_REPEATS and sum(times) >= BUDGET_S:
            break
    return times


def _worker(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    try:
        result = _measure(job)
    except _WorkerError as e:
        result = {"error": str(e)}
    Path(job["result"]).write_text(json.dumps(result))


# ----------------------------------------------------------------- the table


def _seconds(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t * 1e9:.3g} ns"


def print_report(console: Any, report: BenchReport, flags: Sequence[str]) -> None:
    """The benchmark as a rich table, with what was run and the check's figures."""
    from rich.table import Table
    from rich.text import Text

    sizes = " ".join(f"{k}={v:g}" for k, v in report.sizes.items())
    console.print(Text(f"{report.function}  {sizes}  threads {report.threads}  gcc {' '.join(flags)}", "bold"))
    errs = ", ".join(f"{k} {v:.2g}" for k, v in report.errors.items() if k != "original")
    console.print(Text(f"outputs vs the original: max_rel_err {errs or '-'} (tolerance {report.tolerance:g})",
                       "green" if report.ok else "bold red"))
    if not report.ok:
        return
    table = Table()
    columns = ["variant", "median", "min", "max", UNITS[report.unit][1], "vs original"]
    if report.library:
        columns.append(f"vs {report.library}")
    for c in columns:
        table.add_column(c, justify="left" if c == "variant" else "right")
    for label, t in report.timings.items():
        row = [label, _seconds(t.median), _seconds(min(t.times)), _seconds(max(t.times)), f"{t.rate:.3g}",
               f"{report.speedup(label):.2f}×"]
        if report.library:
            row.append(f"{report.speedup(label, report.library):.2f}×")
        table.add_row(*row, style="bold" if label == "optimized" else "")
    console.print(table)
    noisy = [k for k, t in report.timings.items() if t.median > NOISY * min(t.times)]
    if noisy:
        console.print(Text(f"⚠ {', '.join(noisy)}: the median is more than {NOISY:g}× the fastest call; the machine "
                           f"is busy or its cores are oversubscribed (fewer --threads give steadier times)", "yellow"))
    reps = ", ".join(f"{k} {len(t.times)}" for k, t in report.timings.items())
    console.print(Text(f"timed calls: {reps}; 'vs X' is X's median time over the variant's (higher is faster)",
                       "dim"))


if __name__ == "__main__":
    _worker(sys.argv[1])
