"""function.inline on the transformer layer, and its refusals."""
from __future__ import annotations

import textwrap

import pytest

from optitrust_py.errors import TransformError
from optitrust_py.target import Resolver
from optitrust_py.tree import get
from transformations import function


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(TransformError) as info:
        fn(*args, **kwargs)
    return info.value.message


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
