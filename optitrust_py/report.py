"""Terminal output of a run: a header and a coloured diff per step, then a
summary table. Unproved obligations are always counted and shown."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .outputs import CodeCache, display_diff
from .session import Session, Step


def badges(step: Step) -> Text:
    t = Text()
    if step.error is not None:
        t.append("✗ refused", "bold red")
        return t
    l1 = step.checks.get("level1")
    if l1 is not None:
        t.append("✓ L1" if l1.ok else "✗ L1", "green" if l1.ok else "bold red")
    ex = step.checks.get("exec")
    if ex is not None:
        t.append("  ")
        t.append(f"{'✓' if ex.ok else '✗'} exec {ex.short()}", "green" if ex.ok else "bold red")
    if step.lossy_tolerance():
        t.append(f"  lossy (rel tol {step.lossy_tolerance():.2g})", "yellow")
    elif step.inexact():
        t.append("  ≈fp", "yellow")
    n = len(step.all_obligations())
    if n:
        t.append(f"  {n} unproved", "yellow")
    return t


def _header(step: Step, total: int, indent: str = "") -> Text:
    t = Text(indent)
    t.append(f"step {step.number}/{total} " if "." not in step.number else f"step {step.number} ", "bold")
    t.append(step.call, "bold cyan")
    if step.line:
        t.append(f"  line {step.line}", "dim")
    t.append("  ")
    t.append_text(badges(step))
    t.append(f"  {step.time_s * 1000:.0f} ms", "dim")
    return t


_STYLES = {"+": "green", "-": "red", "@": "cyan", "~": "dim", " ": ""}


def _diff_text(lines: list[tuple[str, str]]) -> Text:
    t = Text()
    for tag, line in lines:
        prefix = "" if tag == "@" else (" " if tag == "~" else tag)
        t.append(prefix + line + "\n", _STYLES[tag])
    return t


def print_steps(console: Console, session: Session, code: CodeCache) -> None:
    total = len(session.steps)
    for step in session.steps:
        console.print(_header(step, total))
        for sub in step.substeps:
            console.print(_header(sub, total, "    "))
        if step.error is not None:
            console.print(Text(f"    {step.error}", "red"))
        else:
            diff = display_diff(code(step.before), code(step.after))
            console.print(_diff_text(diff) if diff else Text("    (no change)\n", "dim"))
        problems = [p for c in step.checks.values() for p in getattr(c, "problems", ())]
        for p in problems:
            console.print(Text(f"    {p}", "red"))


def print_summary(console: Console, session: Session, level: int, exec_run: bool) -> None:
    table = Table(title=None, show_lines=False)
    for col in ("step", "transformation", "line", "checks", "time"):
        table.add_column(col)
    for s in session.steps:
        table.add_row(Text(s.number), Text(s.call), Text(str(s.line or "")), badges(s),
                      Text(f"{s.time_s * 1000:.0f} ms"))
    console.print(table)
    unproved = sum(len(s.all_obligations()) for s in session.steps)
    if unproved:
        console.print(Text(f"⚠ {unproved} validity obligation{'s' if unproved > 1 else ''} not proved: "
                           f"level {level} checks well-formedness only, and the resource checker that "
                           f"discharges obligations (level 2) is not implemented yet: these steps are not "
                           f"proved valid (--exec tests them on random inputs).", "bold yellow"))
    if not exec_run:
        console.print(Text("outputs not compared: add --exec to run each step against the original", "dim"))


def failed_checks(session: Session) -> list[str]:
    out: list[str] = []

    def visit(step: Step) -> None:
        for name, c in step.checks.items():
            if not c.ok:
                out.append(f"step {step.number} {step.call}: {name} failed: "
                           + "; ".join(getattr(c, "problems", ()) or [c.short()]))
        for s in step.substeps:
            visit(s)
    for s in session.steps:
        visit(s)
    return out
