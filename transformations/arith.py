"""Integer index arithmetic, rewritten only where Z3 proves the rewrite."""
from __future__ import annotations
