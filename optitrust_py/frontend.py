"""C source -> IR, through pycparser.

`#include` lines are kept aside and re-emitted by the printer; the parser sees
the small fake system headers shipped in `fake_include/`, which declare the
standard macros the kernels use (INFINITY, NULL, ...) as identifiers so that
they survive a round trip unexpanded. Declarations coming from headers are
dropped from the IR. A source with no other preprocessor directive than
`#include <header>` and `#pragma` is parsed without running cpp, which keeps a
re-parse (level 1) fast; anything else goes through `gcc -E`.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
from pathlib import Path as FsPath
from typing import Any, Optional

from pycparser import c_ast, c_generator, c_parser

from . import ir
from .errors import ParseError, ToolError

FAKE_INCLUDE = FsPath(__file__).parent / "fake_include"
HEADER_MARK = "<otp-headers>"
FUNCTION_CLAUSES = ("__requires", "__ensures", "__reads", "__writes", "__modifies")
LOOP_CLAUSES = ("__xreads", "__xwrites", "__xmodifies", "__sreads", "__smodifies")

_INCLUDE_RE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*([<"][^>"]+[>"])[ \t]*(//.*|/\*.*\*/)?[ \t]*$')
_DIRECTIVE_RE = re.compile(r"^[ \t]*#[ \t]*(\w*)")
_INT_TYPES = {"int", "long", "short", "unsigned", "signed", "char", "size_t", "ptrdiff_t",
              "int64_t", "int32_t", "uint64_t", "uint32_t", "int16_t", "uint16_t", "ssize_t"}


def parse_file(path: str | FsPath) -> ir.Program:
    p = FsPath(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ParseError(f"cannot read {path}: {e.strerror}") from None
    return parse_text(text, str(path))


def parse_text(text: str, filename: str = "<input>") -> ir.Program:
    """Parse C text into a Program, keeping its include lines."""
    includes, blanked, simple = _split_includes(text)
    if simple and all(_fake_header(inc) for inc in includes):
        source = _typedefs_text() + f'\n# 1 "{filename}"\n' + blanked
    else:
        source = _preprocess(text, filename)
    parser = _parser()
    try:
        ast = parser.parse(source, filename)
    except c_parser.ParseError as e:
        raise _parse_error(_with_position(str(e), parser, filename), filename) from None
    items = tuple(_Converter(filename).top_level(ast))
    return ir.Program(tuple(includes), items, filename)


@functools.lru_cache(maxsize=1)
def _parser() -> c_parser.CParser:
    return c_parser.CParser()


def _split_includes(text: str) -> tuple[list[str], str, bool]:
    """Include lines, the text with those lines blanked (line numbers kept),
    and whether no other directive than `#pragma` remains."""
    includes: list[str] = []
    out: list[str] = []
    simple = True
    for line in _strip_comments(text).split("\n"):
        m = _INCLUDE_RE.match(line)
        if m:
            includes.append(f"#include {m.group(1)}")
            out.append("")
            continue
        d = _DIRECTIVE_RE.match(line)
        if d and d.group(1) != "pragma":
            simple = False
        out.append(line)
    return includes, "\n".join(out), simple


_COMMENT_RE = re.compile(r'//[^\n]*|/\*.*?\*/|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.S)


def _strip_comments(text: str) -> str:
    """Blank out comments (keeping line breaks, so locations stay right);
    string and character literals are left alone."""
    def blank(m: re.Match[str]) -> str:
        t = m.group(0)
        return t if t[0] in "\"'" else " " + "\n" * t.count("\n")
    return _COMMENT_RE.sub(blank, text)


def _fake_header(include: str) -> bool:
    name = include.split(None, 1)[1]
    return name.startswith("<") and (FAKE_INCLUDE / name[1:-1]).is_file()


@functools.lru_cache(maxsize=1)
def _headers_text() -> str:
    """Every fake header, concatenated with their guards and includes removed:
    they only declare, so including all of them is harmless and one cached
    text serves any include set."""
    parts = [f'# 1 "{HEADER_MARK}"']
    for h in sorted(FAKE_INCLUDE.glob("*.h")):
        parts.extend(ln for ln in _strip_comments(h.read_text()).splitlines() if not ln.lstrip().startswith("#"))
    return "\n".join(parts)


@functools.lru_cache(maxsize=1)
def _typedefs_text() -> str:
    """The fake headers' typedefs alone: all the parser needs of them to
    read a source (their other declarations are dropped from the IR anyway),
    and a third of the text to parse again at every level-1 re-parse."""
    gen = c_generator.CGenerator()
    ast = _parser().parse(_headers_text(), HEADER_MARK)
    return f'# 1 "{HEADER_MARK}"\n' + "\n".join(gen.visit(d) + ";" for d in ast.ext if isinstance(d, c_ast.Typedef))


@functools.lru_cache(maxsize=1)
def header_declarations() -> tuple[ir.Decl, ...]:
    """The fake headers' declarations (prototypes, typedefs), for type inference."""
    ast = _parser().parse(_headers_text(), HEADER_MARK)
    return tuple(d for d in _Converter(HEADER_MARK).top_level(ast) if isinstance(d, ir.Decl))


def _preprocess(text: str, filename: str) -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ToolError("gcc is needed to preprocess this file (it has #define/#if directives) and was not found on PATH")
    src_dir = str(FsPath(filename).parent) if filename and not filename.startswith("<") else "."
    cmd = [gcc, "-E", "-nostdinc", "-isystem", str(FAKE_INCLUDE), "-I", src_dir, "-x", "c", "-"]
    proc = subprocess.run(cmd, input=f'# 1 "{filename}"\n' + text, capture_output=True, text=True)
    if proc.returncode != 0:
        first = next((ln for ln in proc.stderr.splitlines() if "error" in ln), proc.stderr.strip())
        raise _parse_error(re.sub(r" (fatal )?error:", "", first, count=1), filename)
    return proc.stdout


def _with_position(message: str, parser: c_parser.CParser, filename: str) -> str:
    """Some pycparser errors carry no position; take it from the next token."""
    if re.match(r"^.*?:\d+:", message):
        return message
    try:
        tok = parser._tokens.peek(1)
    except Exception:  # pycparser internals differ between versions: keep the bare message
        return message
    if tok is None:
        return message
    text = message.split(": ", 1)[-1]
    return f"{filename}:{tok.lineno}:{tok.column}: {text} before '{tok.value}'"


def _parse_error(message: str, filename: str) -> ParseError:
    m = re.match(r"^(.*?):(\d+):(\d+):\s*(.*)$", message)
    if m:
        text = m.group(4).strip()
        if text.startswith("before:"):
            text = f"syntax error before '{text[len('before:'):].strip()}'"
        return ParseError(text or "syntax error", ir.Loc(m.group(1), int(m.group(2)), int(m.group(3))))
    m = re.match(r"^(.*?):(\d+):\s*(.*)$", message)
    if m:
        return ParseError(m.group(3).strip(), ir.Loc(m.group(1), int(m.group(2)), 1))
    return ParseError(message, ir.Loc(filename, 1, 1))


def _const_kind(ctype: str) -> str:
    if ctype == "string":
        return "string"
    if "char" in ctype:
        return "char"
    if ctype in ("float", "double", "long double"):
        return "float"
    return "int"


class _Converter:
    """One pass over pycparser's AST of the main file, building IR."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.gen = c_generator.CGenerator()
        self.written: list[set[str]] = [set()]  # names assigned in each loop body being converted

    def wrote(self, target: Any) -> None:
        """Note that the loop bodies being converted write `target` (when it is a name)."""
        if isinstance(target, c_ast.ID):
            self.written[-1].add(target.name)

    def loc(self, node: Any) -> Optional[ir.Loc]:
        c = getattr(node, "coord", None)
        if c is None or c.line is None:
            return None
        return ir.Loc(c.file or self.filename, c.line, c.column or 1)

    def from_main_file(self, node: Any) -> bool:
        c = getattr(node, "coord", None)
        return c is None or c.file is None or c.file == self.filename

    # ------------------------------------------------------------- top level

    def top_level(self, ast: c_ast.FileAST) -> list[ir.TopLevel]:
        out: list[ir.TopLevel] = []
        for node in ast.ext:
            if not self.from_main_file(node):
                continue
            if isinstance(node, c_ast.FuncDef) and not node.param_decls:
                out.append(self.funcdef(node))
            elif isinstance(node, (c_ast.Decl, c_ast.Typedef)) and not getattr(node, "align", None):
                out.append(self.decl(node))
            elif isinstance(node, c_ast.Pragma):
                out.append(ir.Pragma(node.string, self.loc(node)))
            else:
                out.append(ir.Opaque(self.opaque_text(node), self.loc(node)))
        return out

    def funcdef(self, node: c_ast.FuncDef) -> ir.FuncDef:
        body = self.block(node.body)
        clauses, rest = _leading_clauses(body.stmts, FUNCTION_CLAUSES)
        return ir.FuncDef(self.decl(node.decl), ir.Block(rest, body.loc), clauses, self.loc(node))

    def opaque_text(self, node: Any) -> str:
        if isinstance(node, (c_ast.FuncDef, c_ast.Pragma)):
            return self.gen.visit(node).rstrip()
        return self.gen._generate_stmt(node).strip()

    # ------------------------------------------------------------- types

    def decl(self, node: Any) -> ir.Decl:
        storage = tuple(node.storage) if not isinstance(node, c_ast.Typedef) else ("typedef",)
        funcspec = tuple(getattr(node, "funcspec", None) or ())
        init = self.expr(node.init) if getattr(node, "init", None) is not None else None
        bitsize = self.expr(node.bitsize) if getattr(node, "bitsize", None) is not None else None
        return ir.Decl(node.name, self.type(node.type), init, storage, funcspec, bitsize, self.loc(node))

    def type(self, t: Any) -> ir.CType:
        if isinstance(t, c_ast.TypeDecl):
            return self.base(t.type, tuple(t.quals))
        if isinstance(t, c_ast.Typename):
            return self.type(t.type)
        if isinstance(t, c_ast.PtrDecl):
            return ir.Ptr(self.type(t.type), tuple(t.quals))
        if isinstance(t, c_ast.ArrayDecl):
            size = self.expr(t.dim) if t.dim is not None else None
            return ir.Array(self.type(t.type), size, tuple(t.dim_quals or ()))
        if isinstance(t, c_ast.FuncDecl):
            params: Optional[tuple[ir.Decl, ...]] = None
            variadic = False
            if t.args is not None:
                ps = []
                for p in t.args.params:
                    if isinstance(p, c_ast.EllipsisParam):
                        variadic = True
                    elif isinstance(p, c_ast.ID):
                        ps.append(ir.Decl(p.name, ir.INT, loc=self.loc(p)))
                    else:
                        ps.append(ir.Decl(p.name, self.type(p.type), storage=tuple(getattr(p, "storage", ()) or ()),
                                          loc=self.loc(p)))
                params = tuple(ps)
            return ir.FuncT(self.type(t.type), params, variadic)
        return self.base(t, ())

    def base(self, t: Any, quals: tuple[str, ...]) -> ir.CType:
        if isinstance(t, c_ast.IdentifierType):
            return ir.Base(tuple(t.names), quals)
        if isinstance(t, (c_ast.Struct, c_ast.Union)):
            kind = "struct" if isinstance(t, c_ast.Struct) else "union"
            fields = tuple(self.decl(d) for d in t.decls) if t.decls is not None else None
            return ir.StructT(kind, t.name, fields, quals)
        if isinstance(t, c_ast.Enum):
            values = None
            if t.values is not None:
                values = tuple(ir.Enumerator(e.name, self.expr(e.value) if e.value is not None else None)
                               for e in t.values.enumerators)
            return ir.EnumT(t.name, values, quals)
        raise ParseError(f"unsupported type construct {type(t).__name__}", self.loc(t))

    # ------------------------------------------------------------- expressions

    def expr(self, e: Any) -> ir.Expr:
        loc = self.loc(e)
        if isinstance(e, c_ast.Constant):
            return ir.Const(e.value, _const_kind(e.type), loc)
        if isinstance(e, c_ast.ID):
            return ir.Var(e.name, loc)
        if isinstance(e, c_ast.UnaryOp):
            if e.op in ("sizeof", "_Alignof") and isinstance(e.expr, c_ast.Typename):
                return ir.SizeofType(self.type(e.expr), e.op, loc)
            if e.op in ("++", "--", "p++", "p--", "&"):
                self.wrote(e.expr)
            return ir.Unop(e.op, self.expr(e.expr), loc)
        if isinstance(e, c_ast.BinaryOp):
            return ir.Binop(e.op, self.expr(e.left), self.expr(e.right), loc)
        if isinstance(e, c_ast.Assignment):
            self.wrote(e.lvalue)
            return ir.Assign(e.op, self.expr(e.lvalue), self.expr(e.rvalue), loc)
        if isinstance(e, c_ast.TernaryOp):
            return ir.Ternary(self.expr(e.cond), self.expr(e.iftrue), self.expr(e.iffalse), loc)
        if isinstance(e, c_ast.ArrayRef):
            return ir.Index(self.expr(e.name), self.expr(e.subscript), loc)
        if isinstance(e, c_ast.FuncCall):
            args = tuple(self.expr(a) for a in e.args.exprs) if e.args is not None else ()
            return ir.Call(self.expr(e.name), args, loc)
        if isinstance(e, c_ast.StructRef):
            return ir.Member(self.expr(e.name), e.field.name, e.type == "->", loc)
        if isinstance(e, c_ast.Cast):
            return ir.Cast(self.type(e.to_type), self.expr(e.expr), loc)
        if isinstance(e, c_ast.ExprList):
            return ir.Comma(tuple(self.expr(x) for x in e.exprs), loc)
        if isinstance(e, c_ast.InitList) and not any(isinstance(x, c_ast.NamedInitializer) for x in e.exprs):
            return ir.InitList(tuple(self.expr(x) for x in e.exprs), loc)
        if isinstance(e, c_ast.CompoundLiteral) and isinstance(e.init, c_ast.InitList) and \
                not any(isinstance(x, c_ast.NamedInitializer) for x in e.init.exprs):
            init = self.expr(e.init)
            assert isinstance(init, ir.InitList)
            return ir.CompoundLit(self.type(e.type), init, loc)
        if isinstance(e, c_ast.InitList):  # designated: pycparser prints its braces in the parent only
            return ir.OpaqueExpr("{" + self.gen.visit(e) + "}", loc)
        return ir.OpaqueExpr(self.gen.visit(e), loc)

    # ------------------------------------------------------------- statements

    def block(self, node: Any) -> ir.Block:
        if isinstance(node, c_ast.Compound):
            return ir.Block(self.stmts(node.block_items or []), self.loc(node))
        return ir.Block(self.stmts([node]), self.loc(node))

    def stmts(self, nodes: list[Any]) -> tuple[ir.Stmt, ...]:
        out: list[ir.Stmt] = []
        pending: list[ir.Pragma] = []
        for node in nodes:
            s = self.stmt(node)
            if isinstance(s, ir.Pragma):
                pending.append(s)
                continue
            if isinstance(s, (ir.For, ir.GenericFor)) and pending:
                s = _with_pragmas(s, tuple(p.text for p in pending))
            else:
                out.extend(pending)
            pending = []
            out.append(s)
        out.extend(pending)
        return tuple(out)

    def stmt(self, s: Any) -> ir.Stmt:
        loc = self.loc(s)
        if isinstance(s, c_ast.Compound):
            return self.block(s)
        if isinstance(s, (c_ast.Decl, c_ast.Typedef)):
            if getattr(s, "align", None):
                return ir.Opaque(self.opaque_text(s), loc)
            if s.name:
                self.written[-1].add(s.name)
            return ir.DeclStmt(self.decl(s), loc)
        if isinstance(s, c_ast.For):
            return self.for_loop(s)
        if isinstance(s, c_ast.While):
            return ir.While(self.expr(s.cond), self.block(s.stmt), loc)
        if isinstance(s, c_ast.DoWhile):
            return ir.DoWhile(self.block(s.stmt), self.expr(s.cond), loc)
        if isinstance(s, c_ast.If):
            other = self.block(s.iffalse) if s.iffalse is not None else None
            return ir.If(self.expr(s.cond), self.block(s.iftrue) if s.iftrue is not None else ir.Block(()),
                         other, loc)
        if isinstance(s, c_ast.Switch):
            return ir.Switch(self.expr(s.cond), self.block(s.stmt), loc)
        if isinstance(s, c_ast.Case):
            return ir.Case(self.expr(s.expr), self.stmts(s.stmts or []), loc)
        if isinstance(s, c_ast.Default):
            return ir.Case(None, self.stmts(s.stmts or []), loc)
        if isinstance(s, c_ast.Return):
            return ir.Return(self.expr(s.expr) if s.expr is not None else None, loc)
        if isinstance(s, c_ast.Break):
            return ir.Jump("break", None, loc)
        if isinstance(s, c_ast.Continue):
            return ir.Jump("continue", None, loc)
        if isinstance(s, c_ast.Goto):
            return ir.Jump("goto", s.name, loc)
        if isinstance(s, c_ast.Label):
            return ir.Label(s.name, self.stmt(s.stmt) if s.stmt is not None else ir.Opaque(";"), loc)
        if isinstance(s, c_ast.Pragma):
            return ir.Pragma(s.string, loc)
        if isinstance(s, c_ast.EmptyStatement):
            return ir.Opaque(";", loc)
        if isinstance(s, (c_ast.StaticAssert, c_ast.DeclList)):
            return ir.Opaque(self.opaque_text(s), loc)
        return ir.ExprStmt(self.expr(s), loc)

    def for_loop(self, s: c_ast.For) -> ir.Stmt:
        loc = self.loc(s)
        self.written.append(set())
        body = self.block(s.stmt)
        written = self.written.pop()
        self.written[-1] |= written
        canonical = _canonical_for(s)
        if canonical is not None:
            index, itype_node, start, cmp, bound, step = canonical
            clauses, rest = _leading_clauses(body.stmts, LOOP_CLAUSES)
            stop = self.expr(bound)
            if cmp == "<=":
                stop = ir.Binop("+", stop, ir.Const("1"))
            loop = ir.For(index, self.expr(start), stop, ir.Block(rest, body.loc),
                          self.expr(step) if step is not None else ir.Const("1"),
                          self.type(itype_node), cmp == "<=", (), clauses, loc)
            if index not in written:
                return loop
        init: Any = None
        if isinstance(s.init, c_ast.DeclList):
            init = tuple(self.decl(d) for d in s.init.decls)
        elif s.init is not None:
            init = self.expr(s.init)
        return ir.GenericFor(init, self.expr(s.cond) if s.cond is not None else None,
                             self.expr(s.next) if s.next is not None else None, body, (), loc)


def _with_pragmas(loop: ir.For | ir.GenericFor, pragmas: tuple[str, ...]) -> ir.Stmt:
    return dataclasses.replace(loop, pragmas=pragmas)


def _canonical_for(s: c_ast.For) -> Optional[tuple[str, Any, Any, str, Any, Any]]:
    """(index, type, start, cmp, bound, step) of `for (T i = a; i < b; i += c)`."""
    if not (isinstance(s.init, c_ast.DeclList) and len(s.init.decls) == 1):
        return None
    d = s.init.decls[0]
    if not (isinstance(d.type, c_ast.TypeDecl) and isinstance(d.type.type, c_ast.IdentifierType)
            and d.init is not None and set(d.type.type.names) <= _INT_TYPES):
        return None
    index = d.name
    c = s.cond
    if not (isinstance(c, c_ast.BinaryOp) and c.op in ("<", "<=") and isinstance(c.left, c_ast.ID)
            and c.left.name == index):
        return None
    n = s.next
    step: Any = None
    if isinstance(n, c_ast.UnaryOp) and n.op in ("p++", "++") and isinstance(n.expr, c_ast.ID) \
            and n.expr.name == index:
        step = None
    elif isinstance(n, c_ast.Assignment) and n.op == "+=" and isinstance(n.lvalue, c_ast.ID) \
            and n.lvalue.name == index:
        step = n.rvalue
    else:
        return None
    return index, d.type, d.init, c.op, c.right, step


def _leading_clauses(stmts: tuple[ir.Stmt, ...], names: tuple[str, ...]) \
        -> tuple[tuple[ir.ContractClause, ...], tuple[ir.Stmt, ...]]:
    """Split `__reads("...")`-style calls off the front of a body."""
    clauses: list[ir.ContractClause] = []
    i = 0
    while i < len(stmts):
        s = stmts[i]
        if not (isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Call) and s.expr.name in names):
            break
        args = s.expr.args
        if len(args) != 1 or not (isinstance(args[0], ir.Const) and args[0].kind == "string"):
            raise ParseError(f"{s.expr.name} takes one string literal", s.loc)
        clauses.append(ir.ContractClause(s.expr.name[2:], _unquote(args[0].text), s.loc))
        i += 1
    return tuple(clauses), stmts[i:]


def _unquote(literal: str) -> str:
    body = literal[1:-1]
    return body.replace('\\"', '"').replace("\\\\", "\\")
