"""Steps, sessions and the decorators that turn a rewrite into a step.

A transformation is written as a pure function `(program, *args) -> Rewrite`.
Decorated with `@primitive`, calling it inside a script applies it to the
session's current program and records one step; `@composite` functions call
other transformations, whose steps are recorded as its sub-steps. `.apply()`
runs either kind on a given program outside any script (for tests and
`otp apply`).
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any, Callable, Optional

from . import ir
from .errors import OtpError, ScriptError, TransformError
from .obligation import Obligation
from .target import Resolver


@dataclass(frozen=True)
class Rewrite:
    """What a transformation returns: the new program and why it is valid.

    `fp` is "exact" when every float operation happens in the same order,
    "reassoc" when float results may round differently (checked with a
    tolerance), or "lossy" when the step changes values on purpose (storage
    in a narrower type): `tolerance` is then the relative error it declares,
    which the exec check allows and reports. `inherits` pairs a function the
    step created with the function whose contract it shares (a variant for
    one instruction set), so that level 2 checks it too."""

    program: ir.Program
    obligations: tuple[Obligation, ...] = ()
    fp: str = "exact"
    tolerance: float = 0.0
    inherits: tuple[tuple[str, str], ...] = ()


def inherit_contracts(contracts: dict[str, Any], rewrite: Rewrite) -> dict[str, Any]:
    """`contracts` with those of the functions `rewrite` created added: a
    variant shares its original's (`inherits`); a function generated with
    contract clauses at the top of its body (`__reads("...")`, ...) has those."""
    from .spec import contract_from_clauses

    out = dict(contracts)
    for new, old in rewrite.inherits:
        if old in out and new not in out:
            out[new] = dataclasses.replace(out[old], function=new)
    for f in rewrite.program.functions():
        if f.name not in out and f.contract:
            out[f.name] = contract_from_clauses(f)
    return out


@dataclass
class Step:
    """The record of one transformation call (append-only once closed)."""

    number: str
    name: str
    args: tuple[str, ...]
    target: Optional[str]
    line: Optional[int]
    before: ir.Program
    after: ir.Program
    obligations: tuple[Obligation, ...] = ()
    fp: str = "exact"
    tolerance: float = 0.0
    time_s: float = 0.0
    substeps: list["Step"] = field(default_factory=list)
    error: Optional[str] = None
    checks: dict[str, Any] = field(default_factory=dict)

    @property
    def call(self) -> str:
        return f"{self.name}({', '.join(self.args)})"

    def all_obligations(self) -> tuple[Obligation, ...]:
        out = list(self.obligations)
        for s in self.substeps:
            out.extend(s.all_obligations())
        return tuple(out)

    def inexact(self) -> bool:
        return self.fp != "exact" or any(s.inexact() for s in self.substeps)

    def lossy_tolerance(self) -> float:
        """The relative error that this step and its sub-steps declare as
        lossy, summed (0.0 when none is lossy)."""
        own = self.tolerance if self.fp == "lossy" else 0.0
        return own + sum(s.lossy_tolerance() for s in self.substeps)


class StepFailed(OtpError):
    """A transformation refused or failed inside a script; names the step."""

    def __init__(self, step: Step, cause: OtpError) -> None:
        where = f" (line {step.line} of the code before the step)" if step.line else ""
        super().__init__(f"step {step.number} {step.call}{where} failed: {cause.message}", cause.loc)
        self.step = step
        self.cause = cause


class StopScript(Exception):
    """Raised after the step `--step N` asked to stop at."""


class Session:
    """The state of one script run: the current program and its steps."""

    def __init__(self, base_dir: str | FsPath = ".", target: str = "cpu", stop_after: Optional[int] = None,
                 sizes: Optional[dict[str, float]] = None, precision: str = "fp32") -> None:
        self.base_dir = FsPath(base_dir)
        self.target = target
        self.precision = precision
        self.precision_read = False
        """Whether the script asked for precision(): a --precision it never reads is refused."""
        self.stop_after = stop_after
        self.size_overrides = dict(sizes or {})
        self.program: Optional[ir.Program] = None
        self.original: Optional[ir.Program] = None
        self.source_path: Optional[FsPath] = None
        self.spec_path: Optional[FsPath] = None
        self.contracts: dict[str, Any] = {}
        self.sizes: dict[str, float] = {}
        self.check_sizes: list[dict[str, int]] = []
        self.models: list[Any] = []
        """The original program against its contracts' models (`ensures`), once level 3 ran."""
        self.level3_s = 0.0
        """Seconds level 3 took, start to end (its steps' times add up to more: it runs in two processes)."""
        self.steps: list[Step] = []
        self._open: list[Step] = []
        self._token: Optional[contextvars.Token[Optional[Session]]] = None

    def __enter__(self) -> "Session":
        self._token = _current.set(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._token is not None
        _current.reset(self._token)

    def resolve(self, path: str | FsPath) -> FsPath:
        p = FsPath(path)
        return FsPath(os.path.normpath(p if p.is_absolute() else self.base_dir / p))

    def load(self, c_file: str | FsPath, spec: str | FsPath | None = None,
             sizes: Optional[dict[str, float]] = None,
             check_sizes: Optional[list[dict[str, int]]] = None) -> ir.Program:
        from .frontend import parse_file
        from .spec import load_contracts

        if self.program is not None:
            raise ScriptError("load() was already called: a script transforms one C file")
        path = self.resolve(c_file)
        if not path.is_file():
            raise ScriptError(f"no such C file: {path}")
        program = parse_file(path)
        spec_path = self.resolve(spec) if spec is not None else _default_spec(path)
        if spec is not None and (spec_path is None or not spec_path.is_file()):
            raise ScriptError(f"no such spec file: {spec_path}")
        self.contracts = load_contracts(program, str(spec_path) if spec_path else None)
        self.program = self.original = program
        self.source_path, self.spec_path = path, spec_path
        self.sizes = {**(sizes or {}), **self.size_overrides}
        self.check_sizes = list(check_sizes or [])
        return program

    def current(self) -> ir.Program:
        if self.program is None:
            raise ScriptError("no program loaded: call load('path/to/file.c') before any transformation")
        return self.program

    def _number(self) -> str:
        if self._open:
            parent = self._open[-1]
            return f"{parent.number}.{len(parent.substeps) + 1}"
        return str(len(self.steps) + 1)

    def _record(self, step: Step) -> None:
        if self._open:
            self._open[-1].substeps.append(step)
        else:
            self.steps.append(step)

    def run_step(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 body: Callable[[], Optional[Rewrite]]) -> None:
        """Apply one transformation as a step; `body` returns a Rewrite
        (primitives) or None (composites, whose sub-steps did the work)."""
        before = self.current()
        target = args[0] if args and isinstance(args[0], str) else None
        step = Step(self._number(), name, _show_args(args, kwargs), target, _line_of(before, target),
                    before, before)
        t0 = time.perf_counter()
        self._open.append(step)
        try:
            rewrite = body()
        except OtpError as e:
            step.error = e.message if not isinstance(e, StepFailed) else e.cause.message
            step.time_s = time.perf_counter() - t0
            self._open.pop()
            self._record(step)
            if isinstance(e, StepFailed):
                raise
            raise StepFailed(step, e) from e
        self._open.pop()
        if rewrite is not None:
            self.program = rewrite.program
            self.contracts.update(inherit_contracts(self.contracts, rewrite))
            step.obligations, step.fp, step.tolerance = rewrite.obligations, rewrite.fp, rewrite.tolerance
        step.after = self.current()
        step.time_s = time.perf_counter() - t0
        self._record(step)
        if not self._open and self.stop_after is not None and len(self.steps) >= self.stop_after:
            raise StopScript()


_current: contextvars.ContextVar[Optional[Session]] = contextvars.ContextVar("otp_session", default=None)


def current_session() -> Session:
    s = _current.get()
    if s is None:
        raise ScriptError("no otp session: run this script with `otp run SCRIPT`, or call load() first")
    return s


def _default_spec(c_path: FsPath) -> Optional[FsPath]:
    """`specs/<stem>.spec` beside the C file's folder, else `<stem>.spec` next to it."""
    for cand in (c_path.parent.parent / "specs" / f"{c_path.stem}.spec", c_path.with_suffix(".spec")):
        if cand.is_file():
            return cand
    return None


def _show_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
    return tuple(repr(a) for a in args) + tuple(f"{k}={v!r}" for k, v in kwargs.items())


def _line_of(program: ir.Program, target: Optional[str]) -> Optional[int]:
    if target is None:
        return None
    try:
        ms = Resolver(program).matches(target)
    except OtpError:
        return None
    return ms[0].line if ms else None


def _family(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"


class Transformation:
    """A catalogue entry: callable in a script (records a step) or through
    `.apply(program, ...)` (returns the Rewrite)."""

    def __init__(self, fn: Callable[..., Any], composite: bool) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.composite = composite
        self.name = _family(fn)

    def check_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Wrong arguments are the user's mistake, not a crash of otp."""
        params = list(inspect.signature(self.fn).parameters.values())
        shown = [p.replace(annotation=inspect.Parameter.empty) for p in params[(0 if self.composite else 1):]]
        try:
            inspect.Signature(shown).bind(*args, **kwargs)
        except TypeError as e:
            usage = ", ".join(str(p) for p in shown)
            raise TransformError(f"{self.name}: {e} (usage: {self.name}({usage}))") from None

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        session = current_session()
        self.check_arguments(args, kwargs)
        if self.composite:
            session.run_step(self.name, args, kwargs, lambda: self.fn(*args, **kwargs))
        else:
            session.run_step(self.name, args, kwargs, lambda: self.fn(session.current(), *args, **kwargs))

    def apply(self, program: ir.Program, *args: Any, **kwargs: Any) -> Rewrite:
        """Run on `program` outside a script; raises the transformation's error
        itself (not wrapped as a step failure)."""
        self.check_arguments(args, kwargs)
        if not self.composite:
            result = self.fn(program, *args, **kwargs)
            assert isinstance(result, Rewrite)
            return result
        with Session() as s:
            s.program = s.original = program
            try:
                self(*args, **kwargs)
            except StepFailed as e:
                raise e.cause from None
            step = s.steps[-1]
            lossy = step.lossy_tolerance()
            fp = "lossy" if lossy else "reassoc" if step.inexact() else "exact"
            return Rewrite(step.after, step.all_obligations(), fp, lossy)


def primitive(fn: Callable[..., Rewrite]) -> Transformation:
    return Transformation(fn, composite=False)


def composite(fn: Callable[..., None]) -> Transformation:
    return Transformation(fn, composite=True)
