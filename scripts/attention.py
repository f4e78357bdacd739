"""Causal multi-head attention: towards the FlashAttention shape."""
from optitrust_py.script import bench, load
from transformations import flash, loop, matrix, parallel, variable, vector

load("../c_sources/attention.c", sizes={"H": 2, "S": 150, "D": 64})
bench("attention", sizes={"H": 8, "S": 4096, "D": 64}, flops="2*H*S*S*D",
      torch="out = torch.nn.functional.scaled_dot_product_attention(q.view(H, S, D), k.view(H, S, D), "
            "v.view(H, S, D), is_causal=True).reshape(-1)")

variable.bind("attention > expr 'sqrtf(D)'", "scale")
for _ in range(3):
    loop.move_out("attention > def scale")
flash.online_softmax("attention > for i", 64)
loop.tile("attention > for i", 64, mode="min")
loop.hoist("attention > for i > def max_val")
loop.hoist("attention > for i > def sum")
loop.fission("attention > for i > before for bj")
loop.fission("attention > for i#2 > after for bj")
flash.swap_triangular("attention > for i#2")
variable.local_accumulator("attention > for bj > for j#3", "sum_h[i - bi]")
flash.version("attention > for h", "D", 64)
flash.split_blocks("attention > for h#1 > for bj", "bi")
flash.full_blocks("attention > for h#1 > for bj#1")
matrix.local_buffer("attention > for h#1 > for bj#1 > for j#4", "out", "o", shape=["H", "S", 64])
matrix.local_buffer("attention > for h#1 > for bj#2 > for j#4", "out", "o_diag", shape=["H", "S", 64])
full = "attention > for h#1 > for bj#1"
loop.hoist(f"{full} > for j#1 > def s")
loop.fission(f"{full} > for j#1 > after 's_h[j - bj] = 0.0f'")
loop.fission(f"{full} > for j#2 > after for d")
loop.swap(f"{full} > for j#2")
matrix.local_buffer(f"{full} > for i", "k", "kt", shape=["H", "S", 64])
matrix.reorder_dims(f"{full} > def kt", [1, 0])
parallel.parallel_for("attention > for h#1", collapse=2)
vector.vectorize("attention > for h#1 > for bi > for i#1")
vector.vectorize("attention_avx512 > for h#1 > for bj#1 > for i")
vector.vectorize("attention_avx512 > for h#1 > for bj#2 > for i")
vector.vectorize("attention_avx512 > for h#1 > for bi > for i#4")
