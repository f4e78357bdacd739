"""What the x86 vector intrinsics that otp emits do to memory, so that the
checker can give their footprints: a load reads `width` consecutive floats
from its pointer argument, a store writes them; every other `_mm*` call is a
computation on register values."""
from __future__ import annotations

import re
from typing import Optional

_WIDTHS = {"_mm512": 16, "_mm256": 8, "_mm": 4}
_NAME = re.compile(r"^(_mm512|_mm256|_mm)_(\w+?)_ps$")
# operation -> (position of the pointer argument, role)
_MEMORY = {
    "loadu": (0, "read"), "load": (0, "read"), "maskz_loadu": (1, "read"), "maskload": (0, "read"),
    "storeu": (0, "write"), "store": (0, "write"), "stream": (0, "write"), "mask_storeu": (0, "write"),
    "maskstore": (0, "write"),
}


def memory_args(name: str, nargs: int) -> Optional[dict[int, tuple[str, int]]]:
    """For an intrinsic on floats: its pointer arguments, each with its role
    and the number of floats it spans (empty when it touches no memory).
    None when `name` is not such an intrinsic."""
    m = _NAME.match(name)
    if m is None:
        return None
    width = _WIDTHS[m.group(1)]
    spec = _MEMORY.get(m.group(2))
    if spec is None:
        return {}
    position, role = spec
    return {position: (role, width)} if position < nargs else None
