"""Main-thread speed of writing results into a segmentation (benchmark: printed, not asserted; ``-m bench``).

A synthetic 512×512×300 CT-sized volume with 10 segments in one shared labelmap (as after importing a labelmap or
an automatic segmentation): the time to write one predicted slice into a segment (goal ≤ 30 ms) and to apply a
whole-volume result (goal ≤ 1 s), both as the session does it on the main thread. Run it with
``.venv-slicer/bin/python -m pytest Testing/slicer -m bench -s`` (``make bench-slicer``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import vtk
from vtkmodules.util import numpy_support

from SAMMedSlicerLib.segments import EditSettings, SegmentSlices
from SAMMedSlicerLib.workflows import PendingResult

pytestmark = pytest.mark.bench

DIMS_IJK = (512, 512, 300)
SEGMENTS = 10
REPEATS = 5


def labelmap_scene() -> tuple[Any, Any, Any, np.ndarray]:
    """A scene with a 512×512×300 volume and a segmentation of 10 segments (slabs of ellipses) in one layer."""
    import slicer

    scene = slicer.vtkMRMLScene()
    i, j, k = DIMS_IJK
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "big")
    image = vtk.vtkImageData()
    image.SetDimensions(i, j, k)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = 40
    volume.SetAndObserveImageData(image)
    volume.SetSpacing(0.8, 0.8, 1.5)
    volume.SetOrigin(-200.0, -180.0, -300.0)
    yy, xx = np.mgrid[0:j, 0:i]
    labels = np.zeros((k, j, i), np.uint8)
    for n in range(SEGMENTS):  # ten blobs side by side, each over a third of the slices
        cx, cy = 60 + 45 * n, 256
        disc = (xx - cx) ** 2 / 20.0 ** 2 + (yy - cy) ** 2 / 80.0 ** 2 <= 1
        labels[20 * n:20 * n + 100][:, disc] = n + 1
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    label_image = vtk.vtkImageData()
    label_image.SetDimensions(i, j, k)
    label_image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    numpy_support.vtk_to_numpy(label_image.GetPointData().GetScalars())[:] = labels.ravel()
    labelmap.SetAndObserveImageData(label_image)
    labelmap.CopyOrientation(volume)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    return scene, volume, segmentation, labels


def best_of(run, repeats: int = REPEATS) -> float:
    return min(timed(run)[0] for _ in range(repeats))


def timed(run) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of this process, result): CPU time shows the cost on a machine shared with
    other work, wall time what a user waits."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def test_bench_slice_write_and_volume_apply(capsys):
    _scene, volume, segmentation, labels = labelmap_scene()
    slices = SegmentSlices(segmentation, volume)
    ids = slices.segment_ids()
    assert len(ids) == SEGMENTS
    target = ids[3]
    k = 150
    mask = np.zeros(labels.shape[1:], bool)
    mask[200:320, 150:260] = True  # overlaps segments 3 and 4 on this slice

    edits = []
    slice_write = best_of(lambda: edits.append(slices.apply(EditSettings(), target, 2, k, mask)))
    assert np.array_equal(slices.read(target, 2, k), mask)
    slice_undo = best_of(lambda: slices.undo(edits[0]))

    volume_result = np.zeros(labels.shape, bool)
    volume_result[40:260, 100:400, 100:420] = True
    auto = PendingResult("bench", labels=[{"name": "auto"}], volumes=[volume_result])
    volume_apply, volume_cpu, applied = timed(lambda: auto.apply(slices, EditSettings(), target))
    assert np.array_equal(slices.read_volume(applied.created[0]), volume_result)
    volume_undo, _, _ = timed(lambda: applied.undo(slices))

    propagated = PendingResult("bench", slices={(2, z): volume_result[z] for z in range(40, 260)})
    propagate_apply, propagate_cpu, _ = timed(lambda: propagated.apply(slices, EditSettings(), target))
    with capsys.disabled():
        print(f"\n512×512×300, {SEGMENTS} segments (one shared labelmap): write one predicted slice "
              f"{slice_write * 1e3:.1f} ms (goal ≤ 30), undo it {slice_undo * 1e3:.1f} ms; apply a whole-volume result "
              f"as a new segment {volume_apply:.2f} s (CPU {volume_cpu:.2f} s; goal ≤ 1), undo it {volume_undo:.2f} s; "
              f"apply 220 propagated slices into a segment {propagate_apply:.2f} s (CPU {propagate_cpu:.2f} s)")
