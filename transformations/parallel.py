"""Parallel loops: OpenMP parallel_for, simd, privatize_reduction."""
from __future__ import annotations
