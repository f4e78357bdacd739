"""Causal multi-head attention: from three passes over an S-sized row of
scores to a FlashAttention-shaped kernel.

1. The scale 1/sqrt(D) is named and moved out of the loops.
2. Online softmax: the max, exp-sum, normalize and weighted-sum passes over
   a query's row become one pass over key blocks of 64 with a running max
   and sum that rescale the partial output (`≈fp`, relative tolerance
   1e-5); the S-sized scores buffer, no longer used, goes.
3. Queries are cut into blocks of 64, their running max and sum become
   per-query arrays, and the key-block loop goes outside the queries of a
   block: it stops at the block on the diagonal, so key blocks masked for
   every query of the block are never visited.
4. For D == 64 (a copy; other D run the code of step 3): the key blocks
   before the diagonal run whole (constant trip counts); only the diagonal
   block keeps the per-query bound. In the whole blocks, the scores of a
   query are formed along the keys from a transposed local copy of the K
   tile (four vector accumulators, no horizontal sums), the Q tile is local,
   and the output row of a query stays in four registers across a block.
   The V tile is copied to a local array too (measured ~12% faster than
   reading it from v in place).
4b. In the whole blocks, queries go four at a time (the last `n % 4` of a
   block one at a time): the mask test, always true there, goes; the store
   of the new running max moves up to its last read; the scores of the four
   queries are formed together along d (4 x 4 vector accumulators: each K
   vector loaded feeds four FMAs), their softmax runs query by query, and
   the P*V update runs key by key for the four output rows (4 x 4 vectors
   in registers: each V vector loaded feeds four FMAs).
5. Heads x query blocks run in parallel (collapse(2)), and the lane loops
   become AVX-512 (vector expf, running max and sums), piece by piece around
   the transposing copy, which has no vector form; the lanes of a row's max
   and sum are combined by one reduce intrinsic each (`reduce=True`).

With `--target cuda`, step 1 is shared, the scores are then multiplied by
1 / scale, computed once (`arith.reciprocal`, lossy within 3 x 2^-24), and
the script ends in a FlashAttention-shaped kernel (flash_mma): for D == 64
and D == 128 (copies with constant tile sizes) a block per (head, 64
queries), key blocks of 64, the diagonal one masked (its keys past a query
score -INFINITY) so that all run whole, the Q, K, V and P tiles in shared
memory (K's and V's copied in 16-byte pieces, straight from global memory:
cp.async), Q K^T and P V as warp tile products on the tensor cores
(`gpu.mma`, fp32 accumulation; V read k-major), the softmax on the lanes
that hold the scores, which stay in registers (`gpu.warp_rows` in its mma
form), the output tile held in the lanes' registers across the key blocks
(`gpu.lane_order`, `gpu.fragment_layout`). The last S % 64 queries and
other D run a thread per query reading K and V from global memory (for
D == 64 and 128, the query's rows of q and of the output in local arrays:
H100, bf16, H=8, S=1000, D=128, 3.4 ms against 26.6 ms with the output row
updated in global memory at every key; still 0.02x torch's 0.061 ms, the
40 queries a head of that tail running alone).

In fp32 (the default) the tile products take float tiles: gpu.mma splits
each operand into two TF32 parts and makes three TF32 products (lossy
within 5 x 2^-22 a product), as torch's memory-efficient fp32 attention
does (CUTLASS's OpMultiplyAddFastF32). H100, H=32, S=4096, D=128, causal:
2.89 ms against torch's 3.24 (1.12x), where a thread per query in fp32
FMAs (the ending before) took 8.2 ms.

With `--precision bf16` the caller passes q, k and v in bfloat16, as to
FlashAttention (`matrix.set_precision(..., "otp_bf16")` on the parameters,
the first CUDA steps; lossy, relative tolerance 8 x 2^-8 each), the tiles
and P are bfloat16 and the tile products one mma.sync each;
`otp bench --target cuda --compare torch` then races torch's SDPA on the
same bfloat16 inputs restricted to its FlashAttention-2 backend,
checking within 2e-2 against the original on the unrounded inputs.

`--compare torch` gives torch (batch, heads, sequence, dim) tensors: with
3-D (heads, sequence, dim) tensors, torch 2.13's CPU attention leaves its
flash kernel for the plain math path, about 6x slower here.
"""
from optitrust_py.script import bench, load, precision, target
from transformations import arith, flash, gpu, loop, matrix, parallel, variable, vector

BF16 = target() == "cuda" and precision() == "bf16"
KEYS = 64  # CUDA: keys per block of the online softmax
SDPA = "torch.nn.functional.scaled_dot_product_attention"
FLASH = "torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION)"

load("../c_sources/attention.c", sizes={"H": 2, "S": 150, "D": 64})
if BF16:
    bench("attention", sizes={"H": 32, "S": 4096, "D": 128}, flops="2*H*S*S*D", tolerance=2e-2,
          torch=f"with {FLASH}: out = {SDPA}(q.view(1, H, S, D), k.view(1, H, S, D), v.view(1, H, S, D), "
                "is_causal=True).reshape(-1)")
else:
    bench("attention", sizes={"H": 8, "S": 4096, "D": 64}, flops="2*H*S*S*D",
          torch=f"out = {SDPA}(q.view(1, H, S, D), k.view(1, H, S, D), v.view(1, H, S, D), "
                "is_causal=True).reshape(-1)")

# 1. the scale, once
variable.bind("attention > expr 'sqrtf(D)'", "scale")
for _ in range(3):
    loop.move_out("attention > def scale")


def key_blocks_outside(queries: str) -> None:
    """The queries' loop of a query block (`queries`, inside the loop over
    blocks): their running max and sum become per-query arrays, and the
    key-block loop goes outside the queries, up to the diagonal block."""
    loop.hoist(f"{queries} > def max_val")
    loop.hoist(f"{queries} > def sum")
    loop.fission(f"{queries} > before for bj")
    loop.fission(f"{queries}#2 > after for bj")
    flash.swap_triangular(f"{queries}#2")


def query_blocks(h: str, d: int) -> tuple[str, list[str]]:
    """CUDA, both endings: a block per (head, block of 64 queries), launched
    from the last (the longest) to the first, the key-block loop outside
    the queries, and the block's output rows and Q tile staged in shared
    memory; the query-block loop and the arrays' shape."""
    full = f"{h} > for bi"
    key_blocks_outside(f"{full} > for i")
    gpu.map_blocks(h, "y")
    gpu.map_blocks(full, "x")
    gpu.last_first(full)
    shape = ["H", "S", d]
    gpu.stage(f"{full} > for bj", "out", f"o{d}", shape, axes=[None, "x"], index=f"o{d}_")
    gpu.stage(f"{full} > for bj", "q", f"q{d}", shape, axes=[None, "x"], region=["h:1", "bi:64", f"0:{d}"],
              threads=64)
    return full, shape


def lanes_outside(where: str, tiles: list[str], lanes: str) -> None:
    """The lane loop gpu.mma made (`lanes`) inside the tile loops `tiles`
    (outermost first, in `where`) moved outermost (the lanes write their own
    cells), a row tile for each of the block's four warps, mapped to threads
    (128: the phases of a thread per query run on the first 64; H100, D =
    128: 7.7 ms against 9.9 ms with two warps of two tiles each)."""
    for k in range(len(tiles), 0, -1):
        loop.swap(" > ".join([where] + [f"for {t}" for t in tiles[:k]]))
    gpu.warps(f"{where} > for {lanes}", 4)
    gpu.map_threads(f"{where} > for {lanes}_t", "x")


def tile_product(blocks: str, rows: str, cols: str, inner: str, names: tuple[str, str, str], lane: str) -> None:
    """CUDA: the product in `blocks` whose rows are loop `rows` (index
    i), its columns loop `cols` and its sum loop `inner`, as warp tile
    products: tiles of 16 rows by 8 columns, k-slices of 16 (loops named
    `names`), gpu.mma over the slices, the lanes outside the tiles."""
    m, n, k = names
    loop.tile(f"{blocks} > for {rows}", 16, m)
    loop.tile(f"{blocks} > for {m} > for i > for {cols}", 8, n)
    loop.tile(f"{blocks} > for {m} > for i > for {n} > for {cols} > for {inner}", 16, k)
    loop.swap(f"{blocks} > for {m} > for i")
    loop.swap(f"{blocks} > for {m} > for {n} > for i > for {cols}")
    loop.swap(f"{blocks} > for {m} > for {n} > for i")
    gpu.mma(f"{blocks} > for {m} > for {n} > for {k}", lane)
    lanes_outside(blocks, [m, n], lane)


def output_in_registers(full: str, blocks: str, d: int) -> None:
    """CUDA: the block's output tile stays in its lanes' registers
    across the key blocks, in the accumulator layout of P V's tile
    products. The online softmax's rescaling of the output rows is split
    off the softmax (its factors kept per query) and, like the tile's copy
    in, reordered to the lanes' cells (gpu.lane_order); the tile goes out
    through a shared copy that the lanes fill and a thread per query
    writes to `out` (level 2 proves the lanes' stores into a 2-D tile
    apart at once; their stores into the flattened `out`, through the
    lanes' divisions, ran out of Z3's work limit). Then every access of
    the tile names its thread's own cells (gpu.fragment_layout)."""
    lanes = f"{blocks} > for lane{d}_pv_t"
    gpu.lane_order(f"{full} > for o{d}_1#1", lanes)  # the tile's copy in (query_blocks' gpu.stage)
    gpu.stage(f"{full} > for o{d}_1", f"o{d}", f"ob{d}", axes=["x", None], index=f"ob{d}_")  # out through shared
    gpu.lane_order(f"{full} > for ob{d}_0", lanes)
    loop.hoist(f"{blocks} > for i#2 > def rescale", f"rs{d}")
    flash.move_up(f"{blocks} > for i#2 > for j#3", f"{blocks} > for i#2 > '] = sum_h'")
    loop.fission(f"{blocks} > for i#2 > before for d")
    gpu.lane_order(f"{blocks} > for i#3", lanes)
    # V's copy goes before the softmax, P's right after it: a thread per query
    # converts its row of P as it ends its softmax, and the rescaling joins
    # P V's lanes (two phases less)
    flash.move_up(f"{blocks} > def v{d}", f"{blocks} > for lane{d}_t")
    flash.move_up(f"{blocks} > for v{d}_t", f"{blocks} > def v{d}")
    flash.move_up(f"{blocks} > def p{d}", f"{blocks} > for v{d}_t")
    flash.move_up(f"{blocks} > for p{d}_0", f"{blocks} > for i#2")
    for nest in (f"for lane{d}_pv_t", f"for lane{d}_pv_t > for mo{d}", f"for lane{d}_pv_t > for mo{d} > for nd{d}"):
        loop.fusion(f"{blocks} > {nest}#1")
    loop.shift(f"{blocks} > for p{d}_0", "bi")
    gpu.map_threads(f"{blocks} > for i#2", "x")
    loop.fusion(f"{blocks} > for i#2")
    gpu.fragment_layout(f"{full} > def o{d}")


def scores_from_zero(blocks: str, d: int) -> None:
    """CUDA: the scores' zeroing, reordered to the lanes' cells
    (gpu.lane_order), joins Q K^T's lanes, after the copy of K moves above
    it: each lane zeroes the cells it then accumulates (one phase less)."""
    lanes = f"{blocks} > for lane{d}_t"
    gpu.lane_order(f"{blocks} > for i#1", lanes)
    flash.move_up(f"{blocks} > def k{d}", f"{blocks} > def sc{d}")
    flash.move_up(f"{blocks} > for k{d}_t", f"{blocks} > def k{d}")
    for nest in (f"for lane{d}_t", f"for lane{d}_t > for mi{d}", f"for lane{d}_t > for mi{d} > for nj{d}"):
        loop.fusion(f"{blocks} > {nest}#1")


def slices_outside_tiles(tiles: str, tile: str, acc: str, slices: str) -> None:
    """CUDA: a lane holds its accumulators of all the tiles of loop `tile`
    (in `tiles`) at once (loop.hoist over the tiles: `acc` becomes
    `{acc}_h[n][4]`, which nvcc keeps in registers), and the k-slices
    (loop `slices`) run outside the tiles (loop.fission, loop.swap), so
    that a slice's A fragment is loaded once for all the tiles rather than
    once for each. Q K^T (H100, bf16, D = 128, the same change made by hand
    to the emitted kernel: 1.77 against 2.15 ms); P V in fp32, where each
    fragment is split into TF32 parts as it is loaded (H100, D = 128, side
    by side on the emitted kernels: 2.86 against 4.24 ms; bf16: 0.848
    against 0.798 ms, not taken)."""
    loop.hoist(f"{tiles} > for {tile} > def {acc}")
    loop.fission(f"{tiles} > for {tile} > before for {slices}")
    loop.fission(f"{tiles} > for {tile}#2 > after for {slices}")
    loop.swap(f"{tiles} > for {tile}#2")


def output_by_columns(full: str, d: int) -> None:
    """CUDA: the output rows set to zero before the key blocks, and
    divided by their sums after, a thread per column (the columns outside
    the rows: neighbouring threads write neighbouring cells; H100, D = 128,
    by hand: 1.36 against 1.86 ms with a thread per row); the division
    joined to the copy out of the output tile, which the threads take by
    columns as well (query_blocks)."""
    loop.fission(f"{full} > for i#1 > before for d")
    gpu.map_threads(f"{full} > for i#1", "x")
    for zeroes in (2, 4):  # the output set to zero, then divided
        loop.swap(f"{full} > for i#{zeroes}")
    for zeroes in (1, 2):
        gpu.map_threads(f"{full} > for d#{zeroes}", "x")
    loop.fusion(f"{full} > for o{d}_1")
    loop.shift(f"{full} > for o{d}_1 > for o{d}_0", "bi")
    loop.fusion(f"{full} > for o{d}_1 > for o{d}_0")


def softmax_on_fragments(blocks: str, d: int) -> None:
    """CUDA: each query's softmax on the four lanes that hold its
    scores in Q K^T's accumulator tiles (gpu.warp_rows' mma form: a thread
    takes rows g and g + 8 of its warp's 16, columns 2t and 2t + 1 of each
    tile of 8), the row's max and sum folded across the quad by two xor
    shuffles each (the exp-sum first gathered apart from the running sum,
    gpu.partial_sum). Every cell of the scores is then touched by the
    thread that computed it, so the scores and exp-scores are stored as the
    lanes hold them (gpu.fragment_layout): registers, no shared tile of
    scores, and the softmax's phases meet within warps (__syncwarp). H100,
    D = 128, side by side on the emitted kernels: 0.864 and 0.873 ms
    against 1.242 and 1.226 with two lanes a query reading the scores from
    shared memory."""
    total = "sum_h" if d == 64 else "sum_h_1"
    gpu.partial_sum(f"{blocks} > for i > for j#3", f"{total}[i - bi]")
    gpu.warp_rows(f"{blocks} > for i", 4, mma=True)
    for scores in (f"s{d}_h", f"sc{d}"):
        gpu.fragment_layout(f"{blocks} > def {scores}")


def flash_mma(h: str, d: int) -> None:
    """CUDA, on the tensor cores, for the copy of the head loop `h` where
    D == d: a block per (head, 64 queries) and the key-block loop outside
    the queries, up to the diagonal; the diagonal block is masked
    (flash.mask: its keys past a query score -INFINITY), so that every key
    block runs whole (H100, bf16, D = 128: 5.86 ms against 6.86 ms with the
    diagonal apart, run by a thread per query in fp32). Q, K and V tiles
    (of KEYS keys) are staged in shared memory (K and V in 16-byte pieces
    by the block's threads, asynchronously: V's copy runs under the
    softmax), and the 64 x KEYS scores (S = Q K^T) and the update of the
    64 x d output (O += P V, P the exp-scores, copied in bfloat16 for bf16)
    are warp tile products (gpu.mma over k-slices: each lane's accumulators
    in registers across them, fp32; V read k-major, as copied: for bf16
    ldmatrix.trans in CUDA, 1.25 against 1.38 ms with V copied transposed
    a column per thread, H100, D = 128), the block's four warps taking a
    row tile each (gpu.warps), a slice's A fragment loaded once for all the
    tiles of its row (slices_outside_tiles: Q K^T; P V in fp32); between
    them the online softmax runs on the lanes that hold the scores
    (softmax_on_fragments), which stay in registers. The output tile stays
    in the lanes' registers across the key blocks (output_in_registers).
    Rows of the shared tiles are padded against bank conflicts (gpu.pad):
    the lanes' fragments take rows of q, k and p (bf16: pairs of cells, 8
    cells of padding; fp32: a cell at columns t and t + 4 of rows g, 4
    cells: lane 4g + t on bank 4g + t) and columns of v (8 cells: lane
    4g + t reads row t, bank 8t + g); the output's copy out is read down
    its columns."""
    full, shape = query_blocks(h, d)
    blocks = f"{full} > for bj"
    flash.drop_guard(f"{blocks} > for i > 'if (bj < i + 1)'")
    flash.mask(blocks)
    loop.hoist(f"{blocks} > for j#1 > def s", f"s{d}")
    loop.fission(f"{blocks} > for j#1 > after 's{d}[j - bj] = 0.0f'")
    loop.fission(f"{blocks} > for j#2 > after for d")
    flash.move_up(f"{blocks} > for i > '] = max_val_blk;'", f"{blocks} > for i > def rescale")
    loop.hoist(f"{blocks} > for i > def s{d}")
    loop.hoist(f"{blocks} > for i > def scores_blk", f"sc{d}")
    loop.fission(f"{blocks} > for i > after for j#1")
    loop.fission(f"{blocks} > for i#2 > after for j#1")
    loop.fission(f"{blocks} > for i#3 > after for j#3")
    # K's and V's tiles in 16-byte pieces by the block's threads, straight
    # from global to shared memory (cp.async)
    for array, phase in (("k", 2), ("v", 4)):
        gpu.stage(f"{blocks} > for i#{phase}", array, f"{array}{d}", shape, region=["h:1", f"bj:{KEYS}", f"0:{d}"],
                  vector=128, index=f"{array}{d}_")
        gpu.async_copy(f"{blocks} > for c{array}{d}_1")
    gpu.stage(f"{blocks} > for i#4", f"sc{d}", f"p{d}", axes=["x", None], index=f"p{d}_")
    if BF16:
        matrix.set_precision(f"{full} > def p{d}", "otp_bf16")
    # S = Q K^T: 4 x 2 tiles of 16 x 8, k-slices of 16 along d
    mi, nj, kd, mo, nd = (f"{tile}{d}" for tile in ("mi", "nj", "kd", "mo", "nd"))
    tile_product(blocks, "i#2", "j", "d", (mi, nj, kd), f"lane{d}")
    # O += P V: 4 x (d / 8) tiles of 16 x 8, k-slices of 16 along the block's keys
    kj = f"kj{d}"
    loop.swap(f"{blocks} > for i#3 > for j")
    tile_product(blocks, "i#3", "d", "j", (mo, nd, kj), f"lane{d}_pv")
    output_in_registers(full, blocks, d)
    scores_from_zero(blocks, d)
    slices_outside_tiles(f"{blocks} > for lane{d}_t > for mi{d}", f"nj{d}", f"lane{d}_acc", f"kd{d}")
    if not BF16:  # P's fragments split once for the d / 8 tiles, not once for each
        slices_outside_tiles(f"{blocks} > for lane{d}_pv_t > for mo{d}", f"nd{d}", f"lane{d}_pv_acc", f"kj{d}")
    # rows padded against bank conflicts: a thread per column reads down the
    # columns of ob; the lanes' fragments take rows g of Q, K, V and P
    rows = 8 if BF16 else 4
    for array, amount in (("ob", 1), ("q", rows), ("k", rows), ("v", 8), ("p", rows)):
        gpu.pad(f"{full} > def {array}{d}", amount)
    # the running max and sum's start, the division by the sum
    output_by_columns(full, d)
    softmax_on_fragments(blocks, d)


def thread_per_query(h: str, queries: str, d: int = 0) -> None:
    """CUDA, for what flash_mma does not cover: a block per (head, 64
    queries), a thread per query, reading k and v where they are; for a
    constant D = d (the last S % 64 queries of the copies for D == 64 and
    128), the query's row of q and its output row in local arrays across
    the key blocks (matrix.local_buffer), rather than read, and the output
    updated, in global memory at every key."""
    if d:
        for array in ("out", "q"):
            matrix.local_buffer(f"{h} > for {queries} > for i > for bj", array, f"{array}_row{d}",
                                shape=["H", "S", d])
    gpu.map_blocks(h, "y")
    gpu.map_blocks(f"{h} > for {queries}", "x")
    gpu.map_threads(f"{h} > for {queries} > for i", "x")


if BF16:  # the caller passes bfloat16 q, k and v, as to FlashAttention
    for param in ("q", "k", "v"):
        matrix.set_precision(f"attention > param {param}", "otp_bf16")
if target() == "cuda":
    # 1b. (CUDA) the scores multiplied by 1 / scale, computed once (H100,
    #     bf16, D = 128, by hand on the emitted kernel: 0.799 and 0.805 ms
    #     against 0.867 and 0.850 with a division a score)
    arith.reciprocal("attention > expr 's / scale'")
    variable.bind("attention > expr '1.0f / scale'", "rscale")
    for _ in range(3):
        loop.move_out("attention > def rscale")
    # 2. (CUDA) one streaming pass over key blocks of 32; 3. blocks of 64
    #    queries (the last S % 64 apart), a copy of the code for D == 64 and
    #    for D == 128 (constant tile sizes), each head loop split in two
    flash.online_softmax("attention > for i", KEYS)
    flash.drop_buffer("attention > def scores")
    loop.split("attention > for i", "S - S % 64")
    loop.tile("attention > for i#1", 64)
    flash.version("attention > for h", "D", 64)
    flash.version("attention > for h#2", "D", 128)
    for k in (1, 3, 5):
        loop.fission(f"attention > for h#{k} > after for bi")
        loop.tile(f"attention > for h#{k + 1} > for i", 64, f"bq{k}", "min")
    # 4. shared K and V tiles, Q and output rows in registers, for D == 64 and 128
    flash_mma("attention > for h#1", 64)
    flash_mma("attention > for h#3", 128)
    for k in (1, 3, 5):
        thread_per_query(f"attention > for h#{k + 1}", f"bq{k}", {1: 64, 3: 128}.get(k, 0))
    thread_per_query("attention > for h#5", "bi")
    # 5. the GPU's approximate exponential and division (__expf, __fdividef), as nvcc's --use_fast_math
    gpu.fast_math("attention")
else:
    # 2. one streaming pass over key blocks
    flash.online_softmax("attention > for i", 64)
    flash.drop_buffer("attention > def scores")

    # 3. query blocks, key blocks up to the diagonal
    loop.tile("attention > for i", 64, mode="min")
    key_blocks_outside("attention > for i")
    variable.local_accumulator("attention > for bj > for j#3", "sum_h[i - bi]")

    # 4. D == 64: whole key blocks, K tile transposed, Q tile and output row local
    flash.version("attention > for h", "D", 64)
    flash.split_blocks("attention > for h#1 > for bj", "bi")
    full, diagonal = "attention > for h#1 > for bj#1", "attention > for h#1 > for bj#2"
    flash.full_blocks(full)
    matrix.local_buffer(f"{full} > for j#4", "out", "o", shape=["H", "S", 64])
    matrix.local_buffer(f"{diagonal} > for j#4", "out", "o_diag", shape=["H", "S", 64])
    loop.hoist(f"{full} > for j#1 > def s")
    loop.fission(f"{full} > for j#1 > after 's_h[j - bj] = 0.0f'")
    loop.fission(f"{full} > for j#2 > after for d")
    loop.swap(f"{full} > for j#2")
    matrix.local_buffer(f"{full} > for i", "k", "kt", shape=["H", "S", 64])
    matrix.reorder_dims(f"{full} > def kt", [1, 0])
    matrix.local_buffer(full, "q", "q_tile", shape=["H", "S", 64])
    matrix.local_buffer(f"{full} > for i", "v", "vt", shape=["H", "S", 64])

    # 4b. four queries at a time in the whole blocks
    flash.drop_guard(f"{full} > for i > 'if (bj < i + 1)'")
    flash.move_up(f"{full} > for i > 'max_val_h[i - bi] = max_val_blk;'", f"{full} > for i > def rescale")
    flash.split_tail(f"{full} > for i", 4)
    loop.tile(f"{full} > for i#1", 4, "i4")
    quad = f"{full} > for i4 > for i"
    for name, new in (("s_h", "s4"), ("scores_blk", "p4"), ("o", "o4")):
        loop.hoist(f"{quad} > def {name}", new)
    quads = f"{full} > for i4"
    loop.fission(f"{quad} > after for j#1")
    loop.fission(f"{quads} > for i#2 > after for d#1")
    loop.fission(f"{quads} > for i#3 > after for i0#1")
    loop.fission(f"{quads} > for i#4 > after for j")
    loop.swap(f"{quads} > for i#2")
    loop.swap(f"{quads} > for i#4")

    # 5. threads and AVX-512
    parallel.parallel_for("attention > for h#1", collapse=2)
    vector.vectorize("attention > for h#1 > for bi > for i#1")
    vector.vectorize("attention_avx512 > for h#1 > for bj#1 > for i4", reduce=True)
    vector.vectorize("attention_avx512 > for h#1 > for bj#1 > for i#6", reduce=True)
    vector.vectorize("attention_avx512 > for h#1 > for bj#2 > for i", reduce=True)
    vector.vectorize("attention_avx512 > for h#1 > for bi > for i#9")
