"""gpu.lane_order and gpu.fragment_layout on attention.py's bf16 ending:
the output tile kept in its lanes' registers across the key blocks (the
rescaling and the tile's copies reordered to the lanes' cells, then the
tile stored as the lanes hold it); structure, level 2, CPU outputs and
refusals."""
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
    each access names its own thread's row (equals, proved at level 2), the
    CPU outputs stay, and the CUDA printer keeps a thread's 8 x 4 cells in
    registers across the key blocks (no shared output tile)."""
    step = steps(attention_bf16, "gpu.fragment_layout")[0]
    before, after = (ck.function_text(p, "attention") for p in (step.before, step.after))
    assert "float o64[64][64];" in before and "float o64[128][8][4];" in after
    assert "lane64_pv_acc[2] = o64[lane64_pv_t][nd64 / 8][2];" in after
    assert "o64[lane64_pv_t][nd64 / 8][1] = o64[lane64_pv_t][nd64 / 8][1] * rs64[mo64 + lane64_pv_t % 32 / 4 - bi];" \
        in after
    assert {o.kind for o in step.obligations} == {"equals"} and len(step.obligations) == 3 * after.count("o64[lane")
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
    Q, K, V, P and score tiles (D = 128: 51,968 bytes, P over the scores
    that the softmax's first phase reads; 84,480 with the output tile
    shared and the copies of V and P apart from the softmax)."""
    cu = to_cuda(attention_bf16.program)
    assert "float o64[8][4];" in cu and "float o128[16][4];" in cu
    assert "float (*o64)" not in cu and "float (*o128)" not in cu
    launch = cu[cu.index("cudaFuncSetAttribute(attention_kernel3"):]
    assert "dim3(128, 1, 1), 51968, 0, otp_pdl, 1};" in launch
