"""Prompt placement (Qt-free): markups nodes in the slice views → "a point was placed / dragged, a box was drawn,
a lasso or scribble was finished".

How Slicer places markups, and what this module does about it (Slicer's ``vtkMRMLMarkupsDisplayableManager``,
``vtkSlicerMarkupsWidget``):

- A point list fires ``PointPositionDefinedEvent`` with the point's index when a click places it. A drag fires
  ``PointStartInteractionEvent`` / ``PointEndInteractionEvent`` *without* an index: the widget keeps the moving
  point's index in the node attribute ``Markups.MovingMarkupIndex`` until just after ``PointEndInteractionEvent``.
- An ROI holds one control point (its maximum). In Place mode, once the active ROI is complete, the displayable
  manager's ``GetWidgetForPlacement`` creates a *new* ROI node on the next mouse move and makes it the active place
  node. Each box is therefore its own ROI node: this module adopts every ROI node the manager creates while one of
  ours was the active place node (styles and observes it like the first), and removes adopted ROIs that never
  became a box when Place mode ends (right-click, Esc), so no stray "R" node is left.
- Esc is not a markups key in Slicer; :meth:`PromptPlacement.watch_keys` makes it leave Place mode in a view.
- A curve (the lasso's closed curve, the scribble's open one) has no maximum number of points: each click in
  Place mode adds one (``vtkMRMLMarkupsCurveNode`` asks for 10^6, so even one-time placing goes on), and placing
  ends with a right-click or a double-click (``vtkSlicerMarkupsWidget``: ``WidgetEventStopPlace`` switches to view
  transform), Esc, or another place tool. The interaction node then fires ``EndPlacementEvent``, after the
  displayable manager has removed the preview point that follows the mouse. That is when a curve is finished:
  its defined points are copied into a stroke node of its own (one markup per prompt, for undo) and the curve
  node, the "pen", is emptied for the next stroke.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import vtk

from .placing import is_being_placed, leave_place_mode

POINT_KINDS = {"positivePoints": "positive", "negativePoints": "negative"}
CURVE_ROLES = ("lasso", "scribble")
MOVING_INDEX_ATTRIBUTE = "Markups.MovingMarkupIndex"  # vtkMRMLMarkupsDisplayNode::GetMovingMarkupIndexAttributeName()
BOX_NAME = "SAMMed box"
INTERACTION_NODE = "vtkMRMLInteractionNodeSingleton"
SELECTION_NODE = "vtkMRMLSelectionNodeSingleton"


PROMPT_MARKUPS = {  # role: (markups class, name, colour)
    "positivePoints": ("vtkMRMLMarkupsFiducialNode", "SAMMed +", (0.2, 0.9, 0.2)),
    "negativePoints": ("vtkMRMLMarkupsFiducialNode", "SAMMed −", (0.95, 0.2, 0.2)),
    "box": ("vtkMRMLMarkupsROINode", BOX_NAME, (1.0, 0.85, 0.1)),
    "lasso": ("vtkMRMLMarkupsClosedCurveNode", "SAMMed lasso", (1.0, 0.5, 0.1)),
    "scribble": ("vtkMRMLMarkupsCurveNode", "SAMMed scribble", (0.2, 0.9, 0.2)),
}


def create_prompt_nodes(scene: Any, roles: Sequence[str] = tuple(PROMPT_MARKUPS)) -> dict[str, Any]:
    """New prompt markups (default: all of them: "+" and "−" point lists, a box ROI, a lasso and a scribble
    curve), coloured and named for the panel. Curves are drawn straight between their points, as they are sent."""
    nodes = {}
    for role in roles:
        cls, name, color = PROMPT_MARKUPS[role]
        node = scene.AddNewNodeByClass(cls, name)
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetPropertiesLabelVisibility(False)  # the colour says what it is; names would cover the image
        display.SetPointLabelsVisibility(False)
        if role in CURVE_ROLES:
            node.SetCurveTypeToLinear()
        nodes[role] = node
    return nodes


def roi_corners(roi: Any) -> np.ndarray:
    """The 8 world corners of a (possibly rotated) ROI."""
    center = [0.0, 0.0, 0.0]
    roi.GetCenterWorld(center)
    radius = np.asarray(roi.GetSize()) / 2.0
    axes = []
    for getter in (roi.GetXAxisWorld, roi.GetYAxisWorld, roi.GetZAxisWorld):
        axis = [0.0, 0.0, 0.0]
        getter(axis)
        axes.append(axis)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    return np.asarray(center) + (signs * radius) @ np.array(axes)


def defined_points(node: Any) -> np.ndarray:
    """``(n, 3)`` world positions of a markup's defined control points (not the preview point following the mouse)."""
    points, position = [], [0.0, 0.0, 0.0]
    for n in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(n) == node.PositionDefined:
            node.GetNthControlPointPositionWorld(n, position)
            points.append(list(position))
    return np.asarray(points, float).reshape(-1, 3)


class PromptPlacement:
    """Observes the prompt markups and reports finished placements through four callbacks.

    ``on_point(kind, node, index)`` — a point was placed; ``on_point_moved(node, index)`` — a point was dragged;
    ``on_box(roi)`` — a box was drawn or its handles released; ``on_curve(role, stroke)`` — a lasso or scribble
    was finished, ``stroke`` being the node it was copied into: it stays if this returns True, else it is removed.
    ``guard(callback, *args)`` runs each of them (the session keeps errors instead of raising into VTK).
    """

    def __init__(
        self, scene: Any, on_point: Callable[[str, Any, int], None], on_point_moved: Callable[[Any, int], None],
        on_box: Callable[[Any], None], on_curve: Callable[[str, Any], bool], guard: Callable[..., None],
    ) -> None:
        self.scene = scene
        self._on_point = on_point
        self._on_point_moved = on_point_moved
        self._on_box = on_box
        self._on_curve = on_curve
        self._guard = guard
        self._nodes: dict[str, Any] = {}
        self._adopted: list[Any] = []  # ROI nodes the displayable manager created for later boxes
        self._strokes: list[Any] = []  # finished lassos and scribbles, one node each
        self._ours: set[str] = set()  # ids of every ROI node that is or was a box node (removed ones too)
        self._observations: list[tuple[Any, int]] = []
        self._muted = False
        self._roi_dragging = False
        self._active_place_id = ""
        self._placing = False

    # nodes -------------------------------------------------------------------------------------
    def observe(self, nodes: dict[str, Any]) -> None:
        """Watch ``{"positivePoints": ..., "negativePoints": ..., "box": ..., "lasso": ..., "scribble": ...}``
        (roles may be missing) and the place mode."""
        self.unobserve()
        self._nodes = dict(nodes)
        for role, node in self._nodes.items():
            if node is None or role in CURVE_ROLES:  # a curve is a prompt when its placing ends (see above)
                continue
            if role in POINT_KINDS:
                self._add_observer(node, "PointPositionDefinedEvent", self._point_placed(POINT_KINDS[role]))
                self._add_observer(node, "PointEndInteractionEvent", self._point_dragged)
            else:
                self._observe_roi(node)
        selection = self._singleton(SELECTION_NODE)
        interaction = self._singleton(INTERACTION_NODE)
        if selection is not None:
            self._active_place_id = selection.GetActivePlaceNodeID() or ""
            self._add_observer(selection, "ModifiedEvent", lambda node, _: self._place_node_changed(node))
        if interaction is not None:
            self._placing = interaction.GetCurrentInteractionMode() == interaction.Place
            self._add_observer(interaction, "ModifiedEvent", lambda node, _: self._mode_changed(node))
            self._add_observer(interaction, "EndPlacementEvent", lambda _node, _: self._placement_ended())

    def unobserve(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations.clear()

    @property
    def nodes(self) -> dict[str, Any]:
        """The observed markups by role ("box" is the first box node)."""
        return dict(self._nodes)

    @property
    def box_nodes(self) -> list[Any]:
        """Every ROI node that holds (or will hold) a box: the first one and those adopted since."""
        first = self._nodes.get("box")
        return ([first] if first is not None else []) + list(self._adopted)

    def is_adopted(self, node: Any) -> bool:
        return any(node is adopted for adopted in self._adopted)

    def remove_adopted(self, node: Any) -> None:
        """Remove an adopted ROI node from the scene (undo of its box)."""
        self._adopted = [n for n in self._adopted if n is not node]
        if self.scene.IsNodePresent(node):
            with self.muted():
                self.scene.RemoveNode(node)

    def remove_stroke(self, node: Any) -> None:
        """Remove a finished lasso or scribble from the scene (undo of its prompt)."""
        self._strokes = [n for n in self._strokes if n is not node]
        if self.scene.IsNodePresent(node):
            with self.muted():
                self.scene.RemoveNode(node)

    def clear(self) -> None:
        """Remove every prompt markup: the role nodes are emptied, adopted ROIs and strokes are removed."""
        with self.muted():
            for node in self._nodes.values():
                if node is not None:
                    node.RemoveAllControlPoints()
            for node in list(self._adopted):
                self.remove_adopted(node)
            for node in list(self._strokes):
                self.remove_stroke(node)

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Changes made by the session itself (undo) are not placements."""
        self._muted, was = True, self._muted
        try:
            yield
        finally:
            self._muted = was

    # keys --------------------------------------------------------------------------------------
    def watch_keys(self, interactor: Any) -> None:
        """Esc in this view leaves Place mode (as right-click does)."""
        def key(caller: Any, _event: Any) -> None:
            if caller.GetKeySym() == "Escape":
                self.leave_place_mode()

        self._observations.append((interactor, interactor.AddObserver(vtk.vtkCommand.KeyPressEvent, key)))

    def leave_place_mode(self) -> None:
        leave_place_mode(self._singleton(INTERACTION_NODE))

    def being_placed(self, node: Any) -> bool:
        """Whether the user is placing ``node`` right now."""
        return is_being_placed(self._singleton(INTERACTION_NODE), self._singleton(SELECTION_NODE), node)

    # observers ---------------------------------------------------------------------------------
    def _observe_roi(self, roi: Any) -> None:
        self._ours.add(roi.GetID())
        for event in ("PointPositionDefinedEvent", "PointStartInteractionEvent", "PointEndInteractionEvent",
                      "ModifiedEvent"):
            self._add_observer(roi, event, self._roi_event(event))

    def _add_observer(self, node: Any, event: str, callback: Callable[[Any, Optional[int]], None]) -> None:
        # MRML custom event ids reach Python as "NoEvent": each observer knows its own event instead.
        def observer(caller: Any, _event: Any, calldata: Optional[int] = None) -> None:
            if not self._muted:
                self._guard(callback, caller, calldata)

        observer.CallDataType = vtk.VTK_INT  # type: ignore[attr-defined]
        event_id = vtk.vtkCommand.ModifiedEvent if event == "ModifiedEvent" else getattr(type(node), event)
        self._observations.append((node, node.AddObserver(event_id, observer)))

    def _point_placed(self, kind: str) -> Callable[[Any, Optional[int]], None]:
        def handle(node: Any, index: Optional[int]) -> None:
            if index is not None and 0 <= index < node.GetNumberOfControlPoints():
                self._on_point(kind, node, index)

        return handle

    def _point_dragged(self, node: Any, index: Optional[int]) -> None:
        if index is None:  # Slicer's widget sends no index: it is in the node attribute while the drag ends
            moving = node.GetAttribute(MOVING_INDEX_ATTRIBUTE) or ""
            index = int(moving) if moving.lstrip("-").isdigit() else None
        if index is not None and 0 <= index < node.GetNumberOfControlPoints():
            self._on_point_moved(node, index)

    def _roi_event(self, event: str) -> Callable[[Any, Optional[int]], None]:
        def handle(roi: Any, _index: Optional[int]) -> None:
            if event == "PointStartInteractionEvent":
                self._roi_dragging = True
                return
            if event == "PointEndInteractionEvent":
                self._roi_dragging = False
            elif self._roi_dragging or (event == "ModifiedEvent" and self.being_placed(roi)):
                return  # a box still being drawn or dragged is not a prompt yet
            if roi.GetNumberOfDefinedControlPoints() == 0 or sorted(roi.GetSize())[1] <= 0:
                return  # not placed yet, or still flat
            self._on_box(roi)

        return handle

    def _placement_ended(self) -> None:
        """Place mode ended (right-click, double-click, Esc): the curve being placed, if any, is finished."""
        self._finish_curve(self._active_place_id)

    def _finish_curve(self, node_id: str) -> None:
        """Copy a curve's defined points into a stroke node of its own, empty the curve for the next stroke, and
        report the stroke (removed again unless the callback keeps it)."""
        role = next((r for r in CURVE_ROLES if self._nodes.get(r) is not None and self._nodes[r].GetID() == node_id), None)
        if role is None or self._muted:
            return
        pen = self._nodes[role]
        points = defined_points(pen)
        with self.muted():
            pen.RemoveAllControlPoints()
        if not len(points):
            return
        positions = vtk.vtkPoints()
        for point in points:
            positions.InsertNextPoint(*point)
        stroke = self.scene.AddNewNodeByClass(pen.GetClassName(), self.scene.GenerateUniqueName(pen.GetName()))
        stroke.CreateDefaultDisplayNodes()
        stroke.GetDisplayNode().CopyContent(pen.GetDisplayNode())
        stroke.SetCurveType(pen.GetCurveType())
        stroke.SetControlPointPositionsWorld(positions)
        stroke.SetLocked(True)  # a stroke is redrawn, not edited: undo it and draw again
        self._strokes.append(stroke)
        kept = []
        self._guard(lambda: kept.append(bool(self._on_curve(role, stroke))))
        if not any(kept):
            self.remove_stroke(stroke)

    def _place_node_changed(self, selection: Any) -> None:
        """Another place tool was chosen while a curve was being placed: that curve is finished. The displayable
        manager made a new ROI the active place node after one of ours was full: adopt it."""
        previous, self._active_place_id = self._active_place_id, selection.GetActivePlaceNodeID() or ""
        if previous != self._active_place_id:
            self._finish_curve(previous)
        if previous == self._active_place_id or previous not in self._ours:
            return
        node = self.scene.GetNodeByID(self._active_place_id)
        if node is None or not node.IsA("vtkMRMLMarkupsROINode") or node.GetID() in self._ours:
            return
        first = self._nodes.get("box")
        if first is not None and first.GetDisplayNode() is not None and node.GetDisplayNode() is not None:
            node.GetDisplayNode().CopyContent(first.GetDisplayNode())
        node.SetName(self.scene.GenerateUniqueName(BOX_NAME))
        self._adopted.append(node)
        self._observe_roi(node)

    def _mode_changed(self, interaction: Any) -> None:
        """Leaving Place mode: remove adopted ROIs that never became a box (no stray nodes are left)."""
        placing = interaction.GetCurrentInteractionMode() == interaction.Place
        if self._placing and not placing:
            for node in list(self._adopted):
                if node.GetNumberOfDefinedControlPoints() == 0 or sorted(node.GetSize())[1] <= 0:
                    self.remove_adopted(node)
        self._placing = placing

    def _singleton(self, node_id: str) -> Optional[Any]:
        return self.scene.GetNodeByID(node_id)
