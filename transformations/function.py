"""Function transformations: inline, extract (its inverse), specialize."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, get_args

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import (declared_names, free_vars, fresh_name, has_side_effects, is_identifier,
                                rename_binders, subst)
from optitrust_py.obligation import Obligation
from optitrust_py.printer import expr as expr_text, stmt_text, type_name
from optitrust_py.session import Rewrite, primitive
from optitrust_py.target import Resolver
from optitrust_py.tree import block_of, children, function_path, get, replace, walk
from optitrust_py.typeof import (param_type, env_at, header_decls, integer_range, resolve, type_of, typedefs_of,
                                 unqualified, visible_names)
from transformations.loop import _const_offset, _escapes

VOID = ir.Base(("void",))


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


# ----------------------------------------------------------------- extract


def _own_bases(e: ir.Expr) -> set[str]:
    """The variables whose own storage the lvalue `e` designates, not what
    they point to: `x` for `x`, `s.f` and `s.a[i]`; nothing for `p[i]`,
    `*p` or `p->f` (nor `a[i]`: an array is passed as a pointer anyway)."""
    if isinstance(e, ir.Var):
        return {e.name}
    if isinstance(e, ir.Member) and not e.arrow or isinstance(e, ir.Index) and not isinstance(e.base, ir.Var):
        return _own_bases(e.base)
    return set()


def _touched(node: Any) -> tuple[set[str], set[str]]:
    """The variables whose own storage `node` assigns or increments, and
    those whose address it takes."""
    assigned: set[str] = set()
    addressed: set[str] = set()
    for _, n in walk(node):
        if isinstance(n, ir.Assign):
            assigned |= _own_bases(n.lhs)
        elif isinstance(n, ir.Unop) and n.op in ("++", "--", "p++", "p--"):
            assigned |= _own_bases(n.arg)
        elif isinstance(n, ir.Unop) and n.op == "&":
            addressed |= _own_bases(n.arg)
    return assigned, addressed


def _top_names(items: tuple[ir.TopLevel, ...]) -> set[str]:
    """The names that top-level items declare (functions, globals, prototypes,
    typedefs, enum constants), and those of the system headers."""
    funcs = {i.name for i in items if isinstance(i, ir.FuncDef)}
    return funcs | declared_names(tuple(i for i in items if not isinstance(i, ir.FuncDef))) | set(header_decls())


def _stray_case(node: Any) -> Optional[ir.Case]:
    """A `case`/`default` label in `node` outside any switch of `node`."""
    if isinstance(node, ir.Case):
        return node
    if isinstance(node, ir.Switch):
        return None
    return next((c for _, ch in children(node) if (c := _stray_case(ch)) is not None), None)


def _local_types(fn: ir.FuncDef) -> set[str]:
    """Typedef names and struct/enum tags declared inside a function."""
    out: set[str] = set()
    for _, n in walk(fn.body):
        if isinstance(n, ir.Decl) and "typedef" in n.storage and n.name:
            out.add(n.name)
        elif isinstance(n, ir.StructT) and n.name and n.fields is not None or \
                isinstance(n, ir.EnumT) and n.name and n.values is not None:
            out.add(n.name)
    return out


def _unusable_type(t: ir.CType, local_types: set[str]) -> Optional[str]:
    """Why a parameter of type `t` cannot be declared at top level; None if it can."""
    for _, n in walk(t):
        if isinstance(n, ir.Base) and n.names[-1] in local_types or \
                isinstance(n, (ir.StructT, ir.EnumT)) and n.name in local_types:
            return "a type declared inside the function"
        if isinstance(n, ir.StructT) and n.fields is not None or isinstance(n, ir.EnumT) and n.values is not None:
            return "a struct or enum type defined in place"
        if isinstance(n, ir.Array) and n.size is not None and not isinstance(n.size, ir.Const):
            return "an array type of variable size"
    return None


def _first_line(s: ir.Stmt) -> str:
    return stmt_text(s).splitlines()[0].strip()


@primitive
def extract(program: ir.Program, target: str, name: str, count: int = 1) -> Rewrite:
    """Move statements into a new function and call it in their place: the
    inverse of inline (also called outlining).

    `target` names one statement directly in a block; `count` statements
    from it (itself and the `count - 1` that follow, default 1) are moved.

    Before (`function.extract("matmul > for k", "matmul_k")`):

        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
              for (int k = 0; k < K; k++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }
            }
          }
        }

    After (obligation inline):

        void matmul_k(int N, int K, const float *A, const float *B, float *C, int i, int j) {
          for (int k = 0; k < K; k++) {
            C[i * N + j] += A[i * K + k] * B[k * N + j];
          }
        }

        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
              matmul_k(N, K, A, B, C, i, j);
            }
          }
        }

    The new function returns void and is defined right before the enclosing
    one (not `static`, so that inlining its calls later leaves no unused
    static function behind). Its parameters are the local variables the
    statements use (parameters, loop indices, locals of the enclosing
    function), in their order of declaration, under their own names and
    declared types:

    - an array (`float buf[16]`) is passed as a pointer to its first element
      (`float *buf`), so the statements work on the same cells;
    - a scalar or pointer the statements only read is passed by value;
    - one they assign or increment (`s += ...`, `p++`), or whose address is
      taken anywhere in the enclosing function (so that another pointer may
      reach it), and every struct or union (whose array fields may be
      reached without `&`), is passed by pointer: the parameter is `T *s`,
      its uses become `*s`, the argument is `&s`. This is right whether or
      not the variable is used afterwards, so no liveness is needed.

    Globals, functions and header names stay as they are. Refused when
    `name` is not an identifier or names an existing function, global or
    header declaration, or a local visible at the call; when the statements
    leave the range (`return`, `break`/`continue` of an enclosing loop,
    `goto`, labels, `case`), contain code otp does not model, declare a
    local used after them, use a global declared after the enclosing
    function (or the function itself), apply `sizeof` or `&` to a local
    array, or use a variable whose type cannot be written at top level
    (declared inside the function, defined in place, variable-size
    multidimensional array). The claim left to the checker is that of
    inline: the new function's body, with its parameters bound to the
    arguments, computes what the statements did.
    """
    res = Resolver(program)
    m = res.one(target, "statement", get_args(ir.Stmt))
    line = res.line(m.path)
    what = f"'{_first_line(m.node)}' (line {line})"
    if not is_identifier(name):
        raise TransformError(f"function.extract: {name!r} is not a valid C function name", m.node.loc)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TransformError(f"function.extract: count must be a positive integer (the number of statements "
                             f"to extract), got {count!r}", m.node.loc)
    try:
        block_path, k = block_of(m.path)
    except ValueError:
        block_path, k = (), -1
    block = get(program, block_path) if block_path else None
    if not isinstance(block, ir.Block):
        raise TransformError(f"function.extract: {what} is not a statement of a block", m.node.loc)
    if k + count > len(block.stmts):
        raise TransformError(f"function.extract: there are only {len(block.stmts) - k} statement(s) from {what} "
                             f"to the end of its block, not {count}", m.node.loc)
    stmts = block.stmts[k:k + count]
    body = ir.Block(stmts)
    what = f"the extracted code ({what}" + (f" and the {count - 1} statement(s) after it)" if count > 1 else ")")
    for _, n in walk(body):
        if isinstance(n, (ir.Opaque, ir.OpaqueExpr)):
            raise TransformError(f"function.extract: {what} contains code otp does not model ('{n.text}')",
                                 m.node.loc)
    leaving = _escapes(stmts) or _stray_case(body)
    if leaving is not None:
        raise TransformError(f"function.extract: '{_first_line(leaving)}' in {what} leaves it or is a "
                             f"jump target", getattr(leaving, "loc", None) or m.node.loc)
    declared = {s.decl.name for s in stmts if isinstance(s, ir.DeclStmt) and s.decl.name}
    used_after = sorted(declared & free_vars(block.stmts[k + count:]))
    if used_after:
        raise TransformError(f"function.extract: '{used_after[0]}' is declared in {what} and used after it; "
                             f"extract the statements that use it too, or declare it before", m.node.loc)
    caller_idx = m.path[0][1]
    caller: ir.FuncDef = program.items[caller_idx]
    locals_ = env_at(program, m.path, globals=False)
    if name in _top_names(program.items):
        raise TransformError(f"function.extract: a function or global named '{name}' already exists; choose "
                             f"another name", m.node.loc)
    if name in locals_:
        raise TransformError(f"function.extract: the local '{name}' of {m.function} would hide the new function "
                             f"at line {line}; choose another name", m.node.loc)
    used = free_vars(stmts)
    before = _top_names(program.items[:caller_idx])
    late = sorted(used - set(locals_) - before)
    if late:
        raise TransformError(f"function.extract: {what} uses '{late[0]}', which is not declared before "
                             f"{m.function}", m.node.loc)
    tds = typedefs_of(program)
    assigned, _ = _touched(body)
    _, addressed = _touched(caller)
    local_types = _local_types(caller)
    params: list[ir.Decl] = []
    args: list[ir.Expr] = []
    deref: dict[str, ir.Expr] = {}
    for v, t in locals_.items():
        if v not in used:
            continue
        if isinstance(resolve(t, tds), ir.Array):
            for _, n in walk(body):
                if isinstance(n, ir.Unop) and n.op in ("&", "sizeof", "_Alignof") and n.arg == ir.Var(v):
                    raise TransformError(f"function.extract: {what} applies '{n.op}' to the local array '{v}', "
                                         f"which becomes a pointer in {name}", m.node.loc)
            params.append(ir.Decl(v, param_type(t)))
            args.append(ir.Var(v))
        elif v in assigned or v in addressed or isinstance(resolve(t, tds), ir.StructT):
            params.append(ir.Decl(v, ir.Ptr(t)))
            args.append(ir.Unop("&", ir.Var(v)))
            deref[v] = ir.Unop("*", ir.Var(v))
        else:
            params.append(ir.Decl(v, t))
            args.append(ir.Var(v))
        why = _unusable_type(params[-1].type, local_types)
        if why is not None:
            raise TransformError(f"function.extract: {what} uses '{v}', whose type is {why}; it cannot be a "
                                 f"parameter of {name}", m.node.loc)
    ftype = ir.FuncT(VOID, tuple(params) or (ir.Decl(None, VOID),))
    new_fn = ir.FuncDef(ir.Decl(name, ftype), ir.Block(subst(stmts, deref)))
    call = ir.ExprStmt(ir.Call(ir.Var(name), tuple(args)))
    new = replace(program, block_path, ir.Block(block.stmts[:k] + (call,) + block.stmts[k + count:], block.loc))
    new = ir.Program(new.includes, new.items[:caller_idx] + (new_fn,) + new.items[caller_idx:], new.file)
    call_path = (("items", caller_idx + 1),) + m.path[1:]
    ob = Obligation("inline", f"the body of {name}, with its parameters bound to the arguments, computes what "
                    f"{what} did", m.function, (call_path, (("items", caller_idx),)), tuple(args))
    return Rewrite(new, (ob,))


# ----------------------------------------------------------------- specialize


def _literal(value: int, t: ir.CType, tds: dict[str, ir.CType]) -> ir.Expr:
    """`value` as a C expression of type `t`: a literal, cast to `t` when the
    literal's own type differs (so the arithmetic that uses it is unchanged)."""
    lit: ir.Expr = ir.Const(str(abs(value)))
    if value < 0:
        lit = ir.Unop("-", lit)
    return lit if resolve(type_of(lit, {}), tds) == resolve(t, tds) else ir.Cast(t, lit)


@primitive
def specialize(program: ir.Program, target: str, param: str, value: int, name: Optional[str] = None) -> Rewrite:
    """Make a copy of a function for one constant value of an integer
    parameter: the parameter is removed and the constant put in its place,
    so that later steps see literal sizes (full unrolling, exact tiling).

    The copy is named `name`, by default `<function>_<param><value>` (`m`
    for a minus sign), and is defined right before the function; it keeps
    the function's storage class and drops its contract. Two forms:

    (a) `target` names a call: that call is redirected to the copy.
    Before (`function.specialize("transformer_token > call matvec#1", "n", 8)`):

        matvec(dim, dim, &wq[l * dim * dim], xb, q);

    After (obligation equals: dim == 8 at the call):

        void matvec_n8(int d, const float *W, const float *x, float *y) {
          for (int i = 0; i < d; i++) {
            y[i] = 0.0f;
            for (int j = 0; j < 8; j++) {
              y[i] += W[i * 8 + j] * x[j];
            }
          }
        }
        ...
        matvec_n8(dim, &wq[l * dim * dim], xb, q);

    When the argument is an integer constant it must be `value` and there
    is no obligation; otherwise it must have no side effect (it is no longer
    evaluated) and the obligation `equals` asks the checker to prove that it
    is `value` there (from the caller's contract). A copy that already
    exists under `name` and is exactly this specialization is reused.

    (b) `target` names the function itself: it dispatches to the copy.
    Before (`function.specialize("matmul", "K", 512)`):

        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) { ... }
        }

    After (no obligation):

        void matmul_K512(int M, int N, const float *A, const float *B, float *C) { ... K replaced by 512 ... }

        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          if (K == 512) {
            matmul_K512(M, N, A, B, C);
            return;
          }
          for (int i = 0; i < M; i++) { ... }
        }

    (`return matmul_K512(...);` for a function that returns a value.) This
    form is always correct, so it declares no obligation: the copy is only
    called when the parameter equals the constant, the body never writes
    the parameter nor takes its address (refused otherwise), so the
    parameter holds that constant throughout and replacing its uses by the
    constant (cast to its type when the literal's type differs) changes no
    value; the other parameters are passed through unchanged, and the copy
    has no static local whose state it would split from the original's.
    The same reasoning makes form (a) correct once the argument equals the
    constant.

    Refused when `param` is not a parameter of the function or not of an
    integer type, when `value` is not an integer constant or does not fit
    that type, when the body writes `param` or takes its address, when the
    function is not defined in the program, is variadic or unprototyped,
    has an unnamed parameter, a static local, or calls itself, when `name`
    is not an identifier or names something else that exists (or a local
    visible where the copy is called), when the call comes before the
    function's definition, or when the argument is a different constant or
    has side effects.
    """
    res = Resolver(program)
    m = res.one(target, "call or a function definition", (ir.Call, ir.FuncDef))
    call: Optional[ir.Call] = m.node if isinstance(m.node, ir.Call) else None
    loc = m.node.loc
    g = m.node if call is None else program.function(call.name) if call.name else None
    if g is None:
        fname = call.name or expr_text(call.func)
        raise TransformError(f"function.specialize: {fname} is not defined in {program.file}; only functions "
                             f"defined there can be specialized", loc)
    gname = g.name
    ftype = g.type
    if ftype.params is None or ftype.variadic:
        raise TransformError(f"function.specialize: {gname} has no prototype or takes a variable number of "
                             f"arguments", loc)
    params = [p for p in ftype.params if not (p.name is None and p.type == VOID)]
    if any(p.name is None for p in params):
        raise TransformError(f"function.specialize: a parameter of {gname} has no name", loc)
    names = [p.name for p in params]
    if param not in names:
        raise TransformError(f"function.specialize: '{param}' is not a parameter of {gname} (parameters: "
                             f"{', '.join(n for n in names if n) or 'none'})", loc)
    k = names.index(param)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TransformError(f"function.specialize: the value must be an integer constant, got {value!r}", loc)
    tds = typedefs_of(program)
    ptype = unqualified(params[k].type)
    span = integer_range(ptype, tds)
    if span is None:
        raise TransformError(f"function.specialize: '{param}' has type '{type_name(ptype)}'; only integer "
                             f"parameters can be specialized", loc)
    if not span[0] <= value <= span[1]:
        raise TransformError(f"function.specialize: {value} does not fit in the type '{type_name(ptype)}' of "
                             f"'{param}'", loc)
    assigned, addressed = _touched(g.body)
    if param in assigned | addressed:
        raise TransformError(f"function.specialize: {gname} assigns '{param}' or takes its address, so it does "
                             f"not hold {value} throughout the body", g.loc)
    gpath = function_path(program, gname)
    for p, n in walk(g.body, gpath + (("body", None),)):
        if isinstance(n, ir.DeclStmt) and "static" in n.decl.storage:
            raise TransformError(f"function.specialize: {gname} has a static local '{n.decl.name}' (line "
                                 f"{res.line(p)}), which the copy would not share", n.loc)
    if gname in free_vars(g.body):
        raise TransformError(f"function.specialize: {gname} calls itself", g.loc)
    if name is None:
        name = f"{gname}_{param}{value if value >= 0 else f'm{-value}'}"
    if not is_identifier(name):
        raise TransformError(f"function.specialize: {name!r} is not a valid C function name", loc)
    literal = _literal(value, ptype, tds)
    bind = {param: literal}
    rest = tuple(dataclasses.replace(p, type=subst(p.type, bind)) for p in params if p.name != param)
    copy = ir.FuncDef(dataclasses.replace(g.decl, name=name, type=dataclasses.replace(
        ftype, params=rest or (ir.Decl(None, VOID),)), loc=None), subst(g.body, bind))
    existing = program.function(name)
    if existing is not None and existing != copy or existing is None and name in _top_names(program.items):
        raise TransformError(f"function.specialize: a function or global named '{name}' already exists (and is "
                             f"not this specialization); choose another name", loc)
    g_idx = gpath[0][1]
    obligations: tuple[Obligation, ...] = ()
    if call is not None:
        where = f"the call to {gname} (line {res.line(m.path)})"
        caller_idx = m.path[0][1]
        if caller_idx < g_idx:
            raise TransformError(f"function.specialize: {where} comes before the definition of {gname}; move "
                                 f"{gname} before {m.function}", loc)
        if len(call.args) != len(params):
            raise TransformError(f"function.specialize: {where} passes {len(call.args)} arguments to {gname}, "
                                 f"which takes {len(params)}", loc)
        if name in env_at(program, m.path, globals=False):
            raise TransformError(f"function.specialize: the local '{name}' of {m.function} would hide the copy at "
                                 f"{where}; choose another name", loc)
        arg = call.args[k]
        unknown, known = _const_offset(arg)
        if unknown is None and known != value:
            raise TransformError(f"function.specialize: the argument for '{param}' at {where} is {known}, not "
                                 f"{value}", loc)
        if unknown is not None and has_side_effects(arg):
            raise TransformError(f"function.specialize: the argument '{expr_text(arg)}' for '{param}' at {where} "
                                 f"has side effects, which the specialized call would drop", loc)
        new = replace(program, m.path, dataclasses.replace(call, func=ir.Var(name),
                                                           args=call.args[:k] + call.args[k + 1:]))
        if unknown is not None:
            shift = 0 if existing is not None else 1
            obligations = (Obligation("equals", f"'{expr_text(arg)}' equals {value} at {where}", m.function,
                                      ((("items", caller_idx + shift),) + m.path[1:],), (arg, literal)),)
    else:
        if name in names:
            raise TransformError(f"function.specialize: a parameter of {gname} is named '{name}'; choose another "
                                 f"name", loc)
        forward = ir.Call(ir.Var(name), tuple(ir.Var(p.name) for p in rest if p.name))
        then: tuple[ir.Stmt, ...] = (ir.ExprStmt(forward), ir.Return()) \
            if resolve(ftype.ret, tds) == VOID else (ir.Return(forward),)
        guard = ir.If(ir.Binop("==", ir.Var(param), literal), ir.Block(then))
        new = replace(program, gpath, dataclasses.replace(g, body=dataclasses.replace(
            g.body, stmts=(guard,) + g.body.stmts)))
    if existing is None:
        new = ir.Program(new.includes, new.items[:g_idx] + (copy,) + new.items[g_idx:], new.file)
    return Rewrite(new, obligations)
