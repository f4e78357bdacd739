"""GQA head grouping (transformations/llm.py): llm.tile_groups,
llm.expand_buffer and the llm.group_heads composite on c_sources/gqa_decode.c,
their refusals, what level 2 proves and refutes, and --exec agreement."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

from helpers import refusal, refuted

from optitrust_py import ir
from optitrust_py.level2 import check_step
from optitrust_py.session import Rewrite
from optitrust_py.spec import parse_spec_file, parse_spec_text
from transformations import function, llm, loop, matrix, variable

ROOT = Path(__file__).resolve().parent.parent
SPEC = parse_spec_file(ROOT / "specs" / "gqa_decode.spec")


def c(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


def gqa_args(ck: Any, H: int, KVH: int, D: int, SMAX: int, pos: int) -> list[Any]:
    return [H, KVH, D, SMAX, pos, ck.floats(H * D), ck.floats(KVH * D), ck.floats(KVH * D),
            ck.floats(KVH * SMAX * D), ck.floats(KVH * SMAX * D), ck.floats(H * D)]


def statuses(before: ir.Program, rewrite: Rewrite, contracts: Any = SPEC) -> list[tuple[str, str]]:
    result = check_step(before, rewrite.program, rewrite.obligations, contracts)
    assert not result.problems, result.problems
    return [(v.kind, v.status) for v in result.verdicts]


def with_group_size(ck: Any) -> ir.Program:
    """gqa_decode.c with `int G = H / KVH;` named before the head loop."""
    p = ck.load("gqa_decode.c")
    p = variable.bind.apply(p, "gqa_decode > expr 'H / KVH'", "G").program
    return loop.move_out.apply(p, "gqa_decode > for h > def G").program


# ----------------------------------------------------------------- tile_groups


def test_tile_groups_makes_the_kv_head_a_loop_index(ck):
    p = with_group_size(ck)
    r = llm.tile_groups.apply(p, "gqa_decode > for h", "G", "kv", "r")
    text = ck.function_text(r.program, "gqa_decode")
    assert ck.contains(text, """
        for (int kv = 0; kv < H / G; kv++) {
          for (int r = 0; r < G; r++) {
            int g = (kv * G + r) / G;""")
    assert "q[(kv * G + r) * D + d]" in text
    assert [o.kind for o in r.obligations] == ["divides"]
    assert statuses(p, r) == [("divides", "proved")]
    ck.check(p, r.program, "gqa_decode", gqa_args(ck, 8, 2, 5, 9, 6))


def test_tile_groups_by_a_size_that_may_not_divide_is_refuted_and_wrong(ck):
    p = ck.load("gqa_decode.c")
    r = llm.tile_groups.apply(p, "gqa_decode > for h", "D")
    assert "h_g" in ck.function_text(r.program, "gqa_decode")
    reason = refuted(p, r, SPEC)
    assert re.match(r"divides: line \d+: D = \d+ does not divide H = \d+ \(e\.g\. D=", reason), reason
    args = gqa_args(ck, 8, 2, 3, 9, 6)  # 3 does not divide 8: heads 6 and 7 are never computed
    assert ck.run(p, "gqa_decode", args) != ck.run(r.program, "gqa_decode", args)


def test_tile_groups_refusals(ck):
    p = with_group_size(ck)
    assert refusal(llm.tile_groups.apply, p, "gqa_decode > for h", 0) == (
        "llm.tile_groups: the group size must be positive, got '0'")
    assert refusal(llm.tile_groups.apply, p, "gqa_decode > for h", "-4") == (
        "llm.tile_groups: the group size must be positive, got '-4'")
    assert refusal(llm.tile_groups.apply, p, "gqa_decode > for h", "h + 1") == (
        "llm.tile_groups: the group size 'h + 1' uses the index of for h (line 13)")
    assert refusal(llm.tile_groups.apply, p, "gqa_decode > for h", "G", "r", "r") == (
        "llm.tile_groups: the group and member indices must differ, both are 'r'")
    assert refusal(llm.tile_groups.apply, p, "gqa_decode > for h", "G", "pos") == (
        "llm.tile_groups: the group index name 'pos' is already used in gqa_decode")
    assert refusal(llm.tile_groups.apply, p, "gqa_decode > for h", 2.5) == (
        "llm.tile_groups: the group size must be an integer or a C expression, got 2.5")
    stepped = ck.parse("void f(float *x) { for (int i = 0; i < 8; i += 2) { x[i] = 0.0f; } }")
    assert refusal(llm.tile_groups.apply, stepped, "f > for i", 2) == (
        "llm.tile_groups: for i (line 2) has step '2'; only unit-step loops can be tiled")


# ----------------------------------------------------------------- expand_buffer


def grouped(ck: Any) -> ir.Program:
    """The head loop tiled by G, with the kv-head local inlined."""
    p = llm.tile_groups.apply(with_group_size(ck), "gqa_decode > for h", "G", "kv", "r").program
    return variable.inline.apply(p, "gqa_decode > for kv > def g").program


def test_expand_buffer_gives_each_head_of_a_group_its_row(ck):
    p = grouped(ck)
    r = llm.expand_buffer.apply(p, "gqa_decode > for kv > for r", "scores", "pos + 1")
    text = ck.function_text(r.program, "gqa_decode")
    assert ck.contains(text, """
        for (int kv = 0; kv < H / G; kv++) {
          float *scores = malloc(G * (pos + 1) * sizeof(float));
          for (int r = 0; r < G; r++) {""")
    assert "scores[r * (pos + 1) + t] = s / sqrtf(D);" in text
    assert ck.contains(text, """
            }
          }
          free(scores);
        }
      }""")
    assert statuses(p, r) == [("in_region", "proved"), ("covers", "proved")]
    ck.check(p, r.program, "gqa_decode", gqa_args(ck, 8, 2, 5, 9, 6))


def test_expand_buffer_with_too_short_rows_is_refuted(ck):
    """Rows of pos cells for pos + 1 positions overlap, and the last one
    ends past the allocation: a heap overflow that outputs need not show."""
    p = grouped(ck)
    r = llm.expand_buffer.apply(p, "gqa_decode > for kv > for r", "scores", "pos")
    reason = refuted(p, r, SPEC)
    assert reason.startswith("in_region: ") and "scores" in reason


SCRATCH_C = """
    #include <stdlib.h>
    void f(int n, int m, const float *x, float *y) {
      float *tmp = malloc(n * sizeof(float));
      for (int i = 0; i < m; i++) {
        for (int t = 1; t < n; t++) {
          tmp[t] = x[i * n + t];
        }
        float s = 0.0f;
        for (int t = 0; t < n; t++) {
          s += tmp[t];
        }
        y[i] = s;
      }
      free(tmp);
    }
"""
SCRATCH_SPEC = parse_spec_text("f(n, m, x, y):\n  requires n >= 2, m >= 1\n  reads x ~> Matrix2(m, n)\n"
                               "  writes y ~> Matrix1(m)\n")


def test_expand_buffer_whose_first_loop_misses_a_cell_is_refuted(ck):
    """tmp[0] is never written: every iteration reads the same stale cell,
    which after the expansion is a different uninitialised cell per row."""
    p = ck.parse(c(SCRATCH_C))
    r = llm.expand_buffer.apply(p, "f > for i", "tmp", "n")
    reason = refuted(p, r, SCRATCH_SPEC)
    assert reason.startswith("covers: ") and "never writes tmp[0]" in reason


def test_expand_buffer_refusals(ck):
    p = grouped(ck)
    assert refusal(llm.expand_buffer.apply, p, "gqa_decode > for kv > for r", "q", "D") == (
        "llm.expand_buffer: 'q' is a parameter of gqa_decode: its layout is its caller's; change the layout of "
        "a local copy instead (matrix.local_buffer)")
    assert refusal(llm.expand_buffer.apply, p, "gqa_decode > for kv > for r > for d#2", "scores", "pos + 1") == (
        "llm.expand_buffer: 'scores' is used outside for d (line 36), at line 20")
    reading = ck.parse(c(SCRATCH_C.replace("tmp[t] = x[i * n + t];", "tmp[t] += x[i * n + t];")))
    assert "is not a loop that only writes it" in refusal(llm.expand_buffer.apply, reading, "f > for i", "tmp", "n")
    unused = ck.parse(c("""
        #include <stdlib.h>
        void f(int n, float *y) {
          float *tmp = malloc(n * sizeof(float));
          for (int i = 0; i < n; i++) {
            for (int t = 0; t < n; t++) {
              y[t] = 0.0f;
            }
            free(tmp);
          }
          free(tmp);
        }"""))
    assert refusal(llm.expand_buffer.apply, unused, "f > for i > for t", "tmp", "n") == (
        "llm.expand_buffer: the body of for t (line 6) does not use 'tmp'")
    used_after = ck.parse(c(SCRATCH_C.replace("  free(tmp);", "  y[0] = tmp[0];\n  free(tmp);")))
    assert refusal(llm.expand_buffer.apply, used_after, "f > for i", "tmp", "n") == (
        "llm.expand_buffer: 'tmp' must be used only by its declaration, for i (line 5) and a 'free(tmp);' after "
        "it in the same block")
    assert refusal(llm.expand_buffer.apply, p, "gqa_decode > for kv > for r", "scores", "r") == (
        "llm.expand_buffer: the row size 'r' uses the index of for r (line 14)")


# ----------------------------------------------------------------- group_heads


def test_group_heads_puts_the_heads_of_a_group_inside_the_position_loops(ck):
    p = with_group_size(ck)
    r = llm.group_heads.apply(p, "gqa_decode > for h", "G", "scores", "pos + 1")
    text = ck.function_text(r.program, "gqa_decode")
    assert ck.contains(text, """
        for (int g = 0; g < H / G; g++) {
          float *scores = malloc(G * (pos + 1) * sizeof(float));
          for (int t = 0; t <= pos; t++) {
            for (int r = 0; r < G; r++) {
              float s = 0.0f;
              for (int d = 0; d < D; d++) {
                s += q[(g * G + r) * D + d] * k_cache[(g * SMAX + t) * D + d];
              }
              scores[r * (pos + 1) + t] = s / sqrtf(D);
            }
          }
          for (int r = 0; r < G; r++) {
            float max_val = -INFINITY;""")
    assert ck.contains(text, """
          for (int t = 0; t <= pos; t++) {
            for (int r = 0; r < G; r++) {
              for (int d = 0; d < D; d++) {
                out[(g * G + r) * D + d] += scores[r * (pos + 1) + t] * v_cache[(g * SMAX + t) * D + d];""")
    assert sorted(o.kind for o in r.obligations) == ["covers", "divides", "fission", "fission", "in_region",
                                                      "swap_loops", "swap_loops"]
    assert r.fp == "exact"  # every output cell is summed in the same order
    ck.check(p, r.program, "gqa_decode", gqa_args(ck, 8, 2, 5, 9, 6))
    ck.check(p, r.program, "gqa_decode", gqa_args(ck, 6, 3, 16, 4, 3))


def test_group_heads_refusals(ck):
    p = with_group_size(ck)
    assert refusal(llm.group_heads.apply, p, "gqa_decode > for g", "G", "scores", "pos + 1") == (
        "llm.group_heads: the body of for g (line 5) does not start with the kv head of the query head, "
        "'int g = g / G;'")
    assert refusal(llm.group_heads.apply, p, "gqa_decode > for h", "KVH", "scores", "pos + 1") == (
        "llm.group_heads: the body of for h (line 13) does not start with the kv head of the query head, "
        "'int g = h / KVH;'")


def transformer_args(ck: Any, L: int, dim: int, hidden: int, H: int, KVH: int, SMAX: int, pos: int) -> list[Any]:
    kv = dim * KVH // H
    return [L, dim, hidden, H, KVH, SMAX, pos, ck.floats(L * dim), ck.floats(L * dim * dim), ck.floats(L * kv * dim),
            ck.floats(L * kv * dim), ck.floats(L * dim * dim), ck.floats(L * dim), ck.floats(L * hidden * dim),
            ck.floats(L * dim * hidden), ck.floats(L * hidden * dim), ck.floats(dim), ck.floats(L * SMAX * kv),
            ck.floats(L * SMAX * kv)]


def test_group_heads_in_the_transformer_token(ck):
    """The same composite on transformer.c's decode step, once softmax_vec
    is inlined and its pointer parameter replaced by the buffer."""
    p = ck.load("transformer.c")
    q = function.inline.apply(p, "transformer_token > call softmax_vec").program
    q = variable.inline.apply(q, "transformer_token > def x_1").program
    r = llm.group_heads.apply(q, "transformer_token > for l > for h", "kv_mul", "att", "pos + 1")
    text = ck.function_text(r.program, "transformer_token")
    assert ck.contains(text, """
        for (int g = 0; g < H / kv_mul; g++) {
          float *att = malloc(kv_mul * (pos + 1) * sizeof(float));
          for (int t = 0; t <= pos; t++) {
            for (int r = 0; r < kv_mul; r++) {""")
    ck.check(p, r.program, "transformer_token", transformer_args(ck, 2, 16, 24, 4, 2, 8, 5))
    ck.check(p, r.program, "transformer_token", transformer_args(ck, 1, 24, 8, 6, 2, 4, 3))


# ----------------------------------------------------------------- local_buffer's init


def test_local_buffer_absorbs_the_zeroing_before_a_sum(ck):
    """The weighted sum of V works on a buffer of the head's output row that
    starts at zero: the zeroing loop before it goes, the copy in with it."""
    p = ck.load("gqa_decode.c")
    r = matrix.local_buffer.apply(p, "gqa_decode > for h > for t#5", "out", "o", ["H", "D"], ["h:1", "0:D"],
                                  init=True)
    text = ck.function_text(r.program, "gqa_decode")
    assert ck.contains(text, """
            float o[D];
            for (int i0 = 0; i0 < D; i0++) {
              o[i0] = 0.0f;
            }
            for (int t = 0; t <= pos; t++) {""")
    assert "out[h * D + d] = 0.0f;" not in text and "o[i0] = out[" not in text
    assert "out[h * D + i0] = o[i0];" in text
    assert statuses(p, r) == [("in_region", "proved"), ("no_alias", "proved"), ("in_region", "proved"),
                              ("covers", "proved"), ("delinearize", "proved")]
    ck.check(p, r.program, "gqa_decode", gqa_args(ck, 8, 2, 5, 9, 6))


def test_local_buffer_init_that_misses_a_cell_is_refuted_and_wrong(ck):
    """A zeroing that stops one cell short leaves out[h][D - 1] summing onto
    its old value; the buffer would start that cell at zero."""
    src = (ROOT / "c_sources" / "gqa_decode.c").read_text().replace(
        "for (int d = 0; d < D; d++) {\n      out[h * D + d] = 0.0f;",
        "for (int d = 0; d < D - 1; d++) {\n      out[h * D + d] = 0.0f;")
    p = ck.parse(src, "gqa_decode.c")
    r = matrix.local_buffer.apply(p, "gqa_decode > for h > for t#5", "out", "o", ["H", "D"], ["h:1", "0:D"],
                                  init=True)
    reason = refuted(p, r, SPEC)
    assert reason.startswith("covers: ") and "out" in reason, reason
    args = gqa_args(ck, 8, 2, 5, 9, 6)
    assert ck.run(p, "gqa_decode", args) != ck.run(r.program, "gqa_decode", args)


def test_local_buffer_init_refusals(ck):
    p = ck.load("gqa_decode.c")
    assert refusal(matrix.local_buffer.apply, p, "gqa_decode > for h > for t#4", "scores", "sc", ["pos + 1"], None,
                   init=True) == ("matrix.local_buffer: with init, the statement before for t (line 32) must be a "
                                  "nest of loops storing a constant into 'scores'")
