"""Write a predicted slice into a segment the way the Segment Editor would, and undo it exactly.

The Segment Editor's settings (overwrite mode, masking, intensity range) are applied in numpy on the one slice
(or block of slices), so this works on every Slicer 5 and never touches a voxel outside it. Arrays are the
volume's ``(K, J, I)`` grid; a slice along ``axis`` is ``array[slice_index(axis, index)]`` (see prompts.py).

Speed: a segmentation keeps its segments in shared labelmap layers (one ``vtkOrientedImageData`` holding the label
values of several segments). When a layer lies on the volume's voxel grid, reads are numpy views of the layer and
writes change the layer's voxels in place, then call ``Modified()`` on it (``vtkSegmentation`` observes that and
invalidates the derived representations) and invoke ``RepresentationModified`` with each changed segment's id (the
slice views redraw on it), as Slicer's own ``vtkSegmentationModifier`` does. Nothing else is copied, so writing one slice
of a 512×512×300 segmentation costs milliseconds (``Testing/slicer/test_bench_segments.py``). Where a layer is on
another grid, or a write would make two segments of one layer overlap, Slicer's
``SetBinaryLabelmapToSegment`` does it (it moves segments to separate layers as needed).
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
    everywhere = settings.mask_mode == EVERYWHERE and settings.intensity_range is None
    if everywhere:
        target_now = mask.astype(bool)
    else:
        region = editable_region(settings, target, current, visible, intensity)
        target_now = np.where(region, mask.astype(bool), current[target])
    new = {target: target_now}
    not_target = ~target_now
    for other, voxels in current.items():
        erase = other != target and (
            settings.overwrite == OVERWRITE_ALL or (settings.overwrite == OVERWRITE_VISIBLE and other in visible)
        )
        if erase and np.logical_and(voxels, target_now).any():
            new[other] = voxels & not_target
    return {s: a for s, a in new.items() if not np.array_equal(a, current[s])}


Region = tuple[slice, slice, slice]
"""A box of the ``(K, J, I)`` grid, with explicit bounds on every axis."""


def slice_region(dims_ijk: tuple[int, int, int], axis: int, index: int) -> Region:
    """The region of slice ``index`` along IJK ``axis``."""
    region = [slice(0, n) for n in dims_ijk[::-1]]
    region[2 - axis] = slice(index, index + 1)
    return tuple(region)  # type: ignore[return-value]


def mask_region(mask: np.ndarray, also: Optional[np.ndarray] = None) -> Optional[Region]:
    """The bounding box of the ``True`` voxels of ``mask`` (and of ``also``); None if both are empty."""
    where = mask if also is None else mask | also
    if not where.any():
        return None
    bounds = []
    for axis in range(3):
        hit = np.flatnonzero(where.any(axis=tuple(a for a in range(3) if a != axis)))
        bounds.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return tuple(bounds)  # type: ignore[return-value]


@dataclass
class SliceEdit:
    """What one applied prediction changed: the previous content of every segment it touched inside ``region``
    (one slice, or a block for a whole-volume result), for undo."""

    target: str
    region: Region
    before: dict[str, np.ndarray] = field(default_factory=dict)


class SegmentSlices:
    """Reads and writes slices (and blocks) of a segmentation's segments on a volume's voxel grid."""

    def __init__(self, segmentation_node: Any, volume_node: Any) -> None:
        self.segmentation_node = segmentation_node
        self.volume_node = volume_node
        self._ijk_to_ras = vtk.vtkMatrix4x4()
        volume_node.GetIJKToRASMatrix(self._ijk_to_ras)
        self.dims_ijk: tuple[int, int, int] = tuple(volume_node.GetImageData().GetDimensions())  # type: ignore[assignment]
        self._grid = np.array([[self._ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
        self._same_space = segmentation_node.GetTransformNodeID() == volume_node.GetTransformNodeID()

    def segment_ids(self) -> list[str]:
        segmentation = self.segmentation_node.GetSegmentation()
        return [segmentation.GetNthSegmentID(n) for n in range(segmentation.GetNumberOfSegments())]

    def visible_ids(self) -> set[str]:
        display = self.segmentation_node.GetDisplayNode()
        ids = self.segment_ids()
        return set(ids) if display is None else {s for s in ids if display.GetSegmentVisibility(s)}

    def extent(self, axis: int, index: int) -> tuple[int, int, int, int, int, int]:
        """The IJK extent (i0, i1, j0, j1, k0, k1) of one slice."""
        return _extent(slice_region(self.dims_ijk, axis, index))

    # reading -----------------------------------------------------------------------------------
    def read(self, segment_id: str, axis: int, index: int) -> np.ndarray:
        """The segment's voxels on one slice, bool ``(rows, cols)``."""
        return self.read_region(segment_id, slice_region(self.dims_ijk, axis, index))[slice_index(axis, 0)]

    def read_volume(self, segment_id: str) -> np.ndarray:
        """The segment's voxels on the whole volume grid, bool ``(K, J, I)``."""
        return self.read_region(segment_id, tuple(slice(0, n) for n in self.dims_ijk[::-1]))  # type: ignore[arg-type]

    def read_region(self, segment_id: str, region: Region) -> np.ndarray:
        """The segment's voxels inside ``region``, bool (a copy)."""
        layer = self._layer(segment_id)
        if layer is None:
            return self._read_extent(segment_id, _extent(region))
        image, label = layer
        return _layer_block(image, region) == label

    def read_all(self, region: Region) -> dict[str, np.ndarray]:
        """Every segment's voxels inside ``region`` (each shared layer is cut out once)."""
        blocks: dict[str, np.ndarray] = {}
        current = {}
        for segment_id in self.segment_ids():
            layer = self._layer(segment_id)
            if layer is None:
                current[segment_id] = self._read_extent(segment_id, _extent(region))
                continue
            image, label = layer
            key = image.GetAddressAsString("vtkOrientedImageData")
            if key not in blocks:
                blocks[key] = _layer_block(image, region)
            current[segment_id] = blocks[key] == label
        return current

    def _read_extent(self, segment_id: str, extent: tuple[int, ...]) -> np.ndarray:
        """The segment's voxels inside an IJK extent, resampled by Slicer (a layer off the volume's grid)."""
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

    # writing -----------------------------------------------------------------------------------
    def write(self, segment_id: str, axis: int, index: int, mask: np.ndarray) -> None:
        """Make ``mask`` the segment's content on one slice; no other voxel or segment changes."""
        region = slice_region(self.dims_ijk, axis, index)
        self.write_region({segment_id: mask.reshape(_shape(region))}, region)

    def write_region(self, changes: dict[str, np.ndarray], region: Region) -> None:
        """Make each ``changes[segment]`` (bool, ``region``'s shape) that segment's content inside ``region``.
        Segments that lose voxels are written before those that gain them."""
        by_layer: dict[str, list[str]] = {}
        slow = []
        for segment_id in changes:
            layer = self._layer(segment_id)
            if layer is None:
                slow.append(segment_id)
            else:
                by_layer.setdefault(layer[0].GetAddressAsString("vtkOrientedImageData"), []).append(segment_id)
        for ids in by_layer.values():
            if not self._write_layer({s: changes[s] for s in ids}, region):
                slow.extend(ids)
        for segment_id in sorted(slow, key=lambda s: bool((changes[s] & ~self.read_region(s, region)).any())):
            self._write_slow(segment_id, changes[segment_id], region)

    def _write_layer(self, changes: dict[str, np.ndarray], region: Region) -> bool:
        """Write the changed segments of one shared layer in place; False (nothing written) where they would
        overlap another segment of the layer."""
        image, _ = self._layer(next(iter(changes)))  # type: ignore[misc]
        if not _covers(image, region):
            self._grow_to_volume(image)
        block = _layer_view(image)[_shift(image, region)]
        new = block.copy()
        labels = {s: self.segmentation_node.GetSegmentation().GetSegment(s).GetLabelValue() for s in changes}
        np.putmask(new, np.isin(new, list(labels.values())), 0)
        occupied = new != 0
        for segment_id, mask in changes.items():
            if np.logical_and(occupied, mask).any():
                return False  # would share voxels with another segment of this layer
            np.putmask(new, mask, labels[segment_id])
            occupied |= mask
        block[...] = new
        image.Modified()  # vtkSegmentation observes its source labelmaps: derived representations are invalidated
        segmentation = self.segmentation_node.GetSegmentation()
        for segment_id in changes:  # as vtkSegmentationModifier does; the slice views redraw on it
            segmentation.InvokeEvent(slicer.vtkSegmentation.RepresentationModified, segment_id)
        return True

    def _write_slow(self, segment_id: str, mask: np.ndarray, region: Region) -> None:
        """Slicer's own replace inside ``region`` (any layer layout, any grid)."""
        extent = _extent(region)
        image = self._image(extent, allocate=True)
        self._array(image)[...] = mask.astype(np.uint8)
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        # MIN keeps old ∩ new inside the region, MASK adds the new voxels: together an exact replace of the region.
        logic.SetBinaryLabelmapToSegment(image, self.segmentation_node, segment_id, logic.MODE_MERGE_MIN, extent)
        logic.SetBinaryLabelmapToSegment(image, self.segmentation_node, segment_id, logic.MODE_MERGE_MASK, extent)

    def _grow_to_volume(self, image: Any) -> None:
        """Give a layer the volume's whole extent (kept voxels stay where they are; once per layer)."""
        i, j, k = self.dims_ijk
        grown = slicer.vtkOrientedImageData()
        have = image.GetExtent()
        valid = have[0] <= have[1] and have[2] <= have[3] and have[4] <= have[5]
        extent = (0, i - 1, 0, j - 1, 0, k - 1)
        if valid:
            extent = tuple(min(extent[n], have[n]) if n % 2 == 0 else max(extent[n], have[n]) for n in range(6))
        grown.SetExtent(*extent)
        grown.SetImageToWorldMatrix(self._ijk_to_ras)
        scalar_type = image.GetScalarType() if valid else vtk.VTK_UNSIGNED_CHAR
        grown.AllocateScalars(scalar_type, 1)
        grown.GetPointData().GetScalars().Fill(0)
        if valid:
            _layer_view(grown)[_shift(grown, _region(have))] = _layer_view(image)
        image.ShallowCopy(grown)  # the same object: every segment of the layer keeps sharing it

    # editing -----------------------------------------------------------------------------------
    def intensity(self, axis: int, index: int) -> np.ndarray:
        """The volume's voxel values on one slice."""
        return self.intensity_region(slice_region(self.dims_ijk, axis, index))[slice_index(axis, 0)]

    def intensity_region(self, region: Region) -> np.ndarray:
        image = self.volume_node.GetImageData()
        values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
        if values.ndim == 2:
            values = values[:, 0]
        return values.reshape(self.dims_ijk[::-1])[region]

    def apply(self, settings: EditSettings, target: str, axis: int, index: int, mask: np.ndarray) -> SliceEdit:
        """Write a predicted slice into ``target`` honouring ``settings``; returns what it needs to undo."""
        region = slice_region(self.dims_ijk, axis, index)
        return self.apply_region(settings, target, region, np.asarray(mask, bool).reshape(_shape(region)))

    def apply_volume(self, settings: EditSettings, target: str, mask: np.ndarray) -> Optional[SliceEdit]:
        """Write a whole-volume result ``(K, J, I)`` into ``target`` in one vectorised step, on the bounding box of
        the result and of the target's current voxels; None when both are empty."""
        region = mask_region(np.asarray(mask, bool), self._voxels(target))
        if region is None:
            return None
        return self.apply_region(settings, target, region, np.asarray(mask, bool)[region])

    def apply_region(self, settings: EditSettings, target: str, region: Region, mask: np.ndarray) -> SliceEdit:
        """Make ``mask`` the target's content inside ``region`` the way the Segment Editor would."""
        current = self.read_all(region)
        changes = plan_slice_edit(settings, target, mask, current, self.visible_ids(), self.intensity_region(region))
        self.write_region(changes, region)
        return SliceEdit(target, region, {s: current[s] for s in changes})

    def undo(self, edit: SliceEdit) -> None:
        """Put back the exact previous content of every segment an edit changed."""
        segmentation = self.segmentation_node.GetSegmentation()
        before = {s: voxels for s, voxels in edit.before.items() if segmentation.GetSegment(s) is not None}
        self.write_region(before, edit.region)

    # layers ------------------------------------------------------------------------------------
    def _voxels(self, segment_id: str) -> Optional[np.ndarray]:
        """The segment's voxels on its layer's own extent placed on the volume grid, for a bounding box: a cheap
        view-based read (None when empty)."""
        layer = self._layer(segment_id)
        if layer is None:
            return self.read_volume(segment_id)
        image, label = layer
        view = _layer_view(image)
        if not view.size or not (found := view == label).any():
            return None
        e = image.GetExtent()
        full = np.zeros(tuple(self.dims_ijk[::-1]), bool)
        full[_clip(_region(e), full.shape)] = found[_clip_own(_region(e), full.shape)]
        return full

    def _layer(self, segment_id: str) -> Optional[tuple[Any, int]]:
        """(shared labelmap, label value) of a segment when the labelmap lies on the volume's grid or is empty
        (writing gives it the grid); None otherwise."""
        segmentation = self.segmentation_node.GetSegmentation()
        segment = segmentation.GetSegment(segment_id)
        name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        if segment is None or not self._same_space or segmentation.GetSourceRepresentationName() != name:
            return None
        image = segment.GetRepresentation(name)
        if image is None or image.GetNumberOfScalarComponents() != 1:
            return None
        e = image.GetExtent()
        if e[0] > e[1] or e[2] > e[3] or e[4] > e[5]:
            return image, segment.GetLabelValue()
        matrix = vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(matrix)
        grid = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        if not np.allclose(grid, self._grid, atol=1e-6 * max(1.0, np.abs(self._grid).max())):
            return None
        return image, segment.GetLabelValue()

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
        return _layer_view(image)


def _layer_view(image: Any) -> np.ndarray:
    """A writable ``(K, J, I)`` view of an image's scalars (its own extent)."""
    e = image.GetExtent()
    shape = (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
    if min(shape) <= 0:
        return np.zeros((0, 0, 0), np.uint8)
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(shape)


def _layer_block(image: Any, region: Region) -> np.ndarray:
    """An image's labels inside ``region`` of the volume grid (0 where the image does not reach)."""
    view = _layer_view(image)
    out = np.zeros(_shape(region), view.dtype if view.size else np.uint8)
    e = image.GetExtent()
    have = [(e[4], e[5] + 1), (e[2], e[3] + 1), (e[0], e[1] + 1)]
    low = [max(r.start, h[0]) for r, h in zip(region, have)]
    high = [min(r.stop, h[1]) for r, h in zip(region, have)]
    if all(lo < hi for lo, hi in zip(low, high)):
        out[tuple(slice(lo - r.start, hi - r.start) for lo, hi, r in zip(low, high, region))] = \
            view[tuple(slice(lo - h[0], hi - h[0]) for lo, hi, h in zip(low, high, have))]
    return out


def _covers(image: Any, region: Region) -> bool:
    e = image.GetExtent()
    have = [(e[4], e[5] + 1), (e[2], e[3] + 1), (e[0], e[1] + 1)]
    return all(h[0] <= r.start and r.stop <= h[1] for r, h in zip(region, have))


def _shift(image: Any, region: Region) -> Region:
    """``region`` (volume grid) as an index into the image's own array."""
    e = image.GetExtent()
    starts = (e[4], e[2], e[0])
    return tuple(slice(r.start - s, r.stop - s) for r, s in zip(region, starts))  # type: ignore[return-value]


def _region(extent: tuple[int, ...]) -> Region:
    return (slice(extent[4], extent[5] + 1), slice(extent[2], extent[3] + 1), slice(extent[0], extent[1] + 1))


def _extent(region: Region) -> tuple[int, int, int, int, int, int]:
    k, j, i = region
    return (i.start, i.stop - 1, j.start, j.stop - 1, k.start, k.stop - 1)


def _shape(region: Region) -> tuple[int, int, int]:
    return tuple(r.stop - r.start for r in region)  # type: ignore[return-value]


def _clip(region: Region, shape: tuple[int, ...]) -> Region:
    """``region`` cut to a grid of ``shape`` (as an index into that grid)."""
    return tuple(slice(max(r.start, 0), min(r.stop, n)) for r, n in zip(region, shape))  # type: ignore[return-value]


def _clip_own(region: Region, shape: tuple[int, ...]) -> Region:
    """The part of an image at ``region`` that falls on a grid of ``shape`` (as an index into the image)."""
    return tuple(slice(max(r.start, 0) - r.start, min(r.stop, n) - r.start)
                 for r, n in zip(region, shape))  # type: ignore[return-value]
