"""The `otp` command. Every user-facing error becomes a one-paragraph message
and an exit status (2: bad input or refused step, 1: a check failed, 3: an
internal error); a traceback only with --debug."""
from __future__ import annotations

import ast
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import click
from rich.console import Console
from rich.text import Text

from .errors import CheckFailed, OtpError, ScriptError, ToolError, UsageError
from .frontend import parse_file
from .outputs import CodeCache, write_run
from .printer import to_c
from .report import (failed_checks, leaf_results, level2_totals, level3_json, print_level3, print_obligations,
                     print_steps, print_summary, totals_text, unproved)
from .runner import new_session, run_script
from .session import Session

if TYPE_CHECKING:
    from .level2 import Level2Result

_state = {"debug": False}
LEVELS = {1: "well-formedness", 2: "obligations and resources, proved with Z3",
          3: "each step computes what the step before computed, by symbolic execution"}


def _debug_option(f: Callable[..., Any]) -> Callable[..., Any]:
    def set_debug(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
        _state["debug"] = _state["debug"] or value
        return value
    return click.option("--debug", is_flag=True, expose_value=False, callback=set_debug, is_eager=True,
                        help="Show Python tracebacks for errors.")(f)


def _precision_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
                        help="The precision the script's ending is asked for (scripts read it with precision(); "
                             "attention.py's CUDA ending: bfloat16 tiles on tensor cores).")(f)


def _solver_option(f: Callable[..., Any]) -> Callable[..., Any]:
    def set_limit(ctx: click.Context, param: click.Parameter, value: Optional[int]) -> Optional[int]:
        if value is not None:
            if value < 1:
                raise click.BadParameter(f"must be a positive number of Z3 work units, got {value}")
            from . import smt  # Z3 only for the commands that prove

            smt.RLIMIT = value
        return value
    return click.option("--solver-limit", type=int, expose_value=False, callback=set_limit,
                        help="Z3's work limit per query (rlimit units; the default is smt.RLIMIT). Raise it "
                             "when obligations come back unknown because the limit was reached.")(f)


def parse_sizes(text: Optional[str]) -> dict[str, float]:
    """`N=256,D=64` -> {"N": 256, "D": 64}."""
    out: dict[str, float] = {}
    if not text:
        return out
    for part in text.split(","):
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name.isidentifier():
            raise OtpError(f"--size: cannot read {part.strip()!r}; expected NAME=VALUE[,NAME=VALUE...], e.g. N=256,D=64")
        try:
            out[name] = int(value)
        except ValueError:
            try:
                out[name] = float(value)
            except ValueError:
                raise OtpError(f"--size: {name}={value!r} is not a number") from None
    return out


def _check_level(level: int) -> None:
    if level not in LEVELS:
        known = "; ".join(f"--level {n} ({what})" for n, what in LEVELS.items())
        raise OtpError(f"--level {level} is not available in this version of otp: there is no such level. "
                       f"The levels are {known}; --exec also runs every step against the original on random inputs")


def _check_target(target: str) -> None:
    """--target cuda needs nvcc: level 1 compiles the emitted CUDA, bench builds it."""
    from .cuda_build import find_nvcc

    if target == "cuda" and find_nvcc() is None:
        raise ToolError("--target cuda needs nvcc (the CUDA compiler), which was not found on PATH nor in "
                        "/usr/local/cuda/bin; set OTP_NVCC to its path, or use --target cpu")


def _cuda_final(session: Session, dest: Optional[Path]) -> list[str]:
    """`--target cuda`: emit the final program as CUDA, compile it with nvcc
    (level 1) and write it as `dest/final.cu` (when `dest` is given); nvcc's
    complaints are returned."""
    from .cuda_build import emit_checked

    if session.program is None:
        return []
    text, problems = emit_checked(session.program, "final.cu")
    if dest is not None:
        (dest / "final.cu").write_text(text)
    return problems


def _console(no_color: bool) -> Console:
    return Console(no_color=no_color, highlight=False, force_terminal=None if not no_color else False,
                   soft_wrap=True)


@click.group()
@_debug_option
def cli() -> None:
    """otp: rewrite naive C kernels into fast C, one checked step at a time."""


@cli.command()
@click.argument("script")
@click.option("--level", type=int, default=1, show_default=True, help="Check level for each step.")
@click.option("--exec", "run_exec", is_flag=True, help="Build and run every step against the original.")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--size", "sizes", help="Sizes for --exec, e.g. N=256,D=64 (override the script's).")
@click.option("--step", "stop_after", type=int, help="Stop after step N.")
@click.option("--out", "out_dir", default="out", show_default=True, help="Folder for the step files.")
@click.option("--quiet", is_flag=True, help="Only the summary, no diffs.")
@click.option("--no-color", is_flag=True, help="Plain text output.")
@click.option("--annotate", is_flag=True,
              help="Show the diffs with each loop's inferred contract; write final.annotated.c.")
@click.option("--html", "show_html", is_flag=True,
              help="Print the address of the trace viewer (out/<script>/trace.html, always written).")
@_precision_option
@_solver_option
@_debug_option
def run(script: str, level: int, run_exec: bool, target: str, sizes: Optional[str], stop_after: Optional[int],
        out_dir: str, quiet: bool, no_color: bool, annotate: bool, show_html: bool, precision: str) -> None:
    """Apply SCRIPT step by step, show each step's diff, write out/<script>/."""
    _check_level(level)
    _check_target(target)
    session = new_session(script, target, stop_after, parse_sizes(sizes), precision)
    _run_and_report(session, lambda: run_script(session, script), script, level, run_exec, out_dir, quiet,
                    no_color, annotate, show_html)


@cli.command()
@click.argument("c_file")
@click.argument("transformations", nargs=-1, required=True)
@click.option("--spec", help="Contract file (default: specs/<stem>.spec beside the C file's folder).")
@click.option("--level", type=int, default=1, show_default=True)
@click.option("--exec", "run_exec", is_flag=True)
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--size", "sizes")
@click.option("--out", "out_dir", default="out", show_default=True)
@click.option("--quiet", is_flag=True)
@click.option("--no-color", is_flag=True)
@_solver_option
@_debug_option
def apply(c_file: str, transformations: tuple[str, ...], spec: Optional[str], level: int, run_exec: bool,
          target: str, sizes: Optional[str], out_dir: str, quiet: bool, no_color: bool) -> None:
    """Apply transformations given on the command line, e.g.
    otp apply c_sources/matmul.c "loop.tile('matmul > for i', 32)"
    (with --target cuda, the gpu steps' result is also written as final.cu)."""
    from .registry import find

    _check_level(level)
    _check_target(target)
    calls = [_parse_call(t) for t in transformations]
    session = Session(Path.cwd(), target, None, parse_sizes(sizes))

    def body() -> Optional[OtpError]:
        with session:
            try:
                session.load(c_file, spec)
                for name, args, kwargs in calls:
                    find(name)(*args, **kwargs)
            except OtpError as e:
                return e
        return None
    _run_and_report(session, body, c_file, level, run_exec, out_dir, quiet, no_color)


def _parse_call(text: str) -> tuple[str, list[Any], dict[str, Any]]:
    """`loop.tile('f > for i', 32)` -> ("loop.tile", [...], {...}); literals only."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            raise ValueError
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    except (SyntaxError, ValueError):
        raise OtpError(f"cannot read transformation {text!r}: expected family.name(literal arguments), "
                       f"e.g. \"loop.tile('matmul > for i', 32)\"") from None
    return f"{node.func.value.id}.{node.func.attr}", args, kwargs


def _run_and_report(session: Session, body: Callable[[], Optional[OtpError]], name: str, level: int,
                    run_exec: bool, out_dir: str, quiet: bool, no_color: bool, annotate: bool = False,
                    show_html: bool = False) -> None:
    """Check the steps, write out/<script>/ and print the steps; the loop
    contracts are inferred for the trace with --annotate or at level 3."""
    from .progress import check_progress

    console = _console(no_color)
    error = body()
    if isinstance(error, UsageError):
        raise error
    code = CodeCache()
    source = None
    if session.steps:
        with check_progress(session, level, run_exec, no_color):
            check_error, source = _checked(session, level, run_exec)
        error = error or check_error
    inferred = CodeCache(lambda p: _annotated(p, session.contracts)) if annotate or level >= 3 else None
    try:
        dest = write_run(session, name, Path(out_dir), str(error) if error else None, code, source, inferred)
    except OSError as e:
        raise ToolError(f"cannot write the run's files into {Path(out_dir) / Path(name).stem}: "
                        f"{e.strerror or e}") from None
    if not quiet:
        print_steps(console, session, inferred if annotate and inferred is not None else code, source)
    print_summary(console, session, level, run_exec, source)
    console.print(f"wrote {dest}/", style="dim")
    if show_html:
        console.print(f"trace viewer: {(dest / 'trace.html').resolve().as_uri()}")
    if error is not None:
        raise error
    failures = failed_checks(session, source)
    if session.target == "cuda":
        failures += _cuda_final(session, dest)
        console.print(f"wrote {dest / 'final.cu'}", style="dim")
    if failures:
        raise _Failed(failures)


def _checked(session: Session, level: int, run_exec: bool) -> tuple[Optional[OtpError], Optional[Level2Result]]:
    """Run the checks; an error they raise (e.g. sizes missing for --exec)
    is returned so the steps are still written and reported. The second
    value is the input program's check against its contracts (level 2)."""
    from .checks import run_checks  # gcc and the harness only for commands that check

    try:
        return None, run_checks(session, level, run_exec)
    except OtpError as e:
        return e, None


class _Failed(OtpError):
    exit_code = 1

    def __init__(self, failures: list[str]) -> None:
        super().__init__("\n".join(failures))


@cli.command()
@click.argument("scripts", nargs=-1)
@click.option("--level", type=int, default=1, show_default=True)
@click.option("--exec", "run_exec", is_flag=True)
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--size", "sizes")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-color", is_flag=True)
@click.option("--show-contracts", is_flag=True,
              help="Print each script's final program with every loop's inferred contract.")
@_precision_option
@_solver_option
@_debug_option
def check(scripts: tuple[str, ...], level: int, run_exec: bool, target: str, sizes: Optional[str], as_json: bool,
          no_color: bool, show_contracts: bool, precision: str) -> None:
    """Check every step of SCRIPTS (default: every script in scripts/)."""
    from .progress import check_progress

    _check_level(level)
    _check_target(target)
    paths = list(scripts) or sorted(str(p) for p in Path("scripts").glob("*.py"))
    if not paths:
        raise ScriptError("no scripts given and none found in ./scripts/")
    sessions = [new_session(script, target, None, parse_sizes(sizes), precision)
                for script in paths]  # bad paths fail first
    console = _console(no_color)
    results: list[dict[str, Any]] = []
    level2: list[Level2Result] = []
    worst = 0
    for script, session in zip(paths, sessions):
        error = run_script(session, script)
        source = None
        if error is None:
            with check_progress(session, level, run_exec, no_color, not as_json):
                error, source = _checked(session, level, run_exec)
        failures = failed_checks(session, source)
        if error is None and target == "cuda":
            try:
                failures += _cuda_final(session, None)
            except OtpError as e:
                error = e
        status = 2 if error else 1 if failures else 0
        worst = max(worst, status)
        not_proved = sum(unproved(s) for s in session.steps)
        entry: dict[str, Any] = {"script": script, "steps": len(session.steps), "ok": status == 0,
                                 "error": str(error) if error else None, "failures": failures,
                                 "unproved_obligations": not_proved, "level": level, "exec": run_exec}
        checked = [r for _, r in leaf_results(session.steps)] + ([source] if source is not None else [])
        level2.extend(checked)
        if level >= 2:
            entry["level2"] = _level2_json(session, source, checked)
        if level >= 3:
            entry["level3"] = level3_json(session)
        if show_contracts and session.program is not None:
            entry["contracts"] = _inferred(session)
        results.append(entry)
        if not as_json:
            _print_script(console, session, entry, source)
    if as_json:
        out: dict[str, Any] = {"level": level, "exec": run_exec, "scripts": results}
        if level >= 2:
            out["level2"] = level2_totals(level2)
        click.echo(json.dumps(out, indent=1))
    elif level >= 2 and len(paths) > 1:
        console.print(Text("all scripts: ").append_text(totals_text(level2_totals(level2))))
    if worst:
        sys.exit(worst)


def _annotated(program: Any, contracts: Any) -> str:
    from .infer import annotate  # Z3 only for the commands that infer

    return annotate(program, contracts)


def _inferred(session: Session) -> dict[str, Any]:
    """The final program with its inferred loop contracts, and the time the inference took."""
    assert session.program is not None
    start = time.perf_counter()
    text = _annotated(session.program, session.contracts)
    return {"code": text, "time_s": round(time.perf_counter() - start, 3)}


def _level2_json(session: Session, source: Optional[Level2Result], checked: list[Level2Result]) -> dict[str, Any]:
    """A script's level-2 results: the input's check, each primitive step's
    verdicts and resource problems, and the totals over them."""
    return {"input": source.to_json() if source is not None else None,
            "steps": [{"number": s.number, "call": s.call, **r.to_json()} for s, r in leaf_results(session.steps)],
            **level2_totals(checked)}


def _print_script(console: Console, session: Session, entry: dict[str, Any], source: Optional[Level2Result]) -> None:
    """`otp check`'s text for one script (from its JSON entry): a line, what
    failed, and at level 2 every step's obligations with their times, then
    the totals; at level 3 every step's label and time."""
    ok = entry["ok"]
    line = Text("✓ " if ok else "✗ ", "green" if ok else "bold red")
    line.append(f"{entry['script']}: {entry['steps']} steps, level {entry['level']}{' + exec' if entry['exec'] else ''}, ")
    line.append(f"{entry['unproved_obligations']} obligations not proved", "yellow")
    console.print(line)
    for f in ([entry["error"]] if entry["error"] else []) + entry["failures"]:
        console.print(Text(f"    {f}", "red"))
    if entry["level"] >= 2 and not entry["error"]:
        print_obligations(console, session, source)
    if entry["level"] >= 3 and not entry["error"]:
        print_level3(console, session)
    if "contracts" in entry:
        console.print(Text(f"  inferred loop contracts of the final program ({entry['contracts']['time_s']} s):",
                           "bold"))
        console.print(Text(entry["contracts"]["code"]))


@cli.command()
@click.argument("script")
@click.option("--target", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--size", "sizes", help="Sizes, e.g. M=1024,N=1024,K=1024 (override the script's bench()).")
@click.option("--threads", type=int, help="Threads for OpenMP and the library (default: every core).")
@click.option("--repeats", type=int,
              help="Timed calls of each variant (default: up to 10, stopping after 3 once ~1 s is spent).")
@click.option("--compare", "library", type=click.Choice(["numpy", "torch"]),
              help="Also time the script's numpy= or torch= formulation on the same inputs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--no-color", is_flag=True)
@click.option("--out", "out_dir", default="out", show_default=True,
              help="Record the run in <out>/<script>/bench.json (the trace viewer's chart).")
@click.option("--plot", "plot", type=click.Path(dir_okay=False),
              help="Also write the chart of every run recorded for SCRIPT to this .svg file.")
@_precision_option
@_debug_option
def bench(script: str, target: str, sizes: Optional[str], threads: Optional[int], repeats: Optional[int],
          library: Optional[str], as_json: bool, no_color: bool, out_dir: str, plot: Optional[str],
          precision: str) -> None:
    """Build SCRIPT's original and final programs with gcc -O3, check that
    their outputs agree, and time them side by side."""
    from .bench import declared, print_report, run_bench
    from .build import BENCH_FLAGS
    from .progress import bench_progress

    if plot is not None and not plot.endswith(".svg"):
        raise OtpError(f"--plot {plot}: the chart is written as SVG; give a file name ending in .svg")

    _check_target(target)
    if target == "cuda":
        from .cuda_bench import bench_cuda

        bench_cuda(script, parse_sizes(sizes), repeats, library, as_json, _console(no_color), precision)
        return
    overrides = parse_sizes(sizes)
    session = new_session(script, target, precision=precision)
    error = run_script(session, script)
    if error is not None:
        raise error
    spec = declared(session)
    if spec is None:
        raise ScriptError(f"{script} declares no benchmark: add bench(\"FUNCTION\", sizes={{...}}, "
                          f"flops=\"...\") after load() to say what to time (see README, Benchmarks)")
    assert session.original is not None and session.program is not None
    with bench_progress(2 + len(spec.variants) + (library is not None), no_color, not as_json) as progress:
        report = run_bench(session.original, session.program, session.contracts, spec, overrides,
                           os.cpu_count() or 1 if threads is None else threads, repeats, library, progress)
    _record_bench(report.to_json(script, target), Path(out_dir) / Path(script).stem, plot)
    if as_json:
        click.echo(json.dumps(report.to_json(script, target), indent=1))
    else:
        print_report(_console(no_color), report, BENCH_FLAGS)
    if not report.ok:
        raise CheckFailed(report.failure)


def _record_bench(run: dict[str, Any], folder: Path, plot: Optional[str]) -> None:
    """Keep the run in folder/bench.json, redraw the trace viewer there (if
    `otp run` wrote one) and write the chart to `plot` when asked."""
    from .bench_results import bench_svg, record_run, write_atomic
    from .trace_html import refresh_page

    try:
        runs = record_run(folder, run)
        refresh_page(folder)
        if plot is not None:
            write_atomic(Path(plot), bench_svg(runs))
    except OSError as e:
        raise OtpError(f"cannot write the benchmark's files ({e.filename}): {e.strerror or e}") from None
    except ValueError as e:
        raise OtpError(f"--plot {plot}: {e}") from None


@cli.command(name="print")
@click.argument("c_file")
@_debug_option
def print_cmd(c_file: str) -> None:
    """Print C_FILE back through otp's IR (parse, then print)."""
    click.echo(to_c(parse_file(c_file)), nl=False)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except OtpError as e:
        if _state["debug"]:
            raise
        click.echo(str(e), err=True)
        sys.exit(e.exit_code)
    except Exception as e:
        if _state["debug"]:
            raise
        click.echo(f"internal error: {type(e).__name__}: {e}\n(this is a bug in otp; rerun with --debug "
                   f"for the traceback)", err=True)
        sys.exit(3)


def entry() -> None:
    """The `otp` command: `main`, then leave without tearing the heap down
    (a level-3 run interns millions of terms, and freeing them one by one
    takes a second that frees nothing the system would not)."""
    try:
        main()
        code = 0
    except SystemExit as e:
        if isinstance(e.code, str):
            click.echo(e.code, err=True)
        code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
