"""Prompts on one slice, validated against the slice, in slice pixel coordinates ``(x, y)``; strokes (scribbles,
a lasso) become points and a box here (:mod:`.strokes`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from ..errors import InputError
from .strokes import Scribble, checked_lasso, checked_scribble_points, mask_box


@dataclass(frozen=True)
class SlicePrompts:
    """Points (``labels`` 1 = foreground, 0 = background), a box ``(x0, y0, x1, y1)`` of corner pixels,
    optionally a previous prediction's low-resolution logits as mask input, and optionally ``context``: a
    ``(rows, cols)`` mask the object probably resembles (the segment on the neighbouring slice), which guides
    the click search of box-trained models.

    Strokes: each of ``scribbles`` adds points along it (its label kept); a ``lasso`` (polygon vertices) becomes
    the box around it, and its rasterised polygon ``lasso_mask`` bounds the masks (:meth:`validated` does both)."""

    points: Sequence[tuple[float, float]] = ()
    labels: Sequence[int] = ()
    box: Optional[tuple[float, float, float, float]] = None
    mask_input: Optional[np.ndarray] = field(default=None, repr=False)
    multimask: bool = False
    context: Optional[np.ndarray] = field(default=None, repr=False)
    lasso: Optional[Sequence[tuple[float, float]]] = field(default=None, repr=False)
    scribbles: Sequence[Scribble] = field(default=(), repr=False)
    lasso_mask: Optional[np.ndarray] = field(default=None, repr=False)

    def validated(self, rows: int, cols: int) -> "SlicePrompts":
        """Check the prompts against a ``rows × cols`` slice; a box reaching past the edge is clipped; scribbles
        and a lasso are turned into points, a box and ``lasso_mask``."""
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2) if len(self.points) else np.zeros((0, 2))
        if len(self.labels) != len(points):
            raise InputError(f"{len(points)} point(s) but {len(self.labels)} label(s)")
        if any(label not in (0, 1) for label in self.labels):
            raise InputError("point labels must be 1 (foreground) or 0 (background)")
        if not np.all(np.isfinite(points)):
            raise InputError("point coordinates must be finite numbers")
        outside = (points[:, 0] < -0.5) | (points[:, 0] > cols - 0.5) | (points[:, 1] < -0.5) | (points[:, 1] > rows - 0.5)
        if outside.any():
            x, y = points[np.argmax(outside)]
            raise InputError(f"point ({x:g}, {y:g}) is outside the {cols}×{rows} slice")
        labels = list(self.labels)
        for scribble in self.scribbles:
            along = checked_scribble_points(scribble, rows, cols)
            points = np.concatenate([points, along])
            labels += [scribble.label] * len(along)
        box = None if self.box is None else _clip_box(self.box, rows, cols)
        lasso_mask = None
        if self.lasso is not None:
            if box is not None:
                raise InputError("give a lasso or a box, not both", "the lasso's bounding box is its box")
            lasso_mask = checked_lasso(self.lasso, rows, cols)
            box = mask_box(lasso_mask)
        if box is None and not len(points):
            raise InputError("give at least one point or a box (or a lasso, or a scribble)")
        context = None
        if self.context is not None:
            context = np.asarray(self.context, dtype=bool)
            if context.shape != (rows, cols):
                raise InputError(f"the context mask has shape {context.shape}, the slice is {rows}×{cols}")
        return SlicePrompts([tuple(p) for p in points], labels, box, self.mask_input, self.multimask, context,
                            lasso_mask=lasso_mask)


def _clip_box(box: Sequence[float], rows: int, cols: int) -> tuple[float, float, float, float]:
    values = np.asarray(box, dtype=np.float64)
    if values.shape != (4,) or not np.all(np.isfinite(values)):
        raise InputError(f"a box needs four finite numbers x0,y0,x1,y1, got {list(box)}")
    x0, y0, x1, y1 = values
    if x1 < x0 or y1 < y0:
        raise InputError(f"box ({x0:g},{y0:g},{x1:g},{y1:g}) has x1 < x0 or y1 < y0")
    if x1 < 0 or y1 < 0 or x0 > cols - 1 or y0 > rows - 1:
        raise InputError(f"box ({x0:g},{y0:g},{x1:g},{y1:g}) lies outside the {cols}×{rows} slice")
    return (max(x0, 0.0), max(y0, 0.0), min(x1, cols - 1.0), min(y1, rows - 1.0))
