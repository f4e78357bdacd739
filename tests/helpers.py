"""Argument lists for the kernels of c_sources/ and the refusal check, shared
by the transformation tests (the `ck` fixture makes the float arrays)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.level2 import check_step
from optitrust_py.runner import new_session, run_script
from optitrust_py.session import Rewrite, Session, inherit_contracts

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# A loop that fission breaks: for i < n - 1 - i, y[i] reads x[n - 1 - i]
# before the iteration that zeroes it; split, every read sees a zero.
SHIFT_C = """
    void shift(int n, float *x, float *y) {
      for (int i = 0; i < n; i++) {
        x[i] = 0.0f;
        y[i] = x[n - 1 - i];
      }
    }
"""
SHIFT_SPEC = """
    shift(n, x, y):
      requires n >= 2
      modifies x ~> Matrix1(n)
      writes   y ~> Matrix1(n)
"""


def matmul_args(ck: Any, M: int, N: int, K: int) -> list[Any]:
    return [M, N, K, ck.floats(M * K), ck.floats(K * N), ck.floats(M * N)]


def attention_args(ck: Any, H: int, S: int, D: int) -> list[Any]:
    n = H * S * D
    return [H, S, D, ck.floats(n), ck.floats(n), ck.floats(n), ck.floats(n)]


def refusal(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> str:
    """The message of the TransformError that `fn(*args, **kwargs)` must raise."""
    with pytest.raises(TransformError) as info:
        fn(*args, **kwargs)
    return info.value.message


def refuted(before: ir.Program, rewrite: Rewrite, contracts: Optional[dict[str, Any]] = None) -> str:
    """The reason level 2 gives for the one obligation of `rewrite` it must
    refute (every other one must be proved)."""
    result = check_step(before, rewrite.program, rewrite.obligations,
                        inherit_contracts(contracts or {}, rewrite))
    failed = [v for v in result.verdicts if v.status != "proved"]
    assert [v.status for v in failed] == ["refuted"], result.problems
    return f"{failed[0].kind}: {failed[0].reason}"


def cuda_session(script: str, precision: str = "fp32") -> Session:
    """scripts/`script` run to its CUDA ending at level 1."""
    session = new_session(SCRIPTS / script, "cuda", precision=precision)
    assert run_script(session, SCRIPTS / script) is None
    return session
