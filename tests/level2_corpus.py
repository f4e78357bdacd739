"""The corpus of invalid steps for level 2 (issue 4).

Each case is a step that level 1 accepts (it applies, and its output
re-parses, compiles and fits the contracts) but that changes what the
program computes; level 2 must refute one of its obligations and name the
conflict. Most cases start from a kernel of c_sources/ as it is, some after
valid steps (`prepare`) that give the code the shape the invalid step needs.
Where the issue names a pattern the kernels lack (an in-place prefix sum, a
scan or a sum over a whole matrix, a wavefront), `variant` replaces a
function of the source by a changed copy with the same name and parameters,
so that the contract in specs/ still applies; its comment says what changed.

`sizes` are sizes at which `--exec` shows the bug; a case without them says
why in `unexecuted`. Races run on OMP_THREADS threads with enough work per
thread that the threads overlap even on a busy machine.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from optitrust_py import ir
from optitrust_py.contract import Contract
from optitrust_py.frontend import parse_file, parse_text
from optitrust_py.session import Rewrite, Transformation
from optitrust_py.spec import load_contracts
from transformations import function, loop, matrix, parallel, variable, vector

ROOT = Path(__file__).resolve().parent.parent

OMP_THREADS = 4
"""Threads of the races under --exec, whatever the machine (on this 2-core one
they interleave); the micro-batch case tiles by twice this."""


@dataclass(frozen=True)
class Call:
    """One transformation call, `fn.apply(program, *args, **kwargs)`."""

    fn: Transformation
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def apply(self, program: ir.Program) -> Rewrite:
        return self.fn.apply(program, *self.args, **dict(self.kwargs))

    def __str__(self) -> str:
        shown = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs]
        return f"{self.fn.name}({', '.join(shown)})"


def call(fn: Transformation, *args: Any, **kwargs: Any) -> Call:
    return Call(fn, args, tuple(kwargs.items()))


@dataclass(frozen=True)
class Case:
    """An invalid step and what level 2 must say about it."""

    id: str
    source: str
    """A file of c_sources/; its contracts are specs/<stem>.spec."""
    step: Call
    kind: str
    """The obligation kind that must be refuted."""
    words: tuple[str, ...]
    """Words the refutation must contain: the conflicting array, variable or sizes."""
    bug: str
    """What goes wrong at run time."""
    prepare: tuple[Call, ...] = ()
    variant: Optional[str] = None
    sizes: Optional[Mapping[str, int]] = None
    unexecuted: str = ""
    """Why --exec cannot show the bug (only when `sizes` is None)."""
    oob: Optional[str] = None
    """An access of the step's output that the resource check must report out of bounds."""

    def __str__(self) -> str:
        return self.id


def _with_variant(program: ir.Program, text: str) -> ir.Program:
    """`program` with each function that `text` defines in place of its namesake."""
    new = {f.name: f for f in parse_text(text, program.file).functions()}
    assert set(new) <= {f.name for f in program.functions()}, f"{sorted(new)} replace no function"
    return dataclasses.replace(program, items=tuple(new.get(i.name, i) if isinstance(i, ir.FuncDef) else i
                                                    for i in program.items))


def load(case: Case) -> tuple[ir.Program, dict[str, Contract]]:
    """The program right before the invalid step (source, variant, then the
    valid steps of `prepare`), and the contracts of the source."""
    program = parse_file(ROOT / "c_sources" / case.source)
    if case.variant is not None:
        program = _with_variant(program, case.variant)
    contracts = load_contracts(program, ROOT / "specs" / f"{Path(case.source).stem}.spec")
    for step in case.prepare:
        program = step.apply(program).program
    return program, contracts


# ----------------------------------------------------------------- variants

TOP_P_SCAN = """
#include <math.h>

/* softmax.c with the row loops merged into one scan: y holds the cumulative
   sums of x over the whole matrix in row-major order (the running total that
   top-p sampling walks), instead of a per-row softmax. */
void softmax(int R, int C, const float *x, float *y) {
  float acc = 0.0f;
  for (int i = 0; i < R; i++) {
    for (int j = 0; j < C; j++) {
      acc += x[i * C + j];
      y[i * C + j] = acc;
    }
  }
}
"""

GLOBAL_RMSNORM = """
#include <math.h>

/* rmsnorm.c normalising by the RMS of the whole matrix (one sum of squares
   over all rows, as a Frobenius-norm scaling does) instead of each row's. */
void rmsnorm(int R, int C, const float *x, const float *w, float *y) {
  float ss = 0.0f;
  for (int i = 0; i < R; i++) {
    for (int j = 0; j < C; j++) {
      ss += x[i * C + j] * x[i * C + j];
    }
  }
  ss = ss / (R * C) + 1e-5f;
  ss = 1.0f / sqrtf(ss);
  for (int i = 0; i < R; i++) {
    for (int j = 0; j < C; j++) {
      y[i * C + j] = w[j] * (ss * x[i * C + j]);
    }
  }
}
"""

def _prefill(comment: str, body: str) -> str:
    """transformer.c's prefill, same signature, with another body."""
    return f"""
/* {comment} The weights and caches are unused. */
void transformer_prefill(int T, int L, int dim, int hidden, int H, int KVH,
                         int SMAX, const float *rms_att_w, const float *wq,
                         const float *wk, const float *wv, const float *wo,
                         const float *rms_ffn_w, const float *w1,
                         const float *w2, const float *w3, float *xs,
                         float *k_cache, float *v_cache) {{
{body}}}
"""


TOKEN_MIX = _prefill(
    "transformer.c's prefill replaced by a causal token mixing of the prompt, in place: each embedding adds its "
    "predecessor's next channel (a wavefront: cell (t, d) depends on cell (t - 1, d + 1), already updated).", """\
  for (int t = 1; t < T; t++) {
    for (int d = 0; d < dim - 1; d++) {
      xs[t * dim + d] += 0.5f * xs[(t - 1) * dim + d + 1];
    }
  }
""")

PREFIX_SUM_PREFILL = _prefill(
    "transformer.c's prefill replaced by an in-place prefix sum of the prompt over positions (cumulative mean "
    "pooling before the division): row t adds row t - 1, already updated.", """\
  for (int t = 1; t < T; t++) {
    for (int d = 0; d < dim; d++) {
      xs[t * dim + d] += xs[(t - 1) * dim + d];
    }
  }
""")


def _top_p_softmax_vec() -> str:
    """transformer.c's softmax_vec followed by the in-place prefix sum that
    top-p sampling takes over the probabilities."""
    text = (ROOT / "c_sources" / "transformer.c").read_text()
    start = text.index("void softmax_vec(")
    end = text.index("\n}\n", start)
    return ("#include <math.h>\n" + text[start:end]
            + "\n  for (int i = 1; i < n; i++) {\n    x[i] += x[i - 1];\n  }\n}\n")


TOP_P_SOFTMAX_VEC = _top_p_softmax_vec()

# ----------------------------------------------------------------- sizes

TRANSFORMER = {"L": 2, "dim": 16, "hidden": 24, "H": 4, "KVH": 2, "SMAX": 8, "pos": 5}
"""A small transformer_token, for the steps whose bug shows without threads."""
PREFILL = {"T": 64, "L": 1, "dim": 128, "hidden": 256, "H": 4, "KVH": 2, "SMAX": 64}
"""A prefill whose tokens take long enough that the threads running them overlap."""

# ----------------------------------------------------------------- the corpus

CASES: tuple[Case, ...] = (
    # ---- swapping loops across a dependence
    Case("swap-scan-softmax", "softmax.c", call(loop.swap, "softmax > for i"), "swap_loops", ("acc",),
         "the running total then walks the matrix column by column", variant=TOP_P_SCAN,
         sizes={"R": 3, "C": 5}),
    Case("swap-global-sum-of-squares", "rmsnorm.c", call(loop.swap, "rmsnorm > for i#1"), "swap_loops", ("ss",),
         "the sum of squares adds the same terms in another order, which rounds differently",
         variant=GLOBAL_RMSNORM, sizes={"R": 7, "C": 33}),
    Case("swap-wavefront-token-mix", "transformer.c", call(loop.swap, "transformer_prefill > for t"),
         "swap_loops", ("xs[",), "cell (t, d) reads cell (t - 1, d + 1) before it is updated",
         variant=TOKEN_MIX, sizes={"T": 6, "L": 1, "dim": 8, "hidden": 2, "H": 2, "KVH": 1, "SMAX": 6}),

    # ---- fission of a loop that carries a dependence
    Case("fission-attention-scores", "attention.c", call(loop.fission, "attention > for i > after for j#1"),
         "fission", ("scores[",), "every query's scores overwrite the scratch row before the softmax reads it",
         sizes={"H": 2, "S": 6, "D": 4}),
    Case("fission-attention-weighted-sum", "attention.c", call(loop.fission, "attention > for i > after for d#2"),
         "fission", ("scores[",), "the weighted sum of V reads the last query's probabilities for every query",
         sizes={"H": 2, "S": 6, "D": 4}),
    Case("fission-gqa-scores", "gqa_decode.c", call(loop.fission, "gqa_decode > for h > after for t#1"),
         "fission", ("scores[",), "every head's scores overwrite the scratch row before its softmax",
         prepare=(call(variable.inline, "gqa_decode > def g"),),
         sizes={"H": 4, "KVH": 2, "D": 4, "SMAX": 8, "pos": 5}),
    Case("fission-moe-router", "moe.c", call(loop.fission, "moe > for t > after for e#1"), "fission",
         ("logits[",), "the top-K selection of every token reads the last token's router logits",
         sizes={"T": 3, "dim": 4, "hidden": 6, "E": 4, "K": 2}),
    Case("fission-moe-top-k", "moe.c", call(loop.fission, "moe > for s#1 > after for e"), "fission",
         ("used[",), "every slot picks the same expert: the used flags are set after all slots chose",
         prepare=(call(loop.hoist, "moe > for s#1 > def best"),),
         sizes={"T": 2, "dim": 4, "hidden": 6, "E": 4, "K": 2}),
    Case("fission-transformer-layers", "transformer.c",
         call(loop.fission, "transformer_token > for l > before 'rmsnorm_vec(dim, x, &rms_ffn_w[l * dim], xb)'"),
         "fission", ("x[",), "every layer's attention runs before any feed-forward block updates the residual",
         sizes=TRANSFORMER),
    Case("fission-transformer-heads", "transformer.c",
         call(loop.fission, "transformer_token > for h > after for t#1"), "fission", ("att[",),
         "every head's scores overwrite the scratch row before its softmax",
         prepare=(call(variable.inline, "transformer_token > def g"),), sizes=TRANSFORMER),

    # ---- fusion of loops with a backward dependence
    Case("fusion-softmax-normalise", "softmax.c", call(loop.fusion, "softmax > for j#2"), "fusion", ("sum",),
         "each element is divided by a partial sum", sizes={"R": 3, "C": 7}),
    Case("fusion-attention-normalise", "attention.c", call(loop.fusion, "attention > for j#3"), "fusion",
         ("sum",), "each probability is divided by a partial sum", sizes={"H": 2, "S": 5, "D": 4}),
    Case("fusion-gqa-normalise", "gqa_decode.c", call(loop.fusion, "gqa_decode > for t#3"), "fusion", ("sum",),
         "each probability is divided by a partial sum", sizes={"H": 4, "KVH": 2, "D": 4, "SMAX": 8, "pos": 5}),
    Case("fusion-softmax-vec-normalise", "transformer.c", call(loop.fusion, "softmax_vec > for i#2"), "fusion",
         ("sum",), "each probability is divided by a partial sum", sizes={"n": 9}),
    Case("fusion-moe-gate-normalise", "moe.c", call(loop.fusion, "moe > for s#3"), "fusion", ("sum",),
         "each expert weight is divided by a partial sum", sizes={"T": 2, "dim": 4, "hidden": 6, "E": 4, "K": 3}),

    # ---- parallel loops whose iterations conflict
    Case("parallel-attention-query-rows", "attention.c", call(parallel.parallel_for, "attention > for i"),
         "parallel", ("scores[",), "the queries of one head share the scratch row of scores",
         sizes={"H": 1, "S": 1024, "D": 32}),
    Case("parallel-attention-heads", "attention.c", call(parallel.parallel_for, "attention > for h"), "parallel",
         ("scores[",), "the heads share the scratch row of scores", sizes={"H": 8, "S": 384, "D": 32}),
    Case("parallel-gqa-heads", "gqa_decode.c", call(parallel.parallel_for, "gqa_decode > for h"), "parallel",
         ("scores[",), "the heads share the scratch row of scores",
         sizes={"H": 128, "KVH": 8, "D": 64, "SMAX": 4096, "pos": 4000}),
    Case("parallel-moe-tokens", "moe.c", call(parallel.parallel_for, "moe > for t"), "parallel", ("logits[",),
         "the tokens share the router logits, the top-K flags and the hidden buffers",
         sizes={"T": 1024, "dim": 64, "hidden": 256, "E": 8, "K": 2}),
    Case("parallel-transformer-heads", "transformer.c", call(parallel.parallel_for, "transformer_token > for h"),
         "parallel", ("att[",), "the heads share the scratch row of attention weights",
         sizes={"L": 1, "dim": 1024, "hidden": 8, "H": 16, "KVH": 2, "SMAX": 16384, "pos": 16000}),
    Case("parallel-transformer-layers", "transformer.c", call(parallel.parallel_for, "transformer_token > for l"),
         "parallel", ("xb[",), "the layers share the scratch buffers and the residual stream they update",
         sizes={"L": 16, "dim": 128, "hidden": 256, "H": 4, "KVH": 2, "SMAX": 256, "pos": 200}),
    Case("parallel-scan-rows", "softmax.c", call(parallel.parallel_for, "softmax > for i"), "parallel", ("acc",),
         "the rows share the running total", variant=TOP_P_SCAN, sizes={"R": 512, "C": 512}),
    Case("parallel-matvec-row-reduction", "matvec.c", call(parallel.parallel_for, "matvec > for j"), "parallel",
         ("y[",), "threads add into the same cell y[i] (a reduction over j, nested in the row loop)",
         sizes={"N": 8192, "D": 64}),
    Case("parallel-matmul-k-inner-reduction", "matmul.c", call(parallel.parallel_for, "matmul > for k"),
         "parallel", ("C[",), "threads add into the same cell of C (a reduction over k, nested in i and j)",
         sizes={"M": 8, "N": 8, "K": 8192}),
    Case("parallel-attention-weighted-sum-reduction", "attention.c",
         call(parallel.parallel_for, "attention > for j#5", collapse=2), "parallel", ("out[",),
         "threads add into the same output cells (a reduction over keys, nested in the head and query loops)",
         sizes={"H": 1, "S": 256, "D": 64}),
    Case("parallel-gqa-weighted-sum-reduction", "gqa_decode.c",
         call(parallel.parallel_for, "gqa_decode > for t#5", collapse=2), "parallel", ("out[",),
         "threads add into the same output cells (a reduction over positions, nested in the head loop)",
         sizes={"H": 8, "KVH": 2, "D": 64, "SMAX": 4096, "pos": 4000}),
    Case("parallel-matmul-k-reduction", "matmul.c", call(parallel.parallel_for, "matmul > for k", collapse=2),
         "parallel", ("C[",), "threads add into the same cells of C (a reduction over k, outermost)",
         prepare=(call(loop.fission, "matmul > for j > after 'C[i * N + j] = 0.0f'"),
                  call(loop.fission, "matmul > for i > after for j#1"),
                  call(loop.swap, "matmul > for j#2"), call(loop.swap, "matmul > for i#2")),
         sizes={"M": 128, "N": 128, "K": 1024}),
    Case("parallel-matvec-j-reduction", "matvec.c", call(parallel.parallel_for, "matvec > for j", collapse=2),
         "parallel", ("y[",), "threads add into the same cells of y (a reduction over j, outermost)",
         prepare=(call(loop.fission, "matvec > for i > after 'y[i] = 0.0f'"), call(loop.swap, "matvec > for i#2")),
         sizes={"N": 8192, "D": 512}),
    Case("parallel-transformer-matvec-reduction", "transformer.c",
         call(parallel.parallel_for, "matvec > for j", collapse=2), "parallel", ("y[",),
         "threads add into the same cells of y (a reduction over j, outermost)",
         prepare=(call(loop.fission, "matvec > for i > after 'y[i] = 0.0f'"), call(loop.swap, "matvec > for i#2")),
         sizes={"n": 8192, "d": 512}),
    Case("parallel-prefix-sum-rows", "transformer.c",
         call(parallel.parallel_for, "transformer_prefill > for t", schedule="static, 1"), "parallel", ("xs[",),
         "rows go to the threads in turn: a thread adds row t - 1 before the thread that owns it updated it",
         variant=PREFIX_SUM_PREFILL, sizes={"T": 256, "L": 1, "dim": 16, "hidden": 1, "H": 1, "KVH": 1, "SMAX": 256}),
    Case("parallel-prefix-sum-vector", "transformer.c", call(parallel.parallel_for, "softmax_vec > for i#4"),
         "parallel", ("x[",), "an element is added before the thread of the elements before it wrote it",
         variant=TOP_P_SOFTMAX_VEC, sizes={"n": 1 << 17}),
    Case("simd-prefix-sum-vector", "transformer.c", call(parallel.simd, "softmax_vec > for i#4"),
         "parallel", ("x[",), "the lanes add elements their neighbouring lanes have not updated yet",
         variant=TOP_P_SOFTMAX_VEC,
         unexecuted="the exec builds use -O1, where gcc does not vectorize the loop, so the lanes run in order"),
    Case("vectorize-prefix-sum-vector", "transformer.c", call(vector.vectorize, "softmax_vec > for i#4"), "lanes",
         ("x[",), "each vector adds the elements before it as they were before the loop",
         variant=TOP_P_SOFTMAX_VEC, sizes={"n": 67}),
    Case("parallel-kv-cache-prefill", "transformer.c", call(parallel.parallel_for, "transformer_prefill > for t"),
         "parallel", ("k_cache[",), "a token reads cache positions that other threads have not written yet",
         sizes=PREFILL),
    Case("parallel-kv-cache-microbatch", "transformer.c",
         call(parallel.parallel_for, "transformer_prefill > for bt > for t"), "parallel", ("k_cache[",),
         "inside a micro-batch, a token reads the cache entries of the tokens before it, written concurrently",
         prepare=(call(loop.tile, "transformer_prefill > for t", 2 * OMP_THREADS, mode="min"),), sizes=PREFILL),

    # ---- tiling with a size that does not divide under the contract
    Case("tile-matmul-k", "matmul.c", call(loop.tile, "matmul > for k", 64), "divides", ("64 does not divide K",),
         "the last tile reads past the rows of A and B", sizes={"M": 3, "N": 5, "K": 100}, oob="A[i * K + k]"),
    Case("tile-matmul-i", "matmul.c", call(loop.tile, "matmul > for i", 4), "divides", ("4 does not divide M",),
         "the last tile writes past the end of C", sizes={"M": 6, "N": 5, "K": 3}, oob="C[i * N + j]"),
    Case("tile-attention-head-dim", "attention.c", call(loop.tile, "attention > for d#1", 4), "divides",
         ("4 does not divide D",), "the dot product of a query and a key adds products from the next rows",
         sizes={"H": 2, "S": 5, "D": 6}, oob="q[(h * S + i) * D + d]"),
    Case("tile-softmax-rows", "softmax.c", call(loop.tile, "softmax > for i", 4), "divides",
         ("4 does not divide R",), "the last tile normalises rows past the end", sizes={"R": 5, "C": 6},
         oob="y[i * C + j]"),
    Case("tile-rmsnorm-columns", "rmsnorm.c", call(loop.tile, "rmsnorm > for j#2", 8), "divides",
         ("8 does not divide C",), "the last tile of a row writes into the next row", sizes={"R": 3, "C": 12},
         oob="y[i * C + j]"),
    Case("tile-matvec-rows", "matvec.c", call(loop.tile, "matvec > for i", 16), "divides",
         ("16 does not divide D",), "the last tile writes past the end of y", sizes={"N": 5, "D": 20}, oob="y[i]"),
    Case("tile-gqa-head-dim", "gqa_decode.c", call(loop.tile, "gqa_decode > for d#1", 4), "divides",
         ("4 does not divide D",), "the last tile appends past the new key",
         sizes={"H": 2, "KVH": 1, "D": 6, "SMAX": 4, "pos": 2}, oob="k_cache[(g * SMAX + pos) * D + d]"),
    Case("tile-moe-experts", "moe.c", call(loop.tile, "moe > for e#1", 4), "divides", ("4 does not divide E",),
         "the last tile computes router logits for experts that do not exist",
         sizes={"T": 2, "dim": 4, "hidden": 6, "E": 6, "K": 2}, oob="logits[e]"),
    Case("tile-dim-packed-b", "matmul.c", call(matrix.tile_dim, "matmul > def B_local", 1, 16), "divides",
         ("16 does not divide N",), "the blocks of a row of the packed panel run into the next row",
         prepare=(call(loop.fission, "matmul > for j > after 'C[i * N + j] = 0.0f'"),
                  call(loop.swap, "matmul > for j#2"), call(loop.tile, "matmul > for k", 64, mode="min"),
                  call(loop.fission, "matmul > for i > after for j#1"), call(loop.swap, "matmul > for i#2"),
                  call(matrix.local_buffer, "matmul > for bk > for i", "B", shape=["K", "N"],
                       region=["bk:64", "0:N"])),
         sizes={"M": 3, "N": 40, "K": 64}, oob="B_local[k - bk][j / 16][j % 16]"),

    # ---- layout changes that do not rewrite the accesses faithfully (the tile_dim before each only
    #      rewrites `a[j]` as `a[j / 4 * 4 + j % 4]`, the same cell whatever the size)
    Case("reorder-dims-attention-scores", "attention.c",
         call(matrix.reorder_dims, "attention > def scores", [1, 0], shape=["S / 8", "4"]), "delinearize",
         ("scores[",), "the scores of keys 8 apart land in the same cell",
         prepare=(call(matrix.tile_dim, "attention > def scores", 0, 4, shape=["S"]),),
         sizes={"H": 1, "S": 16, "D": 4}),
    Case("reorder-dims-moe-hidden", "moe.c",
         call(matrix.reorder_dims, "moe > def hb", [1, 0], shape=["hidden / 8", "4"]), "delinearize", ("hb[",),
         "hidden units 8 apart land in the same cell",
         prepare=(call(matrix.tile_dim, "moe > def hb", 0, 4, shape=["hidden"]),),
         sizes={"T": 2, "dim": 4, "hidden": 16, "E": 3, "K": 2}),
    Case("reorder-dims-gqa-scores", "gqa_decode.c",
         call(matrix.reorder_dims, "gqa_decode > def scores", [1, 0], shape=["(pos + 1) / 4", "2"]),
         "delinearize", ("scores[",), "the scores of positions 4 apart land in the same cell",
         prepare=(call(matrix.tile_dim, "gqa_decode > def scores", 0, 2, shape=["pos + 1"]),),
         sizes={"H": 2, "KVH": 1, "D": 4, "SMAX": 16, "pos": 11}),

    # ---- moving a non-invariant instruction out of a loop
    Case("move-out-moe-used-reset", "moe.c", call(loop.move_out, "moe > for t > for e#2"), "loop_invariant",
         ("used[",), "the experts a token picked stay marked as used for the next tokens",
         sizes={"T": 3, "dim": 4, "hidden": 6, "E": 6, "K": 2}),
    Case("move-out-moe-used-reset-past-a-call", "moe.c", call(loop.move_out, "moe > for t > for e#2"),
         "loop_invariant", ("used",), "the experts a token picked stay marked as used for the next tokens "
         "(the selection that marks them is now a call)",
         prepare=(call(function.extract, "moe > for s#1", "select_top_k"),),
         sizes={"T": 3, "dim": 4, "hidden": 6, "E": 6, "K": 2}),
    Case("move-out-softmax-sum", "softmax.c", call(loop.move_out, "softmax > for i > def sum"), "loop_invariant",
         ("sum",), "the sum of a row starts from the previous row's", sizes={"R": 3, "C": 5}),
    Case("move-out-softmax-sum-past-a-call", "softmax.c", call(loop.move_out, "softmax > for i > def sum"),
         "loop_invariant", ("sum",), "the sum of a row starts from the previous row's (the loop that adds to it "
         "is now a call that receives &sum)",
         prepare=(call(function.extract, "softmax > for j#2", "exp_and_sum"),), sizes={"R": 3, "C": 5}),
    Case("move-out-attention-sum", "attention.c", call(loop.move_out, "attention > for i > def sum"),
         "loop_invariant", ("sum",), "the softmax sum of a query starts from the previous query's",
         sizes={"H": 2, "S": 5, "D": 4}),
    Case("move-out-gqa-sum", "gqa_decode.c", call(loop.move_out, "gqa_decode > for h > def sum"),
         "loop_invariant", ("sum",), "the softmax sum of a head starts from the previous head's",
         sizes={"H": 4, "KVH": 2, "D": 4, "SMAX": 8, "pos": 5}),
    Case("move-out-rmsnorm-ss", "rmsnorm.c", call(loop.move_out, "rmsnorm > for i > def ss"), "loop_invariant",
         ("ss",), "the sum of squares of a row starts from the previous row's scale", sizes={"R": 3, "C": 5}),
    Case("move-out-transformer-rope", "transformer.c", call(loop.move_out, "transformer_token > for l > for i#1"),
         "loop_invariant", ("q[",), "the rotation runs once, before any layer computed its queries",
         sizes=TRANSFORMER),

    # ---- out-of-bounds accesses introduced by a wrong shift or split point
    Case("local-buffer-shifted-b-panel", "matmul.c",
         call(matrix.local_buffer, "matmul > for bk > for i", "B", shape=["K", "N"], region=["bk + 1:64", "0:N"]),
         "in_region", ("region", "'B'"), "the panel is copied one row too low: the loop reads row -1 of the buffer",
         prepare=(call(loop.fission, "matmul > for j > after 'C[i * N + j] = 0.0f'"),
                  call(loop.swap, "matmul > for j#2"), call(loop.tile, "matmul > for k", 64, mode="min"),
                  call(loop.fission, "matmul > for i > after for j#1"), call(loop.swap, "matmul > for i#2")),
         sizes={"M": 3, "N": 8, "K": 128}, oob="B_local[k - bk - 1][j]"),
    Case("local-buffer-shifted-q-tile", "attention.c",
         call(matrix.local_buffer, "attention > for bi > for i", "q", "q_tile", shape=["H", "S", "D"],
              region=["h:1", "bi + 1:2", "0:D"]),
         "in_region", ("region", "'q'"), "the tile of Q is copied one query too far: the loop reads row -1 of the tile",
         prepare=(call(loop.tile, "attention > for i", 2, mode="min"),), sizes={"H": 2, "S": 6, "D": 4},
         oob="q_tile[i - bi - 1][d]"),
    Case("split-softmax-past-the-row", "softmax.c", call(loop.split, "softmax > for j#3", "C + 1"), "in_range",
         ("C + 1",), "the normalisation writes one element past each row", sizes={"R": 3, "C": 5},
         oob="y[i * C + j]"),
    Case("split-rmsnorm-before-the-row", "rmsnorm.c", call(loop.split, "rmsnorm > for j#2", "-1"), "in_range",
         ("-1",), "the scaling writes one element before each row", sizes={"R": 3, "C": 5},
         oob="y[i * C + j]"),
    Case("split-gqa-append-past-head-dim", "gqa_decode.c", call(loop.split, "gqa_decode > for d#1", "D + 2"),
         "in_range", ("D + 2",), "the append writes two elements past the new key of each kv head",
         sizes={"H": 2, "KVH": 2, "D": 4, "SMAX": 4, "pos": 3}, oob="k_cache[(g * SMAX + pos) * D + d]"),
)
