"""vector.vectorize on real kernels: exact lanes, remainders, reductions,
vector arrays in registers, both instruction sets, and its refusals."""
from __future__ import annotations

from pathlib import Path

import pytest

from optitrust_py.errors import TransformError
from optitrust_py.frontend import parse_file
from transformations import loop, vector

DATA = Path(__file__).parent / "data"
needs_avx512 = pytest.mark.skipif(vector.host_isa() != "avx512", reason="this machine has no AVX-512")


def _ikj(ck):
    p = ck.load("matmul.c")
    p = loop.fission.apply(p, "matmul > for j > after 'C[i * N + j] = 0.0f'").program
    return loop.swap.apply(p, "matmul > for j#2").program


@needs_avx512
def test_constant_lane_loops_in_a_region_are_exact(ck):
    p = _ikj(ck)
    p = loop.tile.apply(p, "matmul > for k > for j", 16).program
    r = vector.vectorize.apply(p, "matmul > for i", isa="avx512")
    text = ck.function_text(r.program, "matmul_avx512")
    assert ck.contains(text, """
        {
          _mm512_storeu_ps(&C[i * N + bj], _mm512_add_ps(_mm512_loadu_ps(&C[i * N + bj]), _mm512_mul_ps(_mm512_set1_ps(A[i * K + k]), _mm512_loadu_ps(&B[k * N + bj]))));
        }""")
    assert ck.contains(ck.function_text(r.program, "matmul"), """
        if (__builtin_cpu_supports("avx512f")) {
          matmul_avx512(M, N, K, A, B, C);
          return;
        }""")
    assert r.fp == "exact" and [o.kind for o in r.obligations] == ["lanes"]
    assert "#include <immintrin.h>" in r.program.includes
    ck.check(p, r.program, "matmul", [5, 32, 7, ck.floats(5 * 7), ck.floats(7 * 32), ck.floats(5 * 32)])


@needs_avx512
def test_vector_arrays_become_registers(ck):
    p = parse_file(DATA / "matmul_blocked.c")
    r = vector.vectorize.apply(p, "matmul > for bi", isa="avx512")
    text = ck.function_text(r.program, "matmul_avx512")
    assert "__m512 acc[8][2];" in text
    assert "acc[ii][jjv] = _mm512_add_ps(acc[ii][jjv], _mm512_mul_ps(_mm512_set1_ps(A[(bi + ii) * K + k]), " \
           "_mm512_loadu_ps(&B[k * N + bj + 16 * jjv])));" in text
    ck.check(p, r.program, "matmul", [16, 64, 9, ck.floats(16 * 9), ck.floats(9 * 64), ck.floats(16 * 64)])


@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_runtime_count_gets_a_remainder_loop(ck, isa):
    if isa == "avx512" and vector.host_isa() != "avx512":
        pytest.skip("this machine has no AVX-512")
    p = ck.load("rmsnorm.c")
    r = vector.vectorize.apply(p, "rmsnorm > for i > for j#2", isa=isa)
    w = vector.ISAS[isa].width
    text = ck.function_text(r.program, f"rmsnorm_{isa}")
    assert ck.contains(text, f"""
        for (int jv = 0; jv < C - {w - 1}; jv += {w}) {{""")
    assert ck.contains(text, f"""
        for (int j = C / {w} * {w}; j < C; j++) {{
          y[i * C + j] = w[j] * (ss * x[i * C + j]);
        }}""")
    assert r.fp == "exact"
    for cols in (37, 16, 5):
        ck.check(p, r.program, "rmsnorm", [3, cols, ck.floats(3 * cols), ck.floats(cols), ck.floats(3 * cols)])


@needs_avx512
def test_a_sum_gets_vector_partial_sums_and_reassociates(ck):
    p = ck.load("rmsnorm.c")
    r = vector.vectorize.apply(p, "rmsnorm > for i > for j#1", isa="avx512")
    text = ck.function_text(r.program, "rmsnorm_avx512")
    assert ck.contains(text, """
        __m512 ss_v[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int jv = 0; jv < C - 63; jv += 64) {
          ss_v[0] = _mm512_add_ps(ss_v[0], _mm512_mul_ps(_mm512_loadu_ps(&x[i * C + jv]), _mm512_loadu_ps(&x[i * C + jv])));
          ss_v[1] = _mm512_add_ps(ss_v[1], _mm512_mul_ps(_mm512_loadu_ps(&x[i * C + (jv + 16)]), _mm512_loadu_ps(&x[i * C + (jv + 16)])));""")
    assert ck.contains(text, """
        for (int u = 1; u < 4; u++) {
          ss_v[0] = _mm512_add_ps(ss_v[u], ss_v[0]);
        }
        float ss_lanes[16];
        _mm512_storeu_ps(ss_lanes, ss_v[0]);
        for (int l = 0; l < 16; l++) {
          ss += ss_lanes[l];
        }
        for (int j = C / 64 * 64; j < C; j++) {""")
    assert r.fp == "reassoc"
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    for cols in (100, 200, 7):
        ck.close_outputs(p, r.program, "rmsnorm", [4, cols, ck.floats(4 * cols), ck.floats(cols), ck.floats(4 * cols)], floor=1.0)


@needs_avx512
def test_streaming_stores_after_an_aligning_peel(ck):
    p = ck.load("rmsnorm.c")
    r = vector.vectorize.apply(p, "rmsnorm > for i > for j#2", isa="avx512", stream=True)
    text = ck.function_text(r.program, "rmsnorm_avx512")
    assert ck.contains(text, """
        int j_peel = (int)(((64 - ((uintptr_t)&y[i * C + 0] & 63)) & 63) / 4);
        int j_aligned = j_peel < C ? j_peel : C;
        for (int j = 0; j < j_aligned; j++) {
          y[i * C + j] = w[j] * (ss * x[i * C + j]);
        }
        for (int jv = j_aligned; jv < C - 15; jv += 16) {
          _mm512_stream_ps(&y[i * C + jv], _mm512_mul_ps(_mm512_loadu_ps(&w[jv]), _mm512_mul_ps(_mm512_set1_ps(ss), _mm512_loadu_ps(&x[i * C + jv]))));
        }
        for (int j = j_aligned + (C - j_aligned) / 16 * 16; j < C; j++) {
          y[i * C + j] = w[j] * (ss * x[i * C + j]);
        }
        _mm_sfence();""")
    assert "#include <stdint.h>" in r.program.includes and r.fp == "exact"
    for cols in (37, 64, 3):
        ck.check(p, r.program, "rmsnorm", [3, cols, ck.floats(3 * cols), ck.floats(cols), ck.floats(3 * cols)])


def test_an_output_the_loop_reads_back_is_not_streamed(ck):
    r = vector.vectorize.apply(ck.load("softmax.c"), "softmax > for i > for j#3", isa="avx2", stream=True)
    text = ck.function_text(r.program, "softmax_avx2")
    assert "_mm256_storeu_ps(&y[i * C + jv]" in text and "stream" not in text


def test_refuses_a_call_without_vector_form(ck):
    p = ck.load("softmax.c")
    with pytest.raises(TransformError, match=r"no vector form for 'expf\(x\[i \* C \+ j\] - max_val\)'"):
        vector.vectorize.apply(p, "softmax > for i > for j#2", isa="avx2")


def test_refuses_a_strided_access(ck):
    p = ck.load("matmul.c")
    with pytest.raises(TransformError, match=r"'B\[k \* N \+ j\]' does not step by one element per lane"):
        vector.vectorize.apply(p, "matmul > for k", isa="avx2")


def test_refuses_a_branch_and_a_region_without_lane_loops(ck):
    with pytest.raises(TransformError, match="is not an assignment"):
        vector.vectorize.apply(ck.load("moe.c"), "moe > for s#1 > for e", isa="avx512")
    p = loop.tile.apply(_ikj(ck), "matmul > for k > for j", 8).program
    with pytest.raises(TransformError, match="no innermost loop in for k .* multiple of 16"):
        vector.vectorize.apply(p, "matmul > for k", isa="avx512")


@needs_avx512
def test_running_max_and_vector_exp_in_softmax(ck):
    p = ck.load("softmax.c")
    r = vector.vectorize.apply(p, "softmax > for i", isa="avx512")
    text = ck.function_text(r.program, "softmax_avx512")
    assert ck.contains(text, """
        for (int jv = 1; jv < C - 63; jv += 64) {
          max_val_v[0] = _mm512_max_ps(_mm512_loadu_ps(&x[i * C + jv]), max_val_v[0]);
          max_val_v[1] = _mm512_max_ps(_mm512_loadu_ps(&x[i * C + (jv + 16)]), max_val_v[1]);""")
    assert "otp_expf_avx512(_mm512_sub_ps(_mm512_loadu_ps(&x[i * C + jv]), _mm512_set1_ps(max_val)))" in text
    assert r.program.function("otp_expf_avx512") is not None
    assert (r.fp, r.tolerance) == ("lossy", vector.EXP_TOLERANCE)
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    ck.close_outputs(p, r.program, "softmax", [3, 77, ck.floats(3 * 77), ck.floats(3 * 77)], floor=1.0)


def test_refuses_an_unknown_instruction_set(ck):
    with pytest.raises(TransformError, match="unknown instruction set 'neon'"):
        vector.vectorize.apply(ck.load("rmsnorm.c"), "rmsnorm > for i > for j#2", isa="neon")
