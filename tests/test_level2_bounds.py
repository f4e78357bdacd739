"""Level 2's bounds of flattened accesses (footprint._split, the resource
check): an index that walks a row backwards, `k * N + (N - 1 - j)`, lies
within its row for every N, N = 1 included; one past the row does not."""
from __future__ import annotations

from pathlib import Path

import pytest

from optitrust_py.frontend import parse_text
from optitrust_py.resources import check_resources
from optitrust_py.spec import parse_spec_file

ROOT = Path(__file__).resolve().parent.parent


def matmul_reading(index: str) -> tuple[str, ...]:
    """The resource problems of c_sources/matmul.c with B read at `index`."""
    source = (ROOT / "c_sources" / "matmul.c").read_text()
    assert source.count("B[k * N + j]") == 1
    program = parse_text(source.replace("B[k * N + j]", f"B[{index}]"), "matmul.c")
    return tuple(check_resources(program, parse_spec_file(ROOT / "specs" / "matmul.spec")))


@pytest.mark.parametrize("index", ["k * N + (N - 1 - j)", "k * N + N - 1 - j", "N - 1 - j + k * N",
                                   "(K - 1 - k) * N + (N - 1 - j)"])
def test_a_row_walked_backwards_is_within_bounds(index: str) -> None:
    assert matmul_reading(index) == ()


@pytest.mark.parametrize("index", ["k * N + (N - j)", "k * N + (N + 1 - j)", "N - 1 - j + k * N + N"])
def test_an_index_past_its_row_is_out_of_bounds(index: str) -> None:
    (problem,) = matmul_reading(index)
    assert f"'B[{index}]' may be out of bounds of B ~> Matrix2(K, N)" in problem
