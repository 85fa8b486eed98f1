"""Strokes on one slice, turned into the prompts the model takes: a scribble (open polyline) becomes points along
it, a lasso (closed polygon) becomes a box and a mask the result is kept inside.

Coordinates are slice pixels ``(x, y)`` (x = column, y = row) with pixel centres at integers, as for points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from skimage.draw import polygon2mask

from ..errors import InputError

POINTS_PER_SCRIBBLE = 5  # the most points a scribble becomes (a shorter one gives fewer, see scribble_points)
MIN_POINT_SPACING_PX = 4.0  # points along a scribble are at least this far apart
MIN_LASSO_VERTICES = 3


@dataclass(frozen=True)
class Scribble:
    """An open polyline ``points (n, 2)`` drawn with one label (1 = foreground, 0 = background)."""

    points: Sequence[tuple[float, float]]
    label: int = 1


def scribble_points(polyline: np.ndarray, count: int = POINTS_PER_SCRIBBLE,
                    spacing: float = MIN_POINT_SPACING_PX) -> np.ndarray:
    """``(m, 2)`` points evenly spaced by arc length along ``polyline (n, 2)``: the midpoints of ``m`` equal
    stretches, ``m`` = at most ``count``, fewer when the stretches would be shorter than ``spacing`` (a short
    scribble is one point). Ordered from the scribble's middle outwards: a box-trained model's click search
    starts from the first "+" point (:mod:`.click_search`)."""
    polyline = np.asarray(polyline, np.float64).reshape(-1, 2)
    steps = np.hypot(*np.diff(polyline, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    length = float(along[-1])
    m = int(np.clip(np.floor(length / spacing), 1, count))
    fractions = (np.arange(m) + 0.5) / m
    fractions = fractions[np.argsort(np.abs(fractions - 0.5), kind="stable")]
    if length == 0.0:
        return polyline[:1].copy()
    wanted = fractions * length
    return np.stack([np.interp(wanted, along, polyline[:, 0]), np.interp(wanted, along, polyline[:, 1])], axis=1)


def lasso_mask(vertices: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The ``(rows, cols)`` pixels whose centres lie inside the polygon ``vertices (n, 2)``."""
    vertices = np.asarray(vertices, np.float64).reshape(-1, 2)
    return polygon2mask((rows, cols), vertices[:, ::-1])


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)``: the corner pixels of a non-empty mask's bounding box."""
    rows, cols = np.nonzero(mask)
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def checked_lasso(vertices: Sequence[Sequence[float]], rows: int, cols: int) -> np.ndarray:
    """The lasso's mask on a ``rows × cols`` slice; :class:`InputError` for too few, non-finite or outside
    vertices, or a polygon without area or without a pixel centre inside."""
    points = _checked_polyline(vertices, rows, cols, "lasso vertex")
    if len(points) < MIN_LASSO_VERTICES:
        raise InputError(f"a lasso needs at least {MIN_LASSO_VERTICES} vertices, got {len(points)}",
                         "draw a closed curve around the object")
    x, y = points.T
    area = 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    mask = lasso_mask(points, rows, cols)
    if area < 1.0 or not mask.any():
        raise InputError("the lasso encloses no area", "draw a closed curve around the object")
    return mask


def checked_scribble_points(scribble: Scribble, rows: int, cols: int) -> np.ndarray:
    """The points a scribble becomes; :class:`InputError` for an empty scribble, a bad label or a point that is not
    finite or lies outside the slice."""
    if scribble.label not in (0, 1):
        raise InputError("a scribble's label must be 1 (foreground) or 0 (background)")
    points = _checked_polyline(scribble.points, rows, cols, "scribble point")
    if not len(points):
        raise InputError("a scribble needs at least one point")
    return scribble_points(points)


def _checked_polyline(vertices: Sequence[Sequence[float]], rows: int, cols: int, what: str) -> np.ndarray:
    points = np.asarray(vertices, np.float64).reshape(-1, 2) if len(vertices) else np.zeros((0, 2))
    if not np.all(np.isfinite(points)):
        raise InputError(f"every {what} must be a pair of finite numbers")
    outside = (points[:, 0] < -0.5) | (points[:, 0] > cols - 0.5) | (points[:, 1] < -0.5) | (points[:, 1] > rows - 0.5)
    if outside.any():
        x, y = points[np.argmax(outside)]
        raise InputError(f"{what} ({x:g}, {y:g}) is outside the {cols}×{rows} slice")
    return points
