"""Validity obligations: the facts a transformation claims make it correct.

A transformation never checks itself beyond its structural preconditions; it
returns the new program and these obligations, and the checker of the
requested level discharges them. Until the level-2 checker exists, every
obligation is reported as *not proved* — loudly, never as a pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .ir import Expr
from .tree import Path

# The kinds of obligation, and what each one claims.
KINDS = {
    "commute": "two instruction sequences can run in either order (no write/write or read/write overlap)",
    "divides": "a size divides another under the contract's requires",
    "swap_loops": "no dependence between iterations flips direction when the loops are swapped",
    "fission": "no dependence from a later iteration of the first part to an earlier one of the second",
    "fusion": "no dependence from a later iteration of the first loop to an earlier one of the second",
    "loop_invariant": "an instruction moved before a loop has the same effect once as at every iteration: it "
                      "reads no cell the loop writes (itself included) and no other instruction writes its cells",
    "nonempty": "a loop runs at least once: start < stop (exprs: start, stop)",
    "ordered_bounds": "a loop's start is at most its stop, so it runs stop - start times (exprs: start, stop)",
    "positive": "an integer expression is positive under the contract's requires (exprs: the expression)",
    "in_range": "a split point lies in the loop's range: start <= at <= stop (exprs: start, at, stop)",
    "pure": "an expression has no side effect and reads nothing written in between",
    "lanes": "the iterations of a vectorized loop run W at a time, statement by statement in lockstep, without breaking a dependence between them",
    "inline": "the callee's body, with parameters bound to the arguments, computes what the call did",
    "delinearize": "a flattened array holds the stated shape d0 x ... x dn-1 and each index its accesses split into "
                   "lies within its dimension, 0 <= ik < dk (exprs: the shape)",
    "in_region": "every access of a loop to an array lies in a region, whose sizes are >= 1 and which lies within "
                 "the array (exprs: the origins, the sizes, then the shape its accesses are split with)",
    "no_alias": "inside a piece of code the cells of an array region are reached only through the array's name",
    "covers": "a loop writes every cell of a region before the region is copied back (exprs: as for in_region)",
    "in_type_range": "every value stored into an array is within the range of its new element type",
    "equals": "an expression has a given value each time it is evaluated there, under the contract's requires "
              "(exprs: the expression, the value)",
    "parallel": "distinct iterations of a loop touch disjoint cells (shared reads aside), except for its declared reductions, whose updates may be reordered",
    "stream": "two passes over a row touch disjoint cells at distinct iterations j != j' (one writing), apart "
              "from the running reductions (names), so they can run key by key in one pass",
    "online_softmax": "a key-block loop's running max m, sum l and output o keep l = sum_k exp(s_k - m) and "
                      "o = sum_k exp(s_k - m) v_k, from l = o = 0 to o / l (exprs: v; names: m, l, the block buffer)",
    "softmax_merge": "each chunk of a row keeps l_c = sum_k exp(s_k - m_c) and o_c = sum_k exp(s_k - m_c) v_k over "
                     "its keys, and the combination of the chunks rescales every key to exp(s_k - m), so o / l is "
                     "the softmax-weighted sum (exprs: v; names: m_c, l_c, the parts of m, l and o, the row, m, l)",
    "unaliased": "no other access of a region (nor a call in it) touches the memory of an lvalue, which may be "
                 "read before the region and written after it",
}


@dataclass(frozen=True)
class Obligation:
    """One claim, with the places it is about (paths into the program the
    step produced, unless `before` is set), the expressions it states facts
    about, and the names it concerns (the array of a region, the variables
    of the reductions whose updates may be reordered)."""

    kind: str
    claim: str
    function: str
    paths: tuple[Path, ...] = ()
    exprs: tuple[Expr, ...] = ()
    before: bool = False
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown obligation kind {self.kind!r}")

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "claim": self.claim, "function": self.function}
