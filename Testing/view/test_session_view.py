"""A whole user session in real (offscreen) slice views, driven only by mouse and key events on the views'
interactors: the markups widgets place the prompts, the session's observers fire, the real worker (LiteMedSAM, CPU)
predicts on the session's background thread, and ``session.wait()`` drains the results onto the main thread the
way the panel's timer does.

Steps (each saved as ``out/view/NN-step.png``; all of them in the contact sheet ``out/view/session.png``):
box 1 (Red, liver's largest axial slice) → box 2 on another slice → box 3 on the first slice again (each predicts
exactly once, each box its own ROI node, no stray ROI) → Esc leaves Place mode → "+" and "−" points → drag the
"+" point (re-predicts) → right-click leaves Place mode (no stray ROI) → undo back to the start (segments exactly as
before, no markups left) → a box in the Green (coronal) view → a box in Red → propagate both ways → Apply.

Strokes (``out/view/strokes/``): a lasso clicked around the liver in Red and closed with a right-click → a "+"
scribble inside the liver on another slice → undo both (segment exactly as before, only the empty lasso and
scribble markups left).

LiteMedSAM was trained on boxes only: boxes and the lasso are held to a Dice bound; points and the scribble are
checked for placement and for reaching the worker, not for Dice.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import vtk
from vtkmodules.util import numpy_support

from SAMMedSlicerLib.placing import start_placing
from SAMMedSlicerLib.segments import SegmentSlices
from SAMMedSlicerLib.session import Session, create_prompt_nodes
from SAMMedSlicerLib.volume import ijk_to_ras, voxel_array

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "out" / "view"
SHEET = OUT / "session.png"
VIEW_SIZE = (400, 400)
MARGIN_PX = 2
BOX_DICE_MIN = 0.80
LASSO_DICE_MIN = 0.85
LASSO_VERTICES = 12
PROPAGATED_DICE_MIN = 0.75


class CountingClient:
    """Test-only wrapper of the real client: counts the predict calls per slice (everything else passes through)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.predicts: list[tuple[int, int]] = []

    def predict(self, volume_id: str, axis: int, index: int, *args: Any, **kwargs: Any) -> Any:
        self.predicts.append((axis, index))
        return self._client.predict(volume_id, axis, index, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def to_ras(volume: Any, ijk: Any) -> np.ndarray:
    return (ijk_to_ras(volume) @ np.array([*ijk, 1.0]))[:3]


def matrix(vtk_matrix: Any) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def to_display(slice_node: Any, ras: np.ndarray) -> tuple[int, int]:
    """The view pixel (origin bottom left, as VTK's interactor wants it) that shows ``ras``."""
    xy = np.linalg.inv(matrix(slice_node.GetXYToRAS())) @ np.array([*ras, 1.0])
    return int(round(xy[0])), int(round(xy[1]))


class Mouse:
    """Mouse and keys on one view's interactor."""

    def __init__(self, view: Any) -> None:
        self.view = view
        self.interactor = view.interactor()
        self.node = view.get_view_node()

    def move(self, xy: tuple[int, int]) -> None:
        self.interactor.SetEventPosition(*xy)
        self.interactor.InvokeEvent(vtk.vtkCommand.MouseMoveEvent)

    def click(self, xy: tuple[int, int]) -> None:
        self.move(xy)
        self.interactor.InvokeEvent(vtk.vtkCommand.LeftButtonPressEvent)
        self.interactor.InvokeEvent(vtk.vtkCommand.LeftButtonReleaseEvent)

    def drag(self, start: tuple[int, int], end: tuple[int, int], steps: int = 4) -> None:
        self.move(start)
        self.interactor.InvokeEvent(vtk.vtkCommand.LeftButtonPressEvent)
        for t in np.linspace(0, 1, steps + 1)[1:]:
            self.move((int(round(start[0] + t * (end[0] - start[0]))), int(round(start[1] + t * (end[1] - start[1])))))
        self.interactor.InvokeEvent(vtk.vtkCommand.LeftButtonReleaseEvent)

    def right_click(self, xy: tuple[int, int]) -> None:
        self.move(xy)
        self.interactor.InvokeEvent(vtk.vtkCommand.RightButtonPressEvent)
        self.interactor.InvokeEvent(vtk.vtkCommand.RightButtonReleaseEvent)

    def key(self, keysym: str) -> None:
        self.interactor.SetKeySym(keysym)
        self.interactor.InvokeEvent(vtk.vtkCommand.KeyPressEvent)
        self.interactor.InvokeEvent(vtk.vtkCommand.KeyReleaseEvent)

    def box(self, low_ras: np.ndarray, high_ras: np.ndarray) -> None:
        """Two clicks at opposite corners (Slicer's ROI placement in a slice view)."""
        self.click(to_display(self.node, low_ras))
        self.move(to_display(self.node, (low_ras + high_ras) / 2))
        self.click(to_display(self.node, high_ras))

    def scroll_to(self, ras: np.ndarray, step_mm: float) -> None:
        """Mouse-wheel through slices until the view shows the plane through ``ras``."""
        self.move((VIEW_SIZE[0] // 2, VIEW_SIZE[1] // 2))
        for _ in range(500):
            slice_to_ras = matrix(self.node.GetSliceToRAS())
            distance = float(slice_to_ras[:3, 2] @ (ras - slice_to_ras[:3, 3]))
            if abs(distance) < step_mm / 2:
                return
            before = self.node.GetSliceOffset()
            self.interactor.InvokeEvent(vtk.vtkCommand.MouseWheelForwardEvent if distance > 0
                                        else vtk.vtkCommand.MouseWheelBackwardEvent)
            assert self.node.GetSliceOffset() != before, "the mouse wheel does not move the slice"
        raise AssertionError("could not scroll to the slice")


class Album:
    """One labelled PNG per step in ``out`` and a contact sheet of them all (``out/session.png``)."""

    def __init__(self, out: Path = OUT) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("[0-9][0-9]-*.png"):
            old.unlink()
        self.shots: list[tuple[str, np.ndarray]] = []
        self.times: list[float] = [time.perf_counter()]

    def shoot(self, view: Any, label: str) -> Path:
        self.times.append(time.perf_counter())
        text = vtk.vtkTextActor()
        text.SetInput(f"{len(self.shots) + 1}. {label}")
        text.GetTextProperty().SetFontSize(20)
        text.GetTextProperty().SetColor(1.0, 1.0, 0.6)
        text.GetTextProperty().SetBackgroundColor(0.0, 0.0, 0.0)
        text.GetTextProperty().SetBackgroundOpacity(0.6)
        text.SetDisplayPosition(6, VIEW_SIZE[1] - 28)
        renderer = view.renderers()[0]
        renderer.AddViewProp(text)
        view.render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(view.render_window())
        grab.ReadFrontBufferOff()
        grab.Update()
        renderer.RemoveViewProp(text)
        path = self.out / f"{len(self.shots) + 1:02d}-{re.sub(r'[^a-z0-9]+', '-', label.split(':')[0].lower()).strip('-')}.png"
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputData(grab.GetOutput())
        writer.Write()
        image = grab.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3]
        self.shots.append((label, pixels))
        return path

    def sheet(self, columns: int = 4) -> Path:
        """All steps, half size, in a grid (row 0 at the bottom, as VTK images are stored); returns its path."""
        tiles = [pixels[::2, ::2] for _, pixels in self.shots]
        h, w, _ = tiles[0].shape
        rows = -(-len(tiles) // columns)
        grid = np.zeros((rows * h, columns * w, 3), np.uint8)
        for n, tile in enumerate(tiles):
            row = rows - 1 - n // columns
            grid[row * h:(row + 1) * h, (n % columns) * w:(n % columns + 1) * w] = tile
        image = vtk.vtkImageData()
        image.SetDimensions(grid.shape[1], grid.shape[0], 1)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(grid.reshape(-1, 3), deep=True))
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(self.out / SHEET.name))
        writer.SetInputData(image)
        writer.Write()
        return self.out / SHEET.name


@pytest.fixture
def liver(app, ct_labels_path, label_names) -> np.ndarray:
    """The liver of example_seg as a (K, J, I) bool array (same grid as the CT)."""
    labels = app.volumes_logic.AddArchetypeVolume(str(ct_labels_path), "labels", 0, vtk.vtkStringArray())
    value = next(v for v, organ in label_names[ct_labels_path.name].items() if organ == "liver")
    mask = voxel_array(labels) == value
    app.scene.RemoveNode(labels)
    return mask


def bounding_ras(volume: Any, plane_ijk_low: tuple, plane_ijk_high: tuple) -> tuple[np.ndarray, np.ndarray]:
    return to_ras(volume, plane_ijk_low), to_ras(volume, plane_ijk_high)


def loose_outline(plane: np.ndarray, vertices: int = LASSO_VERTICES, margin: float = 3.0) -> np.ndarray:
    """``(vertices, 2)`` pixels (x, y) of a closed curve around a structure, as a user draws a lasso: one vertex per
    angular sector around its centre, ``margin`` pixels beyond its farthest pixel in that sector."""
    rows, cols = np.nonzero(plane)
    centre = np.array([cols.mean(), rows.mean()])
    offsets = np.stack([cols, rows], axis=1) - centre
    angles = np.arctan2(offsets[:, 1], offsets[:, 0])
    sector = ((angles + np.pi) / (2 * np.pi) * vertices).astype(int) % vertices
    radius = np.hypot(*offsets.T)
    outline = []
    for n in range(vertices):
        reach = (radius[sector == n].max() if np.any(sector == n) else 0.0) + margin
        reach /= np.cos(np.pi / vertices)  # the chord between two vertices stays outside the sector's arc
        angle = -np.pi + (n + 0.5) * 2 * np.pi / vertices
        outline.append(centre + reach * np.array([np.cos(angle), np.sin(angle)]))
    return np.clip(np.array(outline), 0, np.array(plane.shape[::-1]) - 1)


def inner_stroke(plane: np.ndarray) -> np.ndarray:
    """``(3, 2)`` pixels (x, y) along the longest row run of a structure through its centre: a short stroke inside."""
    y = int(round(np.nonzero(plane)[0].mean()))
    xs = np.nonzero(plane[y])[0]
    runs = np.split(xs, np.nonzero(np.diff(xs) > 1)[0] + 1)
    run = max(runs, key=len)
    return np.array([(run[0] + f * (run[-1] - run[0]), y) for f in (0.25, 0.5, 0.75)])


@dataclass
class Desk:
    """The CT in real offscreen slice views, a "liver" segment, a session observing the prompt markups: where each
    view test starts."""

    volume: Any
    segmentation: Any
    segment_id: str
    views: dict[str, Any]
    mice: dict[str, Mouse]
    client: CountingClient
    session: Session
    nodes: dict[str, Any]
    interaction: Any
    selection: Any

    def segment(self) -> np.ndarray:
        return SegmentSlices(self.segmentation, self.volume).read_volume(self.segment_id)

    def predicted(self, expected: list[tuple[int, int]]) -> None:
        """Wait for the predictions and check they were exactly ``expected`` (axis, slice), in order."""
        self.session.wait()
        assert self.client.predicts == expected, f"predictions {self.client.predicts}, expected {expected}"
        self.client.predicts.clear()
        assert not self.session.errors, self.session.errors


def open_desk(app: Any, ct_path: Path, worker: Any, names: tuple[str, ...]) -> Desk:
    """Load the CT into the views ``names`` (Red axial, Green coronal) and start a session in the first one."""
    from trame_slicer.views import NoScheduleRendering, ViewLayoutDefinition

    layouts = {"Red": ViewLayoutDefinition.axial_view, "Green": ViewLayoutDefinition.coronal_view}
    volume = app.io_manager.load_volumes(str(ct_path))[0]
    volume.GetDisplayNode().SetAutoWindowLevel(False)
    volume.GetDisplayNode().SetWindowLevel(400, 40)  # soft tissue
    segmentation = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("liver")
    segmentation.GetSegmentation().GetSegment(segment_id).SetColor(0.1, 0.6, 1.0)  # blue, apart from the yellow box
    views = {name: app.view_manager.create_view(layouts[name]()) for name in names}
    app.display_manager.show_volume_in_slice_background(volume)
    for view in views.values():
        # render only for the PNGs: software OpenGL would otherwise redraw on every mouse event (~0.2 s each)
        view.set_scheduled_render(NoScheduleRendering())
        view.render_window().SetSize(*VIEW_SIZE)
        view.update_size(*VIEW_SIZE)
        view.fit_view_to_content()
    mice = {name: Mouse(view) for name, view in views.items()}

    client = CountingClient(worker)
    session = Session(app.scene, client)
    session.active_slice_node = mice[names[0]].node
    session.set_volume(volume, precompute=False)
    nodes = create_prompt_nodes(app.scene)
    nodes["box"].GetDisplayNode().SetFillOpacity(0.0)  # outline only, so the segment shows in the PNGs
    nodes["lasso"].GetDisplayNode().SetFillOpacity(0.0)
    session.observe(nodes)
    for mouse in mice.values():
        session.placement.watch_keys(mouse.interactor)
    session.set_segment(segmentation, segment_id)
    return Desk(volume, segmentation, segment_id, views, mice, client, session, nodes,
                app.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton"), app.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton"))


def test_full_session_in_slice_views(app, ct_path, liver, worker, capsys):
    started = time.perf_counter()
    desk = open_desk(app, ct_path, worker, ("Red", "Green"))
    volume, views, session, nodes = desk.volume, desk.views, desk.session, desk.nodes
    red, green = desk.mice["Red"], desk.mice["Green"]
    spacing = np.array(volume.GetSpacing())
    interaction = desk.interaction
    album = Album()
    segment, predicted = desk.segment, desk.predicted

    def roi_nodes() -> list[Any]:
        return [app.scene.GetNthNodeByClass(n, "vtkMRMLMarkupsROINode")
                for n in range(app.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode"))]

    def assert_no_stray_roi() -> None:
        boxes = {p.node_id for p in session.prompts if p.kind == "box"}
        strays = [n.GetName() for n in roi_nodes() if n is not nodes["box"] and n.GetID() not in boxes]
        assert not strays, f"stray ROI nodes: {strays}"

    def liver_box(mouse: Any, axis: int, index: int, margin: int = MARGIN_PX) -> tuple[np.ndarray, np.ndarray]:
        """Draw a box around the liver on slice ``index`` along ``axis`` in ``mouse``'s view; returns the reference
        slice and the box corners (x0, y0, x1, y1) in slice pixels."""
        plane = liver[tuple(index if a == 2 - axis else slice(None) for a in range(3))]
        rows, cols = np.nonzero(plane)
        in_plane = [a for a in range(3) if a != axis]
        low, high = np.zeros(3), np.zeros(3)
        low[axis] = high[axis] = index
        low[in_plane[0]], high[in_plane[0]] = cols.min() - margin, cols.max() + margin
        low[in_plane[1]], high[in_plane[1]] = rows.min() - margin, rows.max() + margin
        mouse.scroll_to(to_ras(volume, low), spacing[axis])
        mouse.box(to_ras(volume, low), to_ras(volume, high))
        return plane, np.array([low[in_plane[0]], low[in_plane[1]], high[in_plane[0]], high[in_plane[1]]])

    try:
        start = segment()
        k = int(np.argmax(liver.sum(axis=(1, 2))))  # the liver's largest axial slice
        k2 = k - 4
        scores = {}

        # boxes 1-3, in one persistent Place mode (the panel's box tool)
        app.markups_logic.place_node(nodes["box"], persistent=True)
        reference, corners = liver_box(red, 2, k)
        predicted([(2, k)])
        boxes = [p for p in session.prompts if p.kind == "box"]
        assert len(boxes) == 1 and (boxes[0].axis, boxes[0].index) == (2, k)
        assert np.allclose(boxes[0].coords, corners, atol=1.0), (boxes[0].coords, corners)
        scores["box 1"] = dice(segment()[k], reference)
        after_box1 = segment()
        assert after_box1.sum() == after_box1[k].sum(), "voxels written outside the box's slice"
        album.shoot(views["Red"], f"box 1, slice {k}: Dice {scores['box 1']:.3f}")

        reference2, _ = liver_box(red, 2, k2)
        predicted([(2, k2)])
        scores["box 2"] = dice(segment()[k2], reference2)
        assert_no_stray_roi()
        album.shoot(views["Red"], f"box 2, slice {k2}: Dice {scores['box 2']:.3f}")

        _, corners3 = liver_box(red, 2, k, margin=MARGIN_PX + 3)
        predicted([(2, k)])
        boxes = [p for p in session.prompts if p.kind == "box"]
        assert [(b.axis, b.index) for b in boxes] == [(2, k), (2, k2), (2, k)]
        assert len({b.node_id for b in boxes}) == 3, "each box is its own ROI node"
        assert np.allclose(boxes[-1].coords, corners3, atol=1.0)
        assert not nodes["box"].GetDisplayNode().GetVisibility(), "box 1, replaced by box 3 on its slice, still shows"
        assert min(boxes_nodes_size := nodes["box"].GetSize()) <= spacing.max() + 1e-3, f"box 1 is {boxes_nodes_size} mm"
        scores["box 3"] = dice(segment()[k], reference)
        assert_no_stray_roi()
        album.shoot(views["Red"], f"box 3, slice {k} again: Dice {scores['box 3']:.3f}")

        red.key("Escape")
        assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform, "Esc did not leave Place mode"
        assert_no_stray_roi()  # the ROI made for a 4th box was removed with Place mode

        # "+" and "−" points on slice k
        rows, cols = np.nonzero(liver[k])
        inside = np.argmin((cols - cols.mean()) ** 2 + (rows - rows.mean()) ** 2)
        centre = np.array([cols[inside], rows[inside], k])
        app.markups_logic.place_node(nodes["positivePoints"])
        red.click(to_display(red.node, to_ras(volume, centre)))
        predicted([(2, k)])
        placed = np.array(nodes["positivePoints"].GetNthControlPointPositionWorld(0))
        assert np.all(np.abs(placed - to_ras(volume, centre)) <= spacing), f"the click placed {placed}"
        assert segment()[k, centre[1], centre[0]], "the clicked pixel is not in the segment"
        album.shoot(views["Red"], f"\"+\" point: Dice {dice(segment()[k], reference):.3f}")

        outside = np.array([cols.max() + MARGIN_PX + 1, rows[inside], k])  # inside box 3's margin, off the liver
        app.markups_logic.place_node(nodes["negativePoints"])
        red.click(to_display(red.node, to_ras(volume, outside)))
        predicted([(2, k)])
        assert [p.kind for p in session.prompts][-2:] == ["positive", "negative"]
        assert not segment()[k, outside[1], outside[0]]
        album.shoot(views["Red"], f"\"-\" point: Dice {dice(segment()[k], reference):.3f}")

        # drag the "+" point 4 pixels: press on it, move, release
        target = centre + np.array([4, 3, 0])
        red.drag(to_display(red.node, to_ras(volume, centre)), to_display(red.node, to_ras(volume, target)))
        predicted([(2, k)])
        positive = next(p for p in session.prompts if p.kind == "positive")
        assert np.allclose(positive.coords, target[:2], atol=1.0), f"the dragged point is at {positive.coords}"
        album.shoot(views["Red"], "\"+\" point dragged: predicted again")

        # right-click leaves Place mode; the ROI the manager made for the next box is removed
        app.markups_logic.place_node(nodes["box"], persistent=True)
        red.move((50, 50))
        red.right_click((50, 50))
        assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform, "right-click did not leave"
        assert_no_stray_roi()

        # undo back to the start
        steps = 0
        while session.undo():
            steps += 1
        assert steps == 6, steps  # 3 boxes, 2 points, 1 move
        assert np.array_equal(segment(), start), "undo did not restore the segment exactly"
        assert [n.GetName() for n in roi_nodes()] == [nodes["box"].GetName()]
        assert nodes["box"].GetNumberOfControlPoints() == 0
        assert nodes["positivePoints"].GetNumberOfControlPoints() == 0
        assert nodes["negativePoints"].GetNumberOfControlPoints() == 0
        album.shoot(views["Red"], "undo x6: back to the start")

        # a box in the Green (coronal) view
        j = int(np.argmax(liver.sum(axis=(0, 2))))
        session.active_slice_node = green.node
        app.markups_logic.place_node(nodes["box"])
        coronal, _ = liver_box(green, 1, j)
        predicted([(1, j)])
        scores["coronal box"] = dice(segment()[:, j, :], coronal)
        album.shoot(views["Green"], f"box in Green, slice {j}: Dice {scores['coronal box']:.3f}")

        # a box in Red, then propagate both ways and Apply
        session.active_slice_node = red.node
        app.markups_logic.place_node(nodes["box"])
        liver_box(red, 2, k)
        predicted([(2, k)])
        assert_no_stray_roi()
        before_propagation = segment()
        session.propagate("both", 2, k)
        deadline = time.monotonic() + 600
        while session.task.poll()[0] == "running":
            assert time.monotonic() < deadline, "propagation did not finish"
            time.sleep(0.2)
        assert session.task.state == "succeeded", session.task.error
        assert np.array_equal(segment(), before_propagation), "the preview touched the segment"
        album.shoot(views["Red"], f"propagated: preview of {len(session.pending.slices)} slices")
        assert session.apply_pending()
        scores["propagated"] = dice(segment(), liver)
        red.scroll_to(to_ras(volume, (0, 0, k2)), spacing[2])
        album.shoot(views["Red"], f"Apply: volume Dice {scores['propagated']:.3f}")
        album.sheet()
    finally:
        session.close()
    with capsys.disabled():
        print("\nview session: " + ", ".join(f"{name} Dice {score:.3f}" for name, score in scores.items())
              + f"; {len(album.shots)} PNGs and {SHEET} ({time.perf_counter() - started:.1f} s; per step "
              + " ".join(f"{b - a:.1f}" for a, b in zip(album.times, album.times[1:])) + " s)")
    assert all(score >= BOX_DICE_MIN for name, score in scores.items() if "box" in name), scores
    assert scores["propagated"] >= PROPAGATED_DICE_MIN, scores
    assert SHEET.is_file() and SHEET.stat().st_size > 50_000


def test_lasso_and_scribble_in_the_red_view(app, ct_path, liver, worker, capsys):
    started = time.perf_counter()
    desk = open_desk(app, ct_path, worker, ("Red",))
    volume, session, nodes, red = desk.volume, desk.session, desk.nodes, desk.mice["Red"]
    spacing = np.array(volume.GetSpacing())
    album = Album(OUT / "strokes")
    k = int(np.argmax(liver.sum(axis=(1, 2))))  # the liver's largest axial slice (cached by the session test)
    k2 = k - 4
    scores = {}

    def curves() -> list[Any]:
        return [app.scene.GetNthNodeByClass(n, "vtkMRMLMarkupsCurveNode")  # closed curves are curves too
                for n in range(app.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsCurveNode"))]

    def draw(role: str, index: int, pixels: np.ndarray) -> None:
        """The panel's button, then one click per point in Red on slice ``index``, then a right-click."""
        red.scroll_to(to_ras(volume, (0, 0, index)), spacing[2])
        start_placing(desk.interaction, desk.selection, nodes[role])
        for x, y in pixels:
            red.click(to_display(red.node, to_ras(volume, (x, y, index))))
        assert not desk.client.predicts, "a curve being drawn is not a prompt yet"
        red.right_click(to_display(red.node, to_ras(volume, (*pixels[-1], index))))
        assert desk.interaction.GetCurrentInteractionMode() == desk.interaction.ViewTransform

    try:
        start = desk.segment()
        outline = loose_outline(liver[k])
        draw("lasso", k, outline)
        desk.predicted([(2, k)])
        lasso = session.prompts.on_slice(2, k).lasso
        assert lasso is not None and len(lasso) == LASSO_VERTICES
        assert np.allclose(lasso, outline, atol=1.0), "the lasso's pixels are not where it was clicked"
        assert nodes["lasso"].GetNumberOfControlPoints() == 0, "the lasso node is not ready for the next lasso"
        assert len(curves()) == 3, "the lasso is not a markup of its own"
        after_lasso = desk.segment()
        scores["lasso"] = dice(after_lasso[k], liver[k])
        album.shoot(desk.views["Red"], f"lasso, slice {k}: Dice {scores['lasso']:.3f}")

        stroke = inner_stroke(liver[k2])
        draw("scribble", k2, stroke)
        desk.predicted([(2, k2)])
        assert [p.kind for p in session.prompts] == ["lasso", "scribble"]
        assert np.allclose(session.prompts.on_slice(2, k2).scribbles[0][0], stroke, atol=1.0)
        after = desk.segment()
        scores["scribble"] = dice(after[k2], liver[k2])
        assert all(after[k2, int(round(y)), int(round(x))] for x, y in stroke), "the scribble is not in the segment"
        assert np.array_equal(after[k], after_lasso[k]) and after.sum() == after[k].sum() + after[k2].sum()
        album.shoot(desk.views["Red"], f"+ scribble, slice {k2}: Dice {scores['scribble']:.3f}")

        assert session.undo() and session.undo() and not session.undo()
        assert np.array_equal(desk.segment(), start), "undo did not restore the segment exactly"
        assert {n.GetID() for n in curves()} == {nodes["lasso"].GetID(), nodes["scribble"].GetID()}, "a stroke is left"
        assert all(node.GetNumberOfControlPoints() == 0 for node in curves())
        album.shoot(desk.views["Red"], "undo x2: back to the start")
        sheet = album.sheet()
    finally:
        session.close()
    with capsys.disabled():
        print("\nview strokes: " + ", ".join(f"{name} Dice {score:.3f}" for name, score in scores.items())
              + f"; {sheet} ({time.perf_counter() - started:.1f} s)")
    assert scores["lasso"] >= LASSO_DICE_MIN, scores
