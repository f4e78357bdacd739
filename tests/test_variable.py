"""variable.bind, and the name and type utilities it rests on."""
from __future__ import annotations

import pytest

from optitrust_py import ir
from optitrust_py.errors import TransformError
from optitrust_py.names import (declared_names, free_vars, fresh_name, has_side_effects, rename_binders, subst,
                                writes_of)
from optitrust_py.printer import expr as expr_text, stmt_text, type_name
from optitrust_py.target import Resolver
from optitrust_py.typeof import env_at, type_of
from transformations import variable

SCALE = "attention > for j#1 > expr 'sqrtf(D)'"


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(TransformError) as info:
        fn(*args, **kwargs)
    return info.value.message


def attention_args(ck, H=2, S=5, D=4):
    n = H * S * D
    return [H, S, D, ck.floats(n), ck.floats(n), ck.floats(n), ck.floats(n)]


# ----------------------------------------------------------------- bind


def test_bind_sqrt_in_attention(ck):
    p = ck.load("attention.c")
    r = variable.bind.apply(p, SCALE, "scale")
    assert ck.contains(ck.function_text(r.program, "attention"), """
          for (int j = 0; j <= i; j++) {
            float s = 0.0f;
            for (int d = 0; d < D; d++) {
              s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
            }
            float scale = sqrtf(D);
            scores[j] = s / scale;
          }""")
    (ob,) = r.obligations
    assert ob.kind == "pure" and ob.function == "attention"
    assert [expr_text(e) for e in ob.exprs] == ["sqrtf(D)"]
    decl = Resolver(r.program).one("attention > def scale")
    assert ob.paths[0] == decl.path
    assert r.fp == "exact"
    ck.check(p, r.program, "attention", attention_args(ck))


def test_bind_pointer_and_given_type(ck):
    t = ck.load("transformer.c")
    r = variable.bind.apply(t, "transformer_token > call matvec#1 > expr '&wq[l * dim * dim]'", "wq_l")
    assert ck.contains(ck.function_text(r.program, "transformer_token"), """
        const float *wq_l = &wq[l * dim * dim];
        matvec(dim, dim, wq_l, xb, q);""")
    ck.compiles(r.program)
    r2 = variable.bind.apply(ck.load("attention.c"), SCALE, "scale", type="float")
    assert "float scale = sqrtf(D);" in ck.function_text(r2.program, "attention")


def test_bind_refuses_a_name_in_scope(ck):
    p = ck.load("attention.c")
    for name in ("s", "D", "scores", "sqrtf", "j"):
        msg = refusal(variable.bind.apply, p, SCALE, name)
        assert msg == (f"variable.bind: a name '{name}' is already visible or declared at line 13; "
                       f"choose a fresh name")
    assert "not a valid C variable name" in refusal(variable.bind.apply, p, SCALE, "float")


def test_bind_refusals(ck):
    p = ck.load("attention.c")
    assert refusal(variable.bind.apply, p, SCALE, "scale", type="double") == (
        "variable.bind: 'sqrtf(D)' has type 'float', not 'double'")
    assert refusal(variable.bind.apply, p, "attention > expr 'malloc(S * sizeof(float))'", "buf") == (
        "variable.bind: 'malloc(S * sizeof(float))' (line 5) has side effects")
    assert "(line 13): it is assigned to (an lvalue)" in refusal(
        variable.bind.apply, p, "attention > for j#1 > expr 'scores[j]'", "sj")
    m = ck.load("matvec.c")
    assert refusal(variable.bind.apply, m, "matvec > expr 'D'", "rows") == (
        "variable.bind: cannot bind 'D' (line 2): it is in the header of a loop (stop), which is evaluated "
        "at every iteration")
    c = ck.parse("void f(int n, float *x) {\n  if (n > 0 && x[n - 1] > 0.0f) {\n    x[0] = 1.0f;\n  }\n"
                 "  int m = sizeof(m) + n;\n  x[1] = n > 2 ? x[2] : 0.0f;\n}")
    assert "it is evaluated only when the left operand of '&&' lets it" in refusal(
        variable.bind.apply, c, "f > expr 'x[n - 1]'", "last")
    assert "'sizeof(m)' uses 'm', which is declared inside its statement (line 5)" in refusal(
        variable.bind.apply, c, "f > expr 'sizeof(m)'", "size")
    assert "a branch of a conditional expression" in refusal(variable.bind.apply, c, "f > expr 'x[2]'", "x2")


# ----------------------------------------------------------------- names


def _stmt(text: str):
    return ck_parse(f"void f(int n, float *a, float *b) {{ {text} }}").items[0].body


def ck_parse(text: str):
    from optitrust_py.frontend import parse_text
    return parse_text(text)


def test_free_and_declared_names():
    body = _stmt("float s = 0.0f; for (int i = 0; i < n; i++) { s += a[i] * expf(b[i]); } a[0] = s;")
    assert free_vars(body) == {"n", "a", "b", "expf"}
    assert declared_names(body) == {"s", "i"}
    assert writes_of(body) == {"s", "a"}
    assert declared_names(ck_parse("int g; void f(int n) { int m; }")) == {"g", "f", "n", "m"}
    assert fresh_name({"bi", "bi_1"}, "bi") == "bi_2" and fresh_name(set(), "for") == "for_1"


def test_subst_avoids_capture():
    body = _stmt("for (int i = 0; i < n; i++) { a[i] = n; }")
    out = subst(body, {"n": ir.Binop("+", ir.Var("i"), ir.Const("1"))})
    assert stmt_text(out) == "{\n  for (int i_1 = 0; i_1 < i + 1; i_1++) {\n    a[i_1] = i + 1;\n  }\n}"
    shadow = _stmt("int n2 = n; { int n = 3; a[n] = 0.0f; }")
    assert stmt_text(subst(shadow, {"n": ir.Const("7")})).splitlines()[1:4] == [
        "  int n2 = 7;", "  {", "    int n = 3;"]


def test_rename_binders_leaves_free_uses():
    body = _stmt("a[0] = n; { int n = 2; a[n] = 1.0f; } a[1] = n;")
    out = rename_binders(body, {"n": "n_1"})
    assert stmt_text(out) == ("{\n  a[0] = n;\n  {\n    int n_1 = 2;\n    a[n_1] = 1.0f;\n  }\n  a[1] = n;\n}")


def test_side_effects():
    def e(text):
        return ck_parse(f"int g(int); void f(int n, float *a) {{ (void)({text}); }}").items[1].body.stmts[0].expr.arg
    assert not has_side_effects(e("sqrtf(a[n]) + n"))
    assert has_side_effects(e("g(n)")) and has_side_effects(e("n++")) and has_side_effects(e("a[0] = 1"))
    assert not has_side_effects(e("g(n)"), {"g"})


@pytest.mark.parametrize("text,want", [
    ("sqrtf(D)", "float"), ("s / sqrtf(D)", "float"), ("q[(h * S + i) * D + j]", "float"),
    ("&q[1]", "const float *"), ("scores", "float *"), ("S * sizeof(float)", "size_t"),
    ("D + 1.0", "double"), ("h < S", "int"), ("-INFINITY", "float"), ("1u + 2L", "long"),
    ("1u + 2", "unsigned int"), ("(char)1 + (short)2", "int"), ("q + 1", "const float *"),
    ("scores - scores", "ptrdiff_t"), ("i ? 1.0f : 2", "float"), ("(float)D", "float"),
    ("3000000000", "long"), ("0xFFFFFFFF", "unsigned int"), ("'a'", "int"),
])
def test_type_of(ck, text, want):
    p = ck.load("attention.c")
    m = Resolver(p).one(SCALE)
    e = ck_parse(f"void g(void) {{ (void)({text}); }}").items[0].body.stmts[0].expr.arg
    assert type_name(type_of(e, env_at(p, m.path))) == want


def test_type_of_unknown_name(ck):
    e = ck_parse("void g(void) { (void)(zz + 1); }").items[0].body.stmts[0].expr.arg
    with pytest.raises(TransformError, match="'zz' is not declared here"):
        type_of(e, {})
