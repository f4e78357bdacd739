"""What a level-2 discharger is given, and the table of dischargers by
obligation kind (each discharger module registers itself on import)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from . import ir
from .obligation import Obligation


@dataclass(frozen=True)
class Goal:
    """What a discharger gets: the obligation, the programs before and after
    the step (its paths point into `after` unless `obligation.before`), and
    the contracts of the file."""

    obligation: Obligation
    before: ir.Program
    after: ir.Program
    contracts: Mapping[str, Any]

    @property
    def program(self) -> ir.Program:
        return self.before if self.obligation.before else self.after


Discharger = Callable[[Goal], tuple[str, str]]
"""Returns (status, reason) for one goal."""

DISCHARGERS: dict[str, Discharger] = {}


def discharges(*kinds: str) -> Callable[[Discharger], Discharger]:
    """Registers the decorated function as the discharger of these kinds."""
    def register(fn: Discharger) -> Discharger:
        for k in kinds:
            DISCHARGERS[k] = fn
        return fn
    return register
