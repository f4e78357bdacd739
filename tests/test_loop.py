"""loop.tile, loop.swap, loop.fission on the real kernels."""
from __future__ import annotations

import textwrap

import pytest

from optitrust_py import ir
from optitrust_py.errors import TargetError, TransformError
from optitrust_py.level2 import check_step
from optitrust_py.spec import parse_spec_file, parse_spec_text
from transformations import loop
from conftest import ROOT
from helpers import attention_args, matmul_args, refusal, refuted


def c(text: str) -> str:
    return textwrap.dedent(text).strip()


# ----------------------------------------------------------------- tile


def test_tile_divides(ck):
    p = ck.load("matmul.c")
    r = loop.tile.apply(p, "matmul > for j", 4)
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int bj = 0; bj < N; bj += 4) {
              for (int j = bj; j < bj + 4; j++) {
                C[i * N + j] = 0.0f;
                for (int k = 0; k < K; k++) {
                  C[i * N + j] += A[i * K + k] * B[k * N + j];
                }
              }
            }
          }
        }""")
    (ob,) = r.obligations
    assert ob.kind == "divides" and ob.function == "matmul"
    assert ob.exprs == (ir.Const("4"), ir.Var("N"))
    assert isinstance(ir_get(r.program, ob.paths[0]), ir.For) and ir_get(r.program, ob.paths[0]).index == "bj"
    assert r.fp == "exact"
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 8, 5))


def ir_get(program, path):
    from optitrust_py.tree import get
    return get(program, path)


def test_tile_min_with_remainder(ck):
    p = ck.load("matmul.c")
    r = loop.tile.apply(p, "matmul > for i", 3, outer="ii", mode="min")
    text = ck.function_text(r.program, "matmul")
    assert ck.contains(text, """
          for (int ii = 0; ii < M; ii += 3) {
            for (int i = ii; i < (ii + 3 < M ? ii + 3 : M); i++) {
              for (int j = 0; j < N; j++) {""")
    assert r.obligations == ()
    ck.check(p, r.program, "matmul", matmul_args(ck, 7, 4, 5))


def test_tile_guard_with_remainder(ck):
    p = ck.load("matmul.c")
    r = loop.tile.apply(p, "matmul > for k", 4, mode="guard")
    assert ck.contains(ck.function_text(r.program, "matmul"), """
              for (int bk = 0; bk < K; bk += 4) {
                for (int k = bk; k < bk + 4; k++) {
                  if (k < K) {
                    C[i * N + j] += A[i * K + k] * B[k * N + j];
                  }
                }
              }""")
    assert r.obligations == ()
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 4, 7))


def test_tile_triangular_loop_of_attention(ck):
    p = ck.load("attention.c")
    r = loop.tile.apply(p, "attention > for j#2", 2, mode="min")
    assert "for (int bj = 0; bj < i + 1; bj += 2) {" in ck.function_text(r.program, "attention")
    assert "for (int j = bj; j < (bj + 2 < i + 1 ? bj + 2 : i + 1); j++) {" in ck.function_text(r.program, "attention")
    ck.check(p, r.program, "attention", attention_args(ck, 2, 5, 4))


def test_tile_outer_name_is_fresh(ck):
    p = ck.parse("void f(int n, float *bi) { for (int i = 0; i < n; i++) { bi[i] = 0.0f; } }")
    r = loop.tile.apply(p, "f > for i", 8)
    assert "for (int bi_1 = 0; bi_1 < n; bi_1 += 8) {" in ck.function_text(r.program, "f")


@pytest.mark.parametrize("size", [0, -4, 2.5, "32", True, None])
def test_tile_refuses_bad_sizes(ck, size):
    p = ck.load("matmul.c")
    msg = refusal(loop.tile.apply, p, "matmul > for i", size)
    assert "loop.tile: the tile size must be a positive integer" in msg


def test_tile_refusals(ck):
    p = ck.load("matmul.c")
    assert "mode must be one of divides, min, guard" in refusal(loop.tile.apply, p, "matmul > for i", 4,
                                                                 mode="exact")
    assert "outer index name 'k' is already used in matmul" in refusal(loop.tile.apply, p, "matmul > for i", 4,
                                                                        outer="k")
    assert "not a valid C name" in refusal(loop.tile.apply, p, "matmul > for i", 4, outer="int")
    t = ck.load("transformer.c")
    msg = refusal(loop.tile.apply, t, "transformer_token > for i#1", 4)
    assert msg == ("loop.tile: for i (line 59) has step '2'; only unit-step loops can be tiled")
    q = ck.parse("void f(int n, float *x) {\n#pragma omp parallel for\n"
                 "  for (int i = 0; i < n; i++) { x[i] = 0.0f; }\n}")
    assert "has pragmas (#pragma omp parallel for)" in refusal(loop.tile.apply, q, "f > for i", 4)
    w = ck.parse("void f(int n, float *x) { for (int i = 0; i < n; i++) { x[i] = 0.0f; n = n - 1; } }")
    assert "the body writes 'n', which the bounds of for i (line 2) read" in refusal(loop.tile.apply, w,
                                                                                      "f > for i", 4)
    with pytest.raises(TargetError):
        loop.tile.apply(p, "matmul > for z", 4)


# ----------------------------------------------------------------- swap


def test_swap_matmul(ck):
    p = ck.load("matmul.c")
    r = loop.swap.apply(p, "matmul > for i")
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int j = 0; j < N; j++) {
            for (int i = 0; i < M; i++) {
              C[i * N + j] = 0.0f;
              for (int k = 0; k < K; k++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }
            }
          }
        }""")
    (ob,) = r.obligations
    assert ob.kind == "swap_loops" and ob.paths == ((("items", 0), ("body", None), ("stmts", 0)),)
    ck.check(p, r.program, "matmul", matmul_args(ck, 4, 6, 5))


def test_swap_attention_heads_and_queries(ck):
    p = ck.load("attention.c")
    r = loop.swap.apply(p, "attention > for h")
    assert ck.contains(ck.function_text(r.program, "attention"), """
          for (int i = 0; i < S; i++) {
            for (int h = 0; h < H; h++) {
              for (int j = 0; j <= i; j++) {""")
    ck.check(p, r.program, "attention", attention_args(ck, 2, 5, 4))


def test_swap_keeps_pragmas_with_their_loop(ck):
    p = ck.parse(c("""
        void f(int n, int m, float *x) {
        #pragma omp parallel for
          for (int i = 0; i < n; i++) {
            for (int j = 0; j < m; j++) {
              x[i * m + j] = 0.0f;
            }
          }
        }"""))
    r = loop.swap.apply(p, "f > for i")
    assert ck.function_text(r.program, "f") == c("""
        void f(int n, int m, float *x) {
          for (int j = 0; j < m; j++) {
            #pragma omp parallel for
            for (int i = 0; i < n; i++) {
              x[i * m + j] = 0.0f;
            }
          }
        }""")
    ck.roundtrip(r.program)


def test_swap_refusals(ck):
    p = ck.load("matmul.c")
    assert refusal(loop.swap.apply, p, "matmul > for j") == (
        "loop.swap: for j (line 3) is not a perfect loop nest: its body does not start with a loop")
    f = loop.fission.apply(p, "matmul > for j > after 'C[i * N + j] = 0.0f'").program
    assert refusal(loop.swap.apply, f, "matmul > for i") == (
        "loop.swap: for j (line 3) is not the only statement in the body of for i (line 2)")
    # a triangular nest: the score loop of attention, once split off the rest of the i body
    a = ck.load("attention.c")
    a = loop.fission.apply(a, "attention > for i > after 'for (int j = 0; j <= i; j++)'#1").program
    msg = refusal(loop.swap.apply, a, "attention > for i#1")
    assert msg == ("loop.swap: the bounds of for j (line 8) depend on the index of for i (line 7) "
                   "('i + 1'): the nest is not rectangular")
    q = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
        #pragma omp parallel for collapse(2)
            for (int j = 0; j < n; j++) {
              x[i * n + j] = 0.0f;
            }
          }
        }"""))
    assert "collapse(2)', which is about the nest" in refusal(loop.swap.apply, q, "f > for i")
    r = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j++) {
              __xwrites("x[i * n + j] ~> Cell");
              x[i * n + j] = 0.0f;
            }
          }
        }"""))
    assert "for j (line 3) has a loop contract" in refusal(loop.swap.apply, r, "f > for i")


# ----------------------------------------------------------------- fission


def test_fission_matmul(ck):
    p = ck.load("matmul.c")
    r = loop.fission.apply(p, "matmul > for j > after 'C[i * N + j] = 0.0f'")
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
            }
            for (int j = 0; j < N; j++) {
              for (int k = 0; k < K; k++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }
            }
          }
        }""")
    (ob,) = r.obligations
    base = (("items", 0), ("body", None), ("stmts", 0), ("body", None))
    assert ob.kind == "fission" and ob.paths == (base + (("stmts", 0),), base + (("stmts", 1),))
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 5, 4))


def test_fission_then_swap_gives_ikj_order(ck):
    p = ck.load("matmul.c")
    q = loop.fission.apply(p, "matmul > for j > after 'C[i * N + j] = 0.0f'").program
    q = loop.swap.apply(q, "matmul > for j#2").program
    assert ck.contains(ck.function_text(q, "matmul"), """
            for (int k = 0; k < K; k++) {
              for (int j = 0; j < N; j++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];""")
    ck.check(p, q, "matmul", matmul_args(ck, 3, 5, 4))


def test_fission_refusals(ck):
    a = ck.load("attention.c")
    msg = refusal(loop.fission.apply, a, "attention > for j#1 > after 'float s = 0.0f'")
    assert msg == ("loop.fission: 's' is declared before the cut (line 9) and used after it, in the body of "
                   "for j (line 8); hoist it out of the loop first")
    p = ck.load("matmul.c")
    assert "at the start of the body of for j (line 3)" in refusal(
        loop.fission.apply, p, "matmul > for j > before 'C[i * N + j] = 0.0f'")
    assert "at the end of the body of for k (line 5)" in refusal(
        loop.fission.apply, p, "matmul > for k > after 'C[i * N + j] +='")
    assert "is not directly in the body of a canonical for loop" in refusal(
        loop.fission.apply, a, "attention > after 'float *scores = malloc(S * sizeof(float))'")
    q = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            if (x[i] < 0.0f) {
              continue;
            }
            x[i] = 2.0f * x[i];
          }
        }"""))
    assert refusal(loop.fission.apply, q, "f > for i > after 'if'") == (
        "loop.fission: 'continue;' leaves the body of for i (line 2) early")


def matvec_args(ck, N, D):
    return [N, D, ck.floats(D * N), ck.floats(N), ck.floats(D)]


# ----------------------------------------------------------------- fusion


def test_fusion_undoes_fission_on_matmul(ck):
    p = ck.load("matmul.c")
    q = loop.fission.apply(p, "matmul > for j > after 'C[i * N + j] = 0.0f'").program
    r = loop.fusion.apply(q, "matmul > for j#1")
    assert r.program == p
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
              for (int k = 0; k < K; k++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }
            }
          }
        }""")
    (ob,) = r.obligations
    assert ob.kind == "fusion" and ob.function == "matmul"
    assert ob.paths == ((("items", 0), ("body", None), ("stmts", 0), ("body", None), ("stmts", 0)),)
    assert r.fp == "exact"
    ck.check(q, r.program, "matmul", matmul_args(ck, 3, 5, 4))


def test_fusion_attention_zeroing_with_accumulation(ck):
    # swap the weighted-sum nest so that its outer loop is for d, then fuse it
    # with the loop that zeroes out[...] right before it
    a = ck.load("attention.c")
    s = loop.swap.apply(a, "attention > for j#5").program
    r = loop.fusion.apply(s, "attention > for d#2")
    assert ck.contains(ck.function_text(r.program, "attention"), """
          for (int d = 0; d < D; d++) {
            out[(h * S + i) * D + d] = 0.0f;
            for (int j = 0; j <= i; j++) {
              out[(h * S + i) * D + d] += scores[j] * v[(h * S + j) * D + d];
            }
          }
        }""")
    assert [o.kind for o in r.obligations] == ["fusion"]
    ck.check(a, r.program, "attention", attention_args(ck, 2, 5, 4))


def test_fusion_renames_the_second_index(ck):
    p = ck.parse(c("""
        void f(int n, float *x, float *y) {
          for (int i = 0; i < n; i++) {
            x[i] = 2.0f * x[i];
          }
          for (int j = 0; j < n; j++) {
            float t = x[j] + 1.0f;
            y[j] = t * t;
          }
        }"""))
    r = loop.fusion.apply(p, "f > for i")
    assert ck.function_text(r.program, "f") == c("""
        void f(int n, float *x, float *y) {
          for (int i = 0; i < n; i++) {
            x[i] = 2.0f * x[i];
            float t = x[i] + 1.0f;
            y[i] = t * t;
          }
        }""")
    ck.check(p, r.program, "f", [9, ck.floats(9), ck.floats(9)])
    # level 2 compares the second loop's iteration with the first's by their own indices
    assert check_step(p, r.program, r.obligations, {}).ok


def test_fusion_compares_the_ranges_as_integers(ck):
    """`b + 4` and `4 + b` bound the same loop (loop.shift writes the
    second): fused, the first's bounds kept; `b + 3` is another range."""
    def two(stop: str) -> ir.Program:
        return ck.parse(c(f"""
            void f(int n, int b, float *x) {{
              for (int i = b; i < b + 4; i++) {{
                x[i] = 2.0f * x[i];
              }}
              for (int j = b; j < {stop}; j++) {{
                x[j] = x[j] + 1.0f;
              }}
            }}"""))
    p = two("4 + b")
    r = loop.fusion.apply(p, "f > for i")
    assert "for (int i = b; i < b + 4; i++) {" in ck.function_text(r.program, "f")
    ck.check(p, r.program, "f", [9, 3, ck.floats(9)])
    assert "have different ranges: stop 'b + 4' vs 'b + 3'" in refusal(loop.fusion.apply, two("b + 3"), "f > for i")


def test_fusion_refusals(ck):
    sm = ck.load("softmax.c")
    assert refusal(loop.fusion.apply, sm, "softmax > for j#1") == (
        "loop.fusion: the statement after for j (line 6) is not a canonical for loop "
        "('float sum = 0.0f;', line 11)")
    p = ck.load("matmul.c")
    assert refusal(loop.fusion.apply, p, "matmul > for k") == (
        "loop.fusion: for k (line 5) is the last statement of its block; there is no loop after it")
    a = ck.load("attention.c")
    assert refusal(loop.fusion.apply, a, "attention > for d#2") == (
        "loop.fusion: for d (line 29) and for j (line 32) have different ranges: stop 'D' vs 'i + 1'")
    q = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            float t = x[i];
            x[i] = t * t;
          }
          for (int i = 0; i < n; i++) {
            x[i] = x[i] + t;
          }
        }"""))
    assert refusal(loop.fusion.apply, q, "f > for i#1") == (
        "loop.fusion: 't' is declared in the body of for i (line 2) and used or redeclared in the body of "
        "for i (line 6); rename it first")
    w = ck.parse(c("""
        void f(int n, int k, float *x) {
          for (int k = 0; k < n; k++) {
            x[k] = 0.0f;
          }
          for (int j = 0; j < n; j++) {
            x[j] += k;
          }
        }"""))
    assert refusal(loop.fusion.apply, w, "f > for k") == (
        "loop.fusion: for j (line 5) uses a variable 'k' that the index of for k (line 2) would capture; "
        "rename one of them first")
    e = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            if (x[i] < 0.0f) {
              continue;
            }
            x[i] = 1.0f;
          }
          for (int i = 0; i < n; i++) {
            x[i] += 1.0f;
          }
        }"""))
    assert refusal(loop.fusion.apply, e, "f > for i#1") == (
        "loop.fusion: 'continue;' leaves the body of for i (line 2) early")
    g = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 0.0f;
          }
          for (long i = 0; i < n; i++) {
            x[i] += 1.0f;
          }
        }"""))
    assert "have different types" in refusal(loop.fusion.apply, g, "f > for i#1")


# ----------------------------------------------------------------- unroll


def test_unroll_fully_after_tile_on_matmul(ck):
    p = ck.load("matmul.c")
    t = loop.tile.apply(p, "matmul > for k", 4).program
    r = loop.unroll.apply(t, "matmul > for k")
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
              for (int bk = 0; bk < K; bk += 4) {
                C[i * N + j] += A[i * K + bk] * B[bk * N + j];
                C[i * N + j] += A[i * K + (bk + 1)] * B[(bk + 1) * N + j];
                C[i * N + j] += A[i * K + (bk + 2)] * B[(bk + 2) * N + j];
                C[i * N + j] += A[i * K + (bk + 3)] * B[(bk + 3) * N + j];
              }
            }
          }
        }""")
    assert r.obligations == () and r.fp == "exact"
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 5, 8))


def test_unroll_fully_literal_bounds_with_locals(ck):
    p = ck.parse(c("""
        void f(float *x, float *y) {
          for (int c = 1; c <= 3; c++) {
            float t = x[c];
            y[c] = t * t;
          }
        }"""))
    r = loop.unroll.apply(p, "f > for c")
    assert ck.function_text(r.program, "f") == c("""
        void f(float *x, float *y) {
          {
            float t = x[1];
            y[1] = t * t;
          }
          {
            float t = x[2];
            y[2] = t * t;
          }
          {
            float t = x[3];
            y[3] = t * t;
          }
        }""")
    ck.check(p, r.program, "f", [ck.floats(4), ck.floats(4)])


@pytest.mark.parametrize("N", [10, 8, 3])
def test_unroll_by_factor_matvec(ck, N):
    p = ck.load("matvec.c")
    r = loop.unroll.apply(p, "matvec > for j", factor=4)
    assert ck.function_text(r.program, "matvec") == c("""
        void matvec(int N, int D, const float *W, const float *x, float *y) {
          for (int i = 0; i < D; i++) {
            y[i] = 0.0f;
            for (int j = 0; j < N / 4 * 4; j += 4) {
              y[i] += W[i * N + j] * x[j];
              y[i] += W[i * N + (j + 1)] * x[j + 1];
              y[i] += W[i * N + (j + 2)] * x[j + 2];
              y[i] += W[i * N + (j + 3)] * x[j + 3];
            }
            for (int j = N / 4 * 4; j < N; j++) {
              y[i] += W[i * N + j] * x[j];
            }
          }
        }""")
    assert r.obligations == ()
    ck.check(p, r.program, "matvec", matvec_args(ck, N, 3))


def test_unroll_by_factor_from_nonzero_start_softmax(ck):
    p = ck.load("softmax.c")
    r = loop.unroll.apply(p, "softmax > for j#1", 3)
    text = ck.function_text(r.program, "softmax")
    assert ck.contains(text, """
        for (int j = 1; j < 1 + (C - 1) / 3 * 3; j += 3) {
          if (x[i * C + j] > max_val) {
            max_val = x[i * C + j];
          }
          if (x[i * C + (j + 1)] > max_val) {
            max_val = x[i * C + (j + 1)];
          }
          if (x[i * C + (j + 2)] > max_val) {
            max_val = x[i * C + (j + 2)];
          }
        }
        for (int j = 1 + (C - 1) / 3 * 3; j < C; j++) {""")
    for C in (1, 7, 8):
        ck.check(p, r.program, "softmax", [2, C, ck.floats(2 * C), ck.floats(2 * C)])


def test_unroll_by_factor_triangular_with_locals_attention(ck):
    a = ck.load("attention.c")
    r = loop.unroll.apply(a, "attention > for j#1", factor=2)
    assert ck.contains(ck.function_text(r.program, "attention"), """
          for (int j = 0; j < (i + 1) / 2 * 2; j += 2) {
            {
              float s = 0.0f;
              for (int d = 0; d < D; d++) {
                s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
              }
              scores[j] = s / sqrtf(D);
            }
            {
              float s = 0.0f;
              for (int d = 0; d < D; d++) {
                s += q[(h * S + i) * D + d] * k[(h * S + (j + 1)) * D + d];
              }
              scores[j + 1] = s / sqrtf(D);
            }
          }
          for (int j = (i + 1) / 2 * 2; j <= i; j++) {
            float s = 0.0f;""")
    ck.check(a, r.program, "attention", attention_args(ck, 2, 6, 4))


@pytest.mark.parametrize("factor", [0, -2, 2.5, "4", True])
def test_unroll_refuses_bad_factors(ck, factor):
    p = ck.load("matvec.c")
    assert "loop.unroll: the factor must be a positive integer" in refusal(loop.unroll.apply, p, "matvec > for j",
                                                                          factor)


def test_unroll_refusals(ck):
    p = ck.load("matmul.c")
    assert refusal(loop.unroll.apply, p, "matmul > for i") == (
        "loop.unroll: the iteration count of for i (line 2), from '0' to 'M', is not a compile-time constant; "
        "give a factor")
    t = ck.load("transformer.c")
    assert refusal(loop.unroll.apply, t, "transformer_token > for i#1", 2) == (
        "loop.unroll: for i (line 59) has step '2'; only unit-step loops can be unrolled")
    q = ck.parse(c("""
        void f(float *x) {
          for (int i = 0; i < 4; i++) {
            if (x[i] < 0.0f) {
              break;
            }
            x[i] = 1.0f;
          }
        }"""))
    assert refusal(loop.unroll.apply, q, "f > for i") == "loop.unroll: 'break;' leaves the body of for i (line 2) early"
    e = ck.parse("void f(float *x) { for (int i = 3; i < 3; i++) { x[i] = 0.0f; } }")
    assert "runs no iteration (0)" in refusal(loop.unroll.apply, e, "f > for i")
    g = ck.parse("void f(float *x) {\n#pragma omp simd\n  for (int i = 0; i < 4; i++) { x[i] = 0.0f; }\n}")
    assert "has pragmas (#pragma omp simd)" in refusal(loop.unroll.apply, g, "f > for i")
    w = ck.parse("void f(int n, float *x) { for (int i = 0; i < n; i++) { x[i] = 0.0f; n--; } }")
    assert "the body writes 'n', which the bounds of for i (line 2) read" in refusal(loop.unroll.apply, w,
                                                                                      "f > for i", 2)


# ----------------------------------------------------------------- split


def test_split_matvec_in_halves(ck):
    p = ck.load("matvec.c")
    r = loop.split.apply(p, "matvec > for j", "N / 2")
    assert ck.function_text(r.program, "matvec") == c("""
        void matvec(int N, int D, const float *W, const float *x, float *y) {
          for (int i = 0; i < D; i++) {
            y[i] = 0.0f;
            for (int j = 0; j < N / 2; j++) {
              y[i] += W[i * N + j] * x[j];
            }
            for (int j = N / 2; j < N; j++) {
              y[i] += W[i * N + j] * x[j];
            }
          }
        }""")
    (ob,) = r.obligations
    assert ob.kind == "in_range" and ob.function == "matvec"
    assert ob.exprs == (ir.Const("0"), ir.Binop("/", ir.Var("N"), ir.Const("2")), ir.Var("N"))
    base = (("items", 0), ("body", None), ("stmts", 0), ("body", None))
    assert ob.paths == (base + (("stmts", 1),), base + (("stmts", 2),))
    assert r.fp == "exact"
    for N in (1, 7):
        ck.check(p, r.program, "matvec", matvec_args(ck, N, 3))


def test_split_matmul_at_an_integer(ck):
    p = ck.load("matmul.c")
    r = loop.split.apply(p, "matmul > for k", 3)
    assert ck.contains(ck.function_text(r.program, "matmul"), """
              for (int k = 0; k < 3; k++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }
              for (int k = 3; k < K; k++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }""")
    assert r.obligations[0].exprs == (ir.Const("0"), ir.Const("3"), ir.Var("K"))
    ck.check(p, r.program, "matmul", matmul_args(ck, 2, 3, 5))  # K = 5 >= 3


def test_split_triangular_loop_of_attention(ck):
    a = ck.load("attention.c")
    r = loop.split.apply(a, "attention > for j#4", "i / 2")
    assert ck.contains(ck.function_text(r.program, "attention"), """
          for (int j = 0; j < i / 2; j++) {
            scores[j] = scores[j] / sum;
          }
          for (int j = i / 2; j <= i; j++) {
            scores[j] = scores[j] / sum;
          }""")
    ck.check(a, r.program, "attention", attention_args(ck, 2, 5, 4))


def test_split_refusals(ck):
    p = ck.load("matvec.c")
    assert refusal(loop.split.apply, p, "matvec > for j", "j + 1") == (
        "loop.split: the split point 'j + 1' uses the index of for j (line 4)")
    assert refusal(loop.split.apply, p, "matvec > for j", "Q") == (
        "loop.split: the split point 'Q' uses 'Q', which is not declared in matvec")
    assert "loop.split: cannot read the split point 'N +'" in refusal(loop.split.apply, p, "matvec > for j", "N +")
    assert refusal(loop.split.apply, p, "matvec > for j", "N < 2") == (
        "loop.split: the split point 'N < 2' is not an integer expression")
    for bad in (2.5, True, None):
        assert "must be an integer or a C expression" in refusal(loop.split.apply, p, "matvec > for j", bad)
    t = ck.load("transformer.c")
    assert refusal(loop.split.apply, t, "transformer_token > for i#1", "dim / 2") == (
        "loop.split: for i (line 59) has step '2'; only unit-step loops can be split")
    w = ck.parse(c("""
        void f(int n, int m, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 0.0f;
            m = m + 1;
          }
        }"""))
    assert refusal(loop.split.apply, w, "f > for i", "m") == (
        "loop.split: the body of for i (line 2) writes 'm', which the split point 'm' reads")


def test_unroll_refuses_a_huge_full_unroll(ck) -> None:  # type: ignore[no-untyped-def]
    p = ck.parse("void f(float *x) {\n  for (int i = 0; i < 100000; i++) {\n    x[i] = 0;\n  }\n}\n")
    with pytest.raises(TransformError, match="runs 100000 iterations; unrolling more than 256"):
        loop.unroll.apply(p, "f > for i")


def moe_args(ck, T=2, dim=4, hidden=6, E=4, K=2):
    return [T, dim, hidden, E, K, ck.floats(T * dim), ck.floats(E * dim), ck.floats(E * hidden * dim),
            ck.floats(E * dim * hidden), ck.floats(E * hidden * dim), ck.floats(T * dim)]


# ----------------------------------------------------------------- fission between all instructions


def test_fission_all_softmax(ck):
    p = ck.load("softmax.c")
    r = loop.fission.apply(p, "softmax > for j#2")
    assert ck.contains(ck.function_text(r.program, "softmax"), """
        float sum = 0.0f;
        for (int j = 0; j < C; j++) {
          y[i * C + j] = expf(x[i * C + j] - max_val);
        }
        for (int j = 0; j < C; j++) {
          sum += y[i * C + j];
        }
        for (int j = 0; j < C; j++) {
          y[i * C + j] = y[i * C + j] / sum;
        }""")
    (ob,) = r.obligations
    base = (("items", 0), ("body", None), ("stmts", 0), ("body", None))
    assert ob.kind == "fission" and ob.paths == (base + (("stmts", 3),), base + (("stmts", 4),))
    ck.check(p, r.program, "softmax", [3, 7, ck.floats(21), ck.floats(21)])


def test_fission_all_moe_three_parts_pairwise_obligations(ck):
    p = ck.load("moe.c")
    r = loop.fission.apply(p, "moe > for i#2")
    assert ck.contains(ck.function_text(r.program, "moe"), """
      int e = sel[s];
      for (int i = 0; i < hidden; i++) {
        hb[i] = 0.0f;
      }
      for (int i = 0; i < hidden; i++) {
        hb2[i] = 0.0f;
      }
      for (int i = 0; i < hidden; i++) {
        for (int j = 0; j < dim; j++) {""")
    assert [o.kind for o in r.obligations] == ["fission"] * 3
    ends = [(o.paths[0][-1][1], o.paths[1][-1][1]) for o in r.obligations]
    assert ends == [(1, 2), (1, 3), (2, 3)]
    assert r.obligations[1].claim == ("in for i (line 51), statement 1 can run for all iterations before "
                                      "statement 3")
    ck.check(p, r.program, "moe", moe_args(ck))


def test_fission_all_refusals(ck):
    a = ck.load("attention.c")
    assert refusal(loop.fission.apply, a, "attention > for j#1") == (
        "loop.fission: 's' is declared before a cut (line 9) and used after it, in the body of for j (line 8); "
        "hoist it out of the loop first")
    p = ck.load("matmul.c")
    assert refusal(loop.fission.apply, p, "matmul > for k") == (
        "loop.fission: the body of for k (line 5) has fewer than two instructions; there is nothing to split")
    with pytest.raises(TargetError, match="must name a loop"):
        loop.fission.apply(p, "matmul > 'C[i * N + j] = 0.0f'")


# ----------------------------------------------------------------- move_out


def test_move_out_scale_of_attention_to_the_top(ck):
    from transformations import variable
    a = ck.load("attention.c")
    b = variable.bind.apply(a, "attention > for j#1 > expr 'sqrtf(D)'", "scale").program
    r = loop.move_out.apply(b, "attention > for j#1 > def scale")
    assert ck.contains(ck.function_text(r.program, "attention"), """
        for (int i = 0; i < S; i++) {
          float scale = sqrtf(D);
          for (int j = 0; j <= i; j++) {
            float s = 0.0f;
            for (int d = 0; d < D; d++) {
              s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
            }
            scores[j] = s / scale;
          }""")
    inv, com, ne = r.obligations
    loop_j = (("items", 0), ("body", None), ("stmts", 1), ("body", None), ("stmts", 0), ("body", None))
    assert inv.kind == "loop_invariant" and inv.paths == (loop_j + (("stmts", 0),), loop_j + (("stmts", 1),))
    assert com.kind == "commute" and len(com.paths) == 3  # the moved instruction and the two before it
    assert ne.kind == "nonempty" and ne.exprs == (ir.Const("0"), ir.Binop("+", ir.Var("i"), ir.Const("1")))
    r2 = loop.move_out.apply(r.program, "attention > for i > def scale")
    assert [o.kind for o in r2.obligations] == ["loop_invariant", "nonempty"]  # first of the body: no commute
    r3 = loop.move_out.apply(r2.program, "attention > for h > def scale")
    assert ck.contains(ck.function_text(r3.program, "attention"), """
          float *scores = malloc(S * sizeof(float));
          float scale = sqrtf(D);
          for (int h = 0; h < H; h++) {""")
    ck.check(a, r3.program, "attention", attention_args(ck, 2, 5, 4))


def test_move_out_literal_bounds_need_no_nonempty(ck):
    p = ck.parse(c("""
        void f(float *x, float *y, float *z) {
          for (int i = 0; i < 4; i++) {
            y[i] = 2.0f * x[i];
            z[0] = x[4];
          }
        }"""))
    r = loop.move_out.apply(p, "f > 'z[0] = x[4]'")
    assert ck.function_text(r.program, "f") == c("""
        void f(float *x, float *y, float *z) {
          z[0] = x[4];
          for (int i = 0; i < 4; i++) {
            y[i] = 2.0f * x[i];
          }
        }""")
    assert [o.kind for o in r.obligations] == ["loop_invariant", "commute"]
    ck.check(p, r.program, "f", [ck.floats(5), ck.floats(4), ck.floats(1)])


def test_move_out_refusals(ck):
    g = ck.load("gqa_decode.c")
    assert refusal(loop.move_out.apply, g, "gqa_decode > for h > def g") == (
        "loop.move_out: 'int g = h / (H / KVH);' (line 13) reads the index of for h (line 12)")
    a = ck.load("attention.c")
    moved = loop.move_out.apply(a, "attention > for i > def max_val")
    spec = parse_spec_file(ROOT / "specs" / "attention.spec")
    assert "loop_invariant: 'max_val' (line 21) writes max_val, and 'max_val' (line 24) writes " \
           "max_val" in refuted(a, moved, spec)
    rms = ck.load("rmsnorm.c")
    assert refusal(loop.move_out.apply, rms, "rmsnorm > for i > 'ss = 1.0f / sqrtf(ss)'") == (
        "loop.move_out: 'ss = 1.0f / sqrtf(ss);' (line 10) uses 'ss', which is declared before it in the body "
        "of for i (line 4)")
    t = ck.load("transformer.c")
    assert "calls 'rmsnorm_vec', whose effects otp cannot see" in refusal(
        loop.move_out.apply, t, "transformer_token > for l > 'rmsnorm_vec(dim'#1")
    p = ck.parse(c("""
        void f(int n, float a, float b, float c, float *x, float *y) {
          for (int i = 0; i < n; i++) {
            b = a * 2.0f;
            a = x[i];
            c = c * 2.0f;
            y[i] = b + c;
          }
        }"""))
    sized = parse_spec_text("f(n, a, b, c, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n"
                            "  writes y ~> Matrix1(n)\n")
    assert "'a' (line 3) reads a, and 'a' (line 4) writes a: the loop changes what the instruction touches" in \
        refuted(p, loop.move_out.apply(p, "f > 'b = a * 2.0f'"), sized)
    assert "'c' (line 5) writes c, and 'c' (line 5) reads c: the instruction reads what it writes" in \
        refuted(p, loop.move_out.apply(p, "f > 'c = c * 2.0f'"), sized)
    assert refusal(loop.move_out.apply, p, "f > 'a = x[i]'") == (
        "loop.move_out: 'a = x[i];' (line 4) reads the index of for i (line 2)")
    e = ck.parse("void f(float *x) { for (int i = 2; i < 2; i++) { x[0] = 1.0f; } }")
    assert refusal(loop.move_out.apply, e, "f > 'x[0] = 1.0f'") == "loop.move_out: for i (line 2) runs no iteration"


# ----------------------------------------------------------------- hoist


def test_hoist_attention_score_then_fission_all(ck):
    a = ck.load("attention.c")
    r = loop.hoist.apply(a, "attention > for j#1 > def s")
    assert ck.contains(ck.function_text(r.program, "attention"), """
        for (int i = 0; i < S; i++) {
          float *s_h = malloc((i + 1) * sizeof(float));
          for (int j = 0; j <= i; j++) {
            s_h[j] = 0.0f;
            for (int d = 0; d < D; d++) {
              s_h[j] += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
            }
            scores[j] = s_h[j] / sqrtf(D);
          }
          free(s_h);
          float max_val = -INFINITY;""")
    assert r.obligations == () and r.fp == "exact"
    ck.check(a, r.program, "attention", attention_args(ck, 2, 5, 4))
    f = loop.fission.apply(r.program, "attention > for j#1")
    assert ck.contains(ck.function_text(f.program, "attention"), """
          for (int j = 0; j <= i; j++) {
            s_h[j] = 0.0f;
          }
          for (int j = 0; j <= i; j++) {
            for (int d = 0; d < D; d++) {""")
    assert len(f.obligations) == 3
    ck.check(a, f.program, "attention", attention_args(ck, 2, 6, 4))


def test_hoist_on_the_stack_after_a_tile_of_moe(ck):
    m = ck.load("moe.c")
    t = loop.tile.apply(m, "moe > for i#3", 2).program
    r = loop.hoist.apply(t, "moe > for i#3 > def val", name="v2")
    assert ck.contains(ck.function_text(r.program, "moe"), """
      for (int bi = 0; bi < hidden; bi += 2) {
        float v2[2];
        for (int i = bi; i < bi + 2; i++) {
          v2[i - bi] = hb[i];
          v2[i - bi] = v2[i - bi] * (1.0f / (1.0f + expf(-v2[i - bi])));
          hb[i] = v2[i - bi] * hb2[i];
        }
      }""")
    ck.check(m, r.program, "moe", moe_args(ck, hidden=6))


def test_hoist_out_of_a_loop_of_constant_step(ck):
    """moe.c's SiLU loop tiled by 8, then by 2 inside: the local of the
    pairs' loop (stepping by 2 over 8 columns) gets 4 slots, (bj - bi) / 2;
    level 2 has nothing to prove and the outputs are the same."""
    m = ck.load("moe.c")
    t = loop.tile.apply(m, "moe > for i#3", 8).program
    t = loop.tile.apply(t, "moe > for bi > for i", 2, "bj").program
    t = loop.hoist.apply(t, "moe > for bi > for bj > for i > def val", name="v2").program
    r = loop.hoist.apply(t, "moe > for bi > for bj > def v2", name="v4")
    assert ck.contains(ck.function_text(r.program, "moe"), """
      for (int bi = 0; bi < hidden; bi += 8) {
        float v4[4][2];
        for (int bj = bi; bj < bi + 8; bj += 2) {
          for (int i = bj; i < bj + 2; i++) {
            v4[(bj - bi) / 2][i - bj] = hb[i];""")
    assert r.obligations == ()
    ck.check(m, r.program, "moe", moe_args(ck, hidden=16))


def test_hoist_a_local_array_adds_stdlib(ck):
    p = ck.parse(c("""
        void f(int n, int D, const float *x, float *y) {
          for (int i = 1; i < n; i++) {
            float t[D];
            for (int d = 0; d < D; d++) {
              t[d] = 2.0f * x[i * D + d];
            }
            for (int d = 0; d < D; d++) {
              y[i * D + d] = t[d] + t[D - 1 - d];
            }
          }
        }"""))
    r = loop.hoist.apply(p, "f > def t")
    assert r.program.includes == ("#include <stdlib.h>",)
    assert ck.function_text(r.program, "f") == c("""
        void f(int n, int D, const float *x, float *y) {
          float (*t_h)[D] = malloc((n - 1) * sizeof(float [D]));
          for (int i = 1; i < n; i++) {
            for (int d = 0; d < D; d++) {
              t_h[i - 1][d] = 2.0f * x[i * D + d];
            }
            for (int d = 0; d < D; d++) {
              y[i * D + d] = t_h[i - 1][d] + t_h[i - 1][D - 1 - d];
            }
          }
          free(t_h);
        }""")
    ck.check(p, r.program, "f", [4, 3, ck.floats(12), ck.floats(12)])


def test_hoist_refusals(ck):
    t = ck.load("transformer.c")
    assert refusal(loop.hoist.apply, t, "transformer_token > for i#1 > def freq") == (
        "loop.hoist: for i (line 59) has step 2 and a range known only at run time; only a unit-step loop gets a "
        "slot array allocated at run time")
    p = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            float a[2] = {x[i], 0.0f};
            float b[i + 1];
            static float c;
            b[0] = a[0];
            c = b[0];
            x[i] = c;
          }
        }"""))
    assert refusal(loop.hoist.apply, p, "f > def a") == (
        "loop.hoist: 'float a[2] = {x[i], 0.0f};' (line 3) has an initializer that cannot become an assignment; "
        "initialize it with instructions first")
    assert refusal(loop.hoist.apply, p, "f > def b") == (
        "loop.hoist: the type of 'float b[i + 1];' (line 4) depends on 'i', which changes in for i (line 2)")
    assert refusal(loop.hoist.apply, p, "f > def c") == (
        "loop.hoist: 'static float c;' (line 5) has storage class 'static'; only automatic locals can be hoisted")
    h = ck.parse("void f(int a, int b, float *x) { for (int j = a; j < b; j++) { int a = 5; float s = x[j]; "
                 "x[j] = s + a; } }")
    assert refusal(loop.hoist.apply, h, "f > def s") == (
        "loop.hoist: the body of for j (line 2) declares a local 'a', which hides the variable of the same name "
        "that the start of the loop reads; rename it first")
    q = ck.parse("void f(float *x) {\n  {\n    float t = x[0];\n    x[1] = t;\n  }\n}")
    assert refusal(loop.hoist.apply, q, "f > def t") == (
        "loop.hoist: 'float t = x[0];' (line 3) is not directly in the body of a canonical for loop")


# ----------------------------------------------------------------- shift, scale


def test_shift_softmax_max_loop_to_start_at_zero(ck):
    p = ck.load("softmax.c")
    r = loop.shift.apply(p, "softmax > for j#1", -1)
    assert ck.contains(ck.function_text(r.program, "softmax"), """
        for (int j = 0; j < C - 1; j++) {
          if (x[i * C + (j + 1)] > max_val) {
            max_val = x[i * C + (j + 1)];
          }
        }""")
    assert r.obligations == () and r.fp == "exact"
    for C in (1, 6):
        ck.check(p, r.program, "softmax", [2, C, ck.floats(2 * C), ck.floats(2 * C)])


def test_shift_by_an_expression_with_a_new_index_matvec(ck):
    p = ck.load("matvec.c")
    r = loop.shift.apply(p, "matvec > for i", "N", index="r")
    assert ck.function_text(r.program, "matvec") == c("""
        void matvec(int N, int D, const float *W, const float *x, float *y) {
          for (int r = N; r < D + N; r++) {
            y[r - N] = 0.0f;
            for (int j = 0; j < N; j++) {
              y[r - N] += W[(r - N) * N + j] * x[j];
            }
          }
        }""")
    ck.check(p, r.program, "matvec", matvec_args(ck, 5, 3))
    a = ck.load("attention.c")
    t = loop.shift.apply(a, "attention > for j#4", 3).program
    assert "for (int j = 3; j < i + 4; j++) {" in ck.function_text(t, "attention")
    ck.check(a, t, "attention", attention_args(ck, 2, 5, 4))


def test_scale_matvec_and_attention(ck):
    p = ck.load("matvec.c")
    r = loop.scale.apply(p, "matvec > for j", 4)
    assert ck.contains(ck.function_text(r.program, "matvec"), """
        for (int j = 0; j < N * 4; j += 4) {
          y[i] += W[i * N + j / 4] * x[j / 4];
        }""")
    assert r.obligations == ()
    ck.check(p, r.program, "matvec", matvec_args(ck, 5, 3))
    a = ck.load("attention.c")
    t = loop.scale.apply(a, "attention > for j#4", 2).program
    assert ck.contains(ck.function_text(t, "attention"), """
      for (int j = 0; j < (i + 1) * 2; j += 2) {
        scores[j / 2] = scores[j / 2] / sum;
      }""")
    ck.check(a, t, "attention", attention_args(ck, 2, 5, 4))


def test_scale_by_an_expression_declares_positive(ck):
    p = ck.load("matmul.c")
    r = loop.scale.apply(p, "matmul > for k", "N", index="kN")
    assert ck.contains(ck.function_text(r.program, "matmul"), """
      for (int kN = 0; kN < K * N; kN += N) {
        C[i * N + j] += A[i * K + kN / N] * B[kN / N * N + j];
      }""")
    (ob,) = r.obligations
    assert ob.kind == "positive" and ob.exprs == (ir.Var("N"),)
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 4, 5))


def test_normalize_a_loop_of_tiles_and_a_tile(ck):
    """The loop of tiles loop.tile leaves (symbolic trip count, last tile
    bounded) and a tile of constant extent count 0, 1, 2, ..."""
    p = ck.load("matvec.c")
    tiled = loop.tile.apply(p, "matvec > for i", 4, mode="min").program
    r = loop.normalize.apply(tiled, "matvec > for bi")
    assert ck.contains(ck.function_text(r.program, "matvec"), """
        for (int bi = 0; bi < (D + 3) / 4; bi++) {
          for (int i = bi * 4; i < (bi * 4 + 4 < D ? bi * 4 + 4 : D); i++) {""")
    assert r.obligations == () and r.fp == "exact"
    for D in (1, 4, 7):
        ck.check(p, r.program, "matvec", matvec_args(ck, 3, D))
    t = loop.normalize.apply(tiled, "matvec > for i", index="t").program
    assert ck.contains(ck.function_text(t, "matvec"), """
          for (int t = 0; t < (bi + 4 < D ? bi + 4 : D) - bi; t++) {
            y[bi + t] = 0.0f;""")
    ck.check(p, t, "matvec", matvec_args(ck, 3, 7))
    m = ck.load("matmul.c")
    inner = loop.tile.apply(m, "matmul > for k", 4).program
    u = loop.normalize.apply(inner, "matmul > for k")
    assert "for (int k = 0; k < 4; k++) {" in ck.function_text(u.program, "matmul")
    assert u.obligations == ()


def test_normalize_refusals(ck):
    m = ck.load("matmul.c")
    scaled = loop.scale.apply(m, "matmul > for k", "N").program
    assert refusal(loop.normalize.apply, scaled, "matmul > for k") == (
        "loop.normalize: for k (line 5) has step 'N'; only a positive integer constant step can be normalized")
    assert refusal(loop.normalize.apply, m, "matmul > for k", index="j") == (
        "loop.normalize: the new index name 'j' is used in for k (line 5), where the index would capture it")
    w = ck.parse("void f(int n, float *x) { for (int i = 0; i < n; i += 2) { x[i] = 0.0f; n = n - 1; } }")
    assert refusal(loop.normalize.apply, w, "f > for i") == (
        "loop.normalize: the body writes 'n', which the bounds of for i (line 2) read")


def test_shift_scale_refusals(ck):
    p = ck.load("matmul.c")
    assert refusal(loop.shift.apply, p, "matmul > for k", "k + 1") == (
        "loop.shift: the shift 'k + 1' uses the index of for k (line 5)")
    assert refusal(loop.shift.apply, p, "matmul > for k", 1, index="j") == (
        "loop.shift: the new index name 'j' is used in for k (line 5), where the index would capture it")
    assert "must be an integer or a C expression, got 1.5" in refusal(loop.shift.apply, p, "matmul > for k", 1.5)
    for bad in (0, -2):
        assert refusal(loop.scale.apply, p, "matmul > for k", bad) == (
            f"loop.scale: the factor must be positive, got {bad}")
    t = ck.load("transformer.c")
    assert refusal(loop.scale.apply, t, "transformer_token > for i#1", 2) == (
        "loop.scale: for i (line 59) has step '2'; only unit-step loops can be scaled")
    w = ck.parse("void f(int n, int m, float *x) { for (int i = 0; i < n; i++) { x[i] = 0.0f; m = 2; } }")
    assert refusal(loop.scale.apply, w, "f > for i", "m") == (
        "loop.scale: the body of for i (line 2) writes 'm', which the factor 'm' reads")


# ----------------------------------------------------------------- collapse


def test_collapse_matmul_rows_and_columns(ck):
    p = ck.load("matmul.c")
    r = loop.collapse.apply(p, "matmul > for i")
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int ij = 0; ij < M * N; ij++) {
            int i = ij / N;
            int j = ij % N;
            C[i * N + j] = 0.0f;
            for (int k = 0; k < K; k++) {
              C[i * N + j] += A[i * K + k] * B[k * N + j];
            }
          }
        }""")
    (ob,) = r.obligations
    assert ob.kind == "ordered_bounds" and ob.exprs == (ir.Const("0"), ir.Var("N"))
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 4, 5))


def test_collapse_with_offsets_gqa_append(ck):
    g = ck.load("gqa_decode.c")
    s = loop.shift.apply(g, "gqa_decode > for d#1", 2).program
    r = loop.collapse.apply(s, "gqa_decode > for g#1", index="gd")
    assert ck.contains(ck.function_text(r.program, "gqa_decode"), """
          for (int gd = 0; gd < KVH * D; gd++) {
            int g = gd / D;
            int d = 2 + gd % D;
            k_cache[(g * SMAX + pos) * D + (d - 2)] = k_new[g * D + (d - 2)];""")
    H, KVH, D, SMAX, pos = 4, 2, 3, 5, 2
    ck.check(g, r.program, "gqa_decode", [H, KVH, D, SMAX, pos, ck.floats(H * D), ck.floats(KVH * D),
                                          ck.floats(KVH * D), ck.floats(KVH * SMAX * D), ck.floats(KVH * SMAX * D),
                                          ck.floats(H * D)])


def test_collapse_refusals(ck):
    p = ck.load("matmul.c")
    assert refusal(loop.collapse.apply, p, "matmul > for j") == (
        "loop.collapse: for j (line 3) is not a perfect loop nest: its body does not start with a loop")
    a = ck.load("attention.c")
    a = loop.fission.apply(a, "attention > for i > after 'for (int j = 0; j <= i; j++)'#1").program
    assert refusal(loop.collapse.apply, a, "attention > for i#1") == (
        "loop.collapse: the bounds of for j (line 8) depend on the index of for i (line 7) ('i + 1'): the nest is "
        "not rectangular")
    q = ck.parse(c("""
        void f(int n, float *x) {
        #pragma omp parallel for
          for (int i = 0; i < n; i++) {
            for (int j = 0; j < n; j += 2) {
              x[i * n + j] = 0.0f;
            }
          }
        }"""))
    assert refusal(loop.collapse.apply, q, "f > for i") == (
        "loop.collapse: for i (line 2) has pragmas (#pragma omp parallel for); collapse the loops before "
        "annotating them")
    assert refusal(loop.collapse.apply, q, "f > for j") == (
        "loop.collapse: for j (line 4) is not a perfect loop nest: its body does not start with a loop")
    s = ck.parse("void f(int n, float *x) { for (int i = 0; i < n; i++) { for (int j = 0; j < n; j += 2) { "
                 "x[i * n + j] = 0.0f; } } }")
    assert refusal(loop.collapse.apply, s, "f > for i") == (
        "loop.collapse: for j (line 3) has step '2'; only unit-step loops can be collapsed")


# ----------------------------------------------------------------- unswitch

RMSNORM_OPTIONAL_WEIGHTS = c("""
    #include <math.h>

    void rmsnorm(int R, int C, int use_w, const float *x, const float *w, float *y) {
      for (int i = 0; i < R; i++) {
        float ss = 0.0f;
        for (int j = 0; j < C; j++) {
          ss += x[i * C + j] * x[i * C + j];
        }
        ss = ss / C + 1e-5f;
        ss = 1.0f / sqrtf(ss);
        for (int j = 0; j < C; j++) {
          if (use_w) {
            y[i * C + j] = w[j] * (ss * x[i * C + j]);
          } else {
            y[i * C + j] = ss * x[i * C + j];
          }
        }
      }
    }""")


def test_unswitch_rmsnorm_with_optional_weights_twice(ck):
    # c_sources/rmsnorm.c with the weights made optional by a flag
    p = ck.parse(RMSNORM_OPTIONAL_WEIGHTS)
    r = loop.unswitch.apply(p, "rmsnorm > 'if (use_w)'")
    assert ck.contains(ck.function_text(r.program, "rmsnorm"), """
        if (use_w) {
          for (int j = 0; j < C; j++) {
            y[i * C + j] = w[j] * (ss * x[i * C + j]);
          }
        } else {
          for (int j = 0; j < C; j++) {
            y[i * C + j] = ss * x[i * C + j];
          }
        }
      }
    }""")
    (ob,) = r.obligations
    assert ob.kind == "pure" and ob.exprs == (ir.Var("use_w"),)
    assert isinstance(ir_get(r.program, ob.paths[0]), ir.If)
    r2 = loop.unswitch.apply(r.program, "rmsnorm > 'if (use_w)'")
    text = ck.function_text(r2.program, "rmsnorm")
    assert text.startswith("void rmsnorm(int R, int C, int use_w, const float *x, const float *w, float *y) {\n"
                           "  if (use_w) {\n    for (int i = 0; i < R; i++) {")
    assert text.count("for (int i = 0; i < R; i++) {") == 2 and "if" not in text.replace("if (use_w)", "", 1)
    for flag in (0, 1):
        ck.check(p, r2.program, "rmsnorm", [3, 5, flag, ck.floats(15), ck.floats(5), ck.floats(15)])


def test_unswitch_a_condition_that_reads_memory(ck):
    p = ck.parse(c("""
        void f(int n, const float *s, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 2.0f * x[i];
            if (s[0] > 0.0f) {
              x[i] += s[0];
            }
            if (n > 2) {
              if (s[1] > 0.0f) {
                x[i] += 1.0f;
              }
            }
          }
        }"""))
    r = loop.unswitch.apply(p, "f > 'if (s[0] > 0.0f)'")
    assert [o.kind for o in r.obligations] == ["pure", "nonempty"]
    assert ck.contains(ck.function_text(r.program, "f"), """
          if (s[0] > 0.0f) {
            for (int i = 0; i < n; i++) {
              x[i] = 2.0f * x[i];
              x[i] += s[0];
              if (n > 2) {""")
    ck.check(p, r.program, "f", [4, ck.floats(2), ck.floats(4)])
    assert refusal(loop.unswitch.apply, p, "f > 'if (s[1] > 0.0f)'") == (
        "loop.unswitch: the condition 's[1] > 0.0f' (line 8) may fault (it reads memory or divides) and is not "
        "evaluated at every iteration of for i (line 2); only such an if at the top of the loop body can be "
        "unswitched")
    assert [o.kind for o in loop.unswitch.apply(p, "f > 'if (n > 2)'").obligations] == ["pure"]


def test_unswitch_refusals(ck):
    p = ck.load("matmul.c")
    t = loop.tile.apply(p, "matmul > for k", 4, mode="guard").program
    assert refusal(loop.unswitch.apply, t, "matmul > 'if (k < K)'") == (
        "loop.unswitch: the condition 'k < K' (line 7) reads the index of for k (line 6)")
    sm = ck.load("softmax.c")
    assert refusal(loop.unswitch.apply, sm, "softmax > 'if (x[i * C + j] > max_val)'") == (
        "loop.unswitch: the condition 'x[i * C + j] > max_val' (line 7) reads the index of for j (line 6)")
    q = ck.parse(c("""
        void f(int n, float m, float *x) {
          for (int i = 0; i < n; i++) {
            if (m > 0.0f) {
              m = x[i];
            }
          }
          if (n > 0) {
            x[0] = 1.0f;
          }
        }"""))
    assert refusal(loop.unswitch.apply, q, "f > 'if (m > 0.0f)'") == (
        "loop.unswitch: the condition 'm > 0.0f' (line 3) reads 'm', which the body of for i (line 2) writes")
    assert refusal(loop.unswitch.apply, q, "f > 'if (n > 0)'") == (
        "loop.unswitch: the if of the condition 'n > 0' (line 7) is not inside a canonical for loop")


# ----------------------------------------------------------------- reorder


def test_reorder_matmul_ikj_records_fission_and_swap(ck):
    from optitrust_py.session import Session
    p = ck.load("matmul.c")
    with Session() as s:
        s.program = s.original = p
        loop.reorder("matmul > for i", ["i", "k", "j"])
        (step,) = s.steps
    assert step.name == "loop.reorder" and [sub.name for sub in step.substeps] == ["loop.fission", "loop.swap"]
    assert [sub.target for sub in step.substeps] == ["matmul > before for k#1", "matmul > for j#2"]
    assert ck.function_text(step.after, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
            }
            for (int k = 0; k < K; k++) {
              for (int j = 0; j < N; j++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];
              }
            }
          }
        }""")
    assert [o.kind for o in step.all_obligations()] == ["fission", "swap_loops"]
    ck.check(p, step.after, "matmul", matmul_args(ck, 3, 5, 4))


def test_reorder_matmul_kji_and_a_prefix_order(ck):
    p = ck.load("matmul.c")
    r = loop.reorder.apply(p, "matmul > for i", ["k", "j", "i"])
    assert ck.contains(ck.function_text(r.program, "matmul"), """
          for (int k = 0; k < K; k++) {
            for (int j = 0; j < N; j++) {
              for (int i = 0; i < M; i++) {
                C[i * N + j] += A[i * K + k] * B[k * N + j];""")
    assert [o.kind for o in r.obligations] == ["fission", "swap_loops", "fission", "swap_loops", "swap_loops"]
    ck.check(p, r.program, "matmul", matmul_args(ck, 3, 5, 4))
    q = loop.reorder.apply(p, "matmul > for i", ["j", "i"])
    assert q.program == loop.swap.apply(p, "matmul > for i").program
    assert loop.reorder.apply(p, "matmul > for i", ["i", "j"]).program == p


def test_reorder_refusals(ck):
    p = ck.load("matmul.c")
    for bad in (["i", "x", "j"], ["i", "i", "j"], ["j", "k"], "ijk", ["i", 2]):
        assert refusal(loop.reorder.apply, p, "matmul > for i", bad) == (
            f"loop.reorder: {bad!r} is not a permutation of the indices of the nest at for i (line 2), i, j, k "
            f"(or of its first loops)")
    a = ck.load("attention.c")
    assert "nest at for i (line 7), i (or of its first loops)" in refusal(loop.reorder.apply, a, "attention > for i",
                                                                          ["j", "i"])
    a = loop.fission.apply(a, "attention > for i > after 'for (int j = 0; j <= i; j++)'#1").program
    assert refusal(loop.reorder.apply, a, "attention > for i#1", ["j", "i"]) == (
        "loop.swap: the bounds of for j (line 8) depend on the index of for i (line 7) ('i + 1'): the nest is not "
        "rectangular")


def test_move_out_a_declaration_without_initializer(ck):
    p = ck.parse(c("""
        void f(int n, const float *x, float *y) {
          for (int i = 0; i < n; i++) {
            float t[2];
            t[0] = x[i];
            t[1] = t[0] * t[0];
            y[i] = t[1];
          }
        }"""))
    r = loop.move_out.apply(p, "f > def t")
    assert ck.contains(ck.function_text(r.program, "f"), """
          float t[2];
          for (int i = 0; i < n; i++) {
            t[0] = x[i];""")
    assert r.obligations == ()
    ck.check(p, r.program, "f", [3, ck.floats(3), ck.floats(3)])
    q = ck.parse("void f(int n, float t, float *y) { for (int i = 0; i < n; i++) { float t; t = y[i]; y[i] = t; } }")
    assert refusal(loop.move_out.apply, q, "f > def t") == (
        "loop.move_out: a name 't' is already visible or declared where for i (line 2) is; rename the local first")
