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
from helpers import attention_args, refusal

SCALE = "attention > for j#1 > expr 'sqrtf(D)'"


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
    ck.check(p, r.program, "attention", attention_args(ck, 2, 5, 4))


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


# ----------------------------------------------------------------- inline


def moe_args(ck, T=2, dim=4, hidden=3, E=4, K=2):
    return [T, dim, hidden, E, K, ck.floats(T * dim), ck.floats(E * dim), ck.floats(E * hidden * dim),
            ck.floats(E * dim * hidden), ck.floats(E * hidden * dim), ck.floats(T * dim)]


def test_inline_undoes_bind(ck):
    p = ck.load("attention.c")
    bound = variable.bind.apply(p, SCALE, "scale").program
    r = variable.inline.apply(bound, "attention > def scale")
    assert r.program == p and r.obligations == ()
    ck.check(bound, r.program, "attention", attention_args(ck, 2, 5, 4))
    t = ck.load("transformer.c")
    bound = variable.bind.apply(t, "transformer_token > call matvec#1 > expr '&wq[l * dim * dim]'", "wq_l").program
    assert variable.inline.apply(bound, "transformer_token > def wq_l").program == t


def test_inline_memory_read_declares_pure(ck):
    p = ck.load("moe.c")
    r = variable.inline.apply(p, "moe > def e")
    text = ck.function_text(r.program, "moe")
    assert "int e = sel[s];" not in text
    assert ck.contains(text, """
          hb[i] += w1[(sel[s] * hidden + i) * dim + j] * x[t * dim + j];
          hb2[i] += w3[(sel[s] * hidden + i) * dim + j] * x[t * dim + j];""")
    (ob,) = r.obligations
    assert ob.kind == "pure" and [expr_text(e) for e in ob.exprs] == ["sel[s]"]
    assert len(ob.paths) == 2 and all(isinstance(ir_get(r.program, q), ir.For) for q in ob.paths)
    ck.check(p, r.program, "moe", moe_args(ck))


def ir_get(program, path):
    from optitrust_py.tree import get
    return get(program, path)


def test_inline_casts_and_last_store(ck):
    p = ck.parse("void f(int n, float *y) {\n  float h = n;\n  float s = y[0];\n  float t = s * 2.0f;\n"
                 "  s = s + t;\n  y[0] = h / 2 + s;\n}")
    r = variable.inline.apply(p, "f > def h")
    assert "y[0] = (float)n / 2 + s;" in ck.function_text(r.program, "f")
    r2 = variable.inline.apply(r.program, "f > def t")
    assert "  s = s + s * 2.0f;" in ck.function_text(r2.program, "f")
    assert r2.obligations == ()
    ck.check(p, r2.program, "f", [3, ck.floats(1)])
    aliased = ck.parse("void f(float *y) {\n  int b = 2;\n  int *p = &b;\n  int c = b;\n  *p = 3;\n  y[c] = 1.0f;\n}")
    (ob,) = variable.inline.apply(aliased, "f > def c").obligations
    assert ob.kind == "pure" and [expr_text(e) for e in ob.exprs] == ["b"]


def test_inline_refusals(ck):
    p = ck.load("attention.c")
    assert refusal(variable.inline.apply, p, "attention > def s") == (
        "variable.inline: 's' (line 9) is written at line 11 ('s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d]')")
    assert refusal(variable.inline.apply, p, "attention > def scores") == (
        "variable.inline: the initializer 'malloc(S * sizeof(float))' of 'scores' (line 5) has side effects")
    c = ck.parse("void g(int *p);\nvoid f(int n, float *y) {\n  int a = n;\n  n = n + 1;\n  y[a] = 0.0f;\n"
                 "  int b = 2;\n  g(&b);\n  int c = b;\n  g(&b);\n  y[c] = 1.0f;\n  float u[2] = {1.0f, 2.0f};\n"
                 "  y[0] = u[0];\n}")
    assert refusal(variable.inline.apply, c, "f > def a") == (
        "variable.inline: 'n', which the initializer 'n' of 'a' (line 4) reads, is written at line 5, before a use")
    assert refusal(variable.inline.apply, c, "f > def b") == (
        "variable.inline: the address of 'b' (line 7) is taken at line 8")
    assert "'b', which the initializer 'b' of 'c' (line 9) reads, is written at line 10" in refusal(
        variable.inline.apply, c, "f > def c")
    assert "'u' (line 12) is an array" in refusal(variable.inline.apply, c, "f > def u")


# ----------------------------------------------------------------- rename


def test_rename_loop_index(ck):
    p = ck.load("matmul.c")
    r = variable.rename.apply(p, "matmul > for k", "kk")
    assert ck.contains(ck.function_text(r.program, "matmul"), """
          for (int kk = 0; kk < K; kk++) {
            C[i * N + j] += A[i * K + kk] * B[kk * N + j];
          }""")
    assert r.obligations == ()
    ck.check(p, r.program, "matmul", [3, 4, 5, ck.floats(15), ck.floats(20), ck.floats(12)])


def test_rename_local(ck):
    p = ck.load("attention.c")
    r = variable.rename.apply(p, "attention > def s", "dot")
    assert ck.contains(ck.function_text(r.program, "attention"), """
        float dot = 0.0f;
        for (int d = 0; d < D; d++) {
          dot += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
        }
        scores[j] = dot / sqrtf(D);""")
    ck.check(p, r.program, "attention", attention_args(ck, 2, 5, 4))


def test_rename_refusals(ck):
    p = ck.load("attention.c")
    assert refusal(variable.rename.apply, p, "attention > def s", "float") == (
        "variable.rename: 'float' is not a valid C variable name")
    assert "is already named 's'" in refusal(variable.rename.apply, p, "attention > def s", "s")
    for name in ("D", "scores", "j", "expf"):
        assert refusal(variable.rename.apply, p, "attention > def s", name) == (
            f"variable.rename: a name '{name}' is already visible or declared where 's' (line 9) is declared; "
            f"choose a fresh name")
    assert refusal(variable.rename.apply, p, "attention > def max_val", "d") == (
        "variable.rename: 'd' is already declared or used in the scope of 'max_val' (line 15); renaming would "
        "capture or shadow it")
    assert "'k' is already declared or used in the scope of the index of for j" in refusal(
        variable.rename.apply, ck.load("matmul.c"), "matmul > for j", "k")


# ----------------------------------------------------------------- local_accumulator


def test_local_accumulator_matmul(ck):
    p = ck.load("matmul.c")
    r = variable.local_accumulator.apply(p, "matmul > for k", "C[i * N + j]")
    assert ck.contains(ck.function_text(r.program, "matmul"), """
          C[i * N + j] = 0.0f;
          {
            float acc = C[i * N + j];
            for (int k = 0; k < K; k++) {
              acc += A[i * K + k] * B[k * N + j];
            }
            C[i * N + j] = acc;
          }""")
    (ob,) = r.obligations
    assert ob.kind == "unaliased" and [expr_text(e) for e in ob.exprs] == ["C[i * N + j]"]
    assert ir_get(r.program, ob.paths[0]).index == "k"
    assert r.fp == "exact"
    ck.check(p, r.program, "matmul", [3, 4, 5, ck.floats(15), ck.floats(20), ck.floats(12)])


def test_local_accumulator_two_cells_in_moe(ck):
    p = ck.load("moe.c")
    r = variable.local_accumulator.apply(p, "moe > for i#2 > for j", "hb[i]")
    r = variable.local_accumulator.apply(r.program, "moe > for i#2 > for j", "hb2[i]")
    assert ck.contains(ck.function_text(r.program, "moe"), """
              acc_1 += w1[(e * hidden + i) * dim + j] * x[t * dim + j];
              acc_2 += w3[(e * hidden + i) * dim + j] * x[t * dim + j];""")
    ck.check(p, r.program, "moe", moe_args(ck))


def test_local_accumulator_assignment_form(ck):
    p = ck.parse("void f(int n, float *y, const float *x) {\n  for (int k = 0; k < n; k++) {\n"
                 "    if (x[k] > 0.0f) {\n      y[n] = y[n] - x[k];\n    }\n  }\n}")
    r = variable.local_accumulator.apply(p, "f > for k", "y[n]")
    assert ck.contains(ck.function_text(r.program, "f"), """
        {
          float acc = y[n];
          for (int k = 0; k < n; k++) {
            if (x[k] > 0.0f) {
              acc = acc - x[k];
            }
          }
          y[n] = acc;
        }""")
    ck.check(p, r.program, "f", [4, ck.floats(5), ck.floats(4)])


def test_local_accumulator_refusals(ck):
    la = variable.local_accumulator.apply
    assert refusal(la, ck.load("matmul.c"), "matmul > for j", "C[i * N + j]") == (
        "variable.local_accumulator: 'C[i * N + j]' uses the loop index 'j': it is not the same cell at every "
        "iteration of for j (line 3)")
    assert "uses 'd', which is declared inside the loop" in refusal(
        la, ck.load("attention.c"), "attention > for j#5", "out[(h * S + i) * D + d]")
    assert refusal(la, ck.load("matmul.c"), "matmul > for k", "C[i * N + k]") == (
        "variable.local_accumulator: 'C[i * N + k]' does not occur in the body of for k (line 5)")
    p = ck.parse("void f(int n, float *y, const float *x) {\n  int m = 0;\n  for (int k = 0; k < n; k++) {\n"
                 "    y[m] += x[k];\n    m = m + 1;\n  }\n  for (int k = 0; k < n; k++) {\n    y[0] += x[k];\n"
                 "    y[1] = y[0];\n  }\n  for (int k = 0; k < n; k++) {\n    y[0] += x[k];\n    if (x[k] < 0.0f) {\n"
                 "      return;\n    }\n  }\n}")
    assert refusal(la, p, "f > for k#1", "y[m]") == (
        "variable.local_accumulator: 'y[m]' reads 'm', which is written at line 5: it is not the same cell at "
        "every iteration of for k (line 3)")
    assert "'y[0]' is accessed at line 9 otherwise than by accumulating into it" in refusal(
        la, p, "f > for k#2", "y[0]")
    assert "may leave it by 'return;', skipping the store after the loop" in refusal(la, p, "f > for k#3", "y[0]")
    q = ck.parse("void f(int n, float *y, const float *x) {\n  int m = 0;\n  int *p = &m;\n"
                 "  for (int k = 0; k < n; k++) {\n    y[m] += x[k];\n    *p = k;\n  }\n}")
    assert refusal(la, q, "f > for k", "y[m]") == (
        "variable.local_accumulator: 'y[m]' uses 'm', whose address is taken in f: the loop may change it through a "
        "pointer")
    par = ck.parse("void f(int n, float *y, const float *x) {\n  float s = 0.0f;\n"
                   "#pragma omp parallel for reduction(+:s)\n  for (int k = 0; k < n; k++) {\n    s += x[k];\n  }\n"
                   "  y[0] = s;\n}")
    assert "has pragmas (#pragma omp parallel for reduction(+:s))" in refusal(la, par, "f > for k", "s")
