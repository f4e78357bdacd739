"""flash.online_softmax on c_sources/attention.c: the streamed form, its
level-2 proof (stream, commute, online_softmax), refusals, and invalid uses
that level 2 refutes and --exec shows wrong."""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

import pytest

from optitrust_py import ir
from optitrust_py.frontend import parse_text
from optitrust_py.printer import to_c
from optitrust_py.level2 import check_step
from optitrust_py.resources import check_resources
from optitrust_py.session import inherit_contracts
from optitrust_py.spec import load_contracts, parse_spec_text
from optitrust_py.tree import get, replace, walk
from transformations import flash, loop, matrix, vector
from conftest import ROOT
from helpers import attention_args, refusal, refuted


def proved_and_exact(ck: Any, before: ir.Program, r: Any, contracts: dict[str, Any]) -> None:
    """Level 2 proves the step on attention, and it computes the same outputs (H=2, S=21, D=4)."""
    result = check_step(before, r.program, r.obligations, contracts)
    assert result.ok, result.problems
    ck.check(before, r.program, "attention", attention_args(ck, 2, 21, 4))


def attention(edit: tuple[str, str] = ("", "")) -> tuple[ir.Program, dict[str, Any]]:
    """attention.c, with one piece of text replaced, and its contract."""
    text = (ROOT / "c_sources" / "attention.c").read_text()
    assert edit[0] in text
    p = parse_text(text.replace(*edit), "attention.c")
    return p, load_contracts(p, str(ROOT / "specs" / "attention.spec"))


def test_online_softmax_streams_the_row_in_key_blocks(ck):
    p, contracts = attention()
    r = flash.online_softmax.apply(p, "attention > for i", 16)
    text = ck.function_text(r.program, "attention")
    for snippet in ("for (int bj = 0; bj < i + 1; bj += 16)", "float scores_blk[16];",
                    "scores_blk[j - bj] = s / sqrtf(D);", "float rescale = expf(max_val - max_val_blk);",
                    "sum = sum * rescale;", "out[(h * S + i) * D + d] = out[(h * S + i) * D + d] * rescale;",
                    "out[(h * S + i) * D + d] += scores_blk[j - bj] * v[(h * S + j) * D + d];",
                    "max_val = max_val_blk;", "out[(h * S + i) * D + d] = out[(h * S + i) * D + d] / sum;"):
        assert snippet in text, snippet
    assert "scores[j]" not in text
    assert r.fp == "reassoc" and r.tolerance == flash.TOLERANCE
    assert sorted({o.kind for o in r.obligations}) == ["commute", "online_softmax", "stream"]
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    for H, S, D in ((2, 37, 16), (1, 16, 8), (1, 1, 3)):
        ck.close_outputs(p, r.program, "attention", attention_args(ck, H, S, D), rel=flash.TOLERANCE)


def test_level2_proves_every_obligation():
    p, contracts = attention()
    assert check_resources(p, contracts) == ()
    r = flash.online_softmax.apply(p, "attention > for i", 8)
    result = check_step(p, r.program, r.obligations, contracts)
    assert result.ok, result.problems
    assert result.count("proved") == 12


@pytest.mark.parametrize("target, block, words", [
    ("attention > for h", 16, ["for h", "holds none", "buf[j] = score"]),
    ("attention > for j#2", 16, ["for j", "holds none"]),
    ("attention > for i", 0, ["positive integer"]),
    ("attention > for i", "16", ["positive integer"]),
])
def test_refuses_the_wrong_shape(target: str, block: Any, words: list[str]):
    p, _ = attention()
    why = refusal(flash.online_softmax.apply, p, target, block)
    for w in words:
        assert w in why, why


def test_refuses_when_the_row_is_read_after_the_passes():
    p, _ = attention(("  free(scores);", "  out[0] = scores[0];\n  free(scores);"))
    assert "used outside the passes" in refusal(flash.online_softmax.apply, p, "attention > for i")


def test_level2_refutes_a_pass_that_reads_the_next_score(ck):
    """The weighted sum reads scores[j + 1], which the exp pass writes at
    iteration j + 1: the row cannot be streamed."""
    edit = ("scores[j] * v[(h * S + j) * D + d]", "scores[j] * scores[j + 1 < S ? j + 1 : j]")
    p, contracts = attention(edit)
    r = flash.online_softmax.apply(p, "attention > for i", 4)
    result = check_step(p, r.program, r.obligations, contracts)
    failed = [v for v in result.verdicts if v.status != "proved"]
    assert failed and all(v.kind == "stream" and v.status == "refuted" for v in failed), result.problems
    assert "'scores[j + 1 < S ? j + 1 : j]' (line 42) reads scores" in failed[0].reason
    with pytest.raises(AssertionError):
        ck.close_outputs(p, r.program, "attention", attention_args(ck, 1, 12, 4), rel=flash.TOLERANCE)


def _swap_rescale(program: ir.Program) -> ir.Program:
    """The rescaling factor with its arguments swapped: exp(m_blk - m)."""
    for path, n in walk(program):
        if isinstance(n, ir.DeclStmt) and n.decl.name == "rescale":
            arg = n.decl.init.args[0]  # type: ignore[union-attr]
            wrong = dataclasses.replace(arg, left=arg.right, right=arg.left)
            return replace(program, path + (("decl", None), ("init", None), ("args", 0)), wrong)
    raise AssertionError("no rescale factor")


def test_level2_refutes_a_wrong_rescaling_factor(ck):
    p, contracts = attention()
    r = flash.online_softmax.apply(p, "attention > for i", 4)
    bad = dataclasses.replace(r, program=_swap_rescale(r.program))
    why = refuted(p, bad, contracts)
    assert why.startswith("online_softmax: the running sum's factor"), why
    with pytest.raises(AssertionError):
        ck.close_outputs(p, bad.program, "attention", attention_args(ck, 1, 12, 4), rel=flash.TOLERANCE)


def test_level2_refutes_an_output_not_divided_by_the_sum():
    p, contracts = attention()
    r = flash.online_softmax.apply(p, "attention > for i", 4)
    final = r.obligations[-1].paths[4]
    loop = get(r.program, final)
    stmt = loop.body.stmts[0]
    wrong = dataclasses.replace(stmt, expr=dataclasses.replace(stmt.expr, rhs=stmt.expr.lhs))
    bad = dataclasses.replace(r, program=replace(r.program, final + (("body", None), ("stmts", 0)), wrong))
    assert "not divided by the running sum" in refuted(p, bad, contracts)


# ----------------------------------------------------------------- swap_triangular

TRI_C = """
    void tri(int n, float *x) {
      for (int i = 0; i < n; i++) {
        for (int j = 0; j < BOUND; j++) {
          x[i] += x[j + 1];
        }
      }
    }
"""
TRI_SPEC = """
    tri(n, x):
      requires n >= 1
      modifies x ~> Matrix1(n + 1)
"""


def tri(ck, bound: str) -> tuple[ir.Program, dict[str, Any]]:
    p = ck.parse(TRI_C.replace("BOUND", bound), "tri.c")
    return p, parse_spec_text(textwrap.dedent(TRI_SPEC))


def query_blocks() -> tuple[ir.Program, ir.Program, dict[str, Any]]:
    """attention.c streamed, with query blocks of 8 whose key-block loops
    are alone in a query loop (the script's steps up to the swap)."""
    p, contracts = attention()
    r = flash.online_softmax.apply(p, "attention > for i", 4).program
    r = loop.tile.apply(r, "attention > for i", 8, mode="min").program
    for name in ("max_val", "sum"):
        r = loop.hoist.apply(r, f"attention > for i > def {name}").program
    r = loop.fission.apply(r, "attention > for i > before for bj").program
    r = loop.fission.apply(r, "attention > for i#2 > after for bj").program
    return p, r, contracts


def test_swap_triangular_visits_key_blocks_up_to_the_diagonal(ck):
    p, before, contracts = query_blocks()
    r = flash.swap_triangular.apply(before, "attention > for i#2")
    text = ck.function_text(r.program, "attention")
    assert "for (int bj = 0; bj < (bi + 8 < S ? bi + 8 : S) - 1 + 1; bj += 4) {" in text
    assert "if (bj < i + 1) {" in text
    assert [o.kind for o in r.obligations] == ["swap_loops", "ordered_bounds"]
    proved_and_exact(ck, before, r, contracts)


def test_swap_triangular_refuses_a_rectangular_nest_or_more_than_a_loop():
    p, before, _ = query_blocks()
    assert "only the bound of for bi" in refusal(flash.swap_triangular.apply, before, "attention > for h")
    assert "must be one loop and nothing else" in refusal(flash.swap_triangular.apply, before, "attention > for i#1")


def test_level2_refutes_a_swap_that_reorders_a_dependence(ck):
    """x[i] += x[j + 1]: iteration (1, 1) reads x[2] before (2, 0) writes it;
    swapped, it reads it after."""
    p, contracts = tri(ck, "i + 1")
    r = flash.swap_triangular.apply(p, "tri > for i")
    why = refuted(p, r, contracts)
    assert why.startswith("swap_loops: ") and "x[j + 1]" in why, why
    with pytest.raises(AssertionError):
        ck.same_outputs(p, r.program, "tri", [5, ck.floats(6)])


def test_level2_refutes_a_bound_that_shrinks_with_the_outer_index(ck):
    p, contracts = tri(ck, "n - i")
    r = flash.swap_triangular.apply(p, "tri > for i")
    result = check_step(p, r.program, r.obligations, contracts)
    failed = {v.kind: v.status for v in result.verdicts if v.status != "proved"}
    assert failed.get("ordered_bounds") == "refuted", result.problems


# ----------------------------------------------------------------- version


def test_version_fixes_the_head_size_in_a_copy(ck):
    p, contracts = attention()
    r = flash.version.apply(p, "attention > for h", "D", 64)
    text = ck.function_text(r.program, "attention")
    assert "if (D == 64) {" in text and "} else {" in text
    assert "s += q[(h * S + i) * 64 + d] * k[(h * S + j) * 64 + d];" in text
    assert "s += q[(h * S + i) * D + d] * k[(h * S + j) * D + d];" in text
    assert [o.kind for o in r.obligations] == ["equals"] and r.fp == "exact"
    result = check_step(p, r.program, r.obligations, contracts)
    assert result.ok, result.problems
    for D in (64, 5):
        ck.check(p, r.program, "attention", attention_args(ck, 1, 9, D))


@pytest.mark.parametrize("name, value, words", [
    ("q", 64, ["'q' is not an integer variable"]),
    ("E", 64, ["'E' is not an integer variable"]),
    ("D", 6.5, ["must be an integer"]),
])
def test_version_refuses_what_is_not_an_integer_size(name: str, value: Any, words: list[str]):
    p, _ = attention()
    why = refusal(flash.version.apply, p, "attention > for h", name, value)
    for w in words:
        assert w in why, why


def test_version_refuses_a_size_the_loop_changes(ck):
    p = ck.parse("void f(int n, float *x) {\n  for (int i = 0; i < 4; i++) {\n    x[i] = n;\n    n++;\n  }\n}\n")
    assert "changes 'n'" in refusal(flash.version.apply, p, "f > for i", "n", 3)


def test_level2_refutes_a_copy_run_for_other_values():
    """The copy's guard loosened to D >= 64: D is not 64 in it."""
    p, contracts = attention()
    r = flash.version.apply(p, "attention > for h", "D", 64)
    path = r.obligations[0].paths[0][:-2]
    branch = get(r.program, path)
    loose = dataclasses.replace(branch, cond=dataclasses.replace(branch.cond, op=">="))
    bad = dataclasses.replace(r, program=replace(r.program, path, loose))
    assert refuted(p, bad, contracts).startswith("equals: ")


# ----------------------------------------------------------------- split_blocks, full_blocks


def swapped() -> tuple[ir.Program, ir.Program, dict[str, Any]]:
    """query_blocks() with the key-block loop outside the queries."""
    p, before, contracts = query_blocks()
    return p, flash.swap_triangular.apply(before, "attention > for i#2").program, contracts


def test_split_blocks_separates_the_blocks_before_the_diagonal(ck):
    _, before, contracts = swapped()
    r = flash.split_blocks.apply(before, "attention > for bj", "bi")
    text = ck.function_text(r.program, "attention")
    assert "for (int bj = 0; bj < bi; bj += 4) {" in text
    assert "for (int bj = bi; bj < (bi + 8 < S ? bi + 8 : S) - 1 + 1; bj += 4) {" in text
    assert sorted(o.kind for o in r.obligations) == ["divides", "in_range"]
    proved_and_exact(ck, before, r, contracts)


def test_split_blocks_refuses_a_point_that_uses_the_index_or_an_unknown_name():
    _, before, _ = swapped()
    assert "uses the index" in refusal(flash.split_blocks.apply, before, "attention > for bj", "bj + 4")
    assert "'n', which is not declared" in refusal(flash.split_blocks.apply, before, "attention > for bj", "n")


def test_level2_refutes_a_split_point_between_block_starts(ck):
    _, before, contracts = swapped()
    r = flash.split_blocks.apply(before, "attention > for bj", "bi + 1")
    assert refuted(before, r, contracts).startswith("divides: ")
    with pytest.raises(AssertionError):
        ck.same_outputs(before, r.program, "attention", attention_args(ck, 1, 21, 4))


def test_full_blocks_run_the_key_loops_of_unmasked_blocks_to_the_block_end(ck):
    _, swapped_program, contracts = swapped()
    before = flash.split_blocks.apply(swapped_program, "attention > for bj", "bi").program
    r = flash.full_blocks.apply(before, "attention > for bj#1")
    text = ck.function_text(r.program, "attention")
    assert text.count("for (int j = bj; j < bj + 4; j++) {") == 4
    assert text.count("(bj + 4 < i + 1 ? bj + 4 : i + 1)") == 4  # the diagonal blocks keep theirs
    assert "for (int i = bi; i < (bi + 8 < S ? bi + 8 : S); i++) {" in text  # not a key loop
    assert [o.kind for o in r.obligations] == ["ordered_bounds"] * 4
    proved_and_exact(ck, before, r, contracts)


def test_full_blocks_refuses_a_loop_without_block_minima_and_level2_refutes_the_diagonal(ck):
    _, swapped_program, contracts = swapped()
    before = flash.split_blocks.apply(swapped_program, "attention > for bj", "bi").program
    assert "no loop inside for h" in refusal(flash.full_blocks.apply, before, "attention > for h")
    r = flash.full_blocks.apply(before, "attention > for bj#2")
    result = check_step(before, r.program, r.obligations, contracts)
    assert {v.kind for v in result.verdicts if v.status == "refuted"} == {"ordered_bounds"}, result.problems
    with pytest.raises(AssertionError):  # S = 24: the masked keys it adds are still inside the arrays
        ck.same_outputs(before, r.program, "attention", attention_args(ck, 1, 24, 4))


# ----------------------------------------------------------------- what the attention script needs of vectorize and level 2


def test_vectorize_edits_a_variant_with_the_expf_helper_in_place(ck):
    """The attention kernel is vectorized piece by piece: a second call on
    the variant (which holds the vector expf) must not make a third copy."""
    p = ck.load("softmax.c")
    contracts = load_contracts(p, str(ROOT / "specs" / "softmax.spec"))
    first = vector.vectorize.apply(p, "softmax > for j#2", isa="avx512")
    second = vector.vectorize.apply(first.program, "softmax_avx512 > for j#3", isa="avx512")
    names = [f.name for f in second.program.functions()]
    assert names == ["otp_expf_avx512", "softmax_avx512", "softmax"], names
    contracts = inherit_contracts(contracts, first)
    result = check_step(first.program, second.program, second.obligations, contracts)
    assert result.ok, result.problems
    ck.close_outputs(p, second.program, "softmax", [3, 40, ck.floats(120), ck.floats(120)], rel=1e-5)


def test_vectorize_reduce_combines_the_lanes_with_one_intrinsic(ck):
    """reduce=True, as the attention script's key blocks use it: the lanes of
    the running max and of the sum are combined by one AVX-512 reduce each,
    proved and run like the scalar loop over the lanes."""
    p = ck.load("softmax.c")
    contracts = load_contracts(p, str(ROOT / "specs" / "softmax.spec"))
    first = vector.vectorize.apply(p, "softmax > for j#1", isa="avx512", reduce=True)
    second = vector.vectorize.apply(first.program, "softmax_avx512 > for j#2", isa="avx512", reduce=True)
    text = ck.function_text(second.program, "softmax_avx512")
    assert "float max_val_top = _mm512_reduce_max_ps(max_val_v[0]);" in text
    assert "if (max_val_top > max_val) {" in text
    assert "sum += _mm512_reduce_add_ps(sum_v[0]);" in text
    assert "_lanes" not in text
    for before, r in ((p, first), (first.program, second)):
        contracts = inherit_contracts(contracts, r)
        result = check_step(before, r.program, r.obligations, contracts)
        assert result.ok, result.problems
    ck.close_outputs(p, second.program, "softmax", [3, 40, ck.floats(120), ck.floats(120)], rel=1e-5)


def test_vectorize_reduce_refuses_avx2_and_level2_refutes_a_carried_dependence(ck):
    p = ck.load("softmax.c")
    assert "needs AVX-512" in refusal(vector.vectorize.apply, p, "softmax > for j#1", isa="avx2", reduce=True)
    bad = ck.parse(textwrap.dedent("""
        void f(int n, float *x) {
          float s = 0.0f;
          for (int j = 1; j < 64; j++) {
            x[j] = x[j - 1] + 1.0f;
            s += x[j];
          }
          x[0] = s;
        }
    """), "f.c")
    spec = parse_spec_text(textwrap.dedent("""
        f(n, x):
          modifies x ~> Matrix1(64)
    """))
    r = vector.vectorize.apply(bad, "f > for j", isa="avx512", reduce=True)
    assert refuted(bad, r, spec).startswith("lanes: ")


TILE_C = """
#include <immintrin.h>

void f(float *y) {
  float t[4][32];
  for (int a = 0; a < 4; a++) {
    for (int b = 0; b < 32; b++) {
      t[a][b] = a;
    }
  }
  for (int a = 0; a < 4; a++) {
    _mm512_storeu_ps(&y[16 * a], _mm512_loadu_ps(&t[a][OFFSET]));
  }
}
"""


@pytest.mark.parametrize("offset, problem", [("16", None), ("20", "may be out of bounds of 't'")])
def test_vector_loads_from_a_local_tile_are_accesses_to_its_cells(ck, offset: str, problem: Any):
    """`_mm512_loadu_ps(&t[a][16])` reads 16 cells of the local t (as the
    transposed K tile of the attention script): level 2 checks them against
    its shape instead of calling them unknown memory."""
    p = ck.parse(TILE_C.replace("OFFSET", offset), "tile.c")
    contracts = parse_spec_text("f(y):\n  writes y ~> Matrix1(64)\n")
    problems = check_resources(p, contracts)
    if problem is None:
        assert problems == ()
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_level2_does_not_prove_a_key_loop_over_other_keys():
    """The weighted sum of the streamed block stops one key early: the
    recurrence no longer holds for every key, so it is not proved."""
    p, contracts = attention()
    r = flash.online_softmax.apply(p, "attention > for i", 4)
    blocks = r.obligations[-1].paths[0]
    loop = get(r.program, blocks)
    k, weighted = [(n, s) for n, s in enumerate(loop.body.stmts) if isinstance(s, ir.For)][-1]
    short = dataclasses.replace(weighted, stop=ir.Binop("-", weighted.stop, ir.Const("1")))
    bad = dataclasses.replace(r, program=replace(r.program, blocks + (("body", None), ("stmts", k)), short))
    result = check_step(p, bad.program, bad.obligations, contracts)
    (verdict,) = [v for v in result.verdicts if v.status != "proved"]
    assert verdict.kind == "online_softmax" and "not those of every other pass" in verdict.reason, verdict


# ----------------------------------------------------------------- drop_buffer


def test_drop_buffer_removes_the_streamed_scores_row(ck):
    p, contracts = attention()
    before = flash.online_softmax.apply(p, "attention > for i", 4).program
    r = flash.drop_buffer.apply(before, "attention > def scores")
    text = ck.function_text(r.program, "attention")
    assert "scores =" not in text and "free(scores)" not in text and r.obligations == ()
    assert check_step(before, r.program, r.obligations, contracts).ok
    ck.check(before, r.program, "attention", attention_args(ck, 1, 9, 4))


def test_drop_buffer_refuses_a_buffer_still_in_use_or_not_allocated():
    p, _ = attention()
    assert "still used besides its free()" in refusal(flash.drop_buffer.apply, p, "attention > def scores")
    assert "not allocated with malloc" in refusal(flash.drop_buffer.apply, p, "attention > def max_val")


# ----------------------------------------------------------------- mask


def tail_apart() -> tuple[ir.Program, dict[str, Any]]:
    """attention.c streamed in key blocks of 4, the last S % 8 queries
    apart (as the CUDA script does), query blocks of 8 whose key-block loop
    is outside the queries: every key of a key block is a key of the row."""
    p, contracts = attention()
    r = flash.online_softmax.apply(p, "attention > for i", 4).program
    r = loop.split.apply(r, "attention > for i", "S - S % 8").program
    r = loop.tile.apply(r, "attention > for i#1", 8).program
    for name in ("max_val", "sum"):
        r = loop.hoist.apply(r, f"attention > for bi > for i > def {name}").program
    r = loop.fission.apply(r, "attention > for bi > for i > before for bj").program
    r = loop.fission.apply(r, "attention > for bi > for i#2 > after for bj").program
    return flash.swap_triangular.apply(r, "attention > for bi > for i#2").program, contracts


def test_mask_runs_every_key_of_the_diagonal_blocks(ck):
    before, contracts = tail_apart()
    r = flash.mask.apply(before, "attention > for bi > for bj")
    text = ck.function_text(r.program, "attention")
    assert text.count("for (int j = bj; j < bj + 4; j++) {") == 4
    assert "scores_blk[j - bj] = j < i + 1 ? s / sqrtf(D) : -INFINITY;" in text
    assert "? bj + 4 : i + 1" not in text.split("for (int i = S - S % 8")[0]  # the tail keeps its own loops
    assert [o.kind for o in r.obligations] == ["positive", "positive"]  # the first key, the causal guard at bj = 0
    proved_and_exact(ck, before, r, contracts)
    for H, S in ((1, 16), (2, 8)):
        ck.same_outputs(before, r.program, "attention", attention_args(ck, H, S, 4))


def test_mask_refuses_loops_it_cannot_mask():
    before, _ = tail_apart()
    assert "no loop inside for h" in refusal(flash.mask.apply, before, "attention > for h")
    p, _ = attention()
    streamed = flash.online_softmax.apply(p, "attention > for i", 4).program
    assert "no loop inside for i" in refusal(flash.mask.apply, streamed, "attention > for i")
    # a pass that a masked score would change: the sum of the raw scores
    text = to_c(before).replace("sum_h[i - bi] += scores_blk[j - bj];", "sum_h[i - bi] += scores_blk[j - bj] + 1.0f;")
    message = refusal(flash.mask.apply, parse_text(text, "attention.c"), "attention > for bi > for bj")
    assert "is not a pass that a masked score leaves unchanged" in message


def test_mask_of_blocks_past_a_query_is_proved_and_level2_refutes_a_masked_first_block(ck):
    before, contracts = tail_apart()
    # key blocks entirely past a query (bj > i): all masked, they leave its max, sum and output alone
    unguarded = parse_text(to_c(before).replace("if (bj < i + 1)", "if (1)"), "attention.c")
    r = flash.mask.apply(unguarded, "attention > for bi > for bj")
    proved_and_exact(ck, unguarded, r, contracts)
    # query 0 sees no key of the first block: its running max would stay -INFINITY
    shifted = parse_text(to_c(before).replace("bj + 4 < i + 1 ? bj + 4 : i + 1", "bj + 4 < i ? bj + 4 : i"),
                         "attention.c")
    r = flash.mask.apply(shifted, "attention > for bi > for bj")
    assert refuted(shifted, r, contracts).startswith("positive: ")
    # a guard that skips the first block: a query's first block seen could be all masked
    skipping = parse_text(to_c(before).replace("if (bj < i + 1)", "if (bj > 0)"), "attention.c")
    r = flash.mask.apply(skipping, "attention > for bi > for bj")
    assert refuted(skipping, r, contracts).startswith("positive: ")


# ----------------------------------------------------------------- drop_guard, move_up, split_tail


def whole_blocks() -> tuple[ir.Program, dict[str, Any]]:
    """swapped() with the key blocks before the diagonal split off and whole."""
    _, before, contracts = swapped()
    r = flash.split_blocks.apply(before, "attention > for bj", "bi").program
    return flash.full_blocks.apply(r, "attention > for bj#1").program, contracts


def test_drop_guard_removes_the_mask_of_the_blocks_before_the_diagonal(ck):
    before, contracts = whole_blocks()
    r = flash.drop_guard.apply(before, "attention > for bj#1 > for i > 'if (bj < i + 1)'")
    text = ck.function_text(r.program, "attention")
    assert text.count("if (bj < i + 1)") == 1  # the diagonal blocks keep theirs
    assert "for (int i = bi; i < (bi + 8 < S ? bi + 8 : S); i++) {\n          float scores_blk[4];" in text
    assert [o.kind for o in r.obligations] == ["positive"]
    proved_and_exact(ck, before, r, contracts)


def test_drop_guard_refuses_a_float_test_and_level2_refutes_a_mask_that_can_fail(ck):
    p, contracts = attention()
    streamed = flash.online_softmax.apply(p, "attention > for i", 4).program
    assert "not a comparison" in refusal(flash.drop_guard.apply, streamed,
                                         "attention > 'if (scores_blk[j - bj] > max_val_blk)'")
    _, before, contracts = swapped()
    r = flash.drop_guard.apply(before, "attention > for bj > for i > 'if (bj < i + 1)'")
    # refuted (bj > i for the blocks past a query), although outputs would not change: the key loop of
    # such a block, bounded by i + 1, runs no iteration
    assert refuted(before, r, contracts).startswith("positive: ")


def test_move_up_stores_the_running_max_right_after_its_last_read(ck):
    before, contracts = whole_blocks()
    full = "attention > for bj#1 > for i"
    r = flash.move_up.apply(before, f"{full} > 'max_val_h[i - bi] = max_val_blk;'", f"{full} > def rescale")
    text = ck.function_text(r.program, "attention")
    assert ("float rescale = expf(max_val_h[i - bi] - max_val_blk);\n"
            "            max_val_h[i - bi] = max_val_blk;\n") in text
    assert [o.kind for o in r.obligations] == ["commute"]
    proved_and_exact(ck, before, r, contracts)


def test_move_up_refuses_a_place_below_and_level2_refutes_passing_a_read(ck):
    before, contracts = whole_blocks()
    full = "attention > for bj#1 > for i"
    store = f"{full} > 'max_val_h[i - bi] = max_val_blk;'"
    rescaled = f"{full} > 'sum_h[i - bi] = sum_h[i - bi] * rescale;'"
    assert "is not before" in refusal(flash.move_up.apply, before, rescaled, store)
    r = flash.move_up.apply(before, store, f"{full} > def max_val_blk")
    assert refuted(before, r, contracts).startswith("commute: ")
    with pytest.raises(AssertionError):  # the rescaling factor reads the new max: always 1
        ck.same_outputs(before, r.program, "attention", attention_args(ck, 1, 21, 4))


def test_move_up_takes_a_tile_and_its_copy_above_the_statements_that_do_not_use_them(ck):
    """The V rows of a key block, copied into a local tile: the tile's
    declaration goes up without obligation, then its copy (commute),
    above the softmax of the block, as a kernel issues the loads of V
    before computing the block's max and sum."""
    before, contracts = whole_blocks()
    full = "attention > for bj#1 > for i"
    staged = matrix.local_buffer.apply(before, f"{full} > for j#4", "v", "vt", shape=["H * S", "D"])
    text = ck.function_text(staged.program, "attention")
    assert "float vt[4][D];" in text
    r = flash.move_up.apply(staged.program, f"{full} > def vt", f"{full} > for j#1")
    assert r.obligations == ()
    text = ck.function_text(r.program, "attention")
    assert "scores_blk[j - bj] = s / sqrtf(D);\n            }\n            float vt[4][D];\n" in text
    copy = flash.move_up.apply(r.program, f"{full} > for i0", f"{full} > def vt")
    assert [o.kind for o in copy.obligations] == ["commute"]
    assert "float vt[4][D];\n            for (int i0 = 0; i0 < 4; i0++) {" in ck.function_text(copy.program, "attention")
    proved_and_exact(ck, r.program, copy, contracts)


def test_move_up_refuses_a_declaration_with_an_initializer_or_passing_its_name(ck):
    before, contracts = whole_blocks()
    full = "attention > for bj#1 > for i"
    assert "has an initializer" in refusal(flash.move_up.apply, before, f"{full} > def rescale",
                                           f"{full} > def max_val_blk")
    shadowed = parse_text(textwrap.dedent("""
        void f(int n, float *y) {
          float t = 1.0f;
          {
            float u = 0.0f;
            y[0] = t + u;
            float t;
            t = 2.0f;
            y[1] = t;
          }
        }"""), "shadow.c")
    assert "would pass the instruction at line 5, which names 't'" in refusal(flash.move_up.apply, shadowed,
                                                                              "f > def t#2", "f > def u")


def test_split_tail_leaves_a_multiple_of_the_tile_in_the_first_loop(ck):
    before, contracts = whole_blocks()
    r = flash.split_tail.apply(before, "attention > for bj#1 > for i", 3)
    text = ck.function_text(r.program, "attention")
    point = "(bi + 8 < S ? bi + 8 : S) - ((bi + 8 < S ? bi + 8 : S) - bi) % 3"
    assert f"for (int i = bi; i < {point}; i++) {{" in text
    assert f"for (int i = {point}; i < (bi + 8 < S ? bi + 8 : S); i++) {{" in text
    assert [o.kind for o in r.obligations] == ["in_range"]
    result = check_step(before, r.program, r.obligations, contracts)
    assert result.ok, result.problems
    tiled = loop.tile.apply(r.program, "attention > for bj#1 > for i#1", 3)
    assert check_step(r.program, tiled.program, tiled.obligations, contracts).ok
    ck.check(before, r.program, "attention", attention_args(ck, 2, 21, 4))


def test_split_tail_refuses_a_tile_of_one_and_level2_refutes_a_reversed_range(ck):
    before, _ = whole_blocks()
    assert "above 1" in refusal(flash.split_tail.apply, before, "attention > for bj#1 > for i", 1)
    p, spec = tri(ck, "i - n")
    r = flash.split_tail.apply(p, "tri > for j", 3)
    assert refuted(p, r, spec).startswith("in_range: ")
