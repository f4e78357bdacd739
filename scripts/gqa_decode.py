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
"""
from optitrust_py.script import bench, load, target
from transformations import gpu, llm, loop, parallel, variable, vector

CHUNK = 64
"""Cached positions per block in the CUDA weighted sum of V."""

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
    # scores: a block per (kv head, 128 positions), a thread per position
    loop.tile("gqa_decode > for g#2 > for t", 128, "bt", "min")
    gpu.map_blocks("gqa_decode > for g#2", "y")
    gpu.map_blocks("gqa_decode > for g#2 > for bt", "x")
    gpu.map_threads("gqa_decode > for g#2 > for bt > for t", "x")
    # softmax: a block per query head, reductions over the block's threads
    gpu.map_blocks("gqa_decode > for g#3", "y")
    gpu.map_blocks("gqa_decode > for g#3 > for r", "x")
    gpu.reduce("gqa_decode > for g#3 > for r > for t#1", "max_val", 256)
    gpu.reduce("gqa_decode > for g#3 > for r > for t#2", "sum", 256)
    gpu.cyclic("gqa_decode > for g#3 > for r > for t#3", 256)
    gpu.cyclic("gqa_decode > for g#3 > for r > for d", 256)
    # weighted sum of V: a block per (kv head, chunk of positions), a
    # thread per d, the chunk's sum added into out atomically
    loop.tile("gqa_decode > for g#4 > for t", CHUNK, "bc", "min")
    loop.swap("gqa_decode > for g#4 > for bc > for t")
    loop.swap("gqa_decode > for g#4 > for bc > for r > for t")
    loop.swap("gqa_decode > for g#4 > for bc > for r")
    gpu.partial_sum("gqa_decode > for g#4 > for bc > for d > for r > for t", "out[(g * G + r) * D + d]")
    gpu.map_blocks("gqa_decode > for g#4", "y")
    gpu.map_blocks("gqa_decode > for g#4 > for bc", "x", sums=["out"])
    gpu.cyclic("gqa_decode > for g#4 > for bc > for d", 128)
else:
    parallel.parallel_for("gqa_decode > for g#2", schedule="dynamic")
    vector.vectorize("gqa_decode > for g#2")
