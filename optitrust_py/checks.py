"""Running the requested checks over every step of a session and storing
their results on the steps (`step.checks["level1"]`, `step.checks["exec"]`)."""
from __future__ import annotations

from .execcheck import check_steps
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
    """Each step against the step before it, bit-exact unless the step may
    round differently (then FP_TOLERANCE) or is lossy (then the larger of
    that and the tolerance it declares), so a difference is blamed on the
    step that made it."""
    steps = [s for s in session.steps if s.error is None]
    if not steps or session.original is None:
        return
    report = check_steps(session.original, [s.after for s in steps], session.contracts, session.sizes,
                         [max(s.lossy_tolerance(), FP_TOLERANCE if s.inexact() else 0.0) for s in steps])
    for s, r in zip(steps, report.steps):
        s.checks["exec"] = r
