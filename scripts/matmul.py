"""Matmul: from the naive i-j-k nest to a register-blocked, vectorized,
parallel kernel.

1. The zeroing of C is split off, so the product is a perfect i-j-k nest.
2. Rows are cut into a main part, a multiple of 8, and a remainder; so are
   the columns (multiples of 32): the main part runs the fast kernel, the
   remainders stay plain loops.
3. The main part is tiled 8 x 32 (one block of C) with k walked in slices
   of 256, and reordered to bk, bi, bj, k, i, j: for each slice of k, each
   8 x 32 block of C is updated by a rank-256 product while the slice of B
   stays in cache.
4. The block of C lives in a local array for the k loop, the blocks of a
   slice are shared between threads, and the lane loops become AVX-512 (or
   AVX2) intrinsics: the block is 16 vector registers.
"""
from optitrust_py.script import bench, load
from transformations import loop, matrix, parallel, vector

load("../c_sources/matmul.c", sizes={"M": 21, "N": 45, "K": 300})
bench("matmul", sizes={"M": 1024, "N": 1024, "K": 1024}, flops="2*M*N*K",
      numpy="C = A.reshape(M, K) @ B.reshape(K, N)")

loop.fission("matmul > for j > after 'C[i * N + j] = 0.0f'")
loop.fission("matmul > for i > after for j#1")
parallel.parallel_for("matmul > for i#1")

loop.split("matmul > for i#2", "M - M % 8")
loop.tile("matmul > for i#2", 8)
loop.split("matmul > for bi > for j", "N - N % 32")
loop.fission("matmul > for bi > for i > after for j#1")
loop.tile("matmul > for bi > for i#1 > for j", 32)
loop.tile("matmul > for bi > for i#1 > for k", 256, "bk", "min")

loop.fission("matmul > for bi > after for i#1")
loop.reorder("matmul > for bi#1", ["bk", "bi", "bj", "k", "i", "j"])

matrix.local_buffer("matmul > for bk > for bj > for k", "C", "acc", ["M", "N"])
parallel.parallel_for("matmul > for bk > for bi")
vector.vectorize("matmul > for bk > for bi > for bj")
