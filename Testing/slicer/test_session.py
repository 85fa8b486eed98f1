"""The session end to end: markups placed in RAS → real worker (LiteMedSAM, CPU) → the segmentation node.

Each test touches only the few slices the Dice test needs (largest axial slice of each organ, one coronal
slice), so with the shared embedding cache every slice is encoded once per run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import vtk

from SAMMedSlicerLib.segments import SegmentSlices, slice_index
from SAMMedSlicerLib.session import Session
from SAMMedSlicerLib.volume import ijk_to_ras, voxel_array

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right")
MARGIN_PX = 2
DICE_MIN = 0.90


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def read_segment(segmentation: Any, segment_id: str, volume: Any) -> np.ndarray:
    """The whole segment as a (K, J, I) bool array, read back from the segmentation node."""
    slices = SegmentSlices(segmentation, volume)
    return np.stack([slices.read(segment_id, 2, k) for k in range(slices.dims_ijk[2])])


def largest_slice(mask: np.ndarray, axis: int) -> int:
    return int(np.argmax(mask.sum(axis=tuple(a for a in range(3) if a != 2 - axis))))


def roi_geometry(roi: Any) -> np.ndarray:
    """An ROI's world centre and size."""
    center = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(center)
    return np.array([*center, *roi.GetSize()])


def to_ras(volume: Any, ijk: Any) -> np.ndarray:
    return (ijk_to_ras(volume) @ np.array([*ijk, 1.0]))[:3]


def place_box(roi: Any, volume: Any, mask: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Put the ROI around ``mask`` on one slice (bounding box + MARGIN_PX, one voxel thick) in RAS; returns the
    reference slice."""
    plane = mask[slice_index(axis, index)]
    rows, cols = np.nonzero(plane)
    in_plane = [a for a in range(3) if a != axis]  # IJK axes of slice x (cols) and y (rows)
    low, high = np.zeros(3), np.zeros(3)
    low[axis] = high[axis] = index
    low[in_plane[0]], high[in_plane[0]] = cols.min() - MARGIN_PX, cols.max() + MARGIN_PX
    low[in_plane[1]], high[in_plane[1]] = rows.min() - MARGIN_PX, rows.max() + MARGIN_PX
    a, b = to_ras(volume, low), to_ras(volume, high)
    size = np.abs(b - a)
    size[np.argmin(size)] = 1.0  # one voxel-ish thick across the slice
    modifying = roi.StartModify()
    roi.SetCenter(*((a + b) / 2))
    roi.SetSize(*size)
    roi.EndModify(modifying)
    return plane


def add_slice_views(scene: Any, volume: Any, ijk: Any) -> dict[str, Any]:
    """Red (axial), Yellow (sagittal), Green (coronal) slice nodes through the voxel ``ijk``."""
    import slicer

    center = to_ras(volume, ijk)
    views = {}
    for name, x, y, normal in (("Red", (-1, 0, 0), (0, 1, 0), (0, 0, 1)), ("Yellow", (0, -1, 0), (0, 0, 1), (1, 0, 0)),
                               ("Green", (-1, 0, 0), (0, 0, 1), (0, 1, 0))):
        node = slicer.vtkMRMLSliceNode()
        node.SetName(name)
        node.SetLayoutName(name)
        scene.AddNode(node)
        matrix = node.GetSliceToRAS()
        for row in range(3):
            for col, value in enumerate((x[row], y[row], normal[row], center[row])):
                matrix.SetElement(row, col, value)
        node.UpdateMatrices()
        views[name] = node
    return views


def nodes(session: Session) -> dict[str, Any]:
    return session.prompt_nodes


def test_boxes_reach_dice_on_organs(mrml, segmentation, session, reference, capsys):
    """ROI boxes placed in RAS around liver, spleen and kidneys: each segment's slice reaches Dice ≥ 0.90."""
    roi = nodes(session)["box"]
    other = segmentation.GetSegmentation().AddEmptySegment("untouched")
    far = np.zeros(voxel_array(mrml.volume).shape, bool)
    far[0:2, 0:6, 0:6] = True  # a corner no organ box reaches
    SegmentSlices(segmentation, mrml.volume).write(other, 2, 0, far[0])
    SegmentSlices(segmentation, mrml.volume).write(other, 2, 1, far[1])
    scores = {}
    for organ in ORGANS:
        segment_id = segmentation.GetSegmentation().AddEmptySegment(organ)
        session.set_segment(segmentation, segment_id)
        k = largest_slice(reference[organ], axis=2)
        expected = place_box(roi, mrml.volume, reference[organ], 2, k)
        session.wait()
        got = read_segment(segmentation, segment_id, mrml.volume)
        scores[organ] = dice(got[k], expected)
        assert got.sum() == got[k].sum(), f"{organ}: voxels written outside slice {k}"
    with capsys.disabled():
        print("\nDice (largest axial slice, box +2 px): " + ", ".join(f"{o} {d:.3f}" for o, d in scores.items()))
    assert all(d >= DICE_MIN for d in scores.values()), scores
    assert np.array_equal(read_segment(segmentation, other, mrml.volume), far), "a second segment was modified"


def test_points_and_boxes_in_views_with_exact_undo(mrml, segmentation, session, reference, capsys):
    """In the Red view a "+" point alone segments the liver (the worker's click search finds its box on the box-trained
    LiteMedSAM), then box and points go to the worker at their exact pixels; a box in the Green view segments a
    coronal slice; each undo is exact."""
    liver = reference["liver"]
    k = largest_slice(liver, axis=2)
    j = largest_slice(liver, axis=1)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("liver")
    session.set_segment(segmentation, segment_id)
    js, is_ = np.nonzero(liver[k])
    inside = np.argmin((is_ - is_.mean()) ** 2 + (js - js.mean()) ** 2)  # the liver pixel nearest its centroid
    far_j, far_i = np.nonzero(~liver[k])
    far = np.argmax((far_i - is_.mean()) ** 2 + (far_j - js.mean()) ** 2)  # the background pixel farthest from it
    views = add_slice_views(mrml.scene, mrml.volume, (is_[inside], js[inside], k))
    views["Green"].GetSliceToRAS().SetElement(1, 3, to_ras(mrml.volume, (0, j, 0))[1])
    views["Green"].UpdateMatrices()
    positive, negative = nodes(session)["positivePoints"], nodes(session)["negativePoints"]

    history = [read_segment(segmentation, segment_id, mrml.volume)]
    positive.AddControlPoint(vtk.vtkVector3d(*to_ras(mrml.volume, (is_[inside], js[inside], k))))
    session.wait()
    history.append(read_segment(segmentation, segment_id, mrml.volume))
    click_dice = dice(history[-1][k], liver[k])
    assert click_dice >= 0.80, f"one \"+\" click (the worker's click search) gave liver Dice {click_dice:.3f}"
    roi = nodes(session)["box"]
    place_box(roi, mrml.volume, liver, 2, k)
    session.wait()
    axial_roi = roi_geometry(roi)
    history.append(read_segment(segmentation, segment_id, mrml.volume))
    box_and_point_dice = dice(history[-1][k], liver[k])
    negative.AddControlPoint(vtk.vtkVector3d(*to_ras(mrml.volume, (far_i[far], far_j[far], k))))
    session.wait()
    history.append(read_segment(segmentation, segment_id, mrml.volume))
    points_dice = dice(history[-1][k], liver[k])
    expected = place_box(nodes(session)["box"], mrml.volume, liver, 1, j)
    session.wait()
    history.append(read_segment(segmentation, segment_id, mrml.volume))
    coronal_dice = dice(history[-1][:, j, :], expected)
    with capsys.disabled():
        print(f"\nliver, Red view, axial slice {k}: box + \"+\" point Dice {box_and_point_dice:.3f}, then \"−\" point "
              f"Dice {points_dice:.3f}; Green view, coronal slice {j}: box Dice {coronal_dice:.3f}")

    prompts = list(session.prompts)
    assert [(p.kind, p.axis, p.index) for p in prompts] == [
        ("positive", 2, k), ("box", 2, k), ("negative", 2, k), ("box", 1, j)]
    assert np.allclose(prompts[0].coords, (is_[inside], js[inside]), atol=1e-6)  # RAS -> (x = i, y = j), exactly
    assert np.allclose(prompts[2].coords, (far_i[far], far_j[far]), atol=1e-6)
    assert history[3][k, js[inside], is_[inside]] and not history[3][k, far_j[far], far_i[far]]
    assert coronal_dice >= DICE_MIN
    assert np.array_equal(np.delete(history[-1], j, axis=1), np.delete(history[-2], j, axis=1)), \
        "the coronal box changed voxels off its slice"

    assert not np.allclose(roi_geometry(roi), axial_roi)
    for step, state in enumerate(reversed(history[:-1])):
        assert session.undo()
        assert np.array_equal(read_segment(segmentation, segment_id, mrml.volume), state), "undo is not exact"
        if step == 0:  # undoing the coronal box puts the ROI back on the axial box
            assert np.allclose(roi_geometry(roi), axial_roi) and len(session.prompts) == 3
        if step == 2:  # undoing the only box left removes the ROI
            assert roi.GetNumberOfDefinedControlPoints() == 0
    assert not session.undo() and len(session.prompts) == 0
    assert positive.GetNumberOfControlPoints() == 0 and negative.GetNumberOfControlPoints() == 0


def test_prompt_overwrites_other_segment_only_as_editor_allows(mrml, segmentation, session, reference):
    """With the Segment Editor set to overwrite nothing, a box over another segment leaves it intact; with
    'overwrite all' the box takes those voxels, and undo gives them back."""
    spleen = reference["spleen"]
    k = largest_slice(spleen, axis=2)
    slices = SegmentSlices(segmentation, mrml.volume)
    blocker = segmentation.GetSegmentation().AddEmptySegment("blocker")
    target = segmentation.GetSegmentation().AddEmptySegment("spleen")
    block = np.zeros_like(spleen[k])
    rows, cols = np.nonzero(spleen[k])
    block[rows.min():rows.min() + 6, :] = True  # a band across the top of the spleen
    slices.write(blocker, 2, k, block)
    editor = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    session.set_segment(segmentation, target)

    editor.SetOverwriteMode(editor.OverwriteNone)
    place_box(nodes(session)["box"], mrml.volume, spleen, 2, k)
    session.wait()
    assert np.array_equal(slices.read(blocker, 2, k), block)
    assert (slices.read(target, 2, k) & block).any(), "the prediction should overlap the band"
    session.undo()

    editor.SetOverwriteMode(editor.OverwriteAllSegments)
    place_box(nodes(session)["box"], mrml.volume, spleen, 2, k)
    session.wait()
    painted = slices.read(target, 2, k)
    assert np.array_equal(slices.read(blocker, 2, k), block & ~painted) and (block & painted).any()
    session.undo()
    assert np.array_equal(slices.read(blocker, 2, k), block) and not slices.read(target, 2, k).any()


def test_background_precompute_reports_progress(mrml, worker):
    """Choosing a volume uploads it and starts the embedding job in the background; progress is reported."""
    live = Session(mrml.scene, worker)
    live.set_volume(mrml.volume, focus=15)
    seen = set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = live.progress()
        seen.add(progress.state)
        if progress.state in ("running", "succeeded") or progress.state == "failed":
            break
        time.sleep(0.1)
    live.cancel_precompute()
    live.close()
    assert "failed" not in seen and seen & {"queued", "running", "succeeded"}, seen
    assert live.volume_id


def test_dragging_a_point_predicts_again_and_undo_moves_it_back(mrml, segmentation, session, reference):
    """A "+" point dragged to another pixel re-predicts its slice from its new place: Slicer's widget ends the drag
    with a PointEndInteractionEvent that has no index (it is in the node attribute Markups.MovingMarkupIndex);
    undo puts the point, the prompt and the segment back exactly."""
    import slicer

    liver = reference["liver"]
    k = largest_slice(liver, axis=2)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("liver")
    session.set_segment(segmentation, segment_id)
    js, is_ = np.nonzero(liver[k])
    # a lone "+" click (the worker's click search) in the liver, dragged out to the air in the slice's corner
    first, second = (is_[len(is_) // 2], js[len(js) // 2], k), (2, 2, k)
    positive = nodes(session)["positivePoints"]
    positive.AddControlPoint(vtk.vtkVector3d(*to_ras(mrml.volume, first)))
    session.wait()
    placed = read_segment(segmentation, segment_id, mrml.volume)
    undo_depth = len(session._undo)

    positive.SetAttribute("Markups.MovingMarkupIndex", "0")  # as vtkSlicerMarkupsWidget::StartWidgetInteraction
    positive.SetNthControlPointPositionWorld(0, *to_ras(mrml.volume, second))
    positive.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)  # no call data, as in Slicer
    positive.SetAttribute("Markups.MovingMarkupIndex", "")
    session.wait()
    assert len(session._undo) == undo_depth + 1, "the drag did not re-predict"
    prompt = [p for p in session.prompts if p.kind == "positive"][0]
    assert np.allclose(prompt.coords, second[:2], atol=1e-6)
    moved = read_segment(segmentation, segment_id, mrml.volume)
    assert not np.array_equal(moved, placed), "the segment did not follow the moved point"
    assert not session.move_point(positive.GetID(), positive.GetNthControlPointID(0), to_ras(mrml.volume, second))

    assert session.undo()
    assert np.array_equal(read_segment(segmentation, segment_id, mrml.volume), placed)
    back = [0.0, 0.0, 0.0]
    positive.GetNthControlPointPositionWorld(0, back)
    assert np.allclose(back, to_ras(mrml.volume, first), atol=1e-4)
    assert np.allclose([p for p in session.prompts if p.kind == "positive"][0].coords, first[:2], atol=1e-6)
