"""Argument lists for the kernels of c_sources/ and the refusal check, shared
by the transformation tests (the `ck` fixture makes the float arrays)."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from optitrust_py.errors import TransformError


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
