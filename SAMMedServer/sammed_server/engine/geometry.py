"""Geometry of labelmaps and of everything learned: labels checked against their image, and the canonical frame.

**Labels against their image.** A labelmap belongs to an image when direction, origin and spacing agree within
:data:`TOLERANCE_MM` (and the shapes match). Otherwise it is resampled onto the image grid (nearest neighbour)
when the two cover the same physical space, with one warning line saying so; a labelmap that does not overlap the
image in physical space is an error.

**The canonical frame** (``docs/geometry.md``). Stored artefacts (SAP-Nets, H-SAM / MA-SAM / decoder-only models)
learn and segment in one frame, whatever the voxel order of the volume given to them:

- orientation RAS (ITK/DICOM code: the I axis points to the patient's Right, J Anterior, K Superior), reached by
  ``SimpleITK.DICOMOrient``: a pure permutation/flip of the voxels, so nothing is interpolated;
- in the slice plane, ``pixel_mm`` pixels (1.5 mm) on a ``size`` × ``size`` grid (256: 384 mm, the width of an
  adult abdomen) centred on the body (centre of mass of the voxels above the Otsu threshold), linear for
  intensities; the slicing axis keeps its voxels, so a native slice is one canonical slice.

Results come back to the input's own grid by nearest-neighbour resampling in physical space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .volume import AXIS_NAMES, Volume, load_volume, slice_index, volume_from_array

log = logging.getLogger(__name__)

TOLERANCE_MM = 1e-3  # origin and spacing (mm), and direction cosines, must agree this closely
ORIENTATION = "RAS"
PIXEL_MM = 1.5
GRID_SIZE = 256
_PAIRS = {"R": ("R", "L"), "L": ("R", "L"), "A": ("A", "P"), "P": ("A", "P"), "S": ("S", "I"), "I": ("S", "I")}


# -- labels against their image -------------------------------------------------------------------------------------

def same_grid(a: Volume, b: Volume, tolerance: float = TOLERANCE_MM) -> bool:
    """Same shape, and spacing, origin and direction within ``tolerance``."""
    return (a.array.shape == b.array.shape
            and np.allclose(a.spacing, b.spacing, rtol=0, atol=tolerance)
            and np.allclose(a.origin, b.origin, rtol=0, atol=tolerance)
            and np.allclose(a.direction, b.direction, rtol=0, atol=tolerance))


def physical_overlap(labels: Volume, image: Volume) -> float:
    """Share of the image's physical bounding box (voxel edges, LPS axis-aligned) inside the labelmap's."""
    low_a, high_a = _bounds(image)
    low_b, high_b = _bounds(labels)
    inside = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0, None)
    return float(np.prod(inside) / np.prod(high_a - low_a))


def _bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(volume.shape_ijk, float)
    corners = np.array([[x, y, z] for x in (-0.5, size[0] - 0.5) for y in (-0.5, size[1] - 0.5)
                        for z in (-0.5, size[2] - 0.5)])
    direction = np.reshape(volume.direction, (3, 3))
    points = np.asarray(volume.origin) + (corners * np.asarray(volume.spacing)) @ direction.T
    return points.min(0), points.max(0)


def labels_on_image(labels: Volume, image: Volume, what: str = "labels") -> np.ndarray:
    """``labels`` as a ``(K, J, I)`` array on ``image``'s grid: as they are when the grids agree, else resampled
    (nearest neighbour) with one warning line; an :class:`InputError` when they do not overlap in physical space."""
    if same_grid(labels, image):
        return labels.array
    overlap = physical_overlap(labels, image)
    resampled = None
    if overlap > 0:
        resampled = sitk.GetArrayFromImage(sitk.Resample(labels.to_sitk(), image.to_sitk(), sitk.Transform(),
                                                         sitk.sitkNearestNeighbor, 0))
    if resampled is None or (labels.array.any() and not resampled.any()):
        raise InputError(f"the {what} do not overlap the image in physical space",
                         f"{what}: {_describe(labels)}; image: {_describe(image)}")
    log.warning("the %s grid differs from the image's (%s vs %s): resampled onto the image grid (nearest neighbour, "
                "%.0f%% of the image covered)", what, _describe(labels), _describe(image), 100 * overlap)
    return resampled


def load_labels(path, image: Volume, what: str = "labels") -> np.ndarray:
    """Read a labelmap and put it on ``image``'s grid (see :func:`labels_on_image`)."""
    return labels_on_image(load_volume(path), image, what)


def _describe(volume: Volume) -> str:
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(volume.direction)
    return (f"{'×'.join(map(str, volume.shape_ijk))} {code}, spacing {_mm(volume.spacing)}, "
            f"origin {_mm(volume.origin)}")


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


# -- the canonical frame ----------------------------------------------------------------------------------------------

def volume_from_sitk(image: sitk.Image) -> Volume:
    return volume_from_array(sitk.GetArrayFromImage(image), image.GetSpacing(), image.GetOrigin(),
                             image.GetDirection())


def orientation_code(volume: Volume) -> str:
    """The nearest axis-aligned orientation code of ``volume`` (e.g. ``RAS``: I → Right, J → Anterior, K → Superior)."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(volume.direction)


def canonical_axis(volume: Volume, axis: int, orientation: str = ORIENTATION) -> tuple[int, bool]:
    """The canonical axis that ``volume``'s IJK ``axis`` becomes, and whether its slice order is reversed."""
    letter = orientation_code(volume)[axis]
    target = next(n for n, c in enumerate(orientation) if c in _PAIRS[letter])
    return target, orientation[target] != letter


@dataclass(frozen=True)
class CanonicalFrame:
    """The frame an artefact learns in: orientation, slicing ``axis`` in it, and the in-plane grid (``pixel_mm``
    None: orientation only)."""

    axis: int = 2
    pixel_mm: Optional[float] = PIXEL_MM
    size: int = GRID_SIZE
    orientation: str = ORIENTATION

    @classmethod
    def for_volume(cls, volume: Volume, axis: int, pixel_mm: Optional[float] = PIXEL_MM,
                   size: int = GRID_SIZE) -> "CanonicalFrame":
        """The frame in which ``volume`` sliced along its own ``axis`` is seen."""
        return cls(canonical_axis(volume, axis)[0], pixel_mm, size)

    def to_manifest(self) -> dict[str, Any]:
        return {"orientation": self.orientation, "axis": self.axis, "pixel_mm": self.pixel_mm, "size": self.size}

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> Optional["CanonicalFrame"]:
        """The artefact's frame; None for artefacts stored before frames existed (they work on native slices)."""
        frame = manifest.get("frame")
        if frame is None:
            log.warning("artefact %s has no canonical frame (stored by an older version): it segments the volume's "
                        "own slices, so it only fits volumes stored like the one it was trained on",
                        manifest.get("id", "?"))
            return None
        return cls(int(frame["axis"]), frame.get("pixel_mm"), int(frame.get("size", GRID_SIZE)), frame["orientation"])

    def view(self, volume: Volume) -> "CanonicalView":
        return CanonicalView(volume, self)


class CanonicalView:
    """``native`` seen in a :class:`CanonicalFrame`: the canonical volume and exact label mappings both ways."""

    def __init__(self, native: Volume, frame: CanonicalFrame) -> None:
        self.native, self.frame = native, frame
        self._native_code = orientation_code(native)
        oriented = sitk.DICOMOrient(native.to_sitk(), frame.orientation)
        self._reference = oriented if frame.pixel_mm is None else self._grid(oriented)
        image = oriented if frame.pixel_mm is None else sitk.Resample(
            oriented, self._reference, sitk.Transform(), sitk.sitkLinear, float(native.array.min()))
        self.volume = volume_from_sitk(image)

    def _grid(self, oriented: sitk.Image) -> sitk.Image:
        """The canonical grid: ``size`` × ``size`` pixels of ``pixel_mm`` in the slice plane around the body centre,
        the slicing axis as in ``oriented``."""
        frame, spacing = self.frame, np.array(oriented.GetSpacing())
        size, new_spacing = list(oriented.GetSize()), spacing.copy()
        centre = body_centre(sitk.GetArrayViewFromImage(oriented))
        start = np.zeros(3)
        for a in range(3):
            if a != frame.axis:
                size[a], new_spacing[a] = frame.size, frame.pixel_mm
                start[a] = centre[a] - (frame.size - 1) / 2 * frame.pixel_mm / spacing[a]
        reference = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
        reference.SetSpacing(new_spacing.tolist())
        reference.SetDirection(oriented.GetDirection())
        reference.SetOrigin(oriented.TransformContinuousIndexToPhysicalPoint(start.tolist()))
        return reference

    def to_canonical(self, labels: np.ndarray) -> np.ndarray:
        """A labelmap on the native grid → the canonical grid (nearest neighbour; a pure permutation/flip when the
        frame has no in-plane grid)."""
        oriented = sitk.DICOMOrient(self.native.to_sitk(np.asarray(labels)), self.frame.orientation)
        if self.frame.pixel_mm is not None:
            oriented = sitk.Resample(oriented, self._reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(oriented)

    def to_native(self, labels: np.ndarray) -> np.ndarray:
        """A labelmap on the canonical grid → the native grid (exact inverse of the orientation; nearest neighbour
        in physical space from the in-plane grid, 0 outside it)."""
        image = self.volume.to_sitk(np.asarray(labels))
        if self.frame.pixel_mm is None:
            back = sitk.DICOMOrient(image, self._native_code)
        else:
            back = sitk.Resample(image, self.native.to_sitk(np.zeros(self.native.array.shape, np.uint8)),
                                 sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(back)

    def probabilities_to_native(self, probabilities: np.ndarray) -> np.ndarray:
        """Class probabilities ``(C, *canonical shape)`` → class indices on the native grid: each class map resampled
        linearly in physical space (0 outside the canonical grid), then the most probable class (0 where none)."""
        reference = self.native.to_sitk(np.zeros(self.native.array.shape, np.uint8))
        native = np.stack([sitk.GetArrayFromImage(sitk.Resample(
            self.volume.to_sitk(np.asarray(p, np.float32)), reference, sitk.Transform(), sitk.sitkLinear, 0.0))
            for p in probabilities])
        return native.argmax(0).astype(np.uint8 if len(probabilities) < 256 else np.uint16)

    def slice_number(self, axis: int, index: int) -> int:
        """The canonical slice (along ``frame.axis``) that is native slice ``index`` along ``axis``."""
        target, flipped = canonical_axis(self.native, axis, self.frame.orientation)
        if target != self.frame.axis:
            raise InputError(f"slices along {AXIS_NAMES[axis]} of this volume are not the {self._plane()} slices "
                             "the model works on", f"annotate along axis {self.native_axis()}")
        count = self.native.num_slices(axis)
        return count - 1 - index if flipped else index

    def native_axis(self) -> int:
        """The native IJK axis whose slices are the canonical slices."""
        return next(a for a in range(3) if canonical_axis(self.native, a, self.frame.orientation)[0] == self.frame.axis)

    def annotations(self, axis: int, masks: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Native slice masks ``{index: (rows, cols)}`` along ``axis`` → canonical slice masks along ``frame.axis``."""
        stacked = np.zeros(self.native.array.shape, np.uint8)
        for index, mask in masks.items():
            stacked[slice_index(axis, index)] = np.asarray(mask, bool)
        canonical = self.to_canonical(stacked)
        numbers = {index: self.slice_number(axis, index) for index in masks}
        return {k: canonical[slice_index(self.frame.axis, k)].astype(bool) for k in numbers.values()}

    def _plane(self) -> str:
        return ("sagittal", "coronal", "axial")[self.frame.axis] if self.frame.orientation == ORIENTATION else \
            f"{self.frame.orientation}[{self.frame.axis}]"


def body_centre(array: np.ndarray) -> np.ndarray:
    """Continuous IJK index of the centre of mass of the voxels above the Otsu threshold (the body, for CT and MR)."""
    from skimage.filters import threshold_otsu

    step = max(1, round((array.size / 2e6) ** (1 / 3)))
    sample = np.asarray(array[::step, ::step, ::step], np.float32)
    body = sample > threshold_otsu(sample) if np.ptp(sample) > 0 else np.ones(sample.shape, bool)
    kji = np.argwhere(body).mean(0) * step
    return kji[::-1]
