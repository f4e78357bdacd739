"""`otp bench --target cuda`: build the script's CUDA ending with nvcc,
check it against the original C program, time it on the GPU.

The final program is emitted (cuda_emit) and built as a shared library whose
wrapper takes device pointers; the original is built with gcc as for the CPU
bench. Inputs are the CPU bench's (contract-shaped, the same seeds), held
in torch tensors on the GPU; outputs the function only writes start as
NaN (an array it modifies keeps its contents). Checks, before any timing:
at the script's `load(sizes=...)` (small, with tails) the GPU outputs must
match the original's run on the CPU; at the bench sizes they
must match the library's (`--compare torch`) or, without it, the original's
(slow for big kernels: the original is naive C on one core). A script's
`setup=` and `call=` are honoured as on the CPU (quantize.py): the setup
calls run once on the GPU, untimed, into buffers sized by their callees'
contracts, and the call is what is checked and timed. Timing: after
warm-up calls, `--repeats` calls (default REPEATS), each between two CUDA
events and after a read of FLUSH_BYTES (a sum) that evicts the inputs
from the L2 cache (untimed: before the first event), all queued without
waiting, so the time is the GPU's and not the host's launch overhead (a
decode step of 100 us, or torch's Python, would otherwise be timed with
the gaps between its launches), and no input is read from the cache of
the call before.
The eviction reads rather than writes: a write leaves the L2 full of
dirty lines, and the timed call pays for writing them back (H100, gqa
decode with bf16 caches at batch 8, side by side: torch's formulation
72.7 us after a 256 MB write, 63.1 after a 256 MB read; otp's 75.4 and
68.1). Reported: median, min, max, rate at the median, and the ratio to
torch (TF32 off, so an fp32 product is fp32). A torch= formulation may
write `bf16(x)` for the input x converted to bfloat16 once, untimed (see
_bf16). Needs torch with a CUDA device.

A parameter the script narrowed to otp_bf16 (matrix.set_precision of a
parameter: the caller holds the array in bfloat16) is a bfloat16 tensor on
the GPU (2 bytes a value), filled once, untimed, from the same random
inputs rounded as otp_to_bf16 rounds (`bf16_round`); the torch= formulation
sees that tensor. The reference stays the original function run on the CPU
on the unrounded inputs, so the outputs (the narrowed arrays it writes
included, read back as floats) differ by the rounding: the check uses the
bench's `tolerance=` (reported with the errors), which such a script must
set to what bfloat16 inputs allow. Its `bytes=` formula counts what the
kernel moves, 2 bytes a cached value.
"""
from __future__ import annotations

import ctypes
import statistics
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from . import ir
from .bench import (BenchSpec, _fill, _formula, _param_json, _prepared, _sizes, declared, relative_error,
                    require_library)
from .errors import CheckFailed, OtpError, ScriptError, SpecError, ToolError

REPEATS = 30
WARMUP = 3
FLUSH_BYTES = 256 << 20  # five times the H100's L2 (50 MB)


@dataclass(frozen=True)
class CudaTiming:
    times: tuple[float, ...]
    work: int

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def rate(self) -> float:
        return self.work / self.median / 1e9


@dataclass(frozen=True)
class CudaReport:
    function: str
    sizes: Mapping[str, Any]
    unit: str
    errors: Mapping[str, float]
    timings: Mapping[str, CudaTiming]
    failure: str = ""
    tolerance: float = 0.0
    bf16: tuple[str, ...] = ()
    """The parameters held in bfloat16 on the GPU."""

    def to_json(self, script: str) -> dict[str, Any]:
        out: dict[str, Any] = {"script": script, "target": "cuda", "function": self.function,
                               "sizes": dict(self.sizes), "unit": self.unit, "errors": dict(self.errors),
                               "tolerance": self.tolerance, "bf16": list(self.bf16), "failure": self.failure or None}
        for label, t in self.timings.items():
            out[label] = {"median_s": t.median, "min_s": min(t.times), "max_s": max(t.times),
                          "rate": t.rate(), "repeats": len(t.times)}
        if "gpu" in self.timings and "torch" in self.timings:
            out["ratio_vs_torch"] = self.timings["torch"].median / self.timings["gpu"].median
        return out


def _torch() -> Any:
    require_library("torch")
    import torch

    if not torch.cuda.is_available():
        raise ToolError("otp bench --target cuda needs a CUDA GPU, and torch sees none on this machine "
                        "(otp run --target cuda still emits and compiles final.cu)")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def _plan(f: ir.FuncDef, contract: Any, sizes: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The call plan at `sizes` and the contract-shaped inputs (the CPU bench's seeds)."""
    import numpy as np

    from .execcheck import plan_call

    plan = plan_call(f, contract, dict(sizes))
    arrays = {}
    for p in plan.params:
        if p.role == "buffer":
            j = _param_json(p)
            arrays[p.name] = _fill(j, np.random.default_rng(zlib.crc32(f"{f.name}.{p.name}".encode()))) \
                if p.fill == "random" else np.zeros(p.count, np.dtype(p.elem.code))
    return plan, arrays


def bf16_round(x: Any) -> Any:
    """float32 values rounded to bfloat16 as otp_to_bf16 (include/otp.h)
    rounds them: saturated at the largest finite bfloat16, then to nearest,
    ties to even (a NaN stays a NaN); still float32, so that converting
    them to torch.bfloat16 is exact."""
    import numpy as np

    largest = np.array(0x7F7F0000, np.uint32).view(np.float32)
    v = np.clip(np.asarray(x, np.float32), -largest, largest)
    bits = v.view(np.uint32).copy()
    finite = (bits & 0x7FFFFFFF) <= 0x7F800000
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & 1)) & np.uint32(0xFFFF0000)
    return np.where(finite, rounded, bits).astype(np.uint32).view(np.float32)


def narrowed(original: ir.Program, final: ir.Program, spec: BenchSpec) -> tuple[str, ...]:
    """The parameters of the benchmarked function that the final program
    takes in bfloat16 (the original in float); a ScriptError when it takes
    other types than the original's in another way."""
    from .execcheck import narrowed_params

    if spec.call is not None:
        return ()  # the call's buffers are planned from its callee's contract (bench._prepared)
    f0, f1 = original.function(spec.function), final.function(spec.function)
    got = narrowed_params(f0, f1) if f0 is not None and f1 is not None else ()
    if got is None:
        raise ScriptError(f"bench(): the final program's '{spec.function}' takes other parameter types than the "
                          f"original's, so they cannot be run on the same inputs")
    return got


def device_inputs(arrays: Mapping[str, Any], bf16: Sequence[str]) -> dict[str, tuple[Any, bool]]:
    """The host values each device buffer starts from, and whether it is a
    bfloat16 tensor: the inputs of the parameters in `bf16` rounded once,
    the others as they are (copies)."""
    return {k: (bf16_round(v), True) if k in bf16 else (v.copy(), False) for k, v in arrays.items()}


def _args(plan: Any, buffers: Mapping[str, int], names: Optional[Sequence[str]] = None) -> list[Any]:
    """ctypes arguments for the parameters `names` (default: the plan's, in
    order): buffers by address, sizes by value."""
    import numpy as np

    scalars = {p.name: p for p in plan.params if p.role != "buffer"}
    out: list[Any] = []
    for n in names if names is not None else [p.name for p in plan.params]:
        if n in buffers:
            out.append(ctypes.c_void_p(buffers[n]))
        else:
            p = scalars[n]
            out.append(np.ctypeslib.as_ctypes_type(np.dtype(p.elem.code))(p.value))
    return out


def _outputs(plan: Any) -> list[str]:
    return [p.name for p in plan.params if p.role == "buffer" and p.output]


def _poisoned(plan: Any) -> list[str]:
    """The outputs that start as NaN: those the function only writes (an
    array it modifies, such as a KV cache, keeps its random contents: it
    is read too)."""
    return [p.name for p in plan.params if p.role == "buffer" and p.output and p.fill == "poison"]


def _cpu_run(lib: Any, name: str, plan: Any, arrays: Mapping[str, Any]) -> dict[str, Any]:
    import numpy as np

    mine = {k: v.copy() for k, v in arrays.items()}
    for o in _poisoned(plan):
        if np.issubdtype(mine[o].dtype, np.floating):
            mine[o][:] = np.nan
    getattr(lib, name)(*_args(plan, {k: v.ctypes.data for k, v in mine.items()}))
    return {o: mine[o] for o in _outputs(plan)}


class _Gpu:
    """The inputs on the GPU and the CUDA wrapper bound to them: the
    script's `call=` after its `setup=` calls (run once, untimed, into the
    buffers they prepare), else the benchmarked function itself."""

    def __init__(self, torch: Any, lib: Any, spec: BenchSpec, plan: Any, arrays: Mapping[str, Any],
                 prepared: Mapping[str, Any], bf16: Sequence[str] = ()) -> None:
        import numpy as np

        self.torch = torch
        self.plan = plan
        self.tensors = {k: torch.from_numpy(v).cuda().to(torch.bfloat16) if half else torch.from_numpy(v).cuda()
                        for k, (v, half) in device_inputs(arrays, bf16).items()}
        self.tensors.update({k: torch.from_numpy(np.zeros(j["count"], np.dtype(j["code"]))).cuda()
                             for k, j in prepared.items()})
        for o in _poisoned(plan):
            if self.tensors[o].is_floating_point():
                self.tensors[o].fill_(float("nan"))
        for c in spec.setup:
            self._bound(lib, c.function, c.args)()
        self.call = self._bound(lib, spec.call.function, spec.call.args) if spec.call else \
            self._bound(lib, spec.function, None)

    def _bound(self, lib: Any, function: str, names: Optional[Sequence[str]]) -> Callable[[], None]:
        fn = getattr(lib, function)
        fn.restype = None
        args = _args(self.plan, {k: t.data_ptr() for k, t in self.tensors.items()}, names)
        return lambda: fn(*args)

    def outputs(self) -> dict[str, Any]:
        self.torch.cuda.synchronize()
        return {o: _host(self.torch, self.tensors[o]) for o in _outputs(self.plan)}


def _host(torch: Any, t: Any) -> Any:
    """A tensor's values as a numpy array (bfloat16, which numpy lacks, as float32)."""
    return (t.float() if t.dtype == torch.bfloat16 else t).cpu().numpy()


def _bf16(torch: Any) -> Callable[[Any], Any]:
    """`bf16(x)` in a torch= formulation: the input x as a bfloat16 tensor,
    converted at its first use (a warm-up call) and kept, so that the timed
    calls measure the library's kernel on bfloat16 inputs alone."""
    kept: dict[int, Any] = {}

    def convert(t: Any) -> Any:
        if t.data_ptr() not in kept:
            kept[t.data_ptr()] = t.to(torch.bfloat16)
        return kept[t.data_ptr()]
    return convert


def _library(torch: Any, statement: str, gpu: _Gpu) -> tuple[Callable[[], None], Callable[[], dict[str, Any]]]:
    """The torch formulation over the same GPU tensors: a call and its outputs."""
    import numpy as np

    code = compile(statement, "<torch=>", "exec")
    scope: dict[str, Any] = {}
    env = {"torch": torch, "np": np, "bf16": _bf16(torch),
           **{p.name: p.value for p in gpu.plan.params if p.role != "buffer"}}

    def call() -> None:
        scope.clear()
        scope.update(env, **{k: t for k, t in gpu.tensors.items()})
        exec(code, scope)

    def outputs() -> dict[str, Any]:
        torch.cuda.synchronize()
        return {o: scope[o].reshape(-1).float().cpu().numpy() for o in _outputs(gpu.plan)}
    return call, outputs


def _timed(torch: Any, call: Callable[[], None], repeats: int) -> tuple[float, ...]:
    for _ in range(WARMUP):
        call()
    flush = torch.zeros(FLUSH_BYTES // 4, dtype=torch.int32, device="cuda")
    total = torch.zeros((), dtype=torch.int32, device="cuda")
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    torch.cuda.synchronize()
    for start, end in events:
        torch.sum(flush, dim=0, dtype=torch.int32, out=total)
        start.record()
        call()
        end.record()
    torch.cuda.synchronize()
    return tuple(start.elapsed_time(end) / 1e3 for start, end in events)


def _compare(label: str, ref: Mapping[str, Any], got: Mapping[str, Any], tolerance: float) -> tuple[float, str]:
    worst = 0.0
    for name, r in ref.items():
        err, at = relative_error(r, got[name])
        worst = max(worst, err)
        if not err <= tolerance:
            return worst, (f"{label}: output {name} has max_rel_err {err:.3g} (tolerance {tolerance:g}); worst at "
                           f"flat index {at}: expected {r.ravel()[at]:.9g}, GPU {got[name].ravel()[at]:.9g}")
    return worst, ""


def run_cuda_bench(session: Any, spec: BenchSpec, overrides: Mapping[str, float], repeats: Optional[int],
                   library: Optional[str]) -> CudaReport:
    """Build, check (small sizes against the original; bench sizes against
    torch or the original) and time the script's CUDA ending."""
    from .build import BENCH_FLAGS, compile_shared
    from .contract import evaluate
    from .cuda_build import build_shared
    from .cuda_emit import to_cuda
    from .execcheck import FORCE_INCLUDE
    from .printer import to_c

    if repeats is not None and repeats < 1:
        raise OtpError(f"--repeats must be at least 1, got {repeats}")
    if library not in (None, "torch"):
        raise OtpError(f"--target cuda compares with torch only (on the GPU), not {library}")
    statement = spec.formulation("torch") if library else None
    if library and statement is None:
        raise ScriptError("--compare torch: the script's bench() gives no torch= formulation")
    torch = _torch()
    name = spec.function
    f0 = session.original.function(name)
    contract = session.contracts.get(name)
    if f0 is None or contract is None:
        raise SpecError(f"bench(): '{name}' is not a function of the original program with a contract")
    bf16 = narrowed(session.original, session.program, spec)
    cpu = ctypes.CDLL(str(compile_shared(to_c(session.original), "original program", BENCH_FLAGS + FORCE_INCLUDE)))
    gpu_lib = ctypes.CDLL(str(build_shared(to_cuda(session.program), "final.cu")))
    scalars = {p.name for p in f0.params if isinstance(p.type, ir.Base)}
    errors: dict[str, float] = {}
    plan, arrays = _plan(f0, contract, {k: v for k, v in session.sizes.items() if k in scalars})
    gpu = _Gpu(torch, gpu_lib, spec, plan, arrays, _prepared(session.program, session.contracts, spec, plan), bf16)
    gpu.call()
    errors["check_sizes"], failure = _compare("check sizes, GPU vs original", _cpu_run(cpu, name, plan, arrays),
                                             gpu.outputs(), spec.tolerance)
    sizes = _sizes(f0, spec, overrides)
    plan, arrays = _plan(f0, contract, sizes)
    values = {p.name: p.value for p in plan.params if p.role != "buffer"}
    work = evaluate(_formula(spec.work, spec.unit), {k: v for k, v in values.items() if isinstance(v, int)})
    if failure:
        return CudaReport(name, values, spec.unit, errors, {}, failure, spec.tolerance, bf16)
    gpu = _Gpu(torch, gpu_lib, spec, plan, arrays, _prepared(session.program, session.contracts, spec, plan), bf16)
    gpu.call()
    got = gpu.outputs()
    timings: dict[str, CudaTiming] = {}
    if statement is not None:
        lib_call, lib_outputs = _library(torch, statement, gpu)
        timings["torch"] = CudaTiming(_timed(torch, lib_call, repeats or REPEATS), work)
        reference, against = lib_outputs(), "torch"
    else:
        reference, against = _cpu_run(cpu, name, plan, arrays), "original"
    errors["bench_sizes"], failure = _compare(f"bench sizes, GPU vs {against}", reference, got, spec.tolerance)
    if failure:
        return CudaReport(name, values, spec.unit, errors, {}, failure, spec.tolerance, bf16)
    timings["gpu"] = CudaTiming(_timed(torch, gpu.call, repeats or REPEATS), work)
    gpu.outputs()
    return CudaReport(name, values, spec.unit, errors, timings, "", spec.tolerance, bf16)


def bench_cuda(script: str, overrides: Mapping[str, float], repeats: Optional[int], library: Optional[str],
               as_json: bool, console: Any, precision: str = "fp32") -> None:
    """The `otp bench SCRIPT --target cuda` command."""
    import json

    import click

    from .runner import new_session, run_script

    session = new_session(script, "cuda", precision=precision)
    error = run_script(session, script)
    if error is not None:
        raise error
    spec = declared(session)
    if spec is None:
        raise ScriptError(f"{script} declares no benchmark: add bench(...) after load() (see README, Benchmarks)")
    report = run_cuda_bench(session, spec, overrides, repeats, library)
    data = report.to_json(script)
    if as_json:
        click.echo(json.dumps(data, indent=1))
    else:
        _print(console, data)
    if report.failure:
        raise CheckFailed(report.failure)


def _print(console: Any, data: dict[str, Any]) -> None:
    unit = "GFLOP/s" if data["unit"] == "flops" else "GB/s"
    sizes = ", ".join(f"{k}={v}" for k, v in data["sizes"].items())
    held = f"; {', '.join(data['bf16'])} in bfloat16" if data["bf16"] else ""
    console.print(f"{data['function']} on the GPU at {sizes}{held}; max_rel_err "
                  + ", ".join(f"{k} {v:.2g}" for k, v in data["errors"].items())
                  + f" (tolerance {data['tolerance']:g})")
    for label in ("gpu", "torch"):
        if label in data:
            t = data[label]
            console.print(f"  {label:6} median {t['median_s'] * 1e3:9.3f} ms  (min {t['min_s'] * 1e3:.3f}, "
                          f"max {t['max_s'] * 1e3:.3f}, {t['repeats']} runs)  {t['rate']:10.1f} {unit}")
    if "ratio_vs_torch" in data:
        console.print(f"  GPU vs torch: {data['ratio_vs_torch']:.2f}x")
    if data["failure"]:
        console.print(f"  check failed: {data['failure']}")
