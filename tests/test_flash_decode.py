"""flash.split_softmax (flash-decoding) on c_sources/gqa_decode.c and
attention.c: the chunked form, its level-2 proof (stream, commute,
softmax_merge), refusals, and invalid uses that level 2 refutes and --exec
shows wrong."""
from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from helpers import attention_args, refusal, refuted

from optitrust_py import ir
from optitrust_py.level2 import check_step
from optitrust_py.printer import stmt_text
from optitrust_py.session import Rewrite
from optitrust_py.spec import parse_spec_file
from optitrust_py.tree import get, replace, walk
from transformations import flash
from conftest import ROOT
from test_gqa import gqa_args

GQA = parse_spec_file(ROOT / "specs" / "gqa_decode.spec")
ATTENTION = parse_spec_file(ROOT / "specs" / "attention.spec")


def split(ck: Any, chunk: int = 8) -> tuple[ir.Program, Rewrite]:
    p = ck.load("gqa_decode.c")
    return p, flash.split_softmax.apply(p, "gqa_decode > for h", chunk)


def test_split_softmax_computes_chunks_apart_and_combines_them(ck):
    p, r = split(ck, 32)
    text = ck.function_text(r.program, "gqa_decode")
    for snippet in ("float *max_val_parts = malloc((pos + 1 + 31) / 32 * sizeof(float));",
                    "for (int bt = 0; bt < (pos + 1 + 31) / 32; bt++) {",
                    "for (int t = bt * 32; t < (bt * 32 + 32 < pos + 1 ? bt * 32 + 32 : pos + 1); t++) {",
                    "scores[t] = expf(scores[t] - max_val_chunk);",
                    "out_parts[bt * D + d] += scores[t] * v_cache[(g * SMAX + t) * D + d];",
                    "max_val_parts[bt] = max_val_chunk;", "sum_parts[bt] = sum_chunk;",
                    "max_val_parts[bt] = expf(max_val_parts[bt] - max_val);",
                    "sum += sum_parts[bt] * max_val_parts[bt];",
                    "out[h * D + d] += out_parts[bt * D + d] * max_val_parts[bt];",
                    "out[h * D + d] = out[h * D + d] / sum;", "free(max_val_parts);"):
        assert snippet in text, snippet
    assert "/ sum;\n" not in text.split("float max_val = -INFINITY;")[0]  # the normalize pass is gone
    assert r.fp == "reassoc" and r.tolerance == flash.TOLERANCE
    assert sorted({o.kind for o in r.obligations}) == ["commute", "softmax_merge", "stream"]
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    for sizes in ((8, 2, 20, 40, 33), (4, 4, 3, 9, 0), (2, 1, 5, 70, 63), (2, 1, 5, 70, 64)):
        ck.close_outputs(p, r.program, "gqa_decode", gqa_args(ck, *sizes), rel=flash.TOLERANCE)


def test_level2_proves_every_obligation_on_gqa_and_attention(ck):
    p, r = split(ck)
    result = check_step(p, r.program, r.obligations, GQA)
    assert result.ok, result.problems
    assert result.count("proved") == 12
    a = ck.load("attention.c")
    ra = flash.split_softmax.apply(a, "attention > for i", 4)
    result = check_step(a, ra.program, ra.obligations, ATTENTION)
    assert result.ok, result.problems
    for H, S, D in ((2, 21, 4), (1, 1, 3), (1, 9, 2)):
        ck.close_outputs(a, ra.program, "attention", attention_args(ck, H, S, D), rel=flash.TOLERANCE)


@pytest.mark.parametrize("target, chunk, words", [
    ("gqa_decode > for g", 8, ["for g", "holds none", "buf[j] = score"]),
    ("gqa_decode > for h", 1, ["integer above 1"]),
    ("gqa_decode > for h", True, ["integer above 1"]),
    ("gqa_decode > for h", 8.0, ["integer above 1"]),
])
def test_split_softmax_refuses_the_wrong_shape(ck, target: str, chunk: Any, words: list[str]):
    why = refusal(flash.split_softmax.apply, ck.load("gqa_decode.c"), target, chunk)
    for w in words:
        assert w in why, why


def test_split_softmax_refuses_a_row_read_after_the_passes_or_not_from_0(ck):
    text = (ROOT / "c_sources" / "gqa_decode.c").read_text()
    used = ck.parse(text.replace("  free(scores);", "  out[0] = scores[0];\n  free(scores);"))
    assert "used outside the passes" in refusal(flash.split_softmax.apply, used, "gqa_decode > for h")
    shifted = ck.parse(text.replace("for (int t = 0; t <= pos; t++)", "for (int t = 1; t <= pos; t++)"))
    assert "from 0 by steps of 1" in refusal(flash.split_softmax.apply, shifted, "gqa_decode > for h")


def _edit(r: Rewrite, find: str, change: Any) -> Rewrite:
    """The step with the first statement whose text starts with `find` changed."""
    for path, n in walk(r.program):
        if isinstance(n, (ir.ExprStmt, ir.For)) and stmt_text(n).strip().startswith(find):
            return dataclasses.replace(r, program=replace(r.program, path, change(get(r.program, path))))
    raise AssertionError(f"no statement {find!r}")


def _swap_exp(loop: ir.For) -> ir.For:
    """`max_val_parts[bt] = expf(max_val - max_val_parts[bt])`: the weight inverted."""
    s = loop.body.stmts[0]
    call = s.expr.rhs
    arg = call.args[0]
    wrong = dataclasses.replace(call, args=(dataclasses.replace(arg, left=arg.right, right=arg.left),))
    return dataclasses.replace(loop, body=ir.Block((dataclasses.replace(s, expr=dataclasses.replace(s.expr, rhs=wrong)),)))


def test_level2_refutes_a_combination_with_the_weight_inverted(ck):
    p, r = split(ck)
    bad = _edit(r, "for (int bt = 0; bt < (pos + 1 + 7) / 8; bt++) {\n  max_val_parts[bt] = expf", _swap_exp)
    why = refuted(p, bad, GQA)
    assert why.startswith("softmax_merge: the combined sum rescales each key"), why
    with pytest.raises(AssertionError):
        ck.close_outputs(p, bad.program, "gqa_decode", gqa_args(ck, 4, 2, 5, 40, 33), rel=flash.TOLERANCE)


def test_level2_refutes_chunks_that_miss_the_last_keys(ck):
    """The chunk count (pos + 1) / 8 drops the last (pos + 1) % 8 keys."""
    p, r = split(ck)
    fewer = ir.Binop("/", ir.Binop("+", ir.Var("pos"), ir.Const("1")), ir.Const("8"))
    bad = _edit(r, "for (int bt = 0; bt < (pos + 1 + 7) / 8; bt++)",  # the first: the chunk loop
                lambda loop: dataclasses.replace(loop, stop=fewer))
    why = refuted(p, bad, GQA)
    assert "the last chunk ends at the row's end is not proved" in why, why
    with pytest.raises(AssertionError):
        ck.close_outputs(p, bad.program, "gqa_decode", gqa_args(ck, 4, 2, 5, 40, 33), rel=flash.TOLERANCE)


def test_level2_refutes_a_chunk_that_stores_another_max(ck):
    """The chunk stores its starting max, not the one its exponentials used."""
    p, r = split(ck)
    bad = _edit(r, "max_val_parts[bt] = max_val_chunk;",
                lambda s: dataclasses.replace(s, expr=dataclasses.replace(s.expr, rhs=ir.Const("0.0f"))))
    result = check_step(p, bad.program, bad.obligations, GQA)
    failed = [v for v in result.verdicts if v.status != "proved"]
    assert [v.kind for v in failed] == ["softmax_merge"] and failed[0].status == "unknown", result.problems
    assert "max_val_parts[bt] = 0.0f" in failed[0].reason


def test_split_softmax_on_a_row_of_a_buffer_of_rows(ck):
    """After llm.expand_buffer each head's scores are row h of one buffer,
    `scores[h * (pos + 1) + t]`: the chunks keep to that row."""
    from transformations import llm
    p = ck.load("gqa_decode.c")
    rows = llm.expand_buffer.apply(p, "gqa_decode > for h", "scores", "pos + 1").program
    r = flash.split_softmax.apply(rows, "gqa_decode > for h", 8)
    assert "scores[h * (pos + 1) + t] = expf(scores[h * (pos + 1) + t] - max_val_chunk);" \
        in ck.function_text(r.program, "gqa_decode")
    result = check_step(rows, r.program, r.obligations, GQA)
    assert result.ok, result.problems
    ck.close_outputs(p, r.program, "gqa_decode", gqa_args(ck, 8, 2, 20, 40, 33), rel=flash.TOLERANCE)
