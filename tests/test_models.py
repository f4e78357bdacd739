"""Functional models (optitrust_py/models.py): each contract's `ensures`
against its real function of c_sources/ at small sizes, wrong models and
wrong sources refuted with the cell, and the spec errors a model can make."""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Mapping

import pytest
from click.testing import CliRunner

from optitrust_py import ir
from optitrust_py.cli import cli
from optitrust_py.contract import Contract
from optitrust_py.errors import SpecError
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.level3 import Runs
from optitrust_py.models import LIBRARY, ModelCheck, check_models
from optitrust_py.spec import check_contract, load_contracts, parse_spec_text

ROOT = Path(__file__).resolve().parent.parent


def source(name: str) -> tuple[ir.Program, dict[str, Contract]]:
    program = parse_file(ROOT / "c_sources" / f"{name}.c")
    return program, load_contracts(program, ROOT / "specs" / f"{name}.spec")


def with_ensures(program: ir.Program, contract: Contract, ensures: str) -> Contract:
    """`contract` with its ensures replaced by `ensures` (checked against the function)."""
    lines = [line for line in str(contract).splitlines() if not line.startswith("  ensures")]
    c = parse_spec_text("\n".join(lines) + f"\n  ensures  {ensures}\n", "x.spec")[contract.function]
    f = program.function(contract.function)
    assert f is not None
    check_contract(c, f)
    return c


def check(program: ir.Program, contracts: Mapping[str, Contract], **sizes: int) -> list[ModelCheck]:
    return check_models(program, contracts, [sizes], Runs())


# ---------------------------------------------------------------- the models of c_sources/

@pytest.mark.parametrize("name, sizes, status, cells", [
    ("softmax", {"R": 2, "C": 5}, "≈fp", 10),
    ("rmsnorm", {"R": 2, "C": 5}, "≈fp", 10),
    ("matmul", {"M": 2, "N": 3, "K": 4}, "=", 6),
    ("matvec", {"N": 5, "D": 3}, "=", 3),
    ("attention", {"H": 2, "S": 5, "D": 5}, "=", 50),
])
def test_each_source_meets_its_model(name: str, sizes: dict[str, int], status: str, cells: int) -> None:
    """Sums left to right and the maximum as `t > m ? t : m` are how the
    naive sources compute too (=); softmax.c's maximum starts from x[0]
    and rmsnorm.c multiplies by 1/sqrt, so those meet over the reals."""
    program, contracts = source(name)
    (got,) = check(program, contracts, **sizes)
    assert got.ok and got.status == status, got.text()
    assert got.cells == cells and f"({status}, {cells} cells at " in got.text()


def test_gqa_decode_meets_its_three_models() -> None:
    """The output is attention over the cache rows before pos and the new
    row; both caches get the new row at pos and keep the others."""
    program, contracts = source("gqa_decode")
    got = check(program, contracts, H=4, KVH=2, D=3, SMAX=5, pos=3)
    assert [(m.clause.split(" ==")[0], m.status) for m in got] == [("out", "="), ("k_cache", "="), ("v_cache", "=")]
    assert got[1].cells == 2 * 5 * 3


def test_quantize_spec_states_the_fp32_model() -> None:
    """scripts/quantize.py's original (matvec.c under matvec_q8.spec) meets matvec."""
    program = parse_file(ROOT / "c_sources" / "matvec.c")
    contracts = load_contracts(program, ROOT / "specs" / "matvec_q8.spec")
    (got,) = check(program, contracts, N=32, D=2)
    assert got.ok, got.text()


# ---------------------------------------------------------------- wrong models, wrong sources

def test_non_causal_model_refuted_on_the_causal_source() -> None:
    program, contracts = source("attention")
    c = with_ensures(program, contracts["attention"], "out == attention(q, k, v)")
    (got,) = check(program, {"attention": c}, H=1, S=3, D=4)
    assert got.status == "refuted" and not got.ok
    assert "output out[0] differs" in got.detail and "the model's value" in got.detail


def test_missing_scale_in_the_source_refuted() -> None:
    """attention.c without its 1/sqrt(D) against causal_attention."""
    text = (ROOT / "c_sources" / "attention.c").read_text().replace("s / sqrtf(D)", "s")
    program = parse_text(text, "attention.c")
    contracts = load_contracts(program, ROOT / "specs" / "attention.spec")
    (got,) = check(program, contracts, H=1, S=3, D=4)
    assert got.status == "refuted", got.text()
    # query 0 sees key 0 alone (weight 1 at any scale): query 1's row is the first to differ
    assert "output out[4] differs" in got.detail


def test_transposed_matmul_refuted() -> None:
    """matmul(B, A) on square sizes has the right shape and wrong values;
    on other sizes its shapes do not even fit."""
    program, contracts = source("matmul")
    c = with_ensures(program, contracts["matmul"], "C == matmul(B, A)")
    (square,) = check(program, {"matmul": c}, M=3, N=3, K=3)
    assert square.status == "refuted" and "output C[0] differs" in square.detail
    (other,) = check(program, {"matmul": c}, M=2, N=3, K=4)
    assert other.status == "wrong shape" and "A's columns must be B's rows" in other.detail


def test_off_by_one_source_refuted() -> None:
    """matvec.c that stops one column short: the last row's cell differs."""
    text = (ROOT / "c_sources" / "matvec.c").read_text().replace("j < N", "j < N - 1")
    program = parse_text(text, "matvec.c")
    contracts = load_contracts(program, ROOT / "specs" / "matvec.spec")
    (got,) = check(program, contracts, N=4, D=2)
    assert got.status == "refuted" and "output y[0] differs" in got.detail


def test_model_of_the_wrong_shape_refuted() -> None:
    """The row sums of x are not y (R x C): the shapes say so."""
    program, contracts = source("softmax")
    c = with_ensures(program, contracts["softmax"], "y == sum(x)")
    (got,) = check(program, {"softmax": c}, R=2, C=3)
    assert got.status == "wrong shape" and "dimensions 2, and 'y' has dimensions 2x3" in got.detail


def test_nested_models() -> None:
    """softmax(exp(x)) is not what softmax.c computes; exp(x) - max is."""
    program, contracts = source("softmax")
    c = with_ensures(program, contracts["softmax"], "y == softmax(exp(x))")
    (got,) = check(program, {"softmax": c}, R=1, C=3)
    assert got.status == "refuted"


def test_cli_check_fails_on_a_wrong_model(tmp_path: Path) -> None:
    """`otp check --level 3` exits 1 on a model the original does not meet,
    lists it as a failure, and shows it in --json; a right one passes."""
    (tmp_path / "matvec.c").write_text((ROOT / "c_sources" / "matvec.c").read_text())
    script = tmp_path / "s.py"
    script.write_text("from optitrust_py.script import load\nfrom transformations import parallel\n"
                      "load('matvec.c', spec='matvec.spec', sizes={'N': 6, 'D': 3}, check_sizes=[{'N': 6, 'D': 3}])\n"
                      "parallel.parallel_for('matvec > for i')\n")
    spec = (ROOT / "specs" / "matvec.spec").read_text()
    for ensures, code in (("y == matvec(W, x)", 0), ("y == sum(W)", 1)):
        (tmp_path / "matvec.spec").write_text(spec.replace("y == matvec(W, x)", ensures))
        r = CliRunner().invoke(cli, ["check", str(script), "--level", "3", "--json"])
        assert r.exit_code == code, r.output
        (entry,) = json.loads(r.output)["scripts"]
        (model,) = entry["level3"]["models"]
        assert model["ok"] == (code == 0) and model["sizes"] == {"N": 6, "D": 3}
        assert any("model: matvec" in f for f in entry["failures"]) == (code == 1)
    assert model["status"] == "refuted" and "y[0] differs" in model["detail"]


def test_cli_check_shows_the_model_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(cli, ["check", "scripts/softmax.py", "--level", "3", "--no-color"])
    assert r.exit_code == 0, r.output
    for cells, c in ((25, 5), (345, 69)):  # the sizes of the two steps' own code: 16 lanes and a tail need 69
        assert f"model: softmax: y == softmax(x) ✓ (≈fp, {cells} cells at C={c},R=5); every later step labelled = " \
               "or ≈fp at these sizes keeps it" in r.output


# ---------------------------------------------------------------- spec errors

ATTENTION = """\
attention(H, S, D, q, k, v, out):
  reads    q ~> Matrix3(H, S, D), k ~> Matrix3(H, S, D), v ~> Matrix3(H, S, D)
  writes   out ~> Matrix3(H, S, D)
  ensures  {}
"""


def spec_error(ensures: str) -> str:
    program = parse_file(ROOT / "c_sources" / "attention.c")
    f = program.function("attention")
    assert f is not None
    with pytest.raises(SpecError) as e:
        check_contract(parse_spec_text(ATTENTION.format(ensures), "x.spec")["attention"], f)
    return str(e.value)


@pytest.mark.parametrize("ensures, message", [
    ("out == causal_atention(q, k, v)", "x.spec:4:19: error: unknown model 'causal_atention' (the library: "
                                        + ", ".join(LIBRARY) + ")"),
    ("out == causal_attention(q, k)", "x.spec:4:19: error: model 'causal_attention' takes 3 arguments, 2 given"),
    ("out == softmax(q, k)", "x.spec:4:19: error: model 'softmax' takes 1 argument, 2 given"),
    ("q == softmax(k)", "x.spec:4:12: error: 'q' in ensures is not an array the function writes or modifies"),
    ("out == softmax(out)", "x.spec:4:27: error: argument 'out' of 'softmax' is not an array the function reads"),
    ("out == softmax(H)", "x.spec:4:27: error: argument 'H' of 'softmax' is not an array the function reads"),
    ("out == cache_write(q, k, v)", "x.spec:4:37: error: argument 'v' of 'cache_write' must be an integer "
                                    "parameter"),
    ("out == softmax(q + 1)", "error: argument 'q + 1' of 'softmax' must be an array parameter or a model"),
    ("out < softmax(q)", "error: 'out < softmax(q)': an ensures clause reads 'OUT == MODEL(ARGS)'"),
    ("out == 3", "error: '3' is not a model"),
])
def test_spec_errors_name_the_place(ensures: str, message: str) -> None:
    assert message in spec_error(ensures)


def test_two_ensures_for_one_output() -> None:
    assert "error: two ensures clauses for 'out'" in \
        spec_error("out == causal_attention(q, k, v), out == attention(q, k, v)")


def test_model_arguments_must_be_whole_float_arrays() -> None:
    program = parse_text(textwrap.dedent("""
        void f(int n, const float *x, const int *c, float *y) {
          for (int i = 0; i < n; i++) y[i] = x[i] + c[i];
        }"""), "f.c")
    spec = "f(n, x, c, y):\n  reads x ~> Matrix1(n), c ~> Matrix1(n)\n  writes {}\n  ensures {}\n"
    f = program.function("f")
    assert f is not None
    for writes, ensures, message in (
            ("y ~> Matrix1(n)", "y == exp(c)", "'c', an argument of 'exp', must be an array of floats"),
            ("for i in 0..n -> &y[i] ~> Cell", "y == exp(x)",
             "'y', the output of ensures, must own one whole resource 'y ~> MatrixN(...)'")):
        with pytest.raises(SpecError, match=re.escape(message)):
            check_contract(parse_spec_text(spec.format(writes, ensures), "f.spec")["f"], f)


def test_transformer_helpers_meet_their_models_at_their_own_sizes() -> None:
    """transformer.c's helpers take sizes (n, d) the script's sizes do not
    name: level 3 chooses theirs; softmax_vec works in place (x on the
    right is x on entry)."""
    program, contracts = source("transformer")
    got = check(program, contracts, T=5, L=2, dim=8, hidden=6, H=4, KVH=2, SMAX=6)
    assert [(m.function, m.status, dict(m.sizes)) for m in got] == [
        ("rmsnorm_vec", "≈fp", {"n": 5}), ("matvec", "=", {"d": 5, "n": 5}), ("softmax_vec", "≈fp", {"n": 5})]


def test_in_source_ensures() -> None:
    """The clause may sit at the top of the body, as the other clauses may;
    a model the function does not meet is refuted there too."""
    text = """
        #include <math.h>
        #include <otp.h>
        void scale(int n, const float *x, float *y) {
          __requires("n >= 1");
          __reads("x ~> Matrix1(n)");
          __writes("y ~> Matrix1(n)");
          __ensures("y == exp(x)");
          for (int i = 0; i < n; i++) y[i] = expf(x[i]) EXTRA;
        }"""
    for extra, status in (("", "="), ("* 2.0f", "refuted")):
        program = parse_text(textwrap.dedent(text.replace("EXTRA", extra)), "scale.c")
        (got,) = check(program, load_contracts(program, None), n=3)
        assert got.status == status, got.text()
