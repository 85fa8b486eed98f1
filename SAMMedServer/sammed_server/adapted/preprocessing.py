"""Each paper's intensity preprocessing, recorded in the model's manifest and applied before the backbone's own.

- H-SAM (Cheng et al., CVPR 2024): CT clipped to [−125, 275] HU and scaled to [0, 1].
- MA-SAM (Chen et al., 2023, "MA-SAM: Modality-agnostic SAM adaptation for 3D medical image segmentation"): CT
  clipped to [−200, 250] HU, z-scored over the volume, then min-max scaled to [0, 1] over each 5-slice window.

Non-CT volumes (MR) have no HU range: they are clipped to their own 0.5–99.5 percentiles instead (recorded as
such). Afterwards each slice is resized/padded to the backbone input (``InputTransform``) and normalised as the
backbone expects (``SamBackend.normalize``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..engine.preprocessing import MR_PERCENTILES, looks_like_ct
from ..engine.volume import Volume
from ..errors import InputError


@dataclass(frozen=True)
class PaperPreprocessing:
    """Clip to ``clip`` HU (CT), optionally z-score over the volume, then [0, 1] per volume or per window."""

    name: str
    clip: tuple[float, float]
    zscore: bool
    window_minmax: bool

    def volume_values(self, volume: Volume) -> np.ndarray:
        """The volume ``(K, J, I)`` as float32 after clipping (and z-scoring); in [0, 1] unless ``window_minmax``."""
        array = np.asarray(volume.array, dtype=np.float32)
        low, high = self.clip if looks_like_ct(volume) else np.percentile(array, MR_PERCENTILES)
        if not high > low:
            raise InputError(f"{volume.content_hash[:8]}: the volume has no intensity range to normalise")
        array = np.clip(array, low, high)
        if self.zscore:
            return (array - array.mean()) / max(float(array.std()), 1e-6)
        return (array - low) / (high - low)

    def window_values(self, slices: np.ndarray) -> np.ndarray:
        """``(T, rows, cols)`` slices of :meth:`volume_values` → [0, 1] (min-max over the window when per-window)."""
        if not self.window_minmax:
            return slices
        low, high = float(slices.min()), float(slices.max())
        return (slices - low) / max(high - low, 1e-6)

    def window_dependent(self, backbone_normalization: str) -> bool:
        """Whether a slice's model input depends on its window. Per-window min-max is an increasing affine map of
        the slice, which a per-image min-max backbone normalisation ("minmax", LiteMedSAM) undoes exactly."""
        return self.window_minmax and backbone_normalization != "minmax"

    def describe(self, volume: Volume | None = None) -> dict[str, Any]:
        record: dict[str, Any] = asdict(self)
        if volume is not None and not looks_like_ct(volume):
            record["clip"] = f"percentiles {MR_PERCENTILES[0]}-{MR_PERCENTILES[1]} (not CT)"
        return record

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


HSAM_PREPROCESSING = PaperPreprocessing("hsam", (-125.0, 275.0), zscore=False, window_minmax=False)
MASAM_PREPROCESSING = PaperPreprocessing("masam", (-200.0, 250.0), zscore=True, window_minmax=True)
PREPROCESSING = {"hsam": HSAM_PREPROCESSING, "decoder_only": HSAM_PREPROCESSING, "masam": MASAM_PREPROCESSING}


def preprocessing_for(mode: str) -> PaperPreprocessing:
    if mode not in PREPROCESSING:
        raise InputError(f"unknown automatic model {mode!r}", f"use one of {', '.join(PREPROCESSING)}")
    return PREPROCESSING[mode]

