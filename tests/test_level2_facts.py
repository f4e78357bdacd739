"""Level 2 on the arithmetic and layout obligations (optitrust_py/facts.py):
each kind proved on a real step over c_sources/, and refuted with the
failing fact and its counterexample, or left unknown with the reason, when
it does not hold or cannot be decided."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import pytest

from optitrust_py import ir
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.goal import Goal
from optitrust_py.level2 import Verdict, check_step, discharge
from optitrust_py.obligation import Obligation
from optitrust_py.printer import to_c
from optitrust_py.session import Rewrite
from optitrust_py.spec import load_contracts, parse_spec_text
from optitrust_py.tree import get
from transformations import function, loop, matrix, variable

ROOT = Path(__file__).resolve().parent.parent


def kernel(name: str) -> tuple[ir.Program, dict[str, Any]]:
    p = parse_file(ROOT / "c_sources" / f"{name}.c")
    return p, load_contracts(p, ROOT / "specs" / f"{name}.spec")


def spec_with(name: str, old: str, new: str) -> dict[str, Any]:
    """The contracts of specs/<name>.spec with `old` replaced by `new`."""
    text = (ROOT / "specs" / f"{name}.spec").read_text()
    assert old in text
    return parse_spec_text(text.replace(old, new))


def verdict(before: ir.Program, rewrite: Rewrite, contracts: Mapping[str, Any], kind: str) -> Verdict:
    """The verdict of the step's one obligation of `kind`."""
    result = check_step(before, rewrite.program, rewrite.obligations, contracts)
    found = [v for v in result.verdicts if v.kind == kind]
    assert len(found) == 1, result.verdicts
    return found[0]


# ----------------------------------------------------------------- arithmetic at a place


def test_divides_tile_is_proved_under_the_requires_and_refuted_without():
    p, c = kernel("matmul")
    tiled = loop.tile.apply(p, "matmul > for j", 64)
    dividing = spec_with("matmul", "K >= 1", "K >= 1, N % 64 == 0")
    assert verdict(p, tiled, dividing, "divides").status == "proved"
    v = verdict(p, tiled, c, "divides")
    assert v.status == "refuted"
    assert v.reason.startswith("line 5: 64 does not divide N = ")
    assert "(e.g. N=" in v.reason


def test_divides_of_a_remainder_split_uses_c_remainders():
    p, c = kernel("matmul")
    split = loop.split.apply(p, "matmul > for i", "M - M % 6").program
    v = verdict(split, loop.tile.apply(split, "matmul > for i#1", 6), c, "divides")
    assert v.status == "proved", v.reason


def test_in_range_split_point():
    p, c = kernel("matmul")
    assert verdict(p, loop.split.apply(p, "matmul > for i", "M / 2"), c, "in_range").status == "proved"
    v = verdict(p, loop.split.apply(p, "matmul > for i", "M + 1"), c, "in_range")
    assert v.status == "refuted"
    assert v.reason.startswith("line 4: the point M + 1 = ") and "is beyond the stop M = " in v.reason


def test_in_range_reads_constant_locals_and_not_assigned_ones():
    p = parse_text("""
        void f(int n, float *x) {
          int h = n / 2;
          int m = n;
          m = m / 2;
          for (int i = 0; i < n; i++) {
            x[i] = 0.0f;
          }
        }
    """, "f.c")
    c = parse_spec_text("f(n, x):\n  requires n >= 1\n  writes x ~> Matrix1(n)\n")
    assert verdict(p, loop.split.apply(p, "f > for i", "h"), c, "in_range").status == "proved"
    v = verdict(p, loop.split.apply(p, "f > for i", "m"), c, "in_range")
    assert v.status == "unknown"
    assert "rests on 'm', whose value at this place level 2 does not follow" in v.reason


def test_positive_scale_factor():
    p, c = kernel("matmul")
    assert verdict(p, loop.scale.apply(p, "matmul > for j", "N"), c, "positive").status == "proved"
    v = verdict(p, loop.scale.apply(p, "matmul > for j", "N - 2"), c, "positive")
    assert v.status == "refuted"
    assert re.match(r"line 5: N - 2 = (-1|0) is not positive \(e\.g\. N=[12]\b", v.reason), v.reason


def test_nonempty_loop_after_move_out():
    a, c = kernel("attention")
    bound = variable.bind.apply(a, "attention > for j#1 > expr 'sqrtf(D)'", "scale").program
    once = loop.move_out.apply(bound, "attention > for j#1 > def scale")
    assert verdict(bound, once, c, "nonempty").status == "proved"  # 0 < i + 1 inside for i
    twice = loop.move_out.apply(once.program, "attention > for i > def scale")
    assert verdict(once.program, twice, c, "nonempty").status == "proved"
    v = verdict(once.program, twice, spec_with("attention", "S >= 1, ", ""), "nonempty")
    assert v.status == "refuted"
    assert re.match(r"line 11: the loop runs no iteration: 0 is not below S = (-?\d+) \(e\.g\. S=\1\b", v.reason), \
        v.reason


def test_ordered_bounds_of_a_collapse():
    p, c = kernel("matmul")
    collapsed = loop.collapse.apply(p, "matmul > for i")
    assert verdict(p, collapsed, c, "ordered_bounds").status == "proved"
    v = verdict(p, collapsed, spec_with("matmul", "requires M >= 1, N >= 1, K >= 1\n", ""), "ordered_bounds")
    assert v.status == "refuted"
    assert "the start 0 is beyond the stop N = -" in v.reason


def test_equals_of_a_specialized_call():
    p, c = kernel("transformer")
    step = function.specialize.apply(p, "transformer_token > call matvec#1", "n", 8)
    v = verdict(p, step, c, "equals")
    assert v.status == "refuted"
    assert v.reason.startswith("line 76: dim = ") and ", not 8 (e.g. dim=" in v.reason
    eight = spec_with("transformer", "0 <= pos, pos < SMAX\n", "0 <= pos, pos < SMAX, dim == 8\n")
    assert verdict(p, step, eight, "equals").status == "proved"


# ----------------------------------------------------------------- layout


def test_delinearize_of_a_local_buffer():
    p, c = kernel("matmul")
    step = matrix.local_buffer.apply(p, "matmul > for i > for j", "C", shape=["M", "N"])
    assert verdict(p, step, c, "delinearize").status == "proved"
    r, rc = kernel("rmsnorm")
    short = matrix.local_buffer.apply(r, "rmsnorm > for i > for j#1", "x", shape=["R - 1", "C"])
    v = verdict(r, short, rc, "delinearize")
    assert v.status == "refuted"
    assert re.match(r"line 10: index 0 of 'x\[i \* C \+ j\]', i = (\d+), is not below R - 1 = \1 \(its dimension\)",
                    v.reason), v.reason


def test_in_region_of_a_one_dimensional_buffer():
    r, c = kernel("rmsnorm")
    target = "rmsnorm > for i > for j#2"
    assert verdict(r, matrix.local_buffer.apply(r, target, "w", shape=["C"]), c, "in_region").status == "proved"
    v = verdict(r, matrix.local_buffer.apply(r, target, "w", shape=["C"], region=["1:C"]), c, "in_region")
    assert v.status == "refuted"
    assert re.match(r"line 15: the region ends at 1 \+ C = (\d+), beyond dimension 0 of 'w' \(C\), whose size is "
                    r"C = \d+ \(e\.g\. C=", v.reason), v.reason
    short = matrix.local_buffer.apply(r, target, "w", shape=["C"], region=["0:C - 1"])
    assert "the region's size C - 1 = 0 along dimension 0 of 'w' (C) is not positive" in \
        verdict(r, short, c, "in_region").reason
    v = verdict(r, short, spec_with("rmsnorm", "C >= 1", "C >= 2"), "in_region")
    assert v.status == "refuted"
    assert "index 0 of 'w[j]', j = " in v.reason and "is not below 0 + (C - 1) = " in v.reason


def test_in_region_of_flattened_arrays():
    p, c = kernel("matmul")
    step = matrix.local_buffer.apply(p, "matmul > for i > for j", "B", shape=["K", "N"])
    assert verdict(p, step, c, "in_region").status == "proved"
    a, ca = kernel("attention")
    q = matrix.local_buffer.apply(a, "attention > for h > for i", "q", shape=["H", "S", "D"])
    assert verdict(a, q, ca, "in_region").status == "proved"
    low = matrix.local_buffer.apply(a, "attention > for h > for i", "q", shape=["H", "S", "D"],
                                    region=["h:1", "1:S", "0:D"])
    v = verdict(a, low, ca, "in_region")
    assert v.status == "refuted"
    assert re.match(r"line 11: the region ends at 1 \+ S = \d+, beyond dimension 1 of 'q' \(H, S, D\), whose size "
                    r"is S = \d+ \(e\.g\. S=", v.reason), v.reason


def zeroed_apart(p: ir.Program) -> ir.Program:
    """matmul with the zeroing of C in a loop nest of its own."""
    q = loop.fission.apply(p, "matmul > for j > after 'C[i * N + j] = 0.0f'").program
    return loop.fission.apply(q, "matmul > for i > after for j#1").program


def test_covers_of_a_written_buffer():
    r, c = kernel("rmsnorm")
    target = "rmsnorm > for i > for j#2"
    whole = matrix.local_buffer.apply(r, target, "y", shape=["R * C"])
    assert verdict(r, whole, c, "covers").status == "proved"
    assert verdict(r, whole, c, "in_region").status == "proved"
    wide = matrix.local_buffer.apply(r, target, "y", shape=["R * C"], region=["i * C:C + 1"])
    v = verdict(r, wide, c, "covers")
    assert v.status == "refuted"
    assert re.match(r"line 15: the loop never writes y\[\d+\], which is copied back \(e\.g\. ", v.reason), v.reason


def test_covers_of_a_matrix_by_one_store_and_by_two():
    p, c = kernel("matmul")
    q = zeroed_apart(p)
    for target in ("matmul > for i#1", "matmul > for i#1 > for j"):
        step = matrix.local_buffer.apply(q, target, "C", shape=["M", "N"])
        assert verdict(q, step, c, "covers").status == "proved", target
    halves = loop.split.apply(q, "matmul > for i#1 > for j", "N / 2").program  # no one store covers a row
    step = matrix.local_buffer.apply(halves, "matmul > for i#1", "C", shape=["M", "N"], region=["0:M", "0:N"])
    assert verdict(halves, step, c, "covers").status == "proved"
    step = matrix.local_buffer.apply(halves, "matmul > for i#1", "C", shape=["M", "N"], region=["0:M", "0:N + 1"])
    v = verdict(halves, step, c, "covers")
    assert v.status == "refuted"
    assert re.match(r"line 4: the loop never writes C\[\d+\]\[\d+\], which is copied back \(e\.g\. ", v.reason), v.reason


def test_in_type_range_of_a_narrower_float_is_left_to_exec():
    a, c = kernel("attention")
    v = verdict(a, matrix.set_precision.apply(a, "attention > def scores", "_Float16"), c, "in_type_range")
    assert v.status == "unknown"
    assert "'scores' now holds _Float16, a floating type" in v.reason
    assert "accepted only by --exec within its declared tolerance" in v.reason


INT8 = """
    void q8(int n, const int *x, float *y) {
      signed char q[16];
      for (int i = 0; i < 16; i++) {
        STORE;
      }
      for (int i = 0; i < 16; i++) {
        y[i] = q[i];
      }
    }
"""


@pytest.mark.parametrize("store, status, words", [
    ("int v = x[i]; q[i] = v < -128 ? -128 : v > 127 ? 127 : v", "proved", ""),
    ("q[i] = (signed char)x[i]", "proved", ""),
    ("q[i] = i * n", "refuted", "the stored value i * n = "),
    ("q[i] = x[i]", "unknown", "rests on a value read from memory or returned by a call"),
])
def test_in_type_range_of_integer_stores(store: str, status: str, words: str):
    """No step narrows to an integer type yet (set_precision knows floating
    types only): the obligation is stated directly on the array's declaration."""
    p = parse_text(INT8.replace("STORE", store), "q8.c")
    c = parse_spec_text("q8(n, x, y):\n  requires n >= 1\n  reads x ~> Matrix1(16)\n  writes y ~> Matrix1(16)\n")
    decl = (("items", 0), ("body", None), ("stmts", 0))
    ob = Obligation("in_type_range", "every value stored into 'q' is within the range of signed char", "q8", (decl,))
    v = discharge(Goal(ob, p, p, c))
    assert v.status == status, v.reason
    assert words in v.reason


# ----------------------------------------------------------------- inline


def test_inline_checks_the_callee_contract_at_the_call():
    t, c = kernel("transformer")
    assert verdict(t, function.inline.apply(t, "transformer_token > call matvec#1"), c, "inline").status == "proved"
    p = parse_text((ROOT / "c_sources" / "matvec.c").read_text() + """
        void apply(int n, const float *W, float *x, float *y) {
          matvec(n, n, W, x, x);
          matvec(0, n, W, x, y);
        }
    """, "apply.c")
    cp = parse_spec_text((ROOT / "specs" / "matvec.spec").read_text() + """
apply(n, W, x, y):
  requires n >= 1
  reads    W ~> Matrix2(n, n)
  modifies x ~> Matrix1(n), y ~> Matrix1(n)
""")
    v = verdict(p, function.inline.apply(p, "apply > call matvec#1"), cp, "inline")
    assert v.status == "refuted"
    assert "'matvec(n, n, W, x, x)' passes overlapping regions of 'x' through 'x' and 'x', one of which it " \
           "writes (e.g." in v.reason
    v = verdict(p, function.inline.apply(p, "apply > call matvec#2"), cp, "inline")
    assert v.status == "refuted"
    assert "the requirement 'N >= 1' of matvec fails for the call: '0 >= 1' is false" in v.reason


ALIASED = """
    void f(int n, float *x) {
      int k = n;
      int *p = &k;
      for (int i = 0; i < n; i++) {
        x[i] = k;
        *p = i;
      }
    }
"""


def test_extract_passes_values_that_cannot_change_under_the_call():
    p, c = kernel("matmul")
    assert verdict(p, function.extract.apply(p, "matmul > for k", "matmul_k"), c, "inline").status == "proved"
    q = parse_text(ALIASED, "f.c")
    cq = parse_spec_text("f(n, x):\n  requires n >= 1\n  writes x ~> Matrix1(n)\n")
    step = function.extract.apply(q, "f > for i", "body")
    assert "body(n, x, &k, p);" in to_c(step.program)  # k's address is taken: it goes by pointer
    assert verdict(q, step, cq, "inline").status == "proved"
    # the same extraction passing k by copy would read a stale k after '*p = i'
    wrong = parse_text("""
        void body(int n, float *x, int k, int *p) {
          for (int i = 0; i < n; i++) {
            x[i] = k;
            *p = i;
          }
        }
    """ + ALIASED.replace("for (int i = 0; i < n; i++) {\n        x[i] = k;\n        *p = i;\n      }",
                          "body(n, x, k, p);"), "f.c")
    call = (("items", 1), ("body", None), ("stmts", 2))
    assert isinstance(get(wrong, call), ir.ExprStmt)
    ob = Obligation("inline", "the body of body computes what the loop did", "f", (call, (("items", 0),)),
                    (ir.Var("n"), ir.Var("x"), ir.Var("k"), ir.Var("p")))
    v = discharge(Goal(ob, q, wrong, cq))
    assert v.status == "unknown"
    assert v.reason == "'k' is passed to body by copy, but its address is taken in f, so the statements may change " \
                       "it through a pointer"
