"""Softmax over the rows of x[R][C]: rows in parallel, each pass over a row
in AVX-512 (or AVX2) vectors.

Rows are independent, so the row loop is shared between threads. Inside a
row, the three passes (max, exp and sum, normalise) become vector loops with
a scalar remainder: the running max and the sum keep one partial result per
lane, combined after the loop (the sum is reassociated), and expf becomes a
vector exponential whose relative error the step declares (1e-6)."""
from optitrust_py.script import bench, load
from transformations import parallel, vector

load("../c_sources/softmax.c", sizes={"R": 5, "C": 150})
bench("softmax", sizes={"R": 4096, "C": 4096}, bytes="8*R*C",
      numpy="X = x.reshape(R, C); E = np.exp(X - X.max(axis=1, keepdims=True)); "
            "y = E / E.sum(axis=1, keepdims=True)")

parallel.parallel_for("softmax > for i")
vector.vectorize("softmax > for i")
