"""Writing a slice honours the Segment Editor's settings exactly like Slicer's own segment editor logic.

Reference: ``vtkSlicerSegmentEditorLogic.ModifySegmentByLabelmap`` (Set mode) with the same editor node settings,
on a copy of the segmentation. The Lib must give the same voxels on the slice, change nothing off it, and undo
exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import slicer
from SAMMedSlicerLib.segments import EditSettings, SegmentSlices, slice_index

K = 12  # the edited axial slice


def full(slices: SegmentSlices, segment_id: str) -> np.ndarray:
    return np.stack([slices.read(segment_id, 2, k) for k in range(slices.dims_ijk[2])])


def build(mrml) -> tuple:
    """A segmentation with a target and two other segments (one hidden), overlapping the new mask."""
    seg = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(mrml.volume)
    slices = SegmentSlices(seg, mrml.volume)
    ids = [seg.GetSegmentation().AddEmptySegment(name) for name in ("target", "other", "hidden")]
    rows, cols = slices.dims_ijk[1], slices.dims_ijk[0]
    shapes = {
        "target": (slice(10, 40), slice(10, 40)), "other": (slice(30, 60), slice(30, 70)),
        "hidden": (slice(50, 90), slice(20, 50)),
    }
    for segment_id in ids:
        for k in (K - 1, K, K + 1):
            plane = np.zeros((rows, cols), bool)
            plane[shapes[segment_id]] = True
            slices.write(segment_id, 2, k, plane)
    seg.GetDisplayNode().SetSegmentVisibility("hidden", False)
    mask = np.zeros((rows, cols), bool)
    mask[20:80, 25:100] = True
    return seg, slices, mask


def editor_node(mrml, seg, overwrite: int, mask_mode: int, intensity: bool):
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    node.SetAndObserveSegmentationNode(seg)
    node.SetAndObserveSourceVolumeNode(mrml.volume)
    node.SetSelectedSegmentID("target")
    node.SetOverwriteMode(overwrite)
    node.SetMaskMode(mask_mode)
    node.SetMaskSegmentID("other")
    node.SetSourceVolumeIntensityMask(intensity)
    node.SetSourceVolumeIntensityMaskRange(-100.0, 200.0)
    return node


def reference_result(mrml, seg, node, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Slicer's segment editor logic applying ``mask`` on slice K (Set mode) to the same segmentation."""
    logic = slicer.vtkSlicerSegmentEditorLogic()
    logic.SetMRMLScene(mrml.scene)
    logic.SetMRMLApplicationLogic(mrml.app)
    logic.SetSegmentEditorNode(node)
    logic.SetSegmentationNode(seg)
    logic.SetSourceVolumeNode(mrml.volume)
    logic.ResetModifierLabelmapToDefault()
    slices = SegmentSlices(seg, mrml.volume)
    image = slices._image(slices.extent(2, K), allocate=True)
    slices._array(image)[0] = mask
    logic.ModifySegmentByLabelmap(seg, "target", image, slicer.vtkSlicerSegmentEditorLogic.ModificationModeSet,
                                  slices.extent(2, K), False, False)
    return {s: full(slices, s) for s in slices.segment_ids()}


OVERWRITE = (0, 1, 2)  # all, visible, none
MASK_MODES = (0, 1, 2, 3, 4, 5)  # everywhere, inside all/visible, outside all/visible, inside "other"


@pytest.mark.parametrize("overwrite,mask_mode,intensity", [
    *((o, m, False) for o, m in itertools.product(OVERWRITE, MASK_MODES)), (0, 0, True), (2, 3, True)])
def test_slice_write_matches_slicer_segment_editor(mrml, overwrite, mask_mode, intensity):
    ours_seg, ours, mask = build(mrml)
    theirs_seg, _, _ = build(mrml)
    before = {s: full(ours, s) for s in ours.segment_ids()}
    settings = EditSettings.from_editor_node(editor_node(mrml, ours_seg, overwrite, mask_mode, intensity))
    edit = ours.apply(settings, "target", 2, K, mask)
    expected = reference_result(mrml, theirs_seg, editor_node(mrml, theirs_seg, overwrite, mask_mode, intensity), mask)
    for segment_id, voxels in expected.items():
        got = full(ours, segment_id)
        theirs_only, ours_only = int((voxels[K] & ~got[K]).sum()), int((got[K] & ~voxels[K]).sum())
        assert np.array_equal(got[K], voxels[K]), \
            f"{segment_id}: slice differs from Slicer's segment editor ({ours_only} extra, {theirs_only} missing voxels)"
        off = np.ones(got.shape[0], bool)
        off[K] = False
        assert np.array_equal(got[off], before[segment_id][off]), f"{segment_id}: changed off the slice"
    ours.undo(edit)
    for segment_id, voxels in before.items():
        assert np.array_equal(full(ours, segment_id), voxels), f"{segment_id}: undo is not exact"


def test_other_axes_write_only_their_slice(mrml):
    seg, slices, _ = build(mrml)
    before = full(slices, "target")
    for axis, index in ((0, 30), (1, 25)):
        shape = before[slice_index(axis, index)].shape
        plane = np.zeros(shape, bool)
        plane[5:20, 3:9] = True
        slices.write("target", axis, index, plane)
        expected = before.copy()
        expected[slice_index(axis, index)] = plane
        assert np.array_equal(full(slices, "target"), expected)
        before = expected
