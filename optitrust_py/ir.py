"""The immutable, typed IR of the C subset otp transforms.

Every node is a frozen dataclass, so a transformation builds a new tree and the
old one stays valid for diffs and checks. Source locations (`loc`) are excluded
from equality: two trees are equal when they mean the same code, wherever it
came from. Constructs the IR does not model travel as `Opaque`/`OpaqueExpr`
nodes holding their exact C text; they are printed back verbatim and may not
be targeted.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional, Union


@dataclass(frozen=True)
class Loc:
    """A position in a C file, for messages."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def _loc() -> Optional[Loc]:
    return field(default=None, compare=False, repr=False)


# ----------------------------------------------------------------- types


@dataclass(frozen=True)
class Base:
    """A scalar or typedef name: `float`, `unsigned long`, `size_t`."""

    names: tuple[str, ...]
    quals: tuple[str, ...] = ()


@dataclass(frozen=True)
class StructT:
    """`struct`/`union` type; `fields` is None for a reference to a tag."""

    kind: str
    name: Optional[str]
    fields: Optional[tuple["Decl", ...]] = None
    quals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Enumerator:
    name: str
    value: Optional["Expr"] = None


@dataclass(frozen=True)
class EnumT:
    name: Optional[str]
    values: Optional[tuple[Enumerator, ...]] = None
    quals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ptr:
    to: "CType"
    quals: tuple[str, ...] = ()


@dataclass(frozen=True)
class Array:
    of: "CType"
    size: Optional["Expr"] = None
    quals: tuple[str, ...] = ()


@dataclass(frozen=True)
class FuncT:
    """Function type; `params` is None for an unprototyped `f()`."""

    ret: "CType"
    params: Optional[tuple["Decl", ...]]
    variadic: bool = False


CType = Union[Base, StructT, EnumT, Ptr, Array, FuncT]

INT = Base(("int",))
FLOAT = Base(("float",))

# ----------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Const:
    """A literal kept as written (`1.0f`, `0x10`, `'a'`, `"s"`)."""

    text: str
    kind: str = "int"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Var:
    name: str
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Unop:
    """Prefix operators, plus `p++`/`p--` (postfix) and `sizeof`."""

    op: str
    arg: "Expr"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Binop:
    op: str
    left: "Expr"
    right: "Expr"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Assign:
    """`lhs op rhs` with op in `=`, `+=`, ...: an expression, as in C."""

    op: str
    lhs: "Expr"
    rhs: "Expr"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Ternary:
    cond: "Expr"
    then: "Expr"
    other: "Expr"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Index:
    base: "Expr"
    index: "Expr"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Call:
    func: "Expr"
    args: tuple["Expr", ...]
    loc: Optional[Loc] = _loc()

    @property
    def name(self) -> Optional[str]:
        return self.func.name if isinstance(self.func, Var) else None


@dataclass(frozen=True)
class Member:
    base: "Expr"
    field: str
    arrow: bool
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Cast:
    type: CType
    arg: "Expr"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class SizeofType:
    """`sizeof(T)` or `_Alignof(T)`."""

    type: CType
    op: str = "sizeof"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Comma:
    exprs: tuple["Expr", ...]
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class InitList:
    items: tuple["Expr", ...]
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class CompoundLit:
    type: CType
    init: InitList
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class OpaqueExpr:
    """An expression the IR does not model, kept as exact C text."""

    text: str
    loc: Optional[Loc] = _loc()


# The modelled expressions (OpaqueExpr is not one: it may not be targeted).
EXPR_TYPES = (Const, Var, Unop, Binop, Assign, Ternary, Index, Call, Member, Cast,
              SizeofType, Comma, InitList, CompoundLit)

Expr = Union[Const, Var, Unop, Binop, Assign, Ternary, Index, Call, Member, Cast,
             SizeofType, Comma, InitList, CompoundLit, OpaqueExpr]

# ----------------------------------------------------------------- declarations


@dataclass(frozen=True)
class Decl:
    """A declaration of one name: variable, parameter, field, typedef,
    prototype, or (with `name` None) a bare struct/enum definition."""

    name: Optional[str]
    type: CType
    init: Optional[Expr] = None
    storage: tuple[str, ...] = ()
    funcspec: tuple[str, ...] = ()
    bitsize: Optional[Expr] = None
    loc: Optional[Loc] = _loc()


# ----------------------------------------------------------------- statements


@dataclass(frozen=True)
class Block:
    stmts: tuple["Stmt", ...]
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class ExprStmt:
    expr: Expr
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class DeclStmt:
    decl: Decl
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class ContractClause:
    """One `__reads("...")`-style clause of a function or loop contract."""

    kind: str
    text: str
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class For:
    """A canonical counted loop `for (T i = start; i < stop; i += step)`.

    `stop` is always exclusive; `inclusive` only records that the user wrote
    `i <= stop - 1` so it prints back that way. `pragmas` are the lines written
    right before the loop (e.g. `omp parallel for`); `contract` its clauses.
    """

    index: str
    start: Expr
    stop: Expr
    body: Block
    step: Expr = Const("1")
    itype: CType = INT
    inclusive: bool = False
    pragmas: tuple[str, ...] = ()
    contract: tuple[ContractClause, ...] = ()
    loc: Optional[Loc] = _loc()

    @property
    def mode(self) -> str:
        """sequential / parallel / simd, read off the loop's pragmas."""
        for p in self.pragmas:
            words = p.split()
            if words[:1] == ["omp"]:
                if "for" in words and "parallel" in words:
                    return "parallel"
                if "simd" in words:
                    return "simd"
        return "sequential"


@dataclass(frozen=True)
class GenericFor:
    """A `for` loop that is not in canonical form; never a loop target."""

    init: Union[tuple[Decl, ...], Expr, None]
    cond: Optional[Expr]
    next: Optional[Expr]
    body: Block
    pragmas: tuple[str, ...] = ()
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class While:
    cond: Expr
    body: Block
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class DoWhile:
    body: Block
    cond: Expr
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class If:
    cond: Expr
    then: Block
    other: Optional[Block] = None
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Switch:
    cond: Expr
    body: Block
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Case:
    """`case e:` (or `default:` when `expr` is None) and the statements after it."""

    expr: Optional[Expr]
    stmts: tuple["Stmt", ...]
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Return:
    value: Optional[Expr] = None
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Jump:
    """`break;`, `continue;` or `goto label;` (kind is the keyword)."""

    kind: str
    label: Optional[str] = None
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Label:
    name: str
    stmt: "Stmt"
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Pragma:
    text: str
    loc: Optional[Loc] = _loc()


@dataclass(frozen=True)
class Opaque:
    """A statement the IR does not model, kept as exact C text."""

    text: str
    loc: Optional[Loc] = _loc()


Stmt = Union[Block, ExprStmt, DeclStmt, For, GenericFor, While, DoWhile, If, Switch,
             Case, Return, Jump, Label, Pragma, Opaque]

# ----------------------------------------------------------------- top level


@dataclass(frozen=True)
class FuncDef:
    """A function definition; `contract` holds the clauses written at the top of
    its body (`__requires("...")`, `__reads("...")`, ...)."""

    decl: Decl
    body: Block
    contract: tuple[ContractClause, ...] = ()
    loc: Optional[Loc] = _loc()

    @property
    def name(self) -> str:
        assert self.decl.name is not None
        return self.decl.name

    @property
    def type(self) -> FuncT:
        assert isinstance(self.decl.type, FuncT)
        return self.decl.type

    @property
    def params(self) -> tuple[Decl, ...]:
        return self.type.params or ()


TopLevel = Union[FuncDef, Decl, Pragma, Opaque]


@dataclass(frozen=True)
class Program:
    """A translation unit: its `#include` lines and its top-level items."""

    includes: tuple[str, ...]
    items: tuple[TopLevel, ...]
    file: str = field(default="<input>", compare=False)

    def functions(self) -> tuple[FuncDef, ...]:
        return tuple(i for i in self.items if isinstance(i, FuncDef))

    def function(self, name: str) -> Optional[FuncDef]:
        for f in self.functions():
            if f.name == name:
                return f
        return None

    def with_includes(self, *lines: str) -> "Program":
        """The program with each `#include` line it lacks added at the end."""
        return replace(self, includes=self.includes + tuple(i for i in dict.fromkeys(lines) if i not in self.includes))


Node = Union[Expr, Stmt, Decl, CType, FuncDef, Program, ContractClause]
