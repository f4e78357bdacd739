"""matrix.local_buffer, tile_dim, reorder_dims, set_precision on the real kernels."""
from __future__ import annotations

import textwrap

import pytest

from optitrust_py import ir
from optitrust_py.checks import FP_TOLERANCE, run_exec_checks
from optitrust_py.level2 import check_step
from optitrust_py.layout import delinearize
from optitrust_py.printer import expr as expr_text
from optitrust_py.report import badges
from optitrust_py.runner import new_session, run_script
from optitrust_py.session import Session, inherit_contracts
from optitrust_py.spec import parse_formula
from optitrust_py.tree import get
from transformations import loop, matrix
from helpers import attention_args, cuda_session, matmul_args, refusal

FP16_TOL = matrix.LOSSY_FACTOR * 2.0 ** -11


def kinds(rewrite) -> list[str]:
    return [o.kind for o in rewrite.obligations]


def blocked_matmul(ck):
    """matmul with k tiled by 64 and `for bk` outermost: the loop order in
    which GotoBLAS packs a panel of B per bk."""
    p = ck.load("matmul.c")
    p = loop.fission.apply(p, "matmul > for j > after 'C[i * N + j] = 0.0f'").program
    p = loop.swap.apply(p, "matmul > for j#2").program
    p = loop.tile.apply(p, "matmul > for k", 64).program
    p = loop.fission.apply(p, "matmul > for i > after for j#1").program
    return loop.swap.apply(p, "matmul > for i#2").program


def packed_b(ck):
    return matrix.local_buffer.apply(blocked_matmul(ck), "matmul > for bk > for i", "B", shape=["K", "N"])


# ----------------------------------------------------------------- local_buffer


def test_local_buffer_packs_a_panel_of_b(ck):
    p = blocked_matmul(ck)
    r = packed_b(ck)
    assert ck.contains(ck.function_text(r.program, "matmul"), """
          for (int bk = 0; bk < K; bk += 64) {
            float B_local[64][N];
            for (int i0 = 0; i0 < 64; i0++) {
              for (int i1 = 0; i1 < N; i1++) {
                B_local[i0][i1] = B[(bk + i0) * N + i1];
              }
            }
            for (int i = 0; i < M; i++) {
              for (int k = bk; k < bk + 64; k++) {
                for (int j = 0; j < N; j++) {
                  C[i * N + j] += A[i * K + k] * B_local[k - bk][j];
                }
              }
            }
          }
        }""")
    assert kinds(r) == ["in_region", "no_alias", "delinearize"]
    region, alias, delin = r.obligations
    assert [expr_text(e) for e in region.exprs] == ["bk", "0", "64", "N", "K", "N"]
    assert "[bk, bk + 64) x [0, N)" in region.claim
    looped = get(p, region.paths[0])
    assert isinstance(looped, ir.For) and looped.index == "i" and alias.paths == region.paths and region.before
    assert delin.before and [expr_text(e) for e in delin.exprs] == ["K", "N"]
    assert expr_text(get(p, delin.paths[0])) == "B[k * N + j]"
    assert r.fp == "exact"
    ck.check(p, r.program, "matmul", matmul_args(ck, 5, 32, 128))


def test_local_buffer_keeps_a_q_tile_in_attention(ck):
    p = loop.tile.apply(ck.load("attention.c"), "attention > for i", 2).program
    r = matrix.local_buffer.apply(p, "attention > for bi > for i", "q", "q_tile", shape=["H", "S", "D"])
    text = ck.function_text(r.program, "attention")
    assert ck.contains(text, """
            float q_tile[2][D];
            for (int i0 = 0; i0 < 2; i0++) {
              for (int i1 = 0; i1 < D; i1++) {
                q_tile[i0][i1] = q[(h * S + (bi + i0)) * D + i1];
              }
            }
            for (int i = bi; i < bi + 2; i++) {""")
    assert "s += q_tile[i - bi][d] * k[(h * S + j) * D + d];" in text
    assert text.count("q[") == 1  # read only: no copy back
    given = matrix.local_buffer.apply(p, "attention > for bi > for i", "q", "q_tile", shape=["H", "S", "D"],
                                      region=["h:1", "bi:2", "0:D"])
    assert given.program == r.program
    ck.check(p, r.program, "attention", attention_args(ck, 2, 8, 4))


def test_local_buffer_copies_back_what_the_loop_writes(ck):
    p = loop.tile.apply(ck.load("attention.c"), "attention > for i", 2).program
    r = matrix.local_buffer.apply(p, "attention > for bi > for i", "out", shape=["H", "S", "D"])
    text = ck.function_text(r.program, "attention")
    assert ck.contains(text, """
              }
            }
            for (int i0 = 0; i0 < 2; i0++) {
              for (int i1 = 0; i1 < D; i1++) {
                out[(h * S + (bi + i0)) * D + i1] = out_local[i0][i1];
              }
            }
          }""")
    assert "out_local[i - bi][d] += scores[j] * v[(h * S + j) * D + d];" in text
    assert "covers" not in kinds(r)  # it reads too (+=): copied in, nothing to cover
    ck.check(p, r.program, "attention", attention_args(ck, 2, 8, 4))


def test_local_buffer_of_a_loop_that_only_writes(ck):
    p = ck.load("attention.c")
    r = matrix.local_buffer.apply(p, "attention > for d#2", "out", shape=["H", "S", "D"])
    assert ck.contains(ck.function_text(r.program, "attention"), """
          float out_local[D];
          for (int d = 0; d < D; d++) {
            out_local[d] = 0.0f;
          }
          for (int i0 = 0; i0 < D; i0++) {
            out[(h * S + i) * D + i0] = out_local[i0];
          }""")
    assert kinds(r) == ["in_region", "no_alias", "covers", "delinearize"]
    ck.check(p, r.program, "attention", attention_args(ck, 2, 8, 4))


@pytest.mark.parametrize("index, shape, split", [
    ("(h * S + i) * D + d", ["H", "S", "D"], ["h", "i", "d"]),
    ("h * S * D + i * D + d", ["H", "S", "D"], ["h", "i", "d"]),
    ("d + D * (i + S * h)", ["H", "S", "D"], ["h", "i", "d"]),
    ("(g * SMAX + t - 1) * D", ["G", "SMAX", "D"], ["g", "t - 1", "0"]),
    ("0", ["M", "N"], ["0", "0"]),
    ("j", ["K", "N"], None),
    ("(h * S + i) * D + d", ["H", "D", "S"], None),
])
def test_delinearize_forms(index, shape, split):
    got = delinearize(parse_formula(index), tuple(parse_formula(d) for d in shape))
    assert (None if got is None else [expr_text(e) for e in got]) == split


def test_local_buffer_refusals(ck):
    p = blocked_matmul(ck)
    lb = matrix.local_buffer.apply
    assert "'B[k * N + j]' (line 11) does not delinearise for the shape (N, K)" in \
        refusal(lb, p, "matmul > for bk > for i", "B", shape=["N", "K"])
    assert "'B' is a pointer: give the shape" in refusal(lb, p, "matmul > for bk > for i", "B")
    assert "region must be a list of 2" in refusal(lb, p, "matmul > for bk > for i", "B", shape=["K", "N"],
                                                   region=["bk:64"])
    assert "the region bound 'k' varies inside the loop" in \
        refusal(lb, p, "matmul > for bk > for i", "B", shape=["K", "N"], region=["k:1", "0:N"])
    assert "the buffer name 'A' is already used" in refusal(lb, p, "matmul > for bk > for i", "B", "A",
                                                            shape=["K", "N"])
    assert "for j (line 3) does not access 'B'" in refusal(lb, p, "matmul > for j#1", "B", shape=["K", "N"])
    assert "touches a single element of 'A'" in refusal(lb, p, "matmul > for j#2", "A", shape=["M", "K"])
    t = ck.load("transformer.c")
    msg = refusal(lb, t, "transformer_token > for l", "xb", shape=["dim"])
    assert "'xb' is passed to a call in 'rmsnorm_vec(dim, x, &rms_att_w[l * dim], xb)'" in msg
    msg = refusal(lb, ck.load("moe.c"), "moe > for s#1", "logits", shape=["E"])
    assert "cannot infer the region of 'logits'" in msg and "'logits[best]'" in msg


# ----------------------------------------------------------------- drop_overwritten


@pytest.fixture(scope="module")
def gqa_bf16() -> Session:
    """gqa_decode.py's bf16 CUDA ending, run at level 1."""
    return cuda_session("gqa_decode.py", "bf16")


GQA_ARGS = (8, 2, 128, 80, 70)  # H, KVH, D, SMAX, pos: a last, shorter chunk of 7 positions


def gqa_args(ck):
    return [*GQA_ARGS, ck.floats(8 * 128), ck.floats(2 * 128), ck.floats(2 * 128), ck.floats(2 * 80 * 128),
            ck.floats(2 * 80 * 128), ck.floats(8 * 128)]


def test_drop_overwritten_removes_the_copy_in_of_a_tile_that_its_first_user_writes_whole(ck, gqa_bf16):
    """gqa_decode.py's bf16 CUDA ending: the chunk's scores are staged in a
    tile that the scores' loop writes whole before anything reads it, so
    the copy in goes (covers, proved at level 2) and the outputs stay."""
    session = gqa_bf16
    step = next(s for s in session.steps if s.name == "matrix.drop_overwritten")
    copy_in = "sc[i0][i1] = scores[(4 * g + i0) * (pos + 1) + (64 * bt + i1)];"
    assert copy_in in ck.function_text(step.before, "gqa_decode")
    assert copy_in not in ck.function_text(step.after, "gqa_decode")
    assert [o.kind for o in step.obligations] == ["covers"]
    result = check_step(step.before, step.after, step.obligations, session.contracts)
    assert result.ok and not result.problems
    ck.same_outputs(step.before, step.after, "gqa_decode", gqa_args(ck))


def test_drop_overwritten_refuses_a_copy_whose_values_are_read(ck):
    """attention.c with a 2-row tile of out: the loop that follows the copy
    in accumulates into the tile (+=), so the copy's values are read."""
    p = loop.tile.apply(ck.load("attention.c"), "attention > for i", 2).program
    p = matrix.local_buffer.apply(p, "attention > for bi > for i", "out", shape=["H", "S", "D"]).program
    msg = refusal(matrix.drop_overwritten.apply, p, "attention > for bi > for i0#1")
    assert "the statement at line 14, the next to name 'out_local', updates it" in msg
    assert "is not a nest of loops around one store" in refusal(matrix.drop_overwritten.apply, p,
                                                                "attention > for bi > for i")
    assert "'out' is not a C array declared in attention" in refusal(matrix.drop_overwritten.apply, p,
                                                                    "attention > for bi > for i0#2")


# ----------------------------------------------------------------- drop_dead_store


def test_drop_dead_store_removes_a_copy_out_nothing_reads(ck, gqa_bf16):
    """gqa_decode.py's bf16 ending: the chunk's scores are no longer copied
    back to the scratch buffer `scores`, which only the last, shorter
    chunk's kernel reads after, at other cells (commute, proved at level
    2 on the program before; the outputs stay, the last chunk included)."""
    step = next(s for s in gqa_bf16.steps if s.name == "matrix.drop_dead_store")
    copy_out = "scores[(4 * g + i0) * (pos + 1) + (64 * bt + i1)] = sc[i0][i1];"
    assert copy_out in ck.function_text(step.before, "gqa_decode")
    assert copy_out not in ck.function_text(step.after, "gqa_decode")
    assert [o.kind for o in step.obligations] == ["commute"] and step.obligations[0].before
    result = check_step(step.before, step.after, step.obligations, gqa_bf16.contracts)
    assert result.ok and not result.problems
    ck.same_outputs(step.before, step.after, "gqa_decode", gqa_args(ck))


def test_drop_dead_store_refutes_a_store_read_later_and_refuses(ck, gqa_bf16):
    """The chunks' partial outputs, copied out of registers to the scratch
    buffer out_parts_b, are read by the combination after: level 2 refutes
    dropping that copy. Refused on attention.c: a store into a parameter,
    into a buffer the loops around it read, and not a store nest."""
    program = gqa_bf16.program
    r = matrix.drop_dead_store.apply(program, "gqa_decode > for g#2 > for bt > for d#2 > for i0#2")
    assert "out_parts_b[" not in ck.function_text(r.program, "gqa_decode").split("for (int g = 0")[1].split(
        "for (int g = 0")[0]
    # refuted with a witness, here; the full suite once got Z3's "unknown" on these non-linear flat indices
    # (its work limit: Z3's search depends on the terms earlier tests built), which fails the step all the same;
    # asking it again in a fresh Z3 context did not decide it in the full suite either (tenth session): the
    # query's own terms depend on what was checked before it (C quotients are cached across checks)
    result = check_step(program, r.program, r.obligations, inherit_contracts(gqa_bf16.contracts, r))
    (failed,) = [v for v in result.verdicts if v.status != "proved"]
    assert failed.kind == "commute" and failed.status in ("refuted", "unknown") and not result.ok, result.problems
    assert "out_parts_b" in failed.reason and (failed.status == "refuted" or "work limit" in failed.reason)
    p = ck.load("attention.c")
    assert "'out' is not a buffer that attention allocates (malloc, calloc) before" in refusal(
        matrix.drop_dead_store.apply, p, "attention > for h > for i > for d#2")
    assert "the loops around for j (line 26) name 'scores' elsewhere" in refusal(
        matrix.drop_dead_store.apply, p, "attention > for h > for i > for j#4")
    assert "is not a nest of loops around one store" in refusal(matrix.drop_dead_store.apply, p,
                                                                "attention > for h > for i > for j#1")


def test_drop_dead_store_refuses_a_buffer_whose_pointer_escapes(ck):
    """A buffer passed to a call may be read through the callee's name."""
    src = ck.parse(textwrap.dedent("""
        #include <stdlib.h>
        void keep(float *p);
        void f(int n, float *out) {
          float *buf = malloc(n * sizeof(float));
          for (int i = 0; i < n; i++) {
            buf[i] = 1.0f;
          }
          keep(buf);
          for (int i = 0; i < n; i++) {
            out[i] = 2.0f;
          }
          free(buf);
        }"""), "f.c")
    assert "'buf' is used other than as buf[...] in f" in refusal(matrix.drop_dead_store.apply, src, "f > for i#1")


# ----------------------------------------------------------------- tile_dim


def test_tile_dim_of_a_packed_panel(ck):
    p = packed_b(ck).program
    r = matrix.tile_dim.apply(p, "matmul > def B_local", 1, 16)
    text = ck.function_text(r.program, "matmul")
    assert ck.contains(text, """
            float B_local[64][N / 16][16];
            for (int i0 = 0; i0 < 64; i0++) {
              for (int i1 = 0; i1 < N; i1++) {
                B_local[i0][i1 / 16][i1 % 16] = B[(bk + i0) * N + i1];""")
    assert "C[i * N + j] += A[i * K + k] * B_local[k - bk][j / 16][j % 16];" in text
    (ob,) = r.obligations
    assert ob.kind == "divides" and [expr_text(e) for e in ob.exprs] == ["16", "N"]
    assert isinstance(get(r.program, ob.paths[0]), ir.DeclStmt)
    ck.check(p, r.program, "matmul", matmul_args(ck, 5, 32, 128))
    folded = matrix.tile_dim.apply(p, "matmul > def B_local", 0, "16")
    assert "float B_local[4][16][N];" in ck.function_text(folded.program, "matmul") and folded.obligations == ()
    ck.check(p, folded.program, "matmul", matmul_args(ck, 5, 32, 128))


def test_tile_dim_of_a_flat_scratch_buffer(ck):
    p = ck.load("attention.c")
    r = matrix.tile_dim.apply(p, "attention > def scores", 0, 4, shape=["S"])
    text = ck.function_text(r.program, "attention")
    assert "float *scores = malloc(S * sizeof(float));" in text
    assert "scores[j / 4 * 4 + j % 4] = s / sqrtf(D);" in text
    assert kinds(r) == ["divides", "delinearize"]
    ck.check(p, r.program, "attention", attention_args(ck, 2, 8, 4))


def test_tile_dim_refusals(ck):
    p = packed_b(ck).program
    td = matrix.tile_dim.apply
    assert "48 does not divide dimension 0 of 'B_local' (64)" in refusal(td, p, "matmul > def B_local", 0, 48)
    assert "dim must be in 0..1, got 2" in refusal(td, p, "matmul > def B_local", 2, 16)
    assert "the tile size must be positive" in refusal(td, p, "matmul > def B_local", 1, 0)
    assert "do not give shape=" in refusal(td, p, "matmul > def B_local", 1, 16, shape=["64", "N"])
    assert "'B' is a parameter of matmul: its layout is its caller's" in \
        refusal(td, p, "matmul > def B", 1, 16, shape=["K", "N"])
    msg = refusal(td, ck.load("transformer.c"), "transformer_token > def xb", 0, 16, shape=["dim"])
    assert "'xb' is passed to a call" in msg and "(line 55)" in msg
    for use, why in (("float *p = &t[i][1];", "has its address taken in '&t[i][1]'"),
                     ("float *p = t[i];", "is indexed with fewer than its 2 dimensions in 't[i]'"),
                     ("float *p = y + sizeof(t[i][0]);", "is measured in 'sizeof(t[i][0])'")):
        odd = ck.parse(f"void f(float *y) {{ float t[8][8]; for (int i = 0; i < 8; i++) {{ t[i][0] = y[i]; {use} }} }}")
        assert why in refusal(td, odd, "f > def t", 1, 4)


# ----------------------------------------------------------------- reorder_dims


def test_gotoblas_packing_of_b(ck):
    """local_buffer + tile_dim + reorder_dims: B's panel packed as
    [N / 16][64][16], 16-wide column strips each contiguous over k."""
    p = blocked_matmul(ck)
    tiled = matrix.tile_dim.apply(packed_b(ck).program, "matmul > def B_local", 1, 16).program
    r = matrix.reorder_dims.apply(tiled, "matmul > def B_local", [1, 0, 2])
    assert ck.contains(ck.function_text(r.program, "matmul"), """
          for (int bk = 0; bk < K; bk += 64) {
            float B_local[N / 16][64][16];
            for (int i0 = 0; i0 < 64; i0++) {
              for (int i1 = 0; i1 < N; i1++) {
                B_local[i1 / 16][i0][i1 % 16] = B[(bk + i0) * N + i1];
              }
            }
            for (int i = 0; i < M; i++) {
              for (int k = bk; k < bk + 64; k++) {
                for (int j = 0; j < N; j++) {
                  C[i * N + j] += A[i * K + k] * B_local[j / 16][k - bk][j % 16];""")
    assert r.obligations == () and r.fp == "exact"
    ck.check(p, r.program, "matmul", matmul_args(ck, 5, 32, 128))


def test_reorder_dims_of_a_flat_scratch_buffer(ck):
    p = ck.load("attention.c")
    tiled = matrix.tile_dim.apply(p, "attention > def scores", 0, 4, shape=["S"]).program
    r = matrix.reorder_dims.apply(tiled, "attention > def scores", [1, 0], shape=["S / 4", "4"])
    text = ck.function_text(r.program, "attention")
    assert "scores[j % 4 * (S / 4) + j / 4] = expf(scores[j % 4 * (S / 4) + j / 4] - max_val);" in text
    (ob,) = r.obligations
    assert ob.kind == "delinearize" and ob.before and [expr_text(e) for e in ob.exprs] == ["S / 4", "4"]
    assert "(j / 4, j % 4)" in ob.claim
    ck.check(p, r.program, "attention", attention_args(ck, 2, 8, 4))


def test_reorder_dims_refusals(ck):
    p = packed_b(ck).program
    rd = matrix.reorder_dims.apply
    assert "order must be a permutation of 0..1" in refusal(rd, p, "matmul > def B_local", [0, 0])
    assert "must be an integer" in refusal(rd, p, "matmul > def B_local", ["1", "0"])
    assert "'B' is a parameter of matmul" in refusal(rd, p, "matmul > def B", [1, 0], shape=["K", "N"])
    a = ck.load("attention.c")
    assert "'scores[j]' (line 13) does not delinearise for the shape (S / 4, 4)" in \
        refusal(rd, a, "attention > def scores", [1, 0], shape=["S / 4", "4"])


# ----------------------------------------------------------------- set_precision


def test_set_precision_of_attention_scores(ck):
    p = ck.load("attention.c")
    r = matrix.set_precision.apply(p, "attention > def scores", "_Float16")
    text = ck.function_text(r.program, "attention")
    assert "_Float16 *scores = malloc(S * sizeof(_Float16));" in text
    assert ck.contains(text, """
          for (int j = 0; j <= i; j++) {
            scores[j] = expf((float)scores[j] - max_val);
            sum += (float)scores[j];
          }""")
    assert r.fp == "lossy" and r.tolerance == FP16_TOL
    (ob,) = r.obligations
    assert ob.kind == "in_type_range" and isinstance(get(r.program, ob.paths[0]), ir.DeclStmt)
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    assert ck.close_outputs(p, r.program, "attention", attention_args(ck, 2, 8, 4), r.tolerance, floor=1.0) > 0  # values change


def test_set_precision_of_a_packed_panel(ck):
    p = blocked_matmul(ck)
    tiled = matrix.tile_dim.apply(packed_b(ck).program, "matmul > def B_local", 1, 16).program
    packed = matrix.reorder_dims.apply(tiled, "matmul > def B_local", [1, 0, 2]).program
    r = matrix.set_precision.apply(packed, "matmul > def B_local", "_Float16", tolerance=0.02)
    text = ck.function_text(r.program, "matmul")
    assert "_Float16 B_local[N / 16][64][16];" in text
    assert "B_local[i1 / 16][i0][i1 % 16] = B[(bk + i0) * N + i1];" in text  # a store: converts on assignment
    assert "C[i * N + j] += A[i * K + k] * (float)B_local[j / 16][k - bk][j % 16];" in text
    assert r.tolerance == 0.02
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    assert ck.close_outputs(p, r.program, "matmul", matmul_args(ck, 5, 32, 128), r.tolerance, floor=1.0) > 0


def test_set_precision_refusals(ck):
    a = ck.load("attention.c")
    sp = matrix.set_precision.apply
    assert "unknown floating type 'half'" in refusal(sp, a, "attention > def scores", "half")
    assert "'scores' holds float, which double does not narrow" in refusal(sp, a, "attention > def scores", "double")
    assert "tolerance must be a positive number" in refusal(sp, a, "attention > def scores", "_Float16", tolerance=0)
    assert "'q' is a parameter of attention" in refusal(sp, a, "attention > def q", "_Float16")
    odd = ck.parse(textwrap.dedent("""
        #include <stdlib.h>
        void f(int n, float *y) {
          float *t = malloc(n * 4);
          for (int i = 0; i < n; i++) {
            t[i] = y[i];
            y[i] = t[i];
          }
          free(t);
        }"""))
    assert "the allocation of 't' does not say sizeof(float)" in refusal(sp, odd, "f > def t", "_Float16")


def test_exec_check_allows_and_reports_a_lossy_step(tmp_path, ck):
    """`otp run --exec` checks a lossy step with its declared tolerance and
    shows it as lossy; a tolerance too small for fp16 storage fails."""
    results = []
    for tol in ("None", "1e-7"):
        script = tmp_path / f"fp16_{len(results)}.py"
        script.write_text(textwrap.dedent(f"""
            from optitrust_py.script import load
            from transformations import matrix
            load({str(ck.load('attention.c').file)!r}, sizes={{"H": 2, "S": 8, "D": 4}})
            matrix.set_precision("attention > def scores", "_Float16", tolerance={tol})
            """))
        session = new_session(script)
        assert run_script(session, script) is None
        run_exec_checks(session)
        (step,) = session.steps
        results.append((step, step.checks["exec"]))
    (lossy, ok), (_, too_tight) = results
    assert ok.ok and ok.tolerance == FP16_TOL and "max rel err" in ok.short()
    assert "lossy (rel tol 0.0039)" in badges(lossy).plain and "≈fp" not in badges(lossy).plain
    assert not too_tight.ok and too_tight.tolerance == FP_TOLERANCE  # the larger of 1e-7 and FP_TOLERANCE
