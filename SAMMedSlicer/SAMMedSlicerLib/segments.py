"""Write a predicted slice into a segment the way the Segment Editor would, and undo it exactly.

The Segment Editor's settings (overwrite mode, masking, intensity range) are applied in numpy on the one slice,
so this works on every Slicer 5 and never touches a voxel outside that slice. Arrays are the volume's
``(K, J, I)`` grid; a slice along ``axis`` is ``array[slice_index(axis, index)]`` (see prompts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import vtk
from vtkmodules.util import numpy_support

import slicer

# vtkMRMLSegmentEditorNode overwrite modes and vtkMRMLSegmentationNode.EditAllowed* mask modes (stable enums).
OVERWRITE_ALL, OVERWRITE_VISIBLE, OVERWRITE_NONE = 0, 1, 2
EVERYWHERE, INSIDE_ALL, INSIDE_VISIBLE, OUTSIDE_ALL, OUTSIDE_VISIBLE, INSIDE_SINGLE = range(6)


def slice_index(axis: int, index: int) -> tuple[Any, ...]:
    """numpy index of slice ``index`` along IJK ``axis`` in a ``(K, J, I)`` array."""
    where: list[Any] = [slice(None)] * 3
    where[2 - axis] = index
    return tuple(where)


@dataclass(frozen=True)
class EditSettings:
    """The Segment Editor settings that decide which voxels a new mask may change."""

    overwrite: int = OVERWRITE_ALL
    mask_mode: int = EVERYWHERE
    mask_segment_id: str = ""
    intensity_range: Optional[tuple[float, float]] = None

    @classmethod
    def from_editor_node(cls, node: Any) -> "EditSettings":
        """Read a ``vtkMRMLSegmentEditorNode`` (``None`` gives Slicer's defaults)."""
        if node is None:
            return cls()
        intensity = tuple(node.GetSourceVolumeIntensityMaskRange()) if node.GetSourceVolumeIntensityMask() else None
        return cls(node.GetOverwriteMode(), node.GetMaskMode(), node.GetMaskSegmentID() or "", intensity)


def editable_region(
    settings: EditSettings, target: str, current: dict[str, np.ndarray], visible: set[str], intensity: np.ndarray
) -> np.ndarray:
    """Where the target segment may change on this slice (bool, like the Segment Editor's edit mask).

    ``current`` holds every segment's slice; inside-modes include the target, outside-modes exclude it.
    """
    shape = intensity.shape
    mode = settings.mask_mode
    if mode == EVERYWHERE:
        region = np.ones(shape, bool)
    elif mode in (INSIDE_ALL, INSIDE_VISIBLE):
        ids = [s for s in current if mode == INSIDE_ALL or s in visible]
        region = _union([current[s] for s in ids], shape)
    elif mode in (OUTSIDE_ALL, OUTSIDE_VISIBLE):
        ids = [s for s in current if s != target and (mode == OUTSIDE_ALL or s in visible)]
        region = ~_union([current[s] for s in ids], shape)
    elif mode == INSIDE_SINGLE:
        region = current.get(settings.mask_segment_id, np.zeros(shape, bool)).copy()
    else:
        raise ValueError(f"unknown Segment Editor mask mode {mode}")
    if settings.intensity_range is not None:
        low, high = settings.intensity_range
        region &= (intensity >= low) & (intensity <= high)
    return region


def _union(masks: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    union = np.zeros(shape, bool)
    for mask in masks:
        union |= mask
    return union


def plan_slice_edit(
    settings: EditSettings, target: str, mask: np.ndarray, current: dict[str, np.ndarray], visible: set[str],
    intensity: np.ndarray,
) -> dict[str, np.ndarray]:
    """New slices of the segments that change when ``mask`` becomes the target's content on this slice.

    Within the editable region the target becomes ``mask``; outside it the target keeps its voxels. Other segments
    lose the target's resulting voxels only as the overwrite mode allows (all, visible only, none): the Segment
    Editor's "Set" does the same (its masked modifier carries the segment's own voxels where editing is masked).
    """
    region = editable_region(settings, target, current, visible, intensity)
    target_now = np.where(region, mask.astype(bool), current[target])
    new = {target: target_now}
    for other, voxels in current.items():
        erase = other != target and (
            settings.overwrite == OVERWRITE_ALL or (settings.overwrite == OVERWRITE_VISIBLE and other in visible)
        )
        if erase and (voxels & target_now).any():
            new[other] = voxels & ~target_now
    return {s: a for s, a in new.items() if not np.array_equal(a, current[s])}


@dataclass
class SliceEdit:
    """What one applied prediction changed: the previous content of every segment it touched (for undo)."""

    target: str
    axis: int
    index: int
    before: dict[str, np.ndarray] = field(default_factory=dict)


class SegmentSlices:
    """Reads and writes single slices of a segmentation's segments on a volume's voxel grid."""

    def __init__(self, segmentation_node: Any, volume_node: Any) -> None:
        self.segmentation_node = segmentation_node
        self.volume_node = volume_node
        self._ijk_to_ras = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(self._ijk_to_ras)
        self.dims_ijk: tuple[int, int, int] = tuple(volume_node.GetImageData().GetDimensions())  # type: ignore[assignment]

    def segment_ids(self) -> list[str]:
        segmentation = self.segmentation_node.GetSegmentation()
        return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]

    def visible_ids(self) -> set[str]:
        display = self.segmentation_node.GetDisplayNode()
        ids = self.segment_ids()
        return set(ids) if display is None else {s for s in ids if display.GetSegmentVisibility(s)}

    def extent(self, axis: int, index: int) -> tuple[int, int, int, int, int, int]:
        """The IJK extent (i0, i1, j0, j1, k0, k1) of one slice."""
        bounds = [0, self.dims_ijk[0] - 1, 0, self.dims_ijk[1] - 1, 0, self.dims_ijk[2] - 1]
        bounds[2 * axis] = bounds[2 * axis + 1] = index
        return tuple(bounds)  # type: ignore[return-value]

    def read(self, segment_id: str, axis: int, index: int) -> np.ndarray:
        """The segment's voxels on one slice, bool ``(rows, cols)``."""
        return self._read_extent(segment_id, self.extent(axis, index))[slice_index(axis, 0)]

    def read_volume(self, segment_id: str) -> np.ndarray:
        """The segment's voxels on the whole volume grid, bool ``(K, J, I)``."""
        i, j, k = self.dims_ijk
        return self._read_extent(segment_id, (0, i - 1, 0, j - 1, 0, k - 1))

    def _read_extent(self, segment_id: str, extent: tuple[int, ...]) -> np.ndarray:
        """The segment's voxels inside an IJK extent of the volume grid, bool ``(k, j, i)``."""
        labelmap = slicer.vtkOrientedImageData()
        slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
            self.segmentation_node, segment_id, labelmap
        )
        resampled = slicer.vtkOrientedImageData()
        # padding makes the result cover the slice (it may also cover more: the labelmap's own extent)
        slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, self._image(extent), resampled, False, True
        )
        have = resampled.GetExtent()
        crop = tuple(slice(extent[2 * a] - have[2 * a], extent[2 * a + 1] - have[2 * a] + 1) for a in (2, 1, 0))
        label = self.segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
        return self._array(resampled)[crop] == label

    def write(self, segment_id: str, axis: int, index: int, mask: np.ndarray) -> None:
        """Make ``mask`` the segment's content on one slice; no other voxel or segment changes."""
        extent = self.extent(axis, index)
        image = self._image(extent, allocate=True)
        self._array(image)[slice_index(axis, 0)] = mask.astype(np.uint8)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        # MIN keeps old ∩ new inside the slice, MASK adds the new voxels: together an exact replace of the slice.
        logic.SetBinaryLabelmapToSegment(image, self.segmentation_node, segment_id, logic.MODE_MERGE_MIN, extent)
        logic.SetBinaryLabelmapToSegment(image, self.segmentation_node, segment_id, logic.MODE_MERGE_MASK, extent)

    def intensity(self, axis: int, index: int) -> np.ndarray:
        """The volume's voxel values on one slice."""
        image = self.volume_node.GetImageData()
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        return values.reshape(self.dims_ijk[::-1])[slice_index(axis, index)]

    def apply(self, settings: EditSettings, target: str, axis: int, index: int, mask: np.ndarray) -> SliceEdit:
        """Write a predicted slice into ``target`` honouring ``settings``; returns what it needs to undo."""
        current = {s: self.read(s, axis, index) for s in self.segment_ids()}
        changes = plan_slice_edit(settings, target, mask, current, self.visible_ids(), self.intensity(axis, index))
        edit = SliceEdit(target, axis, index, {s: current[s] for s in changes})
        for segment_id in sorted(changes, key=lambda s: s == target):  # others shrink before the target grows
            self.write(segment_id, axis, index, changes[segment_id])
        return edit

    def undo(self, edit: SliceEdit) -> None:
        """Put back the exact previous slices of every segment an edit changed (the target shrinks first)."""
        for segment_id in sorted(edit.before, key=lambda s: s != edit.target):
            if self.segmentation_node.GetSegmentation().GetSegment(segment_id) is not None:
                self.write(segment_id, edit.axis, edit.index, edit.before[segment_id])

    def _image(self, extent: tuple[int, ...], allocate: bool = False) -> Any:
        image = slicer.vtkOrientedImageData()
        image.SetExtent(*extent)
        image.SetImageToWorldMatrix(self._ijk_to_ras)
        if allocate:
            image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
            image.GetPointData().GetScalars().Fill(0)
        return image

    @staticmethod
    def _array(image: Any) -> np.ndarray:
        """A writable ``(K, J, I)`` view of an image's scalars."""
        e = image.GetExtent()
        shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
        return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)
