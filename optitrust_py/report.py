"""Terminal output of a run: a header and a coloured diff per step, then a
summary table. Unproved obligations are always counted and shown: at level 1
every obligation is unproved, at level 2 those not proved."""
from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any, Optional

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .outputs import CodeCache, display_diff
from .session import Session, Step

if TYPE_CHECKING:
    from .level2 import Level2Result, Verdict

CLAIM_WIDTH = 90
"""Characters of a proved obligation's claim shown in `otp check`'s list."""


def leaf_results(steps: list[Step], check: str = "level2") -> list[tuple[Step, Any]]:
    """The results of `check` that hold each obligation (or comparison)
    once: those of the primitive steps (a composite's result gathers its
    sub-steps'), in order."""
    out: list[tuple[Step, Any]] = []
    for s in steps:
        if s.substeps:
            out.extend(leaf_results(s.substeps, check))
        elif check in s.checks:
            out.append((s, s.checks[check]))
    return out


def level3_json(session: Session) -> dict[str, Any]:
    """A script's level-3 results: each primitive step's label, time and
    per-function comparisons, and the total time."""
    results = leaf_results(session.steps, "level3")
    return {"models": [m.to_json() for m in model_checks(session)],
            "steps": [{"number": s.number, "call": s.call, **r.to_json()} for s, r in results],
            "time_s": sum(r.time_s for _, r in results), "elapsed_s": session.level3_s}


def model_checks(session: Session) -> list[Any]:
    """The original program against its contracts' models (`ensures`), as
    level 3 stored them; none before level 3 ran."""
    return list(session.models)


def print_level3(console: Console, session: Session) -> None:
    """`otp check --level 3`: per step its label (`=`, `≈fp`,
    `quantized(b)`, or why it failed) and the time its comparison took,
    after the original program's check against its models."""
    results = leaf_results(session.steps, "level3")
    models = model_checks(session)
    for m in models:
        console.print(Text(f"  {m.text()}  ", "green" if m.ok else "bold red").append(f"{m.time_s * 1000:.0f} ms",
                                                                                     "dim"))
    for step, r in results:
        head = Text(f"  step {step.number} ", "bold").append(step.call, "cyan").append("  ")
        head.append(f"✓ L3 {r.label}" if r.ok else f"✗ L3 {r.label}", "green" if r.ok else "bold red")
        console.print(head.append(f"  {r.time_s * 1000:.0f} ms", "dim"))
        for p in r.problems:
            console.print(Text(f"    ✗ {p}", "bold red"))
    ok = all(r.ok for _, r in results) and all(m.ok for m in models)
    t = Text("  ✓ " if ok else "  ✗ ", "green" if ok else "bold red")
    t.append(f"level 3: {len(results)} steps compared, {sum(not r.ok for _, r in results)} failed; "
             f"{sum(r.time_s for _, r in results):.2f} s in all, {session.level3_s:.2f} s elapsed")
    console.print(t)


def unproved(step: Step) -> int:
    """Obligations of the step (sub-steps included) not proved at the level
    that ran: all of them unless level 2 ran."""
    l2 = step.checks.get("level2")
    return len(step.all_obligations()) if l2 is None else len(l2.verdicts) - l2.count("proved")


def l2_badge(result: Level2Result) -> Text:
    if result.ok:
        return Text(f"✓ L2 {result.count('proved')} proved", "green")
    parts = [f"{result.count(s)} {s}" for s in ("refuted", "unknown") if result.count(s)]
    if result.resources:
        parts.append(f"{len(result.resources)} resource problem{'s' if len(result.resources) > 1 else ''}")
    return Text("✗ L2 " + ", ".join(parts), "bold red")


def badges(step: Step) -> Text:
    t = Text()
    if step.error is not None:
        t.append("✗ refused", "bold red")
        return t
    l1 = step.checks.get("level1")
    if l1 is not None:
        t.append("✓ L1" if l1.ok else "✗ L1", "green" if l1.ok else "bold red")
    l2 = step.checks.get("level2")
    if l2 is not None:
        t.append("  ")
        t.append_text(l2_badge(l2))
    l3 = step.checks.get("level3")
    if l3 is not None:
        t.append("  ")
        t.append(f"✓ L3 {l3.label}" if l3.ok else f"✗ L3 {l3.short()}", "green" if l3.ok else "bold red")
    ex = step.checks.get("exec")
    if ex is not None:
        t.append("  ")
        t.append(f"{'✓' if ex.ok else '✗'} exec {ex.short()}", "green" if ex.ok else "bold red")
    if step.lossy_tolerance():
        t.append(f"  lossy (rel tol {step.lossy_tolerance():.2g})", "yellow")
    elif step.inexact():
        t.append("  ≈fp", "yellow")
    n = unproved(step)
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


def _indented(text: str, indent: str) -> str:
    return "\n".join(indent + line for line in text.splitlines())


def failure_text(result: Level2Result, indent: str, where: str = "") -> Text:
    """Each obligation not proved (kind, status, claim, then the reason
    below it) and each resource problem, one block per line."""
    t = Text()
    for v in result.verdicts:
        if v.status != "proved":
            t.append(f"{indent}✗ {where}{v.kind} {v.status}: ", "bold red")
            t.append(v.claim + "\n", "red")
            if v.reason:
                t.append(_indented(v.reason, indent + "    ") + "\n", "red")
    for p in result.resources:
        t.append(f"{indent}✗ {where}resources: ", "bold red")
        t.append(p + "\n", "red")
    return t


def input_badge(source: Level2Result) -> Text:
    return Text("✓ L2 fits its contracts" if source.ok else "✗ L2 does not fit its contracts",
                "green" if source.ok else "bold red")


def input_line(source: Level2Result) -> Text:
    """The input program against its contracts (level 2), with its problems."""
    t = Text("input  ", "bold").append_text(input_badge(source))
    t.append(f"  {source.time_s * 1000:.0f} ms\n", "dim")
    t.append_text(failure_text(source, "    "))
    return t


def print_steps(console: Console, session: Session, code: CodeCache,
                source: Optional[Level2Result] = None) -> None:
    total = len(session.steps)
    if source is not None:
        console.print(input_line(source), end="")
    for step in session.steps:
        console.print(_header(step, total))
        for sub in step.substeps:
            console.print(_header(sub, total, "    "))
        if step.error is not None:
            console.print(Text(f"    {step.error}", "red"))
        else:
            diff = display_diff(code(step.before), code(step.after))
            console.print(_diff_text(diff) if diff else Text("    (no change)\n", "dim"))
        problems = [p for name, c in step.checks.items() if name != "level2" for p in getattr(c, "problems", ())]
        for p in problems:
            console.print(Text(f"    {p}", "red"))
        for s, r in leaf_results([step]):
            console.print(failure_text(r, "    ", f"step {s.number} " if s is not step else ""), end="")


def level2_totals(results: list[Level2Result]) -> dict[str, Any]:
    """Counts and timing of level-2 results, each obligation counted once
    (pass the primitive steps' results, `leaf_results`)."""
    times = [v.time_s for r in results for v in r.verdicts]
    return {"obligations": len(times), **{s: sum(r.count(s) for r in results) for s in ("proved", "refuted", "unknown")},
            "resource_problems": sum(len(r.resources) for r in results),
            "time_s": sum(r.time_s for r in results),
            "median_obligation_s": statistics.median(times) if times else 0.0,
            "max_obligation_s": max(times, default=0.0)}


def totals_text(totals: dict[str, Any]) -> Text:
    """`level 2: 5 obligations: 5 proved, 0 refuted, 0 unknown; ...`, red
    unless every obligation is proved and no resource problem was found."""
    ok = totals["proved"] == totals["obligations"] and not totals["resource_problems"]
    t = Text("✓ " if ok else "✗ ", "green" if ok else "bold red")
    t.append(f"level 2: {totals['obligations']} obligations: {totals['proved']} proved, {totals['refuted']} refuted, "
             f"{totals['unknown']} unknown; {totals['resource_problems']} resource problems; "
             f"{totals['time_s']:.2f} s in all, median {totals['median_obligation_s'] * 1000:.1f} ms "
             f"(max {totals['max_obligation_s'] * 1000:.1f} ms) per obligation")
    return t


def _verdict_line(v: Verdict, indent: str) -> Text:
    proved = v.status == "proved"
    t = Text(indent)
    t.append("✓ " if proved else "✗ ", "green" if proved else "bold red")
    t.append(v.kind if proved else f"{v.kind} {v.status}", "" if proved else "bold red")
    claim = v.claim if not proved or len(v.claim) <= CLAIM_WIDTH else v.claim[:CLAIM_WIDTH - 1] + "…"
    t.append(f"  {claim}  ")
    t.append(f"{v.time_s * 1000:.0f} ms", "dim")
    if v.reason and not proved:
        t.append("\n" + _indented(v.reason, indent + "    "), "red")
    return t


def print_obligations(console: Console, session: Session, source: Optional[Level2Result]) -> None:
    """`otp check --level 2`: per step its obligations and the time each
    took, then the totals (the input's check included)."""
    if source is not None:
        console.print(Text("  ").append_text(input_line(source)), end="")
    results = leaf_results(session.steps)
    for step, r in results:
        head = Text(f"  step {step.number} ", "bold").append(step.call, "cyan").append("  ").append_text(l2_badge(r))
        console.print(head.append(f"  {r.time_s * 1000:.0f} ms", "dim"))
        for v in r.verdicts:
            console.print(_verdict_line(v, "    "))
        for p in r.resources:
            console.print(Text(f"    ✗ resources: {p}", "bold red"))
    totals = level2_totals([r for _, r in results] + ([source] if source is not None else []))
    console.print(Text("  ").append_text(totals_text(totals)))


def print_summary(console: Console, session: Session, level: int, exec_run: bool,
                  source: Optional[Level2Result] = None) -> None:
    table = Table(title=None, show_lines=False)
    for col in ("step", "transformation", "line", "checks", "time"):
        table.add_column(col)
    if source is not None:
        table.add_row(Text("0"), Text("input"), Text(""), input_badge(source),
                      Text(f"{source.time_s * 1000:.0f} ms"))
    for s in session.steps:
        table.add_row(Text(s.number), Text(s.call), Text(str(s.line or "")), badges(s),
                      Text(f"{s.time_s * 1000:.0f} ms"))
    console.print(table)
    for m in model_checks(session):
        console.print(Text(m.text(), "green" if m.ok else "bold red"))
    if level >= 2:
        console.print(totals_text(level2_totals([r for _, r in leaf_results(session.steps)]
                                                + ([source] if source is not None else []))))
    else:
        n = sum(unproved(s) for s in session.steps)
        if n:
            console.print(Text(f"⚠ {n} validity obligation{'s' if n > 1 else ''} not proved: level {level} "
                               f"checks well-formedness only; --level 2 proves them (--exec tests them on "
                               f"random inputs).", "bold yellow"))
    if not exec_run:
        console.print(Text("outputs not compared: add --exec to run each step against the original", "dim"))


def failed_checks(session: Session, source: Optional[Level2Result] = None) -> list[str]:
    """One line per failed check, named after the deepest step that fails it
    (a composite that fails only because a sub-step does is not repeated)."""
    out = [f"input: does not fit its contracts: {p}" for p in (source.resources if source else ())]
    out += [f"input: {m.text()}" for m in model_checks(session) if not m.ok]

    def visit(step: Step) -> None:
        for name, c in step.checks.items():
            if not c.ok and all(sub.checks.get(name) is None or sub.checks[name].ok for sub in step.substeps):
                out.append(f"step {step.number} {step.call}: {name} failed: "
                           + "; ".join(getattr(c, "problems", ()) or [c.short()]))
        for s in step.substeps:
            visit(s)
    for s in session.steps:
        visit(s)
    return out
