"""Generic navigation of the IR: paths, walks, and rebuilding along a path.

A path is a tuple of steps `(field, index)`; `index` is None for a plain
field and the position for a tuple field. Paths let targets, diffs and
obligations name a place in a tree without holding on to mutable state.
"""
from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional

from .ir import Program

PathStep = tuple[str, Optional[int]]
Path = tuple[PathStep, ...]


@lru_cache(maxsize=None)
def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "loc")


_NODE_TYPES: dict[type, bool] = {}
"""Whether instances of a type are nodes, by type: every walk asks for
every field of every node."""


def _is_node(x: Any) -> bool:
    got = _NODE_TYPES.get(type(x))
    if got is None:
        got = _NODE_TYPES[type(x)] = dataclasses.is_dataclass(x) and not isinstance(x, type)
    return got


def children(node: Any) -> Iterator[tuple[PathStep, Any]]:
    """The direct sub-nodes of `node`, with the step that reaches each."""
    for name in _fields(type(node)):
        value = getattr(node, name)
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                if _is_node(item):
                    yield (name, i), item
        elif _is_node(value):
            yield (name, None), value


def walk(node: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Pre-order walk yielding `(path, node)` for every node under `node`."""
    yield path, node
    for step, child in children(node):
        yield from walk(child, path + (step,))


def get(node: Any, path: Path) -> Any:
    for name, index in path:
        node = getattr(node, name)
        if index is not None:
            node = node[index]
    return node


def replace(node: Any, path: Path, new: Any) -> Any:
    """A copy of `node` where the node at `path` is `new`."""
    if not path:
        return new
    (name, index), rest = path[0], path[1:]
    value = getattr(node, name)
    if index is None:
        return dataclasses.replace(node, **{name: replace(value, rest, new)})
    items = list(value)
    items[index] = replace(items[index], rest, new)
    return dataclasses.replace(node, **{name: tuple(items)})


def splice(node: Any, path: Path, new: tuple[Any, ...]) -> Any:
    """Replace the tuple item at `path` (which must end in a tuple index) by
    zero or more items: how statements are inserted, removed or expanded."""
    name, index = path[-1]
    assert index is not None, "splice needs a path into a tuple"
    parent = get(node, path[:-1])
    items = getattr(parent, name)
    new_parent = dataclasses.replace(parent, **{name: items[:index] + tuple(new) + items[index + 1:]})
    return replace(node, path[:-1], new_parent)


def map_children(node: Any, fn: Callable[[Any], Any]) -> Any:
    """`node` with `fn` applied to each direct sub-node (the same object when
    nothing changed, so unchanged subtrees stay shared)."""
    changes: dict[str, Any] = {}
    for name in _fields(type(node)):
        value = getattr(node, name)
        if isinstance(value, tuple):
            new_items = tuple(fn(i) if _is_node(i) else i for i in value)
            if any(a is not b for a, b in zip(new_items, value)):
                changes[name] = new_items
        elif _is_node(value):
            new_value = fn(value)
            if new_value is not value:
                changes[name] = new_value
    return dataclasses.replace(node, **changes) if changes else node


def function_path(program: Program, name: str) -> Path:
    for i, item in enumerate(program.items):
        if getattr(getattr(item, "decl", None), "name", None) == name and hasattr(item, "body"):
            return (("items", i),)
    raise KeyError(name)


def block_of(path: Path) -> tuple[Path, int]:
    """For a statement path ending in `stmts[i]`: the block's path and i."""
    name, index = path[-1]
    if name != "stmts" or index is None:
        raise ValueError("not a statement inside a block")
    return path[:-1], index
