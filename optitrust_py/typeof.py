"""Types of expressions, as C computes them (LP64: int 32 bits, long and
pointers 64 bits; plain `char` signed).

    env = env_at(program, path)        # names visible at a place -> declared types
    type_of(expr, env)                 # the value type of expr (arrays decayed)

Names not in `env` are looked up among the fake system headers' declarations
(`sqrtf`, `INFINITY`, `malloc`, ...). Typedef names resolve through
`typedefs` (the headers' typedefs by default; `typedefs_of(program)` adds the
program's own, and struct tags under the key `"struct NAME"`).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Mapping, Optional

from . import frontend, ir
from .errors import TransformError
from .printer import expr as expr_text, type_name
from .tree import Path

Env = Mapping[str, ir.CType]

SIZE_T = ir.Base(("size_t",))
PTRDIFF_T = ir.Base(("ptrdiff_t",))
DOUBLE = ir.Base(("double",))
CHAR = ir.Base(("char",))


# ----------------------------------------------------------------- header declarations


@functools.lru_cache(maxsize=1)
def header_decls() -> dict[str, ir.Decl]:
    """Every declaration of the fake system headers, by name (parsed once)."""
    return {d.name: d for d in frontend.header_declarations() if d.name}


def header_typedefs() -> dict[str, ir.CType]:
    return {n: d.type for n, d in header_decls().items() if "typedef" in d.storage}


def typedefs_of(program: ir.Program) -> dict[str, ir.CType]:
    """Header typedefs, the program's top-level typedefs, and its struct tags."""
    out = dict(header_typedefs())
    for item in program.items:
        if not isinstance(item, ir.Decl):
            continue
        if "typedef" in item.storage and item.name:
            out[item.name] = item.type
        t = item.type
        while isinstance(t, (ir.Ptr, ir.Array)):
            t = t.to if isinstance(t, ir.Ptr) else t.of
        if isinstance(t, ir.StructT) and t.name and t.fields is not None:
            out[f"{t.kind} {t.name}"] = t
    return out


# ----------------------------------------------------------------- environments


def param_type(t: ir.CType) -> ir.CType:
    """A parameter declared as an array or function is a pointer."""
    if isinstance(t, ir.Array):
        return ir.Ptr(t.of, t.quals)
    if isinstance(t, ir.FuncT):
        return ir.Ptr(t)
    return t


def env_at(program: ir.Program, path: Path, globals: bool = True) -> dict[str, ir.CType]:
    """Names visible at `path` (a path from the program root) with their
    declared types: globals and functions of the program (unless `globals`
    is false), then the enclosing function's parameters, loop indices, and
    the locals declared before the place in each enclosing block. Header
    names are not included."""
    env: dict[str, ir.CType] = {}
    for item in program.items if globals else ():
        if isinstance(item, ir.FuncDef):
            env[item.name] = item.decl.type
        elif isinstance(item, ir.Decl) and item.name and "typedef" not in item.storage:
            env[item.name] = item.type
    node: Any = program
    for name, index in path:
        if isinstance(node, ir.FuncDef) and name == "body":
            for p in node.params:
                if p.name:
                    env[p.name] = param_type(p.type)
        elif isinstance(node, (ir.Block, ir.Case)) and name == "stmts" and index is not None:
            for s in node.stmts[:index]:
                if isinstance(s, ir.DeclStmt) and s.decl.name and "typedef" not in s.decl.storage:
                    env[s.decl.name] = s.decl.type
        elif isinstance(node, ir.For) and name in ("stop", "step", "body"):
            env[node.index] = node.itype
        elif isinstance(node, ir.GenericFor) and name != "init" and isinstance(node.init, tuple):
            for d in node.init:
                if d.name:
                    env[d.name] = d.type
        node = getattr(node, name)
        if index is not None:
            node = node[index]
    return env


def visible_names(program: ir.Program, path: Path) -> set[str]:
    """Every name a declaration inserted at `path` could clash with or shadow:
    those of `env_at`, the program's typedefs and the headers' names."""
    return set(env_at(program, path)) | set(typedefs_of(program)) | set(header_decls())


# ----------------------------------------------------------------- arithmetic types

_FLOAT_RANK = {("float",): 10, ("double",): 11, ("double", "long"): 12}
_INT_RANK = {"_Bool": 0, "char": 1, "short": 2, "int": 3, "long": 4, "longlong": 5}


def unqualified(t: ir.CType) -> ir.CType:
    if isinstance(t, (ir.Base, ir.Ptr, ir.Array, ir.StructT, ir.EnumT)) and t.quals:
        return dataclasses.replace(t, quals=())
    return t


def resolve(t: ir.CType, typedefs: Mapping[str, ir.CType]) -> ir.CType:
    """Follow typedef names (and struct tags, when defined) to a type."""
    seen = 0
    while seen < 32:
        seen += 1
        if isinstance(t, ir.Base) and len(t.names) == 1 and t.names[0] in typedefs:
            t = typedefs[t.names[0]]
        elif isinstance(t, ir.StructT) and t.fields is None and f"{t.kind} {t.name}" in typedefs:
            t = typedefs[f"{t.kind} {t.name}"]
        else:
            return t
    return t


def _arith_info(t: ir.CType, typedefs: Mapping[str, ir.CType]) -> Optional[tuple[str, int, bool]]:
    """(kind, rank, unsigned) of an arithmetic type, None if not arithmetic."""
    r = resolve(t, typedefs)
    if isinstance(r, ir.EnumT):
        return ("int", 3, False)
    if not isinstance(r, ir.Base):
        return None
    names = [n for n in r.names]
    key = tuple(sorted(n for n in names if n != "int" or len(names) == 1))
    if key in _FLOAT_RANK:
        return ("float", _FLOAT_RANK[key], False)
    unsigned = "unsigned" in names
    rest = [n for n in names if n not in ("unsigned", "signed", "int")]
    if rest == ["_Bool"]:
        return ("int", 0, True)
    if not rest:
        return ("int", 3, unsigned) if ("unsigned" in names or "signed" in names or "int" in names) else None
    word = "".join(sorted(rest)) if rest.count("long") < 2 else "longlong"
    if word in _INT_RANK:
        return ("int", _INT_RANK[word], unsigned)
    return None


def is_arithmetic(t: ir.CType, typedefs: Optional[Mapping[str, ir.CType]] = None) -> bool:
    return _arith_info(t, header_typedefs() if typedefs is None else typedefs) is not None


def integer_range(t: ir.CType, typedefs: Optional[Mapping[str, ir.CType]] = None) -> Optional[tuple[int, int]]:
    """The smallest and largest values of an integer type (LP64), None when
    `t` is not an integer type."""
    info = _arith_info(t, header_typedefs() if typedefs is None else typedefs)
    if info is None or info[0] != "int":
        return None
    _, rank, unsigned = info
    if rank == 0:
        return 0, 1
    bits = _BITS[rank]
    return (0, 2 ** bits - 1) if unsigned else (-2 ** (bits - 1), 2 ** (bits - 1) - 1)


def _int_type(rank: int, unsigned: bool) -> ir.Base:
    names = {1: ("char",), 2: ("short",), 3: ("int",), 4: ("long",), 5: ("long", "long")}[rank]
    return ir.Base(("unsigned",) + names if unsigned else names)


def _promote(t: ir.CType, info: tuple[str, int, bool]) -> tuple[ir.CType, tuple[str, int, bool]]:
    kind, rank, _ = info
    if kind == "int" and rank < 3:
        return ir.INT, ("int", 3, False)
    return unqualified(t), info


def usual_arithmetic(a: ir.CType, b: ir.CType, typedefs: Mapping[str, ir.CType]) -> ir.CType:
    """The common type of `a op b` for arithmetic operands (C11 6.3.1.8)."""
    ia, ib = _arith_info(a, typedefs), _arith_info(b, typedefs)
    if ia is None or ib is None:
        raise ValueError("not arithmetic")
    if ia[0] == "float" or ib[0] == "float":
        if ia[0] == "float" and (ib[0] != "float" or ia[1] >= ib[1]):
            return unqualified(a)
        return unqualified(b)
    a, ia = _promote(a, ia)
    b, ib = _promote(b, ib)
    if ia[1:] == ib[1:]:
        return a
    if ia[2] == ib[2]:
        return a if ia[1] > ib[1] else b
    (u, iu), (sg, isg) = ((a, ia), (b, ib)) if ia[2] else ((b, ib), (a, ia))
    if iu[1] >= isg[1]:
        return u
    if _BITS[isg[1]] > _BITS[iu[1]]:
        return sg  # the signed type holds every value of the unsigned one
    return _int_type(isg[1], True)


_BITS = {0: 8, 1: 8, 2: 16, 3: 32, 4: 64, 5: 64}


# ----------------------------------------------------------------- constants

_INT_LIT = re.compile(r"^(0[xX][0-9a-fA-F]+|0[bB][01]+|[0-9]+)([uUlL]*)$")


def _const_type(c: ir.Const) -> ir.CType:
    if c.kind == "char":
        return ir.INT
    if c.kind == "string":
        return ir.Ptr(CHAR)
    text = c.text
    if c.kind == "float":
        suffix = text[-1].lower()
        if suffix == "f":  # a hex float's exponent is mandatory, so a final f is a suffix
            return ir.FLOAT
        if suffix == "l":
            return ir.Base(("long", "double"))
        return DOUBLE
    m = _INT_LIT.match(text)
    if not m:
        raise TransformError(f"cannot read the integer literal {text!r}")
    digits, suffix = m.group(1), m.group(2).lower()
    value = int(digits, 0) if not (digits.startswith("0") and digits.isdigit() and len(digits) > 1) \
        else int(digits, 8)
    unsigned = "u" in suffix
    longs = suffix.count("l")
    decimal = digits.isdigit() and not (digits.startswith("0") and len(digits) > 1)
    for rank in (3, 4, 5):
        if (rank == 4 and longs > 1) or (rank == 3 and longs > 0):
            continue
        bits = 32 if rank == 3 else 64
        if unsigned and value < 2 ** bits:
            return _int_type(rank, True)
        if not unsigned and value < 2 ** (bits - 1):
            return _int_type(rank, False)
        if not unsigned and not decimal and value < 2 ** bits:
            return _int_type(rank, True)
    return _int_type(5, True)


# ----------------------------------------------------------------- type_of


def type_of(e: ir.Expr, env: Env, typedefs: Optional[Mapping[str, ir.CType]] = None) -> ir.CType:
    """The type of the value of `e`: top-level qualifiers dropped, arrays and
    functions decayed to pointers. Raises TransformError when it can't tell."""
    tds = header_typedefs() if typedefs is None else typedefs
    return _decay(unqualified(_Typer(env, tds).of(e)))


def _decay(t: ir.CType) -> ir.CType:
    if isinstance(t, ir.Array):
        return ir.Ptr(t.of)
    if isinstance(t, ir.FuncT):
        return ir.Ptr(t)
    return t


class _Typer:
    def __init__(self, env: Env, typedefs: Mapping[str, ir.CType]) -> None:
        self.env = env
        self.typedefs = typedefs

    def fail(self, e: ir.Expr, why: str) -> TransformError:
        return TransformError(f"cannot infer the type of '{expr_text(e)}': {why}", getattr(e, "loc", None))

    def arith(self, a: ir.CType, b: ir.CType, e: ir.Expr) -> ir.CType:
        try:
            return usual_arithmetic(a, b, self.typedefs)
        except ValueError:
            raise self.fail(e, f"operands of types '{type_name(a)}' and '{type_name(b)}' are not arithmetic") \
                from None

    def resolved(self, t: ir.CType) -> ir.CType:
        return resolve(t, self.typedefs)

    def of(self, e: ir.Expr) -> ir.CType:
        """The (possibly qualified, undecayed) type of `e`."""
        if isinstance(e, ir.Const):
            return _const_type(e)
        if isinstance(e, ir.Var):
            if e.name in self.env:
                return self.env[e.name]
            d = header_decls().get(e.name)
            if d is not None and "typedef" not in d.storage:
                return d.type
            raise self.fail(e, f"'{e.name}' is not declared here")
        if isinstance(e, ir.Unop):
            return self.unop(e)
        if isinstance(e, ir.Binop):
            return self.binop(e)
        if isinstance(e, ir.Assign):
            return unqualified(self.of(e.lhs))
        if isinstance(e, ir.Ternary):
            a, b = _decay(unqualified(self.of(e.then))), _decay(unqualified(self.of(e.other)))
            if _arith_info(a, self.typedefs) and _arith_info(b, self.typedefs):
                return self.arith(a, b, e)
            if a == b or isinstance(b, ir.Ptr) and isinstance(e.other, ir.Const):
                return a
            if isinstance(a, ir.Ptr) and isinstance(e.then, ir.Const):
                return b
            raise self.fail(e, f"branches of types '{type_name(a)}' and '{type_name(b)}'")
        if isinstance(e, ir.Index):
            base, idx = self.resolved(self.of(e.base)), self.resolved(self.of(e.index))
            if isinstance(idx, (ir.Ptr, ir.Array)) and not isinstance(base, (ir.Ptr, ir.Array)):
                base = idx
            if isinstance(base, ir.Ptr):
                return base.to
            if isinstance(base, ir.Array):
                return base.of
            raise self.fail(e, f"'{expr_text(e.base)}' is not a pointer or an array")
        if isinstance(e, ir.Call):
            f = self.resolved(self.of(e.func))
            if isinstance(f, ir.Ptr):
                f = self.resolved(f.to)
            if isinstance(f, ir.FuncT):
                return f.ret
            raise self.fail(e, f"'{expr_text(e.func)}' is not a function")
        if isinstance(e, ir.Member):
            base = self.resolved(self.of(e.base))
            if e.arrow:
                if not isinstance(base, (ir.Ptr, ir.Array)):
                    raise self.fail(e, f"'{expr_text(e.base)}' is not a pointer")
                base = self.resolved(base.to if isinstance(base, ir.Ptr) else base.of)
            if isinstance(base, ir.StructT) and base.fields is not None:
                for fd in base.fields:
                    if fd.name == e.field:
                        return fd.type
                raise self.fail(e, f"no field '{e.field}'")
            raise self.fail(e, f"'{expr_text(e.base)}' is not of a known struct type")
        if isinstance(e, ir.Cast):
            return e.type
        if isinstance(e, ir.SizeofType):
            return SIZE_T
        if isinstance(e, ir.Comma):
            return self.of(e.exprs[-1])
        if isinstance(e, ir.CompoundLit):
            return e.type
        raise self.fail(e, f"{type(e).__name__} has no type of its own")

    def unop(self, e: ir.Unop) -> ir.CType:
        if e.op in ("sizeof", "_Alignof"):
            return SIZE_T
        if e.op == "&":
            return ir.Ptr(self.of(e.arg))
        t = self.of(e.arg)
        if e.op == "*":
            r = self.resolved(t)
            if isinstance(r, ir.Ptr):
                return r.to
            if isinstance(r, ir.Array):
                return r.of
            if isinstance(r, ir.FuncT):
                return r
            raise self.fail(e, f"'{expr_text(e.arg)}' is not a pointer")
        if e.op == "!":
            return ir.INT
        if e.op in ("++", "--", "p++", "p--"):
            return unqualified(t)
        info = _arith_info(t, self.typedefs)
        if info is None:
            raise self.fail(e, f"operand of '{e.op}' is not arithmetic")
        return _promote(t, info)[0]

    def binop(self, e: ir.Binop) -> ir.CType:
        if e.op in ("<", "<=", ">", ">=", "==", "!=", "&&", "||"):
            return ir.INT
        a = _decay(unqualified(self.of(e.left)))
        b = _decay(unqualified(self.of(e.right)))
        ra, rb = self.resolved(a), self.resolved(b)
        if e.op in ("+", "-"):
            if isinstance(ra, ir.Ptr) and isinstance(rb, ir.Ptr) and e.op == "-":
                return PTRDIFF_T
            if isinstance(ra, ir.Ptr) and _arith_info(b, self.typedefs):
                return a
            if isinstance(rb, ir.Ptr) and _arith_info(a, self.typedefs) and e.op == "+":
                return b
        if e.op in ("<<", ">>"):
            info = _arith_info(a, self.typedefs)
            if info is None or info[0] != "int":
                raise self.fail(e, "shift of a non-integer")
            return _promote(a, info)[0]
        return self.arith(a, b, e)
