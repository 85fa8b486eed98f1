"""Prompts an annotator would give, simulated from a reference mask."""

from __future__ import annotations

from typing import Optional

import numpy as np


def tight_box(mask: np.ndarray, margin: float = 0.0) -> Optional[tuple[float, float, float, float]]:
    """``(x0, y0, x1, y1)`` around the foreground of a 2D mask, grown by ``margin`` pixels; None if empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    return (cols.min() - margin, rows.min() - margin, cols.max() + margin, rows.max() + margin)


def largest_slice(mask: np.ndarray, axis: int = 2) -> int:
    """Index of the slice along IJK ``axis`` (of a ``(K, J, I)`` mask) with the most foreground."""
    sums_over = {0: (0, 1), 1: (0, 2), 2: (1, 2)}[axis]
    return int(np.argmax(mask.sum(axis=sums_over)))
