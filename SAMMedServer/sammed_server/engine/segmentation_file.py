"""Writing results as files Slicer opens with the right geometry: ``.seg.nrrd`` or a labelmap image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import slicerio

from ..errors import InputError
from .volume import Volume

# Distinct, colour-blind-friendly defaults (Okabe-Ito, then Tableau), RGB in [0, 1].
PALETTE = [
    (0.902, 0.624, 0.0), (0.337, 0.706, 0.914), (0.0, 0.620, 0.451), (0.941, 0.894, 0.259),
    (0.0, 0.447, 0.698), (0.835, 0.369, 0.0), (0.800, 0.475, 0.655), (0.580, 0.404, 0.741),
    (0.549, 0.337, 0.294), (0.498, 0.498, 0.498), (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
]


@dataclass(frozen=True)
class Segment:
    """A named, coloured binary mask on the volume's ``(K, J, I)`` grid."""

    name: str
    mask: np.ndarray
    color: tuple[float, float, float]


def default_color(index: int) -> tuple[float, float, float]:
    return PALETTE[index % len(PALETTE)]


def write_segmentation(volume: Volume, segments: Sequence[Segment], path: str | Path) -> Path:
    """Write ``segments`` on ``volume``'s grid: ``.seg.nrrd`` keeps names and colours (overlaps go to extra
    layers); ``.nii``/``.nii.gz``/``.nrrd``/``.mha`` get a labelmap with values 1..N in segment order."""
    path = Path(path)
    for segment in segments:
        if segment.mask.shape != volume.array.shape:
            raise InputError(f"segment {segment.name!r} has shape {segment.mask.shape}, the volume {volume.array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".seg.nrrd"):
        _write_seg_nrrd(volume, segments, path)
    elif path.name.endswith((".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")):
        labelmap = np.zeros(volume.array.shape, dtype=np.uint8 if len(segments) < 256 else np.uint16)
        for value, segment in enumerate(segments, start=1):
            labelmap[segment.mask.astype(bool)] = value
        sitk.WriteImage(volume.to_sitk(labelmap), str(path), useCompression=True)
    else:
        raise InputError(f"cannot write {path.name}: use .seg.nrrd, .nii.gz, .nii, .nrrd or .mha")
    return path


def ijk_to_lps(volume: Volume) -> np.ndarray:
    """The 4×4 voxel → physical (LPS) matrix of ``volume``."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.reshape(volume.direction, (3, 3)) @ np.diag(volume.spacing)
    matrix[:3, 3] = volume.origin
    return matrix


def _write_seg_nrrd(volume: Volume, segments: Sequence[Segment], path: Path) -> None:
    segmentation = slicerio.create_segmentation(volume.shape_ijk, ijk_to_lps(volume))
    for value, segment in enumerate(segments, start=1):
        slicerio.add_segment(
            segmentation,
            np.ascontiguousarray(segment.mask.astype(bool).transpose(2, 1, 0)),  # (K, J, I) → (I, J, K)
            {"id": f"Segment_{value}", "name": segment.name, "color": list(segment.color), "labelValue": value},
        )
    slicerio.write_segmentation(str(path), segmentation)
