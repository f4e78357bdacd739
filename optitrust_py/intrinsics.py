"""What the x86 vector intrinsics that otp emits do to memory, so that the
checker can give their footprints: a load reads `width` consecutive floats
(for an integer vector, `_si512` and friends: its bytes, int8_t elements)
from its pointer argument, a store writes them; every other `_mm*` call on
float or integer vectors is a computation on register values. otp's own
conversions (`otp_to_bf16`, include/otp.h) touch no memory either, and its
per-lane tile products (`otp_mma_m16n8k16_bf16`, ...) the cells TILE_PRODUCTS
gives."""
from __future__ import annotations

import re
from typing import Optional

_BYTES = {"_mm512": 64, "_mm256": 32, "_mm": 16}
_NAME = re.compile(r"^(_mm512|_mm256|_mm)_(\w+?)_(ps|si512|si256|si128|epi8|epi16|epi32)$")
# bytes of one element, by the name's suffix; a whole integer vector (`_si512`)
# counts bytes: otp moves those only to and from int8_t arrays
_ELEMENT = {"ps": 4, "epi32": 4, "epi16": 2, "epi8": 1, "si512": 1, "si256": 1, "si128": 1}
# operation -> (position of the pointer argument, role)
_MEMORY = {
    "loadu": (0, "read"), "load": (0, "read"), "maskz_loadu": (1, "read"), "maskload": (0, "read"),
    "storeu": (0, "write"), "store": (0, "write"), "stream": (0, "write"), "mask_storeu": (0, "write"),
    "maskstore": (0, "write"),
}


CONVERSIONS = {"otp_bf16": "otp_to_bf16"}
"""Storage types that C does not convert to on assignment, with the function
(include/otp.h) that rounds a float into one; each saturates at the type's
largest finite value, so what it returns is always within the type's range."""


_N_MAJOR = {0: ("update", 2, 1), 1: ("update", 2, 1), 2: ("read", 16, 1), 3: ("read", 16, 1), 4: ("read", 16, 1),
            5: ("read", 16, 1)}
_K_MAJOR = {**_N_MAJOR, 4: ("read", 2, 8), 5: ("read", 2, 8)}
TILE_PRODUCTS: dict[str, dict[int, tuple[str, int, int]]] = {
    "otp_mma_m16n8k16_bf16": _N_MAJOR, "otp_mma_m16n8k16_bf16_kn": _K_MAJOR,
    "otp_mma_m16n8k16_tf32x3": _N_MAJOR, "otp_mma_m16n8k16_tf32x3_kn": _K_MAJOR}
"""otp's per-lane tensor-core products (include/otp.h, gpu.mma; bfloat16 or
float operands): what one call touches through each pointer argument, the
cells of its lane, as (role, cells, rows): `cells` consecutive cells from
the pointer in each of `rows` consecutive rows of its array. Two pairs of
accumulators it updates, two rows of A it reads, and two rows of B^T (B
stored n-major) or the pairs of columns 2t, 2t + 1 in the 16 rows of B
(stored k-major, `_kn`)."""


def memory_args(name: str, nargs: int) -> Optional[dict[int, tuple[str, int, int]]]:
    """For an intrinsic on vectors: its pointer arguments, each with its role,
    the number of consecutive elements it spans and the number of rows it
    spans them in (empty when it touches no memory). None when `name` is not
    such an intrinsic."""
    if name in CONVERSIONS.values():
        return {}
    if name in TILE_PRODUCTS:
        return TILE_PRODUCTS[name] if nargs == len(TILE_PRODUCTS[name]) + 1 else None
    m = _NAME.match(name)
    if m is None:
        return None
    width = _BYTES[m.group(1)] // _ELEMENT[m.group(3)]
    spec = _MEMORY.get(m.group(2))
    if spec is None:
        return {}
    position, role = spec
    return {position: (role, width, 1)} if position < nargs else None
