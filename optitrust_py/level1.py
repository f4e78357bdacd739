"""Level 1, well-formedness of one step's output: the printed code parses
back to the very same IR, gcc accepts it with warnings as errors, and every
contract still fits its function. Structural preconditions are checked by
each transformation when it is applied (a refused step never gets here)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping

from . import ir
from .build import syntax_check
from .errors import OtpError
from .frontend import parse_text
from .printer import to_c
from .spec import check_contract


@dataclass(frozen=True)
class Level1Result:
    ok: bool
    problems: tuple[str, ...]
    time_s: float
    gcc_s: float

    def short(self) -> str:
        return "ok" if self.ok else f"{len(self.problems)} problem(s)"

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "time_s": self.time_s, "gcc_s": self.gcc_s}


def check_program(program: ir.Program, contracts: Mapping[str, Any], run_gcc: bool = True) -> Level1Result:
    t0 = time.perf_counter()
    problems: list[str] = []
    text = to_c(program)
    try:
        again = parse_text(text, program.file)
        if again != program:
            problems.append("the printed code parses back to a different IR: " + _first_difference(program, again))
    except OtpError as e:
        problems.append(f"the printed code does not parse: {e}")
    for name, contract in contracts.items():
        f = program.function(name)
        if f is None:
            continue
        try:
            check_contract(contract, f)
        except OtpError as e:
            problems.append(f"contract of {name} no longer fits: {e.message}")
    t1 = time.perf_counter()
    if run_gcc:
        problems.extend(f"gcc: {d}" for d in syntax_check(text, program.file))
    t2 = time.perf_counter()
    return Level1Result(not problems, tuple(problems), t1 - t0, t2 - t1)


def _first_difference(a: ir.Program, b: ir.Program) -> str:
    for x, y in zip(a.items, b.items):
        if x != y:
            name = getattr(getattr(x, "decl", x), "name", None)
            return f"in {name or 'a top-level item'}"
    return "the number of top-level items differs"
