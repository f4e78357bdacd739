"""loop.tile, loop.swap, loop.fission on the real kernels."""
from __future__ import annotations

import textwrap

import pytest

from optitrust_py import ir
from optitrust_py.errors import TargetError, TransformError
from transformations import loop


def matmul_args(ck, M, N, K):
    return [M, N, K, ck.floats(M * K), ck.floats(K * N), ck.floats(M * N)]


def attention_args(ck, H=2, S=5, D=4):
    n = H * S * D
    return [H, S, D, ck.floats(n), ck.floats(n), ck.floats(n), ck.floats(n)]


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(TransformError) as info:
        fn(*args, **kwargs)
    return info.value.message


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
    ck.check(p, r.program, "attention", attention_args(ck))


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
    ck.check(p, r.program, "attention", attention_args(ck))


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
