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
from optitrust_py.script import bench, load
from transformations import llm, loop, parallel, variable, vector

load("../c_sources/gqa_decode.c", sizes={"H": 8, "KVH": 2, "D": 20, "SMAX": 40, "pos": 33})
bench("gqa_decode", sizes={"H": 32, "KVH": 8, "D": 128, "SMAX": 4096, "pos": 4095}, bytes="8*KVH*(pos+1)*D")

variable.bind("gqa_decode > expr 'H / KVH'", "G")
loop.move_out("gqa_decode > for h > def G")
llm.group_heads("gqa_decode > for h", "G", "scores", "pos + 1")
parallel.parallel_for("gqa_decode > for g#2", schedule="dynamic")
vector.vectorize("gqa_decode > for g#2")
