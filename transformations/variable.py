"""Variable transformations: bind."""
from __future__ import annotations

from typing import Any, Optional, Union

from optitrust_py import frontend, ir
from optitrust_py.errors import OtpError, TransformError
from optitrust_py.names import declared_names, free_vars, has_side_effects, is_identifier
from optitrust_py.obligation import Obligation
from optitrust_py.printer import declaration, expr as expr_text, type_name
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, get, replace, splice
from optitrust_py.typeof import resolve, type_of, typedefs_of, env_at, unqualified, visible_names

_STMTS = (ir.ExprStmt, ir.DeclStmt, ir.For, ir.GenericFor, ir.While, ir.DoWhile, ir.If, ir.Switch,
          ir.Return, ir.Jump, ir.Opaque, ir.Case, ir.Label)
_LOOPS = (ir.For, ir.GenericFor, ir.While, ir.DoWhile)


def parse_type(program: ir.Program, text: str) -> ir.CType:
    """A C type written as text (`"float"`, `"const float *"`), knowing the
    program's typedefs and struct definitions."""
    prelude = "\n".join(declaration(d) + ";" for d in program.items
                        if isinstance(d, ir.Decl) and ("typedef" in d.storage or d.name is None))
    try:
        p = frontend.parse_text(f"{prelude}\n{text} __otp_type;\n", "<type>")
    except OtpError:
        raise TransformError(f"cannot read the type {text!r}") from None
    last = p.items[-1] if p.items else None
    if not isinstance(last, ir.Decl) or last.name != "__otp_type":
        raise TransformError(f"cannot read the type {text!r}")
    return last.type


def _statement_of(program: ir.Program, path: Path) -> Path:
    for k in range(len(path) - 1, 0, -1):
        if isinstance(get(program, path[:k]), _STMTS):
            return path[:k]
    raise TransformError("variable.bind: the expression is not inside a statement")


def _context_problem(program: ir.Program, stmt_path: Path, path: Path) -> Optional[str]:
    """Why the expression at `path` can't be evaluated once, before its
    statement, into a variable; None if it can."""
    stmt = get(program, stmt_path)
    first = path[len(stmt_path)][0]
    if isinstance(stmt, _LOOPS):
        return f"it is in the header of a loop ({first}), which is evaluated at every iteration"
    node: Any = stmt
    for depth in range(len(stmt_path), len(path)):
        step = path[depth]
        if isinstance(node, ir.Binop) and node.op in ("&&", "||") and step[0] == "right":
            return f"it is evaluated only when the left operand of '{node.op}' lets it"
        if isinstance(node, ir.Ternary) and step[0] in ("then", "other"):
            return "it is a branch of a conditional expression, evaluated only when chosen"
        if isinstance(node, ir.Unop) and node.op in ("sizeof", "_Alignof"):
            return f"it is the operand of {node.op}, which is not evaluated"
        name, index = step
        node = getattr(node, name)
        if index is not None:
            node = node[index]
    # lvalue positions: the expression designates storage, not a value
    child_path = path
    while True:
        parent = get(program, child_path[:-1])
        step = child_path[-1][0]
        if isinstance(parent, ir.Assign) and step == "lhs":
            return "it is assigned to (an lvalue)"
        if isinstance(parent, ir.Unop) and parent.op in ("&", "++", "--", "p++", "p--"):
            return f"it is the operand of '{parent.op.lstrip('p')}' (an lvalue)"
        if isinstance(parent, ir.Member) and not parent.arrow:
            child_path = child_path[:-1]
            continue
        return None


@primitive
def bind(program: ir.Program, target: str, name: str, type: Union[str, ir.CType, None] = None) -> Rewrite:
    """Give an expression a name: declare `T name = e;` right before the
    statement containing the occurrence `target`, and use `name` there.

    Before (`variable.bind("attention > for j#1 > expr 'sqrtf(D)'", "scale")`):

        scores[j] = s / sqrtf(D);

    After (obligation pure: sqrtf(D) reads nothing written in between):

        float scale = sqrtf(D);
        scores[j] = s / scale;

    The type is inferred (`type` may give it; it must agree when inference
    works). Refused when `name` is already visible there or declared in the
    same block, when `e` has side effects, is in a loop header, is evaluated
    conditionally (`&&`, `||`, `?:`) or is an lvalue, or when `e` uses a
    variable declared inside the statement.
    """
    res = Resolver(program)
    m = res.one(target, "expression", ir.EXPR_TYPES)
    e: ir.Expr = m.node
    text = expr_text(e)
    if not is_identifier(name):
        raise TransformError(f"variable.bind: {name!r} is not a valid C variable name", e.loc)
    stmt_path = _statement_of(program, m.path)
    stmt = get(program, stmt_path)
    line = res.line(stmt_path)
    why = _context_problem(program, stmt_path, m.path)
    if why is not None:
        raise TransformError(f"variable.bind: cannot bind '{text}' (line {line}): {why}", e.loc)
    if has_side_effects(e):
        raise TransformError(f"variable.bind: '{text}' (line {line}) has side effects", e.loc)
    inner = sorted(free_vars(e) & declared_names(stmt))
    if inner:
        raise TransformError(f"variable.bind: '{text}' uses '{inner[0]}', which is declared inside its "
                             f"statement (line {line})", e.loc)
    parent = get(program, stmt_path[:-1])
    if not isinstance(parent, ir.Block) or stmt_path[-1][0] != "stmts":
        raise TransformError(f"variable.bind: the statement of '{text}' (line {line}) is not directly in a "
                             f"block, so no declaration can go before it", e.loc)
    same_block = {s.decl.name for s in parent.stmts if isinstance(s, ir.DeclStmt)}
    if name in visible_names(program, stmt_path) or name in same_block:
        raise TransformError(f"variable.bind: a name '{name}' is already visible or declared at line {line}; "
                             f"choose a fresh name", e.loc)
    tds = typedefs_of(program)
    try:
        inferred: Optional[ir.CType] = type_of(e, env_at(program, stmt_path), tds)
    except TransformError as err:
        if type is None:
            raise TransformError(f"variable.bind: {err.message}; give the type with type=...", e.loc) from None
        inferred = None
    if type is not None:
        declared = parse_type(program, type) if isinstance(type, str) else type
        if inferred is not None and resolve(unqualified(declared), tds) != resolve(inferred, tds):
            raise TransformError(f"variable.bind: '{text}' has type '{type_name(inferred)}', not "
                                 f"'{type_name(declared)}'", e.loc)
    else:
        assert inferred is not None
        declared = inferred
    if resolve(declared, tds) == ir.Base(("void",)):
        raise TransformError(f"variable.bind: '{text}' has type void", e.loc)
    new_stmt = replace(stmt, m.path[len(stmt_path):], ir.Var(name))
    decl = ir.DeclStmt(ir.Decl(name, declared, e))
    new = splice(program, stmt_path, (decl, new_stmt))
    use_path = stmt_path[:-1] + (("stmts", stmt_path[-1][1] + 1),)
    ob = Obligation("pure", f"'{text}' has no side effect and its value does not change between the "
                    f"definition of {name} and its use", m.function, (stmt_path, use_path), (e,))
    return Rewrite(new, (ob,))
