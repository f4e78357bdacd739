"""What a transformation script imports: `load` the C file, read `target()`.

    from optitrust_py.script import load
    from transformations import loop

    load("../c_sources/matmul.c", sizes={"M": 64, "N": 64, "K": 64})
    loop.tile("matmul > for i", 32)

Paths are relative to the script's own folder; the spec is found as
`specs/<stem>.spec` next to the C file's folder unless `spec=` says otherwise;
`sizes` are the defaults for `--exec` and benchmarks (`--size` overrides).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from . import ir
from .session import current_session


def load(c_file: str | Path, spec: str | Path | None = None,
         sizes: Optional[dict[str, float]] = None) -> ir.Program:
    """Parse the C file (and its contracts) that the rest of the script transforms."""
    return current_session().load(c_file, spec, sizes)


def target() -> str:
    """The target the script is run for (`otp run --target cpu|cuda`)."""
    return current_session().target
