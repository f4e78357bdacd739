"""Data-layout transformations of arrays: reorder_dims, tile_dim, local_buffer, set_precision."""
from __future__ import annotations
