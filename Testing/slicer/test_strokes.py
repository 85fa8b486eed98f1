"""Lassos and scribbles in the Lib, without a worker: a curve becomes a prompt when its placing ends (right-click,
double-click, Esc or another tool), in a stroke node of its own; its points become slice pixels; the newest box or
lasso of a slice is its region."""

from __future__ import annotations

from typing import Any

import numpy as np
import vtk
from conftest import make_mrml

from SAMMedSlicerLib import prompts as P
from SAMMedSlicerLib.placement import PromptPlacement, create_prompt_nodes, defined_points
from SAMMedSlicerLib.placing import leave_place_mode, start_placing
from SAMMedSlicerLib.volume import ijk_to_ras

TRIANGLE = [(10.0, 20.0, 5.0), (40.0, 20.0, 5.0), (25.0, 50.0, 5.0)]


class Strokes:
    """What the placement reported; the callback keeps a stroke while ``keep`` is True."""

    def __init__(self) -> None:
        self.reported: list[tuple[str, Any, np.ndarray]] = []
        self.keep = True

    def __call__(self, role: str, stroke: Any) -> bool:
        self.reported.append((role, stroke, defined_points(stroke)))
        return self.keep


def placement_on_a_scene() -> tuple[Any, dict[str, Any], PromptPlacement, Strokes]:
    scene = make_mrml().scene
    nodes = create_prompt_nodes(scene)
    strokes = Strokes()
    ignore = lambda *args: None  # noqa: E731
    placement = PromptPlacement(scene, ignore, ignore, ignore, strokes, lambda callback, *args: callback(*args))
    placement.observe(nodes)
    return scene, nodes, placement, strokes


def draw(node: Any, points: list[tuple[float, float, float]], preview: tuple[float, float, float]) -> None:
    """Clicks add defined points; the point following the mouse is a preview."""
    for point in points:
        node.AddControlPointWorld(vtk.vtkVector3d(*point))
    index = node.AddControlPointWorld(vtk.vtkVector3d(*preview))
    node.SetNthControlPointPositionWorld(index, *preview, node.PositionPreview)


def test_a_curve_becomes_a_stroke_when_its_placing_ends():
    scene, nodes, placement, strokes = placement_on_a_scene()
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    start_placing(interaction, selection, nodes["lasso"])
    draw(nodes["lasso"], TRIANGLE, (0.0, 0.0, 5.0))
    assert not strokes.reported, "a curve being placed is not a prompt yet"
    leave_place_mode(interaction)  # what a right-click or double-click does
    (role, stroke, points), = strokes.reported
    assert role == "lasso" and stroke is not nodes["lasso"] and stroke.IsA("vtkMRMLMarkupsClosedCurveNode")
    assert np.allclose(points, TRIANGLE), "the stroke holds the clicked points, not the preview"
    assert nodes["lasso"].GetNumberOfControlPoints() == 0, "the lasso node is emptied for the next lasso"
    assert scene.IsNodePresent(stroke) and stroke.GetLocked()

    strokes.keep = False  # another tool chosen while drawing a scribble finishes it; a refused stroke is removed
    start_placing(interaction, selection, nodes["scribble"])
    draw(nodes["scribble"], TRIANGLE[:2], (0.0, 0.0, 5.0))
    start_placing(interaction, selection, nodes["box"])
    role, refused, points = strokes.reported[-1]
    assert role == "scribble" and len(points) == 2 and not scene.IsNodePresent(refused)
    assert nodes["scribble"].GetNumberOfControlPoints() == 0

    start_placing(interaction, selection, nodes["lasso"])  # place mode left without a click: nothing to report
    leave_place_mode(interaction)
    assert len(strokes.reported) == 2
    placement.clear()
    assert not scene.IsNodePresent(stroke), "clear removes the strokes"


def test_curves_become_slice_pixels(mrml):
    matrix = ijk_to_ras(mrml.volume)
    inverse = np.linalg.inv(matrix)
    dims = mrml.volume.GetImageData().GetDimensions()

    def ras(*ijk: float) -> np.ndarray:
        return (matrix @ [*ijk, 1.0])[:3]

    lasso = P.curve_on_slice(inverse, np.array([ras(-9, 10, 7), ras(50, 10, 7), ras(50, 60, 7)]), 2, dims, closed=True)
    assert (lasso.axis, lasso.index) == (2, 7)
    assert np.allclose(lasso.vertices, [(-0.5, 10), (50, 10), (50, 60)]), "a lasso past the edge is clamped to it"
    scribble = P.curve_on_slice(inverse, np.array([ras(10, 3, 7), ras(10, 3, 20)]), 1, dims, closed=False)
    assert (scribble.index, scribble.vertices) == (3, ((10.0, 7.0), (10.0, 20.0)))  # coronal: x = i, y = k
    for points, closed, message in (
        ([ras(-9, 10, 7), ras(50, 10, 7)], False, "outside"),
        ([ras(1, 10, 7), ras(50, 10, 9)], True, "crosses slices"),
    ):
        try:
            P.curve_on_slice(inverse, np.array(points), 2, dims, closed=closed)
        except P.OutsideVolumeError as error:
            assert message in str(error)
        else:
            raise AssertionError(f"{points} must be refused")


def test_the_newest_box_or_lasso_is_the_slice_region_and_scribbles_add_up():
    log = P.PromptLog()
    log.add(P.Prompt("box", 2, 5, (0.0, 0.0, 9.0, 9.0), "r"))
    log.add(P.Prompt("scribble", 2, 5, (1.0, 1.0, 3.0, 4.0), "s1"))
    log.add(P.Prompt("lasso", 2, 5, (0.0, 0.0, 8.0, 0.0, 4.0, 6.0), "l"))
    log.add(P.Prompt("negative", 2, 5, (3.0, 4.0), "n", "b"))
    on = log.on_slice(2, 5)
    assert on.box is None and on.lasso == [(0.0, 0.0), (8.0, 0.0), (4.0, 6.0)]
    assert on.scribbles == [([(1.0, 1.0), (3.0, 4.0)], 1)] and on.points == [(3.0, 4.0)] and on.labels == [0]
    assert [p.node_id for p in log.on_slice_regions(2, 5)] == ["r", "l"]
    log.add(P.Prompt("box", 2, 5, (1.0, 1.0, 5.0, 5.0), "r2"))
    assert log.on_slice(2, 5).box == (1.0, 1.0, 5.0, 5.0) and log.on_slice(2, 5).lasso is None
    assert not P.SlicePrompts([(3.0, 4.0)], [0], None).has_foreground
    assert P.SlicePrompts([], [], None, scribbles=[([(1.0, 1.0)], 1)]).has_foreground
