"""The corpus of safe-but-wrong steps for level 3 (issue 6).

Each case is a real step of the catalogue applied to a kernel of
c_sources/ (after valid `prepare` steps where the step needs a shape),
whose output is then changed by one textual edit (`mutated`): the bug a
slip in the transformation would make. The step keeps the real
transformation's obligations and fp, so level 2 checks exactly what it
checks for the real step; since the edited code stays in bounds and the
obligations are about the intended rewrite, level 2 proves them all. Only
level 3, which runs the function before and after the step on symbolic
inputs, sees that an output cell holds another value.

Each case says what bug it models (`bug`) and why level 2 cannot see it
(`blind`), the output array whose cell must be named (`output`), and the
small sizes level 3 runs at (`sizes`; small so that the symbolic runs are
quick, with tails where the bug is in a tail).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional

from optitrust_py import ir
from optitrust_py.contract import Contract
from optitrust_py.frontend import parse_text
from optitrust_py.printer import to_c
from optitrust_py.session import Rewrite, Session, inherit_contracts
from optitrust_py.spec import load_contracts
from level2_corpus import ROOT, Call, Case, call, load
from transformations import flash, loop, quantize, variable, vector


@dataclass(frozen=True)
class Wrong:
    """A real step whose output one edit makes wrong, and where level 3 must see it."""

    id: str
    source: str
    """A file of c_sources/."""
    step: Call
    old: str
    """Text of the step's printed output that the edit replaces (exactly one occurrence)."""
    new: str
    output: str
    """The output array whose cell level 3 must name."""
    sizes: Mapping[str, int]
    bug: str
    blind: str
    """Why level 2 proves the step all the same."""
    prepare: tuple[Call, ...] = ()
    spec: Optional[str] = None
    """A file of specs/ other than the source's own."""

    def __str__(self) -> str:
        return self.id


def mutated(program: ir.Program, old: str, new: str) -> ir.Program:
    """`program` with the one occurrence of `old` in its printed text
    replaced by `new`; each function whose text changed is replaced by its
    re-parsed version (the others stay the same objects)."""
    text = to_c(program)
    count = text.count(old)
    assert count == 1, f"{old!r} occurs {count} times in the step's output, not once"
    edited = {f.name: f for f in parse_text(text.replace(old, new), program.file).functions()}
    assert set(edited) == {f.name for f in program.functions()}, "the edit changed the functions of the program"
    changed = {name for name, f in edited.items() if to_c(_alone(f)) != to_c(_alone(program.function(name)))}
    assert changed, "the edit changed no function"
    return dataclasses.replace(program, items=tuple(edited[i.name] if isinstance(i, ir.FuncDef) and i.name in changed
                                                    else i for i in program.items))


def _alone(f: Optional[ir.FuncDef]) -> ir.Program:
    assert f is not None
    return ir.Program(items=(f,), includes=())


def build(case: Wrong) -> tuple[ir.Program, dict[str, Contract], Rewrite, ir.Program]:
    """The program before the step, the contracts (with those of functions
    the prepare steps or the step created), the real step's rewrite, and
    its output after the edit."""
    base = Case(case.id, case.source, case.step, kind="", words=(), bug=case.bug, prepare=())
    program, contracts = load(base)
    if case.spec is not None:
        contracts = load_contracts(program, ROOT / "specs" / case.spec)
    for step in case.prepare:
        done = _applied(step, program, contracts)
        program, contracts = done.program, inherit_contracts(contracts, done)
    rewrite = _applied(case.step, program, contracts)
    return program, inherit_contracts(contracts, rewrite), rewrite, mutated(rewrite.program, case.old, case.new)


def _applied(step: Call, program: ir.Program, contracts: dict[str, Contract]) -> Rewrite:
    """`step` applied in a session holding `contracts`, as in a script (a
    transformation that generates a function takes its contract from there)."""
    with Session() as s:
        s.contracts = dict(contracts)
        return step.apply(program)


# ----------------------------------------------------------------- the corpus

MATVEC_Q8 = (call(loop.tile, "matvec > for j", 32),
             call(quantize.int8_groups, "matvec > for bj > for j", {"W": ["D", "N"], "x": ["N"]}, ahead=["W"]))
"""scripts/quantize.py's first steps: groups of 32, W quantized ahead and x on the fly."""

ONLINE = (call(flash.online_softmax, "attention > for i", 4),)
"""attention in one pass over key blocks of 4 (scripts/attention.py's step 2, smaller blocks)."""
ATTENTION = {"H": 1, "S": 6, "D": 2}
"""Six queries: blocks of 4 with a tail of 2."""

MOE = {"T": 1, "dim": 2, "hidden": 2, "E": 3, "K": 2}
GQA = {"H": 4, "KVH": 2, "D": 2, "SMAX": 4, "pos": 2}
TRANSFORMER = {"n": 6, "d": 2, "T": 2, "L": 1, "dim": 2, "hidden": 1, "H": 1, "KVH": 1, "SMAX": 2, "pos": 1}
"""Every size of transformer.c's functions: a step that changes rmsnorm_vec changes the layer and the prefill
that call it, so level 3 runs them too (one head of two dimensions, one layer, two positions)."""

CASES: tuple[Wrong, ...] = (
    # ---- tile tails
    Wrong("tile-tail-matmul-k", "matmul.c", call(loop.tile, "matmul > for k", 4, mode="min"),
          "(bk + 4 < K ? bk + 4 : K)", "(bk + 4 < K ? bk + 4 : K - 1)", "C", {"M": 2, "N": 2, "K": 6},
          "off-by-one tile tail: the last tile stops one short, so A[i][K-1] * B[K-1][j] is never added",
          "tile with mode='min' has no obligation (any bound within the range keeps the accesses in bounds)"),
    Wrong("tile-tail-rmsnorm-squares", "rmsnorm.c", call(loop.tile, "rmsnorm > for j#1", 4, mode="min"),
          "(bj + 4 < C ? bj + 4 : C)", "(bj + 4 < C ? bj + 4 : C - 1)", "y", {"R": 2, "C": 6},
          "off-by-one tile tail: the sum of squares of a row misses its last element",
          "the shorter tail reads fewer cells of x, all in bounds; the tile has no obligation"),
    Wrong("tile-tail-softmax-sum", "softmax.c", call(loop.tile, "softmax > for j#2", 4, mode="min"),
          "for (int j = bj; j < (bj + 4 < C ? bj + 4 : C); j++) {", "for (int j = bj; j < (bj + 4 < C ? bj + 3 : C); j++) {",
          "y", {"R": 2, "C": 6},
          "every full tile stops one short: one exp per tile is never computed nor added to the sum",
          "the loop writes fewer cells of y, all in bounds; the tile has no obligation"),
    # ---- shifts
    Wrong("shift-matvec-neighbour", "matvec.c", call(loop.shift, "matvec > for j#1", 1),
          "x[j - 1]", "x[j]", "y", {"N": 5, "D": 2},
          "the shifted loop reads x one cell too far: row i adds W[i][j] * x[j + 1]",
          "the split before it leaves room for the neighbour (j + 1 < N), so every read is in bounds; a shift "
          "has no obligation", prepare=(call(loop.split, "matvec > for j", "N - 1"),)),
    # ---- quantization
    Wrong("quantize-scale-of-row-0", "matvec.c", call(quantize.group_accumulator, "matvec_q8 > for bj > for j"),
          "Ws[i * (N / 32) + bj / 32]", "Ws[bj / 32]", "y", {"N": 64, "D": 2},
          "wrong scale index: every row uses the scales of W's first row",
          "Ws[bj / 32] lies in the scales of row 0, in bounds", prepare=MATVEC_Q8, spec="matvec_q8.spec"),
    Wrong("quantize-scale-of-group-0", "matvec.c", call(quantize.group_accumulator, "matvec_q8 > for bj > for j"),
          "xs[bj / 32]", "xs[0]", "y", {"N": 64, "D": 2},
          "wrong scale index: every group of x is scaled by the first group's scale",
          "xs[0] is in bounds", prepare=MATVEC_Q8, spec="matvec_q8.spec"),
    Wrong("quantize-int8-groups-scale-of-row-0", "matvec.c", MATVEC_Q8[1], "Ws[i * (N / 32) + j / 32]", "Ws[j / 32]",
          "y", {"N": 64, "D": 2},
          "wrong scale index in the quantizing step's own kernel: every row's codes are scaled by row 0's scales "
          "(the values move by a few percent, within the step's declared bound: only the structure shows it)",
          "Ws[j / 32] lies in the scales of row 0, in bounds; the step is lossy, so its values may change",
          prepare=MATVEC_Q8[:1], spec="matvec_q8.spec"),
    # ---- online softmax, after the fact
    Wrong("online-softmax-rescale-inverted-later", "attention.c", call(flash.drop_buffer, "attention > def scores"),
          "expf(max_val - max_val_blk)", "expf(max_val_blk - max_val)", "out", ATTENTION,
          "a wrong rescaling in online softmax: exp(m_new - m_old) instead of exp(m_old - m_new), slipped in by "
          "the step that drops the unused scores buffer",
          "drop_buffer's obligations are about the buffer it removes; the recurrence of the running max and sum "
          "is proved by online_softmax's own obligation, at the step before", prepare=ONLINE),
    Wrong("online-softmax-output-rescaled-twice", "attention.c", call(flash.drop_buffer, "attention > def scores"),
          "out[(h * S + i) * D + d] * rescale;", "out[(h * S + i) * D + d] * rescale * rescale;", "out", ATTENTION,
          "the partial output is rescaled twice per block, the running sum once",
          "the rescaled output is the same cell, read and written by the same statement", prepare=ONLINE),
    # ---- unrolling
    Wrong("unroll-rmsnorm-vec-repeated-lane", "transformer.c", call(loop.unroll, "rmsnorm_vec > for j#1", 4),
          "ss += x[j + 2] * x[j + 2];", "ss += x[j + 1] * x[j + 1];", "o", TRANSFORMER,
          "a copy-paste slip in the unrolled body: the third copy adds lane 1's square again",
          "x[j + 1] is read by the body already, in bounds; unroll has no obligation on the copies' indices"),
    Wrong("unroll-rmsnorm-vec-tail-skipped", "transformer.c", call(loop.unroll, "rmsnorm_vec > for j#1", 4),
          "for (int j = n / 4 * 4; j < n; j++)", "for (int j = n / 4 * 4 + 1; j < n; j++)", "o", TRANSFORMER,
          "off-by-one in the remainder loop: the first element after the unrolled part is never squared",
          "the remainder loop reads fewer cells, all in bounds"),
    # ---- vectors
    Wrong("vectorize-rmsnorm-vec-wrong-operand", "transformer.c", call(vector.vectorize, "rmsnorm_vec > for j#2"),
          "_mm512_loadu_ps(&w[jv])", "_mm512_loadu_ps(&x[jv])", "o", {**TRANSFORMER, "n": 20},
          "the vector body loads x where the scalar code reads the weight w",
          "x[jv..jv+15] is in bounds and read-only, like w; the lanes obligation is about dependences"),
    Wrong("vectorize-rmsnorm-vec-tail-skipped", "transformer.c", call(vector.vectorize, "rmsnorm_vec > for j#2"),
          "for (int j = n / 16 * 16; j < n; j++)", "for (int j = n / 16 * 16 + 1; j < n; j++)", "o", {**TRANSFORMER, "n": 20},
          "off-by-one tail after the vectors: the first element past them keeps the value it had",
          "o is written, not read: leaving one of its cells unwritten breaks no resource rule"),
    # ---- swapped operands in non-commutative updates
    Wrong("swap-operands-softmax-exp", "softmax.c", call(loop.tile, "softmax > for j#2", 4, mode="min"),
          "expf(x[i * C + j] - max_val)", "expf(max_val - x[i * C + j])", "y", {"R": 2, "C": 6},
          "the subtraction's operands are swapped: exp(max - x) instead of exp(x - max)",
          "the same cells are read; the tile has no obligation"),
    Wrong("swap-operands-softmax-vec-normalise", "transformer.c", call(loop.tile, "softmax_vec > for i#3", 4, mode="min"),
          "x[i] = x[i] / sum;", "x[i] = sum / x[i];", "x", TRANSFORMER,
          "the division's operands are swapped: sum / x instead of x / sum",
          "the same cells are read and written; the tile has no obligation"),
    Wrong("swap-operands-attention-scale", "attention.c", call(variable.bind, "attention > expr 'sqrtf(D)'", "scale"),
          "scores[j] = s / scale;", "scores[j] = scale / s;", "out", {"H": 1, "S": 3, "D": 2},
          "the scaled score is sqrt(D) / s instead of s / sqrt(D)",
          "bind's obligation is that sqrtf(D) is pure; the division reads the same variables"),
    Wrong("swap-operands-rope", "transformer.c", call(variable.inline, "transformer_token > for i#1 > def fcr"),
          "q[i] = q0 * cosf(val) - q1 * fci;", "q[i] = q1 * fci - q0 * cosf(val);", "x", TRANSFORMER,
          "the rotation of the queries subtracts the wrong way round",
          "the same cells are read and written; inlining fcr only asks that cosf(val) is pure"),
    Wrong("swap-loops-matmul-reversed-column", "matmul.c", call(loop.swap, "matmul > for j#2"),
          "A[i * K + k] * B[k * N + j]", "A[i * K + k] * B[(K - 1 - k) * N + j]", "C", {"M": 2, "N": 3, "K": 2},
          "after the swap the rows of B are walked from the other end (a reversed index map)",
          "K - 1 - k stays within the rows of B; the swap_loops obligation is about the dependences of C",
          prepare=(call(loop.fission, "matmul > for j > after 'C[i * N + j] = 0.0f'"),)),
    Wrong("tile-rmsnorm-wrong-mean", "rmsnorm.c", call(loop.tile, "rmsnorm > for j#2", 4, mode="min"),
          "ss = ss / C + 1e-5f;", "ss = ss / (C + 1) + 1e-5f;", "y", {"R": 2, "C": 6},
          "the mean of the squares divides by C + 1",
          "no access changes; the tile has no obligation"),
    Wrong("swap-sign-moe-silu", "moe.c", call(loop.tile, "moe > for i#3", 2, mode="min"),
          "expf(-val)", "expf(val)", "out", MOE,
          "SiLU with the sign slipped: val / (1 + exp(val)) instead of val / (1 + exp(-val))",
          "the same local is read; the tile has no obligation"),
    Wrong("hoist-moe-first-slot", "moe.c", call(loop.hoist, "moe > for s#1 > def best"),
          "sel[s] = best_h[s];", "sel[s] = best_h[0];", "out", MOE,
          "the hoisted array is read at the wrong slot: every slot records the first expert chosen",
          "best_h[0] is a cell of the hoisted array written before (K >= 1)"),
    # ---- accumulators and fusion
    Wrong("local-accumulator-dropped-sum", "matvec.c", call(variable.local_accumulator, "matvec > for j", "y[i]"),
          "acc += W[i * N + j] * x[j];", "acc = W[i * N + j] * x[j];", "y", {"N": 3, "D": 2},
          "the accumulator is overwritten instead of added to: only the last product survives",
          "the same cells are read and the same local written"),
    Wrong("fusion-gqa-append-dropped-value", "gqa_decode.c", call(loop.fusion, "gqa_decode > for d#1"),
          "v_cache[(g * SMAX + pos) * D + d] = v_new[g * D + d];\n", "", "v_cache", GQA,
          "a dropped term when fusing: the fused append writes the new key but not the new value",
          "v_cache is `modifies`: not writing a cell of it is allowed; the fusion obligation holds for what is "
          "left", prepare=(call(loop.fission, "gqa_decode > for d#1 > after 'k_cache[(g * SMAX + pos) * D + d] = "
                                              "k_new[g * D + d]'"),)),
    Wrong("inline-gqa-wrong-kv-head", "gqa_decode.c", call(variable.inline, "gqa_decode > def g"),
          "v_cache[(h / (H / KVH) * SMAX + t) * D + d]", "v_cache[(h % KVH * SMAX + t) * D + d]", "out", GQA,
          "query head h reads the values of kv head h % KVH instead of h / (H / KVH) (interleaved instead of "
          "grouped heads)", "h % KVH < KVH keeps every read in the cache"),
)
