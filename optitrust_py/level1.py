"""Level 1, well-formedness of one step's output: the printed code parses
back to the very same IR, gcc accepts it with warnings as errors, and every
contract still fits its function. Structural preconditions are checked by
each transformation when it is applied (a refused step never gets here)."""
from __future__ import annotations

import dataclasses
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
    context = tuple(x for x in program.items if not isinstance(x, ir.FuncDef))
    todo = [f for f in program.functions() if (id(f), tuple(map(id, context))) not in _ROUND_TRIPPED]
    if todo or not program.functions():
        problems.extend(_round_trip(dataclasses.replace(
            program, items=tuple(x for x in program.items if not isinstance(x, ir.FuncDef) or x in todo)), context))
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


_ROUND_TRIPPED: dict[tuple[int, tuple[int, ...]], tuple[ir.FuncDef, tuple[Any, ...]]] = {}
"""Functions whose printed code parsed back to themselves, by the function
and the top-level declarations around it (kept, so their ids stay theirs):
a step changes one or two functions of a program, and parsing the others
again cost most of level 1."""


def _round_trip(program: ir.Program, context: tuple[Any, ...]) -> list[str]:
    """Whether `program` (the top-level declarations and the functions not
    yet known to round-trip with them) parses back to itself."""
    try:
        again = parse_text(to_c(program), program.file)
    except OtpError as e:
        return [f"the printed code does not parse: {e}"]
    if again != program:
        return ["the printed code parses back to a different IR: " + _first_difference(program, again)]
    if len(_ROUND_TRIPPED) > 5000:
        _ROUND_TRIPPED.clear()
    for f in program.functions():
        _ROUND_TRIPPED[(id(f), tuple(map(id, context)))] = (f, context)
    return []


def _first_difference(a: ir.Program, b: ir.Program) -> str:
    for x, y in zip(a.items, b.items):
        if x != y:
            name = getattr(getattr(x, "decl", x), "name", None)
            return f"in {name or 'a top-level item'}"
    return "the number of top-level items differs"
