"""Names in the IR: which variables a piece of code uses, declares and writes,
how to pick a fresh one, and substitution/renaming that respect C scopes.

Scopes follow C: a declaration statement binds its name for the rest of its
block; a canonical loop binds its index in its stop, step and body; a
function binds its parameters in its body. (`int x = x;` is read as using an
outer `x`: the initializer is treated as outside the new name's scope.)

Everything here is syntactic: a call `f(p)` is not counted as writing `p`'s
cells, and a callee's name counts as a free variable like any other use.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterable, Mapping, Optional

from . import ir
from .tree import children, map_children, walk

# Library functions without side effects on the program's state (errno aside),
# and otp.h's approximate ones (gpu.fast_math).
PURE_FUNCTIONS = frozenset({
    "expf", "exp", "exp2f", "exp2", "logf", "log", "log2f", "log2", "sqrtf", "sqrt", "powf", "pow",
    "sinf", "sin", "cosf", "cos", "tanf", "tan", "tanhf", "tanh", "erff", "erf", "fabsf", "fabs",
    "floorf", "floor", "ceilf", "ceil", "roundf", "round", "fmaxf", "fmax", "fminf", "fmin",
    "fmaf", "fma", "fmodf", "fmod", "lroundf", "lround", "isnan", "isinf", "isfinite", "abs", "labs",
    "otp_fast_expf", "otp_fast_div",
})

C_KEYWORDS = frozenset("""auto break case char const continue default do double else enum extern float for
goto if inline int long register restrict return short signed sizeof static struct switch typedef union
unsigned void volatile while _Alignas _Alignof _Atomic _Bool _Complex _Generic _Imaginary _Noreturn
_Static_assert _Thread_local""".split())

_IDENT = re.compile(r"^[A-Za-z_]\w*$")


def is_identifier(name: Any) -> bool:
    """A C identifier that is not a keyword."""
    return isinstance(name, str) and bool(_IDENT.match(name)) and name not in C_KEYWORDS


def fresh_name(taken: Iterable[str], base: str) -> str:
    """`base` if not taken, else the first free `base_1`, `base_2`, ..."""
    taken = set(taken)
    if base not in taken and base not in C_KEYWORDS:
        return base
    k = 1
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"


# ----------------------------------------------------------------- scoped rebuild


class _Scoped:
    """A rebuild of a tree that follows C scopes. Subclasses say what to do
    with a variable use (`var`) and with a binder (`bind`, which returns the
    binder's new name and the state inside its scope). `state` is immutable."""

    def var(self, v: ir.Var, state: Any) -> ir.Expr:
        return v

    def bind(self, name: str, state: Any, scope: tuple[Any, ...]) -> tuple[str, Any]:
        return name, state

    def go(self, node: Any, state: Any) -> Any:
        if isinstance(node, ir.Var):
            return self.var(node, state)
        if isinstance(node, ir.Block):
            stmts = self.seq(node.stmts, state)
            return node if all(a is b for a, b in zip(stmts, node.stmts)) else dataclasses.replace(node, stmts=stmts)
        if isinstance(node, ir.Case):
            expr = self.go(node.expr, state) if node.expr is not None else None
            return dataclasses.replace(node, expr=expr, stmts=self.seq(node.stmts, state))
        if isinstance(node, ir.For):
            start = self.go(node.start, state)
            itype = self.go(node.itype, state)
            index, inner = self.bind(node.index, state, (node.stop, node.step, node.body))
            return dataclasses.replace(node, index=index, start=start, itype=itype, stop=self.go(node.stop, inner),
                                       step=self.go(node.step, inner), body=self.go(node.body, inner))
        if isinstance(node, ir.GenericFor):
            rest = (node.cond, node.next, node.body)
            if isinstance(node.init, tuple):
                decls, inner = self.decls(node.init, state, rest)
                init: Any = decls
            else:
                init, inner = (self.go(node.init, state) if node.init is not None else None), state
            return dataclasses.replace(
                node, init=init, cond=self.go(node.cond, inner) if node.cond is not None else None,
                next=self.go(node.next, inner) if node.next is not None else None, body=self.go(node.body, inner))
        if isinstance(node, ir.FuncDef):
            ftype = node.type
            params, inner = self.decls(ftype.params or (), state, (node.body,))
            new_type = dataclasses.replace(ftype, ret=self.go(ftype.ret, state),
                                           params=params if ftype.params is not None else None)
            return dataclasses.replace(node, decl=dataclasses.replace(node.decl, type=new_type),
                                       body=self.go(node.body, inner))
        if isinstance(node, ir.Member):
            base = self.go(node.base, state)
            return node if base is node.base else dataclasses.replace(node, base=base)
        return map_children(node, lambda c: self.go(c, state))

    def decls(self, decls: tuple[ir.Decl, ...], state: Any,
              after: tuple[Any, ...]) -> tuple[tuple[ir.Decl, ...], Any]:
        out = []
        for k, d in enumerate(decls):
            t = self.go(d.type, state)
            init = self.go(d.init, state) if d.init is not None else None
            name = d.name
            if d.name is not None and "typedef" not in d.storage:
                name, state = self.bind(d.name, state, tuple(decls[k + 1:]) + after)
            same = t is d.type and init is d.init and name == d.name
            out.append(d if same else dataclasses.replace(d, type=t, init=init, name=name))
        return tuple(out), state

    def seq(self, stmts: tuple[Any, ...], state: Any) -> tuple[Any, ...]:
        out = []
        for k, s in enumerate(stmts):
            if isinstance(s, ir.DeclStmt):
                (d,), state = self.decls((s.decl,), state, tuple(stmts[k + 1:]))
                out.append(s if d is s.decl else dataclasses.replace(s, decl=d))
            else:
                out.append(self.go(s, state))
        return tuple(out)


class _Free(_Scoped):
    def __init__(self) -> None:
        self.found: set[str] = set()

    def var(self, v: ir.Var, bound: frozenset[str]) -> ir.Expr:
        if v.name not in bound:
            self.found.add(v.name)
        return v

    def bind(self, name: str, bound: frozenset[str], scope: tuple[Any, ...]) -> tuple[str, frozenset[str]]:
        return name, bound | {name}


def free_vars(node: Any) -> set[str]:
    """Names used in `node` and not declared inside it (variables, and the
    names of called functions)."""
    if node is None:
        return set()
    f = _Free()
    if isinstance(node, tuple):
        f.seq(node, frozenset())
    else:
        f.go(node, frozenset())
    return f.found


def declared_names(node: Any) -> set[str]:
    """Every name declared anywhere in `node`: locals, loop indices,
    parameters of function definitions, top-level names, typedefs, enum
    constants (not struct fields, not parameter names of prototypes)."""
    out: set[str] = set()

    def visit(n: Any, in_prototype: bool) -> None:
        if isinstance(n, ir.For):
            out.add(n.index)
        elif isinstance(n, ir.Enumerator):
            out.add(n.name)
        elif isinstance(n, ir.FuncDef):
            out.add(n.name)
            for p in n.params:
                if p.name:
                    out.add(p.name)
                visit(p.type, True)
            visit(n.type.ret, True)
            visit(n.body, False)
            return
        elif isinstance(n, ir.Decl) and n.name and not in_prototype:
            out.add(n.name)
        if isinstance(n, ir.StructT):
            for f in n.fields or ():
                visit(f.type, True)
            return
        for _, c in children(n):
            visit(c, in_prototype or isinstance(n, ir.FuncT))

    if isinstance(node, tuple):
        for n in node:
            visit(n, False)
    elif node is not None:
        visit(node, False)
    return out


# ----------------------------------------------------------------- substitution


class _Subst(_Scoped):
    """state: the mapping still active in the current scope."""

    def __init__(self, avoid: set[str]) -> None:
        self.avoid = avoid

    def var(self, v: ir.Var, m: Mapping[str, ir.Expr]) -> ir.Expr:
        return m.get(v.name, v)

    def bind(self, name: str, m: Mapping[str, ir.Expr], scope: tuple[Any, ...]) -> tuple[str, Any]:
        inner = {k: e for k, e in m.items() if k != name}
        if not inner:
            return name, inner
        used = free_vars(tuple(s for s in scope if s is not None))
        live = {k: e for k, e in inner.items() if k in used}
        if any(name in free_vars(e) for e in live.values()):
            # the binder would capture a variable of a substituted expression: rename it
            new = fresh_name(self.avoid | used | declared_names(tuple(s for s in scope if s is not None)), name)
            self.avoid.add(new)
            return new, {**inner, name: ir.Var(new)}
        return name, inner


def subst(node: Any, mapping: Mapping[str, ir.Expr]) -> Any:
    """Replace the free uses of each name in `mapping` by its expression.
    A binder inside `node` that would capture a variable of a replacement is
    renamed (with its uses) to a fresh name."""
    if not mapping:
        return node
    avoid = set(mapping) | {n for e in mapping.values() for n in free_vars(e)}
    s = _Subst(avoid)
    if isinstance(node, tuple):
        return s.seq(node, dict(mapping))
    return s.go(node, dict(mapping))


class _Rename(_Scoped):
    """state: the old names whose renamed binder is in scope."""

    def __init__(self, renames: Mapping[str, str]) -> None:
        self.renames = renames

    def var(self, v: ir.Var, active: frozenset[str]) -> ir.Expr:
        return dataclasses.replace(v, name=self.renames[v.name]) if v.name in active else v

    def bind(self, name: str, active: frozenset[str], scope: tuple[Any, ...]) -> tuple[str, Any]:
        if name in self.renames:
            return self.renames[name], active | {name}
        return name, active - {name}


def rename_binders(node: Any, renames: Mapping[str, str]) -> Any:
    """Rename every declaration (local, loop index, parameter) of a name in
    `renames`, and the uses it binds; free uses are left alone. The new names
    must not occur in `node`."""
    r = _Rename(renames)
    if isinstance(node, tuple):
        return r.seq(node, frozenset())
    return r.go(node, frozenset())


# ----------------------------------------------------------------- effects


def lvalue_bases(e: Any) -> set[str]:
    """The variables whose storage an lvalue designates: `a` for `a[i]`,
    `p` for `*(p + 1)` or `p->f`, `s` for `s.f`."""
    if isinstance(e, ir.Var):
        return {e.name}
    if isinstance(e, (ir.Index, ir.Member)):
        return lvalue_bases(e.base)
    if isinstance(e, ir.Unop) and e.op == "*":
        return lvalue_bases(e.arg)
    if isinstance(e, ir.Cast):
        return lvalue_bases(e.arg)
    if isinstance(e, ir.Binop) and e.op in ("+", "-"):
        return lvalue_bases(e.left) | lvalue_bases(e.right)
    if isinstance(e, ir.Ternary):
        return lvalue_bases(e.then) | lvalue_bases(e.other)
    if isinstance(e, ir.Comma) and e.exprs:
        return lvalue_bases(e.exprs[-1])
    return set()


INCDEC = ("++", "--", "p++", "p--")


def writes_of(node: Any) -> set[str]:
    """Base names of everything assigned or incremented in `node` (`a` for
    `a[i] = ...`). Writes through called functions are not counted."""
    out: set[str] = set()
    for _, n in walk(node):
        if isinstance(n, ir.Assign):
            out |= lvalue_bases(n.lhs)
        elif isinstance(n, ir.Unop) and n.op in INCDEC:
            out |= lvalue_bases(n.arg)
    return out


def reads_of(node: Any) -> set[str]:
    """Free names whose value or cells `node` may read: its free variables,
    except the base of a plain `=` target (`a[i] = e` reads `i` and `e`, not
    `a`'s cells; `x = e` does not read `x`). Other targets count as read."""
    def strip(n: Any) -> Any:
        if isinstance(n, ir.Assign) and n.op == "=":
            parts: list[ir.Expr] = []
            lhs = n.lhs
            while isinstance(lhs, (ir.Index, ir.Member)) and not (isinstance(lhs, ir.Member) and lhs.arrow):
                if isinstance(lhs, ir.Index):
                    parts.append(lhs.index)
                lhs = lhs.base
            if not isinstance(lhs, ir.Var):
                parts.append(lhs)
            return ir.Comma(tuple(strip(p) for p in parts) + (strip(n.rhs),))
        return map_children(n, strip)

    return free_vars(strip(node)) if node is not None else set()


def stored_var(e: ir.Expr) -> Optional[str]:
    """The variable that a store into lvalue `e` changes as a whole: `x` for
    `x` or `x.f`; None for a store through memory (`x[i]`, `*p`, `p->f`)."""
    while isinstance(e, ir.Member) and not e.arrow:
        e = e.base
    return e.name if isinstance(e, ir.Var) else None


def address_taken(node: Any) -> set[str]:
    """Variables whose address `node` takes somewhere (`&x`, `&x.f`): code
    elsewhere may change them through a pointer."""
    return {root for _, n in walk(node) if isinstance(n, ir.Unop) and n.op == "&"
            for root in [stored_var(n.arg)] if root}


def calls(node: Any) -> set[str]:
    """The names of the functions `node` calls by name."""
    return {n.func.name for _, n in walk(node) if isinstance(n, ir.Call) and isinstance(n.func, ir.Var)}


def reached(program: ir.Program, function: str) -> tuple[ir.FuncDef, ...]:
    """The function and every function of the program it calls, directly or
    not (what a run of it depends on), by name."""
    defs = {f.name: f for f in program.functions()}
    seen: dict[str, ir.FuncDef] = {}
    stack = [function]
    while stack:
        name = stack.pop()
        if name in seen or name not in defs:
            continue
        seen[name] = defs[name]
        stack.extend(calls(defs[name].body))
    return tuple(seen[n] for n in sorted(seen))


def has_side_effects(expr: Any, pure_functions: Iterable[str] = PURE_FUNCTIONS) -> bool:
    """Whether evaluating `expr` may change state: an assignment, `++`/`--`,
    a call to a function not in `pure_functions`, or an opaque expression."""
    pure = set(pure_functions)
    for _, n in walk(expr):
        if isinstance(n, (ir.Assign, ir.OpaqueExpr)):
            return True
        if isinstance(n, ir.Unop) and n.op in INCDEC:
            return True
        if isinstance(n, ir.Call) and n.name not in pure:
            return True
    return False


def uses(node: Any, name: str) -> bool:
    """Whether `name` occurs free in `node`."""
    return name in free_vars(node)


def first_use(node: Any, names: set[str]) -> Optional[str]:
    """One of `names` that is free in `node` (sorted, for stable messages)."""
    hit = sorted(free_vars(node) & names)
    return hit[0] if hit else None
