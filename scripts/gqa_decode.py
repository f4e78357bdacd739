"""Grouped-query attention, one decode step: the query heads that share a
kv head walk the K/V caches together, so each cache row is loaded once per
group of G = H / KVH heads instead of once per head.

1. The group size gets a name, G, computed once before the head loop.
2. llm.group_heads: the head loop h becomes a loop over kv heads g and one
   over the G heads r of a group (h = g * G + r, so the local `g = h / G`
   is the loop index, proved with Z3 from H % KVH == 0); the scores buffer
   gets one row per head of a group (each head wrote all its scores before
   reading one, which level 2 proves); the loops over cache positions t go
   outside the heads of the group, for the scores (q . k) and for the
   weighted sum of V, while the softmax stays per head.
3. The kv heads run in parallel (each has its own scores rows, now
   allocated inside the loop), handed out dynamically so that a core
   slowed by other work does not hold the others up, and the loops along D
   (dot products, weighted sums) and along t (softmax) become AVX-512 (or
   AVX2). The append of k_new and v_new (2 * KVH * D floats) stays
   sequential: a parallel region would cost more than it saves.

q and out are parameters, laid out [H][D] by the caller: the heads of a
group are already contiguous there (h = g * G + r), so their layout stays.

With `--target cuda`, step 1 is shared and the script ends in
flash-decoding, a kernel per pass: the append (a block per kv head); the
chunks (a block per kv head and chunk of CHUNK cached positions: each
query head's row of scores is split into chunks computed apart, each with
its own max, sum and partial output, flash.split_softmax, proved by level
2's softmax_merge; the G heads of a group share the chunk's K and V rows;
for D == 128 and G == 4, copies with constant sizes, the K tile, the
group's queries and the chunk's scores sit in shared memory, rows padded
against bank conflicts, each head's max and sum over the chunk are a
warp's (gpu.warp_rows: the lanes' partial results folded by xor
shuffles), and a thread's G partial outputs start at zero in registers,
matrix.local_buffer absorbing the zeroing before the sum); and
the combination (a block per query head: the
max over the chunks reduced over the block's threads, a thread per chunk
turns its max into its weight, the weighted sum is reduced, and a thread
per d adds the chunks' partial outputs times their weights, 16 chunks an
iteration, loop.unroll, so that their loads are in flight together: 9 against
11 us at batch 8). The chunks'
parts and the scores live in device scratch buffers kept between calls.
Whole chunks run a constant trip count; the last, shorter chunk has its
own kernel.

With `--target cuda --precision bf16` the caller holds the caches in
bfloat16 (as an LLM's KV cache is), halving the bytes each chunk reads:
the first CUDA steps narrow the parameters k_cache and v_cache to otp_bf16
(`matrix.set_precision`, lossy, relative tolerance 8 x 2^-8 each; --exec
gives those steps the caches' inputs rounded to bfloat16 and the step
before the plain ones). The append then rounds k_new and v_new, each read
converts to float, the staged K tile stays bfloat16 in shared memory,
copied 16 bytes (8 values) a load by the block's 128 threads
(gpu.stage's `vector`), a thread per key computes the G scores of its
key together (loop.hoist, fission and swap: G sums in registers), reading
its K row and q 16 bytes at a time (loop.tile, matrix.local_buffer,
gpu.vector_copy; q's rows padded by 4, not 1, to stay aligned), the
chunk's scores are laid out [key][head] so that the weighted sum of V
reads a key's G weights in one 16-byte read (matrix.reorder_dims) and
are not copied in from the scratch buffer, since the scores' loop writes
them all first (matrix.drop_overwritten), nor back out, since only the
last, shorter chunk's kernel reads that buffer after, at other cells
(matrix.drop_dead_store), the V tile is staged the same way, the copies
of K and V are issued first, before q's (flash.move_up), and are
asynchronous (gpu.async_copy: cp.async, the scores wait for K's tile
only, so V's arrives under the scores, max and sum; H100, batch 8, side
by side: chunks' kernel 61.9 against 64.8 us), and the chunks are 64
positions long. The
bench counts 2 bytes a cached value, checks within 2e-2 (against the
original on the unrounded inputs, and against torch) and gives torch's
SDPA the same bfloat16 caches (q converted once, untimed). Without
`--precision bf16` nothing changes.
"""
from optitrust_py.script import bench, load, precision, target
from transformations import flash, gpu, llm, loop, matrix, parallel, variable, vector

BF16 = target() == "cuda" and precision() == "bf16"
"""The caches are held in bfloat16 by the caller (CUDA, `--precision bf16`)."""

CHUNK = 64 if BF16 else 32
"""Cached positions per chunk in the CUDA flash-decoding (a block each):
with bfloat16 caches a chunk of 64 halves the partial outputs that the
combination reads, for the same time in the chunks (measured side by side
on the H100 at B=8: 118 against 121 us a call; in fp32, 64 was slower)."""


def chunk_kernel(g: str, width: str, group: str, staged: bool = False) -> None:
    """CUDA, the chunks of the kv-head loop `g`: a block per (kv head,
    chunk), the passes of a chunk each over the G heads of the group: a
    thread per (key, head) for the scores (with `staged`, the K tile in shared
    memory, copied a column per thread, its rows padded against bank
    conflicts; with bfloat16 caches, copied 16 bytes a load, and a thread
    per key for its G scores, see the module), a thread per head for the chunk's max and sum (with `staged`,
    a warp per head: on the H100 at batch 8, 78 against 88 us for the
    chunks' kernel, side by side), a thread per d for the partial output (its sums over the chunk's keys in registers:
    with `staged`, the G heads' sums together, each V element loaded once)."""
    chunk = f"{g} > for bt"
    if staged:  # the tiles of scores and q are staged around the passes, in a block
        gpu.map_blocks(g, "y")
        gpu.map_blocks(chunk, "x")
        gpu.stage(f"{chunk} > for r", "scores", "sc", ["H", "pos + 1"], axes=[None, "x"],
                  region=[f"g * {group}:{group}", f"bt * {CHUNK}:{CHUNK}"])
        gpu.stage(f"{chunk} > for r", "q", "qs", ["H", width], axes=[None, "x"],
                  region=[f"g * {group}:{group}", f"0:{width}"])
        gpu.pad("gqa_decode > def qs", 4 if BF16 else 1)
    loop.fission(f"{chunk} > for r > after for t#1")
    loop.fission(f"{chunk} > for r#2 > before for d#1")
    loop.fission(f"{chunk} > for r#3 > after for d#1")
    loop.swap(f"{chunk} > for r#1")
    loop.swap(f"{chunk} > for r#3")
    if staged:  # d, then keys, then the G heads: each V element loaded feeds G sums
        loop.swap(f"{chunk} > for r#4")
        loop.swap(f"{chunk} > for t#4 > for r")
        loop.swap(f"{chunk} > for t#4")
        loop.fusion(f"{chunk} > for d#2")
    else:
        loop.swap(f"{chunk} > for r#4 > for t")
        loop.swap(f"{chunk} > for r#4")
        gpu.partial_sum(f"{chunk} > for d#3 > for r > for t",
                        f"out_parts_b[(g * {group} + r) * ((pos + 1 + {CHUNK - 1}) / {CHUNK} * {width}) + (bt * {width} + d)]")
    if staged:
        if BF16:  # 16-byte copies of the K tile: 8 bfloat16 a load instead of 1
            gpu.stage(f"{chunk} > for t#1", "k_cache", "ks", ["KVH", "SMAX", width],
                      region=["g:1", f"bt * {CHUNK}:{CHUNK}", f"0:{width}"], vector=128)
            gpu.pad("gqa_decode > def ks", 8)
            # the V tile too, its copy right after K's, both asynchronous: V's loads run under the scores
            gpu.stage(f"{chunk} > for d#2", "v_cache", "vs", ["KVH", "SMAX", width],
                      region=["g:1", f"bt * {CHUNK}:{CHUNK}", f"0:{width}"], vector=128)
            flash.move_up("gqa_decode > def ks", "gqa_decode > def qs")  # K's copy first, before q's
            flash.move_up(f"{chunk} > for t_2", "gqa_decode > def ks")
            flash.move_up("gqa_decode > def vs", f"{chunk} > for t_2")
            flash.move_up(f"{chunk} > for t_3", "gqa_decode > def vs")
            gpu.async_copy(f"{chunk} > for t_2 > for ci1_2")
            gpu.async_copy(f"{chunk} > for t_3 > for ci1_2_1")
        else:  # a column per thread (16-byte copies of fp32 were slower, measured)
            gpu.stage(f"{chunk} > for t#1", "k_cache", "ks", ["KVH", "SMAX", width], axes=[None, "x"],
                      region=["g:1", f"bt * {CHUNK}:{CHUNK}", f"0:{width}"])
            gpu.pad("gqa_decode > def ks")
    else:  # mapped last: level 2 re-proves a kernel's mapped loops at each step that changes it
        gpu.map_blocks(g, "y")
        gpu.map_blocks(chunk, "x")
    if staged and BF16:  # a thread per key, its G scores together from 16-byte reads of its K row and of q
        loop.hoist(f"{chunk} > for t#1 > for r > def s", "s4")
        loop.fission(f"{chunk} > for t#1 > for r > after for d")
        loop.fission(f"{chunk} > for t#1 > for r#1 > after 's4[r] = 0.0f'")
        loop.swap(f"{chunk} > for t#1 > for r#2")
        loop.tile(f"{chunk} > for t#1 > for d", 8)
        for tile, run, copy in (("ks", "kr", "i0_4"), ("qs", "qr", "i1_2")):
            matrix.local_buffer(f"{chunk} > for t#1 > for bd > for d", tile, run)
            gpu.vector_copy(f"{chunk} > for t#1 > for bd > for {copy}")
        # the scores' loop writes the whole tile of scores first: no copy in
        matrix.drop_overwritten(f"{chunk} > for i1#1")
        # nor copied back out: only the last chunk's kernel reads the scratch buffer after, at other cells
        matrix.drop_dead_store(f"{chunk} > for i1")
        gpu.cyclic(f"{chunk} > for t#1", 128)
    else:
        pairs = "tr" + g.split("#")[1]
        loop.collapse(f"{chunk} > for t#1", pairs)
        gpu.cyclic(f"{chunk} > for {pairs}", 128)
    if staged:  # a warp per head for the chunk's max and sum
        gpu.warp_rows(f"{chunk} > for r#{4 if BF16 else 1}", 32)
    else:
        gpu.cyclic(f"{chunk} > for r#1", 128)
    gpu.cyclic(f"{chunk} > for d#2", 128)
    if staged:  # the G sums of a thread's d in registers, from 0
        matrix.local_buffer(f"{chunk} > for d#2 > for t", "out_parts_b", "acc",
                            ["H", f"(pos + 1 + {CHUNK - 1}) / {CHUNK}", width],
                            region=[f"g * {group}:{group}", "bt:1", "d:1"], init=True)
        if BF16:  # the chunk's scores [key][head]: the G weights of a key, one 16-byte read
            matrix.reorder_dims("gqa_decode > def sc", [1, 0])
            matrix.local_buffer(f"{chunk} > for d#2 > for t > for r", "sc", "wr")
            gpu.vector_copy(f"{chunk} > for d#2 > for t > for i0_6")
    else:
        gpu.cyclic(f"{chunk} > for d#3", 128)

load("../c_sources/gqa_decode.c", sizes={"H": 8, "KVH": 2, "D": 20, "SMAX": 40, "pos": 33})
APPEND = ("K = k_cache.view(KVH, SMAX, D); V = v_cache.view(KVH, SMAX, D); "
          "K[:, pos] = k_new.view(KVH, D); V[:, pos] = v_new.view(KVH, D); ")
SDPA = "torch.nn.functional.scaled_dot_product_attention"
if BF16:  # the caches are the GPU's bfloat16 tensors, read by torch as they are: 2 bytes a value
    bench("gqa_decode", sizes={"H": 32, "KVH": 8, "D": 128, "SMAX": 4096, "pos": 4095}, bytes="4*KVH*(pos+1)*D",
          tolerance=2e-2,
          torch=APPEND + f"out = {SDPA}(bf16(q).view(1, H, 1, D), K[None, :, :pos + 1], V[None, :, :pos + 1], "
                         "enable_gqa=True).reshape(-1)")
else:
    bench("gqa_decode", sizes={"H": 32, "KVH": 8, "D": 128, "SMAX": 4096, "pos": 4095}, bytes="8*KVH*(pos+1)*D",
          torch=APPEND + f"out = {SDPA}(q.view(1, H, 1, D), K[None, :, :pos + 1], V[None, :, :pos + 1], "
                         "enable_gqa=True).reshape(-1)")

variable.bind("gqa_decode > expr 'H / KVH'", "G")
loop.move_out("gqa_decode > for h > def G")

if target() == "cuda":
    if BF16:  # the caller's caches in bfloat16: reads convert to float, the append rounds
        matrix.set_precision("gqa_decode > param k_cache", "otp_bf16")
        matrix.set_precision("gqa_decode > param v_cache", "otp_bf16")
    # 3. (CUDA) the append: a block per kv head
    gpu.map_blocks("gqa_decode > for g#1", "x")
    gpu.cyclic("gqa_decode > for g#1 > for d", 128)
    # 4. flash-decoding: each query head's row of scores gets its
    # own row of the buffer, the row is split into chunks of CHUNK keys
    # computed apart and combined after, the chunks' parts get a row per head
    llm.expand_buffer("gqa_decode > for h", "scores", "pos + 1")
    flash.split_softmax("gqa_decode > for h", CHUNK)
    for part in ("max_val_parts", "sum_parts", "out_parts"):
        llm.batch_buffer("gqa_decode > for h", part)
    loop.fission("gqa_decode > for h > after for bt#1")
    # 5. the chunks of the G heads of a group together: whole chunks (a
    # constant trip count), for D == 128 and G == 4 (copies: constant
    # sizes) with the K tile staged in shared memory, then the last chunk
    llm.group_index("gqa_decode > for h#1", "G")
    loop.swap("gqa_decode > for g#2 > for r")
    loop.split("gqa_decode > for g#2 > for bt", f"(pos + 1) / {CHUNK}")
    loop.fission("gqa_decode > for g#2 > after for bt#1")
    flash.full_blocks("gqa_decode > for g#2 > for bt")
    flash.version("gqa_decode > for g#2", "D", 128)
    flash.version("gqa_decode > for g#2", "G", 4)
    chunk_kernel("gqa_decode > for g#2", "128", "4", staged=True)
    chunk_kernel("gqa_decode > for g#3", "128", "G")
    chunk_kernel("gqa_decode > for g#4", "D", "G")
    chunk_kernel("gqa_decode > for g#5", "D", "G")
    # 6. the combination: a block per query head, the max over the chunks
    # reduced over the block's threads, a thread per chunk for its weight,
    # the sum reduced, then a thread per d, its sum over the chunks in a
    # register
    loop.swap("gqa_decode > for h > for bt#4")
    gpu.partial_sum("gqa_decode > for h > for d#2 > for bt", "out[h * D + d]")
    loop.unroll("gqa_decode > for h > for d#2 > for bt", factor=16)
    gpu.map_blocks("gqa_decode > for h", "x")
    gpu.reduce("gqa_decode > for h > for bt#1", "max_val", 128)
    gpu.cyclic("gqa_decode > for h > for bt#2", 128)
    gpu.reduce("gqa_decode > for h > for bt#3", "sum", 128)
    for k in (1, 2, 3):
        gpu.cyclic(f"gqa_decode > for h > for d#{k}", 128)
else:
    llm.group_heads("gqa_decode > for h", "G", "scores", "pos + 1")
    parallel.parallel_for("gqa_decode > for g#2", schedule="dynamic")
    vector.vectorize("gqa_decode > for g#2")
