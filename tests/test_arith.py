"""arith.simplify: integer index arithmetic, each rewrite proved by Z3."""
from __future__ import annotations

import textwrap

import pytest

from optitrust_py.errors import TransformError
from optitrust_py.session import Session
from helpers import attention_args
from transformations import arith, loop, variable

BLOCKED = """
void blocked(int N, int i, const float *x, float *y, float *z) {
  for (int jj = 0; jj < N / 16; jj++) {
    for (int jjj = 0; jjj < 16; jjj++) {
      y[(jj * 16 + jjj) / 16] += x[i * N + (jj * 16 + jjj) - i * N];
      z[(jj * 16 + jjj) % 16] += x[(i + 1) * N - N + jjj] * (float)(jjj + 1 - 1);
    }
  }
}
"""


def c(text: str) -> str:
    return textwrap.dedent(text).strip()


def test_simplify_after_tile_and_unroll(ck):
    p = ck.load("matmul.c")
    tiled = loop.tile.apply(p, "matmul > for k", 4).program
    unrolled = loop.unroll.apply(tiled, "matmul > for k").program
    r = arith.simplify.apply(unrolled, "matmul")
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          for (int i = 0; i < M; i++) {
            for (int j = 0; j < N; j++) {
              C[i * N + j] = 0.0f;
              for (int bk = 0; bk < K; bk += 4) {
                C[i * N + j] += A[i * K + bk] * B[bk * N + j];
                C[i * N + j] += A[i * K + bk + 1] * B[(bk + 1) * N + j];
                C[i * N + j] += A[i * K + bk + 2] * B[(bk + 2) * N + j];
                C[i * N + j] += A[i * K + bk + 3] * B[(bk + 3) * N + j];
              }
            }
          }
        }""")
    assert r.obligations == () and r.fp == "exact"
    ck.check(unrolled, r.program, "matmul", [3, 5, 8, ck.floats(24), ck.floats(40), ck.floats(15)])


def test_simplify_div_mod_exact_by_loop_ranges(ck):
    p = ck.parse(BLOCKED)
    r = arith.simplify.apply(p, "blocked > for jj")
    assert ck.contains(ck.function_text(r.program, "blocked"), """
          for (int jjj = 0; jjj < 16; jjj++) {
            y[jj] += x[jj * 16 + jjj];
            z[jjj] += x[i * N + jjj] * (float)jjj;
          }""")
    assert r.obligations == ()
    ck.check(p, r.program, "blocked", [32, 1, ck.floats(64), ck.floats(2), ck.floats(16)])


@pytest.mark.parametrize("ranges", [
    "int b = 0; b < 32",  # b may reach past 16: the quotient is not a
    "int b = -8; b < 8",  # b may be negative
])
def test_simplify_leaves_inexact_division(ck, ranges):
    p = ck.parse(f"void f(int n, float *y) {{\n  for (int a = 0; a < n; a++) {{\n    for ({ranges}; b++) {{\n"
                 f"      y[(a * 16 + b) / 16 + (a * 16 + b) % 16] += 1.0f;\n    }}\n  }}\n}}")
    assert arith.simplify.apply(p, "f").program == p


def test_simplify_follows_c_truncation(ck):
    src = ("void f(float *y) {\n  for (int a = -2; a < 2; a++) {\n    for (int b = 0; b < 16; b++) {\n"
           "      y[(a * 16 + b) / 16 + 2] += 1.0f;\n    }\n  }\n}")
    p = ck.parse(src)
    assert arith.simplify.apply(p, "f").program == p  # -11 / 16 is 0 in C, not -1
    q = ck.parse(src.replace("int a = -2", "int a = 0"))
    assert "y[a + 2] += 1.0f;" in ck.function_text(arith.simplify.apply(q, "f").program, "f")


def test_simplify_uses_the_contract_in_a_script(ck, tmp_path):
    spec = tmp_path / "matvec.spec"
    spec.write_text("matvec(N, D, W, x, y):\n  requires N >= 1, D >= 1, N % 4 == 0\n"
                    "  reads W ~> Matrix2(D, N), x ~> Matrix1(N)\n  writes y ~> Matrix1(D)\n")
    with Session() as s:
        p = s.load(ck.load("matvec.c").file, spec=spec)
        loop.unroll("matvec > for j", factor=4)
        unrolled = s.program
        arith.simplify("matvec")
        text = ck.function_text(s.program, "matvec")
    assert ck.contains(text, """
        for (int j = 0; j < N; j += 4) {
          y[i] += W[i * N + j] * x[j];
          y[i] += W[i * N + j + 1] * x[j + 1];""")
    assert "for (int j = N; j < N; j++) {" in text
    ck.check(p, s.program, "matvec", [8, 3, ck.floats(24), ck.floats(8), ck.floats(3)])
    without = arith.simplify.apply(unrolled, "matvec").program  # no contract: N / 4 * 4 stays
    assert "for (int j = 0; j < N / 4 * 4; j += 4) {" in ck.function_text(without, "matvec")


def test_simplify_leaves_float_unsigned_and_widening_alone(ck):
    p = ck.parse("#include <stddef.h>\nvoid f(int i, long l, size_t u, float *y) {\n"
                 "  y[0] = y[0] + 1.0f - 1.0f;\n  y[u + 1 - 1] = 0.0f;\n  y[l + i - l] = 0.0f;\n"
                 "  y[i + 1 - 1] = (float)(i + 2 - 2) * 0.5f;\n}")
    r = arith.simplify.apply(p, "f")
    assert ck.function_text(r.program, "f").splitlines()[1:5] == [
        "  y[0] = y[0] + 1.0f - 1.0f;", "  y[u + 1 - 1] = 0.0f;", "  y[l + i - l] = 0.0f;",
        "  y[i] = (float)i * 0.5f;"]
    ck.check(p, r.program, "f", [1, 5, 2, ck.floats(8)])


def test_simplify_unknown_is_not_a_proof(ck, monkeypatch):
    monkeypatch.setattr(arith, "settle", lambda claim, hypotheses=(): "unknown")
    p = ck.parse(BLOCKED)
    with pytest.warns(RuntimeWarning, match=r"Z3 could not settle the rewrite of '\(jj \* 16 \+ jjj\) / 16'"):
        r = arith.simplify.apply(p, "blocked")
    assert r.program == p


def test_simplify_refuses_a_float_or_call_target(ck):
    p = ck.load("attention.c")
    with pytest.raises(TransformError, match=r"'s / sqrtf\(D\)' \(line 13\) is not arithmetic on signed integers"):
        arith.simplify.apply(p, "attention > expr 's / sqrtf(D)'")
    r = arith.simplify.apply(p, "attention > expr '(h * S + i) * D + d'#1")
    assert r.program == p


@pytest.mark.parametrize("escape", [False, True])
def test_simplify_uses_in_source_requires_unless_a_pointer_may_change_them(ck, escape):
    p = ck.parse("#include <otp.h>\n\nvoid f(int n, float *y) {\n  __requires(\"n >= 1, n <= 16\");\n"
                 + ("  int *p = &n;\n" if escape else "")
                 + "  for (int a = 0; a < 4; a++) {\n    for (int b = 0; b < n; b++) {\n"
                 + ("      *p = 32;\n" if escape else "")
                 + "      y[(a * 16 + b) / 16] += 1.0f;\n    }\n  }\n}")
    r = arith.simplify.apply(p, "f")
    if escape:
        assert r.program == p
    else:
        assert "      y[a] += 1.0f;" in ck.function_text(r.program, "f")
        ck.check(p, r.program, "f", [16, ck.floats(4)])


def test_reciprocal_multiplies_the_scores_by_one_over_scale(ck):
    """attention.c, the scale named and out of the loops (as attention.py's
    first steps): `s / scale` becomes `s * (1.0f / scale)`, lossy within 3
    x 2^-24; the reciprocal then goes out of the loops by variable.bind
    and loop.move_out, and the outputs stay within that tolerance on the
    CPU."""
    p = variable.bind.apply(ck.load("attention.c"), "attention > expr 'sqrtf(D)'", "scale").program
    for _ in range(3):
        p = loop.move_out.apply(p, "attention > def scale").program
    r = arith.reciprocal.apply(p, "attention > expr 's / scale'")
    assert r.obligations == () and r.fp == "lossy" and r.tolerance == arith.RECIPROCAL_TOLERANCE
    assert "scores[j] = s * (1.0f / scale);" in ck.function_text(r.program, "attention")
    bound = variable.bind.apply(r.program, "attention > expr '1.0f / scale'", "rscale").program
    for _ in range(3):
        bound = loop.move_out.apply(bound, "attention > def rscale").program
    text = ck.function_text(bound, "attention")
    assert text.index("float rscale = 1.0f / scale;") < text.index("for (int h = 0;")
    assert "scores[j] = s * rscale;" in text
    ck.close_outputs(p, bound, "attention", attention_args(ck, 2, 37, 16), rel=1e-6)


def test_reciprocal_refuses_what_is_not_a_float_division(ck):
    """Refused: a product, an integer division (truncation), a division of
    doubles (its rounding kept)."""
    for source, message in (("float f(float a, float b) { return a * b; }", "is not a division"),
                            ("int f(int a, int b) { return a / b; }", "does not divide a float by a float"),
                            ("double f(double a, double b) { return a / b; }", "does not divide a float by a float")):
        with pytest.raises(TransformError, match=message):
            arith.reciprocal.apply(ck.parse(source), f"f > expr '{source.split('return ')[1].split(';')[0]}'")
