"""The --exec check on the real kernels: exact passes, wrong steps named at
the right element, out-of-bounds accesses caught, tolerances, bad sizes."""
from __future__ import annotations

import json
import math
from array import array
from pathlib import Path
from typing import Any

import pytest

from optitrust_py import execcheck as ec
from optitrust_py import ir
from optitrust_py.errors import SpecError
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.printer import to_c
from optitrust_py.spec import check_contract, load_contracts, parse_spec_text
from test_bf16 import bf16_reference
from transformations import matrix, variable

ROOT = Path(__file__).resolve().parent.parent
MATMUL_SIZES = {"M": 5, "N": 4, "K": 3}
TRANSFORMER_SIZES = {"L": 2, "dim": 8, "hidden": 12, "H": 2, "KVH": 1, "SMAX": 4, "pos": 2}


def kernel(name: str) -> tuple[ir.Program, dict]:
    p = parse_file(ROOT / "c_sources" / f"{name}.c")
    return p, load_contracts(p, ROOT / "specs" / f"{name}.spec")


def variant(p: ir.Program, old: str, new: str) -> ir.Program:
    """`p` with one edit of its printed text (the edit must apply)."""
    text = to_c(p)
    assert old in text, old
    return parse_text(text.replace(old, new), "variant.c")


@pytest.fixture(scope="module")
def matmul():
    return kernel("matmul")


# ----------------------------------------------------------------- exact passes


def test_matmul_against_itself(matmul):
    p, c = matmul
    r = ec.check_step(p, p, c, MATMUL_SIZES, functions=["matmul"])
    assert r.status == "pass" and r.ok
    f = r.function("matmul")
    assert f.status == "pass" and f.elements == 20 and f.max_abs_error == 0.0 and f.first_mismatch is None


def test_unchanged_step_is_reported(matmul):
    p, c = matmul
    same = parse_text(to_c(p), "again.c")
    r = ec.check_step(p, same, c, MATMUL_SIZES)
    assert r.status == "unchanged" and r.ok and r.functions == ()
    assert "changed no checked function" in r.summary()


def test_equivalent_rewrite_passes_exactly(matmul):
    p, c = matmul
    q = variant(p, "C[i * N + j] += A[i * K + k] * B[k * N + j];",
                "C[i * N + j] = C[i * N + j] + A[i * K + k] * B[k * N + j];")
    r = ec.check_step(p, q, c, MATMUL_SIZES)
    assert r.status == "pass"
    assert r.function("matmul").max_abs_error == 0.0
    assert "matmul: pass (20 elements, exact)" in r.summary()


# ----------------------------------------------------------------- wrong steps


def test_wrong_accumulation_fails_at_first_element(matmul):
    p, c = matmul
    q = variant(p, "C[i * N + j] += ", "C[i * N + j] = ")
    r = ec.check_step(p, q, c, MATMUL_SIZES)
    assert r.status == "fail" and r.failed and not r.ok
    f = r.function("matmul")
    assert f.status == "fail"
    m = f.first_mismatch
    assert m.where == "C[0, 0]" and m.output == "C" and m.index == (0, 0)
    assert m.expected != m.actual
    assert f"C[0, 0]: expected {m.expected:.9g}, got {m.actual:.9g}" in r.summary()
    json.dumps(r.to_json())


def test_unwritten_column_is_caught_and_named(matmul):
    p, c = matmul
    q = variant(p, "j < N", "j < N - 1")  # column N-1 of C is never written
    f = ec.check_step(p, q, c, MATMUL_SIZES).function("matmul")
    assert f.status == "fail"
    assert f.first_mismatch.where == "C[0, 3]" and math.isnan(f.first_mismatch.actual)
    assert f.outputs[0].mismatches == 5  # one per row
    assert f.max_abs_error == math.inf


def test_short_reduction_fails(matmul):
    p, c = matmul
    q = variant(p, "k < K", "k < K - 1")
    f = ec.check_step(p, q, c, MATMUL_SIZES).function("matmul")
    assert f.status == "fail" and f.first_mismatch.where == "C[0, 0]"


def test_out_of_bounds_write_caught_by_sanitizer(matmul):
    p, c = matmul
    q = variant(p, "C[i * N + j] = 0.0f;", "C[i * N + j + 1] = 0.0f;")
    f = ec.check_step(p, q, c, MATMUL_SIZES, sanitize=True).function("matmul")
    assert f.status == "crash" and "AddressSanitizer" in f.reason
    assert "heap-buffer-overflow" in f.stderr and "WRITE" in f.stderr
    assert "step 1:" in f.stderr  # points into the printed step program


def test_out_of_bounds_write_caught_without_sanitizer(matmul):
    p, c = matmul
    q = variant(p, "C[i * N + j] = 0.0f;", "C[i * N + j + 1] = 0.0f;")
    f = ec.check_step(p, q, c, MATMUL_SIZES).function("matmul")
    assert f.status == "crash" and "outside an array" in f.reason
    assert "matmul wrote C[20], outside its 20 elements" in f.stderr


def test_write_to_read_only_input_caught(matmul):
    p, c = matmul
    q = variant(p, "C[i * N + j] = 0.0f;", "C[i * N + j] = 0.0f;\n((float *)B)[j] = 0.0f;")
    f = ec.check_step(p, q, c, MATMUL_SIZES).function("matmul")
    assert f.status == "crash" and "changed B[0], which it only reads" in f.stderr


def test_step_that_does_not_build_fails(matmul):
    p, c = matmul
    f = p.function("matmul")
    broken = ir.FuncDef(f.decl, ir.Block((ir.Opaque("this is not C;"),) + f.body.stmts))
    r = ec.check_step(p, ir.Program(p.includes, (broken,)), c, MATMUL_SIZES)
    fr = r.function("matmul")
    assert r.status == "fail" and fr.status == "fail" and "does not build" in fr.reason
    assert "step 1:" in fr.stderr


# ----------------------------------------------------------------- not checkable


def test_signature_change_is_not_checkable(matmul):
    p, c = matmul
    q = variant(p, "int K,", "long K,")
    r = ec.check_step(p, q, c, MATMUL_SIZES)
    f = r.function("matmul")
    assert f.status == "not-checkable" and "signature changed" in f.reason and "long K" in f.reason
    assert r.status == "unchecked" and not r.ok and not r.failed


def test_restrict_added_is_still_checked(matmul):
    p, c = matmul
    q = variant(p, "float *C)", "float *restrict C)")
    assert ec.check_step(p, q, c, MATMUL_SIZES, functions=["matmul"]).status == "pass"


def test_disappeared_function_is_not_checkable(matmul):
    p, c = matmul
    q = variant(p, "void matmul(", "void matmul2(")
    r = ec.check_step(p, q, c, MATMUL_SIZES)
    assert r.function("matmul").status == "not-checkable"
    assert "no longer defined" in r.function("matmul").reason
    assert r.function("matmul2").status == "not-checkable"  # changed, no contract, never run
    assert not r.ok


# ----------------------------------------------------------------- tolerance


REVERSED_K = ("A[i * K + k] * B[k * N + j]", "A[i * K + (K - 1 - k)] * B[(K - 1 - k) * N + j]")


def test_reordered_reduction_needs_a_tolerance(matmul):
    p, c = matmul
    q = variant(p, *REVERSED_K)
    sizes = {"M": 6, "N": 5, "K": 16}
    exact, loose, tight = (ec.check_step(p, q, c, sizes, tol) for tol in (0.0, 1e-5, 1e-10))
    assert exact.status == "fail" and tight.status == "fail"
    assert loose.status == "pass"
    f = loose.function("matmul")
    assert 0 < f.max_abs_error < 1e-5 and f.max_rel_error > 0
    assert f.max_abs_error == exact.function("matmul").max_abs_error


def test_compare_rules():
    f = lambda *xs: array("f", xs)  # noqa: E731
    assert ec.compare("x", f(0.0, math.nan), f(-0.0, math.nan), 0.0).passed
    r = ec.compare("x", f(1.0, 2.0), f(1.0, math.nan), 0.5)
    assert not r.passed and r.first.index == (1,) and r.max_abs_error == math.inf
    # absolute below magnitude 1, relative above
    assert ec.compare("x", array("d", [1e-7]), array("d", [2e-6]), 1e-5).passed
    assert ec.compare("x", array("d", [1000.0]), array("d", [1000.005]), 1e-5).passed
    assert not ec.compare("x", array("d", [1000.0]), array("d", [1000.02]), 1e-5).passed
    r = ec.compare("q", array("b", [1, 2, 3, 4]), array("b", [1, 2, 5, 4]), 0.0, dims=(2, 2))
    assert r.mismatches == 1 and r.first.where == "q[1, 0]" and r.max_abs_error == 2.0


# ----------------------------------------------------------------- sizes


def test_requires_violated(matmul):
    p, c = matmul
    with pytest.raises(SpecError, match=r"'M >= 1' of matmul \(M = 0\)"):
        ec.check_step(p, p, c, {"M": 0, "N": 4, "K": 3}, functions=["matmul"])


def test_missing_size(matmul):
    p, c = matmul
    q = variant(p, "C[i * N + j] += ", "C[i * N + j] = ")
    with pytest.raises(SpecError, match="matmul needs K"):
        ec.check_step(p, q, c, {"M": 4, "N": 4})


def test_non_integer_size(matmul):
    p, c = matmul
    with pytest.raises(SpecError, match="must be an integer"):
        ec.check_step(p, p, c, {"M": 4, "N": 4.5, "K": 2}, functions=["matmul"])


# ----------------------------------------------------------------- several steps


def test_steps_against_previous_and_original(matmul):
    p, c = matmul
    s1 = variant(p, *REVERSED_K)
    s2 = variant(s1, "C[i * N + j] += ", "C[i * N + j] = C[i * N + j] + ")
    sizes = {"M": 6, "N": 5, "K": 16}
    prev = ec.check_steps(p, [s1, s2], c, sizes, [1e-5, 0.0])
    assert [s.status for s in prev.steps] == ["pass", "pass"]
    assert prev.steps[1].reference == "step 1" and prev.steps[1].function("matmul").max_abs_error == 0.0
    orig = ec.check_steps(p, [s1, s2], c, sizes, [1e-5, 0.0], reference="original")
    assert orig.steps[1].reference == "original" and orig.steps[1].tolerance == 1e-5
    assert orig.ok
    bad = variant(s2, "k < K", "k < K - 1")
    rep = ec.check_steps(p, [s1, bad], c, sizes, [1e-5, 0.0])
    assert rep.failed and [s.status for s in rep.steps] == ["pass", "fail"]
    data = json.loads(json.dumps(rep.to_json()))
    assert data["steps"][1]["functions"][0]["first_mismatch"]["where"] == "C[0, 0]"


# ----------------------------------------------------------------- other kernels and types


def test_attention_against_itself():
    p, c = kernel("attention")
    r = ec.check_step(p, p, c, {"H": 2, "S": 8, "D": 4}, functions=["attention"], sanitize=True)
    assert r.status == "pass", r.summary()
    assert r.function("attention").elements == 64


def test_transformer_token_against_itself():
    p, c = kernel("transformer")
    r = ec.check_step(p, p, c, TRANSFORMER_SIZES, functions=["transformer_token"], sanitize=True)
    assert r.status == "pass", r.summary()
    # x[dim] + k_cache and v_cache [L][SMAX][kv_dim]
    assert r.function("transformer_token").elements == 8 + 2 * 2 * 4 * 4


def test_transformer_helper_change_is_covered_by_its_caller():
    p, c = kernel("transformer")
    good = variant(p, "y[i] += W[i * n + j] * x[j];", "y[i] = y[i] + W[i * n + j] * x[j];")
    r = ec.check_step(p, good, c, TRANSFORMER_SIZES)
    assert r.status == "pass", r.summary()
    assert r.function("transformer_token").status == "pass"
    assert r.function("matvec").status == "covered" and r.function("matvec").covered_by == "transformer_token"
    assert r.function("transformer_prefill").status == "skipped"  # no T given, its own code unchanged
    bad = variant(p, "for (int j = 0; j < n; j++) {\n      y[i]", "for (int j = 1; j < n; j++) {\n      y[i]")
    r = ec.check_step(p, bad, c, TRANSFORMER_SIZES)
    assert r.status == "fail" and r.function("transformer_token").status == "fail"


SCALE_C = """#include <stdint.h>

float dequant(int n, float scale, const int8_t *q, int32_t *acc, double *out) {
  float total = 0.0f;
  for (int i = 0; i < n; i++) {
    acc[i] += q[i];
    out[i] = scale * q[i];
    total += out[i];
  }
  return total;
}
"""
SCALE_SPEC = """dequant(n, scale, q, acc, out):
  requires n >= 1
  reads    q ~> Matrix1(n)
  modifies acc ~> Matrix1(n)
  writes   out ~> Matrix1(n)
"""


def test_int8_int32_double_scalar_float_and_return_value():
    p = parse_text(SCALE_C, "dequant.c")
    c = parse_spec_text(SCALE_SPEC)
    check_contract(c["dequant"], p.function("dequant"))
    sizes = {"n": 7, "scale": 0.25}
    r = ec.check_step(p, p, c, sizes, functions=["dequant"], sanitize=True)
    assert r.status == "pass", r.summary()
    assert [o.name for o in r.function("dequant").outputs] == ["acc", "out", "return"]
    q = variant(p, "acc[i] += q[i];", "acc[i] += q[i] + (i == 4);")
    f = ec.check_step(p, q, c, sizes).function("dequant")
    assert f.status == "fail" and f.first_mismatch.where == "acc[4]"
    assert f.first_mismatch.actual - f.first_mismatch.expected == 1
    q = variant(p, "total += out[i];", "total += 2 * out[i];")
    f = ec.check_step(p, q, c, sizes).function("dequant")
    assert f.status == "fail" and f.first_mismatch.where == "return"
    with pytest.raises(SpecError, match="dequant needs scale"):
        ec.check_step(p, p, c, {"n": 7}, functions=["dequant"])


def test_infinities_never_pass_a_tolerance():
    assert not ec.compare("x", array("f", [math.inf]), array("f", [1.0]), 0.5).passed
    assert not ec.compare("x", array("f", [math.inf]), array("f", [-math.inf]), 0.5).passed
    assert ec.compare("x", array("f", [math.inf]), array("f", [math.inf]), 0.0).passed


INSOURCE_C = """void scale(int n, float *x) {
  __requires("n >= 2");
  __modifies("x ~> Matrix1(n)");
  for (int i = 0; i < n; i++) {
    x[i] = 2.0f * x[i];
  }
}
"""


def test_in_source_contract_clauses_build_without_including_otp_h():
    p = parse_text(INSOURCE_C, "scale.c")
    c = load_contracts(p, None)
    q = variant(p, "x[i] = 2.0f * x[i];", '__xmodifies("&x[i] ~> Cell");\nx[i] = x[i] + x[i];')
    r = ec.check_step(p, q, c, {"n": 9})
    assert r.status == "pass", r.summary()
    with pytest.raises(SpecError, match=r"'n >= 2' of scale \(n = 1\)"):
        ec.check_step(p, q, c, {"n": 1})


# ----------------------------------------------------------------- a parameter narrowed to bfloat16

GQA_SIZES = {"H": 4, "KVH": 2, "D": 8, "SMAX": 12, "pos": 9}


def narrowed_gqa() -> tuple[ir.Program, dict, list[Any]]:
    """gqa_decode, then its k_cache and v_cache narrowed to otp_bf16 (two lossy steps)."""
    p, c = kernel("gqa_decode")
    k = matrix.set_precision.apply(p, "gqa_decode > param k_cache", "otp_bf16")
    return p, c, [k, matrix.set_precision.apply(k.program, "gqa_decode > param v_cache", "otp_bf16")]


def test_a_narrowed_parameter_gets_the_inputs_rounded():
    """The step's program gets the caches' random inputs rounded to
    bfloat16, as otp_to_bf16 rounds them, the original the plain ones: bit
    for bit, each cached value it gives back is the original's rounded."""
    p, c, (k, _) = narrowed_gqa()
    exact = ec.check_step(p, k.program, c, GQA_SIZES, 0.0).function("gqa_decode")
    assert exact.status == "fail" and exact.narrowed == ("k_cache",)
    cache = next(o for o in exact.outputs if o.name == "k_cache")
    first = cache.first
    assert first is not None and first.actual == bf16_reference(first.expected) != first.expected
    assert 0 < cache.max_abs_error <= 2.0 ** -9  # half a bfloat16 ulp for inputs in [-1, 1)
    assert cache.mismatches > cache.elements // 2  # most of them: every one that is not a bfloat16 already
    r = ec.check_step(p, k.program, c, GQA_SIZES, k.tolerance)
    f = r.function("gqa_decode")
    assert r.ok and f.status == "pass" and f.narrowed == ("k_cache",) and f.max_abs_error > 0
    assert "k_cache narrowed" in r.short() and "k_cache narrowed, given the inputs rounded" in r.summary()
    assert r.to_json()["functions"][0]["narrowed"] == ["k_cache"]


def test_steps_after_the_narrowing_compare_rounded_inputs_on_both_sides():
    p, c, (k, v) = narrowed_gqa()
    bound = variable.bind.apply(v.program, "gqa_decode > expr 'H / KVH'", "G").program
    report = ec.check_steps(p, [k.program, v.program, bound], c, GQA_SIZES, [k.tolerance, v.tolerance, 0.0])
    first, second, third = report.steps
    assert [s.status for s in report.steps] == ["pass"] * 3
    assert first.functions[0].narrowed == ("k_cache",) and second.functions[0].narrowed == ("v_cache",)
    assert third.functions[0].narrowed == () and third.short() == "="  # both take otp_bf16: bit-exact
    against_original = ec.check_steps(p, [k.program, v.program, bound], c, GQA_SIZES,
                                      [k.tolerance, v.tolerance, 0.0], reference="original")
    assert against_original.ok
    assert against_original.steps[2].functions[0].narrowed == ("k_cache", "v_cache")


def test_a_wrong_step_on_narrowed_parameters_still_fails():
    """Rounded inputs and a tolerance do not hide a wrong step: a scaled read
    of V, or an append that stores the wrong value, fails at its element."""
    p, c, (k, v) = narrowed_gqa()
    read = "(float)v_cache[(g * SMAX + t) * D + d]"
    scaled = variant(v.program, read, read + " * 1.5f")
    r = ec.check_step(k.program, scaled, c, GQA_SIZES, v.tolerance)
    f = r.function("gqa_decode")
    assert r.failed and f.narrowed == ("v_cache",) and f.first_mismatch.output == "out"
    shifted = variant(k.program, "otp_to_bf16(k_new[g * D + d])", "otp_to_bf16(k_new[g * D + d] + 0.25f)")
    f = ec.check_step(p, shifted, c, GQA_SIZES, k.tolerance).function("gqa_decode")
    assert f.status == "fail" and f.first_mismatch.where == "k_cache[0, 9, 0]"


def test_other_parameter_type_changes_stay_not_checkable():
    p, c, (k, _) = narrowed_gqa()
    for before, after in ((p, variant(p, "float *k_cache", "double *k_cache")),
                          (k.program, p),  # otp_bf16 back to float: not a narrowing
                          (p, variant(p, "float *k_cache", "int *k_cache"))):
        f = ec.check_step(before, after, c, GQA_SIZES, 1.0).function("gqa_decode")
        assert f.status == "not-checkable" and "signature changed" in f.reason


def test_a_scalar_otp_bf16_parameter_is_not_checkable():
    p = parse_text("#include <otp.h>\nvoid f(int n, otp_bf16 a, float *y) {\n"
                   "  for (int i = 0; i < n; i++) {\n    y[i] = (float)a;\n  }\n}\n", "scalar.c")
    c = parse_spec_text("f(n, a, y):\n  requires n >= 1\n  writes y ~> Matrix1(n)\n")
    check_contract(c["f"], p.function("f"))
    r = ec.check_step(p, p, c, {"n": 3, "a": 0.5}, functions=["f"])
    assert r.function("f").status == "not-checkable" and "in arrays only" in r.function("f").reason
