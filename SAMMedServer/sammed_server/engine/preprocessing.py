"""Explicit, recorded preprocessing: intensity windowing and the slice ↔ model-input geometry.

Every embedding is computed from ``IntensityWindow`` (what maps voxel values to [0, 1]) and an
``InputTransform`` (resize-longest-side at the slice's physical aspect ratio, then pad bottom/right
to the model's square input). Both are plain values; their hash is part of the embedding cache key.

Coordinates use pixel indices (pixel ``c`` covers ``[c - 0.5, c + 0.5]``). Resizing by ``s`` maps
continuous positions ``u = c + 0.5`` to ``u * s``, so index ``c`` maps to ``(c + 0.5) * s - 0.5``:
the same convention as ``torch.nn.functional.interpolate(..., align_corners=False)``, which does
the image resize, so prompts and pixels cannot drift apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .volume import Volume

CT_WINDOWS: dict[str, tuple[float, float]] = {
    # name: (level, width) in HU
    "abdomen": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
MR_PERCENTILES = (0.5, 99.5)


@dataclass(frozen=True)
class IntensityWindow:
    """Voxel values in ``[lower, upper]`` map linearly to [0, 1]; ``source`` records why."""

    lower: float
    upper: float
    source: str

    def apply(self, image: np.ndarray) -> np.ndarray:
        scaled = (np.asarray(image, dtype=np.float32) - self.lower) / max(self.upper - self.lower, 1e-6)
        return np.clip(scaled, 0.0, 1.0)


def window_from_level_width(level: float, width: float, source: str = "window/level") -> IntensityWindow:
    if not width > 0:
        raise InputError(f"window width must be positive, got {width}")
    return IntensityWindow(level - width / 2, level + width / 2, f"{source} {level:g}/{width:g}")


def looks_like_ct(volume: Volume) -> bool:
    """Hounsfield units: air at about -1000 somewhere in the volume."""
    return float(volume.array.min()) <= -900 and float(volume.array.max()) >= 0


def resolve_window(volume: Volume, window: Optional[str] = None) -> IntensityWindow:
    """Turn a user's choice into a concrete window.

    ``window`` is a CT preset name (``abdomen``, ``lung``, ``bone``, ``brain``), ``mr`` (percentile
    clip over the volume), ``LEVEL,WIDTH``, or ``None``/``auto``: abdomen for CT, percentiles otherwise.
    """
    choice = (window or "auto").strip().lower()
    if choice == "auto":
        choice = "abdomen" if looks_like_ct(volume) else "mr"
    if choice in CT_WINDOWS:
        return window_from_level_width(*CT_WINDOWS[choice], source=f"ct preset {choice}")
    if choice == "mr":
        lo, hi = np.percentile(volume.array, MR_PERCENTILES)
        if hi <= lo:
            hi = lo + 1.0
        return IntensityWindow(float(lo), float(hi), f"percentile clip {MR_PERCENTILES[0]}-{MR_PERCENTILES[1]}")
    try:
        level, width = (float(v) for v in choice.split(","))
    except ValueError:
        raise InputError(
            f"unknown window {window!r}",
            f"use one of {', '.join(CT_WINDOWS)}, mr, auto, or LEVEL,WIDTH such as 40,400",
        ) from None
    return window_from_level_width(level, width)


@dataclass(frozen=True)
class InputTransform:
    """Geometry from a slice of ``(rows, cols)`` pixels to a square model input of ``size``.

    The slice is resized to ``(new_rows, new_cols)`` (longest physical side = ``size``, so
    anisotropic pixels become square) and zero-padded at the bottom/right.
    """

    rows: int
    cols: int
    new_rows: int
    new_cols: int
    size: int

    @classmethod
    def for_slice(cls, rows: int, cols: int, spacing: tuple[float, float], size: int, isotropic: bool = True) -> "InputTransform":
        height, width = (rows * spacing[0], cols * spacing[1]) if isotropic else (float(rows), float(cols))
        scale = size / max(height, width)
        new_rows = min(size, max(1, int(round(height * scale))))
        new_cols = min(size, max(1, int(round(width * scale))))
        return cls(rows, cols, new_rows, new_cols, size)

    @property
    def scale_xy(self) -> np.ndarray:
        return np.array([self.new_cols / self.cols, self.new_rows / self.rows])

    def points_to_model(self, xy: np.ndarray) -> np.ndarray:
        """Slice pixel coordinates ``(..., 2)`` as ``(x, y)`` → model input coordinates."""
        return (np.asarray(xy, dtype=np.float64) + 0.5) * self.scale_xy - 0.5

    def points_from_model(self, xy: np.ndarray) -> np.ndarray:
        return (np.asarray(xy, dtype=np.float64) + 0.5) / self.scale_xy - 0.5

    def box_to_model(self, box: np.ndarray) -> np.ndarray:
        """``(x0, y0, x1, y1)`` corner pixels → model coordinates."""
        return self.points_to_model(np.asarray(box, dtype=np.float64).reshape(2, 2)).reshape(4)

    def box_to_slice(self, box: np.ndarray) -> np.ndarray:
        """Model coordinates ``(x0, y0, x1, y1)`` → slice corner pixels."""
        return self.points_from_model(np.asarray(box, dtype=np.float64).reshape(2, 2)).reshape(4)

    def resize(self, image: np.ndarray) -> torch.Tensor:
        """A ``(rows, cols)`` slice → ``(1, new_rows, new_cols)`` float tensor (bilinear)."""
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
        return F.interpolate(tensor, size=(self.new_rows, self.new_cols), mode="bilinear", align_corners=False)[0]

    def pad(self, resized: torch.Tensor) -> torch.Tensor:
        """``(C, new_rows, new_cols)`` → ``(C, size, size)``, zero-padded at the bottom/right."""
        return F.pad(resized, (0, self.size - self.new_cols, 0, self.size - self.new_rows))

    def image_to_model(self, image: np.ndarray) -> torch.Tensor:
        """A slice → ``(1, size, size)`` model-input tensor, resized and padded."""
        return self.pad(self.resize(image))

    def logits_to_slice(self, logits: torch.Tensor) -> torch.Tensor:
        """Model-space logits ``(N, h, w)`` (any square resolution) → slice-space logits ``(N, rows, cols)``."""
        full = F.interpolate(logits[None].float(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        valid = full[..., : self.new_rows, : self.new_cols]
        return F.interpolate(valid, size=(self.rows, self.cols), mode="bilinear", align_corners=False)[0]

    def mask_to_model(self, mask: np.ndarray, resolution: int) -> torch.Tensor:
        """A slice-space binary mask → ``(1, resolution, resolution)`` logits (±8) for SAM's mask input."""
        image = self.image_to_model(np.asarray(mask, dtype=np.float32))
        low = F.interpolate(image[None], size=(resolution, resolution), mode="bilinear", align_corners=False)[0]
        return (low - 0.5) * 16.0


@dataclass(frozen=True)
class Preprocessing:
    """Everything that turns a volume slice into model input, recorded and hashed for the cache."""

    window: IntensityWindow
    input_size: int
    normalization: str  # how the backend normalises its [0, 1] input ("minmax", "imagenet")
    isotropic: bool = True

    def fingerprint(self) -> str:
        record = asdict(self)
        record["window"] = {"lower": round(self.window.lower, 4), "upper": round(self.window.upper, 4)}
        return _hash(record)

    def describe(self) -> dict:
        return {**asdict(self), "fingerprint": self.fingerprint()}


def _hash(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
