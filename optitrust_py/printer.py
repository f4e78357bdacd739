"""IR -> readable C.

Parentheses follow C precedence, so parsing the output gives back the same
IR and printing is a fixpoint; a few extra ones are added where gcc's
-Wparentheses would otherwise complain. The printer also records, for every
statement path, the line it starts on, so targets and errors can point into
the code the user is looking at.
"""
from __future__ import annotations

from typing import Optional

from . import ir
from .tree import Path

INDENT = "  "

_BINARY_PREC = {
    "*": 13, "/": 13, "%": 13, "+": 12, "-": 12, "<<": 11, ">>": 11,
    "<": 10, "<=": 10, ">": 10, ">=": 10, "==": 9, "!=": 9,
    "&": 8, "^": 7, "|": 6, "&&": 5, "||": 4,
}
_UNARY, _POSTFIX, _PRIMARY = 15, 16, 17
_ARITH = {"+", "-", "*", "/", "%"}
_COMPARE = {"<", "<=", ">", ">=", "==", "!="}


def prec(e: ir.Expr) -> int:
    if isinstance(e, ir.Binop):
        return _BINARY_PREC[e.op]
    if isinstance(e, (ir.Unop)):
        return _POSTFIX if e.op in ("p++", "p--") else _UNARY
    if isinstance(e, (ir.Cast, ir.SizeofType)):
        return _UNARY
    if isinstance(e, (ir.Index, ir.Call, ir.Member, ir.CompoundLit)):
        return _POSTFIX
    if isinstance(e, ir.Ternary):
        return 3
    if isinstance(e, ir.Assign):
        return 2
    if isinstance(e, ir.Comma):
        return 1
    return _PRIMARY


def _needs_clarity(parent: str, child: ir.Expr) -> bool:
    """Parentheses gcc -Wparentheses asks for, though precedence makes them optional."""
    if not isinstance(child, ir.Binop):
        return False
    c = child.op
    if parent == "||" and c == "&&":
        return True
    if parent in ("<<", ">>") and c in ("+", "-"):
        return True
    if parent in ("&", "|", "^") and (c in _ARITH or c in _COMPARE or c in ("&", "|", "^") and c != parent):
        return True
    return parent in _COMPARE and c in _COMPARE


def expr(e: ir.Expr) -> str:
    """C text of an expression."""
    if isinstance(e, ir.Const):
        return e.text
    if isinstance(e, ir.Var):
        return e.name
    if isinstance(e, ir.Binop):
        p = _BINARY_PREC[e.op]
        left = _wrap(e.left, p, _needs_clarity(e.op, e.left))
        right = _wrap(e.right, p + 1, _needs_clarity(e.op, e.right))
        return f"{left} {e.op} {right}"
    if isinstance(e, ir.Unop):
        if e.op in ("p++", "p--"):
            return _wrap(e.arg, _POSTFIX) + e.op[1:]
        if e.op in ("sizeof", "_Alignof"):
            return f"{e.op}({expr(e.arg)})"
        inner = _wrap(e.arg, _UNARY)
        if inner[:1] in ("-", "+", "&", "*") and inner[0] == e.op[-1]:
            inner = f"({inner})"
        return e.op + inner
    if isinstance(e, ir.Assign):
        return f"{_wrap(e.lhs, _UNARY)} {e.op} {_wrap(e.rhs, 2)}"
    if isinstance(e, ir.Ternary):
        return f"{_wrap(e.cond, 4)} ? {_wrap(e.then, 2)} : {_wrap(e.other, 3)}"
    if isinstance(e, ir.Index):
        return f"{_wrap(e.base, _POSTFIX)}[{expr(e.index)}]"
    if isinstance(e, ir.Call):
        return f"{_wrap(e.func, _POSTFIX)}({', '.join(_wrap(a, 2) for a in e.args)})"
    if isinstance(e, ir.Member):
        return f"{_wrap(e.base, _POSTFIX)}{'->' if e.arrow else '.'}{e.field}"
    if isinstance(e, ir.Cast):
        return f"({type_name(e.type)}){_wrap(e.arg, _UNARY)}"
    if isinstance(e, ir.SizeofType):
        return f"{e.op}({type_name(e.type)})"
    if isinstance(e, ir.Comma):
        return ", ".join(_wrap(x, 2) for x in e.exprs)
    if isinstance(e, ir.InitList):
        return "{" + ", ".join(_wrap(x, 2) for x in e.items) + "}"
    if isinstance(e, ir.CompoundLit):
        return f"({type_name(e.type)}){expr(e.init)}"
    if isinstance(e, ir.OpaqueExpr):
        return e.text
    raise TypeError(f"not an expression: {type(e).__name__}")


def _wrap(e: ir.Expr, min_prec: int, force: bool = False) -> str:
    text = expr(e)
    return f"({text})" if force or prec(e) < min_prec else text


# ----------------------------------------------------------------- types


def _quals(q: tuple[str, ...]) -> str:
    return " ".join(q) + " " if q else ""


def _specifier(t: ir.CType, indent: int) -> str:
    if isinstance(t, ir.Base):
        return _quals(t.quals) + " ".join(t.names)
    if isinstance(t, ir.StructT):
        head = _quals(t.quals) + t.kind + (f" {t.name}" if t.name else "")
        if t.fields is None:
            return head
        pad = INDENT * (indent + 1)
        body = "".join(f"{pad}{declaration(f, indent + 1)};\n" for f in t.fields)
        return f"{head} {{\n{body}{INDENT * indent}}}"
    if isinstance(t, ir.EnumT):
        head = _quals(t.quals) + "enum" + (f" {t.name}" if t.name else "")
        if t.values is None:
            return head
        vals = ", ".join(v.name + (f" = {expr(v.value)}" if v.value is not None else "") for v in t.values)
        return f"{head} {{{vals}}}"
    raise TypeError(f"not a specifier: {type(t).__name__}")


def _declarator(t: ir.CType, inner: str, indent: int, spec: bool = True) -> str:
    """Wrap `inner` (a name or nested declarator) in the declarator of `t`;
    without `spec`, leave out the base type (later names of `int i, *p`)."""
    if isinstance(t, ir.Ptr):
        q = " ".join(t.quals)
        s = "*" + q + (" " if q and inner else "") + inner
        if isinstance(t.to, (ir.Array, ir.FuncT)):
            s = f"({s})"
        return _declarator(t.to, s, indent, spec)
    if isinstance(t, ir.Array):
        size = expr(t.size) if t.size is not None else ""
        return _declarator(t.of, f"{inner}[{_quals(t.quals)}{size}]", indent, spec)
    if isinstance(t, ir.FuncT):
        return _declarator(t.ret, f"{inner}({params(t)})", indent, spec)
    if not spec:
        return inner
    head = _specifier(t, indent)
    return f"{head} {inner}" if inner else head


def params(t: ir.FuncT) -> str:
    if t.params is None:
        return ""
    ps = [declaration(p, 0) for p in t.params]
    if t.variadic:
        ps.append("...")
    return ", ".join(ps)


def declaration(d: ir.Decl, indent: int = 0) -> str:
    """`static const float *x = e` (no semicolon)."""
    prefix = " ".join(d.storage + d.funcspec)
    text = _declarator(d.type, d.name or "", indent)
    if d.bitsize is not None:
        text += f" : {expr(d.bitsize)}"
    if d.init is not None:
        text += f" = {_wrap(d.init, 2)}"
    return f"{prefix} {text}" if prefix else text


def type_name(t: ir.CType) -> str:
    return _declarator(t, "", 0)


# ----------------------------------------------------------------- statements


class _Printer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.where: dict[Path, int] = {}

    def emit(self, indent: int, text: str) -> None:
        for ln in text.split("\n"):
            self.lines.append(INDENT * indent + ln if ln else "")

    def mark(self, path: Path) -> None:
        self.where.setdefault(path, len(self.lines) + 1)

    def contract(self, clauses: tuple[ir.ContractClause, ...], indent: int) -> None:
        for c in clauses:
            text = c.text.replace("\\", "\\\\").replace('"', '\\"')
            self.emit(indent, f'__{c.kind}("{text}");')

    def block_body(self, b: ir.Block, indent: int, path: Path) -> None:
        for i, s in enumerate(b.stmts):
            self.stmt(s, indent, path + (("stmts", i),))

    def braced(self, head: str, b: ir.Block, indent: int, path: Path, tail: str = "}") -> None:
        self.emit(indent, head + " {")
        self.block_body(b, indent + 1, path)
        self.emit(indent, tail)

    def stmt(self, s: ir.Stmt, indent: int, path: Path) -> None:
        self.mark(path)
        if isinstance(s, ir.ExprStmt):
            self.emit(indent, expr(s.expr) + ";")
        elif isinstance(s, ir.DeclStmt):
            self.emit(indent, declaration(s.decl, indent) + ";")
        elif isinstance(s, ir.Block):
            self.emit(indent, "{")
            self.block_body(s, indent + 1, path)
            self.emit(indent, "}")
        elif isinstance(s, ir.For):
            for p in s.pragmas:
                self.emit(indent, f"#pragma {p}")
            self.mark(path)
            i = s.index
            stop = expr(s.stop)
            cmp = "<"
            if s.inclusive and isinstance(s.stop, ir.Binop) and s.stop.op == "+" and s.stop.right == ir.Const("1"):
                cmp, stop = "<=", _wrap(s.stop.left, 11)
            else:
                stop = _wrap(s.stop, 11)
            step = f"{i}++" if s.step == ir.Const("1") else f"{i} += {_wrap(s.step, 2)}"
            self.emit(indent, f"for ({declaration(ir.Decl(i, s.itype, s.start))}; {i} {cmp} {stop}; {step}) {{")
            self.contract(s.contract, indent + 1)
            self.block_body(s.body, indent + 1, path + (("body", None),))
            self.emit(indent, "}")
        elif isinstance(s, ir.GenericFor):
            for p in s.pragmas:
                self.emit(indent, f"#pragma {p}")
            self.mark(path)
            if isinstance(s.init, tuple):
                first = declaration(s.init[0])
                rest = [_declarator(d.type, d.name or "", 0, spec=False)
                        + (f" = {_wrap(d.init, 2)}" if d.init is not None else "") for d in s.init[1:]]
                init = ", ".join([first] + rest)
            else:
                init = expr(s.init) if s.init is not None else ""
            cond = expr(s.cond) if s.cond is not None else ""
            nxt = expr(s.next) if s.next is not None else ""
            self.braced(f"for ({init}; {cond}; {nxt})".replace("; )", ";)"), s.body, indent,
                        path + (("body", None),))
        elif isinstance(s, ir.While):
            self.braced(f"while ({expr(s.cond)})", s.body, indent, path + (("body", None),))
        elif isinstance(s, ir.DoWhile):
            self.braced("do", s.body, indent, path + (("body", None),), f"}} while ({expr(s.cond)});")
        elif isinstance(s, ir.If):
            self.if_chain(s, indent, path, "if")
        elif isinstance(s, ir.Switch):
            self.braced(f"switch ({expr(s.cond)})", s.body, indent, path + (("body", None),))
        elif isinstance(s, ir.Case):
            self.emit(indent, f"case {expr(s.expr)}:" if s.expr is not None else "default:")
            for i, x in enumerate(s.stmts):
                self.stmt(x, indent + 1, path + (("stmts", i),))
        elif isinstance(s, ir.Return):
            self.emit(indent, f"return {expr(s.value)};" if s.value is not None else "return;")
        elif isinstance(s, ir.Jump):
            self.emit(indent, f"goto {s.label};" if s.kind == "goto" else f"{s.kind};")
        elif isinstance(s, ir.Label):
            self.emit(max(indent - 1, 0), f"{s.name}:")
            self.stmt(s.stmt, indent, path + (("stmt", None),))
        elif isinstance(s, ir.Pragma):
            self.emit(indent, f"#pragma {s.text}")
        elif isinstance(s, ir.Opaque):
            self.emit(indent, s.text)
        else:
            raise TypeError(f"not a statement: {type(s).__name__}")

    def if_chain(self, s: ir.If, indent: int, path: Path, keyword: str) -> None:
        head = f"{keyword} ({expr(s.cond)}) {{"
        if keyword == "if":
            self.emit(indent, head)
        else:
            self.lines[-1] += " " + head
        self.block_body(s.then, indent + 1, path + (("then", None),))
        self.emit(indent, "}")
        if s.other is None:
            return
        o = s.other
        if len(o.stmts) == 1 and isinstance(o.stmts[0], ir.If):
            self.mark(path + (("other", None), ("stmts", 0)))
            self.if_chain(o.stmts[0], indent, path + (("other", None), ("stmts", 0)), "else if")
        else:
            self.lines[-1] += " else {"
            self.block_body(o, indent + 1, path + (("other", None),))
            self.emit(indent, "}")

    def top(self, item: ir.TopLevel, path: Path) -> None:
        self.mark(path)
        if isinstance(item, ir.FuncDef):
            self.emit(0, declaration(item.decl) + " {")
            self.contract(item.contract, 1)
            self.block_body(item.body, 1, path + (("body", None),))
            self.emit(0, "}")
        elif isinstance(item, ir.Decl):
            self.emit(0, declaration(item) + ";")
        else:
            self.stmt(item, 0, path)


class Printed:
    """Printed program text plus the line where each statement path starts."""

    def __init__(self, text: str, where: dict[Path, int]) -> None:
        self.text = text
        self.where = where


def print_program(prog: ir.Program) -> Printed:
    pr = _Printer()
    for inc in prog.includes:
        pr.lines.append(inc)
    previous: Optional[ir.TopLevel] = None
    for i, item in enumerate(prog.items):
        if pr.lines and not isinstance(previous, ir.Pragma) and (
                previous is None or isinstance(item, ir.FuncDef) or isinstance(previous, ir.FuncDef)):
            pr.lines.append("")
        pr.top(item, (("items", i),))
        previous = item
    return Printed("\n".join(pr.lines) + "\n", pr.where)


def to_c(prog: ir.Program) -> str:
    return print_program(prog).text


def stmt_text(s: ir.Stmt) -> str:
    """Text of one statement at indent 0 (for messages and target matching)."""
    pr = _Printer()
    pr.stmt(s, 0, ())
    return "\n".join(pr.lines)
