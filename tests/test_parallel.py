"""parallel.parallel_for, parallel.simd, parallel.privatize_reduction on the
real kernels, run for real on two OpenMP threads.

ck.run builds with the exec flags; build.py adds -fopenmp to any text with an
omp pragma (for `ck.compiles` too: without it, `-Wall -Werror` would reject
the unknown pragmas). The `two_threads` fixture sets the thread count of the
process's libgomp, which every built kernel shares.
"""
from __future__ import annotations

import ctypes
import textwrap
from array import array
from pathlib import Path

import pytest

from optitrust_py import ir
from optitrust_py.errors import TargetError
from optitrust_py.frontend import parse_text
from optitrust_py.printer import to_c
from optitrust_py.tree import get, walk
from transformations import loop, parallel
from helpers import attention_args, matmul_args, refusal, refuted

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def two_threads():
    gomp = ctypes.CDLL("libgomp.so.1")
    gomp.omp_set_num_threads(2)
    assert gomp.omp_get_max_threads() == 2


def c(text: str) -> str:
    return textwrap.dedent(text).strip()


def pragmas(program: ir.Program) -> list[str]:
    """The pragma of each loop that has one, in source order."""
    return [n.pragmas[0] for _, n in walk(program) if isinstance(n, ir.For) and n.pragmas]


def rows_args(ck, R=6, C=37, weights=False):
    return [R, C, ck.floats(R * C)] + ([ck.floats(C)] if weights else []) + [ck.floats(R * C)]


# ----------------------------------------------------------------- parallel_for


def test_parallel_for_matmul_rows(ck):
    p = ck.load("matmul.c")
    r = parallel.parallel_for.apply(p, "matmul > for i")
    assert ck.function_text(r.program, "matmul") == c("""
        void matmul(int M, int N, int K, const float *A, const float *B, float *C) {
          #pragma omp parallel for
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
    assert ob.kind == "parallel" and ob.function == "matmul"
    assert ob.claim == "distinct iterations of for i (line 2) touch disjoint cells"
    assert get(r.program, ob.paths[0]).mode == "parallel"
    assert r.fp == "exact"
    ck.check(p, r.program, "matmul", matmul_args(ck, 7, 6, 5))


def test_parallel_for_collapse_and_schedule(ck):
    p = ck.load("matmul.c")
    r = parallel.parallel_for.apply(p, "matmul > for i", schedule="dynamic,4", collapse=2)
    assert pragmas(r.program) == ["omp parallel for collapse(2) schedule(dynamic, 4)"]
    ck.check(p, r.program, "matmul", matmul_args(ck, 9, 5, 3))
    r = parallel.parallel_for.apply(p, "matmul > for i", schedule="static")
    assert pragmas(r.program) == ["omp parallel for schedule(static)"]


@pytest.mark.parametrize("name, target, weights", [("softmax", "softmax > for i", False),
                                                    ("rmsnorm", "rmsnorm > for i", True)])
def test_parallel_for_row_loops(ck, name, target, weights):
    p = ck.load(f"{name}.c")
    r = parallel.parallel_for.apply(p, target)
    assert pragmas(r.program) == ["omp parallel for"] and r.fp == "exact"
    ck.check(p, r.program, name, rows_args(ck, weights=weights))


def test_parallel_for_sum_of_squares_is_a_reduction(ck):
    p = ck.load("rmsnorm.c")
    r = parallel.parallel_for.apply(p, "rmsnorm > for j#1")
    assert ck.contains(ck.function_text(r.program, "rmsnorm"), """
        float ss = 0.0f;
        #pragma omp parallel for reduction(+:ss)
        for (int j = 0; j < C; j++) {
          ss += x[i * C + j] * x[i * C + j];
        }""")
    assert r.fp == "reassoc"
    assert r.obligations[0].claim.endswith("apart from the reductions on ss")
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    ck.close_outputs(p, r.program, "rmsnorm", rows_args(ck, R=3, C=4000, weights=True))


def test_parallel_for_running_max_is_a_max_reduction(ck):
    p = ck.load("softmax.c")
    r = parallel.parallel_for.apply(p, "softmax > for j#1")
    assert pragmas(r.program) == ["omp parallel for reduction(max:max_val)"] and r.fp == "reassoc"
    ck.check(p, r.program, "softmax", rows_args(ck, C=301))  # a max is exact on these inputs
    s = parallel.parallel_for.apply(p, "softmax > for j#2")
    assert pragmas(s.program) == ["omp parallel for reduction(+:sum)"]
    m = ck.parse(c("""
        void f(int n, const float *x, float *out) {
          float lo = x[0];
          float hi = x[0];
          float s = 0.0f;
          for (int j = 0; j < n; j++) {
            hi = fmaxf(hi, x[j]);
            lo = fminf(x[j], lo);
            s = s + x[j];
          }
          out[0] = lo;
          out[1] = hi;
          out[2] = s;
        }"""))
    t = parallel.parallel_for.apply(m, "f > for j")
    assert pragmas(t.program) == ["omp parallel for reduction(+:s) reduction(max:hi) reduction(min:lo)"]


def per_head_scores(ck) -> ir.Program:
    """attention.c with the scores buffer allocated by each head."""
    text = (ROOT / "c_sources" / "attention.c").read_text()
    alloc = "  float *scores = malloc(S * sizeof(float));\n"
    text = text.replace(alloc, "").replace("  for (int h = 0; h < H; h++) {\n",
                                           "  for (int h = 0; h < H; h++) {\n  " + alloc)
    text = text.replace("    }\n  }\n  free(scores);\n", "    }\n    free(scores);\n  }\n")
    return parse_text(text, "attention.c")


def test_parallel_for_attention_heads(ck):
    a = ck.load("attention.c")
    shared = parallel.parallel_for.apply(a, "attention > for h")
    assert "'scores[j]' (line 18) writes scores in both runs" in refuted(a, shared)
    assert "iterations h != h' of the parallel loop meet" in refuted(a, shared)
    p = per_head_scores(ck)
    r = parallel.parallel_for.apply(p, "attention > for h")
    assert pragmas(r.program) == ["omp parallel for"] and r.fp == "exact"
    assert r.obligations[0].claim.endswith("the calls to free, malloc can run concurrently")
    ck.check(a, r.program, "attention", attention_args(ck, 4, 6, 5))


def test_parallel_threads_really_run(ck):
    p = ck.parse(c("""
        int omp_get_thread_num(void);

        void ids(int n, float *out) {
          for (int i = 0; i < n; i++) {
            out[i] = (float)omp_get_thread_num();
          }
        }"""))
    r = parallel.parallel_for.apply(p, "ids > for i", schedule="static")
    (out,) = ck.run(r.program, "ids", [64, ck.floats(64)])
    assert set(array("f", out)) == {0.0, 1.0}


# ----------------------------------------------------------------- parallel_for refusals


def test_parallel_for_leaves_shared_scalars_to_level_2(ck):
    moe = ck.load("moe.c")
    r = parallel.parallel_for.apply(moe, "moe > for e#3")
    assert r.program != moe and "reduction" not in pragmas(r.program)[0]
    assert "writes best" in refuted(moe, r)
    running = ck.parse(c("""
        void running_max(int C, const float *x, float *y) {
          float max_val = x[0];
          for (int j = 1; j < C; j++) {
            if (x[j] > max_val) {
              max_val = x[j];
            }
            y[j] = max_val;
          }
        }"""))
    assert "max_val" in refuted(running, parallel.parallel_for.apply(running, "running_max > for j"))
    mixed = ck.parse("void f(int n, float *x) { float s = 0.0f; for (int i = 0; i < n; i++) { s += x[i]; "
                     "s = fmaxf(s, x[i]); } x[0] = s; }")
    assert "updates s" in refuted(mixed, parallel.parallel_for.apply(mixed, "f > for i"))
    ptr = ck.parse("void f(int n, float *x) { float *p = x; for (int i = 0; i < n; i++) { p += 1; } }")
    assert "updates p" in refuted(ptr, parallel.parallel_for.apply(ptr, "f > for i"))


def test_parallel_for_shared_buffers_and_global_writers_are_refuted_at_level_2(ck):
    p = ck.parse(c("""
        int calls;

        void scale(int n, float *x) {
          for (int i = 0; i < n; i++) {
            x[i] = 2.0f * x[i];
          }
        }

        void count(void) {
          calls += 1;
        }

        void counted(int n, float *x) {
          count();
          x[0] = 0.0f;
        }

        void f(int H, int n, float *buf, float *out) {
          for (int h = 0; h < H; h++) {
            scale(n, buf);
            out[h] = buf[0];
          }
          for (int h = 0; h < H; h++) {
            scale(n, &out[h * n]);
          }
          for (int h = 0; h < H; h++) {
            counted(n, &out[h * n]);
          }
        }"""))
    assert "'scale(n, buf)' (line 20)" in refuted(p, parallel.parallel_for.apply(p, "f > for h#1"))
    assert "'counted(n, &out[h * n])' (line 27)" in refuted(p, parallel.parallel_for.apply(p, "f > for h#3"))


def test_parallel_for_refuses_nesting_pragmas_and_exits(ck):
    p = ck.load("matmul.c")
    q = parallel.parallel_for.apply(p, "matmul > for i").program
    assert refusal(parallel.parallel_for.apply, q, "matmul > for i") == (
        "parallel.parallel_for: for i (line 2) already has '#pragma omp parallel for'")
    assert refusal(parallel.parallel_for.apply, q, "matmul > for j") == (
        "parallel.parallel_for: for j (line 4) is inside a parallel construct ('#pragma omp parallel for'); "
        "nested parallelism is refused")
    inner = parallel.parallel_for.apply(p, "matmul > for j").program
    assert "for i (line 2) contains a parallel construct" in refusal(parallel.parallel_for.apply, inner,
                                                                     "matmul > for i")
    e = ck.parse(c("""
        void f(int n, float *x) {
          for (int i = 0; i < n; i++) {
            if (x[i] < 0.0f) {
              break;
            }
            x[i] = 1.0f;
          }
        }"""))
    assert refusal(parallel.parallel_for.apply, e, "f > for i") == (
        "parallel.parallel_for: 'break;' leaves the body of for i (line 2) early")
    g = ck.parse("void f(int n, float *x) { for (int i = 0; i < n; i = i + 2) { x[i] = 0.0f; } }")
    with pytest.raises(TargetError, match="must name a canonical for loop"):
        parallel.parallel_for.apply(g, "f > 'for (int i = 0'")
    w = ck.parse("void f(int n, float *x) { for (int i = 0; i < n; i++) { x[i] = 0.0f; n = n - 1; } }")
    assert "the body writes 'n', which the bounds of for i (line 2) read" in refusal(parallel.parallel_for.apply, w,
                                                                                  "f > for i")


def test_parallel_for_in_a_nested_block_sees_the_parallel_region_around_it(ck):
    """A loop in a `{ }` block: the statement before the block is looked up
    in the enclosing block's statements (it used to index the block itself)."""
    p = ck.parse(c("""
        void f(int n, float *x) {
          x[0] = 1.0f;
          {
            for (int i = 0; i < n; i++) {
              x[i] = 0.0f;
            }
          }
          #pragma omp parallel
          {
            for (int i = 0; i < n; i++) {
              x[i] = 2.0f;
            }
          }
        }"""))
    assert "#pragma omp parallel for" in to_c(parallel.parallel_for.apply(p, "f > for i#1").program)
    assert refusal(parallel.parallel_for.apply, p, "f > for i#2") == (
        "parallel.parallel_for: for i (line 10) is inside a parallel construct ('#pragma omp parallel'); "
        "nested parallelism is refused")


def test_parallel_for_refuses_bad_collapse_and_schedule(ck):
    p = ck.load("matmul.c")
    assert "the body of for j (line 3) is not a single loop" in refusal(
        parallel.parallel_for.apply, p, "matmul > for i", collapse=3)
    a = loop.fission.apply(ck.load("attention.c"),
                           "attention > for i > after 'for (int j = 0; j <= i; j++)'#1").program
    assert "the bounds of for j (line 8) depend on an outer index ('i + 1'): the nest is not rectangular" in \
        refusal(parallel.parallel_for.apply, a, "attention > for i#1", collapse=2)
    for bad in (0, 1.5, True):
        assert "collapse must be a positive integer" in refusal(parallel.parallel_for.apply, p, "matmul > for i",
                                                                collapse=bad)
    assert "schedule kind must be one of static" in refusal(parallel.parallel_for.apply, p, "matmul > for i",
                                                            schedule="fastest")
    for bad in ("dynamic, 0", "static, n", "auto, 4"):
        assert "chunk size" in refusal(parallel.parallel_for.apply, p, "matmul > for i", schedule=bad)


# ----------------------------------------------------------------- simd


def test_simd_dot_product_of_attention(ck):
    p = ck.load("attention.c")
    r = parallel.simd.apply(p, "attention > for d#1")
    assert ck.contains(ck.function_text(r.program, "attention"), """
        float s = 0.0f;
        #pragma omp simd reduction(+:s)
        for (int d = 0; d < D; d++) {
          s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];
        }""")
    (ob,) = r.obligations
    assert ob.kind == "parallel" and get(r.program, ob.paths[0]).mode == "simd"
    assert r.fp == "reassoc"
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    ck.close_outputs(p, r.program, "attention", attention_args(ck, 4, 6, 64))


def test_simd_inside_parallel_rows(ck):
    p = ck.load("softmax.c")
    q = parallel.parallel_for.apply(p, "softmax > for i").program
    r = parallel.simd.apply(q, "softmax > for j#3")
    assert pragmas(r.program) == ["omp parallel for", "omp simd"] and r.fp == "exact"
    ck.check(p, r.program, "softmax", rows_args(ck))


def test_simd_refusals(ck):
    p = ck.load("matmul.c")
    assert refusal(parallel.simd.apply, p, "matmul > for j") == (
        "parallel.simd: for j (line 3) is not an innermost loop: it contains 'for (int k = 0; k < K; k++) {'")
    assert "'C[i * N + j]' (line 8) updates C in both runs" in refuted(p, parallel.simd.apply(p, "matmul > for k"))


# ----------------------------------------------------------------- privatize_reduction


def test_privatize_reduction_rmsnorm(ck):
    p = ck.load("rmsnorm.c")
    r = parallel.privatize_reduction.apply(p, "rmsnorm > for j#1", "ss")
    assert ck.function_text(r.program, "rmsnorm") == c("""
        void rmsnorm(int R, int C, const float *x, const float *w, float *y) {
          for (int i = 0; i < R; i++) {
            float ss = 0.0f;
            #pragma omp parallel
            {
              float ss_p = 0.0f;
              #pragma omp for
              for (int j = 0; j < C; j++) {
                ss_p += x[i * C + j] * x[i * C + j];
              }
              #pragma omp atomic
              ss += ss_p;
            }
            ss = ss / C + 1e-5f;
            ss = 1.0f / sqrtf(ss);
            for (int j = 0; j < C; j++) {
              y[i * C + j] = w[j] * (ss * x[i * C + j]);
            }
          }
        }""")
    (ob,) = r.obligations
    assert ob.kind == "parallel" and ob.claim == ("distinct iterations of for j (line 9) touch disjoint cells, "
                                                 "apart from the reductions on ss_p")
    assert get(r.program, ob.paths[0]).pragmas == ("omp for",)
    assert r.fp == "reassoc"
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    ck.close_outputs(p, r.program, "rmsnorm", rows_args(ck, R=3, C=4000, weights=True))
    nested = refusal(parallel.parallel_for.apply, r.program, "rmsnorm > for i")
    assert "contains a parallel construct ('#pragma omp parallel')" in nested


def test_privatize_reduction_keeps_other_reductions_and_types(ck):
    p = ck.parse(c("""
        #include <math.h>

        void f(int n, const double *x, double *out) {
          double s = 0.0;
          double hi = x[0];
          for (int i = 0; i < n; i++) {
            s += x[i];
            hi = fmax(hi, x[i]);
          }
          out[0] = s;
          out[1] = hi;
        }"""))
    r = parallel.privatize_reduction.apply(p, "f > for i", "s")
    text = ck.function_text(r.program, "f")
    assert ck.contains(text, """
        double s_p = 0.0;
        #pragma omp for reduction(max:hi)""")
    ck.roundtrip(r.program)
    ck.compiles(r.program)


def test_privatize_reduction_refusals(ck):
    p = ck.load("softmax.c")
    assert refusal(parallel.privatize_reduction.apply, p, "softmax > for j#1", "max_val") == (
        "parallel.privatize_reduction: 'max_val' cannot be privatized in for j (line 6): its updates are a max "
        "reduction; use parallel.parallel_for")
    assert "'y' cannot be privatized in for j (line 12): it is not a reduction: a scalar declared before the " \
           "loop" in refusal(parallel.privatize_reduction.apply, p, "softmax > for j#2", "y")
    moe = ck.load("moe.c")
    assert "'best' cannot be privatized in for e (line 23): it is not a reduction" in refusal(
        parallel.privatize_reduction.apply, moe, "moe > for e#3", "best")
