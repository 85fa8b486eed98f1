"""Random prompts drawn from an annotation, as SAM^Med trains its prompt encoders.

Points come from the foreground and the background with one of three schemes: ``uniform`` (any pixel),
``center`` (weighted by the distance to the region's edge, so interior pixels are favoured) and
``boundary`` (pixels within a few pixels of the edge). Boxes are the tight box moved outward or inward
per side by a random amount in ``[-d_in, d_out]`` pixels.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

SCHEMES = ("uniform", "center", "boundary")


def sample_points(
    mask: np.ndarray, count: int, scheme: str, rng: np.random.Generator, boundary_width: float = 3.0
) -> np.ndarray:
    """``count`` pixel coordinates ``(x, y)`` inside ``mask`` (empty result if the mask is empty)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown point scheme {scheme!r}; use one of {SCHEMES}")
    mask = np.asarray(mask, bool)
    if count <= 0 or not mask.any():
        return np.zeros((0, 2))
    if scheme == "uniform":
        weights = mask.astype(np.float64)
    else:
        depth = ndimage.distance_transform_edt(mask)
        weights = depth if scheme == "center" else ((depth > 0) & (depth <= boundary_width)).astype(np.float64)
        if weights.sum() == 0:
            weights = mask.astype(np.float64)
    flat = weights.ravel() / weights.sum()
    picks = rng.choice(flat.size, size=count, p=flat)
    rows, cols = np.unravel_index(picks, mask.shape)
    return np.stack([cols, rows], axis=1).astype(np.float64)


def sample_point_prompt(
    mask: np.ndarray, max_points: int, scheme: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n ∈ [1, max_points)`` points split at random between foreground (label 1) and background (label 0);
    at least one is foreground. Background points come from a band around the object, as a user would click."""
    total = int(rng.integers(1, max(2, max_points)))
    positives = int(rng.integers(1, total + 1))
    mask = np.asarray(mask, bool)
    near = ndimage.binary_dilation(mask, iterations=max(3, int(0.25 * np.sqrt(mask.sum())))) & ~mask
    fg = sample_points(mask, positives, scheme, rng)
    bg = sample_points(near, total - positives, "uniform", rng)
    points = np.concatenate([fg, bg])
    labels = np.concatenate([np.ones(len(fg), int), np.zeros(len(bg), int)])
    return points, labels


def jittered_box(
    mask: np.ndarray, d_in: float, d_out: float, rng: np.random.Generator
) -> Optional[np.ndarray]:
    """The tight box of ``mask`` with each side moved by a random amount in ``[-d_in, d_out]`` (outward positive)."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    shift = rng.uniform(-d_in, d_out, size=4)
    x0, y0 = cols.min() - shift[0], rows.min() - shift[1]
    x1, y1 = cols.max() + shift[2], rows.max() + shift[3]
    if x1 < x0:
        x0 = x1 = (x0 + x1) / 2
    if y1 < y0:
        y0 = y1 = (y0 + y1) / 2
    height, width = mask.shape
    return np.clip(np.array([x0, y0, x1, y1]), 0, [width - 1, height - 1, width - 1, height - 1])
