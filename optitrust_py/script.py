"""What a transformation script imports: `load` the C file, read `target()`.

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
from typing import Optional

from . import ir
from .bench import TOLERANCE, declare, record
from .session import current_session


def load(c_file: str | Path, spec: str | Path | None = None,
         sizes: Optional[dict[str, float]] = None) -> ir.Program:
    """Parse the C file (and its contracts) that the rest of the script transforms."""
    return current_session().load(c_file, spec, sizes)


def target() -> str:
    """The target the script is run for (`otp run --target cpu|cuda`)."""
    return current_session().target


def bench(function: str, sizes: Optional[dict[str, float]] = None, flops: Optional[str] = None,
          bytes: Optional[str] = None, numpy: Optional[str] = None, torch: Optional[str] = None,
          tolerance: float = TOLERANCE) -> None:
    """Declare what `otp bench` times: `function` at `sizes` (`--size`
    overrides), doing `flops` floating-point operations or moving `bytes`
    bytes per call (a formula over the sizes, e.g. "2*M*N*K"), and how numpy
    or torch computes the same outputs (a Python statement over the flat
    input arrays and the sizes that assigns each output by name); outputs
    must agree with the original's within `tolerance`, relative to their
    largest magnitude:

        bench("matmul", sizes={"M": 1024, "N": 1024, "K": 1024}, flops="2*M*N*K",
              numpy="C = A.reshape(M, K) @ B.reshape(K, N)")

    It changes nothing in the program; `otp run` ignores it."""
    record(current_session(), declare(function, sizes, flops, bytes, {"numpy": numpy, "torch": torch}, tolerance))
