"""Running the requested checks over every step of a session and storing
their results on the steps (`step.checks["level1"]`, `step.checks["exec"]`)."""
from __future__ import annotations

from .level1 import check_program
from .session import Session, Step

FP_TOLERANCE = 1e-5


def _all_steps(steps: list[Step]) -> list[Step]:
    out: list[Step] = []
    for s in steps:
        out.append(s)
        out.extend(_all_steps(s.substeps))
    return out


def run_checks(session: Session, level: int, run_exec: bool) -> None:
    for step in _all_steps(session.steps):
        if step.error is None:
            step.checks["level1"] = check_program(step.after, session.contracts)
    if run_exec:
        run_exec_checks(session)


def run_exec_checks(session: Session) -> None:
    from .execcheck import check_steps  # noqa: the exec check needs gcc only when asked for

    steps = [s for s in session.steps if s.error is None]
    if not steps or session.original is None:
        return
    tolerances = []
    inexact = False
    for s in steps:
        inexact = inexact or s.inexact()
        tolerances.append(FP_TOLERANCE if inexact else 0.0)
    results = check_steps(session.original, [s.after for s in steps], session.contracts, session.sizes,
                          tolerances)
    for s, r in zip(steps, results):
        s.checks["exec"] = r
