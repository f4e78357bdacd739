"""The microbatched-prefill transformations of transformations/llm.py on
transformer.c's prompt loop: inline the per-token forward, batch its
scratch buffers, and what level 2 makes of them."""
from __future__ import annotations

from typing import Any

import pytest

from optitrust_py import ir
from optitrust_py.level2 import check_step
from optitrust_py.printer import to_c
from optitrust_py.spec import parse_spec_file
from conftest import ROOT, CKit
from helpers import refusal, refuted
from transformations import function, llm, loop

SIZES = {"T": 5, "L": 2, "dim": 16, "hidden": 24, "H": 4, "KVH": 2, "SMAX": 8}


@pytest.fixture(scope="module")
def contracts() -> dict[str, Any]:
    return parse_spec_file(ROOT / "specs" / "transformer.spec")


def prefill_args(ck: CKit, T: int, L: int, dim: int, hidden: int, H: int, KVH: int, SMAX: int) -> list[Any]:
    kv = dim * KVH // H
    weights = [L * dim, L * dim * dim, L * kv * dim, L * kv * dim, L * dim * dim, L * dim, L * hidden * dim,
               L * dim * hidden, L * hidden * dim]
    return [T, L, dim, hidden, H, KVH, SMAX, *(ck.floats(n) for n in weights), ck.floats(T * dim),
            ck.floats(L * SMAX * kv), ck.floats(L * SMAX * kv)]


@pytest.fixture(scope="module")
def inlined() -> ir.Program:
    """transformer.c with the per-token forward inlined into the prompt loop."""
    ck = CKit()
    return llm.inline_call.apply(ck.load("transformer.c"), "transformer_prefill > call transformer_token").program


def proved(before: ir.Program, rewrite: Any, contracts: dict[str, Any]) -> None:
    result = check_step(before, rewrite.program, rewrite.obligations, contracts)
    assert result.ok, result.problems


def test_inline_call_binds_plain_arguments_and_unblocks(ck: CKit, inlined: ir.Program) -> None:
    text = ck.function_text(inlined, "transformer_prefill")
    assert ck.contains(text, """
        for (int t = 0; t < T; t++) {
          int head_size = dim / H;""")
    assert "rmsnorm_vec(dim, &xs[t * dim], &rms_att_w[l * dim], xb);" in text
    assert "L_1" not in text and "int pos" not in text and "float val = t * freq;" in text
    ck.check(ck.load("transformer.c"), inlined, "transformer_prefill", prefill_args(ck, **SIZES))


def test_unblock_refuses_a_clash_and_a_block_that_is_a_body(ck: CKit) -> None:
    p = ck.load("transformer.c")
    once = function.inline.apply(p, "transformer_prefill > call transformer_token").program
    assert "not in a block that is itself a statement" in refusal(
        llm.unblock.apply, p, "transformer_prefill > instr 'transformer_token('")
    clash = ck.parse("""
        void f(int n, float *y) {
          for (int i = 0; i < n; i++) {
            { float s = 1.0f; y[i] = s; }
            float s = 2.0f;
            y[i] += s;
          }
        }""")
    assert "declares 's'" in refusal(llm.unblock.apply, clash, "f > def s#1")
    flat = llm.unblock.apply(once, "transformer_prefill > def head_size").program
    assert ck.contains(ck.function_text(flat, "transformer_prefill"), """
        for (int t = 0; t < T; t++) {
          int L_1 = L;""")


def batched(program: ir.Program, *names: str) -> ir.Program:
    p = program
    for v in ("head_size", "kv_dim", "kv_mul"):
        p = loop.move_out.apply(p, f"transformer_prefill > for t > def {v}").program
    for b in names:
        p = llm.batch_buffer.apply(p, "transformer_prefill > for t", b).program
    return p


def test_batch_buffer_gives_each_token_a_row(ck: CKit, inlined: ir.Program, contracts: dict[str, Any]) -> None:
    before = batched(inlined, "xb", "xb2", "q")
    r = llm.batch_buffer.apply(before, "transformer_prefill > for t", "k")
    text = ck.function_text(r.program, "transformer_prefill")
    assert "float *k_b = malloc(T * kv_dim * sizeof(float));" in text
    assert "k_b[t * kv_dim + (i + 1)] = k0 * fci + k1 * fcr;" in text
    assert "free(k_b);" in text and "free(k);" not in text
    assert [o.kind for o in r.obligations] == ["ordered_bounds"]
    proved(before, r, contracts)
    ck.check(inlined, r.program, "transformer_prefill", prefill_args(ck, **SIZES))


def test_batch_buffer_with_a_row_size_for_a_growing_buffer(ck: CKit, inlined: ir.Program,
                                                          contracts: dict[str, Any]) -> None:
    before = batched(inlined)
    assert "depends on 't'" in refusal(llm.batch_buffer.apply, before, "transformer_prefill > for t", "att")
    r = llm.batch_buffer.apply(before, "transformer_prefill > for t", "att", "SMAX")
    assert "float *att_b = malloc(T * SMAX * sizeof(float));" in to_c(r.program)
    assert sorted(o.kind for o in r.obligations) == ["in_range", "ordered_bounds"]
    proved(before, r, contracts)
    ck.check(inlined, r.program, "transformer_prefill", prefill_args(ck, **SIZES))


def test_batch_buffer_refuses_what_it_cannot_batch(ck: CKit, inlined: ir.Program) -> None:
    before = batched(inlined)
    assert "declares no 'xs'" in refusal(llm.batch_buffer.apply, before, "transformer_prefill > for t", "xs")
    assert "depends on 'kv_dim'" in refusal(llm.batch_buffer.apply, inlined, "transformer_prefill > for t", "k")
    p = ck.parse("""
        #include <stdlib.h>
        void f(int n, float *y) {
          for (int i = 0; i < n; i++) {
            float *s = malloc(4 * sizeof(float));
            s[0] = y[i];
            y[i] = s[0];
          }
        }""")
    assert "must free 's' once" in refusal(llm.batch_buffer.apply, p, "f > for i", "s")
    assert "row size" in refusal(llm.batch_buffer.apply, before, "transformer_prefill > for t", "att", "t")


def test_a_row_too_small_is_refuted(ck: CKit, inlined: ir.Program, contracts: dict[str, Any]) -> None:
    before = batched(inlined)
    r = llm.batch_buffer.apply(before, "transformer_prefill > for t", "att", "T - 1")
    assert refuted(before, r, contracts).startswith("in_range: ")
