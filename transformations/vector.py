"""Explicit x86 SIMD intrinsics (AVX2, AVX-512) for register-blocked inner loops."""
from __future__ import annotations
