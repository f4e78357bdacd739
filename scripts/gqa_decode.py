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

With `--target cuda`, steps 1 and 2 are shared and the kv-head loop is cut
into one kernel per pass, the scores in one buffer for all kv heads
(device scratch, kept between calls): the append (a block per kv head);
the scores (a block per kv head and TILE positions, the G heads of the
group together; for D == 128 the K tile is staged in shared memory by a
coalesced copy, its rows padded against bank conflicts); the softmax of
each head's row (a block per head, max and sum reduced over 1024 threads);
the weighted sum of V split over blocks of CHUNK positions (a thread per
d sums the chunk for each head of the group, then adds it into out with
one atomic addition: gpu.map_blocks(sums=["out"])). This is a split-K
decode, not flash-decoding: the blocks share the row's max and sum, which
the softmax kernel computes first, instead of keeping a partial max and
sum per chunk and rescaling in a combine kernel (that rescaling is the
online-softmax recurrence, whose level-2 obligation only
flash.online_softmax's sequential form has).
"""
from optitrust_py.script import bench, load, target
from transformations import flash, gpu, llm, loop, parallel, variable, vector

CHUNK = 32
"""Cached positions per block in the CUDA weighted sum of V."""
TILE = 32
"""Cached positions per block in the CUDA scores (a K tile in shared memory)."""


def weighted_sum(g: str, chunk: str, mode: str) -> None:
    """CUDA, the weighted sum of V in the kv-head loop `g`: a block per (kv
    head, chunk of CHUNK positions), a thread per d summing the chunk for
    each query head of the group, then one atomic addition into out."""
    loop.tile(f"{g} > for t", CHUNK, chunk, mode)
    loop.swap(f"{g} > for {chunk} > for t")
    loop.swap(f"{g} > for {chunk} > for r > for t")
    loop.swap(f"{g} > for {chunk} > for r")
    gpu.partial_sum(f"{g} > for {chunk} > for d > for r > for t", "out[(g * G + r) * D + d]")
    gpu.map_blocks(g, "y")
    gpu.map_blocks(f"{g} > for {chunk}", "x", sums=["out"])
    gpu.cyclic(f"{g} > for {chunk} > for d", 128)


def thread_per_position(g: str, tile: str) -> None:
    """CUDA: a block per (kv head, tile of positions), a thread per position."""
    gpu.map_blocks(g, "y")
    gpu.map_blocks(f"{g} > for {tile}", "x")
    gpu.map_threads(f"{g} > for {tile} > for t", "x")

load("../c_sources/gqa_decode.c", sizes={"H": 8, "KVH": 2, "D": 20, "SMAX": 40, "pos": 33})
bench("gqa_decode", sizes={"H": 32, "KVH": 8, "D": 128, "SMAX": 4096, "pos": 4095}, bytes="8*KVH*(pos+1)*D",
      torch="K = k_cache.view(KVH, SMAX, D); V = v_cache.view(KVH, SMAX, D); "
            "K[:, pos] = k_new.view(KVH, D); V[:, pos] = v_new.view(KVH, D); "
            "out = torch.nn.functional.scaled_dot_product_attention(q.view(1, H, 1, D), K[None, :, :pos + 1], "
            "V[None, :, :pos + 1], enable_gqa=True).reshape(-1)")

variable.bind("gqa_decode > expr 'H / KVH'", "G")
loop.move_out("gqa_decode > for h > def G")
llm.group_heads("gqa_decode > for h", "G", "scores", "pos + 1")

if target() == "cuda":
    # 4. (CUDA) one scores buffer for all kv heads, and a kernel per pass
    llm.batch_buffer("gqa_decode > for g#2", "scores")
    loop.fission("gqa_decode > for g#2 > after for t#1")
    loop.fission("gqa_decode > for g#3 > after for r#1")
    # the append: a block per kv head
    gpu.map_blocks("gqa_decode > for g#1", "x")
    gpu.cyclic("gqa_decode > for g#1 > for d", 128)
    # softmax: a block per query head, reductions over the block's threads
    gpu.map_blocks("gqa_decode > for g#3", "y")
    gpu.map_blocks("gqa_decode > for g#3 > for r", "x")
    gpu.reduce("gqa_decode > for g#3 > for r > for t#1", "max_val", 1024)
    gpu.reduce("gqa_decode > for g#3 > for r > for t#2", "sum", 1024)
    gpu.cyclic("gqa_decode > for g#3 > for r > for t#3", 1024)
    gpu.cyclic("gqa_decode > for g#3 > for r > for d", 1024)
    # weighted sum of V: a block per (kv head, chunk of positions), a
    # thread per d, the chunk's sum added into out atomically; whole chunks
    # (a constant count, which nvcc unrolls), then the last (pos + 1) % CHUNK
    loop.split("gqa_decode > for g#4 > for t", f"pos + 1 - (pos + 1) % {CHUNK}")
    loop.fission("gqa_decode > for g#4 > after for t#1")
    weighted_sum("gqa_decode > for g#4", "bc", "divides")
    weighted_sum("gqa_decode > for g#5", "bd", "min")
    # scores: whole tiles of TILE positions, then the last (pos + 1) % TILE;
    # for D == 128 (a copy), a block per (kv head, TILE positions) stages the
    # K tile in shared memory (thread d copies column d of each row:
    # coalesced), its rows padded to 129 floats so that the threads, a
    # position each, read distinct banks; other D read K where it is
    loop.split("gqa_decode > for g#2 > for t", f"pos + 1 - (pos + 1) % {TILE}")
    loop.fission("gqa_decode > for g#2 > after for t#1")
    flash.version("gqa_decode > for g#2", "D", 128)
    loop.tile("gqa_decode > for g#2 > for t", TILE, "bt")
    gpu.map_blocks("gqa_decode > for g#2", "y")
    gpu.map_blocks("gqa_decode > for g#2 > for bt", "x")
    gpu.stage("gqa_decode > for g#2 > for bt > for t", "k_cache", "ks", ["KVH", "SMAX", 128], axes=[None, "x"],
              region=["g:1", f"bt:{TILE}", "0:128"])
    gpu.pad("gqa_decode > def ks")
    gpu.map_threads("gqa_decode > for g#2 > for bt > for t", "x")
    loop.tile("gqa_decode > for g#3 > for t", TILE, "bu")
    thread_per_position("gqa_decode > for g#3", "bu")
    loop.tile("gqa_decode > for g#4 > for t", TILE, "bv", "min")
    thread_per_position("gqa_decode > for g#4", "bv")
else:
    parallel.parallel_for("gqa_decode > for g#2", schedule="dynamic")
    vector.vectorize("gqa_decode > for g#2")
