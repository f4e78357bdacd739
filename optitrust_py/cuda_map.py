"""Which loops run on the GPU, and how: the `#pragma otp gpu block x` marks.

A loop mapped to the GPU stays an ordinary C loop in every step, so gcc,
the exec check and levels 2 and 3 still read a sequential program; the mark
only tells the CUDA printer (`cuda_emit`) to run its iterations as the
blocks (`block`) or the threads of a block (`thread`) along one axis of the
grid. Sequential execution is a faithful model of the GPU run when the
iterations of every mapped loop touch disjoint cells (the obligation
`parallel`, which level 2 re-proves for every mapped loop a step changes)
and consecutive thread loops of a block are separated by a barrier (which
the printer always emits).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Optional, Sequence

import z3

from . import ir
from .obligation import Obligation
from .smt import int_term
from .tree import Path, walk

LEVELS = ("block", "thread")
AXES = ("x", "y", "z")
MAX_THREADS = 1024
_PREFIX = ("otp", "gpu")


_SUMS = re.compile(r"reduction\(\+:(\w+(?:,\w+)*)\)$")


def mark(level: str, axis: str, sums: Sequence[str] = ()) -> str:
    """The pragma text (without `#pragma`) that maps a loop to `level` along
    `axis`; `sums` are the arrays its iterations add into (`reduction(+:out)`:
    distinct blocks may update one cell, the printer makes those updates
    atomic, and level 2 lets such updates be reordered)."""
    return f"otp gpu {level} {axis}" + (f" reduction(+:{','.join(sums)})" if sums else "")


LAST_FIRST = "otp gpu last_first"


def last_first(loop: Any) -> bool:
    """Whether a block loop's blocks are launched from its last iteration
    to its first (gpu.last_first)."""
    return isinstance(loop, ir.For) and LAST_FIRST in loop.pragmas


_MIN_BLOCKS = ("otp", "gpu", "min_blocks")


def min_blocks_mark(count: int) -> str:
    """The pragma text of a block loop whose kernel nvcc must fit `count`
    times on a multiprocessor (gpu.launch_bounds)."""
    return " ".join(_MIN_BLOCKS + (str(count),))


def min_blocks(loop: Any) -> Optional[int]:
    """The blocks per multiprocessor gpu.launch_bounds asked of a block loop, else None."""
    if isinstance(loop, ir.For):
        for p in loop.pragmas:
            words = p.split()
            if tuple(words[:3]) == _MIN_BLOCKS and len(words) == 4 and words[3].isdigit():
                return int(words[3])
    return None


_ASYNC = "async"


def vector_mark(cells: int, asynchronous: bool = False) -> str:
    """The pragma text of a copy loop the printer runs `cells` cells (16
    bytes) at a time, as `int4` loads and stores (gpu.vector_copy), or, when
    `asynchronous`, as cp.async copies into shared memory (gpu.async_copy)."""
    return f"otp gpu int4 {cells}" + (f" {_ASYNC}" if asynchronous else "")



def _vector_words(loop: Any) -> Optional[list[str]]:
    if isinstance(loop, ir.For):
        for p in loop.pragmas:
            words = p.split()
            if words[:3] == ["otp", "gpu", "int4"] and len(words) in (4, 5) and words[3].isdigit() \
                    and words[4:] in ([], [_ASYNC]):
                return words
    return None


def vector_cells(loop: Any) -> Optional[int]:
    """The cells per `int4` of a loop gpu.vector_copy marked, else None."""
    words = _vector_words(loop)
    return int(words[3]) if words else None


def async_copy(loop: Any) -> bool:
    """Whether a loop is a copy gpu.async_copy marked."""
    words = _vector_words(loop)
    return bool(words) and words[4:] == [_ASYNC]


def _mark_words(loop: Any) -> Optional[list[str]]:
    if not isinstance(loop, ir.For):
        return None
    for p in loop.pragmas:
        words = p.split()
        if tuple(words[:2]) == _PREFIX and len(words) in (4, 5) and words[2] in LEVELS and words[3] in AXES \
                and (len(words) == 4 or _SUMS.match(words[4])):
            return words
    return None


def mapping(loop: Any) -> Optional[tuple[str, str]]:
    """(level, axis) of a loop mapped to the GPU, else None."""
    words = _mark_words(loop)
    return (words[2], words[3]) if words is not None else None


def sums(loop: Any) -> tuple[str, ...]:
    """The arrays a mapped loop's iterations add into (its mark's reduction clause)."""
    words = _mark_words(loop)
    found = _SUMS.match(words[4]) if words is not None and len(words) == 5 else None
    return tuple(found.group(1).split(",")) if found else ()


def mapped_loops(node: Any, path: Path = ()) -> Iterator[tuple[Path, ir.For]]:
    """Every loop under `node` that is mapped to blocks or threads."""
    for p, n in walk(node, path):
        if mapping(n) is not None:
            yield p, n


def thread_extent(loop: ir.For) -> Optional[tuple[int, bool]]:
    """How many threads a unit-step loop needs, and whether it runs exactly
    that many iterations: (16, True) for `i < b + 16`; (16, False) for the
    last tile of `loop.tile(..., mode="min")`, `i < (b + 16 < n ? b + 16 : n)`,
    whose extra threads skip the body; None otherwise."""
    exact = constant_extent(loop)
    if exact is not None:
        return exact, True
    stop = loop.stop
    if isinstance(stop, ir.Ternary) and stop.cond == ir.Binop("<", stop.then, stop.other):
        bounds = [constant_extent(dataclasses.replace(loop, stop=e)) for e in (stop.then, stop.other)]
        known = [n for n in bounds if n is not None]
        return (min(known), False) if known else None
    return None


def constant_extent(loop: ir.For) -> Optional[int]:
    """How many iterations a unit-step loop runs when that is a constant
    (`for (i = bi; i < bi + 16; i++)`: 16), else None."""
    if loop.step != ir.Const("1"):
        return None
    start, stop = int_term(loop.start), int_term(loop.stop)
    if start is None or stop is None:
        return None
    count = z3.simplify(stop - start)
    return count.as_long() if z3.is_int_value(count) else None


def recheck_obligations(before: ir.Program, after: ir.Program, declared: Sequence[Obligation]) \
        -> tuple[Obligation, ...]:
    """`parallel` for every mapped loop of a function the step changed, apart
    from those the step itself declares: a later step (a fusion, a moved
    statement) must not make the blocks or threads of a mapped loop race."""
    have = {(o.function, o.paths[0]) for o in declared if o.kind == "parallel" and o.paths}
    out = []
    for i, f in enumerate(after.items):
        if not isinstance(f, ir.FuncDef) or before.function(f.name) == f:
            continue
        for path, loop in mapped_loops(f, (("items", i),)):
            if (f.name, path) not in have:
                level, axis = mapping(loop)  # type: ignore[misc]
                out.append(Obligation("parallel", f"distinct iterations of the {level} loop for {loop.index} "
                                      f"({level} {axis}) still touch disjoint cells", f.name, (path,)))
    return tuple(out)
