"""Finding transformations by name (`loop.tile`) for `otp apply`.

The catalogue registers its family modules as entry points of the group
`otp.transformations` (see pyproject.toml), so the engine can list and load
them without importing the catalogue by name."""
from __future__ import annotations

import importlib.metadata
from typing import Any

from .errors import OtpError
from .session import Transformation

GROUP = "otp.transformations"


def families() -> dict[str, Any]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=GROUP)}


def catalogue() -> dict[str, Transformation]:
    out: dict[str, Transformation] = {}
    for family, ep in sorted(families().items()):
        module = ep.load()
        for attr in dir(module):
            value = getattr(module, attr)
            if isinstance(value, Transformation) and value.name.startswith(family + "."):
                out[value.name] = value
    return out


def find(name: str) -> Transformation:
    table = catalogue()
    if name not in table:
        known = ", ".join(sorted(table)) or "none (is otp installed with `pip install -e .`?)"
        raise OtpError(f"unknown transformation {name!r}; known: {known}")
    return table[name]
