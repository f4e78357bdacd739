"""Softmax over the rows of x[R][C]: rows in parallel, each pass over a row
in AVX-512 (or AVX2) vectors.

Rows are independent, so the row loop is shared between threads. Inside a
row, the three passes (max, exp and sum, normalise) become vector loops with
a scalar remainder: the running max and the sum keep one partial result per
lane, combined after the loop (the sum is reassociated), and expf becomes a
vector exponential whose relative error the step declares (1e-6).

With `--target cuda`: one block of 256 threads per row; the max and the sum
are computed by the threads cyclically (thread t takes columns t, t + 256,
...: coalesced), each into its own cell of a shared array, then combined
in a tree of 8 halving steps with a barrier between steps; the
normalisation is shared cyclically too."""
from optitrust_py.script import bench, load, target
from transformations import gpu, parallel, vector

load("../c_sources/softmax.c", sizes={"R": 5, "C": 150})
bench("softmax", sizes={"R": 4096, "C": 4096}, bytes="8*R*C",
      numpy="X = x.reshape(R, C); E = np.exp(X - X.max(axis=1, keepdims=True)); "
            "y = E / E.sum(axis=1, keepdims=True)",
      torch="y = torch.softmax(x.reshape(R, C), dim=1)")

if target() == "cuda":
    gpu.map_blocks("softmax > for i", "x")
    gpu.reduce("softmax > for j#1", "max_val", 256)
    gpu.reduce("softmax > for j#2", "sum", 256)
    gpu.cyclic("softmax > for j#3", 256)
else:
    parallel.parallel_for("softmax > for i")
    vector.vectorize("softmax > for i")
