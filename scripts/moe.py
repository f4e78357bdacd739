"""Mixture of experts: from the per-token loop over its top-K experts to
work regrouped per expert, each expert's weights streamed once per batch.

1. Routing for every token first: the selected experts and their weights
   get a row per token (llm.expand_buffer), the token loop is split after
   the routing and the zeroing of out (loop.fission). The hidden buffers of
   the FFN get a row per (token, slot) (a fission so that their first use
   only writes them, llm.expand_buffer over the slots, llm.batch_buffer
   over the tokens), so that no two work items share scratch memory.
2. moe.regroup: the (token, slot) items run expert by expert, each phase
   of the FFN for every item of the expert before the next phase, and the
   two products (w1/w3 times x, w2 times the activations) walk the weight
   rows outermost: matrix-matrix products over the expert's batch.
3. The weight rows are tiled so that a block stays in L1 while every item
   of the batch passes: 16 rows of w1 and w3 cut into slices of 256
   columns (the expert test moves inside the slice loop, moe.sink_guard,
   and each item's partial sums go back to its hidden row after a slice),
   and 4 rows of w2. The row blocks and the item loops run in parallel, and
   the dot products become AVX-512 (or AVX2) code with four vector
   accumulators.
"""
from optitrust_py.script import bench, load
from transformations import llm, loop, moe, parallel, variable, vector

# level 3 at 3 experts: its case split over a token's routing (top-2 of E)
# tests 14 data conditions there, and 32 at E = 5, past what it splits
load("../c_sources/moe.c", sizes={"T": 7, "dim": 24, "hidden": 20, "E": 5, "K": 2},
     check_sizes=[{"T": 3, "dim": 9, "hidden": 20, "E": 3, "K": 2}])
bench("moe", sizes={"T": 512, "dim": 512, "hidden": 1408, "E": 8, "K": 2},
      flops="T*2*dim*E + T*K*6*dim*hidden")

llm.expand_buffer("moe > for t", "sel", "K")
llm.expand_buffer("moe > for t", "wsel", "K")
loop.fission("moe > for t > for s#5 > for i#1 > after 'hb2[i] = 0.0f'")
llm.expand_buffer("moe > for t > for s#5", "hb", "hidden")
llm.expand_buffer("moe > for t > for s#5", "hb2", "hidden")
llm.batch_buffer("moe > for t", "hb")
llm.batch_buffer("moe > for t", "hb2")
loop.fission("moe > for t > after for i#1")
moe.regroup("moe > for t#2")
loop.tile("moe > for e#4 > for i#2", 16, "bi", "min")
loop.tile("moe > for e#4 > for bi > for j", 256, "bj", "min")
moe.sink_guard("moe > for e#4 > for bi > 'if (sel[t * K + s] == e)'")
loop.reorder("moe > for e#4 > for bi", ["bi", "bj", "t", "s", "i"])
loop.tile("moe > for e#4 > for i#4", 4, "bo", "min")
loop.reorder("moe > for e#4 > for bo", ["bo", "t", "s", "i"])
variable.local_accumulator("moe > for e#4 > for bi > for j", "hb_b[t * (K * hidden) + (s * hidden + i)]")
variable.local_accumulator("moe > for e#4 > for bi > for j", "hb2_b[t * (K * hidden) + (s * hidden + i)]")
parallel.parallel_for("moe > for e#4 > for t#1", "dynamic, 16")
parallel.parallel_for("moe > for e#4 > for bi", "dynamic")
parallel.parallel_for("moe > for e#4 > for t#3", "dynamic, 16")
parallel.parallel_for("moe > for e#4 > for bo", "dynamic")
vector.vectorize("moe > for e#4 > for bi")
vector.vectorize("moe_avx512 > for e#4 > for bo")
