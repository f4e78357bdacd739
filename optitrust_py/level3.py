"""Level 3: each step computes what the step before it computed.

For every function with a contract that the step changed (its body or a
function it calls), both versions run symbolically (`symexec`) on the same
unknown inputs at small concrete sizes, and every output cell is compared:

- `=`: the two terms are the same term (hash-consed), so the step rounds
  exactly as before;
- `≈fp`: the terms differ but have the same normal form over the reals
  (`canon`: reassociated sums, the online-softmax rescaling, ...), so the
  step may round differently;
- `quantized(bound)`: a step that declares it changes values (storage in
  int8) and does: every cell stays within its declared relative bound on
  the seeds (`--exec` measures it on real data), and where it reads inputs
  through int8 codes, each output is the step before's with each such
  input replaced by its code times its own group's scale (`quantized`)
  (a lossy step whose only approximation is one level 3 takes as exact,
  the vector exp, gets the label its comparison earns, `=` or `≈fp`);
- refuted: some cell differs, shown by inputs on which the two terms
  evaluate to different numbers (the cell, both values and the seed);
- unknown: neither equal nor shown different.

A step that declares bit-exact results (`fp="exact"`) but is only `≈fp`
fails: its `--exec` check would be bit-exact. Runs are cached by the
function's code and sizes, so each version of a function runs once per
size set. Sizes come from the script (`load(..., check_sizes=[...])`) or
are chosen for each step from the code it compares (`choose_sizes`: every
tile of that code run in full and a tail, both sides of each test of a size
against a constant), within the contract's `requires`: a step that only
names a scale runs at sizes of 5, one that tiles by 64 at 69. Each step is
thus checked where its own code branches, not at sizes chosen for the
whole script (which made every step pay for the largest tile of any).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from . import canon, dispatch, ir, locality, printer, quantized, translate, unfold
from .contract import Contract, evaluate
from .errors import OtpError
from .names import calls, reached
from .symexec import Outcome, Unsupported, run
from .terms import COMMUTATIVE, Term, integer_bound

SEEDS = (1, 2, 3)
FAILED = ("refuted", "not checkable", "unknown")
"""The statuses that fail a step, the worst first: a failed step takes the
worst of them as its label (never `=`)."""
CONDITIONS = 8
"""At most this many data conditions are split into cases per cell pair
to compare normal forms, which grow fast with the conditions left."""
ROUNDING_CONDITIONS = 16
"""As many to compare terms, which costs no normal form (a MoE routing of
top-2 of 3 experts tests 14 conditions)."""
CASES = 512
"""At most this many cases are tried per cell pair."""


@dataclass(frozen=True)
class FunctionCheck:
    """One function of a step at one set of sizes."""

    function: str
    sizes: tuple[tuple[str, int], ...]
    status: str  # "=", "≈fp", "refuted", "unknown", "not checkable", "changed" (a lossy step)
    detail: str = ""
    cells: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"function": self.function, "sizes": dict(self.sizes), "status": self.status,
                "detail": self.detail, "cells": self.cells}


@dataclass(frozen=True)
class Level3Result:
    label: str
    functions: tuple[FunctionCheck, ...]
    problems: tuple[str, ...]
    time_s: float

    @property
    def ok(self) -> bool:
        return not self.problems

    def short(self) -> str:
        return self.label if self.ok else f"✗ {self.problems[0][:80]}"

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "label": self.label, "problems": list(self.problems), "time_s": self.time_s,
                "functions": [f.to_json() for f in self.functions]}


@dataclass
class Runs:
    """What level 3 keeps across the steps of a script: runs by function
    code and sizes, and one normaliser (its memo follows the shared terms)."""

    outcomes: dict[tuple[Any, ...], Outcome] = field(default_factory=dict)
    normalizer: canon.Normalizer = field(default_factory=canon.Normalizer)
    costs: dict[tuple[Any, ...], float] = field(default_factory=dict)
    """Seconds the latest whole run of a function took, by function, sizes and choices."""
    unfolding: unfold.Unfolding = field(default_factory=unfold.Unfolding)
    locals: dict[tuple[Any, ...], tuple[ir.Stmt, locality.Local]] = field(default_factory=dict)
    """Local runs by statement (kept, so its id stays its own), callees, instance and choices."""
    verdicts: dict[tuple[int, int], tuple[locality.Local, locality.Local, tuple[str, str, int]]] = \
        field(default_factory=dict)
    """Comparisons of two local runs, by the runs (kept)."""
    patterns: dict[tuple[int, int], tuple[ir.Stmt, ir.Stmt, translate.Pattern]] = field(default_factory=dict)
    """`translate` patterns of changed statements, by their versions (kept)."""

    def run(self, program: ir.Program, function: str, contract: Contract, sizes: Mapping[str, int],
            choices: Mapping[str, bool]) -> Outcome:
        key = self._key(program, function, sizes, choices)
        got = self.outcomes.get(key)
        if got is None:
            t0 = time.process_time()
            got = self.outcomes[key] = run(program, function, contract, sizes, choices)
            self.costs[(function, *key[1:])] = time.process_time() - t0
        return got

    def local(self, program: ir.Program, stmt: ir.Stmt, at: locality.Instance,
              choices: Mapping[str, bool]) -> locality.Local:
        """`locality.run_at`, once per statement, instance and choices (a step's
        code after is the next step's code before, and a function that
        dispatches to a variant runs the variant's statements)."""
        where = at.key()
        if where is None:
            return locality.run_at(program, stmt, at, choices)
        callees = tuple(f for n in sorted(calls(stmt)) for f in reached(program, n))
        key = (id(stmt), callees, where, tuple(sorted(choices.items())))
        got = self.locals.get(key)
        if got is None:
            got = self.locals[key] = (stmt, locality.run_at(program, stmt, at, choices))
        return got[1]

    def verdict(self, old: locality.Local, new: locality.Local) -> tuple[str, str, int]:
        """`compare_outcomes` of two local runs, and the cells compared, once per pair."""
        got = self.verdicts.get((id(old), id(new)))
        if got is None:
            a, b = locality.outcomes(old, new)
            verdict = (*compare_outcomes(a, b, self.normalizer), len(a.cells))
            got = self.verdicts[(id(old), id(new))] = (old, new, verdict)
        return got[2]

    def pattern(self, old: ir.Stmt, new: ir.Stmt) -> translate.Pattern:
        """`translate.pattern` of a changed statement's two versions, once."""
        got = self.patterns.get((id(old), id(new)))
        if got is None:
            got = self.patterns[(id(old), id(new))] = (old, new, translate.pattern(old, new))
        return got[2]

    def has(self, program: ir.Program, function: str, sizes: Mapping[str, int], choices: Mapping[str, bool]) -> bool:
        return self._key(program, function, sizes, choices) in self.outcomes

    @staticmethod
    def _key(program: ir.Program, function: str, sizes: Mapping[str, int],
             choices: Mapping[str, bool]) -> tuple[Any, ...]:
        return reached(program, function), tuple(sorted(sizes.items())), tuple(sorted(choices.items()))


def check_step(before: ir.Program, after: ir.Program, contracts: Mapping[str, Contract],
               size_sets: Sequence[Mapping[str, int]], fp: str, tolerance: float, runs: Runs) -> Level3Result:
    """Compares every changed function with a contract, at every size set."""
    t0 = time.perf_counter()
    checks: list[FunctionCheck] = []
    bound = tolerance if fp == "lossy" else None
    for name in _changed(before, after, contracts):
        for sizes in size_sets:
            checks.extend(_compare_function(before, after, name, contracts[name], sizes, runs, bound))
    statuses = {c.status for c in checks}
    if "changed" in statuses and not statuses & set(FAILED):
        return Level3Result(f"quantized({tolerance:.2g})", tuple(checks), (), time.perf_counter() - t0)
    problems = [f"{c.function} at {_sizes_text(c.sizes)}: {c.status}: {c.detail}" for c in checks
                if c.status not in ("=", "≈fp")]
    if fp == "lossy" and not problems:
        return Level3Result("≈fp" if "≈fp" in statuses else "=", tuple(checks), (), time.perf_counter() - t0)
    failed = [s for s in FAILED if s in statuses]
    label = failed[0] if failed else "≈fp" if "≈fp" in statuses else "="
    if label == "≈fp" and fp == "exact" and not problems:
        where = next(c for c in checks if c.status == "≈fp")
        problems.append(f"the step declares bit-exact results, but {where.function}'s outputs are only equal over "
                        f"the reals ({where.detail}); a step that reassociates floats must say fp='reassoc'")
    return Level3Result(label, tuple(checks), tuple(problems), time.perf_counter() - t0)


def _changed(before: ir.Program, after: ir.Program, contracts: Mapping[str, Contract]) -> list[str]:
    """Functions with a contract whose code (or a callee's) the step changed."""
    out = []
    for f in after.functions():
        if f.name in contracts and before.function(f.name) is not None \
                and reached(before, f.name) != reached(after, f.name):
            out.append(f.name)
    return out


def _sizes_text(sizes: tuple[tuple[str, int], ...]) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes)


def _compare_function(before: ir.Program, after: ir.Program, name: str, contract: Contract,
                      sizes: Mapping[str, int], runs: Runs, bound: Optional[float] = None) -> list[FunctionCheck]:
    key = tuple(sorted(sizes.items()))
    old_closure, new_closure = reached(before, name), reached(after, name)
    if locality.sequential(old_closure) == locality.sequential(new_closure):
        return [FunctionCheck(name, key, "=", "only pragmas changed, and level 3 runs the code as written, in "
                              "sequence (whether threads race is level 2's question)")]
    if runs.unfolding.same(before, old_closure, new_closure):
        return [FunctionCheck(name, key, "=", "the same code once each local that keeps its definition is replaced "
                              "by it (`unfold`): equal at every size, with no run")]
    if runs.unfolding.same(before, old_closure, new_closure, sizes):
        return [FunctionCheck(name, key, "=", "the same code at these sizes, once each local that keeps its "
                              "definition is replaced by it and each test of constants decided (`unfold`), with no run")]
    split = _dispatched(before, after, name)
    if split:
        return [dataclasses.replace(c, detail=f"{c.detail} (with {_choices_text(answers)})")
                for answers, b, a in split for c in _compare_function(b, a, name, contract, sizes, runs, bound)]
    where = locality.focus(before, after, old_closure, new_closure)
    pieces = locality.foci(before, after, old_closure, new_closure)
    for parts in ([pieces] if pieces else []) + ([[where]] if where is not None else []):
        try:
            return [c for w in parts for c in _compare_locally(before, after, name, contract, sizes, w, old_closure,
                                                                 runs)]
        except (locality.NotLocal, Unsupported):
            pass  # the whole changed statement, or else whole runs, decide (and name the output cell that differs)
    out: list[FunctionCheck] = []
    try:
        for choices in choice_sets(lambda c: runs.run(after, name, contract, sizes, c).choices):
            new = runs.run(after, name, contract, sizes, choices)
            old = runs.run(before, name, contract, sizes, choices)
            status, detail = compare_outcomes(old, new, runs.normalizer, bound)
            shown = detail + (f" (with {_choices_text(choices)})" if choices else "")
            out.append(FunctionCheck(name, key, status, shown, len(new.cells)))
    except Unsupported as e:
        out.append(FunctionCheck(name, key, "not checkable", e.message))
    return out


def _dispatched(before: ir.Program, after: ir.Program,
                name: str) -> list[tuple[dict[str, bool], ir.Program, ir.Program]]:
    """Both programs under each answer of the CPU test `name` starts with
    (`dispatch`), where both then run their own code; none otherwise."""
    found = {got[0] for p in (before, after) for f in [p.function(name)] if f is not None
             for got in [dispatch.choice(f)] if got is not None}
    if len(found) != 1:
        return []
    (key,) = found
    out = []
    for value in (True, False):
        answers = {key: value}
        b, a = dispatch.specialized(before, name, answers), dispatch.specialized(after, name, answers)
        if any(dispatch.choice(p.function(name)) is not None for p in (b, a)):  # type: ignore[arg-type]
            return []
        out.append((answers, b, a))
    return out


def _choices_text(choices: Mapping[str, bool]) -> str:
    return ", ".join(f"{k} {'true' if v else 'false'}" for k, v in choices.items())


def _compare_locally(before: ir.Program, after: ir.Program, name: str, contract: Contract,
                     sizes: Mapping[str, int], where: locality.Focus, closure: Sequence[ir.FuncDef],
                     runs: Runs, weigh: bool = True) -> list[FunctionCheck]:
    """The changed statement alone, at each of its runs (`locality`); raises
    `NotLocal` when that does not show the step equal, or (`weigh`) when its
    first run shows whole runs would cost less."""
    reaching = frozenset(f.name for f in closure if any(
        g.name == where.function for g in reached(before, f.name)))
    found: dict[tuple[tuple[str, bool], ...], list[locality.Instance]] = {}

    def ask(choices: Mapping[str, bool]) -> dict[str, bool]:
        got, asked = locality.instances(before, name, contract, sizes, choices, where, reaching)
        found[tuple(sorted({**asked, **choices}.items()))] = got
        return asked

    out: list[FunctionCheck] = []
    key = tuple(sorted(sizes.items()))
    added = isinstance(where.before, ir.Block) and not where.before.stmts  # statements the step inserted
    side = where.after if added else where.before
    first = side.stmts[0] if isinstance(side, ir.Block) and side.stmts else side
    shown_stmt = f"`{printer.stmt_text(first).strip().splitlines()[0].rstrip(' {')[:60]}`"
    if first is not side:
        shown_stmt = f"the {'statements it added' if added else 'block'} from {shown_stmt}"
    line = f"line {first.loc.line}: " if first.loc and not added else ""
    shape = runs.pattern(where.before, where.after)
    for choices in choice_sets(ask):
        status, detail, cells, shared = "=", "", 0, 0
        todo = found[tuple(sorted(choices.items()))]
        places = [translate.place(shape, at) for at in todo]
        expected = len({p.key for p in places if p is not None}) + places.count(None)  # runs, translates aside
        firsts: dict[Any, tuple[translate.Place, frozenset[tuple[str, int]], tuple[str, str, int]]] = {}
        for k, (at, here) in enumerate(zip(todo, places)):
            first = firsts.get(here.key) if here is not None else None
            if first is not None and translate.translates(first[0], here, first[1]):  # type: ignore[arg-type]
                got, why, compared = first[2]
                shared += 1
            else:
                t0 = time.process_time()
                a = runs.local(before, where.before, at, choices)
                b = runs.local(after, where.after, at, choices)
                ran = time.process_time() - t0
                if any(k not in choices for k in (*a.asked, *b.asked)):
                    raise locality.NotLocal("the changed statement makes a choice of its own")
                got, why, compared = runs.verdict(a, b)
                if got not in ("=", "≈fp"):
                    raise locality.NotLocal(why)
                if k == 0 and weigh and not _cheaper_locally(ran * expected, before, after, name, sizes, choices, runs):
                    raise locality.NotLocal("whole runs cost less")
                if here is not None and here.key not in firsts:
                    touched = frozenset(c for c in (*a.cells, *b.cells) if c[0] != "var")
                    firsts[here.key] = (here, touched, (got, why, compared))
            cells += compared
            if got == "≈fp" and status == "=":
                status, detail = got, why
        moved = f", {shared} of them as translates of others (`translate`)" if shared else ""
        shown = f"{detail + '; ' if detail else ''}the statement the step changed ({line}{shown_stmt}) " \
                f"compared alone at its {len(todo)} runs{moved}" + \
                (f" (with {_choices_text(choices)})" if choices else "")
        out.append(FunctionCheck(name, key, status, shown, cells))
    return out


def _cheaper_locally(estimate: float, before: ir.Program, after: ir.Program, name: str, sizes: Mapping[str, int],
                     choices: Mapping[str, bool], runs: Runs) -> bool:
    """Whether running X at every instance (`estimate` seconds, from the
    first) costs less than the whole runs not cached yet, each as long as
    twice the latest whole run: that run is of an earlier version of the
    function, and steps make code longer (a tiled flash loop costs twice
    the naive loops it came from), while X's first instance is often its
    largest (a full tile, where later ones are tails). With no whole run
    measured, X goes on (measuring one would cost a whole run, which X
    spares when it shows the step equal). Comparing is left out of both:
    X's cells are fewer and their terms smaller than the outputs'."""
    key = (name, tuple(sorted(sizes.items())), tuple(sorted(choices.items())))
    if key not in runs.costs:
        return True
    missing = sum(not runs.has(p, name, sizes, choices) for p in (before, after))
    return estimate < 2 * runs.costs[key] * missing


def choice_sets(ask: Callable[[Mapping[str, bool]], Mapping[str, bool]]) -> list[dict[str, bool]]:
    """Every assignment of the choices (`__builtin_cpu_supports`) a run
    meets; `ask` runs with some choices and says which it met."""
    done: list[dict[str, bool]] = []
    todo: list[dict[str, bool]] = [{}]
    while todo:
        choices = todo.pop()
        asked = ask(choices)
        full = {**asked, **choices}
        if full in done:
            continue
        done.append(full)
        for k in asked:
            if k not in choices:
                todo.append({**full, k: not full[k]})
    return done


def compare_outcomes(old: Outcome, new: Outcome, norm: canon.Normalizer,
                     bound: Optional[float] = None) -> tuple[str, str]:
    """`=`, `≈fp`, or the first cell that differs. With a `bound` (the
    relative tolerance a lossy step declares), cells may differ, as `_Moves`
    allows: the result is then `changed`."""
    reassociated: Optional[str] = None
    moves = _Moves(bound, old, new, norm) if bound is not None else None
    rounding = _Rounding(norm)
    for cell, a in old.cells.items():
        b = new.cells[cell]
        if rounding.same(a, b):
            continue
        if norm.regrouped(a, b):
            reassociated = reassociated or f"e.g. {_cell(cell)}"
            continue
        if _by_cases(a, b, rounding.same):
            continue
        # a cell whose values are apart is not normalised: normal forms can grow exponentially
        near = not _apart(norm.value(a), norm.value(b))
        if near and norm.normal(a) == norm.normal(b):
            reassociated = reassociated or f"e.g. {_cell(cell)}"
        elif near and _by_decisions(a, b, rounding.same, ROUNDING_CONDITIONS):
            continue
        elif near and _by_decisions(a, b, lambda x, y: norm.normal(x) == norm.normal(y), CONDITIONS):
            reassociated = reassociated or f"e.g. {_cell(cell)}"
        elif moves is None:
            return _differs(cell, a, b)
        else:
            failed = moves.failed(cell, a, b)
            if failed is not None:
                return failed
    if moves is not None and moves.where:
        return "changed", moves.summary()
    return ("≈fp", reassociated) if reassociated else ("=", "")


def _structure(old: Outcome, new: Outcome, norm: canon.Normalizer) -> Optional[tuple[str, str]]:
    """A quantizing step's outputs against the model (`quantized`): the
    step before's outputs with each input the step reads through an int8
    code replaced by its dequantized value. None when no input is read so."""
    try:
        table = quantized.dequantized(new.cells.values())
    except quantized.BadQuantization as e:
        return "refuted", str(e)
    if not table:
        return None
    memo: dict[int, object] = {}
    model = dataclasses.replace(old, cells={c: canon.substitute(t, table, memo) for c, t in old.cells.items()})
    status, detail = compare_outcomes(model, new, norm)
    if status in ("=", "≈fp"):
        return status, (f"each output is {'exactly' if status == '=' else 'over the reals'} the step before's with "
                        f"its {len(table)} quantized inputs each read as its int8 code times its group's scale")
    return status, (f"{detail}; 'before the step' here is the step before's value with each of its {len(table)} "
                    f"quantized inputs read as its int8 code times its group's scale")


class _Moves:
    """The cells a lossy step changes. Once one changes, the step's outputs
    must meet the quantization model (`_structure`) if it quantizes its
    inputs; and each cell may move by at most the bound the step declares,
    |x - y| <= bound * max(1, |x|, |y|) on every seed, as `--exec`
    measures it."""

    def __init__(self, bound: float, old: Outcome, new: Outcome, norm: canon.Normalizer) -> None:
        self.bound = bound
        self.outcomes = (old, new, norm)
        self.structure: Optional[tuple[str, str]] = None
        self.inputs = [canon.Inputs(seed) for seed in SEEDS]
        self.memos: list[dict[int, float]] = [{} for _ in SEEDS]
        self.worst = 0.0
        self.where = ""

    def failed(self, cell: tuple[str, int], a: object, b: object) -> Optional[tuple[str, str]]:
        """Why the change of `cell` from `a` to `b` refutes the step, if it does."""
        if not self.where:
            self.structure = _structure(*self.outcomes)
            if self.structure is not None and self.structure[0] not in ("=", "≈fp"):
                return self.structure
        for inputs, memo in zip(self.inputs, self.memos):
            x, y = canon.evaluate(a, inputs, memo), canon.evaluate(b, inputs, memo)
            move = 0.0 if x == y or (x != x and y != y) else abs(x - y) / max(1.0, abs(x), abs(y))
            if not move <= self.bound:
                return "refuted", (f"output {_cell(cell)} differs: {x:.6g} before the step, {y:.6g} after, on the "
                                   f"inputs of seed {inputs.seed} (each input cell uniform in [-2, 2]): a relative "
                                   f"move of {move:.3g}, beyond the bound {self.bound:.2g} the step declares")
            if move >= self.worst:
                self.worst, self.where = move, _cell(cell)
        return None

    def summary(self) -> str:
        structure = f"{self.structure[1]}; " if self.structure is not None else ""
        return (f"{structure}the step changes values on purpose: the largest relative move, {self.worst:.2g} at "
                f"{self.where} on the seeds, is within its declared bound {self.bound:.2g} (--exec measures it on "
                f"real data)")


class _Rounding:
    """Whether two terms round the same: the same operations on the same
    operands, except that subterms computing on integers small enough
    (under 2^24) that float arithmetic on them is exact may be arranged
    differently (`integer_product`: float sums of int8 products). Such a
    subterm's integer leaves that narrow a value (`(int8_t)roundf(v)`)
    must round the same themselves: `v` may be float arithmetic, whose
    rounding decides the integer."""

    def __init__(self, norm: canon.Normalizer) -> None:
        self.norm = norm
        self.bounds: dict[int, float] = {}
        self.memo: dict[tuple[int, int], bool] = {}
        self.narrowed: dict[int, frozenset[Term]] = {}

    def same(self, a: object, b: object) -> bool:
        if a is b:
            return True
        if not isinstance(a, Term) or not isinstance(b, Term):
            return a == b
        key = (a.number, b.number)
        got = self.memo.get(key)
        if got is None:
            got = self.memo[key] = self._same(a, b)
        return got

    def _same(self, a: Term, b: Term) -> bool:
        if a.op != "narrow" and max(integer_bound(a, self.bounds), integer_bound(b, self.bounds)) < 2 ** 24:
            return self.norm.normal(a) == self.norm.normal(b) and self._paired(self._narrows(a), self._narrows(b)) \
                and self._paired(self._narrows(b), self._narrows(a))
        if a.op != b.op or len(a.args) != len(b.args):
            return False
        if all(self.same(x, y) for x, y in zip(a.args, b.args)):
            return True
        return a.op in COMMUTATIVE and len(a.args) == 2 and self.same(a.args[0], b.args[1]) \
            and self.same(a.args[1], b.args[0])

    def _paired(self, these: frozenset[Term], those: frozenset[Term]) -> bool:
        return all(t in those or any(self.same(t, u) for u in those) for t in these)

    def _narrows(self, t: Term) -> frozenset[Term]:
        """The `narrow` subterms of t that no other `narrow` holds."""
        got = self.narrowed.get(t.number)
        if got is None:
            got = frozenset((t,)) if t.op == "narrow" else \
                frozenset().union(*(self._narrows(x) for x in t.args if isinstance(x, Term)))
            self.narrowed[t.number] = got
        return got


def _by_cases(a: object, b: object, equal: Callable[[object, object], bool]) -> bool:
    """Whether the terms are `equal` in every case of the data conditions
    they test (a guard tested once in one and twice in the other), when
    they test at most `CONDITIONS`, each taken true and false."""
    conds = canon.conditions([a, b], CONDITIONS)
    return bool(conds) and all(equal(x, y) for _, (x, y) in canon.split([a, b], conds))


def _by_decisions(a: object, b: object, equal: Callable[[object, object], bool], limit: int,
                  cases: Optional[list[int]] = None) -> bool:
    """The same, tried last (where neither the terms nor their normal forms
    meet), for up to `limit` conditions: conditions that hold others (a
    routing's later comparisons name the winners of its first) are split
    after those are decided, case by case, within `CASES` cases in all."""
    left = [CASES] if cases is None else cases
    conds = canon.conditions([a, b], limit, first=True)
    if not conds:
        return False
    for _, (x, y) in canon.split([a, b], conds):
        left[0] -= 1
        if left[0] < 0 or not (equal(x, y) or _by_decisions(x, y, equal, limit, left)):
            return False
    return True


def _cell(cell: tuple[str, int]) -> str:
    return f"{cell[0]}[{cell[1]}]"


def _differs(cell: tuple[str, int], a: object, b: object) -> tuple[str, str]:
    """Refuted when some inputs give the two terms different values."""
    for seed in SEEDS:
        inputs = canon.Inputs(seed)
        x = canon.evaluate(a, inputs, {})
        y = canon.evaluate(b, inputs, {})
        if _apart(x, y):
            return "refuted", (f"output {_cell(cell)} differs: {x:.6g} before the step, {y:.6g} after, on the "
                               f"inputs of seed {seed} (each input cell uniform in [-2, 2])")
    return "unknown", (f"output {_cell(cell)}: the terms before and after the step have different normal forms "
                       f"but agree on random inputs, so level 3 can neither prove nor refute this step")


def _apart(x: float, y: float) -> bool:
    """Values too far apart for rounding in the double evaluation to explain."""
    return abs(x - y) > 1e-6 * (1.0 + abs(x) + abs(y)) and not (x != x and y != y)


# ---------------------------------------------------------------- sizes

def choose_sizes(contracts: Mapping[str, Contract], exec_sizes: Mapping[str, float],
                 given: Optional[Sequence[Mapping[str, int]]],
                 programs: Sequence[ir.Program] = ()) -> list[dict[str, int]]:
    """The size sets level 3 runs at: the script's (checked against every
    `requires`), else chosen from the code (`_targets`) within the
    `requires`: one set, and a second where a size the code compares with
    a constant (`if (D == 64)`) takes another value. A scalar parameter of
    a contract that the script gives no size (a token's position) is
    chosen as a size is."""
    base = _integers(exec_sizes)
    arrays = {r.base for c in contracts.values() for _, r in c.resources()}
    base.update({p: max(base.values(), default=5) for c in contracts.values() for p in c.params
                 if p not in base and p not in arrays})
    if given:
        sets = [{**base, **g} for g in given]
        for s in sets:
            _check_requires(contracts, s)
        return sets
    targets, equal, floors = _targets(programs, base)
    floors = {n: v for n, v in floors.items() if n not in equal}
    first = _small(contracts, {**targets, **{n: sorted(vs)[0] for n, vs in equal.items()}}, floors)
    out = [first]
    if equal:
        other = {**targets, **{n: targets[n] if targets[n] not in equal[n] else max(2, sorted(equal[n])[0] // 2 + 1)
                               for n in equal}}
        second = _small(contracts, other, floors)
        if second != first:
            out.append(second)
    return out


def _targets(programs: Sequence[ir.Program], sizes: Mapping[str, int]) -> tuple[dict[str, int],
                                                                               dict[str, set[int]], dict[str, int]]:
    """For each size, a value that runs every tile of the code in full and
    a tail: the smallest value past the largest constant step or divisor
    the size meets in a loop bound or a `%`, that none of them divides
    (69 for blocks of 64, 4 and 16 lanes); 5 where none. Also the
    constants each size is tested equal to, and the least value of each
    size with a step that runs its largest tile twice (a `requires` may
    forbid the target: N % 32 == 0 takes 64, not 32), at most the
    --exec size."""
    from .tree import walk

    steps: dict[str, set[int]] = {n: set() for n in sizes}
    equal: dict[str, set[int]] = {}
    for program in programs:
        for f in program.functions():
            spans: dict[str, set[str]] = {n: {n} for n in sizes}
            # the sizes each variable ranges with (`bj < i + 1` under `i < S`: S)
            for _, node in walk(f.body):
                if isinstance(node, ir.For):
                    spans[node.index] = _spanned(spans, node.start, node.stop)
                    c = _int_const(node.step)
                    if c is not None and c > 1:
                        for n in _spanned(spans, node.stop):
                            steps[n].add(c)
                elif isinstance(node, ir.DeclStmt) and node.decl.name and node.decl.init is not None:
                    spans[node.decl.name] = _spanned(spans, node.decl.init)
                elif isinstance(node, ir.Binop) and node.op in ("%", "/"):
                    c = _int_const(node.right)
                    if c is not None and c > 1:
                        for n in _spanned(spans, node.left):
                            steps[n].add(c)
                elif isinstance(node, ir.Binop) and node.op == "==":
                    for a, b in ((node.left, node.right), (node.right, node.left)):
                        c = _int_const(b)
                        if isinstance(a, ir.Var) and a.name in sizes and c is not None:
                            equal.setdefault(a.name, set()).add(c)
    targets: dict[str, int] = {}
    floors = {n: min(max(cs) + 1, sizes[n]) if sizes[n] > 0 else max(cs) + 1 for n, cs in steps.items() if cs}
    for n, cs in steps.items():
        if not cs:
            targets[n] = min(sizes[n], 5)
            continue
        v = max(cs) + 1
        while any(v % c == 0 for c in cs):
            v += 1
        targets[n] = min(v + 4 if v - max(cs) < 3 else v, sizes[n]) if sizes[n] > 0 else v
    return targets, equal, floors


def _spanned(spans: Mapping[str, set[str]], *es: ir.Expr) -> set[str]:
    return {n for e in es for v in _names(e) for n in spans.get(v, ())}


def _int_const(e: ir.Expr) -> Optional[int]:
    if isinstance(e, ir.Const) and e.kind == "int":
        try:
            return int(e.text.rstrip("uUlL"), 0)
        except ValueError:
            return None
    return None


def _names(e: ir.Expr) -> set[str]:
    from .tree import walk

    return {n.name for _, n in walk(e) if isinstance(n, ir.Var)}


def _integers(sizes: Mapping[str, float]) -> dict[str, int]:
    return {k: int(v) for k, v in sizes.items() if float(v).is_integer()}


def _check_requires(contracts: Mapping[str, Contract], sizes: Mapping[str, int]) -> None:
    for c in contracts.values():
        env = {p: sizes[p] for p in c.params if p in sizes}
        for r in c.requires:
            try:
                holds = evaluate(r, env)
            except OtpError:
                continue
            if not holds:
                raise OtpError(f"check_sizes: {_sizes_text(tuple(sorted(sizes.items())))} breaks "
                               f"'requires' of {c.function}", r.loc)


_SMALL: dict[tuple[Any, ...], tuple[Mapping[str, Contract], dict[str, int]]] = {}
"""`_small`'s answers (each step asks, mostly the same question), with
the contracts they were asked for (kept, so their ids stay theirs)."""


def _small(contracts: Mapping[str, Contract], exec_sizes: Mapping[str, int],
           floors: Mapping[str, int]) -> dict[str, int]:
    """The sizes nearest to the targets that every `requires` allows (Z3
    minimises the distance), each at least its floor where the `requires`
    allow it."""
    key = (tuple(map(id, contracts.values())), tuple(sorted(exec_sizes.items())), tuple(sorted(floors.items())))
    got = _SMALL.get(key)
    if got is None:
        got = _SMALL[key] = (contracts, _nearest(contracts, exec_sizes, floors))
    return dict(got[1])


def _nearest(contracts: Mapping[str, Contract], exec_sizes: Mapping[str, int],
             floors: Mapping[str, int]) -> dict[str, int]:
    import z3

    from .smt import Terms

    names = sorted(exec_sizes)
    vs = {n: z3.Int(n) for n in names}
    opt = z3.Optimize()
    opt.set("timeout", 5000)
    terms = Terms("sizes")
    for c in contracts.values():
        for r in c.requires:
            opt.add(terms.formula(r))
    cost = []
    for n in names:
        goal = exec_sizes[n]
        opt.add(vs[n] >= min(1, exec_sizes[n]))
        cost.append(z3.If(vs[n] >= goal, vs[n] - goal, goal - vs[n]))
    opt.minimize(z3.Sum(cost) if cost else z3.IntVal(0))
    opt.push()
    opt.add(*(vs[n] >= v for n, v in floors.items() if n in vs))
    if opt.check() != z3.sat:
        opt.pop()
        if opt.check() != z3.sat:
            return dict(exec_sizes)
    model = opt.model()
    return {n: model.eval(vs[n], model_completion=True).as_long() for n in names}


def chosen(sets: Sequence[Mapping[str, int]]) -> str:
    return "; ".join(_sizes_text(tuple(sorted(s.items()))) for s in sets)

