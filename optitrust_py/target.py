"""Targets: how a script names a place in the program.

    target    := component (">" component)*
    component := ["before" | "after"] selector ["#" N]
    selector  := NAME                 a function (first component only)
               | "for" NAME           a canonical loop over index NAME
               | "call" NAME          a call to NAME
               | "def" NAME           the declaration of a local NAME
               | "param" NAME         the parameter NAME (second component only)
               | "expr" 'TEXT'        an expression printed as TEXT
               | "instr" 'TEXT'       a statement whose text contains TEXT
               | 'TEXT'               same as instr 'TEXT'

Each component after the first searches anywhere inside the places matched so
far (`attention > for j` finds every `for j` in attention, at any depth);
`#N` keeps the N-th match (from 1, in source order) inside each place.
`before X` / `after X` (last component only) name the point between two
statements. `f > param x` names the declaration of the parameter x of f
(transformations that change a parameter's type take it). Whitespace in
TEXT is ignored when comparing. A target matching nothing or more than
asked is an error listing the candidates and their lines in the current
code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from . import ir
from .errors import TargetError
from .printer import expr as expr_text, print_program, stmt_text
from .tree import Path, function_path, walk

_COMPONENT = re.compile(
    r"""^\s*(?:(?P<pos>before|after)\s+)?
        (?:(?P<kw>for|call|def|param|expr|instr)\s+)?
        (?:(?P<name>[A-Za-z_]\w*)|'(?P<text>[^']*)'|"(?P<dtext>[^"]*)")
        \s*(?:\#\s*(?P<nth>\d+))?\s*$""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Selector:
    kind: str  # function, for, call, def, param, expr, instr
    value: str
    nth: Optional[int] = None
    position: Optional[str] = None  # before / after

    def __str__(self) -> str:
        head = f"{self.position} " if self.position else ""
        body = self.value if self.kind in ("function",) else (
            f"{self.kind} {self.value}" if self.kind in ("for", "call", "def", "param")
            else f"{self.kind} '{self.value}'")
        return head + body + (f"#{self.nth}" if self.nth else "")


@dataclass(frozen=True)
class Match:
    """A node the target designates: its path from the program root."""

    path: Path
    node: Any
    function: str
    line: int


@dataclass(frozen=True)
class Point:
    """The gap before statement `index` of the block at `block` (index may be
    the block's length: the end)."""

    block: Path
    index: int
    function: str
    line: int


def parse(target: str) -> list[Selector]:
    if not isinstance(target, str) or not target.strip():
        raise TargetError(f"a target must be a non-empty string, got {target!r}")
    parts = [p for p in _split(target)]
    out: list[Selector] = []
    for i, part in enumerate(parts):
        m = _COMPONENT.match(part)
        if not m:
            raise TargetError(f"cannot read target component {part.strip()!r} in {target!r} "
                              f"(expected e.g. 'matmul > for i > for j#2', \"call expf\", \"'sum +='\")")
        text = m.group("text") if m.group("text") is not None else m.group("dtext")
        kw = m.group("kw")
        if kw is None:
            kind = "function" if text is None else "instr"
        else:
            kind = kw
        value = text if text is not None else m.group("name")
        if kind in ("for", "call", "def", "param", "function") and text is not None:
            raise TargetError(f"{kind} takes a name, not a quoted text, in {target!r}")
        if kind in ("expr", "instr") and text is None:
            raise TargetError(f"{kind} takes a quoted text, e.g. {kind} 'x[i] += y', in {target!r}")
        if i > 0 and kind == "function":
            raise TargetError(f"{value!r} in {target!r}: only the first component names a function; "
                              f"use 'for {value}', 'call {value}' or 'def {value}'")
        if kind == "param" and (i != 1 or m.group("pos") or len(parts) > 2):
            raise TargetError(f"'param {value}' in {target!r}: a parameter is named right after its function, "
                              f"alone, e.g. 'f > param {value}'")
        if m.group("pos") and i != len(parts) - 1:
            raise TargetError(f"'{m.group('pos')}' may only start the last component of {target!r}")
        nth = int(m.group("nth")) if m.group("nth") else None
        if nth == 0:
            raise TargetError(f"occurrences count from 1 (#1 is the first) in {target!r}")
        out.append(Selector(kind, value, nth, m.group("pos")))
    if out[0].kind != "function":
        raise TargetError(f"a target starts with a function name, e.g. 'matmul > {target.strip()}'")
    return out


def _split(target: str) -> list[str]:
    """Split on '>' outside quotes."""
    parts, cur, quote = [], [], None
    for ch in target:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == ">":
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    parts.append("".join(cur))
    return parts


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", s)


def _predicate(sel: Selector) -> Callable[[Any], bool]:
    if sel.kind == "for":
        return lambda n: isinstance(n, ir.For) and n.index == sel.value
    if sel.kind == "call":
        return lambda n: isinstance(n, ir.Call) and n.name == sel.value
    if sel.kind == "def":
        return lambda n: isinstance(n, ir.DeclStmt) and n.decl.name == sel.value
    if sel.kind == "param":
        return lambda n: n.name == sel.value
    want = _squash(sel.value)
    if sel.kind == "expr":
        return lambda n: _is_expr(n) and _squash(expr_text(n)) == want
    return lambda n: _is_stmt(n) and not isinstance(n, ir.Block) and want in _squash(_head_text(n))


def _head_text(s: Any) -> str:
    """What `instr 'TEXT'` searches: a simple statement's text, or a compound
    statement's first line (so 'for (int j' matches the loop, not its body)."""
    text = stmt_text(s)
    if isinstance(s, (ir.ExprStmt, ir.DeclStmt, ir.Return, ir.Jump)):
        return text
    return next((ln for ln in text.split("\n") if not ln.lstrip().startswith("#pragma")), text)


_PARAMS: Path = (("decl", None), ("type", None))
"""From a function definition to its type, whose `params` are its parameters."""

_STMT_TYPES = (ir.Block, ir.ExprStmt, ir.DeclStmt, ir.For, ir.GenericFor, ir.While, ir.DoWhile, ir.If,
               ir.Switch, ir.Return, ir.Jump)


def _is_expr(n: Any) -> bool:
    return isinstance(n, ir.EXPR_TYPES)


def _is_stmt(n: Any) -> bool:
    return isinstance(n, _STMT_TYPES)


def _describe(n: Any) -> str:
    if isinstance(n, ir.For):
        return f"for {n.index}"
    if isinstance(n, ir.Call):
        return f"call {n.name or expr_text(n.func)}"
    if isinstance(n, ir.DeclStmt):
        return f"def {n.decl.name}"
    if isinstance(n, ir.Decl):
        return f"param {n.name}"
    if _is_expr(n):
        return f"expr '{expr_text(n)}'"
    if isinstance(n, ir.FuncDef):
        return f"function {n.name}"
    return f"'{_head_text(n).strip()}'"


class Resolver:
    """Resolves targets against one program; printing it once for line numbers."""

    def __init__(self, program: ir.Program) -> None:
        self.program = program
        self._where: Optional[dict[Path, int]] = None

    def line(self, path: Path) -> int:
        if self._where is None:
            self._where = print_program(self.program).where
        for k in range(len(path), -1, -1):
            if path[:k] in self._where:
                return self._where[path[:k]]
        return 0

    def matches(self, target: str) -> list[Match | Point]:
        sels = parse(target)
        fn = sels[0]
        try:
            fpath = function_path(self.program, fn.value)
        except KeyError:
            names = ", ".join(f.name for f in self.program.functions()) or "none"
            raise TargetError(f"no function {fn.value!r} in {self.program.file} (functions: {names})") from None
        current: list[Match] = [Match(fpath, self.program.items[fpath[0][1]], fn.value, self.line(fpath))]
        for depth, sel in enumerate(sels[1:], start=1):
            pred = _predicate(sel)
            found: list[Match] = []
            for m in current:
                inside = [Match(m.path + p, n, m.function, 0) for p, n in self._inside(m, sel, pred)]
                if sel.nth is not None:
                    if len(inside) < sel.nth:
                        if inside:
                            raise TargetError(self._listing(
                                f"{sel} in {target!r}: only {len(inside)} match{'es' if len(inside) > 1 else ''}",
                                inside))
                        inside = []
                    else:
                        inside = [inside[sel.nth - 1]]
                found.extend(inside)
            if not found:
                scope = " > ".join(str(s) for s in sels[:depth])
                raise TargetError(self._listing(f"{sel} matches nothing in {scope}", self._candidates(current, sel)))
            current = [Match(m.path, m.node, m.function, self.line(m.path)) for m in found]
        last = sels[-1]
        if last.position:
            return [self._point(m, last.position) for m in current]
        return list(current)

    @staticmethod
    def _inside(m: Match, sel: Selector, pred: Callable[[Any], bool]) -> list[tuple[Path, Any]]:
        """The nodes under `m` that `sel` may match: its parameters for
        `param` (m is then the function), else every node below it."""
        if sel.kind == "param":
            return [(_PARAMS + (("params", k),), p) for k, p in enumerate(m.node.params) if pred(p)]
        return [(p, n) for p, n in walk(m.node) if p and pred(n)]

    def _point(self, m: Match, position: str) -> Point:
        name, index = m.path[-1]
        if name != "stmts" or index is None:
            raise TargetError(f"{position} {_describe(m.node)} (line {m.line}): not a statement in a block")
        return Point(m.path[:-1], index + (1 if position == "after" else 0), m.function, m.line)

    def _candidates(self, scopes: list[Match], sel: Selector) -> list[Match]:
        if sel.kind == "for":
            pred: Callable[[Any], bool] = lambda n: isinstance(n, ir.For)
        elif sel.kind == "call":
            pred = lambda n: isinstance(n, ir.Call)
        elif sel.kind == "def":
            pred = lambda n: isinstance(n, ir.DeclStmt)
        elif sel.kind == "param":
            pred = lambda n: n.name is not None
        else:
            pred = lambda n: _is_stmt(n) and not isinstance(n, ir.Block)
        return [Match(m.path + p, n, m.function, 0) for m in scopes for p, n in self._inside(m, sel, pred)]

    def _listing(self, message: str, cands: list[Match]) -> str:
        if not cands:
            return message + "; there are no candidates of that kind there"
        shown = cands[:12]
        lines = [f"  line {self.line(c.path):>4}: {_describe(c.node)}" for c in shown]
        more = f"\n  ... and {len(cands) - len(shown)} more" if len(cands) > len(shown) else ""
        return message + "; candidates:\n" + "\n".join(lines) + more

    def one(self, target: str, what: str = "place", kinds: tuple[type, ...] = ()) -> Match:
        """Exactly one node, optionally of the given IR classes."""
        ms = self.matches(target)
        nodes = [m for m in ms if isinstance(m, Match)]
        if len(nodes) != len(ms):
            raise TargetError(f"{target!r} names a point between statements; this transformation needs a {what}")
        if kinds:
            wrong = [m for m in nodes if not isinstance(m.node, kinds)]
            if wrong:
                raise TargetError(self._listing(f"{target!r} must name a {what}", wrong))
        if len(nodes) > 1:
            raise TargetError(self._listing(f"{target!r} matches {len(nodes)} places, expected one "
                                            f"(add #N to pick one)", nodes))
        return nodes[0]

    def point(self, target: str) -> Point:
        ms = self.matches(target)
        if len(ms) != 1 or not isinstance(ms[0], Point):
            if len(ms) > 1:
                raise TargetError(self._listing(f"{target!r} matches {len(ms)} places, expected one",
                                                [m for m in ms if isinstance(m, Match)]))
            raise TargetError(f"{target!r} must name a point: start its last component with 'before' or 'after'")
        return ms[0]
