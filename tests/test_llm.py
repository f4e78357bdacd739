"""The microbatched-prefill transformations of transformations/llm.py on
transformer.c's prompt loop: inline the per-token forward, batch its
scratch buffers, and what level 2 makes of them."""
from __future__ import annotations

import textwrap
from typing import Any

import pytest

from optitrust_py import ir
from optitrust_py.level2 import check_step
from optitrust_py.printer import to_c
from optitrust_py.session import Session
from optitrust_py.spec import parse_spec_file, parse_spec_text
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
    early = ck.parse("""
        #include <stdlib.h>
        void f(int n, float *y) {
          for (int i = 0; i < n; i++) {
            float *s = malloc(4 * sizeof(float));
            s[0] = y[i];
            if (y[i] > 2.0f) {
              free(s);
            }
            free(s);
          }
        }""")
    assert "is assigned, redeclared, freed or has its address taken" in refusal(
        llm.batch_buffer.apply, early, "f > for i", "s")
    assert "row size" in refusal(llm.batch_buffer.apply, before, "transformer_prefill > for t", "att", "t")


def test_a_row_too_small_is_refuted(ck: CKit, inlined: ir.Program, contracts: dict[str, Any]) -> None:
    before = batched(inlined)
    r = llm.batch_buffer.apply(before, "transformer_prefill > for t", "att", "T - 1")
    assert refuted(before, r, contracts).startswith("in_range: ")


def test_inline_pointer_folds_the_offset(ck: CKit, contracts: dict[str, Any]) -> None:
    p = ck.load("transformer.c")
    once = function.inline.apply(p, "transformer_token > call matvec#1").program
    r = llm.inline_pointer.apply(once, "transformer_token > def W")
    text = ck.function_text(r.program, "transformer_token")
    assert "y[i] += wq[l * dim * dim + (i * n + j)] * x_1[j];" in text and "*W" not in text
    assert r.obligations == ()
    proved(once, r, contracts)
    ck.check(p, r.program, "transformer_prefill", prefill_args(ck, **SIZES))
    assert "is not a pointer initialized with 'a' or '&a[e]'" in refusal(
        llm.inline_pointer.apply, once, "transformer_token > def xb")
    moved = ck.parse("""
        void f(int n, float *a, float *y) {
          int k = 0;
          float *p = &a[k];
          k = 1;
          y[0] = p[n];
        }""")
    assert "'k' is assigned" in refusal(llm.inline_pointer.apply, moved, "f > def p")


def microbatched(inlined: ir.Program) -> ir.Program:
    """The prompt loop of `inlined` in microbatches of 2 tokens, layers
    outside the tokens, the q projection in a token loop of its own."""
    p = batched(inlined, "xb", "xb2", "q", "k", "v", "hb", "hb2")
    p = llm.batch_buffer.apply(p, "transformer_prefill > for t", "att", "SMAX").program
    p = loop.tile.apply(p, "transformer_prefill > for t", 2, mode="min").program
    p = loop.swap.apply(p, "transformer_prefill > for bt > for t").program
    for point in ("after 'rmsnorm_vec(dim, &xs[t * dim], &rms_att_w'", "after 'matvec(dim, dim, &wq'"):
        p = loop.fission.apply(p, f"transformer_prefill > {point}").program
    return p


def leaf_verdicts(program: ir.Program, contracts: dict[str, Any], step: Any) -> list[str]:
    """Runs a composite on `program` in a session; the level-2 status of
    every obligation of each of its sub-steps, checked on its own code."""
    with Session() as s:
        s.program = s.original = program
        step()
        (top,) = s.steps
    out = []
    for sub in top.substeps:
        for leaf in (sub.substeps or [sub]):
            result = check_step(leaf.before, leaf.after, leaf.obligations, contracts)
            assert not result.resources, result.resources
            out += [f"{leaf.name} {v.kind} {v.status}" for v in result.verdicts]
    return out


def test_batch_matvec_reads_each_weight_row_once_per_microbatch(ck: CKit, inlined: ir.Program,
                                                                contracts: dict[str, Any]) -> None:
    p = microbatched(inlined)
    r = llm.batch_matvec.apply(p, "transformer_prefill > call matvec#1")
    assert ck.contains(ck.function_text(r.program, "transformer_prefill"), """
        for (int i = 0; i < dim; i++) {
          for (int t = bt; t < (bt + 2 < T ? bt + 2 : T); t++) {
            q_b[t * dim + i] = 0.0f;
            {
              float acc = q_b[t * dim + i];
              for (int j = 0; j < dim; j++) {
                acc += wq[l * dim * dim + (i * dim + j)] * xb_b[t * dim + j];
              }
              q_b[t * dim + i] = acc;""")
    ck.check(inlined, r.program, "transformer_prefill", prefill_args(ck, **SIZES))
    verdicts = leaf_verdicts(p, contracts, lambda: llm.batch_matvec("transformer_prefill > call matvec#1"))
    assert all(v.endswith(" proved") for v in verdicts) and "loop.swap swap_loops proved" in verdicts
    assert "only statement of a loop's body" in refusal(llm.batch_matvec.apply, p,
                                                        "transformer_prefill > call matvec#2")


def test_batch_matvec_on_tokens_that_feed_each_other_is_refuted(ck: CKit) -> None:
    text = (ROOT / "c_sources" / "transformer.c").read_text()
    matvec = text[text.index("/* y[d] = W[d][n] * x[n]"):text.index("/* in-place softmax")]
    p = ck.parse(matvec + """
        void chain(int T, int n, const float *W, float *xs) {
          for (int t = 0; t < T; t++) {
            matvec(n, n, W, &xs[t * n], &xs[(t + 1) * n]);
          }
        }""")
    specs = parse_spec_text(textwrap.dedent("""
        matvec(n, d, W, x, y):
          requires n >= 1, d >= 1
          reads    W ~> Matrix2(d, n), x ~> Matrix1(n)
          writes   y ~> Matrix1(d)
        chain(T, n, W, xs):
          requires T >= 1, n >= 1
          reads    W ~> Matrix2(n, n)
          modifies xs ~> Matrix2(T + 1, n)
        """))
    verdicts = leaf_verdicts(p, specs, lambda: llm.batch_matvec("chain > call matvec"))
    assert "loop.swap swap_loops refuted" in verdicts


def layers_outside(program: ir.Program) -> ir.Program:
    """The prompt loop of `program` inlined, batched, in microbatches of 2
    tokens with the layer loop outside them."""
    p = llm.inline_call.apply(program, "transformer_prefill > call transformer_token").program
    p = batched(p, "xb", "xb2", "q", "k", "v", "hb", "hb2")
    p = llm.batch_buffer.apply(p, "transformer_prefill > for t", "att", "SMAX").program
    p = loop.tile.apply(p, "transformer_prefill > for t", 2, mode="min").program
    return loop.swap.apply(p, "transformer_prefill > for bt > for t").program


def test_the_kv_cache_dependence_lets_the_attention_follow_the_cache_stores(ck: CKit,
                                                                           contracts: dict[str, Any]) -> None:
    """Fission of the layer body of a microbatch between the cache stores
    and the attention: token t reads the cache rows 0..t, which the first
    loop has written by then, and no later token's row. With a lookahead
    bug (token t reading row t + 1) the same step is refuted."""
    p = layers_outside(ck.load("transformer.c"))
    r = loop.fission.apply(p, "transformer_prefill > before for h")
    proved(p, r, contracts)
    ck.check(p, r.program, "transformer_prefill", prefill_args(ck, **SIZES))
    text = (ROOT / "c_sources" / "transformer.c").read_text()
    reading = "k_cache[(l * SMAX + t) * kv_dim + g * head_size + i];"
    assert text.count(reading) == 1
    ahead = layers_outside(ck.parse(text.replace(reading, reading.replace("+ t)", "+ t + 1)")), "transformer.c"))
    bad = loop.fission.apply(ahead, "transformer_prefill > before for h")
    reason = refuted(ahead, bad, contracts)
    assert reason.startswith("fission: ") and "k_cache" in reason
