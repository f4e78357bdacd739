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

Prepared inputs and variants. A kernel that takes its inputs in another
form than the original function (weights quantized once, ahead of time) is
timed through `call=`, a C call whose arguments name the function's
parameters and buffers that `setup=` prepares. The setup calls run once
per program, untimed, before its checking call; the buffers they write
that the function does not have are sized and typed by the contracts of
the final program's callees (the steps that made them gave them one):

    bench("matvec", ..., setup="quantize_q8(D, N, W, Wq, Ws)",
          call="matvec_q8(N, D, Wq, Ws, x, y)",
          variants={"fp32": fp32_ending, "runq": "../c_sources/matvec_q8.c"})

`variants=` adds named programs timed side by side: a script ending (a
function of the script whose steps are applied to the loaded program, as
if the script had ended that way) or a C file (a reference written by
hand). A program that defines the callee of `call=` is timed through it,
after its own setup; any other through the function itself, like the
original. Every variant's outputs are checked against the original's.

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
import re
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

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
    setup: tuple["CallText", ...] = ()
    call: Optional["CallText"] = None
    variants: tuple[tuple[str, Any], ...] = ()
    """(name, script ending or absolute path of a C file)"""

    def formulation(self, library: str) -> Optional[str]:
        return dict(self.formulations).get(library)


@dataclass(frozen=True)
class CallText:
    """A C call whose arguments are names: `quantize_q8(D, N, W, Wq, Ws)`."""

    function: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.function}({', '.join(self.args)})"


def parse_call(text: Any, what: str) -> CallText:
    """The call `text` (ScriptError unless it is `f(a, b, ...)` with names)."""
    m = re.fullmatch(r"\s*([A-Za-z_]\w*)\s*\((.*)\)\s*", text) if isinstance(text, str) else None
    args = tuple(a.strip() for a in m.group(2).split(",")) if m and m.group(2).strip() else ()
    if m is None or not all(a.isidentifier() for a in args):
        raise ScriptError(f"bench(): {what} is a C call whose arguments are names, e.g. "
                          f"\"quantize_q8(D, N, W, Wq, Ws)\", got {text!r}")
    return CallText(m.group(1), args)


def declare(function: str, sizes: Optional[Mapping[str, float]], flops: Optional[str],
            bytes_: Optional[str], formulations: Mapping[str, Optional[str]],
            tolerance: float = TOLERANCE, setup: Union[str, Sequence[str], None] = None,
            call: Optional[str] = None, variants: Optional[Mapping[str, Any]] = None) -> BenchSpec:
    """A checked BenchSpec (ScriptError on a malformed one); C file variants
    must be given as absolute paths (script.bench resolves them)."""
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
    setups = tuple(parse_call(t, "setup=") for t in ([setup] if isinstance(setup, str) else setup or ()))
    if setups and call is None:
        raise ScriptError("bench(): setup= prepares inputs for call=; give the call that uses them")
    timed = parse_call(call, "call=") if call is not None else None
    if variants is not None and not isinstance(variants, Mapping):
        raise ScriptError(f"bench(): variants= maps names to script endings or C files, got {variants!r}")
    named = []
    for name, v in (variants or {}).items():
        if not (isinstance(name, str) and name.isidentifier()) or name in ("original", "optimized") \
                or name in formulations:
            raise ScriptError(f"bench(): a variant's name is an identifier other than original, optimized and "
                              f"the libraries, got {name!r}")
        if not (callable(v) or isinstance(v, str) and Path(v).is_absolute()):
            raise ScriptError(f"bench(): variant {name!r} is a script ending (a function of the script) or the "
                              f"path of a C file, got {v!r}")
        if isinstance(v, str) and not Path(v).is_file():
            raise ScriptError(f"bench(): variant {name!r}: no such C file: {v}")
        named.append((name, v))
    return BenchSpec(function, tuple((sizes or {}).items()), work, unit, tuple(stmts), float(tolerance),
                     setups, timed, tuple(named))


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
    `timings` for "original", "optimized", the `variants` and the library,
    if any; `errors` holds each one's max_rel_err against the original."""

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
    variants: tuple[str, ...] = ()

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
                               "tolerance": self.tolerance, "unit": UNITS[self.unit][1], "library": self.library}
        if self.failure:
            out["error"] = self.failure
            return out
        out["baseline"] = self.timings["original"].to_json()
        out["optimized"] = self.timings["optimized"].to_json()
        out["speedup"] = self.speedup()
        if self.variants:
            out["variants"] = {v: {**self.timings[v].to_json(), "max_rel_err": _finite(self.errors[v])}
                               for v in self.variants}
            for v in self.variants:
                out[f"ratio_vs_{v}"] = self.speedup("optimized", v)
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
              library: Optional[str] = None, progress: Optional[Callable[[str], None]] = None) -> BenchReport:
    """Build, check and time `spec.function` of `original` and `final` (the
    final one through `spec.call` when given), the declared variants and
    the `library` formulation; `progress` is told what the measuring
    process starts running (`running the optimized program`). Bad input is an OtpError (exit 2); a crash of
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
    f0 = original.function(name)
    if f0 is None:
        raise ScriptError(f"bench(): the original program defines no function '{name}'")
    contract = contracts.get(name)
    if contract is None:
        raise SpecError(f"bench(): '{name}' has no contract, so otp cannot size its arrays "
                        f"(write one in specs/ or in the source)")
    sizes = _sizes(f0, spec, overrides)
    plan = plan_call(f0, contract, sizes)
    values = {p.name: p.value for p in plan.params if p.role != "buffer"}
    try:
        work = evaluate(_formula(spec.work, spec.unit), {n: v for n, v in values.items() if isinstance(v, int)})
    except SpecError as e:
        raise ScriptError(f"bench(): cannot evaluate {spec.unit}={spec.work!r}: {e.message}") from None
    programs = [("original", original), ("optimized", final)] + \
        [(label, _variant_program(label, v, original, contracts)) for label, v in spec.variants]
    prepared = _prepared(final, contracts, spec, plan)
    libs = [_timed_call(label, p, final, plan, spec, prepared, contracts) for label, p in programs]
    built = compile_many([(to_c(p), f"{label} program") for label, p in programs],
                         BENCH_FLAGS + FORCE_INCLUDE, kind="shared")
    for b in built:
        if isinstance(b, BuildFailed):
            raise b
    job = {"function": name, "libs": [{**lib, "path": str(b)} for lib, b in zip(libs, built)],
           "params": [_param_json(p) for p in plan.params], "prepared": list(prepared.values()),
           "ret": None if plan.ret is None else plan.ret.code,
           "sizes": values, "threads": threads, "tolerance": spec.tolerance, "repeats": repeats,
           "library": library, "statement": statement}
    result = _run_worker(job, threads, progress)
    errors = {k: float(v) for k, v in result["errors"].items()}
    timings = {k: Timing(tuple(v), work, spec.unit) for k, v in result.get("times", {}).items()}
    return BenchReport(name, values, threads, work, spec.unit, library, spec.tolerance, errors, timings,
                       result.get("failure", ""), tuple(label for label, _ in spec.variants))


def _variant_program(label: str, variant: Any, original: ir.Program, contracts: Mapping[str, Any]) -> ir.Program:
    """A variant's program: a C file as written, or the original program
    transformed by a script ending (its steps run unchecked: the variant's
    outputs are checked against the original's before it is timed)."""
    from .frontend import parse_file
    from .session import Session, StepFailed

    if isinstance(variant, str):
        return parse_file(variant)
    with Session() as s:
        s.program = s.original = original
        s.contracts = dict(contracts)
        try:
            variant()
        except StepFailed as e:
            raise ScriptError(f"bench(): variant '{label}': {e.message}") from None
        except OtpError:
            raise
        except Exception as e:  # the script's own code: reported, like a script that raises
            raise ScriptError(f"bench(): variant '{label}' raised {type(e).__name__}: {e}") from None
        return s.current()


def _contract_of(program: ir.Program, name: str, contracts: Mapping[str, Any]) -> tuple[ir.FuncDef, Any]:
    from .spec import contract_from_clauses

    f = program.function(name)
    if f is None:
        raise ScriptError(f"bench(): the final program defines no function '{name}'")
    c = contracts.get(name) or contract_from_clauses(f)
    if c is None:
        raise SpecError(f"bench(): '{name}' has no contract, so otp cannot size its arrays")
    return f, c


def _bound_plan(program: ir.Program, call: CallText, plan: Any, contracts: Mapping[str, Any]) -> list[Any]:
    """The parameters of `call`'s callee, planned at the sizes its scalar
    arguments take (each a size of the benchmarked function)."""
    from .execcheck import plan_call

    f, c = _contract_of(program, call.function, contracts)
    if len(f.params) != len(call.args):
        raise ScriptError(f"bench(): {call} passes {len(call.args)} arguments; {f.name} takes {len(f.params)}")
    scalars = {p.name: p.value for p in plan.params if p.role != "buffer"}
    bound = {p.name: scalars[a] for p, a in zip(f.params, call.args) if a in scalars and p.name}
    return list(plan_call(f, c, bound).params)


def _prepared(final: ir.Program, contracts: Mapping[str, Any], spec: BenchSpec, plan: Any) -> dict[str, Any]:
    """The buffers the setup calls write that the function does not have,
    sized and typed by the setup callees' contracts."""
    own = {p.name for p in plan.params}
    out: dict[str, Any] = {}
    for call in spec.setup:
        for p, arg in zip(_bound_plan(final, call, plan, contracts), call.args):
            if p.role == "buffer" and arg not in own and arg not in out:
                if not p.output:
                    raise ScriptError(f"bench(): setup {call} reads '{arg}', which is neither a parameter of "
                                      f"{spec.function} nor written by an earlier setup call")
                out[arg] = {**_param_json(p), "name": arg, "fill": "setup", "output": False}
    return out


def _timed_call(label: str, program: ir.Program, final: ir.Program, plan: Any, spec: BenchSpec,
                prepared: Mapping[str, Any], contracts: Mapping[str, Any]) -> dict[str, Any]:
    """What the measuring process calls in a program: `spec.call` (after the
    setup calls) where the program defines its callee, else the function
    itself, which must take the original's parameters. The call's buffers
    are planned from the final program's callee, whose contract the step
    that made it gave; another program's callee must take the same types."""
    from .execcheck import plan_call
    from .printer import type_name

    name = spec.function
    call = spec.call if label == "optimized" or label != "original" and spec.call \
        and program.function(spec.call.function) else None
    if call is None:
        f = program.function(name)
        if f is None:
            raise ScriptError(f"bench(): the {label} program defines no function '{name}'")
        if "static" in f.decl.storage:
            raise ScriptError(f"bench(): '{name}' is static, so it cannot be called from outside its file")
        if plan_call(f, contracts[name], {p.name: p.value for p in plan.params if p.role != "buffer"}) != plan:
            raise ScriptError(f"bench(): the {label} program's '{name}' takes other parameters than the "
                              f"original's, so they cannot be run on the same inputs")
        return {"label": label, "function": name, "args": [p.name for p in plan.params], "setup": []}
    for needed in [call] + list(spec.setup) if label != "optimized" else ():
        mine, theirs = program.function(needed.function), final.function(needed.function)
        if mine is None or theirs is None or \
                [type_name(q.type) for q in mine.params] != [type_name(q.type) for q in theirs.params]:
            raise ScriptError(f"bench(): the {label} program defines {call.function} but no {needed.function} "
                              f"taking the final program's parameter types")
    known = {p.name: p for p in plan.params}
    for p, arg in zip(_bound_plan(final, call, plan, contracts), call.args):
        have = known.get(arg)
        code = have.elem.code if have is not None else prepared[arg]["code"] if arg in prepared else None
        if code is None:
            raise ScriptError(f"bench(): {call} passes '{arg}', which is neither a parameter of {name} nor "
                              f"prepared by setup=")
        if code != p.elem.code or p.output and (have is None or not have.output):
            raise ScriptError(f"bench(): {call} passes '{arg}' where {call.function} takes another type or "
                              f"writes it")
    setup = [{"function": c.function, "args": list(c.args)} for c in spec.setup]
    return {"label": label, "function": call.function, "args": list(call.args), "setup": setup}


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


def _run_worker(job: dict[str, Any], threads: int, progress: Optional[Callable[[str], None]] = None) \
        -> dict[str, Any]:
    """Run the measuring process; its result, or the error it reports. Its
    progress lines on stderr go to `progress` as they come."""
    from .build import run_env

    env = run_env({k: str(threads) for k in THREAD_ENV})
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (package_root, env.get("PYTHONPATH")) if x)
    with tempfile.TemporaryDirectory(prefix="otp-bench-") as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps({**job, "result": str(result_path)}))
        with subprocess.Popen([sys.executable, "-m", "optitrust_py.bench", str(job_path)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as proc:
            assert proc.stderr is not None
            lines = [ln.rstrip("\n") for ln in _reported(proc.stderr, progress)]
        if result_path.is_file():
            result = json.loads(result_path.read_text())
            if "error" in result:
                raise ScriptError(result["error"])
            return result  # type: ignore[no-any-return]
    lines = [ln for ln in lines if ln.strip()]
    doing = next((ln[len(PROGRESS):] for ln in reversed(lines) if ln.startswith(PROGRESS)), "")
    if proc.returncode < 0 and doing:
        import signal

        raise CheckFailed(f"the benchmark process was killed by {signal.Signals(-proc.returncode).name} while "
                          f"{doing} (otp run --exec --size ... finds the step that breaks it)")
    raise RuntimeError(f"the benchmark process failed (status {proc.returncode}): " + "\n".join(lines[-15:]))


def _reported(stream: Iterable[str], progress: Optional[Callable[[str], None]]) -> Iterator[str]:
    """The lines of `stream`, each progress line also given to `progress`."""
    for line in stream:
        if progress is not None and line.startswith(PROGRESS):
            progress(line[len(PROGRESS):].strip())
        yield line


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
    """A C program: its setup calls run once (untimed), then its timed call."""

    def __init__(self, label: str, job: dict[str, Any], pristine: dict[str, Any], lib: dict[str, Any]) -> None:
        import ctypes

        import numpy as np

        super().__init__(label, job, pristine)
        dll = ctypes.CDLL(lib["path"])
        self.fn, self.args = self._bind(dll, lib["function"], lib["args"])
        self.fn.restype = None if job["ret"] is None or lib["function"] != job["function"] else \
            np.ctypeslib.as_ctypes_type(np.dtype(job["ret"]))
        for setup in lib["setup"]:
            fn, args = self._bind(dll, setup["function"], setup["args"])
            fn.restype = None
            fn(*args)

    def _bind(self, dll: Any, function: str, names: Sequence[str]) -> tuple[Any, list[Any]]:
        """The C function and its arguments: buffers by address, sizes by value."""
        import ctypes

        import numpy as np

        try:
            fn = getattr(dll, function)
        except AttributeError:
            raise _WorkerError(f"the {self.label} program exports no function '{function}' "
                               f"(an inline function without an external definition?)") from None
        scalars = {p["name"]: p for p in self.job["params"] if p["role"] != "buffer"}
        types, args = [], []
        for n in names:
            if n in self.buffers:
                types.append(ctypes.c_void_p)
                args.append(ctypes.c_void_p(self.buffers[n].ctypes.data))
            else:
                t = np.ctypeslib.as_ctypes_type(np.dtype(scalars[n]["code"]))
                types.append(t)
                args.append(t(scalars[n]["value"]))
        fn.argtypes = types
        return fn, args

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
    for p in job["prepared"]:  # filled by each program's setup calls
        pristine[p["name"]] = np.zeros(p["count"], np.dtype(p["code"]))
    # made in turn, so a library (and its thread pool) is only loaded after the C code is timed
    variants: list[Callable[[], _Variant]] = [
        functools.partial(_CVariant, lib["label"], job, pristine, lib) for lib in job["libs"]]
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
    columns += [f"vs {v}" for v in report.variants]
    if report.library:
        columns.append(f"vs {report.library}")
    for c in columns:
        table.add_column(c, justify="left" if c == "variant" else "right")
    for label, t in report.timings.items():
        row = [label, _seconds(t.median), _seconds(min(t.times)), _seconds(max(t.times)), f"{t.rate:.3g}",
               f"{report.speedup(label):.2f}×"] + [f"{report.speedup(label, v):.2f}×" for v in report.variants]
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
