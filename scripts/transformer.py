"""Transformer prefill: from one forward pass per prompt token to
microbatches of tokens that share each weight matrix.

0. Grouped-query attention (as in scripts/gqa_decode.py): in
   `transformer_token`, softmax_vec is inlined and llm.group_heads turns
   the head loop into kv heads g x the kv_mul query heads of a group, with
   the loops over cache positions outside the heads of a group, so each
   K/V cache row is read once per group; the scores buffer `att` gets a
   row per head of the group and is allocated per group.
1. The per-token forward (`transformer_token`) is inlined into the prompt
   loop, and its scratch buffers (xb, q, k, v, hb, ...) get one row per
   token of the prompt: the token loop's body is now only the layer loop.
2. The token loop is tiled by the microbatch size MB and the layer loop
   moves outside the tokens of a microbatch: valid because a token at layer
   l only reads the cache rows of layer l that earlier tokens wrote.
3. The layer body is split into one token loop per stage (rmsnorm, each
   projection, RoPE + cache store, attention, ...). The cut between the
   cache store and the attention is the KV-cache dependence: token t reads
   positions <= t, all written by the first loop, and none of the later
   ones.
4. Each projection becomes a matrix-matrix product: the token loop moves
   inside the loop over weight rows, so a row is read once for the whole
   microbatch; the dot products are vectorized (AVX-512, 4 vectors of
   partial sums: reassociated).

Nothing runs in parallel: the rows of each product (and the tokens of the
attention) could (level 2 proves `parallel.parallel_for` on them), but that
is 8 parallel regions per layer and microbatch, 1024 per prefill, and on
this shared 2-core machine their barriers cost more than the second core
gives (measured at T=256: 0.64 s on one thread, 4.8 s on two).

The benchmark compares outputs within 1e-3 of their largest magnitude: the
vector sums reassociate dot products of 512 to 1408 terms, and with random
weights the residual stream grows to ~1e3 over 8 layers, each feeding the
rounding differences of the last into the next (measured: 9.3e-5; at the
--exec sizes, 2 layers of width 24, the steps agree within 1e-5).
"""
from optitrust_py.script import bench, load
from transformations import llm, loop, vector

MB = 16

load("../c_sources/transformer.c",
     sizes={"T": 21, "L": 2, "dim": 24, "hidden": 40, "H": 4, "KVH": 2, "SMAX": 24})
bench("transformer_prefill",
      sizes={"T": 256, "L": 8, "dim": 512, "hidden": 1408, "H": 8, "KVH": 2, "SMAX": 256},
      flops="L*(2*T*(2*dim*dim + 2*dim*(dim*KVH/H) + 3*dim*hidden) + 2*dim*T*(T+1))",
      tolerance=1e-3)

# 0. grouped-query attention: the heads that share a kv head walk the cache
#    together (each K/V row read once per group), softmax_vec inlined first
llm.inline_call("transformer_token > call softmax_vec")
llm.group_heads("transformer_token > for l > for h", "kv_mul", "att", "pos + 1")

# 1. one forward pass per token, its buffers one row per token
llm.inline_call("transformer_prefill > call transformer_token")
for local in ["head_size", "kv_dim", "kv_mul"]:
    loop.move_out(f"transformer_prefill > for t > def {local}")
for buffer in ["xb", "xb2", "q", "k", "v", "hb", "hb2"]:
    llm.batch_buffer("transformer_prefill > for t", buffer)

# 2. microbatches, layers outside the tokens of a microbatch
loop.tile("transformer_prefill > for t", MB, mode="min")
loop.swap("transformer_prefill > for bt > for t")

# 3. one token loop per stage of the layer
for point in ["after 'rmsnorm_vec(dim, &xs[t * dim], &rms_att_w'", "after 'matvec(dim, dim, &wq'",
              "after 'matvec(dim, kv_dim, &wk'", "after 'matvec(dim, kv_dim, &wv'", "before for g",
              "after for g", "after 'matvec(dim, dim, &wo'", "after 'rmsnorm_vec(dim, &xs[t * dim], &rms_ffn_w'",
              "after 'matvec(dim, hidden, &w1'", "after 'matvec(dim, hidden, &w3'",
              "before 'matvec(hidden, dim, &w2'", "after 'matvec(hidden, dim, &w2'"]:
    loop.fission(f"transformer_prefill > {point}")

# 4. matrix-matrix products, vectors
for _ in range(7):
    llm.batch_matvec("transformer_prefill > call matvec#1")
# the token loops of the seven products are the 2nd, 3rd, 4th, 7th, 9th, 10th
# and 12th token loops of the layer
vector.vectorize("transformer_prefill > for l > for t#2")
for k in [3, 4, 7, 9, 10, 12]:
    vector.vectorize(f"transformer_prefill_avx512 > for l > for t#{k}")
