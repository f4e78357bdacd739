"""gpu.mma: a 16 x 8 x 16 bfloat16 tile product as a warp's tensor-core
operation, one call per lane (structure, refusals, CPU outputs, level 2's
footprints of the lanes and warps, the CUDA printer's lane checks, nvcc)."""
from __future__ import annotations

import textwrap
from typing import Any, Optional

import pytest

from optitrust_py import ir
from optitrust_py.cuda_build import compile_check, find_nvcc
from optitrust_py.cuda_emit import CudaError, to_cuda
from optitrust_py.level2 import check_step
from optitrust_py.spec import parse_spec_text
from optitrust_py.symexec import Alloc, Machine, Ptr
from optitrust_py.symvector import intrinsic
from optitrust_py import terms as T
from transformations import gpu, loop, variable
from helpers import attention_args, cuda_session, refusal, refuted

# Each block multiplies its 32 x 16 rows of a by the 8 x 16 rows of b
# (C = A B^T): warp w takes rows 16 w .. 16 w + 15.
TILES = """
    #include <otp.h>
    void tiles(int n, const float *a, const float *b, float *c) {
      for (int r = 0; r < n; r++) {
        otp_bf16 at[32][16];
        otp_bf16 bt[8][16];
        float ct[32][8];
        for (int i = 0; i < 32; i++) {
          for (int k = 0; k < 16; k++) {
            at[i][k] = otp_to_bf16(a[(r * 32 + i) * 16 + k]);
          }
        }
        for (int i = 0; i < 8; i++) {
          for (int k = 0; k < 16; k++) {
            bt[i][k] = otp_to_bf16(b[i * 16 + k]);
          }
        }
        for (int i = 0; i < 32; i++) {
          for (int j = 0; j < 8; j++) {
            ct[i][j] = 0.0f;
          }
        }
        for (int w = 0; w < 2; w++) {
          for (int i = 0; i < 16; i++) {
            for (int j = 0; j < 8; j++) {
              for (int k = 0; k < 16; k++) {
                ct[ROW][j] += (float)at[w * 16 + i][k] * (float)bt[j][k];
              }
            }
          }
        }
        for (int i = 0; i < 32; i++) {
          for (int j = 0; j < 8; j++) {
            c[(r * 32 + i) * 8 + j] = ct[i][j];
          }
        }
      }
    }
"""
SPEC = parse_spec_text("""
tiles(n, a, b, c):
  requires n >= 1
  reads    a ~> Matrix3(n, 32, 16), b ~> Matrix2(8, 16)
  writes   c ~> Matrix3(n, 32, 8)
""")
NEST = "tiles > for w > for i"


def tiles(ck: Any, row: str = "w * 16 + i") -> ir.Program:
    return ck.parse(textwrap.dedent(TILES).replace("ROW", row), "tiles.c")


def test_mma_writes_one_call_per_lane_with_the_same_cpu_outputs(ck):
    p = tiles(ck)
    r = gpu.mma.apply(p, NEST)
    text = ck.function_text(r.program, "tiles")
    assert ck.contains(text, """
        for (int w = 0; w < 2; w++) {
          for (int lane = 0; lane < 32; lane++) {
            otp_mma_m16n8k16_bf16(&ct[w * 16 + lane / 4][2 * (lane % 4)], &ct[w * 16 + (lane / 4 + 8)][2 * (lane % 4)], &at[w * 16 + lane / 4][0], &at[w * 16 + (lane / 4 + 8)][0], &bt[2 * (lane % 4)][0], &bt[2 * (lane % 4) + 1][0], lane);
          }
        }""")
    assert r.fp == "reassoc" and r.obligations == ()
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    # on the CPU each lane adds its products in k order, as the loops did: bit for bit
    ck.same_outputs(p, r.program, "tiles", [3, ck.floats(3 * 32 * 16), ck.floats(8 * 16), ck.floats(3 * 32 * 8)])
    assert check_step(p, r.program, r.obligations, SPEC).problems == ()


def test_mma_refusals(ck):
    p = tiles(ck)
    mma = gpu.mma.apply
    assert "must be a nest of three loops of 16, 8 and 16 iterations" in refusal(mma, p, "tiles > for w")
    assert "must be a nest of three loops" in refusal(mma, p, "tiles > for i#1")
    fp32 = ck.parse(textwrap.dedent(TILES).replace("ROW", "w * 16 + i").replace("(float)bt[j][k]", "b[j * 16 + k]"),
                    "tiles.c")
    assert "both operands must be otp_bf16 or both float, not '(float)at[w * 16 + i][k]' (otp_bf16) and " \
        "'b[j * 16 + k]' (float)" in refusal(mma, fp32, NEST)
    doubled = ck.parse(textwrap.dedent(TILES).replace("ROW", "w * 16 + i").replace("(float)bt[j][k]",
                                                                                 "(double)bt[j][k]"), "tiles.c")
    assert "'(double)bt[j][k]' must read an otp_bf16 array converted to float" in refusal(mma, doubled, NEST)
    gathered = ck.parse(textwrap.dedent(TILES).replace("ROW", "w * 16 + i").replace("bt[j][k]", "bt[j * j % 8][k]"),
                        "tiles.c")
    assert "must pick its rows by an affine function of j (index 'j * j % 8')" in refusal(mma, gathered, NEST)
    assert "the accumulator 'ct[j][w * 16 + i]' must step by one cell with j" in refusal(
        mma, ck.parse(textwrap.dedent(TILES).replace("ct[ROW][j]", "ct[j][w * 16 + i]"), "tiles.c"), NEST)


def float_tiles(ck: Any, b_tile: str = "bt[j][k]", b_shape: tuple[int, int] = (8, 16)) -> ir.Program:
    """TILES on float tiles (no bfloat16 rounding), B a `b_shape` tile read as `b_tile`."""
    rows, cols = b_shape
    source = (textwrap.dedent(TILES).replace("ROW", "w * 16 + i").replace("otp_bf16 ", "float ")
              .replace("otp_to_bf16(", "(").replace("(float)at[w * 16 + i][k] * (float)bt[j][k]",
                                                     f"at[w * 16 + i][k] * {b_tile}")
              .replace("float bt[8][16];", f"float bt[{rows}][{cols}];")
              .replace("for (int i = 0; i < 8; i++) {\n      for (int k = 0; k < 16; k++) {\n        bt[i][k] = "
                       "(b[i * 16 + k]);", f"for (int i = 0; i < {rows}; i++) {{\n      for (int k = 0; k < {cols}; "
                       f"k++) {{\n        bt[i][k] = (b[i * {cols} + k]);"))
    assert "otp_bf16" not in source and f"* {b_tile};" in source and f"b[i * {cols} + k]" in source
    return ck.parse(source, "tiles.c")


def test_mma_on_float_operands_is_three_tf32_products(ck):
    """Float A and B: the tf32x3 call, with the same lanes and cells; lossy
    at TF32X3_TOLERANCE a product. The CPU build splits each operand as the
    tensor cores get it, so its outputs differ from the loops' (the split is
    modelled), within 16 products' tolerance; level 2 proves the lanes'
    footprints; mapped to a warp, the printer emits it and nvcc compiles it.
    Mixed operands are refused."""
    p = float_tiles(ck)
    r = gpu.mma.apply(p, NEST)
    text = ck.function_text(r.program, "tiles")
    assert ("otp_mma_m16n8k16_tf32x3(&ct[w * 16 + lane / 4][2 * (lane % 4)], &ct[w * 16 + (lane / 4 + 8)]"
            "[2 * (lane % 4)], &at[w * 16 + lane / 4][0], &at[w * 16 + (lane / 4 + 8)][0], &bt[2 * (lane % 4)][0], "
            "&bt[2 * (lane % 4) + 1][0], lane);") in text
    assert (r.fp, r.tolerance, r.obligations) == ("lossy", gpu.TF32X3_TOLERANCE, ())
    assert "#include <otp.h>" in r.program.includes
    ck.roundtrip(r.program)
    ck.compiles(r.program)
    args = [3, ck.floats(3 * 32 * 16), ck.floats(8 * 16), ck.floats(3 * 32 * 8)]
    assert 0 < ck.close_outputs(p, r.program, "tiles", args, 16 * gpu.TF32X3_TOLERANCE, floor=1.0)
    assert check_step(p, r.program, r.obligations, SPEC).problems == ()
    before, step = mapped(ck, "", r.program)
    assert [v.status for v in check_step(before, step.program, step.obligations, SPEC).verdicts] == ["proved"]
    cu = to_cuda(step.program)
    assert "otp_mma_m16n8k16_tf32x3(&ct[t / 32 * 16 + t % 32 / 4][2 * (t % 32 % 4)]" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "tiles.cu") == ()
    mixed = ck.parse(ck.function_text(p, "tiles").replace("float bt[8][16];", "otp_bf16 bt[8][16];")
                     .replace("* bt[j][k];", "* (float)bt[j][k];"), "tiles.c")
    assert ("both operands must be otp_bf16 or both float, not 'at[w * 16 + i][k]' (float) and '(float)bt[j][k]' "
            "(otp_bf16)") in refusal(gpu.mma.apply, mixed, NEST)


def test_mma_on_a_float_k_major_operand_reads_it_anywhere(ck):
    """Float B read k-major (rows of 12 cells, which bfloat16's ldmatrix
    would refuse): the tf32x3 `_kn` call, no alignment obligation, CPU
    outputs within tolerance, the threads' lanes proved apart; the printer
    takes B from global memory too (plain loads); nvcc compiles the kernel."""
    p = float_tiles(ck, "bt[k][j]", (16, 12))
    assert "b[i * 12 + k]" in ck.function_text(p, "tiles")
    r = gpu.mma.apply(p, NEST)
    assert ("otp_mma_m16n8k16_tf32x3_kn(&ct[w * 16 + lane / 4][2 * (lane % 4)], &ct[w * 16 + (lane / 4 + 8)]"
            "[2 * (lane % 4)], &at[w * 16 + lane / 4][0], &at[w * 16 + (lane / 4 + 8)][0], &bt[0][2 * (lane % 4)], "
            "&bt[8][2 * (lane % 4)], lane);") in ck.function_text(r.program, "tiles")
    assert (r.fp, r.obligations) == ("lossy", ())
    args = [3, ck.floats(3 * 32 * 16), ck.floats(16 * 12), ck.floats(3 * 32 * 8)]
    assert 0 < ck.close_outputs(p, r.program, "tiles", args, 16 * gpu.TF32X3_TOLERANCE, floor=1.0)
    spec = parse_spec_text("tiles(n, a, b, c):\n  requires n >= 1\n  reads a ~> Matrix3(n, 32, 16), "
                           "b ~> Matrix2(16, 12)\n  writes c ~> Matrix3(n, 32, 8)\n")
    before, step = mapped(ck, "", r.program)
    assert [v.status for v in check_step(before, step.program, step.obligations, spec).verdicts] == ["proved"]
    global_b = ck.parse("#include <otp.h>\n" + ck.function_text(step.program, "tiles").replace(
        "const float *b,", "const float *b, const float (*g)[12],").replace(
        "&bt[0][2 * (t % 32 % 4)], &bt[8]", "&g[0][2 * (t % 32 % 4)], &g[8]"), "tiles.c")
    assert "&g[0][2 * (t % 32 % 4)], &g[8][2 * (t % 32 % 4)], t % 32);" in to_cuda(global_b)
    cu = to_cuda(step.program)
    assert "otp_mma_m16n8k16_tf32x3_kn(&ct[t / 32 * 16 + t % 32 / 4][2 * (t % 32 % 4)]" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "tiles.cu") == ()


def mapped(ck: Any, row: str, product: Optional[ir.Program] = None) -> tuple[ir.Program, Any]:
    """The tile product as tensor-core calls (gpu.mma's on `tiles(ck, row)`,
    or `product`): blocks over r, the warps and their lanes collapsed into
    one loop of 64 threads along x (w = t / 32, lane = t % 32), and the step
    mapping it."""
    p = product or gpu.mma.apply(tiles(ck, row), NEST).program
    p = loop.collapse.apply(p, "tiles > for w", "t").program
    p = variable.inline.apply(p, "tiles > def lane").program
    p = variable.inline.apply(p, "tiles > def w").program
    p = gpu.map_blocks.apply(p, "tiles > for r", "x").program
    for k in range(1, 5):
        p = gpu.map_threads.apply(p, f"tiles > for i#{k}", "x").program
    return p, gpu.map_threads.apply(p, "tiles > for t", "x")


def test_level2_proves_the_lanes_and_warps_write_their_own_accumulators(ck):
    before, r = mapped(ck, "w * 16 + i")
    result = check_step(before, r.program, r.obligations, SPEC)
    assert [v.status for v in result.verdicts] == ["proved"] and result.problems == ()


def test_level2_refutes_two_warps_writing_one_accumulator(ck):
    """Both warps add their product into rows 0..15: sequentially the sum
    of the two, on the GPU a race between the warps."""
    before, r = mapped(ck, "i")
    reason = refuted(before, r, SPEC)
    assert reason.startswith("parallel: ") and "ct" in reason and "otp_mma_m16n8k16_bf16" in reason


def test_the_printer_checks_the_lanes(ck):
    before, r = mapped(ck, "w * 16 + i")
    cu = to_cuda(r.program)
    assert "otp_mma_m16n8k16_bf16(&ct[t / 32 * 16 + t % 32 / 4][2 * (t % 32 % 4)]" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "tiles.cu") == ()
    wrong = ck.parse(ck.function_text(r.program, "tiles").replace(", t % 32);", ", t % 16);"), "tiles.c")
    with pytest.raises(CudaError, match="its lane 't % 16' is not t % 32"):
        to_cuda(wrong)


def test_padding_keeps_each_lane_s_cells_in_their_rows(ck):
    """gpu.pad of an operand gpu.mma reaches through pointers: each pointer's
    16 (or 2) cells must lie in its row, proved; a product reaching past a
    row (from column 8 of rows of 16) is refuted, and an address taken for
    anything else is refused."""
    p = gpu.mma.apply(tiles(ck), NEST).program
    r = gpu.pad.apply(p, "tiles > def at", 8)
    assert "otp_bf16 at[32][24];" in ck.function_text(r.program, "tiles")
    assert [ob.kind for ob in r.obligations] == ["in_range", "in_range"]
    assert all(v.status == "proved" for v in check_step(p, r.program, r.obligations, SPEC).verdicts)
    past = ck.parse(ck.function_text(p, "tiles").replace("&at[w * 16 + lane / 4][0]", "&at[w * 16 + lane / 4][8]"),
                    "tiles.c")
    reason = refuted(past, gpu.pad.apply(past, "tiles > def at", 8), SPEC)
    assert reason.startswith("in_range: ") and "the point 8 is beyond the stop 0" in reason
    taken = ck.parse(ck.function_text(p, "tiles").replace("c[(r * 32 + i) * 8 + j] = ct[i][j];",
                                                           "c[(r * 32 + i) * 8 + j] = *&ct[i][j];"), "tiles.c")
    assert "the address of 'ct[i][j]' is taken, so its layout may matter" in refusal(gpu.pad.apply, taken,
                                                                                      "tiles > def ct")


def test_mma_over_k_slices_keeps_the_accumulators_in_a_local_array(ck):
    """Targeted at a loop over k-slices (rows of 32: two slices of 16), each
    lane's four cells live in lane_acc across the slices: same CPU outputs,
    and level 2 proves the lanes and warps apart as before."""
    source = (textwrap.dedent(TILES).replace("ROW", "w * 16 + i").replace("[16];", "[32];")
              .replace("k < 16; k++) {\n        at", "k < 32; k++) {\n        at")
              .replace("k < 16; k++) {\n        bt", "k < 32; k++) {\n        bt")
              .replace("* 16 + k]", "* 32 + k]").replace("n, 32, 16)", "n, 32, 32)")
              .replace("for (int i = 0; i < 16; i++) {\n        for (int j = 0; j < 8; j++) {",
                       "for (int kd = 0; kd < 32; kd += 16) {\n      for (int i = 0; i < 16; i++) {\n"
                       "        for (int j = 0; j < 8; j++) {")
              .replace("for (int k = 0; k < 16; k++) {\n            ct", "for (int k = kd; k < kd + 16; k++) {\n"
                       "            ct"))
    source = source.replace("* (float)bt[j][k];\n          }\n        }\n      }", "* (float)bt[j][k];\n"
                            "          }\n        }\n      }\n      }")
    p = ck.parse(source, "tiles.c")
    r = gpu.mma.apply(p, "tiles > for w > for kd")
    text = ck.function_text(r.program, "tiles")
    assert ck.contains(text, """
        for (int lane = 0; lane < 32; lane++) {
          float lane_acc[4];
          lane_acc[0] = ct[w * 16 + lane / 4][2 * (lane % 4)];""")
    assert "otp_mma_m16n8k16_bf16(&lane_acc[0], &lane_acc[2], &at[w * 16 + lane / 4][kd]" in text
    assert "ct[w * 16 + (lane / 4 + 8)][2 * (lane % 4) + 1] = lane_acc[3];" in text
    ck.compiles(r.program)
    ck.same_outputs(p, r.program, "tiles", [2, ck.floats(2 * 32 * 32), ck.floats(8 * 32), ck.floats(2 * 32 * 8)])
    spec = parse_spec_text("tiles(n, a, b, c):\n  requires n >= 1\n  reads a ~> Matrix3(n, 32, 32), "
                           "b ~> Matrix2(8, 32)\n  writes c ~> Matrix3(n, 32, 8)\n")
    q = loop.collapse.apply(r.program, "tiles > for w", "t").program
    q = variable.inline.apply(q, "tiles > def lane").program
    q = variable.inline.apply(q, "tiles > def w").program
    q = gpu.map_blocks.apply(q, "tiles > for r", "x").program
    step = gpu.map_threads.apply(q, "tiles > for t", "x")
    assert [v.status for v in check_step(q, step.program, step.obligations, spec).verdicts] == ["proved"]


def test_warps_share_the_tiles_of_a_lane_loop(ck):
    """gpu.warps: the lanes' loop around the two row tiles becomes 64
    threads, warp t / 32 taking tile t / 32: same CPU outputs, the
    obligation parallel proved, printed as one phase of whole warps; a
    share that leaves a warp part of a tile is refused, and when the two
    warps would add into the same rows, parallel is refuted."""
    p = gpu.mma.apply(tiles(ck), NEST).program
    p = loop.swap.apply(p, "tiles > for w").program
    r = gpu.warps.apply(p, "tiles > for lane", 2)
    text = ck.function_text(r.program, "tiles")
    assert ck.contains(text, """
        for (int lane_t = 0; lane_t < 64; lane_t++) {
          for (int w = 0 + lane_t / 32 * 1; w < 0 + lane_t / 32 * 1 + 1; w++) {""")
    assert "otp_mma_m16n8k16_bf16(&ct[w * 16 + lane_t % 32 / 4][2 * (lane_t % 32 % 4)]" in text
    ck.same_outputs(p, r.program, "tiles", [2, ck.floats(2 * 32 * 16), ck.floats(8 * 16), ck.floats(2 * 32 * 8)])
    assert [v.status for v in check_step(p, r.program, r.obligations, SPEC).verdicts] == ["proved"]
    assert "whose constant span (stop - start) 4 warps share in whole tiles" in refusal(gpu.warps.apply, p,
                                                                                         "tiles > for lane", 4)
    assert "an integer from 2 to 32" in refusal(gpu.warps.apply, p, "tiles > for lane", 1)
    same = loop.swap.apply(gpu.mma.apply(tiles(ck, "i"), NEST).program, "tiles > for w").program
    assert refuted(same, gpu.warps.apply(same, "tiles > for lane", 2), SPEC).startswith("parallel: ")
    q = gpu.map_blocks.apply(r.program, "tiles > for r", "x").program
    for loop_ in ("i#1", "i#2", "i#3", "lane_t", "i#4"):
        q = gpu.map_threads.apply(q, f"tiles > for {loop_}", "x").program
    cu = to_cuda(q)
    assert "otp_mma_m16n8k16_bf16(&ct[w * 16 + lane_t % 32 / 4]" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "tiles.cu") == ()


@pytest.mark.parametrize("product", [gpu.MMA, gpu.TF32X3])
def test_level3_semantics_of_a_lane_s_tile_product(product):
    """symvector's otp_mma_m16n8k16_bf16 (and tf32x3, its split taken as
    exact, as a lossy step's rounding is): each of the lane's 4 cells adds
    its row of A times a row of B, in k order, as the CPU version does (the
    terms of the loops it replaced); otp_to_bf16 is the value itself."""
    m = Machine(ir.Program((), (), "t.c"), {})
    a, b, c = (Alloc(n, size, "f", "input") for n, size in (("a", 32), ("b", 32), ("c", 4)))
    call = ir.Call(ir.Var(product), ())
    intrinsic(m, product, [Ptr(c, 0), Ptr(c, 2), Ptr(a, 0), Ptr(a, 16), Ptr(b, 0), Ptr(b, 16), 5], call)
    for row, pair in ((0, 0), (1, 2)):
        for n in range(2):
            want = T.leaf("input", c.name, pair + n)
            for k in range(16):
                want = T.binary("add", want, T.binary("mul", T.leaf("input", a.name, 16 * row + k),
                                                      T.leaf("input", b.name, 16 * n + k)))
            assert c.cells[pair + n] == want
    x = T.leaf("input", a.name, 3)
    assert intrinsic(m, "otp_to_bf16", [x], ir.Call(ir.Var("otp_to_bf16"), ())) == x


# The same product with B stored k-major, bk[k][j] (16 rows of COLS cells),
# as attention's V tile: rows of keys, read down the columns.
KSPEC = parse_spec_text("""
tiles(n, a, b, c):
  requires n >= 1
  reads    a ~> Matrix3(n, 32, 16), b ~> Matrix2(16, 8)
  writes   c ~> Matrix3(n, 32, 8)
""")


def k_major(ck: Any, cols: int = 8, column: str = "j") -> ir.Program:
    source = (textwrap.dedent(TILES).replace("ROW", "w * 16 + i")
              .replace("otp_bf16 bt[8][16];", f"otp_bf16 bt[16][{cols}];")
              .replace("for (int i = 0; i < 8; i++) {\n      for (int k = 0; k < 16; k++) {\n        bt[i][k] = "
                       "otp_to_bf16(b[i * 16 + k]);",
                       "for (int i = 0; i < 16; i++) {\n      for (int k = 0; k < 8; k++) {\n        "
                       "bt[i][k] = otp_to_bf16(b[i * 8 + k]);")
              .replace("(float)bt[j][k]", f"(float)bt[k][{column}]"))
    assert f"(float)bt[k][{column}]" in source and "b[i * 8 + k]" in source
    return ck.parse(source, "tiles.c")


def test_mma_reads_a_k_major_right_operand_through_its_columns(ck):
    """B read bt[k][j]: one `_kn` call per lane, pointing at the lane's
    cells (0, 2t) and (8, 2t); the obligation that the tile starts on 16
    bytes (divides) is proved; the CPU outputs are bit for bit those of the
    loops; level 2 proves the 64 threads' lanes apart through the 16-row
    footprint; the CUDA printer emits ldmatrix.trans's helper and nvcc
    compiles it. Level 3 runs the helper as its sums in k order."""
    p = k_major(ck)
    r = gpu.mma.apply(p, NEST)
    text = ck.function_text(r.program, "tiles")
    assert ("otp_mma_m16n8k16_bf16_kn(&ct[w * 16 + lane / 4][2 * (lane % 4)], &ct[w * 16 + (lane / 4 + 8)]"
            "[2 * (lane % 4)], &at[w * 16 + lane / 4][0], &at[w * 16 + (lane / 4 + 8)][0], "
            "&bt[0][2 * (lane % 4)], &bt[8][2 * (lane % 4)], lane);") in text
    assert [ob.kind for ob in r.obligations] == ["divides"] and r.fp == "reassoc"
    ck.compiles(r.program)
    ck.same_outputs(p, r.program, "tiles", [3, ck.floats(3 * 32 * 16), ck.floats(16 * 8), ck.floats(3 * 32 * 8)])
    result = check_step(p, r.program, r.obligations, KSPEC)
    assert [v.status for v in result.verdicts] == ["proved"] and result.problems == ()
    q, step = mapped(ck, "", r.program)
    assert [v.status for v in check_step(q, step.program, step.obligations, KSPEC).verdicts] == ["proved"]
    cu = to_cuda(step.program)
    assert "otp_mma_m16n8k16_bf16_kn(&ct[t / 32 * 16 + t % 32 / 4][2 * (t % 32 % 4)]" in cu
    if find_nvcc() is not None:
        assert compile_check(cu, "tiles.cu") == ()
    # two threads' lanes into the same rows: level 2 sees the race through the new footprint too
    same = ck.parse(ck.function_text(q, "tiles").replace("&ct[t / 32 * 16 + t % 32 / 4]", "&ct[t % 32 / 4]"),
                    "tiles.c")
    assert refuted(same, gpu.map_threads.apply(same, "tiles > for t", "x"), KSPEC).startswith("parallel: ")


def test_mma_k_major_refusals(ck):
    """Refused or refuted: rows of 12 cells (ldmatrix's rows would not all
    start on 16 bytes), a tile starting at column 4 of rows of 16 (the
    obligation divides, refuted), padding that breaks the rows' multiple of
    8; and the printer refuses a k-major B outside shared memory."""
    assert "its array's rows must be a constant multiple of 8 cells" in refusal(gpu.mma.apply, k_major(ck, 12),
                                                                               NEST)
    off = k_major(ck, 16, "j + 4")
    reason = refuted(off, gpu.mma.apply(off, NEST), KSPEC)
    assert reason.startswith("divides: ") and "8 does not divide 0 + 4 = 4" in reason
    p = gpu.mma.apply(k_major(ck), NEST).program
    assert "must stay a multiple of 8 cells: pad by a multiple of 8" in refusal(gpu.pad.apply, p, "tiles > def bt", 1)
    assert "otp_bf16 bt[16][16];" in ck.function_text(gpu.pad.apply(p, "tiles > def bt", 8).program, "tiles")
    text = ck.function_text(mapped(ck, "", p)[1].program, "tiles")
    global_b = ck.parse(text.replace("const float *b,", "const float *b, const otp_bf16 (*g)[8],")
                        .replace("&bt[0][2 * (t % 32 % 4)], &bt[8]", "&g[0][2 * (t % 32 % 4)], &g[8]"), "tiles.c")
    with pytest.raises(CudaError, match=r"its B \('&g\[0\]\[2 \* \(t % 32 % 4\)\]'\) is not a shared tile of the "
                                        r"block, which the warp's ldmatrix.trans needs"):
        to_cuda(global_b)


def test_level3_semantics_of_a_k_major_tile_product():
    """symvector's `_kn`: B's column n of the lane is cell n of B's rows 0
    to 7 from b_top and 8 to 15 from b_bottom, a row stride apart."""
    m = Machine(ir.Program((), (), "t.c"), {})
    a, b, c = (Alloc(n, size, "f", "input") for n, size in (("a", 32), ("b", 16 * 24), ("c", 4)))
    call = ir.Call(ir.Var(gpu.MMA_KN), ())
    intrinsic(m, gpu.MMA_KN, [Ptr(c, 0), Ptr(c, 2), Ptr(a, 0), Ptr(a, 16), Ptr(b, 2), Ptr(b, 8 * 24 + 2), 5], call)
    for row, pair in ((0, 0), (1, 2)):
        for n in range(2):
            want = T.leaf("input", c.name, pair + n)
            for k in range(16):
                want = T.binary("add", want, T.binary("mul", T.leaf("input", a.name, 16 * row + k),
                                                      T.leaf("input", b.name, 24 * k + 2 + n)))
            assert c.cells[pair + n] == want


def test_attention_fp32_ending_makes_its_tile_products_on_tf32_parts(ck):
    """attention.py's fp32 CUDA ending (no --precision): the bf16 ending's
    kernel on float tiles, Q K^T and P V as tf32x3 calls, lossy at
    TF32X3_TOLERANCE, proved at level 2 and within tolerance of the loops
    on the CPU (D = 64's Q K^T at S = 150); the tiles padded for the fp32
    fragments (q, k and p by 4 cells, v by 8), P V's k-slices outside its
    column tiles (P's fragments split once for the 16), 86,784 bytes of
    shared memory a block for D = 128; nvcc compiles it."""
    session = cuda_session("attention.py")
    products = [s for s in session.steps if s.name == "gpu.mma"]
    assert len(products) == 4 and {(s.fp, s.tolerance) for s in products} == {("lossy", gpu.TF32X3_TOLERANCE)}
    first = products[0]
    result = check_step(first.before, first.after, first.obligations, session.contracts)
    assert result.ok and not result.problems, result.problems
    assert 0 < ck.close_outputs(first.before, first.after, "attention", attention_args(ck, 1, 150, 64),
                                64 * gpu.TF32X3_TOLERANCE, floor=1.0)
    cu = to_cuda(session.program)
    for tile in ("q64)[68]", "k64)[68]", "v64)[72]", "p64)[68]", "q128)[132]", "k128)[132]", "v128)[136]",
                 "p128)[68]"):
        assert f"float (*{tile} = " in cu
    assert "otp_bf16" not in cu and "otp_mma_m16n8k16_bf16" not in cu
    kernel = cu.split("__global__ void attention_kernel3(")[1].split("__global__")[0]
    pv = kernel[kernel.index("float lane128_pv_acc_h[16][4];"):]
    assert pv.index("for (int kj128 = bj; kj128 < bj + 64; kj128 += 16) {") < pv.index(
        "for (int nd128 = 0; nd128 < 128; nd128 += 8) {\n            otp_mma_m16n8k16_tf32x3_kn("
        "&lane128_pv_acc_h[nd128 / 8][0], &lane128_pv_acc_h[nd128 / 8][2], "
        "&p128[mo128 + lane128_pv_t % 32 / 4 - bi][kj128 - bj]")
    assert ("otp_mma_m16n8k16_tf32x3(&lane128_acc_h[(nj128 - bj) / 8][0], &lane128_acc_h[(nj128 - bj) / 8][2], "
            "&q128[mi128 + lane128_t % 32 / 4 - bi][kd128]") in kernel
    assert "float o128[16][4];" in kernel and "float s128_h[8][4];" in kernel
    assert "dim3(128, 1, 1), 86784, 0, otp_pdl, 1};" in cu[cu.index("cudaFuncSetAttribute(attention_kernel3"):]
    if find_nvcc() is not None:
        assert compile_check(cu, "final.cu") == ()
