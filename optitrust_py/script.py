"""What a transformation script imports: `load` the C file, read `target()`
and `precision()`.

    from optitrust_py.script import load
    from transformations import loop

    load("../c_sources/matmul.c", sizes={"M": 64, "N": 64, "K": 64})
    loop.tile("matmul > for i", 32)

Paths are relative to the script's own folder; the spec is found as
`specs/<stem>.spec` next to the C file's folder unless `spec=` says otherwise;
`sizes` are the defaults for `--exec` (`--size` overrides). `bench(...)`
declares what `otp bench` times (see optitrust_py/bench.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from . import ir
from .bench import TOLERANCE, declare, record
from .session import current_session


def load(c_file: str | Path, spec: str | Path | None = None,
         sizes: Optional[dict[str, float]] = None,
         check_sizes: Optional[list[dict[str, int]]] = None) -> ir.Program:
    """Parse the C file (and its contracts) that the rest of the script
    transforms. `sizes` are those of `--exec`; `check_sizes` the small ones
    level 3 runs each step at symbolically (default: chosen near `sizes`)."""
    return current_session().load(c_file, spec, sizes, check_sizes)


def target() -> str:
    """The target the script is run for (`otp run --target cpu|cuda`)."""
    return current_session().target


def precision() -> str:
    """The precision the script's ending is asked for (`--precision fp32|bf16`)."""
    session = current_session()
    session.precision_read = True
    return session.precision


def bench(function: str, sizes: Optional[dict[str, float]] = None, flops: Optional[str] = None,
          bytes: Optional[str] = None, numpy: Optional[str] = None, torch: Optional[str] = None,
          tolerance: float = TOLERANCE, setup: Union[str, list[str], None] = None, call: Optional[str] = None,
          variants: Optional[dict[str, Union[str, Callable[[], None]]]] = None) -> None:
    """Declare what `otp bench` times: `function` at `sizes` (`--size`
    overrides), doing `flops` floating-point operations or moving `bytes`
    bytes per call (a formula over the sizes, e.g. "2*M*N*K"), and how numpy
    or torch computes the same outputs (a Python statement over the flat
    input arrays and the sizes that assigns each output by name); outputs
    must agree with the original's within `tolerance`, relative to their
    largest magnitude:

        bench("matmul", sizes={"M": 1024, "N": 1024, "K": 1024}, flops="2*M*N*K",
              numpy="C = A.reshape(M, K) @ B.reshape(K, N)")

    A kernel that takes its inputs prepared once (weights quantized ahead of
    time) is timed through `call`, after the `setup` calls that prepare them
    (untimed); `variants` adds named programs timed side by side, each a
    script ending (a function of the script, applied to the loaded program)
    or a C file (a path relative to the script), all checked against the
    original:

        bench("matvec", ..., setup="quantize_q8(D, N, W, Wq, Ws)",
              call="matvec_q8(N, D, Wq, Ws, x, y)",
              variants={"fp32": fp32, "runq": "../c_sources/matvec_q8.c"})

    It changes nothing in the program; `otp run` ignores it."""
    session = current_session()
    resolved = {name: str(session.resolve(v)) if isinstance(v, (str, Path)) else v
                for name, v in (variants or {}).items()} if isinstance(variants, dict) else variants
    record(session, declare(function, sizes, flops, bytes, {"numpy": numpy, "torch": torch}, tolerance,
                            setup, call, resolved))
