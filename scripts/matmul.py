"""Matmul: from the naive i-j-k nest to a blocked i-k-j order.

The zeroing of C is split off so the k loop can move outside j: the inner loop
then walks B and C along rows (unit stride), which compilers vectorize. Rows
of C are then processed in blocks of 16, and for each block the k range is
walked in slices of 64 so the slice of B stays in cache across the block."""
from optitrust_py.script import bench, load
from transformations import loop

load("../c_sources/matmul.c", sizes={"M": 50, "N": 37, "K": 71})
bench("matmul", sizes={"M": 1024, "N": 1024, "K": 1024}, flops="2*M*N*K",
      numpy="C = A.reshape(M, K) @ B.reshape(K, N)")

loop.fission("matmul > for j > after 'C[i * N + j] = 0.0f'")
loop.swap("matmul > for j#2")
loop.tile("matmul > for i", 16, mode="min")
loop.tile("matmul > for k", 64, mode="min")
loop.fission("matmul > for i > after for j#1")
loop.swap("matmul > for i#2")
