"""RMS normalisation of the rows of x[R][C] with weights w[C]: rows in
parallel, the sum of squares and the scaling in AVX-512 (or AVX2) vectors.

Rows are independent, so the row loop is shared between threads. Inside a
row, both loops become vector loops with a scalar remainder; the sum of
squares keeps one partial sum per lane, added up after the loop (so the sum
is reassociated: the step is marked as rounding differently)."""
from optitrust_py.script import bench, load
from transformations import parallel, vector

load("../c_sources/rmsnorm.c", sizes={"R": 5, "C": 150})
bench("rmsnorm", sizes={"R": 4096, "C": 4096}, bytes="4*(2*R*C + C)",
      numpy="X = x.reshape(R, C); "
            "y = w * (X / np.sqrt((X * X).sum(axis=1, keepdims=True) / C + np.float32(1e-5)))")

parallel.parallel_for("rmsnorm > for i")
vector.vectorize("rmsnorm > for i", stream=True)
