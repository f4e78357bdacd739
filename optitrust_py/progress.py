"""Progress bars for the long parts of a command: a run's checks (level 2
and 3, `--exec`) and a benchmark. They are drawn only when stdout is a
terminal, on the terminal, and vanish when done, so `--json` and piped
output (what tests read) never contain them.

The checks are not told about the bars: a background thread counts the
steps whose result each phase has stored (`step.checks[...]`), so the bars
show what is really done. `--exec` builds and runs every step in one go
and stores its results at the end: its bar moves once."""
from __future__ import annotations

import contextlib
import sys
import threading
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .session import Session, Step

POLL_S = 0.2


def on_terminal(shown: bool = True) -> bool:
    """Whether to draw bars: asked for (not `--json`) and stdout is a terminal."""
    return shown and sys.stdout.isatty()


def _bar(console: Console) -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


def _steps(steps: list[Step]) -> list[Step]:
    out: list[Step] = []
    for s in steps:
        out.extend(_steps(s.substeps))
        out.append(s)
    return out


def phases(session: Session, level: int, run_exec: bool) -> list[tuple[str, str, list[Step]]]:
    """(title, key in `step.checks`, steps that get it) of each check that will run."""
    checked = [s for s in _steps(session.steps) if s.error is None]
    out = [("level 1", "level1", checked)]
    out += [("level 2", "level2", checked)] if level >= 2 else []
    out += [("level 3", "level3", checked)] if level >= 3 else []
    out += [("--exec", "exec", [s for s in session.steps if s.error is None])] if run_exec else []
    return out


@contextlib.contextmanager
def check_progress(session: Session, level: int, run_exec: bool, no_color: bool = False,
                   shown: bool = True) -> Iterator[None]:
    """Bars for the checks run inside the `with` block (level 2 or 3, or
    `--exec`), when `shown` and stdout is a terminal."""
    if not on_terminal(shown) or (level < 2 and not run_exec):
        yield
        return
    stop = threading.Event()
    with _bar(Console(no_color=no_color)) as bar:
        tasks = [(bar.add_task(title, total=len(steps)), key, steps)
                 for title, key, steps in phases(session, level, run_exec)]

        def poll() -> None:
            while not stop.wait(POLL_S):
                for task, key, steps in tasks:
                    bar.update(task, completed=sum(key in s.checks for s in steps))
        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()


@contextlib.contextmanager
def bench_progress(programs: int, no_color: bool = False, shown: bool = True) \
        -> Iterator[Optional[Callable[[str], None]]]:
    """A bar over the `programs` a benchmark times, when `shown` and stdout
    is a terminal: yields the callback `run_bench` reports to (None otherwise)."""
    if not on_terminal(shown):
        yield None
        return
    with _bar(Console(no_color=no_color)) as bar:
        task = bar.add_task("building", total=programs)
        seen: list[str] = []

        def report(doing: str) -> None:
            bar.update(task, completed=len(seen), description=doing)
            seen.append(doing)
        yield report
