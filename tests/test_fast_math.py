"""gpu.fast_math: expf and float divisions computed with the GPU's
approximate instructions, a lossy step that declares its tolerance."""
from __future__ import annotations

from pathlib import Path

from optitrust_py.level2 import check_step as check_level2
from optitrust_py.level3 import Runs, check_step as check_level3
from optitrust_py.spec import parse_spec_file
from transformations import gpu
from helpers import refusal

ROOT = Path(__file__).resolve().parents[1]


def test_softmax_exps_and_divisions_become_the_helpers(ck) -> None:
    """softmax.c: the exponentials and the division by the sum; the step is
    lossy with the declared tolerance, no obligation, level 2 ok, level 3
    takes the helpers as exact (`=`), and the outputs move by less than
    the tolerance (but do move: the CPU helpers round as the GPU does)."""
    program = ck.load("softmax.c")
    r = gpu.fast_math.apply(program, "softmax > for i")
    text = ck.function_text(r.program, "softmax")
    assert "otp_fast_expf(x[i * C + j] - max_val)" in text
    assert "otp_fast_div(y[i * C + j], sum)" in text
    assert "expf(" not in text.replace("otp_fast_expf(", "") and " / " not in text
    assert (r.fp, r.tolerance, r.obligations) == ("lossy", gpu.FAST_MATH_TOLERANCE, ())
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    args = [3, 200, ck.floats(600), ck.floats(600)]
    worst = ck.close_outputs(program, r.program, "softmax", args, rel=gpu.FAST_MATH_TOLERANCE)
    assert worst > 0
    contracts = parse_spec_file(ROOT / "specs" / "softmax.spec")
    assert check_level2(program, r.program, r.obligations, contracts).ok
    result = check_level3(program, r.program, contracts, [{"R": 2, "C": 5}], r.fp, r.tolerance, Runs())
    assert result.ok and result.label == "=", result.problems


def test_integer_divisions_stay_and_a_statement_without_either_is_refused(ck) -> None:
    """gqa_decode.c: the score's division by sqrtf(D), the exponentials and
    the division by the sum go; the query head's kv head, `h / (H / KVH)`,
    an integer division, stays. Refused: a loop with neither expf nor a
    float division, a tolerance that is not a positive number."""
    program = ck.load("gqa_decode.c")
    r = gpu.fast_math.apply(program, "gqa_decode")
    text = ck.function_text(r.program, "gqa_decode")
    assert "int g = h / (H / KVH);" in text
    for helper in ("otp_fast_div(s, sqrtf(D))", "otp_fast_expf(scores[t] - max_val)",
                   "otp_fast_div(scores[t], sum)"):
        assert helper in text
    assert text.count(" / ") == 2  # h / (H / KVH)
    loop_without = "gqa_decode > for h > for t#1 > for d"
    assert "has no expf call and no division of floats" in refusal(gpu.fast_math.apply, program, loop_without)
    assert "tolerance must be a positive number" in refusal(gpu.fast_math.apply, program, "gqa_decode", 0)
    assert "tolerance must be a positive number" in refusal(gpu.fast_math.apply, program, "gqa_decode", "1e-5")
