"""Writing a run's files: `out/<script>/NN_<step>.c`, `final.c`, `trace.json`, `trace.html`.

Everything goes to a fresh temporary folder first, which then replaces the
old one, so an interrupted run never leaves a half-written or stale mix."""
from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from . import ir
from .printer import to_c
from .session import Session, Step

if TYPE_CHECKING:
    from .level2 import Level2Result


class CodeCache:
    """Printed text of each program, printed once: steps share programs."""

    def __init__(self, printer: Callable[[ir.Program], str] = to_c) -> None:
        self._texts: dict[int, tuple[ir.Program, str]] = {}
        self._printer = printer

    def __call__(self, program: ir.Program) -> str:
        hit = self._texts.get(id(program))
        if hit is None or hit[0] is not program:
            hit = (program, self._printer(program))
            self._texts[id(program)] = hit
        return hit[1]


def unified_diff(before: str, after: str, name: str, context: int = 3) -> list[str]:
    return list(difflib.unified_diff(before.splitlines(), after.splitlines(), f"a/{name}", f"b/{name}",
                                     n=context, lineterm=""))


DiffRow = tuple[str, Optional[int], Optional[int], str]
"""(tag, line number before, line number after, text): see `numbered_diff`."""


def numbered_diff(before: str, after: str, context: int = 3) -> list[DiffRow]:
    """A diff for people: lines that only moved in or out a nesting level are
    matched (shown as context, tag "~"), so tiling a loop shows the two new
    loop headers rather than the whole re-indented body. Tags: " " same,
    "~" re-indented, "-" removed, "+" added, "@" hunk header; each row has
    its 1-based line numbers in `before` and `after` (None where absent)."""
    a, b = before.splitlines(), after.splitlines()
    sm = difflib.SequenceMatcher(None, [x.strip() for x in a], [y.strip() for y in b], autojunk=False)
    out: list[DiffRow] = []
    for group in sm.get_grouped_opcodes(context):
        _, i1, _, j1, _ = group[0]
        _, _, i2, _, j2 = group[-1]
        out.append(("@", None, None, f"@@ -{i1 + 1},{i2 - i1} +{j1 + 1},{j2 - j1} @@"))
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                out.extend(("~" if a[a1 + k] != line else " ", a1 + k + 1, b1 + k + 1, line)
                           for k, line in enumerate(b[b1:b2]))
            else:
                out.extend(("-", a1 + k + 1, None, line) for k, line in enumerate(a[a1:a2]))
                out.extend(("+", None, b1 + k + 1, line) for k, line in enumerate(b[b1:b2]))
    return out


def display_diff(before: str, after: str, context: int = 3) -> list[tuple[str, str]]:
    """`numbered_diff` without the line numbers (the terminal's diff)."""
    return [(tag, text) for tag, _, _, text in numbered_diff(before, after, context)]


def step_json(step: Step, code: CodeCache, annotated: Optional[CodeCache] = None) -> dict[str, Any]:
    """One step; with `annotated`, also its code with each loop's inferred contract."""
    before, after = code(step.before), code(step.after)
    out = {
        "number": step.number,
        "name": step.name,
        "args": list(step.args),
        "target": step.target,
        "line": step.line,
        "time_s": round(step.time_s, 6),
        "fp": step.fp,
        "tolerance": step.lossy_tolerance(),
        "error": step.error,
        "obligations": obligations_json(step),
        "checks": {k: (v.to_json() if hasattr(v, "to_json") else v) for k, v in step.checks.items()},
        "diff": "\n".join(unified_diff(before, after, "code.c")),
        "code": after,
        "substeps": [step_json(s, code, annotated) for s in step.substeps],
    }
    if annotated is not None:
        out["annotated"] = annotated(step.after)
    return out


def obligations_json(step: Step) -> list[dict[str, Any]]:
    """The step's own obligations, each with its level-2 verdict (status,
    reason, time) when level 2 ran; a composite's are in its sub-steps."""
    l2 = step.checks.get("level2")
    if l2 is None or step.substeps:
        return [dict(o.to_json(), status="not proved (level 2 not run)") for o in step.obligations]
    return [{**o.to_json(), **v.to_json()} for o, v in zip(step.obligations, l2.verdicts, strict=True)]


def trace_json(session: Session, script: str, error: Optional[str], code: CodeCache,
               source: Optional[Level2Result] = None, annotated: Optional[CodeCache] = None) -> dict[str, Any]:
    """The whole run; `source` is the level-2 check of the input program
    against its contracts (absent below level 2); `annotated` prints a
    program with its inferred loop contracts (absent: not inferred)."""
    out = {
        "script": script,
        "source": str(session.source_path) if session.source_path else None,
        "spec": str(session.spec_path) if session.spec_path else None,
        "target": session.target,
        "sizes": session.sizes,
        "original": code(session.original) if session.original else None,
        "input_check": source.to_json() if source is not None else None,
        "models": [m.to_json() for m in session.models],
        "steps": [step_json(s, code, annotated) for s in session.steps],
        "error": error,
    }
    if annotated is not None and session.original is not None:
        out["original_annotated"] = annotated(session.original)
    return out


def step_file_name(step: Step) -> str:
    return f"{int(step.number):02d}_{step.name.replace('.', '_')}.c"


def write_run(session: Session, script: str, out_root: Path, error: Optional[str], code: CodeCache,
              source: Optional[Level2Result] = None, annotated: Optional[CodeCache] = None) -> Path:
    """Write the run's files into `out_root/<script stem>/` atomically, the
    trace viewer `trace.html` included (keeping the `bench.json` that
    `otp bench` recorded there); `annotated` prints a program with its
    inferred loop contracts: given, `final.annotated.c` is written and
    the trace holds every step's annotated code."""
    from .bench_results import BENCH_FILE, load_runs
    from .trace_html import PAGE_FILE, TRACE_FILE, render_page

    dest = out_root / Path(script).stem
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=out_root))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    try:
        if session.original is not None:
            (tmp / "00_original.c").write_text(code(session.original))
        for step in session.steps:
            if step.error is None:
                (tmp / step_file_name(step)).write_text(code(step.after))
        if session.program is not None:
            (tmp / "final.c").write_text(code(session.program))
        if annotated is not None and session.program is not None:
            (tmp / "final.annotated.c").write_text(annotated(session.program))
        trace = trace_json(session, script, error, code, source, annotated)
        (tmp / TRACE_FILE).write_text(json.dumps(trace, indent=1))
        if (dest / BENCH_FILE).is_file():
            shutil.copyfile(dest / BENCH_FILE, tmp / BENCH_FILE)
        (tmp / PAGE_FILE).write_text(render_page(trace, load_runs(tmp)))
        old = None
        if dest.exists():
            old = out_root / f".{dest.name}.old-{os.getpid()}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
