"""PNG overlays of masks and boxes on a slice, for people to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def overlay(
    image01: np.ndarray,
    masks: Sequence[np.ndarray],
    colors: Sequence[tuple[float, float, float]],
    boxes: Sequence[Optional[tuple[float, float, float, float]]] = (),
    scale: int = 4,
    alpha: float = 0.45,
) -> Image.Image:
    """A grey slice (values in [0, 1]) with each mask tinted in its colour and each box outlined."""
    rgb = np.repeat(np.clip(image01, 0, 1)[..., None], 3, axis=2)
    for mask, color in zip(masks, colors):
        mask = np.asarray(mask, bool)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(color)
    picture = Image.fromarray((rgb * 255).astype(np.uint8)).resize(
        (image01.shape[1] * scale, image01.shape[0] * scale), Image.NEAREST
    )
    draw = ImageDraw.Draw(picture)
    for box, color in zip(boxes, colors):
        if box is not None:
            x0, y0, x1, y1 = ((np.asarray(box) + 0.5) * scale).tolist()
            draw.rectangle((x0, y0, x1, y1), outline=tuple(int(255 * c) for c in color), width=2)
    return picture


def side_by_side(left: Image.Image, right: Image.Image, path: Path, gap: int = 8) -> Path:
    """Save two pictures next to each other (e.g. prediction | reference) as one PNG."""
    canvas = Image.new("RGB", (left.width + gap + right.width, max(left.height, right.height)), "white")
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + gap, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
