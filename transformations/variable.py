"""Variable transformations: bind, inline, rename, local_accumulator."""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional, Union

from optitrust_py import frontend, ir
from optitrust_py.errors import OtpError, TransformError
from optitrust_py.names import (INCDEC, address_taken, declared_names, free_vars, fresh_name, has_side_effects,
                                is_identifier, lvalue_bases, stored_var, subst)
from optitrust_py.obligation import Obligation
from optitrust_py.printer import declaration, expr as expr_text, stmt_text, type_name
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import Path, block_of, children, get, replace, splice, walk
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


# ----------------------------------------------------------------- helpers shared by inline, rename, local_accumulator



def written_by(n: Any, memory: bool = True) -> set[str]:
    """What node `n` itself may change: the variables it assigns or
    increments (with `memory`, also the bases of the memory it stores into,
    `a` for `a[i] = ...`), and a variable whose address it takes (a pointer
    to it may be written)."""
    target = n.lhs if isinstance(n, ir.Assign) else n.arg if isinstance(n, ir.Unop) and n.op in INCDEC else None
    if target is not None:
        if memory:
            return lvalue_bases(target)
        root = stored_var(target)
    elif isinstance(n, ir.Unop) and n.op == "&":
        root = stored_var(n.arg)
    else:
        return set()
    return {root} if root else set()


def _first_write(parts: list[tuple[Path, Any]], names: set[str], memory: bool = True) -> Optional[tuple[Path, str]]:
    """The first place among `parts` (path, node) that may change one of
    `names` (see `written_by`), and the name."""
    for base, node in parts:
        for p, n in walk(node, base):
            hit = sorted(written_by(n, memory) & names)
            if hit:
                return p, hit[0]
    return None


def _opaque_mention(parts: list[tuple[Path, Any]], name: str) -> Optional[Path]:
    """A verbatim (opaque) piece of code among `parts` that mentions `name`:
    otp cannot tell what it does with it."""
    word = re.compile(rf"\b{re.escape(name)}\b")
    for base, node in parts:
        for p, n in walk(node, base):
            if isinstance(n, (ir.Opaque, ir.OpaqueExpr)) and word.search(n.text):
                return p
            if isinstance(n, ir.For) and any(word.search(c.text) for c in n.contract):
                return p
    return None


def _scope_after(program: ir.Program, decl_path: Path) -> tuple[Path, int, tuple[ir.Stmt, ...]]:
    """For a declaration statement: its block's path, its index there, and
    the statements after it (the declared name's scope)."""
    block, k = block_of(decl_path)
    return block, k, get(program, block).stmts[k + 1:]


def _reads_memory(e: Any) -> bool:
    """Whether evaluating `e` loads from memory (`a[i]`, `*p`, `p->f`);
    taking an address (`&a[i]`) loads nothing by itself."""
    if isinstance(e, ir.Unop) and e.op == "&":
        return _address_reads(e.arg)
    if isinstance(e, ir.Index) or isinstance(e, ir.Unop) and e.op == "*" or isinstance(e, ir.Member) and e.arrow:
        return True
    return any(_reads_memory(c) for _, c in children(e))


def _address_reads(e: ir.Expr) -> bool:
    """Whether computing the address of lvalue `e` loads from memory."""
    if isinstance(e, ir.Index):
        return _reads_memory(e.base) or _reads_memory(e.index)
    if isinstance(e, ir.Unop) and e.op == "*":
        return _reads_memory(e.arg)
    if isinstance(e, ir.Member):
        return _reads_memory(e.base) if e.arrow else _address_reads(e.base)
    return _reads_memory(e)


# ----------------------------------------------------------------- inline


@primitive
def inline(program: ir.Program, target: str) -> Rewrite:
    """Replace every use of a local variable by its initializer and delete its
    declaration: the inverse of `bind`.

    Before (`variable.inline("attention > def scale")`):

        float scale = sqrtf(D);
        scores[j] = s / scale;

    After (no obligation: `sqrtf(D)` reads only D, which nothing writes):

        scores[j] = s / sqrtf(D);

    The initializer is evaluated again at each use, so it must compute the
    same value there. Refused when the variable is written (assigned,
    incremented) after its declaration, when its address is taken, when it is
    redeclared in its scope, when it is static, volatile or an array, when the
    initializer has side effects, or when something the initializer reads
    (a variable, an array) is written, or has its address taken, between the
    declaration and the last use; the write that happens after the last
    use's own evaluation (`s = s + x`) does not count. When the initializer
    reads memory (`a[i]`, `*p`, `p->f`), a global or a variable whose address
    is taken, a write through another name or inside a call could still
    change it: obligation `pure` on the statements using the variable. A cast to the declared type is added when
    the initializer's type differs, so every use sees the same value.
    """
    res = Resolver(program)
    m = res.one(target, "local declaration", (ir.DeclStmt,))
    decl: ir.Decl = m.node.decl
    x = decl.name
    where = f"'{x}' (line {res.line(m.path)})"
    if decl.init is None:
        raise TransformError(f"variable.inline: {where} has no initializer", decl.loc)
    if isinstance(decl.init, ir.InitList) or isinstance(resolve(decl.type, typedefs_of(program)), ir.Array):
        raise TransformError(f"variable.inline: {where} is an array; only scalars and pointers are inlined",
                             decl.loc)
    quals = set(decl.storage) | set(getattr(decl.type, "quals", ()))
    bad = sorted(quals & {"static", "extern", "typedef", "volatile", "_Thread_local"})
    if bad:
        raise TransformError(f"variable.inline: {where} is declared {bad[0]}", decl.loc)
    init = decl.init
    text = expr_text(init)
    if has_side_effects(init):
        raise TransformError(f"variable.inline: the initializer '{text}' of {where} has side effects", decl.loc)
    block, k, rest = _scope_after(program, m.path)
    parts = [(block + (("stmts", k + 1 + j),), s) for j, s in enumerate(rest)]
    if x in declared_names(rest):
        raise TransformError(f"variable.inline: {where} is redeclared in its scope; rename one of them first",
                             decl.loc)
    opaque = _opaque_mention(parts, x)
    if opaque is not None:
        raise TransformError(f"variable.inline: verbatim code at line {res.line(opaque)} mentions {where}",
                             decl.loc)
    written = _first_write(parts, {x}, memory=False)
    if written is not None:
        n = get(program, written[0])
        line = res.line(written[0])
        if isinstance(n, ir.Unop) and n.op == "&":
            raise TransformError(f"variable.inline: the address of {where} is taken at line {line}", decl.loc)
        raise TransformError(f"variable.inline: {where} is written at line {line} ('{expr_text(n)}')", decl.loc)
    users = [j for j, s in enumerate(rest) if x in free_vars(s)]
    if users:
        last = users[-1]
        region = parts[:last] + _before_store(parts[last])
        hit = _first_write(region, free_vars(init))
        if hit is not None:
            raise TransformError(f"variable.inline: '{hit[1]}', which the initializer '{text}' of {where} "
                                 f"reads, is written at line {res.line(hit[0])}, before a use", decl.loc)
    tds = typedefs_of(program)
    try:
        same = resolve(type_of(init, env_at(program, m.path), tds), tds) == resolve(unqualified(decl.type), tds)
    except TransformError:
        same = False
    value = init if same else ir.Cast(unqualified(decl.type), init)
    parent = get(program, block)
    new = replace(program, block, dataclasses.replace(parent, stmts=parent.stmts[:k] + subst(rest, {x: value})))
    globals_ = {d.name for d in program.items if isinstance(d, ir.Decl) and d.name
                and not isinstance(d.type, ir.FuncT) and "typedef" not in d.storage}
    fn = get(program, m.path[:1])
    obligations = []
    if users and (_reads_memory(init) or free_vars(init) & (globals_ | address_taken(fn))):
        obligations.append(Obligation(
            "pure", f"'{text}' has no side effect and its value does not change between the definition of {x} "
            f"and its uses", m.function, tuple(block + (("stmts", k + j),) for j in users), (init,)))
    return Rewrite(new, tuple(obligations))


def _before_store(part: tuple[Path, ir.Stmt]) -> list[tuple[Path, Any]]:
    """What of a statement runs before its final store: an assignment's two
    sides, a declaration's initializer; the whole of any other statement."""
    path, s = part
    if isinstance(s, ir.ExprStmt) and isinstance(s.expr, ir.Assign):
        e = path + (("expr", None),)
        return [(e + (("lhs", None),), s.expr.lhs), (e + (("rhs", None),), s.expr.rhs)]
    if isinstance(s, ir.DeclStmt):
        return [(path + (("decl", None), ("init", None)), s.decl.init)] if s.decl.init is not None else []
    return [part]



# ----------------------------------------------------------------- rename


@primitive
def rename(program: ir.Program, target: str, new_name: str) -> Rewrite:
    """Give a local variable or a loop index another name, at its declaration
    and at every use it binds.

    Before (`variable.rename("matmul > for k", "kk")`):

        for (int k = 0; k < K; k++) {
          C[i * N + j] += A[i * K + k] * B[k * N + j];
        }

    After (no obligation: renaming changes no value):

        for (int kk = 0; kk < K; kk++) {
          C[i * N + j] += A[i * K + kk] * B[kk * N + j];
        }

    `target` names a declaration (`"f > def x"`) or a canonical loop
    (`"f > for i"`). Refused when `new_name` is not a C identifier, is the
    current name, is already visible at the declaration (a local, parameter,
    global, typedef or library name) or declared later in the same block,
    or is declared or used anywhere in the renamed variable's scope (it would
    capture or shadow another variable); also when verbatim code or a loop
    contract in the scope mentions the variable (otp cannot rename inside it).
    """
    res = Resolver(program)
    m = res.one(target, "local declaration or a loop", (ir.DeclStmt, ir.For))
    node = m.node
    line = res.line(m.path)
    if isinstance(node, ir.For):
        old, what = node.index, f"the index of for {node.index} (line {line})"
        scope: list[tuple[Path, Any]] = [(m.path + ((f, None),), getattr(node, f)) for f in ("stop", "step", "body")]
        taken = set()
        loc = node.loc
    else:
        old, what = node.decl.name, f"'{node.decl.name}' (line {line})"
        block, k, rest = _scope_after(program, m.path)
        scope = [(block + (("stmts", k + 1 + j),), s) for j, s in enumerate(rest)]
        taken = {s.decl.name for s in get(program, block).stmts if isinstance(s, ir.DeclStmt)}
        loc = node.decl.loc
    if not is_identifier(new_name):
        raise TransformError(f"variable.rename: {new_name!r} is not a valid C variable name", loc)
    if new_name == old:
        raise TransformError(f"variable.rename: {what} is already named '{old}'", loc)
    if new_name in visible_names(program, m.path) | taken:
        raise TransformError(f"variable.rename: a name '{new_name}' is already visible or declared where {what} "
                             f"is declared; choose a fresh name", loc)
    nodes = tuple(n for _, n in scope)
    if new_name in declared_names(nodes) | free_vars(nodes):
        raise TransformError(f"variable.rename: '{new_name}' is already declared or used in the scope of {what}; "
                             f"renaming would capture or shadow it", loc)
    opaque = _opaque_mention(scope + ([(m.path, node)] if isinstance(node, ir.For) else []), old)
    if opaque is not None:
        raise TransformError(f"variable.rename: verbatim code or a loop contract at line {res.line(opaque)} "
                             f"mentions {what}", loc)
    sub = {old: ir.Var(new_name)}
    if isinstance(node, ir.For):
        new_node: Any = dataclasses.replace(node, index=new_name, stop=subst(node.stop, sub),
                                            step=subst(node.step, sub), body=subst(node.body, sub))
        return Rewrite(replace(program, m.path, new_node))
    parent = get(program, block)
    renamed = dataclasses.replace(node, decl=dataclasses.replace(node.decl, name=new_name))
    stmts = parent.stmts[:k] + (renamed,) + subst(rest, sub)
    return Rewrite(replace(program, block, dataclasses.replace(parent, stmts=stmts)))


# ----------------------------------------------------------------- local_accumulator

_ACCUMULATE = {"+=": "+", "-=": "-", "*=": "*"}


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _accumulation(s: Any, cell: str) -> Optional[tuple[ir.Assign, tuple[str, ...]]]:
    """For `cell op= e;` or `cell = cell op e;` (op one of + - *): the
    assignment and the paths, inside it, of the occurrences of the cell."""
    if not isinstance(s, ir.ExprStmt) or not isinstance(s.expr, ir.Assign):
        return None
    a = s.expr
    if _squash(expr_text(a.lhs)) != cell:
        return None
    if a.op in _ACCUMULATE:
        return a, ("lhs",)
    if a.op == "=" and isinstance(a.rhs, ir.Binop) and a.rhs.op in _ACCUMULATE.values() \
            and _squash(expr_text(a.rhs.left)) == cell:
        return a, ("lhs", "rhs.left")
    return None


def _accumulator_places(loop_path: Path, loop: ir.For, cell: str) -> tuple[list[Path], list[Path], list[Path]]:
    """In the body of `loop`: the accumulating statements, the occurrences of
    the cell they hold, and the other occurrences of the cell."""
    stmts, held, others = [], [], []
    body = loop_path + (("body", None),)
    for p, n in walk(loop.body, body):
        acc = _accumulation(n, cell)
        if acc is not None:
            stmts.append(p)
            for place in acc[1]:
                held.append(p + (("expr", None),) + tuple((f, None) for f in place.split(".")))
    for p, n in walk(loop.body, body):
        if isinstance(n, ir.EXPR_TYPES) and p not in held and _squash(expr_text(n)) == cell:
            others.append(p)
    return stmts, held, others


@primitive
def local_accumulator(program: ir.Program, target: str, cell: str) -> Rewrite:
    """Accumulate into a local variable instead of a memory cell for the
    duration of a loop, and store the result once after it.

    Before (`variable.local_accumulator("matmul > for k", "C[i * N + j]")`):

        for (int k = 0; k < K; k++) {
          C[i * N + j] += A[i * K + k] * B[k * N + j];
        }

    After (obligation unaliased: no other access of the loop, nor a call in it,
    touches `C[i * N + j]`):

        {
          float acc = C[i * N + j];
          for (int k = 0; k < K; k++) {
            acc += A[i * K + k] * B[k * N + j];
          }
          C[i * N + j] = acc;
        }

    `cell` is the text of an lvalue that the loop body updates only through
    statements `cell op= e;` or `cell = cell op e;` (op one of + - *),
    anywhere in the body. The same float operations run in the same order,
    so results are bit-identical. The accumulator is named `acc` (made
    fresh) and has the cell's type. Refused when the cell does not occur in
    the body, when it occurs other than in those statements (read elsewhere,
    or inside an `e`), when it has side effects or reads a variable that the
    loop writes, declares or indexes with, or whose address is taken (it must
    designate the same cell at every iteration), when the body may leave
    the loop without reaching the store after it (return, goto), or when
    the loop has pragmas. The claim left to the checker is
    about other names for the same memory (`C[j + i * N]`, a pointer, a
    callee), which cannot be ruled out syntactically; it also covers reading
    and storing the cell when the loop runs no iteration.
    """
    res = Resolver(program)
    m = res.one(target, "canonical loop", (ir.For,))
    loop: ir.For = m.node
    where = f"for {loop.index} (line {res.line(m.path)})"
    if loop.pragmas:
        raise TransformError(f"variable.local_accumulator: {where} has pragmas (#pragma {loop.pragmas[0]}), whose "
                             f"clauses may name the cell; introduce the accumulator before annotating the loop",
                             loop.loc)
    want = _squash(cell) if isinstance(cell, str) else ""
    if not want:
        raise TransformError(f"variable.local_accumulator: the cell must be the text of an lvalue, e.g. "
                             f"'C[i * N + j]', got {cell!r}", loop.loc)
    stmts, held, others = _accumulator_places(m.path, loop, want)
    if not held and not others:
        raise TransformError(f"variable.local_accumulator: '{cell}' does not occur in the body of {where}", loop.loc)
    node: ir.Expr = get(program, (held + others)[0])
    if has_side_effects(node):
        raise TransformError(f"variable.local_accumulator: '{cell}' has side effects", loop.loc)
    moving = f"it is not the same cell at every iteration of {where}"
    if loop.index in free_vars(node):
        raise TransformError(f"variable.local_accumulator: '{cell}' uses the loop index '{loop.index}': {moving}",
                             loop.loc)
    local = sorted(free_vars(node) & declared_names(loop.body))
    if local:
        raise TransformError(f"variable.local_accumulator: '{cell}' uses '{local[0]}', which is declared inside "
                             f"the loop: {moving}", loop.loc)
    fn = get(program, m.path[:1])
    escaped = sorted(free_vars(node) & address_taken(fn))
    if escaped:
        raise TransformError(f"variable.local_accumulator: '{cell}' uses '{escaped[0]}', whose address is taken in "
                             f"{m.function}: the loop may change it through a pointer", loop.loc)
    stripped = loop.body
    for p in reversed(stmts):
        a: ir.Assign = get(program, p).expr
        stripped = replace(stripped, p[len(m.path) + 1:], ir.ExprStmt(a.rhs if a.op in _ACCUMULATE else a.rhs.right))
    hit = _first_write([(m.path + (("body", None),), stripped)], free_vars(node), _address_reads(node))
    if hit is not None:
        raise TransformError(f"variable.local_accumulator: '{cell}' reads '{hit[1]}', which is written at line "
                             f"{res.line(hit[0])}: {moving}", loop.loc)
    if others:
        raise TransformError(f"variable.local_accumulator: '{cell}' is accessed at line {res.line(others[0])} "
                             f"otherwise than by accumulating into it ('{cell} += e;' or '{cell} = {cell} + e;')",
                             loop.loc)
    exit_ = next((n for _, n in walk(loop.body) if isinstance(n, (ir.Return, ir.Label))
                  or isinstance(n, ir.Jump) and n.kind == "goto"), None)
    if exit_ is not None:
        raise TransformError(f"variable.local_accumulator: the body of {where} may leave it by "
                             f"'{stmt_text(exit_).splitlines()[0]}', skipping the store after the loop", loop.loc)
    tds = typedefs_of(program)
    try:
        t = unqualified(type_of(node, env_at(program, held[0]), tds))
    except TransformError as err:
        raise TransformError(f"variable.local_accumulator: {err.message}", loop.loc) from None
    acc = fresh_name(declared_names(fn) | free_vars(fn) | visible_names(program, m.path), "acc")
    new_loop = loop
    for p in held:
        new_loop = replace(new_loop, p[len(m.path):], ir.Var(acc))
    block = ir.Block((ir.DeclStmt(ir.Decl(acc, t, node)), new_loop, ir.ExprStmt(ir.Assign("=", node, ir.Var(acc)))))
    ob = Obligation("unaliased", f"no access of {where} other than the accumulations into '{cell}', nor a call "
                    f"in it, touches that cell's memory", m.function, (m.path + (("stmts", 1),),), (node,))
    return Rewrite(replace(program, m.path, block), (ob,))
