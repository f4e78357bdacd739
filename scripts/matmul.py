"""Matmul: from the naive i-j-k nest to a register-blocked, vectorized,
parallel kernel.

1. The zeroing of C is split off, so the product is a perfect i-j-k nest.
2. Rows are cut into a main part, a multiple of 6, and a remainder; so are
   the columns (multiples of 64): the main part runs the fast kernel, the
   remainders stay plain loops (reordered so that they walk rows).
3. The main part is tiled 6 x 64 (one block of C) with k walked in slices
   of 64, and reordered to bk, bi, bj, k, i, j: for each slice of k, each
   6 x 64 block of C is updated by a rank-64 product while the slice of B
   stays in cache.
4. The block of C lives in a local array for the k loop, the blocks of a
   slice are shared between threads, and the lane loops become AVX-512 (or
   AVX2) intrinsics: with AVX-512 the block is 24 vector registers, and
   each step of k is 4 loads of B, 6 broadcasts of A and 24 multiply-adds.
"""
from optitrust_py.script import bench, load
from transformations import loop, matrix, parallel, vector

load("../c_sources/matmul.c", sizes={"M": 21, "N": 141, "K": 300})
bench("matmul", sizes={"M": 1024, "N": 1024, "K": 1024}, flops="2*M*N*K",
      numpy="C = A.reshape(M, K) @ B.reshape(K, N)")

loop.fission("matmul > for j > after 'C[i * N + j] = 0.0f'")
loop.fission("matmul > for i > after for j#1")
parallel.parallel_for("matmul > for i#1")

loop.split("matmul > for i#2", "M - M % 6")
loop.tile("matmul > for i#2", 6)
loop.split("matmul > for bi > for j", "N - N % 64")
loop.fission("matmul > for bi > for i > after for j#1")
loop.tile("matmul > for bi > for i#1 > for j", 64)
loop.tile("matmul > for bi > for i#1 > for k", 64, "bk", "min")

loop.fission("matmul > for bi > after for i#1")
loop.reorder("matmul > for bi#1", ["bk", "bi", "bj", "k", "i", "j"])

# the remainder columns and rows: k outside j, so their inner loops walk B
# and C along rows too
loop.swap("matmul > for bi#2 > for i > for j")
loop.swap("matmul > for i#4 > for j")

matrix.local_buffer("matmul > for bk > for bj > for k", "C", "acc", ["M", "N"])
parallel.parallel_for("matmul > for bk > for bi")
vector.vectorize("matmul > for bk > for bi > for bj")
