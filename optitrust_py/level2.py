"""Level 2: every obligation of a step is discharged from access footprints
and Z3, under the contract's `requires` and the loop ranges, and the step's
output is checked against the function contracts. Nothing is admitted: an
obligation passes only when it is proved; a refuted one says which accesses
conflict and on what values, an unknown one says what was out of reach."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from . import effects, facts, online  # noqa: F401  (they register their dischargers)
from . import ir
from .cuda_map import recheck_obligations
from .goal import DISCHARGERS, Goal
from .obligation import Obligation
from .resources import check_resources

STATUSES = ("proved", "refuted", "unknown")


@dataclass(frozen=True)
class Verdict:
    """The outcome of one obligation. `reason` is empty when proved; else it
    names the conflicting accesses with their lines and a counterexample
    (refuted), or what could not be decided (unknown)."""

    kind: str
    claim: str
    status: str
    reason: str = ""
    time_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "claim": self.claim, "status": self.status, "reason": self.reason,
                "time_s": self.time_s}


@dataclass(frozen=True)
class Level2Result:
    verdicts: tuple[Verdict, ...]
    resources: tuple[str, ...]
    time_s: float

    @property
    def ok(self) -> bool:
        return not self.resources and all(v.status == "proved" for v in self.verdicts)

    def count(self, status: str) -> int:
        return sum(v.status == status for v in self.verdicts)

    @property
    def problems(self) -> tuple[str, ...]:
        failed = tuple(f"{v.kind} {v.status}: {v.claim}: {v.reason}" for v in self.verdicts
                       if v.status != "proved")
        return failed + tuple(f"resources: {r}" for r in self.resources)

    def short(self) -> str:
        n = len(self.verdicts)
        bad = n - self.count("proved")
        return f"{n} proved" if not bad else f"{bad}/{n} not proved"

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "obligations": [v.to_json() for v in self.verdicts],
                "resources": list(self.resources), "time_s": self.time_s,
                **{s: self.count(s) for s in STATUSES}}


def discharge(goal: Goal) -> Verdict:
    ob = goal.obligation
    t0 = time.perf_counter()
    fn = DISCHARGERS.get(ob.kind)
    if fn is None:
        status, reason = "unknown", f"level 2 has no way to prove a '{ob.kind}' obligation"
    else:
        status, reason = fn(goal)
    return Verdict(ob.kind, ob.claim, status, reason, time.perf_counter() - t0)


def check_step(before: ir.Program, after: ir.Program, obligations: Sequence[Obligation],
               contracts: Mapping[str, Any]) -> Level2Result:
    """Checks the step's output against the contracts, then discharges its
    obligations (which reuse the footprints the resource check computed, so
    an obligation's time is the time of its own queries)."""
    t0 = time.perf_counter()
    problems = check_resources(after, contracts) + _gpu_races(before, after, obligations, contracts)
    verdicts = tuple(discharge(Goal(ob, before, after, contracts)) for ob in obligations)
    return Level2Result(verdicts, problems, time.perf_counter() - t0)


_RACE_FREE: dict[tuple[Any, ...], Mapping[str, Any]] = {}
"""Mapped loops proved race-free, keyed by what their proof can read (see
_race_key), with the contracts they were proved under."""


def _race_key(after: ir.Program, ob: Obligation) -> tuple[Any, ...]:
    """What decides whether a mapped loop's iterations touch disjoint cells:
    the loop itself and what runs before it on the way down to it: the
    parameters, the statements before it in each enclosing block, the
    conditions of the enclosing branches, and each enclosing loop whole
    (what follows the mapped loop in a loop's body runs before its next
    instance). Statements after it outside any loop, and other branches,
    do not change how its iterations touch memory, so a step in another
    kernel can reuse an earlier proof."""
    node: Any = after
    key: list[Any] = [ob.function]
    for name, index in ob.paths[0]:
        if isinstance(node, ir.Block) and name == "stmts":
            key.append(node.stmts[:index])
        elif isinstance(node, ir.If) and name in ("then", "other"):
            key.append((node.cond, name))
        elif isinstance(node, ir.FuncDef):
            key.append(node.decl)
        elif not isinstance(node, ir.Program):
            key.append(node)
        node = getattr(node, name)
        if index is not None:
            node = node[index]
    key.append(node)
    return tuple(key)


def _gpu_races(before: ir.Program, after: ir.Program, obligations: Sequence[Obligation],
               contracts: Mapping[str, Any]) -> tuple[str, ...]:
    """The loops mapped to the GPU that the step changed and whose iterations
    are not proved independent (cuda_map.recheck_obligations), as problems."""
    out = []
    for ob in recheck_obligations(before, after, obligations):
        key = _race_key(after, ob)
        if _RACE_FREE.get(key) == contracts:
            continue
        v = discharge(Goal(ob, before, after, contracts))
        if v.status != "proved":
            out.append(f"GPU race ({v.status}): {ob.claim}: {v.reason}")
        else:
            _RACE_FREE[key] = contracts
    return tuple(out)
