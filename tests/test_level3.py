"""Level 3: the terms (optitrust_py/terms.py), their normal forms over the
reals (canon.py), and each step's label (level3.py) on the real scripts:
`=` when a step rounds as before, `≈fp` when it only computes the same
real numbers, `quantized(bound)` for the lossy step, refuted otherwise."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from optitrust_py import canon, terms as T
from optitrust_py.checks import _all_steps, combine3, run_level3
from optitrust_py.cli import cli
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.level3 import Level3Result, Runs, check_step, choose_sizes
from optitrust_py.runner import new_session, run_script
from optitrust_py.session import Session
from optitrust_py.spec import parse_spec_file, parse_spec_text
from optitrust_py.terms import NEG_INF, POS_INF, Term
from helpers import SHIFT_C, SHIFT_SPEC
from level3_corpus import MATVEC_Q8, Wrong, build
from transformations import loop, vector

ROOT = Path(__file__).resolve().parent.parent

a, b, c, x, m1, m2 = (T.leaf("in", "v", i) for i in range(6))


def add(*ts: Any) -> Term:
    out = ts[0]
    for t in ts[1:]:
        out = T.binary("add", out, t)
    return out


def meet(s: Any, t: Any) -> bool:
    norm = canon.Normalizer()
    return norm.normal(s) == norm.normal(t)


# ---------------------------------------------------------------- terms

def test_terms_are_interned() -> None:
    assert Term.make("add", a, b) is Term.make("add", a, b)
    assert T.leaf("in", "v", 0) is a and T.const(3) is T.const(Fraction(3))
    assert T.binary("sub", a, b) is T.binary("sub", a, b) and T.binary("sub", a, b) is not T.binary("sub", b, a)


def test_commutative_operands_are_ordered() -> None:
    for op in ("add", "mul", "max", "min", "eq"):
        t = T.binary(op, b, a)
        assert t is T.binary(op, a, b) and t.args == (a, b)
    assert T.binary("div", b, a).args == (b, a) and T.binary("lt", b, a).args == (b, a)


def test_only_ieee_exact_folds() -> None:
    assert T.binary("add", a, 0) is a and T.binary("add", T.ZERO, a) is a and T.binary("sub", a, 0) is a
    assert T.binary("mul", a, 1) is a and T.binary("mul", T.ONE, a) is a and T.binary("div", a, 1) is a
    assert T.binary("mul", a, 0).op == "mul", "x * 0 is -0 or NaN for some x"
    assert T.binary("sub", a, a).op == "sub", "x - x is NaN for infinite x"
    assert T.binary("add", T.const(Fraction(1, 2)), T.const(Fraction(1, 4))) is T.const(Fraction(3, 4))
    tenths = T.binary("add", T.const(Fraction("0.1")), T.const(Fraction("0.2")))
    assert tenths.op == "add", "0.3 is not a float: folding would claim an exact rounding"
    doubles: Term = T.binary("add", T.const(0.1), T.const(0.2))
    assert doubles.op == "add", "the double sum of 0.1 and 0.2 needs more than float32's 24 bits"
    assert T.binary("div", 1, 3).op == "div" and T.binary("div", 1, 4) is T.const(Fraction(1, 4))
    assert T.binary("add", T.const(1 << 24), T.ONE).op == "add", "2^24 + 1 is not a float32"
    assert T.binary("lt", 1, 2) is T.ONE and T.binary("lt", 2, 1) is T.ZERO
    assert T.unary("neg", T.unary("neg", a)) is a and T.unary("neg", T.const(2)) is T.const(-2)


def test_regrouped_chains_are_read_as_multisets_and_nothing_more() -> None:
    """What a vectorized reduction changes (the grouping of a chain of +,
    *, max or min) is seen without a normal form; anything else is left to
    normal forms (a distributed product is equal over the reals, not
    regrouped)."""
    norm = canon.Normalizer()
    assert norm.regrouped(add(add(a, b), c), add(a, add(c, b)))
    assert norm.regrouped(T.binary("max", T.binary("max", a, b), c), T.binary("max", a, T.binary("max", b, c)))
    assert norm.regrouped(T.unary("exp", add(add(a, b), c)), T.unary("exp", add(a, add(b, c))))
    assert not norm.regrouped(T.binary("sub", a, b), T.binary("sub", b, a))
    assert not norm.regrouped(add(a, b), add(a, a)) and not norm.regrouped(add(a, b), T.binary("max", a, b))
    distributed = add(T.binary("mul", x, a), T.binary("mul", x, b))
    assert not norm.regrouped(T.binary("mul", x, add(a, b)), distributed)
    assert meet(T.binary("mul", x, add(a, b)), distributed)


def test_ite_picks_a_decided_branch() -> None:
    assert T.ite(T.ONE, a, b) is a and T.ite(T.ZERO, a, b) is b
    cond = T.binary("lt", a, b)
    assert T.ite(cond, c, c) is c and T.lift(T.ite(cond, a, b)).op == "ite"


def test_integer_bound() -> None:
    q = [T.leaf("in_int", "q", i, 1) for i in range(64)]
    memo: dict[int, float] = {}
    assert T.integer_bound(q[0], memo) == 128 and q[0].integer
    product = T.binary("mul", q[0], q[1])
    assert product.integer and T.integer_bound(product, memo) == 128 * 128
    group = add(*(T.binary("mul", q[2 * i], q[2 * i + 1]) for i in range(32)))
    assert T.integer_bound(T.unary("tofloat", group), memo) == 32 * 128 * 128 < 2 ** 24
    wide = T.leaf("in_int", "w", 0, 4)
    assert T.integer_bound(wide, memo) == 2 ** 31
    assert T.integer_bound(a, memo) == math.inf and T.integer_bound(T.binary("mul", a, q[0]), memo) == math.inf
    assert T.integer_bound(T.const(Fraction(1, 2)), memo) == math.inf and T.integer_bound(T.const(-7), memo) == 7
    assert not T.binary("mul", a, q[0]).integer


# ---------------------------------------------------------------- canon

def test_reassociated_sums_meet() -> None:
    left, right = add(a, b, c), T.binary("add", a, T.binary("add", c, b))
    assert left is not right and meet(left, right)
    assert meet(T.binary("mul", a, add(b, c)), add(T.binary("mul", c, a), T.binary("mul", a, b)))
    assert meet(T.binary("sub", add(a, b), b), a)
    assert meet(Term.make("fma", a, b, c), add(T.binary("mul", a, b), c)), "a fused multiply-add: ≈fp, not ="
    assert meet(Term.make("fnma", a, b, c), T.binary("sub", c, T.binary("mul", a, b)))


def test_different_polynomials_do_not_meet() -> None:
    assert not meet(add(T.binary("mul", a, b), c), add(T.binary("mul", a, c), b))
    assert not meet(add(a, b), add(a, b, b))
    assert not meet(T.binary("sub", a, b), T.binary("sub", b, a))
    assert not meet(T.unary("exp", a), T.unary("exp", b))


def test_online_softmax_rescaling_meets() -> None:
    """exp(a - m1) * exp(m1 - m2) = exp(a - m2)."""
    rescaled = T.binary("mul", T.unary("exp", T.binary("sub", a, m1)), T.unary("exp", T.binary("sub", m1, m2)))
    assert meet(rescaled, T.unary("exp", T.binary("sub", a, m2)))
    assert not meet(rescaled, T.unary("exp", T.binary("sub", a, m1)))
    assert meet(T.unary("exp", T.ZERO), T.ONE)
    assert meet(T.binary("mul", T.unary("exp", a), T.unary("exp", T.unary("neg", a))), T.ONE)
    assert meet(T.binary("div", T.unary("exp", a), T.unary("exp", b)), T.unary("exp", T.binary("sub", a, b)))
    assert meet(T.binary("mul", T.unary("exp", a), T.unary("exp", a)), T.unary("exp", add(a, a)))


def test_exp_of_minus_infinity_is_zero() -> None:
    assert meet(T.unary("exp", T.binary("sub", NEG_INF, x)), T.ZERO)
    assert meet(T.binary("mul", c, T.unary("exp", add(NEG_INF, a))), T.ZERO)
    assert not meet(T.unary("exp", T.binary("sub", x, NEG_INF)), T.ZERO), "exp(x + inf) is not 0"


def test_max_is_a_set_and_minus_infinity_drops_out() -> None:
    assert meet(T.binary("max", a, T.binary("max", b, c)), T.binary("max", T.binary("max", c, a), b))
    assert meet(T.binary("max", a, T.binary("max", a, b)), T.binary("max", b, a))
    assert meet(T.binary("max", NEG_INF, T.binary("max", a, b)), T.binary("max", a, b))
    assert meet(T.binary("max", NEG_INF, a), a)
    assert not meet(T.binary("max", a, b), T.binary("max", a, c))
    assert not meet(T.binary("max", a, b), T.binary("min", a, b))
    assert meet(T.ite(T.binary("lt", a, b), b, a), T.binary("max", a, b)), "if (b > a) m = b: a maximum"


def test_plus_infinity_drops_out_of_a_minimum() -> None:
    assert meet(T.binary("min", a, POS_INF), a) and meet(T.binary("min", POS_INF, T.binary("min", b, a)),
                                                         T.binary("min", a, b))
    assert not meet(T.binary("max", a, POS_INF), a) and not meet(T.binary("min", a, NEG_INF), a)
    assert meet(Term.make("min", POS_INF, POS_INF), POS_INF) and not meet(Term.make("max", NEG_INF, NEG_INF), POS_INF)


def test_division_by_a_monomial_is_a_product() -> None:
    assert meet(T.binary("div", a, T.binary("mul", T.const(2), x)),
                T.binary("div", T.binary("mul", a, T.const(Fraction(1, 2))), x))
    assert not meet(T.binary("div", a, add(x, b)), T.binary("div", a, x))
    assert meet(T.binary("div", add(a, b), add(x, c)),
                add(T.binary("div", a, add(c, x)), T.binary("div", b, T.binary("add", x, c))))


def test_split_decides_conditions() -> None:
    cond = T.binary("lt", a, b)
    t = T.ite(cond, add(a, T.ONE), T.ite(cond, c, b))
    u = T.binary("mul", T.ite(cond, c, x), T.const(2))
    conds = canon.conditions([t, u], 8)
    assert conds == [cond]
    cases = dict((choice[cond.number], got) for choice, got in canon.split([t, u], conds))
    assert cases[True] == [add(a, T.ONE), T.binary("mul", c, T.const(2))]
    assert cases[False] == [b, T.binary("mul", x, T.const(2))]
    many = add(*(T.ite(T.binary("lt", T.leaf("in", "w", i), a), b, c) for i in range(5)))
    assert canon.conditions([many], 4) is None and len(canon.conditions([many], 5) or []) == 5


def test_evaluate_matches_python_math() -> None:
    inputs = canon.Inputs(7)
    va, vb, vc = (inputs.value(("in", "v", i)) for i in range(3))
    t = add(T.unary("exp", T.binary("sub", a, b)), T.binary("div", T.binary("max", a, b), c),
            T.unary("sqrt", T.binary("mul", b, b)))
    expected = math.exp(va - vb) + max(va, vb) / vc + abs(vb)
    assert canon.evaluate(t, inputs, {}) == pytest.approx(expected, rel=1e-12)
    assert canon.evaluate(T.ite(T.binary("lt", a, b), a, b), inputs, {}) == min(va, vb)
    assert canon.evaluate(T.unary("exp", T.binary("sub", NEG_INF, a)), inputs, {}) == 0.0
    assert canon.Inputs(7).value(("in", "v", 0)) == va and canon.Inputs(8).value(("in", "v", 0)) != va
    assert all(-2 <= v <= 2 for v in (va, vb, vc))


# ---------------------------------------------------------------- labels on the scripts

def checked(script: str, **check_sizes: int) -> Session:
    """The session of scripts/`script`.py with level 3 run on every step
    (at `check_sizes` when given, else at the sizes level 3 chooses)."""
    path = ROOT / "scripts" / f"{script}.py"
    session = new_session(path)
    assert run_script(session, path) is None
    if check_sizes:
        session.check_sizes = [check_sizes]
    run_level3(session)
    return session


def labels(session: Session) -> dict[str, str]:
    out = {}
    for step in _all_steps(session.steps):
        result = step.checks["level3"]
        assert result.ok, (step.number, step.call, result.problems)
        out[step.call.split("(")[0] + "#" + step.number] = result.label
    return out


def test_matmul_every_step_rounds_as_before() -> None:
    """Every step of matmul keeps each C cell's sum in the order of k (the
    vector kernel multiplies and adds without fusing), so all are `=`; at
    M=7, N=65, K=65 every tile runs whole and with a tail."""
    session = checked("matmul", M=7, N=65, K=65)
    got = labels(session)
    assert len(got) == 23 and set(got.values()) == {"="}, got
    (vec,) = [s for s in session.steps if s.call.startswith("vector.vectorize")]
    true, false = (f.detail for f in vec.checks["level3"].functions)
    assert true.endswith(' (with cpu_supports("avx512f") true)'), "the variant, against the code before"
    assert false.startswith("only pragmas changed") and false.endswith(' (with cpu_supports("avx512f") false)'), \
        "the code after the CPU test is the code before (its pragmas aside): no run"


@pytest.mark.parametrize("script", ["softmax", "rmsnorm"])
def test_reductions_become_fp_at_the_vectorize_step(script: str) -> None:
    session = checked(script)
    got = labels(session)
    assert list(got.values()) == ["=", "≈fp"], got
    (vec,) = [s for s in session.steps if s.call.startswith("vector.vectorize")]
    by_choice: dict[str, set[str]] = {}
    for f in vec.checks["level3"].functions:  # one check per statement the step changed
        by_choice.setdefault(f.detail.split("(with ")[-1], set()).add(f.status)
    assert by_choice.keys() == {'cpu_supports("avx512f") true)', 'cpu_supports("avx512f") false)'}
    assert "≈fp" in by_choice['cpu_supports("avx512f") true)'] and by_choice['cpu_supports("avx512f") false)'] == {"="}


def test_quantize_labels() -> None:
    session = checked("quantize")
    got = {k.split("#")[0]: v for k, v in labels(session).items()}
    assert got["quantize.int8_groups"] == "quantized(0.25)"
    assert got["quantize.integer_product"] == "="
    assert got["quantize.group_accumulator"] == "≈fp"
    (lossy,) = [s for s in session.steps if s.call.startswith("quantize.int8_groups")]
    assert all(f.status == "changed" for f in lossy.checks["level3"].functions)
    sizes = dict(lossy.checks["level3"].functions[0].sizes)
    inputs = sizes["N"] * (sizes["D"] + 1)
    structure = f"each output is exactly the step before's with its {inputs} quantized inputs"
    assert all(f.detail.startswith(structure) for f in lossy.checks["level3"].functions), lossy.checks["level3"]


@pytest.mark.parametrize("old, new, problem", [
    ("fabsf(src[r * C + g * 32 + k])", "fabsf(src[r * C + k])",
     r"the int8 code of W\[\d+\] is scaled by the largest magnitude of \{W\[64\], .*\}, not of its own group of 32"),
    ("xs[j / 32]", "xs[0]", r"output y\[\d\] differs: .* 'before the step' here is the step before's value with each "
                            r"of its 192 quantized inputs read as its int8 code times its group's scale")])
def test_quantizing_step_with_a_wrong_group_is_refuted(old: str, new: str, problem: str) -> None:
    """int8_groups' quantizer taking each row's first group's maximum, or its
    kernel scaling x by its first group's scale: the values move within the
    declared bound, but not as quantizing the step before's inputs does."""
    case = Wrong("q", "matvec.c", MATVEC_Q8[1], old, new, "y", {"N": 64, "D": 2}, "", "", MATVEC_Q8[:1],
                 "matvec_q8.spec")
    before, contracts, rewrite, wrong = build(case)
    assert check_step(before, rewrite.program, contracts, [case.sizes], "lossy", rewrite.tolerance, Runs()).ok
    result = check_step(before, wrong, contracts, [case.sizes], "lossy", rewrite.tolerance, Runs())
    assert result.label == "refuted" and re.search(problem, result.problems[0]), result.problems


def test_fp_exact_step_that_reassociates_is_a_problem() -> None:
    """rmsnorm's vectorize reassociates the sum of squares (fp='reassoc',
    `≈fp`); the same rewrite forced to claim fp='exact' fails level 3."""
    program = parse_file(ROOT / "c_sources" / "rmsnorm.c")
    contracts = parse_spec_file(ROOT / "specs" / "rmsnorm.spec")
    rewrite = vector.vectorize.apply(program, "rmsnorm > for i")
    assert rewrite.fp == "reassoc"
    sizes = [{"R": 1, "C": 69}]
    honest = check_step(program, rewrite.program, contracts, sizes, rewrite.fp, rewrite.tolerance, Runs())
    assert honest.ok and honest.label == "≈fp"
    forced = dataclasses.replace(rewrite, fp="exact")
    lying = check_step(program, forced.program, contracts, sizes, forced.fp, forced.tolerance, Runs())
    assert not lying.ok and lying.label == "≈fp"
    assert "declares bit-exact results" in lying.problems[0] and "fp='reassoc'" in lying.problems[0]


def test_invalid_fission_is_refuted_with_a_cell_and_two_values() -> None:
    """Before the fission y[0] reads x[3] before it is zeroed; after, 0."""
    program = parse_text(textwrap.dedent(SHIFT_C), "shift.c")
    contracts = parse_spec_text(textwrap.dedent(SHIFT_SPEC))
    rewrite = loop.fission.apply(program, "shift > for i > after 'x[i] = 0.0f'")
    result = check_step(program, rewrite.program, contracts, [{"n": 4}], rewrite.fp, rewrite.tolerance, Runs())
    assert not result.ok and result.label == "refuted"
    (problem,) = result.problems
    moved = canon.Inputs(1).value(("in", "x", 3))
    assert problem == (f"shift at n=4: refuted: output y[0] differs: {moved:.6g} before the step, 0 after, on the "
                       f"inputs of seed 1 (each input cell uniform in [-2, 2])")


def test_a_composite_takes_the_label_of_its_failed_substep() -> None:
    ok, fp = Level3Result("=", (), (), 0.25), Level3Result("≈fp", (), (), 0.5)
    bad = Level3Result("refuted", (), ("f at n=2: refuted: output y[0] differs",), 0.25)
    assert combine3([ok, fp]).label == "≈fp" and combine3([ok, fp]).ok
    both = combine3([ok, bad, fp])
    assert both.label == "refuted" and not both.ok and both.time_s == 1.0


def test_unmodelled_code_is_not_checkable() -> None:
    program = parse_text("void f(int n, const float *x, float *y) { for (int i = 0; i < n; i++) y[i] = x[i]; }",
                         "f.c")
    contracts = parse_spec_text("f(n, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n  writes y ~> Matrix1(n)\n")
    after = parse_text("float g(float v);\nvoid f(int n, const float *x, float *y) { "
                       "for (int i = 0; i < n; i++) y[i] = g(x[i]); }", "f.c")
    result = check_step(program, after, contracts, [{"n": 2}], "exact", 0.0, Runs())
    assert not result.ok and result.functions[0].status == "not checkable" and result.label == "not checkable"
    assert "does not model the function 'g'" in result.problems[0]


# ---------------------------------------------------------------- sizes

def test_choose_sizes_runs_tails_within_the_requires() -> None:
    """matmul: no size a multiple of its tiles (6 rows, 64 columns, 64 of
    k); quantize: N a multiple of 32, as its contract requires, and at
    least two groups of 32 (its tile loop runs twice)."""
    for script, tiles in (("matmul", {"M": 6, "N": 64, "K": 64}), ("quantize", {})):
        path = ROOT / "scripts" / f"{script}.py"
        session = new_session(path)
        assert run_script(session, path) is None
        programs = [s.after for s in _all_steps(session.steps) if s.error is None]
        (sizes,) = choose_sizes(session.contracts, session.sizes, None, programs)
        for name, tile in tiles.items():
            assert sizes[name] > tile and sizes[name] % tile != 0, (name, sizes)
        if script == "quantize":
            assert sizes["N"] % 32 == 0 and sizes["N"] >= 64 and sizes["D"] >= 1, sizes


def test_choose_sizes_takes_both_sides_of_a_size_test() -> None:
    """Code that tests `D == 64` (attention's version for D == 64) gets a
    size set with D = 64 and one with another D."""
    program = parse_file(ROOT / "c_sources" / "attention.c")
    contracts = parse_spec_file(ROOT / "specs" / "attention.spec")
    from transformations import flash

    versioned = flash.version.apply(program, "attention > for h", "D", 64).program
    sets = choose_sizes(contracts, {"H": 2, "S": 150, "D": 64}, None, [program, versioned])
    assert len(sets) == 2 and sorted(s["D"] for s in sets)[1] == 64 and sorted(s["D"] for s in sets)[0] != 64
    assert all(s["H"] >= 1 and s["S"] >= 1 for s in sets)
    assert choose_sizes(contracts, {"H": 2, "S": 150, "D": 64}, None, [program]) == [{"H": 2, "S": 5, "D": 5}]


def test_a_scalar_parameter_the_script_does_not_size_is_chosen_within_the_requires() -> None:
    """transformer_token's `pos` (0 <= pos < SMAX) is no size of the script:
    level 3 still needs a value to run the function."""
    contracts = parse_spec_file(ROOT / "specs" / "transformer.spec")
    sizes = {"T": 21, "L": 2, "dim": 24, "hidden": 40, "H": 4, "KVH": 2, "SMAX": 24}
    (chosen,) = choose_sizes(contracts, sizes, None, [parse_file(ROOT / "c_sources" / "transformer.c")])
    assert 0 <= chosen["pos"] < chosen["SMAX"]


def test_given_check_sizes_must_satisfy_the_requires() -> None:
    contracts = parse_spec_file(ROOT / "specs" / "matvec_q8.spec")
    assert choose_sizes(contracts, {"N": 256, "D": 24}, [{"N": 64, "D": 3}], []) == [{"N": 64, "D": 3}]
    from optitrust_py.errors import OtpError

    with pytest.raises(OtpError, match="N=40 breaks 'requires' of matvec"):
        choose_sizes(contracts, {"N": 256, "D": 24}, [{"N": 40, "D": 3}], [])


# ---------------------------------------------------------------- the CLI

def test_cli_check_level3_on_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    """`otp check scripts/matmul.py --level 3 --json` succeeds (a small
    --size keeps level 3's sizes small: it chooses them at most the --exec
    ones; the tiles run whole in the labels test)."""
    monkeypatch.chdir(ROOT)
    r = CliRunner().invoke(cli, ["check", "scripts/matmul.py", "--level", "3", "--json", "--size", "M=7,N=5,K=3"])
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(r.output)["scripts"]
    assert entry["ok"] and entry["level"] == 3 and entry["failures"] == [] and entry["unproved_obligations"] == 0
    steps = entry["level3"]["steps"]
    assert [s["number"] for s in steps] == [s["number"] for s in entry["level2"]["steps"]]
    assert {s["label"] for s in steps} == {"="} and all(s["ok"] and s["time_s"] >= 0 for s in steps)
    assert entry["level3"]["time_s"] == pytest.approx(sum(s["time_s"] for s in steps))


def test_cli_check_level3_prints_each_label_and_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(cli, ["check", "scripts/softmax.py", "--level", "3", "--no-color"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert any(re.fullmatch(r"  step 1 parallel\.parallel_for\(.*\)  ✓ L3 =  \d+ ms", x) for x in lines), r.output
    assert any(re.fullmatch(r"  step 2 vector\.vectorize\(.*\)  ✓ L3 ≈fp  \d+ ms", x) for x in lines), r.output
    assert any(re.fullmatch(r"  ✓ level 3: 2 steps compared, 0 failed; [\d.]+ s in all, [\d.]+ s elapsed", x) for x in lines), r.output


def test_cli_run_level3_shows_the_labels(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`otp run --level 3` shows each step's label in its table and trace.json."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "200")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["run", "scripts/softmax.py", "--level", "3", "--no-color", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "✓ L3 =" in r.output and "✓ L3 ≈fp" in r.output
    steps = json.loads((out / "softmax" / "trace.json").read_text())["steps"]
    assert [s["checks"]["level3"]["label"] for s in steps] == ["=", "≈fp"]
    assert all(s["checks"]["level3"]["ok"] for s in steps)
    assert [{f["sizes"]["C"] for f in s["checks"]["level3"]["functions"]} for s in steps] == [{5}, {69}], \
        "each step at sizes of its own code: the rows in parallel need no tile, 16 lanes need 16 and a tail"



def test_cli_check_fails_on_a_level3_refutation(tmp_path: Path) -> None:
    """A script whose step level 3 refutes exits 1 and names the cell (level
    2 refutes the same fission: both failures are listed)."""
    (tmp_path / "shift.c").write_text(textwrap.dedent(SHIFT_C))
    (tmp_path / "shift.spec").write_text(textwrap.dedent(SHIFT_SPEC))
    script = tmp_path / "shift_script.py"
    script.write_text("from optitrust_py.script import load\nfrom transformations import loop\n"
                      "load('shift.c', spec='shift.spec', check_sizes=[{'n': 4}])\n"
                      "loop.fission(\"shift > for i > after 'x[i] = 0.0f'\")\n")
    r = CliRunner().invoke(cli, ["check", str(script), "--level", "3", "--json"])
    assert r.exit_code == 1, r.output
    (entry,) = json.loads(r.output)["scripts"]
    (level3,) = [f for f in entry["failures"] if "level3 failed" in f]
    assert "shift at n=4: refuted: output y[0] differs" in level3
    (step,) = entry["level3"]["steps"]
    assert step["label"] == "refuted" and not step["ok"], "a refuted step must not carry the label '='"

# ---------------------------------------------------------------- bugs these tests found (all fixed now)

NARROW_SPEC = "f(n, x, q):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n  writes q ~> Matrix1(n)\n"


def narrow_step(product: str) -> str:
    return ("#include <stdint.h>\n#include <math.h>\nvoid f(int n, const float *x, int8_t *q) {\n"
            f"  for (int i = 0; i < n; i++) q[i] = (int8_t)roundf({product});\n}}\n")


def test_reassociation_inside_an_int8_conversion_is_not_exact() -> None:
    before = parse_text(narrow_step("(x[i] * x[0]) * x[1]"), "f.c")
    after = parse_text(narrow_step("x[i] * (x[0] * x[1])"), "f.c")
    result = check_step(before, after, parse_spec_text(NARROW_SPEC), [{"n": 3}], "exact", 0.0, Runs())
    assert result.label == "≈fp" and not result.ok


def test_reassociation_inside_an_int8_conversion_of_a_sum_is_not_exact() -> None:
    """A sum of two int8 codes is exact however it is arranged (its terms
    may be swapped), but the float products each code rounds are not."""
    spec = parse_spec_text(NARROW_SPEC.replace("q ~>", "y ~>").replace("(n, x, q)", "(n, x, y)"))
    code = ("#include <stdint.h>\n#include <math.h>\nvoid f(int n, const float *x, float *y) {{\n  int8_t q[2];\n"
            "  for (int i = 0; i < n; i++) {{\n    q[0] = (int8_t)roundf(x[i]);\n    q[1] = (int8_t)roundf({});\n"
            "    y[i] = {};\n  }}\n}}\n")
    before = parse_text(code.format("(x[i] * x[0]) * x[1]", "(float)q[0] + (float)q[1]"), "f.c")
    swapped = parse_text(code.format("(x[i] * x[0]) * x[1]", "(float)q[1] + (float)q[0]"), "f.c")
    reassociated = parse_text(code.format("x[i] * (x[0] * x[1])", "(float)q[0] + (float)q[1]"), "f.c")
    assert check_step(before, swapped, spec, [{"n": 3}], "exact", 0.0, Runs()).label == "="
    result = check_step(before, reassociated, spec, [{"n": 3}], "exact", 0.0, Runs())
    assert result.label == "≈fp" and not result.ok


def test_changed_conditional_write_is_refuted() -> None:
    spec = parse_spec_text("f(n, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n  writes y ~> Matrix1(n)\n")
    code = "void f(int n, const float *x, float *y) {{ if (x[0] > 0.0f) y[0] = x[{}]; }}"
    result = check_step(parse_text(code.format(1), "f.c"), parse_text(code.format(0), "f.c"), spec, [{"n": 2}],
                        "exact", 0.0, Runs())
    assert not result.ok and result.functions[0].status == "refuted"


def test_evaluate_rounds_like_c() -> None:
    """C's roundf takes halves away from zero (Python's round takes them to even)."""
    for x, rounded in ((Fraction(5, 2), 3.0), (Fraction(-5, 2), -3.0), (Fraction(1, 2), 1.0), (Fraction(7, 4), 2.0)):
        assert canon.evaluate(T.unary("round", T.const(x)), canon.Inputs(1), {}) == rounded


GROUPS_SPEC = "f(n, x, y):\n  requires n >= 1, n % 32 == 0\n  reads x ~> Matrix1(n)\n  writes y ~> Matrix1(1)\n"
GROUPS_C = ("void f(int n, const float *x, float *y) {{\n  y[0] = 0.0f;\n"
            "  for (int bj = 0; bj < n; bj += 32) {{\n    {}\n  }}\n}}\n")


def test_chosen_sizes_run_every_tile_loop_twice() -> None:
    spec = parse_spec_text(GROUPS_SPEC)
    before = parse_text(GROUPS_C.format("for (int j = bj; j < bj + 32; j++) y[0] += x[j];"), "f.c")
    wrong = parse_text(GROUPS_C.format("float g = 0.0f;\n    for (int j = bj; j < bj + 32; j++) g += x[j];\n"
                                       "    y[0] = g;"), "f.c")
    assert not check_step(before, wrong, spec, [{"n": 64}], "exact", 0.0, Runs()).ok
    sets = choose_sizes(spec, {"n": 256}, None, [before, wrong])
    assert not check_step(before, wrong, spec, sets, "exact", 0.0, Runs()).ok, sets


SCRATCH_C = """#include <stdlib.h>
void f(int n, const float *x, float *y) {{
  float *h = malloc(n * sizeof(float));
  {}
  free(h);
}}
"""


def test_guard_split_over_scratch_memory_is_equal() -> None:
    spec = parse_spec_text("f(n, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n  modifies y ~> Matrix1(n)\n")
    one = ("if (x[0] > 0.0f) {\n    for (int i = 0; i < n; i++) h[i] = x[i];\n"
           "    for (int i = 0; i < n; i++) y[i] += h[i];\n  }")
    two = ("if (x[0] > 0.0f) {\n    for (int i = 0; i < n; i++) h[i] = x[i];\n  }\n"
           "  if (x[0] > 0.0f) {\n    for (int i = 0; i < n; i++) y[i] += h[i];\n  }")
    result = check_step(parse_text(SCRATCH_C.format(one), "f.c"), parse_text(SCRATCH_C.format(two), "f.c"), spec,
                        [{"n": 3}], "exact", 0.0, Runs())
    assert result.ok and result.label == "=", result.problems


def test_lossy_step_beyond_its_bound_is_refuted() -> None:
    spec = parse_spec_text("f(n, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n  writes y ~> Matrix1(n)\n")
    code = "#include <math.h>\nvoid f(int n, const float *x, float *y) {{ for (int i = 0; i < n; i++) y[i] = {}; }}"
    before, wrong = (parse_text(code.format(e), "f.c") for e in ("expf(x[i])", "expf(x[i]) + x[i]"))
    result = check_step(before, wrong, spec, [{"n": 3}], "lossy", 1e-6, Runs())
    assert not result.ok and result.label == "refuted", result.label
    assert re.search(r"refuted: output y\[\d\] differs: .* a relative move of \S+, beyond the bound 1e-06",
                     result.problems[0]), result.problems


def test_lossy_step_within_its_bound_is_quantized() -> None:
    """y = x * 1.001 moves every value by 1e-3 of it: within a declared 1e-2,
    beyond a declared 1e-4."""
    spec = parse_spec_text("f(n, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(n)\n  writes y ~> Matrix1(n)\n")
    code = "void f(int n, const float *x, float *y) {{ for (int i = 0; i < n; i++) y[i] = {}; }}"
    before, scaled = (parse_text(code.format(e), "f.c") for e in ("x[i]", "x[i] * 1.001f"))
    result = check_step(before, scaled, spec, [{"n": 3}], "lossy", 1e-2, Runs())
    assert result.ok and result.label == "quantized(0.01)", result.problems
    (check,) = result.functions
    assert check.status == "changed" and re.search(r"largest relative move, 0.001 at y\[\d\]", check.detail), check
    assert check_step(before, scaled, spec, [{"n": 3}], "lossy", 1e-4, Runs()).label == "refuted"
