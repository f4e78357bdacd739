"""Shared test helpers: load real kernels, check that a transformed program
re-parses to itself, compiles cleanly, and computes bit-identical outputs.

    def test_x(ck):
        p = ck.load("matmul.c")
        q = loop.swap.apply(p, "matmul > for i").program
        ck.check(p, q, "matmul", [5, 8, 7, ck.floats(5 * 7), ck.floats(7 * 8), ck.floats(5 * 8)])
"""
from __future__ import annotations

import ctypes
import random
import textwrap
from array import array
from pathlib import Path
from typing import Sequence, Union

import pytest

from optitrust_py import ir
from optitrust_py.build import compile_shared, syntax_check
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.printer import to_c

ROOT = Path(__file__).resolve().parent.parent
SHARED_FLAGS = ("-std=c11", "-O1", "-ffp-contract=off")


class Floats:
    """An `n`-element float array argument, filled from a fixed seed."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed

    def make(self) -> array:
        rng = random.Random(self.seed)
        return array("f", (rng.uniform(-1.0, 1.0) for _ in range(self.n)))


Arg = Union[int, float, Floats]


class CKit:
    def __init__(self) -> None:
        self._seed = 0

    # ------------------------------------------------------------ programs

    def load(self, name: str) -> ir.Program:
        return parse_file(ROOT / "c_sources" / name)

    def parse(self, text: str, name: str = "<test>") -> ir.Program:
        return parse_text(text, name)

    def function_text(self, program: ir.Program, name: str) -> str:
        f = program.function(name)
        assert f is not None, name
        return to_c(ir.Program((), (f,), program.file)).strip()

    def contains(self, text: str, snippet: str) -> bool:
        """Whether the lines of `snippet` (dedented) appear consecutively in
        `text`, all shifted by the same indentation."""
        want = textwrap.dedent(snippet).strip("\n").split("\n")
        have = text.split("\n")
        for start in range(len(have) - len(want) + 1):
            first = have[start]
            if not first.endswith(want[0]):
                continue
            pad = first[:len(first) - len(want[0])]
            if pad.strip():
                continue
            if all(have[start + k] == (pad + w if w else "") for k, w in enumerate(want)):
                return True
        return False

    # ------------------------------------------------------------ checks

    def roundtrip(self, program: ir.Program) -> None:
        assert parse_text(to_c(program), program.file) == program

    def compiles(self, program: ir.Program) -> None:
        diags = syntax_check(to_c(program), Path(program.file).name)
        assert not diags, "\n".join(diags) + "\n" + to_c(program)

    def floats(self, n: int) -> Floats:
        self._seed += 1
        return Floats(n, self._seed)

    def run(self, program: ir.Program, function: str, args: Sequence[Arg]) -> list[bytes]:
        """Build `program` as a shared object, call `function` on fresh copies
        of `args`, and return every array argument's bytes afterwards."""
        return self.run_text(to_c(program), Path(program.file).name, function, args)

    def run_text(self, c_text: str, name: str, function: str, args: Sequence[Arg]) -> list[bytes]:
        """`run` on C text as written (not printed by otp)."""
        lib = ctypes.CDLL(str(compile_shared(c_text, name, SHARED_FLAGS)))
        fn = getattr(lib, function)
        fn.restype = None
        arrays, cargs = [], []
        for a in args:
            if isinstance(a, Floats):
                buf = a.make()
                arrays.append(buf)
                cargs.append((ctypes.c_float * len(buf)).from_buffer(buf))
            elif isinstance(a, float):
                cargs.append(ctypes.c_float(a))
            else:
                cargs.append(ctypes.c_int(a))
        fn(*cargs)
        return [buf.tobytes() for buf in arrays]

    def same_outputs(self, before: ir.Program, after: ir.Program, function: str, args: Sequence[Arg]) -> None:
        want = self.run(before, function, args)
        got = self.run(after, function, args)
        for k, (w, g) in enumerate(zip(want, got)):
            assert w == g, f"array argument {k} of {function} differs after the transformation"

    def close_outputs(self, before: ir.Program, after: ir.Program, function: str, args: Sequence[Arg],
                      rel: float = 1e-5, floor: float = 0.0) -> float:
        """Outputs equal within `rel` times the largest magnitude of each
        array (at least `floor`): a reassociated sum may cancel to a small
        value whose own relative error says nothing about the reordering.
        Returns the largest difference."""
        worst = 0.0
        for k, (w, g) in enumerate(zip(self.run(before, function, args), self.run(after, function, args))):
            want, got = array("f", w), array("f", g)
            bound = rel * max([floor] + [abs(x) for x in want])
            for x, y in zip(want, got):
                assert abs(x - y) <= bound, f"array argument {k} of {function}: {x} vs {y} (bound {bound:.3g})"
                worst = max(worst, abs(x - y))
        return worst

    def check(self, before: ir.Program, after: ir.Program, function: str, args: Sequence[Arg]) -> None:
        """Re-parses to itself, compiles with -Wall -Werror, same outputs."""
        self.roundtrip(after)
        self.compiles(after)
        self.same_outputs(before, after, function, args)


@pytest.fixture
def ck() -> CKit:
    return CKit()
