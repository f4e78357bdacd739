"""function.inline on the transformer layer, and its refusals."""
from __future__ import annotations

import textwrap

import pytest

from optitrust_py.errors import TargetError
from optitrust_py.target import Resolver
from optitrust_py.tree import get
from optitrust_py import ir
from transformations import function, loop
from helpers import matmul_args, refusal


def c(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


def token_args(ck, L=2, dim=8, hidden=12, H=2, KVH=1, SMAX=4, pos=2):
    kv = dim * KVH // H
    f = ck.floats
    return [L, dim, hidden, H, KVH, SMAX, pos,
            f(L * dim), f(L * dim * dim), f(L * kv * dim), f(L * kv * dim), f(L * dim * dim), f(L * dim),
            f(L * hidden * dim), f(L * dim * hidden), f(L * hidden * dim), f(dim),
            f(L * SMAX * kv), f(L * SMAX * kv)]


def test_inline_matvec_in_transformer_token(ck):
    p = ck.load("transformer.c")
    r = function.inline.apply(p, "transformer_token > call matvec#1")
    assert ck.contains(ck.function_text(r.program, "transformer_token"), """
        rmsnorm_vec(dim, x, &rms_att_w[l * dim], xb);
        {
          int n = dim;
          int d = dim;
          const float *W = &wq[l * dim * dim];
          const float *x_1 = xb;
          float *y = q;
          for (int i = 0; i < d; i++) {
            y[i] = 0.0f;
            for (int j = 0; j < n; j++) {
              y[i] += W[i * n + j] * x_1[j];
            }
          }
        }
        matvec(dim, kv_dim, &wk[l * kv_dim * dim], xb, k);""")
    (ob,) = r.obligations
    assert ob.kind == "inline" and ob.function == "transformer_token"
    assert get(r.program, ob.paths[0]).stmts[0].decl.name == "n"
    assert r.fp == "exact"
    ck.check(p, r.program, "transformer_token", token_args(ck))


def test_inline_every_call_of_transformer_token(ck):
    p = ck.load("transformer.c")
    q = p
    for callee, count in (("matvec", 7), ("rmsnorm_vec", 2), ("softmax_vec", 1)):
        for _ in range(count):
            q = function.inline.apply(q, f"transformer_token > call {callee}#1").program
    text = ck.function_text(q, "transformer_token")
    # fresh names avoid every name of the caller, those of earlier inlinings too (x_1 ... x_9)
    assert "matvec(" not in text and "rmsnorm_vec(" not in text and "softmax_vec(" not in text
    assert ck.contains(text, """
          {
            int n = pos + 1;
            float *x_10 = att;
            float max_val = x_10[0];""")
    ck.check(p, q, "transformer_token", token_args(ck))
    # the prefill, which calls the token function, is unchanged in behaviour too
    T = 3
    args = token_args(ck, SMAX=4)
    prefill = [T] + args[:6] + args[7:16] + [ck.floats(T * 8)] + args[17:]
    ck.same_outputs(p, q, "transformer_prefill", prefill)


DOT = c("""
    float dot(int n, const float *a, const float *b) {
      float s = 0.0f;
      for (int i = 0; i < n; i++) {
        s += a[i] * b[i];
      }
      return s;
    }

    int half(float v) {
      return v / 2;
    }

    void rows(int n, int m, const float *W, const float *x, float *y) {
      for (int i = 0; i < m; i++) {
        float s;
        s = dot(n, &W[i * n], x);
        y[i] = s;
      }
      y[0] = half(y[0]);
    }
    """)


def test_inline_with_result(ck):
    p = ck.parse(DOT, "dot.c")
    r = function.inline.apply(p, "rows > call dot")
    assert ck.contains(ck.function_text(r.program, "rows"), """
        float s;
        {
          int n_1 = n;
          const float *a = &W[i * n];
          const float *b = x;
          float s_1 = 0.0f;
          for (int i_1 = 0; i_1 < n_1; i_1++) {
            s_1 += a[i_1] * b[i_1];
          }
          s = s_1;
        }
        y[i] = s;""")
    r2 = function.inline.apply(r.program, "rows > call half")
    assert ck.contains(ck.function_text(r2.program, "rows"), """
        {
          float v = y[0];
          y[0] = (int)(v / 2);
        }""")
    ck.check(p, r2.program, "rows", [6, 5, ck.floats(30), ck.floats(6), ck.floats(5)])


def test_inline_refusals(ck):
    t = ck.load("transformer.c")
    assert refusal(function.inline.apply, t, "transformer_token > call sqrtf") == (
        "function.inline: sqrtf is not defined in "
        f"{t.file}; only calls to functions defined there can be inlined")
    p = ck.parse(c("""
        void clamp(int n, float *x) {
          if (n <= 0) {
            return;
          }
          x[0] = 0.0f;
        }

        int count(int n) {
          static int calls = 0;
          calls += n;
          return calls;
        }

        void f(int n, float *x) {
          clamp(n, x);
          x[1] = 1.0f + count(n);
          n = count(n);
        }
        """), "early.c")
    assert refusal(function.inline.apply, p, "f > call clamp") == (
        "function.inline: clamp returns early (line 3); only a final return can be inlined")
    assert refusal(function.inline.apply, p, "f > call count#1") == (
        "function.inline: the call to count (line 16) must be a statement 'count(...);' or 'x = count(...);'")
    assert refusal(function.inline.apply, p, "f > call count#2") == (
        "function.inline: count has a static local 'calls' (line 9)")
    m = ck.load("matvec.c")
    assert Resolver(m).matches("matvec > for i")  # no calls in matvec: the target itself fails
    with pytest.raises(Exception, match="matches nothing"):
        function.inline.apply(m, "matvec > call matvec")


def test_inline_refuses_a_hidden_global(ck):
    p = ck.parse(c("""
        float scale;

        void mul(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = x[i] * scale;
          }
        }

        void f(int n, float *x) {
          float scale = 2.0f;
          mul(n, x);
          x[0] = scale;
        }
        """), "g.c")
    assert refusal(function.inline.apply, p, "f > call mul") == (
        "function.inline: mul uses the global 'scale', which a local of f hides at line 11")


# ----------------------------------------------------------------- extract


def rmsnorm_args(ck, R=3, C=6):
    return [R, C, ck.floats(R * C), ck.floats(C), ck.floats(R * C)]


def test_extract_matmul_k_loop(ck):
    p = ck.load("matmul.c")
    r = function.extract.apply(p, "matmul > for k", "matmul_k")
    assert ck.function_text(r.program, "matmul_k") == c("""
        void matmul_k(int N, int K, const float *A, const float *B, float *C, int i, int j) {
          for (int k = 0; k < K; k++) {
            C[i * N + j] += A[i * K + k] * B[k * N + j];
          }
        }""").strip()
    assert ck.contains(ck.function_text(r.program, "matmul"), """
          C[i * N + j] = 0.0f;
          matmul_k(N, K, A, B, C, i, j);""")
    assert [f.name for f in r.program.functions()] == ["matmul_k", "matmul"]
    (ob,) = r.obligations
    assert ob.kind == "inline" and ob.function == "matmul"
    assert get(r.program, ob.paths[0]).expr.name == "matmul_k" and get(r.program, ob.paths[1]).name == "matmul_k"
    assert r.fp == "exact"
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 4, 5))


def test_extract_rmsnorm_normalisation(ck):
    p = ck.load("rmsnorm.c")
    r = function.extract.apply(p, "rmsnorm > for j#2", "rmsnorm_scale")
    assert ck.contains(ck.function_text(r.program, "rmsnorm_scale"), """
        void rmsnorm_scale(int C, const float *x, const float *w, float *y, int i, float ss) {
          for (int j = 0; j < C; j++) {
            y[i * C + j] = w[j] * (ss * x[i * C + j]);
          }
        }""")
    assert ck.contains(ck.function_text(r.program, "rmsnorm"), """
        ss = 1.0f / sqrtf(ss);
        rmsnorm_scale(C, x, w, y, i, ss);""")
    ck.check(p, r.program, "rmsnorm", rmsnorm_args(ck))


def test_extract_range_passes_written_scalars_by_pointer(ck):
    p = ck.load("rmsnorm.c")
    r = function.extract.apply(p, "rmsnorm > for j#1", "sum_squares", count=3)
    assert ck.function_text(r.program, "sum_squares") == c("""
        void sum_squares(int C, const float *x, int i, float *ss) {
          for (int j = 0; j < C; j++) {
            *ss += x[i * C + j] * x[i * C + j];
          }
          *ss = *ss / C + 1e-5f;
          *ss = 1.0f / sqrtf(*ss);
        }""").strip()
    assert ck.contains(ck.function_text(r.program, "rmsnorm"), """
        float ss = 0.0f;
        sum_squares(C, x, i, &ss);
        for (int j = 0; j < C; j++) {""")
    ck.check(p, r.program, "rmsnorm", rmsnorm_args(ck))


def test_extract_then_inline_gives_back_the_code(ck):
    p = ck.load("matmul.c")
    q = function.extract.apply(p, "matmul > for k", "matmul_k").program
    back = function.inline.apply(q, "matmul > call matmul_k").program
    assert ck.contains(ck.function_text(back, "matmul"), """
          C[i * N + j] = 0.0f;
          {
            int N_1 = N;
            int K_1 = K;
            const float *A_1 = A;
            const float *B_1 = B;
            float *C_1 = C;
            int i_1 = i;
            int j_1 = j;
            for (int k = 0; k < K_1; k++) {
              C_1[i_1 * N_1 + j_1] += A_1[i_1 * K_1 + k] * B_1[k * N_1 + j_1];
            }
          }""")
    ck.check(p, back, "matmul", matmul_args(ck, 3, 4, 5))
    r = ck.load("rmsnorm.c")
    q = function.extract.apply(r, "rmsnorm > for j#1", "sum_squares", count=3).program
    back = function.inline.apply(q, "rmsnorm > call sum_squares").program
    assert ck.contains(ck.function_text(back, "rmsnorm"), """
          float *ss_1 = &ss;
          for (int j = 0; j < C_1; j++) {
            *ss_1 += x_1[i_1 * C_1 + j] * x_1[i_1 * C_1 + j];
          }""")
    ck.check(r, back, "rmsnorm", rmsnorm_args(ck))


def test_extract_attention_heads_of_transformer(ck):
    p = ck.load("transformer.c")
    r = function.extract.apply(p, "transformer_token > for h", "attention_heads")
    assert ck.function_text(r.program, "attention_heads").startswith(
        "void attention_heads(int H, int SMAX, int pos, float *k_cache, float *v_cache, int head_size, int kv_dim, "
        "int kv_mul, float *xb, float *q, float *att, int l) {")
    assert ck.contains(ck.function_text(r.program, "transformer_token"), """
        attention_heads(H, SMAX, pos, k_cache, v_cache, head_size, kv_dim, kv_mul, xb, q, att, l);""")
    ck.check(p, r.program, "transformer_token", token_args(ck))


LOCALS = c("""
    void sums(int n, float *y) {
      if (n <= 0) {
        return;
      }
      float buf[4];
      float acc = 0.0f;
      float *pa = &acc;
      int at = -1;
      for (int i = 0; i < 4; i++) {
        buf[i] = y[i];
      }
      for (int i = 0; i < 4; i++) {
        if (buf[i] > 0.0f) {
          at = i;
          break;
        }
      }
      for (int i = 0; i < 4; i++) {
        *pa += buf[i] * sizeof(buf);
        y[i] = acc;
      }
      y[0] = acc + n + at;
    }
    """)


def test_extract_arrays_and_aliased_scalars(ck):
    p = ck.parse(LOCALS, "locals.c")
    r = function.extract.apply(p, "sums > for i#1", "load", count=2)
    assert ck.contains(ck.function_text(r.program, "load"), """
        void load(float *y, float *buf, int *at) {
          for (int i = 0; i < 4; i++) {
            buf[i] = y[i];
          }
          for (int i = 0; i < 4; i++) {
            if (buf[i] > 0.0f) {
              *at = i;
              break;
            }
          }
        }""")
    assert ck.contains(ck.function_text(r.program, "sums"), """
          int at = -1;
          load(y, buf, &at);
          for (int i = 0; i < 4; i++) {""")
    ck.check(p, r.program, "sums", [3, ck.floats(4)])
    # acc's address is taken in sums (pa = &acc), so the write through pa must reach the caller's acc
    q = function.extract.apply(p, "sums > 'y[i] = acc'", "store")
    assert ck.function_text(q.program, "store") == c("""
        void store(float *y, float *acc, int i) {
          y[i] = *acc;
        }""").strip()
    ck.check(p, q.program, "sums", [3, ck.floats(4)])
    # a struct's array field can be reached without '&' (p = s.a): structs are passed by pointer
    st = ck.parse(c("""
        struct acc {
          float a[2];
          int n;
        };

        void f(float *y) {
          struct acc s = {{0.0f, 0.0f}, 3};
          float *p = s.a;
          p[0] = y[0];
          y[1] = s.a[0] + s.n;
        }
        """), "struct.c")
    r = function.extract.apply(st, "f > 'y[1] ='", "g")
    assert ck.contains(ck.function_text(r.program, "g"), "y[1] = (*s).a[0] + (*s).n;")
    assert ck.contains(ck.function_text(r.program, "f"), "g(y, &s);")
    ck.check(st, r.program, "f", [ck.floats(2)])


def test_extract_refusals(ck):
    m = ck.load("matmul.c")
    assert refusal(function.extract.apply, m, "matmul > for k", "matmul") == (
        "function.extract: a function or global named 'matmul' already exists; choose another name")
    assert refusal(function.extract.apply, m, "matmul > for k", "sqrtf") == (
        "function.extract: a function or global named 'sqrtf' already exists; choose another name")
    assert refusal(function.extract.apply, m, "matmul > for k", "j") == (
        "function.extract: the local 'j' of matmul would hide the new function at line 5; choose another name")
    assert refusal(function.extract.apply, m, "matmul > for k", "for") == (
        "function.extract: 'for' is not a valid C function name")
    assert refusal(function.extract.apply, m, "matmul > for k", "inner", count=2) == (
        "function.extract: there are only 1 statement(s) from 'for (int k = 0; k < K; k++) {' (line 5) to the "
        "end of its block, not 2")
    assert refusal(function.extract.apply, m, "matmul > for k", "inner", count=0) == (
        "function.extract: count must be a positive integer (the number of statements to extract), got 0")
    with pytest.raises(TargetError, match="must name a statement"):
        function.extract.apply(m, "matmul > expr 'A[i * K + k]'", "inner")
    r = ck.load("rmsnorm.c")
    assert refusal(function.extract.apply, r, "rmsnorm > def ss", "init", count=2) == (
        "function.extract: 'ss' is declared in the extracted code ('float ss = 0.0f;' (line 5) and the 1 "
        "statement(s) after it) and used after it; extract the statements that use it too, or declare it before")
    p = ck.parse(LOCALS, "locals.c")
    assert refusal(function.extract.apply, p, "sums > 'if (n <= 0)'", "guard") == (
        "function.extract: 'return;' in the extracted code ('if (n <= 0) {' (line 2)) leaves it or is a jump "
        "target")
    assert refusal(function.extract.apply, p, "sums > 'if (buf[i] > 0.0f)'", "hit") == (
        "function.extract: 'break;' in the extracted code ('if (buf[i] > 0.0f) {' (line 13)) leaves it or is a "
        "jump target")
    assert refusal(function.extract.apply, p, "sums > for i#3", "acc_loop") == (
        "function.extract: the extracted code ('for (int i = 0; i < 4; i++) {' (line 18)) applies 'sizeof' to the local array 'buf', "
        "which becomes a pointer in acc_loop")
    rec = ck.parse(c("""
        void down(int n, float *x) {
          if (n > 0) {
            x[n] = 0.0f;
            down(n - 1, x);
          }
        }
        """), "rec.c")
    assert refusal(function.extract.apply, rec, "down > 'if (n > 0)'", "step") == (
        "function.extract: the extracted code ('if (n > 0) {' (line 2)) uses 'down', which is not declared before down")
    local = ck.parse(c("""
        void f(float *y) {
          typedef float real;
          real s = y[0];
          y[1] = s;
        }
        """), "local.c")
    assert refusal(function.extract.apply, local, "f > 'y[1] ='", "g") == (
        "function.extract: the extracted code ('y[1] = s;' (line 4)) uses 's', whose type is a type declared inside "
        "the function; it cannot be a parameter of g")


# ----------------------------------------------------------------- specialize


def test_specialize_matmul_dispatches_on_K(ck):
    p = ck.load("matmul.c")
    r = function.specialize.apply(p, "matmul", "K", 5)
    assert ck.function_text(r.program, "matmul_K5") == c("""
        void matmul_K5(int M, int N, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
              for (int k = 0; k < 5; k++) {
                C[i * N + j] += A[i * 5 + k] * B[k * N + j];
              }
            }
          }
        }""").strip()
    assert ck.contains(ck.function_text(r.program, "matmul"), """
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          if (K == 5) {
            matmul_K5(M, N, A, B, C);
            return;
          }
          for (int i = 0; i < M; i++) {""")
    assert [f.name for f in r.program.functions()] == ["matmul_K5", "matmul"]
    assert r.obligations == () and r.fp == "exact"
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 4, 5))  # through the copy
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 4, 3))  # through the original body
    # the literal bound now lets the k loop be unrolled completely
    q = loop.unroll.apply(r.program, "matmul_K5 > for k").program
    assert ck.contains(ck.function_text(q, "matmul_K5"), """
          C[i * N + j] += A[i * 5 + 4] * B[4 * N + j];""")
    ck.check(p, q, "matmul", matmul_args(ck, 3, 4, 5))


def test_specialize_transformer_matvec_calls(ck):
    p = ck.load("transformer.c")
    r = function.specialize.apply(p, "transformer_token > call matvec#1", "n", 8)
    assert ck.function_text(r.program, "matvec_n8") == c("""
        void matvec_n8(int d, const float *W, const float *x, float *y) {
          for (int i = 0; i < d; i++) {
            y[i] = 0.0f;
            for (int j = 0; j < 8; j++) {
              y[i] += W[i * 8 + j] * x[j];
            }
          }
        }""").strip()
    assert ck.contains(ck.function_text(r.program, "transformer_token"), """
        matvec_n8(dim, &wq[l * dim * dim], xb, q);
        matvec(dim, kv_dim, &wk[l * kv_dim * dim], xb, k);""")
    (ob,) = r.obligations
    assert ob.kind == "equals" and ob.function == "transformer_token"
    assert ob.exprs == (ir.Var("dim"), ir.Const("8"))
    assert get(r.program, ob.paths[0]).name == "matvec_n8"
    ck.check(p, r.program, "transformer_token", token_args(ck, dim=8))
    # the next call reuses the same copy
    r2 = function.specialize.apply(r.program, "transformer_token > call matvec#1", "n", 8)
    assert [f.name for f in r2.program.functions()].count("matvec_n8") == 1
    assert ck.contains(ck.function_text(r2.program, "transformer_token"), """
        matvec_n8(dim, &wq[l * dim * dim], xb, q);
        matvec_n8(kv_dim, &wk[l * kv_dim * dim], xb, k);""")
    ck.check(p, r2.program, "transformer_token", token_args(ck, dim=8))


HEAD = c("""
    void matvec(int N, int D, const float *W, const float *x, float *y) {
      for (int i = 0; i < D; i++) {
        y[i] = 0.0f;
        for (int j = 0; j < N; j++) {
          y[i] += W[i * N + j] * x[j];
        }
      }
    }

    void head(const float *W, const float *x, float *y) {
      matvec(6, 4, W, x, y);
    }
    """)


def test_specialize_call_with_constant_arguments(ck):
    p = ck.parse(HEAD, "head.c")
    r = function.specialize.apply(p, "head > call matvec", "N", 6)
    assert r.obligations == ()
    r = function.specialize.apply(r.program, "head > call matvec_N6", "D", 4)
    assert ck.function_text(r.program, "matvec_N6_D4") == c("""
        void matvec_N6_D4(const float *W, const float *x, float *y) {
          for (int i = 0; i < 4; i++) {
            y[i] = 0.0f;
            for (int j = 0; j < 6; j++) {
              y[i] += W[i * 6 + j] * x[j];
            }
          }
        }""").strip()
    assert ck.contains(ck.function_text(r.program, "head"), "matvec_N6_D4(W, x, y);")
    assert r.obligations == ()
    ck.check(p, r.program, "head", [ck.floats(24), ck.floats(6), ck.floats(4)])


def test_specialize_a_function_returning_a_value(ck):
    p = ck.parse(DOT, "dot.c")
    r = function.specialize.apply(p, "dot", "n", 4, name="dot4")
    assert ck.contains(ck.function_text(r.program, "dot"), """
        float dot(int n, const float *a, const float *b) {
          if (n == 4) {
            return dot4(a, b);
          }""")
    assert ck.contains(ck.function_text(r.program, "dot4"), "for (int i = 0; i < 4; i++) {")
    for n in (4, 6):
        ck.check(p, r.program, "rows", [n, 5, ck.floats(n * 5), ck.floats(n), ck.floats(5)])
    # a parameter of another integer type gets a cast constant, so its arithmetic keeps its type
    u = ck.parse(c("""
        void scale(unsigned n, float *x) {
          for (unsigned i = 0; i < n; i++) {
            x[i] = x[i] * (n - 5);
          }
        }
        """), "u.c")
    r = function.specialize.apply(u, "scale", "n", 3)
    assert ck.contains(ck.function_text(r.program, "scale_n3"), "x[i] = x[i] * ((unsigned)3 - 5);")
    assert ck.contains(ck.function_text(r.program, "scale"), "if (n == (unsigned)3) {")
    ck.check(u, r.program, "scale", [3, ck.floats(3)])


def test_specialize_refusals(ck):
    m = ck.load("matmul.c")
    assert refusal(function.specialize.apply, m, "matmul", "X", 5) == (
        "function.specialize: 'X' is not a parameter of matmul (parameters: M, N, K, A, B, C)")
    assert refusal(function.specialize.apply, m, "matmul", "K", "N") == (
        "function.specialize: the value must be an integer constant, got 'N'")
    assert refusal(function.specialize.apply, m, "matmul", "K", 2.5) == (
        "function.specialize: the value must be an integer constant, got 2.5")
    assert refusal(function.specialize.apply, m, "matmul", "A", 0) == (
        "function.specialize: 'A' has type 'const float *'; only integer parameters can be specialized")
    assert refusal(function.specialize.apply, m, "matmul", "K", 2 ** 40) == (
        "function.specialize: 1099511627776 does not fit in the type 'int' of 'K'")
    assert refusal(function.specialize.apply, m, "matmul", "K", 5, name="matmul") == (
        "function.specialize: a function or global named 'matmul' already exists (and is not this "
        "specialization); choose another name")
    assert refusal(function.specialize.apply, m, "matmul", "K", 5, name="5x") == (
        "function.specialize: '5x' is not a valid C function name")
    t = ck.load("transformer.c")
    assert refusal(function.specialize.apply, t, "transformer_token > call sqrtf", "x", 1) == (
        f"function.specialize: sqrtf is not defined in {t.file}; only functions defined there can be specialized")
    h = ck.parse(HEAD, "head.c")
    assert refusal(function.specialize.apply, h, "head > call matvec", "N", 8) == (
        "function.specialize: the argument for 'N' at the call to matvec (line 11) is 6, not 8")
    p = ck.parse(c("""
        void clear(int n, float *x);

        void early(int n, float *x) {
          clear(n, x);
        }

        void clear(int n, float *x) {
          while (n > 0) {
            n--;
            x[n] = 0.0f;
          }
        }

        int counter(int n) {
          static int calls = 0;
          calls += n;
          return calls;
        }

        void down(int n, float *x) {
          if (n > 0) {
            down(n - 1, x);
          }
        }

        int user(int n, float *x) {
          down(n++, x);
          return n;
        }
        """), "bad.c")
    assert refusal(function.specialize.apply, p, "clear", "n", 4) == (
        "function.specialize: clear assigns 'n' or takes its address, so it does not hold 4 throughout the body")
    assert refusal(function.specialize.apply, p, "early > call clear", "x", 4) == (
        "function.specialize: 'x' has type 'float *'; only integer parameters can be specialized")
    assert refusal(function.specialize.apply, p, "counter", "n", 1) == (
        "function.specialize: counter has a static local 'calls' (line 15), which the copy would not share")
    assert refusal(function.specialize.apply, p, "down", "n", 1) == (
        "function.specialize: down calls itself")
    assert refusal(function.specialize.apply, p, "user > call down", "n", 1) == (
        "function.specialize: down calls itself")
    q = ck.parse(c("""
        void fill(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 1.0f;
          }
        }

        void caller(int n, float *x) {
          fill(n++, x);
        }

        void later(float *x);

        void first(float *x) {
          later(x);
        }

        void later(float *x) {
          fill(3, x);
        }
        """), "calls.c")
    assert refusal(function.specialize.apply, q, "caller > call fill", "n", 3) == (
        "function.specialize: the argument 'n++' for 'n' at the call to fill (line 8) has side effects, which "
        "the specialized call would drop")
    assert refusal(function.specialize.apply, q, "caller > call fill", "n", 3, name="n") == (
        "function.specialize: the local 'n' of caller would hide the copy at the call to fill (line 8); choose "
        "another name")
    assert refusal(function.specialize.apply, q, "fill", "n", 3, name="x") == (
        "function.specialize: a parameter of fill is named 'x'; choose another name")
    with pytest.raises(TargetError, match="must name a call or a function definition"):
        function.specialize.apply(q, "fill > for i", "n", 3)
