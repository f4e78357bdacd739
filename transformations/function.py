"""Function transformations: inline."""
from __future__ import annotations

from typing import Optional

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import declared_names, free_vars, fresh_name, has_side_effects, rename_binders
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import function_path, get, replace, walk
from optitrust_py.typeof import (param_type, env_at, resolve, type_of, typedefs_of, unqualified,
                                 visible_names)


def _returns(body: ir.Block) -> list[ir.Return]:
    return [n for _, n in walk(body) if isinstance(n, ir.Return)]


@primitive
def inline(program: ir.Program, target: str) -> Rewrite:
    """Replace a call by the body of the called function.

    Before (`function.inline("transformer_token > call matvec#1")`):

        matvec(dim, dim, &wq[l * dim * dim], xb, q);

    After (obligation inline):

        {
          int n = dim;
          int d = dim;
          const float *W = &wq[l * dim * dim];
          const float *x_1 = xb;
          float *y = q;
          for (int i = 0; i < d; i++) { ... y[i] += W[i * n + j] * x_1[j]; ... }
        }

    The call is a statement `f(args);` (the callee has no return but an
    optional final `return;` or `return e;`), or `x = f(args);` (the callee
    ends with `return e;`, its only return; the block ends with `x = e;`).
    Each parameter becomes a local initialized with its argument; a parameter
    or local of the callee whose name is visible at the call, or used by the
    arguments or by `x`, is renamed to a fresh name. Refused for callees
    not defined in the program, with an early return, static locals, labels,
    a variable number of arguments, or using a global that a local of the
    caller hides at the call. The callee's contract is dropped.
    """
    res = Resolver(program)
    m = res.one(target, "call", (ir.Call,))
    call: ir.Call = m.node
    fname = call.name or expr_text(call.func)
    line = res.line(m.path)
    where = f"the call to {fname} (line {line})"
    callee = program.function(call.name) if call.name else None
    if callee is None:
        raise TransformError(f"function.inline: {fname} is not defined in {program.file}; only calls to "
                             f"functions defined there can be inlined", call.loc)
    # the shape of the call site
    parent = get(program, m.path[:-1])
    lhs: Optional[ir.Expr] = None
    if isinstance(parent, ir.ExprStmt) and m.path[-1] == ("expr", None):
        stmt_path = m.path[:-1]
    elif isinstance(parent, ir.Assign) and parent.op == "=" and m.path[-1] == ("rhs", None) \
            and m.path[-2] == ("expr", None) and isinstance(get(program, m.path[:-2]), ir.ExprStmt):
        stmt_path, lhs = m.path[:-2], parent.lhs
        if has_side_effects(lhs):
            raise TransformError(f"function.inline: the left-hand side of {where} has side effects", call.loc)
    else:
        raise TransformError(f"function.inline: {where} must be a statement '{fname}(...);' or "
                             f"'x = {fname}(...);'", call.loc)
    # the callee's shape
    ftype = callee.type
    if ftype.params is None or ftype.variadic:
        raise TransformError(f"function.inline: {fname} has no prototype or takes a variable number of "
                             f"arguments", call.loc)
    params = [p for p in ftype.params if not (p.name is None and p.type == ir.Base(("void",)))]
    if len(params) != len(call.args):
        raise TransformError(f"function.inline: {where} passes {len(call.args)} arguments to {fname}, which "
                             f"takes {len(params)}", call.loc)
    if any(p.name is None for p in params):
        raise TransformError(f"function.inline: a parameter of {fname} has no name", callee.loc)
    cpath = function_path(program, fname)
    for p, n in walk(callee.body, cpath + (("body", None),)):
        if isinstance(n, ir.DeclStmt) and "static" in n.decl.storage:
            raise TransformError(f"function.inline: {fname} has a static local '{n.decl.name}' "
                                 f"(line {res.line(p)})", n.loc)
        if isinstance(n, ir.Label) or isinstance(n, ir.Jump) and n.kind == "goto":
            raise TransformError(f"function.inline: {fname} uses labels or goto (line {res.line(p)})", n.loc)
    stmts = callee.body.stmts
    last = stmts[-1] if stmts else None
    final = last if isinstance(last, ir.Return) else None
    for r in _returns(callee.body):
        if r is not final:
            rl = next(res.line(p) for p, n in walk(program) if n is r)
            raise TransformError(f"function.inline: {fname} returns early (line {rl}); only a final return "
                                 f"can be inlined", r.loc)
    if lhs is not None and (final is None or final.value is None):
        raise TransformError(f"function.inline: {where} uses the result, but {fname} does not end with "
                             f"'return e;'", call.loc)
    # globals and functions the callee uses must mean the same at the call site
    caller_idx = m.path[0][1]
    locals_ = env_at(program, stmt_path, globals=False)
    for g in sorted(free_vars(callee)):
        if g in locals_:
            raise TransformError(f"function.inline: {fname} uses the global '{g}', which a local of "
                                 f"{m.function} hides at line {line}", call.loc)
        later = [k for k, it in enumerate(program.items)
                 if getattr(getattr(it, "decl", it), "name", None) == g]
        if later and min(later) > caller_idx:
            raise TransformError(f"function.inline: {fname} uses '{g}', which is declared after "
                                 f"{m.function}", call.loc)
    # rename what would clash with the caller's names
    clash = visible_names(program, stmt_path) | set().union(*(free_vars(a) for a in call.args))
    if lhs is not None:
        clash |= free_vars(lhs)
    caller = program.items[caller_idx]
    callee_names = declared_names(callee.body) | {p.name for p in params if p.name}
    taken = clash | declared_names(caller) | free_vars(caller) | declared_names(callee) | free_vars(callee)
    renames: dict[str, str] = {}
    for n in sorted(callee_names & clash):
        renames[n] = fresh_name(taken, n)
        taken.add(renames[n])
    renamed: ir.FuncDef = rename_binders(callee, renames) if renames else callee
    rparams = [p for p in (renamed.type.params or ()) if not (p.name is None and p.type == ir.Base(("void",)))]
    body = list(renamed.body.stmts)
    tail: list[ir.Stmt] = []
    if final is not None:
        ret = body.pop()
        assert isinstance(ret, ir.Return)
        if ret.value is not None:
            value = ret.value
            if lhs is not None:
                tail.append(ir.ExprStmt(ir.Assign("=", lhs, _converted(program, cpath, callee, value, final))))
            elif has_side_effects(value):
                tail.append(ir.ExprStmt(ir.Cast(ir.Base(("void",)), value)))
    binds = [ir.DeclStmt(ir.Decl(p.name, param_type(p.type), a)) for p, a in zip(rparams, call.args)]
    block = ir.Block(tuple(binds) + tuple(body) + tuple(tail))
    new = replace(program, stmt_path, block)
    ob = Obligation("inline", f"the body of {fname}, with its parameters bound to the arguments, computes what "
                    f"{where} did", m.function, (stmt_path,), call.args)
    return Rewrite(new, (ob,))


def _converted(program: ir.Program, cpath: tuple, callee: ir.FuncDef, value: ir.Expr,
               final: ir.Return) -> ir.Expr:
    """`value` converted to the callee's return type, as `return` did: a cast
    unless its type already is that type."""
    tds = typedefs_of(program)
    ret = unqualified(callee.type.ret)
    body = callee.body.stmts
    path = cpath + (("body", None), ("stmts", len(body) - 1))
    try:
        t = type_of(final.value, env_at(program, path), tds) if final.value is not None else None
    except TransformError:
        t = None
    if t is not None and resolve(t, tds) == resolve(ret, tds):
        return value
    return ir.Cast(ret, value)
