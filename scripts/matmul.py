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

With `--target cuda` the script ends in four CUDA kernels instead (and runs
--exec at sizes past one GPU tile): C is zeroed (a block per row and 256
columns); the main part (rows and columns in multiples of 128, k of 64) has
a block of 16 x 16 threads per 128 x 128 tile of C, each thread computing 8
x 8 cells kept in registers across the whole k loop: 8 rows strided by 16
and 2 runs of 4 neighbouring columns 64 apart (gpu.thread_tile, width 4),
so that the B values of a run come in one 16-byte shared load; each
64-wide slice of A and B is staged in shared memory by all the threads
(copy in, barrier, 64 multiply-adds per k, k unrolled by 8 so that a
thread's A values of a row come four at a time in 16-byte shared loads
too, and nvcc can schedule 8 steps of k together, barrier), and nvcc is
asked to fit two blocks per multiprocessor (gpu.launch_bounds: 128
registers a thread); the remainder columns and
rows are a thread per element, its sum in a register (as is the k
remainder of the main tiles): C is read and written once, not at every k
(1000³ on the H100: 0.68 -> 0.28 ms).
"""
from optitrust_py.script import bench, load, target
from transformations import arith, gpu, loop, matrix, parallel, variable, vector

load("../c_sources/matmul.c", sizes={"M": 21, "N": 141, "K": 300} if target() == "cpu" else
     {"M": 140, "N": 141, "K": 80})  # past one 128 x 128 tile, with remainders
bench("matmul", sizes={"M": 1024, "N": 1024, "K": 1024}, flops="2*M*N*K",
      numpy="C = A.reshape(M, K) @ B.reshape(K, N)", torch="C = A.reshape(M, K) @ B.reshape(K, N)")

loop.fission("matmul > for j > after 'C[i * N + j] = 0.0f'")
loop.fission("matmul > for i > after for j#1")


def thread_per_element(rows: str, br: str, bc: str) -> None:
    """CUDA: the i-j nest `rows` as blocks of 16 x 16 threads, a thread per
    element of C (the last tile of each loop, tiled in mode min, leaves its
    extra threads idle)."""
    loop.tile(rows, 16, br, "min")
    loop.tile(f"matmul > for {br} > for i > for j", 16, bc, "min")
    loop.swap(f"matmul > for {br} > for i")
    gpu.map_blocks(f"matmul > for {br}", "y")
    gpu.map_blocks(f"matmul > for {br} > for {bc}", "x")
    gpu.map_threads(f"matmul > for {bc} > for i", "y")
    gpu.map_threads(f"matmul > for {bc} > for i > for j", "x")
    # the element's sum in a register: C, which might alias A or B as far as
    # nvcc knows, is read and written once instead of at every k
    variable.local_accumulator(f"matmul > for {bc} > for i > for j > for k", "C[i * N + j]")


if target() == "cuda":
    # C = 0: one block per row and 256 columns
    loop.tile("matmul > for i#1 > for j", 256, "bz", "guard")
    gpu.map_blocks("matmul > for i#1", "y")
    gpu.map_blocks("matmul > for i#1 > for bz", "x")
    gpu.map_threads("matmul > for i#1 > for bz > for j", "x")

    # main part: rows and columns in multiples of 128, k of 64; a block per
    # 128 x 128 tile of C, k in slices of 64 (A's and B's: 64 KB of shared
    # memory, past the 48 KB of static arrays: the printer makes it dynamic)
    loop.split("matmul > for i#2", "M - M % 128")
    loop.split("matmul > for i#2 > for j", "N - N % 128")
    loop.split("matmul > for i#2 > for j#1 > for k", "K - K % 64")
    loop.fission("matmul > for i#2 > after for j#1")
    loop.tile("matmul > for i#2", 128)
    loop.tile("matmul > for bi > for i > for j", 128)
    loop.swap("matmul > for bi > for i")
    loop.fission("matmul > for bj > for i > for j > after for k#1")
    loop.fission("matmul > for bj > for i > after for j#1")
    loop.tile("matmul > for bj > for i#1 > for j > for k", 64)
    loop.reorder("matmul > for bj > for i#1", ["bk", "i", "j", "k"])
    gpu.map_blocks("matmul > for bi", "y")
    gpu.map_blocks("matmul > for bi > for bj", "x")
    # two blocks per multiprocessor: nvcc keeps a thread within 128 registers
    gpu.launch_bounds("matmul > for bi", 2)
    # 16 x 16 threads, each computing 8 x 8 cells of the tile: rows i + ri
    # (ri step by 16) by two runs of 4 columns, 4 j + 4 rj + cj (rj: 0, 16),
    # k outside them: 8 loads of A, 2 16-byte loads of B, 64 FMAs per k
    gpu.thread_tile("matmul > for bk > for i", 16)
    gpu.thread_tile("matmul > for bk > for ri > for j", 16, width=4)
    loop.swap("matmul > for bk > for ri")
    loop.reorder("matmul > for bk > for ri", ["k", "ri", "rj", "cj"])
    # the tile of C in registers (each thread owns its 8 x 8 cells), the
    # slices of A and B in shared memory, each copied by all the threads
    gpu.stage("matmul > for bj > for bk", "C", "acc", ["M", "N"], region=["bi:128", "bj:128"], threads=16,
              width=[1, 4])
    gpu.stage("matmul > for bk > for i", "A", "As", ["M", "K"], region=["bi:128", "bk:64"], threads=16)
    gpu.stage("matmul > for bk > for i", "B", "Bs", ["K", "N"], region=["bk:64", "bj:128"], threads=16)
    gpu.map_threads("matmul > for bk > for i", "y")
    gpu.map_threads("matmul > for bk > for i > for j", "x")
    # k unrolled by 8: the A values of a row that a thread reads are
    # neighbours, and nvcc loads them four at a time (16-byte shared loads);
    # H100, side by side: unrolled by 4, 3.75 ms; by 8, 3.62; by 16, 3.60,
    # but then level 2 takes twice as long
    loop.unroll("matmul > for bk > for i > for j > for k", 8)
    arith.simplify("matmul > for bk > for i > for j")
    # rows of the tiles padded by 16 floats: the two rows a warp copies (or
    # reads four at a time, A's) fall in distinct banks
    gpu.pad("matmul > def As", 16)
    gpu.pad("matmul > def Bs", 16)
    # the k remainder of the tile: the same threads, from A and B directly
    gpu.thread_tile("matmul > for bj > for i#2", 16, "si")
    gpu.thread_tile("matmul > for bj > for si > for j", 16, "sj")
    loop.swap("matmul > for bj > for si")
    gpu.map_threads("matmul > for bj > for i#2", "y")
    gpu.map_threads("matmul > for bj > for i#2 > for j", "x")
    variable.local_accumulator("matmul > for bj > for i#2 > for j > for sj > for k", "C[(i + si) * N + j + sj]")

    # the remainder columns of the main rows, then the remainder rows
    thread_per_element("matmul > for i#4", "br", "bc")
    thread_per_element("matmul > for i#5", "br2", "bc2")
else:
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
