"""Running the requested checks over every step of a session and storing
their results on the steps (`step.checks["level1"]`, `step.checks["level2"]`,
`step.checks["level3"]`, `step.checks["exec"]`)."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Optional

from .execcheck import check_steps
from .level1 import check_program
from .session import Session, Step

if TYPE_CHECKING:
    from .level2 import Level2Result

FP_TOLERANCE = 1e-5


def _all_steps(steps: list[Step]) -> list[Step]:
    out: list[Step] = []
    for s in steps:
        out.append(s)
        out.extend(_all_steps(s.substeps))
    return out


def run_checks(session: Session, level: int, run_exec: bool) -> Optional[Level2Result]:
    """Checks every step at `level` (each level includes the ones below it),
    then with --exec. Returns, at level 2, the check of the input program
    against its contracts (a script cannot prove steps of an input that
    already breaks its contract); None below level 2."""
    def level1() -> None:
        for step in _all_steps(session.steps):
            if step.error is None:
                step.checks["level1"] = check_program(step.after, session.contracts)
    if level >= 3:
        level2: list[Level2Result] = []
        run_level3(session, lambda: (level1(), level2.append(run_level2(session))))
        source: Optional[Level2Result] = level2[0]
    else:
        level1()
        source = run_level2(session) if level >= 2 else None
    if run_exec:
        run_exec_checks(session)
    return source


def run_level2(session: Session) -> Level2Result:
    """Discharges the obligations of every step (sub-steps included) and
    checks each output against the contracts; returns the input's check.
    The primitive steps are checked from both ends where the machine has
    two cores (`_in_two`); a composite gathers its sub-steps' results."""
    from .level2 import check_step  # Z3 and the dischargers only for level 2

    assert session.original is not None
    primitive = [s for s in _all_steps(session.steps) if not s.substeps and s.error is None]

    def check(step: Step) -> Level2Result:
        step.checks["level2"] = check_step(step.before, step.after, step.obligations, session.contracts)
        return step.checks["level2"]
    results = _in_two(primitive, check)
    for step in session.steps:
        _gather2(step, results)
    return check_step(session.original, session.original, (), session.contracts)


def _gather2(step: Step, results: dict[int, Level2Result]) -> Optional[Level2Result]:
    """A primitive step's result from `results` (by its id), a composite's
    gathered from its sub-steps' (a composite has no obligations of its
    own: the session records obligations only from a primitive's rewrite);
    each kept in its step. None for a step that was refused."""
    subs = [r for r in (_gather2(s, results) for s in step.substeps) if r is not None]
    if step.error is not None:
        return None
    assert not (step.substeps and step.obligations), f"composite step {step.number} has obligations of its own"
    step.checks["level2"] = combine(subs) if step.substeps else results[id(step)]
    return step.checks["level2"]


def run_level3(session: Session, meanwhile: Callable[[], Any] = lambda: None) -> None:
    """Checks the original program against the models its contracts state
    (`ensures`, kept as `session.models`) at every size set a step is
    checked at, then compares every primitive step's functions with the
    step before, at the sizes that exercise the code it compares (the
    script's, or chosen from that code: `choose_sizes`); a composite
    gathers its sub-steps'. `meanwhile` (levels 1 and 2) runs first in
    this process, while the second process (`_in_two`) starts on its steps;
    its time is not level 3's."""
    from .level3 import Runs, check_step, choose_sizes
    from .models import check_models

    t0 = time.perf_counter()
    aside = [0.0]

    def sizes(*programs: Any) -> list[dict[str, int]]:
        return choose_sizes(session.contracts, session.sizes, session.check_sizes, programs)
    primitive = [s for s in _all_steps(session.steps) if not s.substeps and s.error is None]
    chosen = {id(s): sizes(s.before, s.after) for s in primitive}
    every = [dict(t) for t in dict.fromkeys(tuple(sorted(d.items())) for sets in chosen.values() for d in sets)]
    runs = Runs()

    def first() -> None:
        t1 = time.perf_counter()
        meanwhile()
        aside[0] = time.perf_counter() - t1
        session.models = check_models(session.original, session.contracts, every or sizes(session.original), runs) \
            if session.original is not None else []  # type: ignore[attr-defined]
    results = _in_two(primitive, lambda s: check_step(s.before, s.after, session.contracts, chosen[id(s)], s.fp,
                                                      s.tolerance, runs), first)

    def visit(step: Step) -> None:
        for s in step.substeps:
            visit(s)
        if step.error is not None:
            return
        step.checks["level3"] = combine3([s.checks["level3"] for s in step.substeps if "level3" in s.checks]) \
            if step.substeps else results[id(step)]
    for step in session.steps:
        visit(step)
    session.level3_s = time.perf_counter() - t0 - aside[0]


def _in_two(steps: list[Step], check: Callable[[Step], Any], meanwhile: Callable[[], Any] = lambda: None
            ) -> dict[int, Any]:
    """`check` of every step, by the step's id, from both ends where the
    machine has two cores: a forked process takes the steps from the last
    one down, while this one runs `meanwhile`, then takes them from the
    first one up, each claiming its next step under a shared lock, until
    they meet. Each side thus goes along the script (a step's code before
    is the code after the step before, whose runs the side then has at
    hand) and neither waits for the other, whatever the steps cost."""
    if len(steps) < 8 or (os.cpu_count() or 1) < 2:
        meanwhile()
        return {id(s): check(s) for s in steps}
    ends = multiprocessing.RawArray("i", [0, len(steps)])  # the next step from the front, one past the next from the back
    lock = multiprocessing.Lock()

    def claim(front: bool) -> Optional[int]:
        with lock:
            if ends[0] >= ends[1]:
                return None
            k = ends[0] if front else ends[1] - 1
            ends[0 if front else 1] += 1 if front else -1
            return k

    def side(front: bool) -> dict[int, Any]:
        out = {}
        while (k := claim(front)) is not None:
            out[k] = check(steps[k])
        return out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: check from the back, send the results, leave without cleaning up the parent's state
        os.close(read)
        try:
            reply = pickle.dumps(("ok", side(False)))
        except BaseException:  # noqa: B036 (anything is sent back, to be raised in the parent)
            reply = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(write, "wb") as out:
            out.write(reply)
        os._exit(0)
    os.close(write)
    try:
        meanwhile()
        done = side(True)
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # its answer would not be read
        raise
    finally:
        with os.fdopen(read, "rb") as got:
            reply = got.read()
        _, code = os.waitpid(pid, 0)
    status, value = pickle.loads(reply) if reply else ("error", f"it ended with status {code} and no answer")
    if status != "ok":
        raise RuntimeError(f"the checks' second process failed:\n{value}")
    done.update(value)
    return {id(steps[k]): r for k, r in done.items()}


def combine3(results: list[Any]) -> Any:
    """One level-3 result for a composite: the label of its first failed
    sub-step, else the loosest label of its sub-steps."""
    from .level3 import Level3Result

    labels = [r.label for r in results]
    failed = [r.label for r in results if not r.ok]
    label = failed[0] if failed else next((x for x in labels if x.startswith("quantized")),
                                          "≈fp" if "≈fp" in labels else "=")
    return Level3Result(label, tuple(f for r in results for f in r.functions),
                        tuple(p for r in results for p in r.problems), sum(r.time_s for r in results))


def combine(results: list[Level2Result]) -> Level2Result:
    """One result holding the verdicts and resource problems of several
    (a problem reported by two sub-steps is listed once)."""
    from .level2 import Level2Result

    if len(results) == 1:
        return results[0]
    resources = tuple(dict.fromkeys(p for r in results for p in r.resources))
    return Level2Result(tuple(v for r in results for v in r.verdicts), resources, sum(r.time_s for r in results))


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
