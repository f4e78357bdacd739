"""The contract language: spec files (`specs/<name>.spec`) and in-source
clauses (`__reads("q ~> Matrix2(N, D)")`), parsed into `contract.Contract` /
`contract.LoopContract` and checked against the C functions they describe.

    # comment
    attention(H, S, D, q, k, v, out):
      requires H >= 1, S >= 1, D >= 1, S % 64 == 0
      reads    q ~> Matrix3(H, S, D), k ~> Matrix3(H, S, D),
               v ~> Matrix3(H, S, D)
      writes   out ~> Matrix3(H, S, D)
      ensures  out == causal_attention(q, k, v)

A block per function: a header `name(p1, ..., pn):` at column 1, then
indented clause lines; a clause continues on the following lines indented
more than its keyword. Formulas are C integer expressions (plus comparison
chains `0 <= i < n`, sugar for `0 <= i && i < n`); resources are
`E ~> Cell`, `E ~> MatrixN(d1, ..., dN)` and groups `for i in a..b -> R`.

The parser is a hand-written tokenizer and precedence-climbing parser so
that every error points at the exact offending token, in the spec file or in
the C file's clause string, and says what was expected and what was found.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path as FsPath
from typing import Callable, Optional, Sequence, TypeVar, Union

from . import ir
from .contract import (LOOP_MODES, Binder, Contract, LoopContract, Resource, Shape,
                       free_names, subject_base)
from .errors import SpecError
from .models import check_ensures
from .ir import Expr, Loc
from .printer import expr as c_expr
from .printer import type_name
from .tree import walk

FUNCTION_CLAUSES = ("requires", "reads", "writes", "modifies", "ensures")
"""Clause keywords of a function contract, in the order messages list them."""

_FORMULA_CLAUSES = ("requires", "ensures")
_T = TypeVar("_T")
_RESERVED = ("for",)
_CONTINUATION_HINT = " (a clause continues on lines indented more than its keyword)"

# ----------------------------------------------------------------- tokens


@dataclass(frozen=True)
class _Tok:
    """A token; `line`/`col` are its place in the parsed text (for layout),
    `loc`/`end` its place for messages (in the spec or the C file)."""

    kind: str  # 'name', 'int', 'op', 'end'
    text: str
    loc: Loc
    end: Loc
    line: int = 0
    col: int = 0
    first: bool = False  # first token on its line


_TOKEN_RE = re.compile(r"""
    (?P<ws>[ \t\r\f\v]+)
  | (?P<nl>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<int>[0-9][A-Za-z0-9_]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>~>|\.\.|->|<=|>=|==|!=|&&|\|\||[-+*/%<>!&()\[\],:])
""", re.VERBOSE)

_INT_RE = re.compile(r"0[xX][0-9a-fA-F]+|0|[1-9][0-9]*")

Where = Callable[[int, int], Loc]
"""Maps a (line, column) of the parsed text to a location for messages."""


def _tokenize(text: str, where: Where) -> list[_Tok]:
    toks: list[_Tok] = []
    pos, line, line_start, first = 0, 1, 0, True
    while pos < len(text):
        col = pos - line_start + 1
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise SpecError(f"unexpected character {text[pos]!r}", where(line, col))
        kind = m.lastgroup
        value = m.group()
        pos = m.end()
        if kind == "nl":
            line, line_start, first = line + 1, pos, True
            continue
        if kind in ("ws", "comment"):
            continue
        assert kind is not None
        if kind == "int" and not _INT_RE.fullmatch(value):
            why = "octal is not supported" if value[0] == "0" and value.isdigit() \
                else "integers are decimal or 0x hexadecimal, without suffix"
            raise SpecError(f"bad integer literal '{value}' ({why})", where(line, col))
        toks.append(_Tok(kind, value, where(line, col), where(line, col + len(value)), line, col, first))
        first = False
    return toks


def _describe(t: _Tok) -> str:
    return (t.text or "end of clause") if t.kind == "end" else f"'{t.text}'"


# ----------------------------------------------------------------- clause parser


_PREC = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, "<=": 4, ">": 4, ">=": 4,
         "+": 5, "-": 5, "*": 6, "/": 6, "%": 6}
_CHAINING = (3, 4)  # equality and relational levels: `a <= b < c` is a chain


class _Parser:
    """Recursive descent over the tokens of one clause body (or of a header)."""

    def __init__(self, toks: Sequence[_Tok], end: Loc, hint: str = "", end_name: str = "end of clause") -> None:
        self.toks = toks
        self.pos = 0
        self.eof = _Tok("end", end_name, end, end)
        self.hint = hint

    # ------------------------------------------------------------- basics

    def peek(self) -> _Tok:
        return self.toks[self.pos] if self.pos < len(self.toks) else self.eof

    def next(self) -> _Tok:
        t = self.peek()
        if t.kind != "end":
            self.pos += 1
        return t

    def at(self, text: str) -> bool:
        t = self.peek()
        return t.kind in ("op", "name") and t.text == text

    def at_end(self) -> bool:
        return self.peek().kind == "end"

    def fail(self, expected: str, t: Optional[_Tok] = None) -> SpecError:
        t = t or self.peek()
        after_comma = t.kind == "end" and self.pos > 0 and self.toks[self.pos - 1].text == ","
        hint = self.hint if after_comma or t.first else ""
        return SpecError(f"expected {expected}, found {_describe(t)}{hint}", t.loc)

    def expect(self, text: str, context: str = "") -> _Tok:
        if not self.at(text):
            raise self.fail(f"'{text}'{' ' + context if context else ''}")
        return self.next()

    def items(self, parse_one: Callable[[], _T], what: str) -> list[_T]:
        """`item, item, ...` up to the end of the clause."""
        out: list[_T] = []
        while True:
            if self.at_end():
                raise self.fail(what)
            out.append(parse_one())
            if self.at_end():
                return out
            if not self.at(","):
                raise self.fail("',' or end of clause")
            self.next()

    # ------------------------------------------------------------- formulas

    def formula(self, min_prec: int = 1) -> Expr:
        left = self.unary()
        while True:
            t = self.peek()
            p = _PREC.get(t.text) if t.kind == "op" else None
            if p is None or p < min_prec:
                return left
            if p in _CHAINING:
                left = self.chain(left, p)
                continue
            self.next()
            right = self.formula(p + 1)
            left = ir.Binop(t.text, left, right, t.loc)

    def chain(self, first: Expr, p: int) -> Expr:
        """`a op1 b op2 c` at one comparison level: `a op1 b && b op2 c`."""
        operands, ops = [first], []
        while self.peek().kind == "op" and _PREC.get(self.peek().text) == p:
            ops.append(self.next())
            operands.append(self.formula(p + 1))
        result: Optional[Expr] = None
        for k, op in enumerate(ops):
            cmp = ir.Binop(op.text, operands[k], operands[k + 1], op.loc)
            result = cmp if result is None else ir.Binop("&&", result, cmp, op.loc)
        assert result is not None
        return result

    def unary(self) -> Expr:
        t = self.peek()
        if t.kind == "op" and t.text in ("-", "!", "&"):
            self.next()
            return ir.Unop(t.text, self.unary(), t.loc)
        return self.postfix()

    def postfix(self) -> Expr:
        e = self.primary()
        while True:
            if self.at("["):
                self.next()
                index = self.formula()
                self.expect("]", "to close the index")
                e = ir.Index(e, index, e.loc)
            elif self.at("(") and isinstance(e, ir.Var):
                self.next()
                args: list[Expr] = []
                if not self.at(")"):
                    args.append(self.formula())
                    while self.at(","):
                        self.next()
                        args.append(self.formula())
                if not self.at(")"):
                    raise self.fail(f"',' or ')' in the arguments of '{e.name}'")
                self.next()
                e = ir.Call(e, tuple(args), e.loc)
            else:
                return e

    def primary(self) -> Expr:
        t = self.peek()
        if t.kind == "int":
            self.next()
            return ir.Const(t.text, "int", t.loc)
        if t.kind == "name" and t.text not in _RESERVED:
            self.next()
            return ir.Var(t.text, t.loc)
        if self.at("("):
            self.next()
            e = self.formula()
            if not self.at(")"):
                raise self.fail(f"')' to close the '(' at {t.loc.line}:{t.loc.col}")
            self.next()
            return e
        raise self.fail("an expression")

    # ------------------------------------------------------------- resources

    def resource(self, bound: tuple[str, ...] = ()) -> Resource:
        t = self.peek()
        if t.kind == "end":
            raise self.fail("a resource")
        if self.at("for"):
            self.next()
            idx = self.peek()
            if idx.kind != "name" or idx.text in _RESERVED:
                raise self.fail("a group index name after 'for'")
            self.next()
            if idx.text in bound:
                raise SpecError(f"group index '{idx.text}' is already bound by an enclosing group", idx.loc)
            self.expect("in", f"after 'for {idx.text}'")
            lo = self.formula()
            self.expect("..", f"in 'for {idx.text} in a..b'")
            hi = self.formula()
            self.expect("->", f"after 'for {idx.text} in {c_expr(lo)}..{c_expr(hi)}'")
            inner = self.resource(bound + (idx.text,))
            binder = Binder(idx.text, lo, hi, idx.loc)
            return Resource(inner.subject, inner.shape, (binder,) + inner.group, t.loc)
        subject = self.unary()
        if subject_base(subject) is None:
            raise SpecError(f"expected a name or an address like '&A[i]' before '~>', found '{c_expr(subject)}'",
                            subject.loc)
        self.expect("~>", f"after '{c_expr(subject)}'")
        return Resource(subject, self.shape(), (), subject.loc)

    def shape(self) -> Shape:
        t = self.peek()
        if t.kind != "name":
            raise self.fail("a shape (Cell or MatrixN(d1, ..., dN))")
        self.next()
        if t.text == "Cell":
            if self.at("("):
                raise SpecError("Cell takes no dimensions", self.peek().loc)
            return Shape("cell")
        m = re.fullmatch(r"Matrix([0-9]*)", t.text)
        if m is None:
            raise SpecError(f"unknown shape '{t.text}' (expected Cell or MatrixN(d1, ..., dN))", t.loc)
        if not m.group(1) or int(m.group(1)) == 0:
            raise SpecError(f"'{t.text}' needs its number of dimensions N >= 1, as in Matrix2(N, M)", t.loc)
        n = int(m.group(1))
        self.expect("(", f"after '{t.text}'")
        dims: list[Expr] = []
        if not self.at(")"):
            dims.append(self.formula())
            while self.at(","):
                self.next()
                dims.append(self.formula())
        if not self.at(")"):
            raise self.fail(f"',' or ')' in the dimensions of {t.text}")
        self.next()
        if len(dims) != n:
            raise SpecError(f"{t.text} takes {n} dimension{'s' if n > 1 else ''}, got {len(dims)}", t.loc)
        return Shape("matrix", tuple(dims))


def _clause_items(kind: str, p: _Parser) -> list:
    if kind in _FORMULA_CLAUSES:
        return p.items(p.formula, "a formula")
    return p.items(p.resource, "a resource")


def _parse_body(kind: str, toks: Sequence[_Tok], end: Loc, hint: str = "") -> list:
    return _clause_items(kind, _Parser(toks, end, hint))


# ----------------------------------------------------------------- spec files


@dataclass
class _Block:
    """A contract being read: its header and the items of each clause so far."""

    name: str
    params: list[str]
    param_locs: list[Loc]
    loc: Loc
    clauses: dict[str, list]

    def contract(self) -> Contract:
        c = self.clauses
        return Contract(self.name, tuple(self.params), tuple(c["requires"]), tuple(c["reads"]),
                        tuple(c["writes"]), tuple(c["modifies"]), tuple(c["ensures"]), self.loc,
                        tuple(self.param_locs))


def parse_spec_text(text: str, filename: str = "<spec>") -> dict[str, Contract]:
    """The contracts of a spec file's text, by function name, in file order."""
    toks = _tokenize(text, lambda line, col: Loc(filename, line, col))
    blocks: dict[str, _Block] = {}
    current: Optional[_Block] = None
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.col == 1:
            current, i = _header(toks, i, filename)
            if current.name in blocks:
                first = blocks[current.name].loc
                raise SpecError(f"second contract for '{current.name}' (the first is at line {first.line})",
                                current.loc)
            blocks[current.name] = current
            continue
        if current is None:
            raise SpecError(f"expected a function header 'name(params):' at column 1, found indented {_describe(t)}",
                            t.loc)
        if t.kind != "name" or t.text not in FUNCTION_CLAUSES:
            what = f"unknown clause '{t.text}'" if t.kind == "name" else f"expected a clause keyword, found '{t.text}'"
            raise SpecError(f"{what} (expected {', '.join(FUNCTION_CLAUSES)})", t.loc)
        j = i + 1
        while j < len(toks) and not (toks[j].first and toks[j].col <= t.col):
            j += 1
        body = toks[i + 1:j]
        end = body[-1].end if body else t.end
        current.clauses[t.text].extend(_parse_body(t.text, body, end, _CONTINUATION_HINT))
        i = j
    return {name: b.contract() for name, b in blocks.items()}


def _header(toks: list[_Tok], i: int, filename: str) -> tuple[_Block, int]:
    """Parse `name(p1, ..., pn):` starting at toks[i]; return it and the index after."""
    end = toks[-1].end
    p = _Parser(toks[i:], end, end_name="end of file")
    name = p.peek()
    if name.kind != "name":
        raise SpecError(f"expected a function header 'name(params):', found {_describe(name)}", name.loc)
    p.next()
    p.expect("(", f"after '{name.text}' in the header 'name(params):'")
    params: list[str] = []
    locs: list[Loc] = []
    if not p.at(")"):
        while True:
            t = p.peek()
            if t.kind != "name":
                raise p.fail("a parameter name")
            if t.text in params:
                raise SpecError(f"parameter '{t.text}' appears twice in the header of '{name.text}'", t.loc)
            p.next()
            params.append(t.text)
            locs.append(t.loc)
            if p.at(")"):
                break
            if not p.at(","):
                raise p.fail("',' or ')' in the parameter list")
            p.next()
    p.next()
    p.expect(":", "after the parameter list")
    nxt = p.peek()
    if nxt.kind != "end" and not nxt.first:
        raise SpecError(f"expected a new line after the header of '{name.text}', found {_describe(nxt)}", nxt.loc)
    block = _Block(name.text, params, locs, name.loc, {k: [] for k in FUNCTION_CLAUSES})
    return block, i + p.pos


def parse_spec_file(path: Union[str, FsPath]) -> dict[str, Contract]:
    """The contracts of a spec file; a file that cannot be read is a SpecError."""
    try:
        text = FsPath(path).read_text()
    except OSError as e:
        raise SpecError(f"cannot read spec file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SpecError(f"cannot read spec file {path}: not UTF-8 text ({e.reason})") from None
    return parse_spec_text(text, str(path))


# ----------------------------------------------------------------- in-source clauses


def _clause_where(clause: ir.ContractClause) -> Where:
    """Locations inside the string of `__kind("...")`: the C line, and the
    column of the character within the literal (escapes `\\"` `\\\\` count 2)."""
    text = clause.text
    loc = clause.loc
    line_starts = [0] + [k + 1 for k, ch in enumerate(text) if ch == "\n"]

    def where(line: int, col: int) -> Loc:
        if loc is None:
            return Loc("<contract>", line, col)
        if line > 1:
            return Loc(loc.file, loc.line + line - 1, col)
        offset = col - 1
        raw = offset + sum(1 for ch in text[line_starts[0]:offset] if ch in '"\\')
        return Loc(loc.file, loc.line, loc.col + len("__" + clause.kind + '("') + raw)

    return where


def _parse_clause(clause: ir.ContractClause) -> list:
    where = _clause_where(clause)
    toks = _tokenize(clause.text, where)
    if toks:
        end = toks[-1].end
    else:
        end = where(1, len(clause.text) + 1)
    return _parse_body(clause.kind, toks, end)


def contract_from_clauses(f: ir.FuncDef) -> Optional[Contract]:
    """The contract written at the top of `f`'s body, or None if it has none."""
    if not f.contract:
        return None
    items: dict[str, list] = {k: [] for k in FUNCTION_CLAUSES}
    for clause in f.contract:
        if clause.kind not in FUNCTION_CLAUSES:
            raise SpecError(f"__{clause.kind} is not a function clause "
                            f"(expected __{', __'.join(FUNCTION_CLAUSES)})", clause.loc)
        items[clause.kind].extend(_parse_clause(clause))
    named = [p for p in f.params if p.name is not None]
    return Contract(f.name, tuple(p.name for p in named if p.name), tuple(items["requires"]),
                    tuple(items["reads"]), tuple(items["writes"]), tuple(items["modifies"]),
                    tuple(items["ensures"]), f.contract[0].loc, tuple(p.loc for p in named))


def loop_contract(clauses: Sequence[ir.ContractClause]) -> LoopContract:
    """The loop contract of a `For`'s clauses (`For.contract`); empty if none."""
    items: dict[str, list] = {k: [] for k in LOOP_MODES}
    for clause in clauses:
        if clause.kind not in LOOP_MODES:
            raise SpecError(f"__{clause.kind} is not a loop clause (expected __{', __'.join(LOOP_MODES)})",
                            clause.loc)
        items[clause.kind].extend(_parse_clause(clause))
    return LoopContract(*(tuple(items[k]) for k in LOOP_MODES))


def parse_formula(text: str, loc: Optional[Loc] = None) -> Expr:
    """One formula from text (for scripts and transformations that state facts)."""
    items = _parse_clause(ir.ContractClause("requires", text, loc))
    if len(items) != 1:
        raise SpecError(f"expected one formula, found {len(items)}", loc)
    return items[0]


def parse_resource(text: str, loc: Optional[Loc] = None) -> Resource:
    """One resource from text, e.g. `for i in 0..N -> &x[i] ~> Cell`."""
    items = _parse_clause(ir.ContractClause("reads", text, loc))
    if len(items) != 1:
        raise SpecError(f"expected one resource, found {len(items)}", loc)
    return items[0]


# ----------------------------------------------------------------- checking


def _is_pointer(t: ir.CType) -> bool:
    return isinstance(t, (ir.Ptr, ir.Array))


def _is_integer(t: ir.CType) -> bool:
    if isinstance(t, ir.EnumT):
        return True
    return isinstance(t, ir.Base) and not {"float", "double", "void"} & set(t.names)


class _Checker:
    """Checks one contract's names and modes against one C function."""

    def __init__(self, contract: Contract, f: ir.FuncDef) -> None:
        self.c = contract
        self.f = f
        self.types = {p.name: p.type for p in f.params if p.name is not None}
        self.param_list = ", ".join(contract.params)

    def unknown(self, v: ir.Var, where: str, indices: tuple[str, ...]) -> SpecError:
        scope = f"; group indices here: {', '.join(indices)}" if indices else ""
        return SpecError(f"unknown parameter '{v.name}' in {where} (parameters: {self.param_list}{scope})", v.loc)

    def integer_formula(self, e: Expr, where: str, indices: tuple[str, ...] = ()) -> None:
        """A formula the exec checker can evaluate from the size parameters."""
        for _, node in walk(e):
            if isinstance(node, (ir.Call, ir.Index)) or isinstance(node, ir.Unop) and node.op == "&":
                raise SpecError(f"'{c_expr(node)}' is not allowed in {where}: it must be an integer formula "
                                f"over integer parameters", node.loc)
        for v in free_names(e):
            if v.name in indices:
                continue
            if v.name not in self.types:
                raise self.unknown(v, where, indices)
            t = self.types[v.name]
            if not _is_integer(t):
                raise SpecError(f"'{v.name}' in {where} is a parameter of type '{type_name(t)}'; "
                                f"{where} may only use integer parameters", v.loc)

    def header(self) -> None:
        c, f = self.c, self.f
        if c.function != f.name:
            raise SpecError(f"contract of '{c.function}' checked against function '{f.name}'", c.loc)
        spec = c.params
        cfile = tuple(self.types)
        both = f"spec ({', '.join(spec)}), C ({', '.join(cfile)})"
        if len(spec) != len(cfile):
            raise SpecError(f"'{f.name}' has {len(cfile)} parameter{'s' if len(cfile) != 1 else ''} in the C file "
                            f"but {len(spec)} in the spec header: {both}", c.loc)
        for k, (s, cn) in enumerate(zip(spec, cfile)):
            if s != cn:
                loc = c.param_locs[k] if k < len(c.param_locs) else c.loc
                raise SpecError(f"parameter {k + 1} of '{f.name}' is '{s}' in the spec header but '{cn}' "
                                f"in the C file: {both}", loc)

    def resource(self, mode: str, r: Resource) -> None:
        indices: tuple[str, ...] = ()
        for b in r.group:
            if b.index in self.types:
                raise SpecError(f"group index '{b.index}' in {mode} shadows the parameter '{b.index}'", b.loc)
            self.integer_formula(b.lo, mode, indices)
            self.integer_formula(b.hi, mode, indices)
            indices += (b.index,)
        base = r.base
        if base not in self.types:
            v = next(v for v in free_names(r.subject) if v.name == base)
            raise self.unknown(v, mode, ())
        if not _is_pointer(self.types[base]):
            raise SpecError(f"'{base}' in {mode} is not a pointer or array parameter "
                            f"(it is declared '{type_name(self.types[base])}')", r.subject.loc)
        for _, node in walk(r.subject):
            if isinstance(node, ir.Index):
                self.integer_formula(node.index, mode, indices)
        for d in r.shape.dims:
            self.integer_formula(d, f"the shape of '{base}' in {mode}", indices)

    def run(self) -> None:
        self.header()
        for e in self.c.requires:
            self.integer_formula(e, "requires")
        owner: dict[str, str] = {}
        for mode, r in self.c.resources():
            self.resource(mode, r)
            first = owner.setdefault(r.base, mode)
            if first != mode:
                raise SpecError(f"'{r.base}' is in both {first} and {mode}; a parameter may be in only one of "
                                f"reads, writes, modifies (use modifies to read and write it)", r.loc)
        for e in self.c.ensures:
            for v in free_names(e):
                if v.name not in self.types:
                    raise self.unknown(v, "ensures", ())
        check_ensures(self.c, self.types)


def check_contract(contract: Contract, f: ir.FuncDef) -> None:
    """Raise SpecError unless `contract` fits `f`: same parameters in order,
    formulas over known (integer) parameters and group indices in scope,
    resources on pointer/array parameters, one mode per parameter."""
    _Checker(contract, f).run()


def load_contracts(program: ir.Program, spec_path: Optional[Union[str, FsPath]]) -> dict[str, Contract]:
    """Every contract of `program`, checked: the spec file's (when a path is
    given) and the in-source ones, by function name in program order."""
    spec = parse_spec_file(spec_path) if spec_path is not None else {}
    functions = program.functions()
    names = [f.name for f in functions]
    for name, c in spec.items():
        if name not in names:
            raise SpecError(f"contract for '{name}' but {program.file} has no function '{name}' "
                            f"(its functions: {', '.join(names) or 'none'})", c.loc)
    out: dict[str, Contract] = {}
    for f in functions:
        in_source = contract_from_clauses(f)
        if in_source is not None and f.name in spec:
            where = spec[f.name].loc
            raise SpecError(f"'{f.name}' has a contract both in its body and in {where}; keep only one",
                            in_source.loc)
        contract = spec.get(f.name, in_source)
        if contract is not None:
            check_contract(contract, f)
            out[f.name] = contract
    return out
