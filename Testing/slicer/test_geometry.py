"""RAS → slice pixels and the worker's LPS geometry, on real volume nodes (no worker needed)."""

from __future__ import annotations

import numpy as np
import vtk

from SAMMedSlicerLib import prompts as P
from SAMMedSlicerLib.volume import ijk_to_ras, lps_geometry

RED, YELLOW, GREEN = (0, 0, 1), (1, 0, 0), (0, 1, 0)


def test_view_normals_pick_axes_on_axial_ct(mrml):
    matrix = ijk_to_ras(mrml.volume)
    assert [P.slice_axis(matrix, n) for n in (RED, YELLOW, GREEN)] == [2, 0, 1]


def test_view_normals_pick_axes_on_a_sagittal_acquisition(mrml):
    """A volume whose K runs left-right (sagittal slices): the Yellow view slices along K, Red along J."""
    sagittal = vtk.vtkMatrix4x4()
    for row, col in ((0, 2), (1, 0), (2, 1)):  # R <- K, A <- I, S <- J
        sagittal.SetElement(row, row, 0)
        sagittal.SetElement(row, col, 2.5)
    mrml.volume.SetIJKToRASMatrix(sagittal)
    matrix = ijk_to_ras(mrml.volume)
    assert [P.slice_axis(matrix, n) for n in (RED, YELLOW, GREEN)] == [1, 2, 0]
    ijk = (7.0, 11.0, 5.0)
    point = P.point_on_slice(np.linalg.inv(matrix), (matrix @ [*ijk, 1])[:3], 2, (122, 101, 30))
    assert (point.axis, point.index, point.x, point.y) == (2, 5, 7.0, 11.0)


def test_point_pixels_follow_the_engine_convention(mrml):
    matrix = ijk_to_ras(mrml.volume)
    ras = (matrix @ [10.0, 20.0, 7.0, 1.0])[:3]
    inverse = np.linalg.inv(matrix)
    dims = mrml.volume.GetImageData().GetDimensions()
    got = {axis: P.point_on_slice(inverse, ras, axis, dims) for axis in (0, 1, 2)}
    assert (got[2].index, got[2].x, got[2].y) == (7, 10, 20)   # axial: x = i, y = j
    assert (got[1].index, got[1].x, got[1].y) == (20, 10, 7)   # coronal: x = i, y = k
    assert (got[0].index, got[0].x, got[0].y) == (10, 20, 7)   # sagittal: x = j, y = k


def test_box_is_clipped_to_the_slice_and_outside_points_refused(mrml):
    matrix = ijk_to_ras(mrml.volume)
    inverse = np.linalg.inv(matrix)
    dims = mrml.volume.GetImageData().GetDimensions()
    corners = np.array([(matrix @ [i, j, k, 1])[:3] for i in (-5, 50) for j in (10, 200) for k in (3, 3)])
    box = P.box_on_slice(inverse, corners, corners.mean(axis=0), 2, dims)
    assert (box.index, box.corners) == (3, (0.0, 10.0, 50.0, dims[1] - 1.0))
    try:
        P.point_on_slice(inverse, (matrix @ [-3, 0, 0, 1])[:3], 2, dims)
    except P.OutsideVolumeError:
        pass
    else:
        raise AssertionError("a point outside the volume must be refused")


def test_lps_geometry_is_the_ras_geometry_flipped(mrml):
    """What the Lib sends the worker: spacing, and origin/direction with R and A negated (ITK's LPS)."""
    geometry = lps_geometry(ijk_to_ras(mrml.volume))
    ras = ijk_to_ras(mrml.volume)
    assert np.allclose(geometry.spacing, (3.0, 3.0, 3.0))
    assert np.allclose(geometry.origin, [-ras[0, 3], -ras[1, 3], ras[2, 3]])
    direction = np.array(geometry.direction).reshape(3, 3)
    assert np.allclose(direction @ np.diag(geometry.spacing), np.diag([-1, -1, 1]) @ ras[:3, :3])


def test_prompt_log_groups_prompts_by_slice():
    log = P.PromptLog()
    log.add(P.Prompt("positive", 2, 5, (1.0, 2.0), "n1", "a"))
    log.add(P.Prompt("box", 2, 5, (0.0, 0.0, 9.0, 9.0), "r"))
    log.add(P.Prompt("negative", 2, 5, (3.0, 4.0), "n2", "b"))
    log.add(P.Prompt("positive", 1, 5, (7.0, 7.0), "n1", "c"))
    on = log.on_slice(2, 5)
    assert on.points == [(1.0, 2.0), (3.0, 4.0)] and on.labels == [1, 0] and on.box == (0.0, 0.0, 9.0, 9.0)
    assert log.pop().axis == 1 and len(log) == 3
