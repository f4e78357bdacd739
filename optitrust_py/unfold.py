"""Level 3 without a run, for steps that only name, unname or move a value.

A local `T x = e;` has the value of `e` at every use when nothing assigns
`x` after its declaration, nothing takes its address, nothing redeclares it
in its scope, and `e` calls only pure functions, reads no memory (`&a[i]`
is an address, not a read) and reads only locals and parameters that
nothing assigns in that scope and whose address nothing takes. Replacing
every such local by its definition (cast to `T` where `e` has another
type), and `(&a[e])[i]` by `a[e + i]`, keeps what the function computes,
for every size. So when both versions of a step's functions are the same
code once unfolded, the step is `=` with no run: `variable.bind`,
`variable.inline`, `llm.inline_pointer` and `loop.move_out` of a
definition are such steps, and whole runs of a large function for each of
them cost most of a long script's level 3.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

from . import ir
from .errors import OtpError
from .names import PURE_FUNCTIONS, address_taken, declared_names, free_vars, has_side_effects, subst, writes_of
from .tree import get, map_children, walk
from .typeof import param_type, resolve, type_of, typedefs_of, unqualified

_LOOPS = (ir.For, ir.GenericFor, ir.While, ir.DoWhile, ir.If, ir.Block)


class Unfolding:
    """Unfolded functions, by the function (kept, so its id stays its own):
    a step's code before is the step before's code after."""

    def __init__(self) -> None:
        self.memo: dict[int, tuple[ir.FuncDef, ir.FuncDef]] = {}
        self.forms: dict[tuple[int, Any], tuple[ir.FuncDef, ir.FuncDef]] = {}

    def same(self, before: ir.Program, closure_before: Sequence[ir.FuncDef],
             closure_after: Sequence[ir.FuncDef], sizes: Optional[Mapping[str, int]] = None) -> bool:
        """Whether two versions of a closure are the same code once unfolded
        (pragmas aside, as level 3 runs code in sequence), and with `sizes`,
        once each size parameter nothing assigns is replaced by its value
        and each test of constants decided (`flash.version`'s copy for
        D == 64 is then the code it copied, at D = 64)."""
        if len(closure_before) != len(closure_after):
            return False
        typedefs = typedefs_of(before)
        return all(a is b or self.form(a, typedefs, sizes) == self.form(b, typedefs, sizes)
                   for a, b in zip(closure_before, closure_after))

    def form(self, f: ir.FuncDef, typedefs: Mapping[str, ir.CType], sizes: Optional[Mapping[str, int]]) -> ir.FuncDef:
        """`f` unfolded, at `sizes` if given, without pragmas: what `same`
        compares, once per function and sizes."""
        from .locality import sequential

        key = (id(f), None if sizes is None else tuple(sorted(sizes.items())))
        got = self.forms.get(key)
        if got is None:
            x = self.unfolded(f, typedefs)
            got = self.forms[key] = (f, sequential((x if sizes is None else _at(x, sizes),))[0])
        return got[1]

    def unfolded(self, f: ir.FuncDef, typedefs: Mapping[str, ir.CType]) -> ir.FuncDef:
        """`f` with every local that keeps its definition replaced by it."""
        got = self.memo.get(id(f))
        if got is None:
            env = {p.name: param_type(p.type) for p in f.params if p.name}
            body = _Unfolder(typedefs, frozenset(address_taken(f.body))).block(f.body, env)
            got = self.memo[id(f)] = (f, dataclasses.replace(f, body=_addresses(body)))
        return got[1]


class _Unfolder:
    def __init__(self, typedefs: Mapping[str, ir.CType], taken: frozenset[str]) -> None:
        self.typedefs, self.taken = typedefs, taken

    def block(self, b: ir.Block, env: Mapping[str, ir.CType]) -> ir.Block:
        scope = dict(env)
        stmts = list(b.stmts)
        k = 0
        while k < len(stmts):
            s = stmts[k]
            if isinstance(s, ir.DeclStmt) and s.decl.name:
                value = self._value(s.decl, tuple(stmts[k + 1:]), scope)
                if value is not None:
                    stmts[k + 1:] = subst(tuple(stmts[k + 1:]), {s.decl.name: value})
                    del stmts[k]
                    continue
                scope[s.decl.name] = s.decl.type
            stmts[k] = self.stmt(s, scope)
            k += 1
        return dataclasses.replace(b, stmts=tuple(stmts))

    def stmt(self, s: Any, env: Mapping[str, ir.CType]) -> Any:
        if isinstance(s, ir.Block):
            return self.block(s, env)
        if not isinstance(s, _LOOPS):
            return s
        inner = dict(env)
        if isinstance(s, ir.For):
            inner[s.index] = s.itype
        elif isinstance(s, ir.GenericFor) and isinstance(s.init, tuple):
            inner.update({d.name: d.type for d in s.init if d.name})
        return map_children(s, lambda c: self.stmt(c, inner) if isinstance(c, _LOOPS) else c)

    def _value(self, d: ir.Decl, rest: tuple[ir.Stmt, ...], env: Mapping[str, ir.CType]) -> Optional[ir.Expr]:
        """What replaces `d`'s variable in `rest`, or None where it must stay."""
        init = d.init
        if init is None or isinstance(init, ir.InitList) or set(d.storage) | set(getattr(d.type, "quals", ())) \
                & {"static", "extern", "typedef", "volatile", "_Thread_local"}:
            return None
        if not isinstance(resolve(d.type, self.typedefs), (ir.Base, ir.Ptr)):
            return None
        if has_side_effects(init) or _reads_memory(init):
            return None
        reads = free_vars(init) - PURE_FUNCTIONS
        written = writes_of(ir.Block(rest))
        if d.name in written or d.name in self.taken or d.name in declared_names(rest) \
                or not reads <= env.keys() or reads & (written | self.taken):
            return None
        try:
            kept = resolve(type_of(init, env, self.typedefs), self.typedefs) == \
                resolve(unqualified(d.type), self.typedefs)
        except OtpError:
            kept = False
        return init if kept else ir.Cast(unqualified(d.type), init)


def _reads_memory(e: ir.Expr) -> bool:
    for path, n in walk(e):
        if isinstance(n, ir.Index) and not (path and path[-1][0] == "arg" and _under_address(e, path)):
            return True
        if isinstance(n, ir.Unop) and n.op == "*" or isinstance(n, ir.Member) and n.arrow:
            return True
    return False


def _under_address(e: ir.Expr, path: Any) -> bool:
    parent = get(e, path[:-1])
    return isinstance(parent, ir.Unop) and parent.op == "&"


def _addresses(node: Any) -> Any:
    """`(&a[e])[i]` as `a[e + i]`: how `llm.inline_pointer` writes it."""
    node = map_children(node, _addresses)
    if isinstance(node, ir.Index) and isinstance(node.base, ir.Unop) and node.base.op == "&" \
            and isinstance(node.base.arg, ir.Index):
        inner = node.base.arg
        return ir.Index(inner.base, ir.Binop("+", inner.index, node.index))
    return node


def _at(f: ir.FuncDef, sizes: Mapping[str, int]) -> ir.FuncDef:
    """`f` at `sizes`: its size parameters that nothing assigns or takes the
    address of replaced by their values, and tests of constants decided."""
    fixed = writes_of(f.body) | address_taken(f.body)
    values = {p.name: ir.Const(str(sizes[p.name])) for p in f.params
              if p.name in sizes and p.name not in fixed and isinstance(p.type, ir.Base)}
    return dataclasses.replace(f, body=_decided(subst(f.body, values)))


def _decided(node: Any) -> Any:
    """`node` with every `if` on constants replaced by the branch it takes
    (its statements in place where it declares nothing)."""
    node = map_children(node, _decided)
    if not isinstance(node, ir.Block):
        return node
    stmts: list[ir.Stmt] = []
    for s in node.stmts:
        taken = _branch(s) if isinstance(s, ir.If) else s
        if isinstance(taken, ir.Block) and not any(isinstance(t, ir.DeclStmt) for t in taken.stmts):
            stmts.extend(taken.stmts)
        elif taken is not None:
            stmts.append(taken)
    return dataclasses.replace(node, stmts=tuple(stmts))


def _branch(s: ir.If) -> Any:
    from .contract import evaluate

    try:
        holds = evaluate(s.cond, {})
    except OtpError:
        return s
    return s.then if holds else s.other
