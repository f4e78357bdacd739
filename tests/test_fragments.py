"""gpu.lane_order, gpu.fragment_layout and gpu.warp_rows' mma form on
attention.py's bf16 ending: the output tile kept in its lanes' registers
across the key blocks (the rescaling and the tile's copies reordered to
the lanes' cells, then the tile stored as the lanes hold it), the softmax
run by the lanes that hold the scores, which then stay in registers;
structure, level 2, CPU outputs and refusals."""
from __future__ import annotations

import re

import pytest

from optitrust_py.cuda_emit import to_cuda
from optitrust_py.frontend import parse_text
from optitrust_py.level2 import check_step
from optitrust_py.printer import to_c
from optitrust_py.session import Session, Step
from helpers import attention_args, cuda_session, refusal
from transformations import gpu, loop

BLOCKS = "attention > for h#1 > for bi > for bj"
LANES = f"{BLOCKS} > for lane64_pv_t"


@pytest.fixture(scope="module")
def attention_bf16() -> Session:
    """attention.py's bf16 CUDA ending, run at level 1."""
    return cuda_session("attention.py", "bf16")


def steps(session: Session, name: str) -> list[Step]:
    return [s for s in session.steps if s.name == name]


def proved(session: Session, step: Step) -> None:
    result = check_step(step.before, step.after, step.obligations, session.contracts)
    assert result.ok and not result.problems, result.problems


def test_lane_order_reorders_the_rescaling_of_the_output_rows(ck, attention_bf16):
    """The online softmax's rescaling of D = 64's output rows, split off
    the softmax, runs in the order of P V's lane loop: each thread scales
    the cells it accumulates (parallel on both loops, proved at level 2;
    the same outputs on the CPU, the reordered nest being independent)."""
    orders = steps(attention_bf16, "gpu.lane_order")
    assert [s.args[0] for s in orders] == [f"'attention > for h#{h} > for bi > for {x}'" for h, d in ((1, 64), (3, 128))
                                           for x in (f"o{d}_1#1", f"ob{d}_0", "bj > for i#3", "bj > for i#1")]
    step = orders[2]
    assert "o64[i - bi][d] = o64[i - bi][d] * rs64[i - bi];" in ck.function_text(step.before, "attention")
    assert ck.contains(ck.function_text(step.after, "attention"), """
        #pragma otp gpu thread x
        for (int lane64_pv_t = 0; lane64_pv_t < 128; lane64_pv_t++) {
          for (int mo64 = bi + lane64_pv_t / 32 * 16; mo64 < bi + lane64_pv_t / 32 * 16 + 16; mo64 += 16) {
            for (int nd64 = 0; nd64 < 64; nd64 += 8) {
              o64[mo64 + lane64_pv_t % 32 / 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4)] = o64[mo64 + lane64_pv_t % 32 / 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4)] * rs64[mo64 + lane64_pv_t % 32 / 4 - bi];
              o64[mo64 + lane64_pv_t % 32 / 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4) + 1] = o64[mo64 + lane64_pv_t % 32 / 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4) + 1] * rs64[mo64 + lane64_pv_t % 32 / 4 - bi];""")
    assert [(o.kind, o.before) for o in step.obligations] == [("parallel", True)] * 2
    proved(attention_bf16, step)
    ck.same_outputs(step.before, step.after, "attention", attention_args(ck, 1, 150, 64))


def test_lane_order_copies_a_body_that_declares_in_blocks(ck, attention_bf16):
    """The rescaling written with a local factor: each of the lane's four
    copies of the body is a block of its own (one declaration each), and
    the outputs stay."""
    before = steps(attention_bf16, "gpu.lane_order")[2].before
    old = "o64[i - bi][d] = o64[i - bi][d] * rs64[i - bi];"
    text = to_c(before)
    assert old in text
    local = parse_text(text.replace(old, "float f = rs64[i - bi]; o64[i - bi][d] = o64[i - bi][d] * f;"), "local.c")
    r = gpu.lane_order.apply(local, f"{BLOCKS} > for i#3", LANES)
    after = ck.function_text(r.program, "attention")
    assert after.count("float f = rs64[mo64 + lane64_pv_t % 32 / 4 - bi];") == 2
    assert after.count("float f = rs64[mo64 + lane64_pv_t % 32 / 4 + 8 - bi];") == 2
    assert ck.contains(after, """
        for (int nd64 = 0; nd64 < 64; nd64 += 8) {
          {
            float f = rs64[mo64 + lane64_pv_t % 32 / 4 - bi];""")
    ck.compiles(r.program)
    ck.same_outputs(local, r.program, "attention", attention_args(ck, 1, 150, 64))


def test_lane_order_refusals(attention_bf16):
    """Refused: a nest that is not two loops, a lane loop that is not
    gpu.mma's, a lane loop accumulating into another array, and a nest
    covering half the lanes' cells (its rows split at 32)."""
    before = steps(attention_bf16, "gpu.lane_order")[2].before
    rescale = f"{BLOCKS} > for i#3"
    assert "holding only another such loop" in refusal(gpu.lane_order.apply, before, f"{BLOCKS} > for i#2", LANES)
    assert "is not gpu.mma's lane loop" in refusal(gpu.lane_order.apply, before, rescale, f"{BLOCKS} > for i#1")
    assert "must reach 's64_h', the lane loop's accumulator" in refusal(
        gpu.lane_order.apply, before, rescale, f"{BLOCKS} > for lane64_t")
    half = loop.split.apply(before, rescale, "bi + 32").program
    msg = refusal(gpu.lane_order.apply, half, rescale, LANES)
    assert "the cells the lanes of for lane64_pv_t" in msg and "are not those of for i" in msg
    assert "32 x 64 from [0][0]" in msg


def test_lane_order_of_a_nest_with_a_race_is_refuted(attention_bf16):
    """The rescaling with every row also adding into one cell of the sums:
    its rows are not independent, so reordering them is refuted (parallel)."""
    before = steps(attention_bf16, "gpu.lane_order")[2].before
    old = "o64[i - bi][d] = o64[i - bi][d] * rs64[i - bi];"
    text = to_c(before)
    assert old in text
    racy = parse_text(text.replace(old, old + " sum_h[0] += 1.0f;"), "racy.c")
    r = gpu.lane_order.apply(racy, f"{BLOCKS} > for i#3", LANES)
    result = check_step(racy, r.program, r.obligations, attention_bf16.contracts)
    assert [v.status for v in result.verdicts] == ["refuted", "refuted"]
    assert all(re.search(r"'sum_h\[0\]' \(line \d+\) updates sum_h in both runs", p) for p in result.problems)


def test_fragment_layout_keeps_the_output_tile_in_the_lanes_registers(ck, attention_bf16):
    """o64[64][64], every access in the lanes' order, becomes o64[128][8][4]:
    each access names its own thread's row (equals, proved at level 2: the
    thread digit by digit, the tile and the slot, five a cell), the
    CPU outputs stay, and the CUDA printer keeps a thread's 8 x 4 cells in
    registers across the key blocks (no shared output tile)."""
    step = steps(attention_bf16, "gpu.fragment_layout")[0]
    before, after = (ck.function_text(p, "attention") for p in (step.before, step.after))
    assert "float o64[64][64];" in before and "float o64[128][8][4];" in after
    assert "lane64_pv_acc[2] = o64[lane64_pv_t][nd64 / 8][2];" in after
    assert "o64[lane64_pv_t][nd64 / 8][1] = o64[lane64_pv_t][nd64 / 8][1] * rs64[mo64 + lane64_pv_t % 32 / 4 - bi];" \
        in after
    assert {o.kind for o in step.obligations} == {"equals"} and len(step.obligations) == 5 * after.count("o64[lane")
    proved(attention_bf16, step)
    ck.same_outputs(step.before, step.after, "attention", attention_args(ck, 1, 150, 64))


def test_fragment_layout_refusals(attention_bf16):
    """Refused: an access outside a thread loop of 128 threads (the
    rescaling before gpu.lane_order), an access in one that is not a lane's
    cell (a row index taken from the lane's column), a tile that is not
    float, a float tile read by a thread per row (the scores)."""
    before = steps(attention_bf16, "gpu.lane_order")[2].before
    assert "'o64[i - bi][d]' is not in a thread loop of 128 threads" in refusal(
        gpu.fragment_layout.apply, before, "attention > for h#1 > for bi > def o64")
    ordered = steps(attention_bf16, "gpu.fragment_layout")[0].before
    cell = "o64[mo64 + lane64_pv_t % 32 / 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4)] = out["
    text = to_c(ordered)
    assert cell in text
    swapped = parse_text(text.replace(cell, cell.replace("% 32 / 4", "% 32 % 4"), 1), "swapped.c")
    msg = refusal(gpu.fragment_layout.apply, swapped, "attention > for h#1 > for bi > def o64")
    assert "'o64[mo64 + lane64_pv_t % 32 % 4 - bi][nd64 + 2 * (lane64_pv_t % 32 % 4)]' is not in gpu.mma's order" in msg
    assert "gpu.lane_order its nest first" in msg
    assert "must be declared float q64[M][N] without a value" in refusal(
        gpu.fragment_layout.apply, before, "attention > for h#1 > for bi > def q64")
    assert "is not in a thread loop of 128 threads" in refusal(
        gpu.fragment_layout.apply, before, f"{BLOCKS} > def s64_h")


def test_the_cuda_kernel_keeps_the_output_tile_in_registers(attention_bf16):
    """The printer splits o64 and o128 into one 8 x 4 (16 x 4) array per
    thread: no shared output tile, the block's shared memory down to the
    Q, K, V and P tiles and the output's copy out (D = 128: 50,944 bytes;
    84,480 with the output tile shared, the scores in shared memory and the
    copies of V and P apart from the softmax)."""
    cu = to_cuda(attention_bf16.program)
    assert "float o64[8][4];" in cu and "float o128[16][4];" in cu
    assert "float (*o64)" not in cu and "float (*o128)" not in cu
    launch = cu[cu.index("cudaFuncSetAttribute(attention_kernel3"):]
    assert "dim3(128, 1, 1), 50944, 0, otp_pdl, 1};" in launch


def test_warp_rows_mma_form_gives_each_row_the_quad_that_holds_it(ck, attention_bf16):
    """gpu.warp_rows(..., 4, mma=True) on D = 64's softmax: thread w takes
    rows 16 (w / 32) + w % 32 / 4 and 8 below (its `half`), and columns 2
    (w % 4) and the next of each tile of 8, as Q K^T's accumulators hold
    them; the partial results m_part[2][128]; level 2 proves the rows and
    each phase's threads apart; the CPU outputs stay, but for the sums'
    grouping ("reassoc"); in CUDA each fold is
    two xor shuffles over the quad, the partials in registers."""
    step = steps(attention_bf16, "gpu.warp_rows")[0]
    after = ck.function_text(step.after, "attention")
    row = "w / 32 * 16 + w % 32 / 4 + half * 8"  # bi + row - bi, cancelled
    for line in ("float max_val_blk_part[2][128];", "for (int half = 0; half < 2; half++) {",
                 "for (int j = bj; j < bj + 64; j += 8) {", "for (int jc = 0; jc < 2; jc++) {",
                 f"max_val_blk_part[half][w] = w % 4 == 0 ? max_val_h[{row}] : -INFINITY;",
                 "max_val_blk = fmaxf(max_val_blk, max_val_blk_part[half][w / 4 * 4 + k_1]);",
                 f"sc64[{row}][j + 2 * (w % 4) + jc - bj] = expf(sc64[{row}][j + 2 * (w % 4) + jc - bj] - "
                 "max_val_blk);"):
        assert line in after, line
    assert [o.kind for o in step.obligations] == ["parallel"] * 4 and step.fp == "reassoc"
    proved(attention_bf16, step)
    ck.close_outputs(step.before, step.after, "attention", attention_args(ck, 1, 150, 64))
    cu = to_cuda(attention_bf16.program)  # the script's end: every loop mapped
    assert "float max_val_blk_part[2];" in cu
    assert "max_val_blk_part_lanes = fmaxf(max_val_blk_part_lanes, __shfl_xor_sync(0xffffffffu, " \
           "max_val_blk_part_lanes, 2));" in cu


def test_warp_rows_mma_form_refusals(attention_bf16):
    """Refused: lanes other than 4 (a row of an mma tile lies on a quad),
    rows that are not a multiple of 16, a row's loop whose length is not a
    multiple of 8 (the tiles' columns)."""
    before = steps(attention_bf16, "gpu.warp_rows")[0].before
    rows = f"{BLOCKS} > for i"
    assert "with mma=True a row takes the 4 lanes of a quad" in refusal(
        gpu.warp_rows.apply, before, rows, 2, mma=True)
    text = to_c(before)
    short = parse_text(text.replace("for (int i = bi; i < bi + 64; i++) {\n            for (int j = bj;",
                                    "for (int i = bi; i < bi + 56; i++) {\n            for (int j = bj;", 1), "r.c")
    assert "must run a constant number of rows, a multiple of 16, at most 512" in refusal(
        gpu.warp_rows.apply, short, rows, 4, mma=True)
    assert "p64_1 < 64; p64_1++" in text
    narrow = parse_text(text.replace("p64_1 < 64; p64_1++", "p64_1 < 60; p64_1++", 1), "n.c")
    assert "the loop 'for p64_1' must run a constant multiple of 8 iterations with step 1" in refusal(
        gpu.warp_rows.apply, narrow, rows, 4, mma=True)


def test_fragment_layout_keeps_the_scores_in_the_lanes_registers(ck, attention_bf16):
    """After gpu.warp_rows' mma form, every access of the scores s64_h
    (Q K^T's stores, the softmax's reads) names a cell its own thread
    holds: s64_h[64][64] becomes s64_h[128][8][4], the softmax's accesses
    at slot 2 half + jc (equals, proved at level 2); the CPU outputs stay;
    CUDA keeps 8 x 4 scores a thread in registers."""
    step = next(s for s in steps(attention_bf16, "gpu.fragment_layout") if "def s64_h" in s.args[0])
    after = ck.function_text(step.after, "attention")
    assert "float s64_h[128][8][4];" in after
    assert "sc64[w / 32 * 16 + w % 32 / 4 + half * 8][j + 2 * (w % 4) + jc - bj] = j + 2 * (w % 4) + jc < bi + w / " \
        "32 * 16 + w % 32 / 4 + half * 8 + 1 ? s64_h[w][(j - bj) / 8][2 * half + jc] * rscale : -INFINITY;" in after
    assert "s64_h[lane64_t][(nj64 - bj) / 8][3] = lane64_acc_h[(nj64 - bj) / 8][3];" in after
    assert {o.kind for o in step.obligations} == {"equals"}
    proved(attention_bf16, step)
    ck.same_outputs(step.before, step.after, "attention", attention_args(ck, 1, 150, 64))
    assert "float s64_h[8][4];" in to_cuda(attention_bf16.program)
