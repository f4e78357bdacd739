"""quantize.int8_groups, group_accumulator, integer_product and the int8
path of vector.vectorize on matvec.c, with c_sources/matvec_q8.c (the
runq-style reference) as the quantized result to agree with."""
from __future__ import annotations

import textwrap
from array import array
from typing import Any

import pytest

from optitrust_py import ir
from optitrust_py.checks import run_exec_checks
from optitrust_py.level2 import check_step
from optitrust_py.report import badges
from optitrust_py.runner import new_session, run_script
from optitrust_py.session import Rewrite, Session, inherit_contracts
from optitrust_py.spec import load_contracts
from transformations import loop, parallel, quantize, variable, vector
from conftest import ROOT
from helpers import refusal, refuted

SPEC = ROOT / "specs" / "matvec_q8.spec"
BOUND = 32 * ((1 + quantize.HALF_STEP) ** 2 - 1)  # int8_groups' default tolerance for two arrays
QUANTIZE = ("matvec > for bj > for j", {"W": ["D", "N"], "x": ["N"]})


def contracts_of(program: ir.Program, spec: Any = SPEC) -> dict[str, Any]:
    return load_contracts(program, spec)


def apply(t: Any, program: ir.Program, contracts: dict[str, Any], *args: Any, **kwargs: Any) -> Rewrite:
    """`t.apply` inside a session holding `contracts`, as in a script."""
    with Session() as s:
        s.contracts = dict(contracts)
        return t.apply(program, *args, **kwargs)


def tiled(ck: Any) -> tuple[ir.Program, dict[str, Any]]:
    p = ck.load("matvec.c")
    return loop.tile.apply(p, "matvec > for j", 32).program, contracts_of(p)


def quantized(ck: Any) -> tuple[ir.Program, Rewrite, dict[str, Any]]:
    p, contracts = tiled(ck)
    r = apply(quantize.int8_groups, p, contracts, *QUANTIZE, ahead=["W"])
    return p, r, inherit_contracts(contracts, r)


def proved(before: ir.Program, r: Rewrite, contracts: dict[str, Any]) -> list[str]:
    result = check_step(before, r.program, r.obligations, inherit_contracts(contracts, r))
    assert result.ok, result.problems
    return [v.kind for v in result.verdicts]


def matvec_args(ck: Any, N: int, D: int) -> list[Any]:
    return [N, D, ck.floats(D * N), ck.floats(N), ck.floats(D)]


def outputs(ck: Any, program: ir.Program, args: list[Any]) -> array:
    return array("f", ck.run(program, "matvec", args)[2])


def test_int8_groups_quantizes_w_ahead_and_x_on_the_fly(ck):
    p, r, contracts = quantized(ck)
    text = ck.function_text(r.program, "matvec_q8")
    assert text.startswith("void matvec_q8(int N, int D, const int8_t *Wq, const float *Ws, const float *x, "
                           "float *y) {")
    assert ck.contains(text, """
        __requires("N >= 1, D >= 1, N % 32 == 0");
        __reads("Wq ~> Matrix2(D, N), Ws ~> Matrix2(D, N / 32), x ~> Matrix1(N)");
        __writes("y ~> Matrix1(D)");
        int8_t *xq = malloc(N * sizeof(int8_t));
        float *xs = malloc(N / 32 * sizeof(float));
        quantize_q8(1, N, x, xq, xs);""")
    assert "y[i] += (float)Wq[i * N + j] * Ws[i * (N / 32) + j / 32] * ((float)xq[j] * xs[j / 32]);" in text
    assert ck.contains(ck.function_text(r.program, "matvec"), """
        int8_t *Wq = malloc(D * N * sizeof(int8_t));
        float *Ws = malloc(D * (N / 32) * sizeof(float));
        quantize_q8(D, N, W, Wq, Ws);
        matvec_q8(N, D, Wq, Ws, x, y);
        free(Wq);
        free(Ws);""")
    assert [f.name for f in r.program.functions()] == ["quantize_q8", "matvec_q8", "matvec"]
    assert r.fp == "lossy" and r.tolerance == pytest.approx(BOUND)
    assert contracts["matvec_q8"].params == ("N", "D", "Wq", "Ws", "x", "y")
    assert proved(p, r, contracts_of(p)) == ["divides", "divides", "inline"]
    ck.roundtrip(r.program)
    ck.compiles(r.program)


def test_int8_groups_error_is_within_its_bound_and_matches_the_runq_reference(ck):
    """The step's outputs differ from the fp32 ones by quantization noise,
    well within the declared bound, and agree with the straightforward
    runq-style kernel of c_sources/matvec_q8.c (both quantize alike)."""
    p, r, _ = quantized(ck)
    args = matvec_args(ck, 256, 40)
    exact, ours = outputs(ck, p, args), outputs(ck, r.program, args)
    ref = array("f", ck.run_text((ROOT / "c_sources" / "matvec_q8.c").read_text(), "matvec_q8.c", "matvec",
                                 args)[2])
    scale = max(abs(v) for v in exact)
    err = max(abs(a - b) for a, b in zip(exact, ours))
    assert 1e-4 * scale < err < 0.02 * scale  # quantization noise: ~0.5% of the scale on random data
    assert all(abs(a - b) <= r.tolerance * max(1.0, abs(a)) for a, b in zip(exact, ours))
    assert max(abs(a - b) for a, b in zip(ours, ref)) <= 1e-4 * scale


def test_int8_groups_without_ahead_stays_in_the_function(ck):
    p, contracts = tiled(ck)
    r = apply(quantize.int8_groups, p, contracts, "matvec > for bj > for j", {"x": ["N"]})
    assert [f.name for f in r.program.functions()] == ["quantize_q8", "matvec"]
    text = ck.function_text(r.program, "matvec")
    assert "y[i] += W[i * N + j] * ((float)xq[j] * xs[j / 32]);" in text and text.endswith("free(xs);\n}")
    assert r.tolerance == pytest.approx(32 * quantize.HALF_STEP)
    assert proved(p, r, contracts) == ["divides"]
    again = apply(quantize.int8_groups, r.program, contracts, "matvec > for bj > for j", {"W": ["D", "N"]})
    assert [f.name for f in again.program.functions()] == ["quantize_q8", "matvec"]  # the quantizer is reused


def test_int8_groups_refusals(ck):
    p, contracts = tiled(ck)
    go = quantize.int8_groups.apply

    def why(program: ir.Program, *args: Any, **kwargs: Any) -> str:
        with Session() as s:
            s.contracts = dict(contracts)
            return refusal(go, program, *args, **kwargs)
    untiled = ck.load("matvec.c")
    assert "must step by 1 over a constant number of iterations" in why(untiled, "matvec > for j", {"x": ["N"]})
    assert "matvec writes 'y'" in why(p, "matvec > for bj > for j", {"y": ["D"]})
    assert "'i' is not a parameter of matvec" in why(p, "matvec > for bj > for j", {"i": ["D"]})
    assert "ahead lists arrays among ['x']" in why(p, *QUANTIZE[:1], {"x": ["N"]}, ahead=["W"])
    assert "ahead lists arrays among ['W', 'x']" in why(p, *QUANTIZE, ahead="W")
    assert "arrays maps each float array" in why(p, "matvec > for bj > for j", [])
    assert "does not delinearise" in why(p, "matvec > for bj > for j", {"W": ["N", "D"]})
    assert "the kernel name 'matvec' is not an identifier or is already used" in \
        why(p, *QUANTIZE, ahead=["W"], kernel="matvec")
    assert "kernel= names the function that takes arrays quantized ahead" in why(p, *QUANTIZE, kernel="k")
    assert "tolerance must be a number in (0, 1)" in why(p, *QUANTIZE, tolerance=2)
    outside = ck.parse(ck.function_text(p, "matvec").replace("y[i] = 0.0f;", "y[i] = x[0];"))
    assert "'x[0]' (line 3) is outside the group loop" in why(outside, *QUANTIZE)
    # without a contract (no session), the kernel cannot get one
    assert "matvec has no contract" in refusal(go, p, *QUANTIZE, ahead=["W"])


def test_int8_groups_level2_refutes_groups_that_do_not_divide_the_rows(ck):
    """With matvec.spec (N >= 1 only), a row of W need not be whole groups:
    the quantizer would read past its end."""
    p = ck.load("matvec.c")
    contracts = contracts_of(p, ROOT / "specs" / "matvec.spec")
    t = loop.tile.apply(p, "matvec > for j", 32).program
    r = apply(quantize.int8_groups, t, contracts, "matvec > for bj > for j", {"W": ["D", "N"]}, ahead=["W"])
    reason = refuted(t, r, contracts)
    assert reason.startswith("divides:") and "N = " in reason


# ----------------------------------------------------------------- group_accumulator and integer_product


def accumulated(ck: Any) -> tuple[ir.Program, Rewrite, dict[str, Any]]:
    _, q, contracts = quantized(ck)
    return q.program, apply(quantize.group_accumulator, q.program, contracts, "matvec_q8 > for bj > for j"), \
        contracts


def test_group_accumulator_factors_the_scales_out_of_the_group(ck):
    before, r, contracts = accumulated(ck)
    assert ck.contains(ck.function_text(r.program, "matvec_q8"), """
        for (int bj = 0; bj < N; bj += 32) {
          float acc = 0.0f;
          for (int j = bj; j < bj + 32; j++) {
            acc += (float)Wq[i * N + j] * (float)xq[j];
          }
          y[i] += acc * (Ws[i * (N / 32) + bj / 32] * xs[bj / 32]);
        }""")
    assert r.fp == "reassoc"
    assert proved(before, r, contracts) == ["equals", "equals", "unaliased"]
    ck.roundtrip(r.program)
    ck.close_outputs(before, r.program, "matvec", matvec_args(ck, 128, 9), 1e-5, floor=1.0)


def test_group_accumulator_refusals(ck):
    p, contracts = tiled(ck)
    ga = quantize.group_accumulator.apply
    assert "no factor is the same for the whole group" in refusal(ga, p, "matvec > for bj > for j")
    assert "must step by 1 over a constant number" in refusal(ga, p, "matvec > for bj")
    two = ck.parse(ck.function_text(p, "matvec").replace("y[i] += W[i * N + j] * x[j];",
                                                         "y[i] += W[i * N + j] * x[j];\n y[i] += 1.0f;"))
    assert "must be one statement 'cell += a * b * ...'" in refusal(ga, two, "matvec > for bj > for j")
    moving = ck.parse(ck.function_text(p, "matvec").replace("y[i] +=", "y[j / 32] +="))
    assert "'y[j / 32]' is not the same cell at every iteration" in refusal(ga, moving, "matvec > for bj > for j")


UNALIGNED = """
#include <stdint.h>
#include <otp.h>
void dot(int N, const int8_t *a, const float *s, float *y) {
  __requires("N >= 64, N % 32 == 0");
  __reads("a ~> Matrix1(N), s ~> Matrix1(N / 32)");
  __writes("y ~> Matrix1(1)");
  y[0] = 0.0f;
  for (int bj = 16; bj < N - 16; bj += 32) {
    for (int j = bj; j < bj + 32; j++) {
      y[0] += (float)a[j] * s[j / 32];
    }
  }
}
"""


def test_group_accumulator_level2_refutes_groups_that_straddle_two_scales(ck):
    """Groups that start at 16, 48, ... span two scales: one scale for the
    whole group is wrong, which level 2 shows with a j where j / 32 differs."""
    p = ck.parse(textwrap.dedent(UNALIGNED))
    r = quantize.group_accumulator.apply(p, "dot > for bj > for j")
    reason = refuted(p, r, load_contracts(p, None))
    assert reason.startswith("equals:") and "j / 32" in reason


def test_integer_product_sums_in_int32_exactly(ck):
    _, acc, contracts = accumulated(ck)
    r = quantize.integer_product.apply(acc.program, "matvec_q8 > for bj > for j")
    assert ck.contains(ck.function_text(r.program, "matvec_q8"), """
          int32_t acc = 0;
          for (int j = bj; j < bj + 32; j++) {
            acc += (int32_t)Wq[i * N + j] * (int32_t)xq[j];
          }
          y[i] += (float)acc * (Ws[i * (N / 32) + bj / 32] * xs[bj / 32]);""")
    assert r.fp == "exact" and not r.obligations
    ck.check(acc.program, r.program, "matvec", matvec_args(ck, 256, 7))


def test_integer_product_refusals(ck):
    before, acc, _ = accumulated(ck)
    ip = quantize.integer_product.apply
    assert "must follow the declaration of its float accumulator" in \
        refusal(ip, before, "matvec_q8 > for bj > for j")
    text = ck.function_text(acc.program, "matvec_q8")
    floats = ck.parse("#include <stdint.h>\n" + text.replace("(float)xq[j]", "xs[j / 32]"))
    assert "with a and b 8-bit integers" in refusal(ip, floats, "matvec_q8 > for bj > for j")
    wide = ck.parse("#include <stdint.h>\n" + text.replace("j < bj + 32", "j < bj + 512").replace("bj += 32",
                                                                                                 "bj += 512"))
    assert "sums 512 products; above 256" in refusal(ip, wide, "matvec_q8 > for bj > for j")


# ----------------------------------------------------------------- the vector form and the script


def test_vectorize_turns_the_groups_into_vnni_dot_products(ck):
    _, acc, contracts = accumulated(ck)
    p = quantize.integer_product.apply(acc.program, "matvec_q8 > for bj > for j").program
    p = parallel.parallel_for.apply(p, "matvec_q8 > for i").program
    p = variable.local_accumulator.apply(p, "matvec_q8 > for bj", "y[i]").program
    r = vector.vectorize.apply(p, "matvec_q8 > for bj", isa="avx512")
    text = ck.function_text(r.program, "matvec_q8_avx512")
    assert "acc_v = _mm512_dpwssd_epi32(acc_v, _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)" \
           "&Wq[i * N + bj])), _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)&xq[bj])));" in text
    assert "_mm512_fmadd_ps(_mm512_cvtepi32_ps(acc_v), _mm512_set1_ps(Ws[i * (N / 32) + bj / 32] * xs[bj / 32])" \
           in text
    assert '__builtin_cpu_supports("avx512vnni")' in ck.function_text(r.program, "matvec_q8")
    assert 'GCC target("avx512f,avx512bw,avx512vnni")' in [i.text for i in r.program.items
                                                            if isinstance(i, ir.Pragma)]
    assert r.fp == "reassoc" and [o.kind for o in r.obligations] == ["lanes"]
    assert proved(p, r, contracts) == ["lanes"]
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    # runs the VNNI kernel where the CPU has it (this project's machines do), the plain one elsewhere
    ck.close_outputs(p, r.program, "matvec", matvec_args(ck, 512, 33), 1e-5, floor=1.0)
    assert "AVX-512 VNNI only" in refusal(vector.vectorize.apply, p, "matvec_q8 > for bj", isa="avx2")


def test_the_script_passes_level2_and_exec_and_reports_the_error(tmp_path):
    script = ROOT / "scripts" / "quantize.py"
    session = new_session(script)
    assert run_script(session, script) is None
    run_exec_checks(session)
    lossy = session.steps[1]
    assert lossy.name == "quantize.int8_groups" and lossy.checks["exec"].ok
    shown = badges(lossy).plain
    assert "max abs err" in shown and "max rel err" in shown and "lossy (rel tol 0.25)" in shown
    assert all(s.checks["exec"].ok for s in session.steps)


def test_the_script_benchmarks_the_kernel_on_weights_quantized_once():
    """`otp bench scripts/quantize.py`, small: the kernel through its setup,
    the fp32 ending and the runq reference, all within the declared 2% of
    the fp32 original (quantization noise is well above float rounding)."""
    from optitrust_py.bench import declared, run_bench

    script = ROOT / "scripts" / "quantize.py"
    session = new_session(script)
    assert run_script(session, script) is None
    spec = declared(session)
    assert spec is not None and str(spec.call) == "matvec_q8(N, D, Wq, Ws, x, y)"
    report = run_bench(session.original, session.program, session.contracts, spec, {"N": 256, "D": 64},
                       threads=1, repeats=1, library="numpy")
    assert report.ok, report.failure
    assert set(report.timings) == {"original", "optimized", "fp32", "runq", "numpy"}
    assert 1e-4 < report.errors["optimized"] <= 0.02 and report.errors["fp32"] <= 1e-5
    assert abs(report.errors["runq"] - report.errors["optimized"]) < 1e-3  # the same quantization
    data = report.to_json(str(script), "cpu")
    assert set(data["variants"]) == {"fp32", "runq"} and data["ratio_vs_runq"] > 0
