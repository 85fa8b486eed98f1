"""The interactive session (Qt-free): prompts in, the worker's masks into the selected segment, undo.

Prompts come from the markups in the slice views (:mod:`.placement` turns placements into calls here) or from
:meth:`Session.add_prompt`. Each prompt is turned into (axis, slice, pixel) on the volume's grid and recorded at
once; the slice's prediction (from every prompt on it) runs on a background thread (:mod:`.predictions`), and
:meth:`Session.drain` — called by a timer on the main thread — writes finished masks into the segment, honouring
the Segment Editor's settings. The main thread never waits for the worker: not for a prediction, not for the
volume upload, not for a progress report. Undo removes the last prompt and puts the segments back exactly, whether
its prediction was applied, is running or is still waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import numpy as np

from . import prompts as P
from .client_errors import UNREACHABLE
from .placement import PromptPlacement, create_prompt_nodes, defined_points, roi_corners
from .predictions import PredictionQueue
from .segments import EditSettings, SegmentSlices, SliceEdit
from .upload import Progress, VolumeUpload
from .session_workflows import SessionWorkflows
from .volume import dims_ijk, ijk_to_ras, to_numpy
from .workflows import AppliedResult

__all__ = ["Session", "Progress", "create_prompt_nodes", "slice_of_view"]

PLANE_TOLERANCE_MM = 1e-2


@dataclass
class PromptStep:
    """One placed prompt in the undo history: the slice edits its prediction made (none while it runs)."""

    prompt: P.Prompt
    edits: list[SliceEdit] = field(default_factory=list)
    hidden: Optional[Any] = None  # the ROI of the box this box replaced on its slice (hidden until undo)


@dataclass
class MovedPoint:
    """A dragged point, for undo: the prompt before and after, where it was, and the slice edits it caused."""

    old: P.Prompt
    new: P.Prompt
    old_ras: Optional[tuple[float, ...]]
    edits: list[SliceEdit] = field(default_factory=list)


Step = Union[PromptStep, MovedPoint, AppliedResult]


@dataclass(frozen=True)
class SliceResult:
    """A finished prediction, to be written on the main thread."""

    segmentation_node: Any
    segment_id: str
    axis: int
    index: int
    mask: np.ndarray


class WorkerClient(Protocol):
    """What the session needs from the worker (``client.SAMMedClient`` provides it)."""

    def upload_volume(self, array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
                      direction: Sequence[float]) -> Any: ...

    def predict(self, volume_id: str, axis: int, index: int, points: Sequence[Sequence[float]] = (),
                labels: Sequence[int] = (), box: Optional[Sequence[float]] = None,
                lasso: Optional[Sequence[Sequence[float]]] = None,
                scribbles: Sequence[tuple[Sequence[Sequence[float]], int]] = (), **options: Any) -> Any: ...

    def start_embedding(self, volume_id: str, axis: int = 2, focus: Optional[int] = None, **options: Any) -> str: ...

    def models(self) -> list[Any]: ...

    def job(self, job_id: str) -> Any: ...

    def cancel_job(self, job_id: str) -> Any: ...

    def focus_job(self, job_id: str, index: int) -> Any: ...

    def train(self, volume_id: str, kind: str, annotations: dict, **options: Any) -> str: ...

    def propagate(self, volume_id: str, axis: int, index: int, mask: np.ndarray, direction: str = "both",
                  **options: Any) -> str: ...

    def auto_segment(self, volume_id: str, artefact: str, **options: Any) -> str: ...


def slice_of_view(volume_node: Any, slice_node: Any) -> tuple[int, int]:
    """(axis, index) of the slice of ``volume_node`` that a slice view shows."""
    slice_to_ras = to_numpy(slice_node.GetSliceToRAS())
    axis = P.slice_axis(ijk_to_ras(volume_node), slice_to_ras[:3, 2])
    ijk = P.ras_to_ijk(np.linalg.inv(ijk_to_ras(volume_node)), slice_to_ras[:3, 3])
    return axis, int(np.clip(round(ijk[axis]), 0, dims_ijk(volume_node)[axis] - 1))


class Session(SessionWorkflows):
    """Prompts → worker → segment, with undo. Drive it from markups events or call :meth:`add_prompt` directly,
    and call :meth:`drain` from a timer on the main thread (every ~50 ms) to apply finished predictions.

    ``model`` is passed to every predict; ``editor_node`` gives the Segment Editor settings (default: the scene's
    first ``vtkMRMLSegmentEditorNode``); a point's slice is the one of the slice view whose plane contains it
    (``active_slice_node`` first), else along ``default_axis`` (2 = K); a box's is the view plane through its
    centre that it is thinnest across; a lasso's or scribble's is the view plane it was drawn in.
    Errors are kept in ``errors`` and passed to ``on_error``. A prediction that finds the worker unreachable goes to
    ``on_worker_lost`` (the panel passes :meth:`.worker.Worker.report_lost`, so one death is one message however it
    is noticed); without it, it is reported here once until the worker answers again. Hints for the user (e.g.
    "draw a box first") go to ``notices`` / ``on_notice``.
    """

    def __init__(
        self, scene: Any, client: WorkerClient, model: Optional[str] = None, editor_node: Optional[Any] = None,
        default_axis: int = 2, on_error: Optional[Callable[[str], None]] = None,
        on_notice: Optional[Callable[[str], None]] = None, on_worker_lost: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.scene = scene
        self.client = client
        self.model = model
        self.editor_node = editor_node
        self.default_axis = default_axis
        self.on_error = on_error
        self.on_notice = on_notice
        self.on_worker_lost = on_worker_lost
        self.active_slice_node: Optional[Any] = None  # the view the user works in (set by the widget)
        self.errors: list[str] = []
        self.notices: list[str] = []
        self.volume_node: Optional[Any] = None
        self.segmentation_node: Optional[Any] = None
        self.segment_id = ""
        self.prompts = P.PromptLog()
        self._undo: list[Step] = []
        self.prompt_encoder: Optional[str] = None  # learned (SAM-assist) prompt encoder used by clicks
        self.prompt_encoder_type = ""
        self.task = None
        self.pending = None
        self.worker_down = False  # the last call found no worker (reported once)
        self.placement = PromptPlacement(scene, self._point_placed, self._point_dragged, self._box_drawn,
                                         self._curve_drawn, self._guarded)
        self._placed_at: dict[str, tuple[float, ...]] = {}  # markups point id → its RAS when last predicted
        self._placed_boxes: list[tuple[P.SliceBox, Any]] = []  # each accepted box and a copy of its ROI node
        self._predictions = PredictionQueue()
        self._requests: dict[int, Step] = {}  # ticket → the step its prediction belongs to
        self._upload: Optional[VolumeUpload] = None

    # selection ---------------------------------------------------------------------------------
    def set_volume(
        self, volume_node: Any, focus: Optional[int] = None, axis: Optional[int] = None, precompute: bool = True
    ) -> None:
        """Select the volume: send it to the worker and (``precompute``) start embedding its slices along ``axis``,
        slice ``focus`` first, all in the background. Prompts given before the upload ends are predicted after it."""
        if self._upload is not None:
            self._upload.close()
        self.volume_node = volume_node
        self.clear_prompts()
        self._upload = None
        if volume_node is not None:
            self._upload = VolumeUpload(self.client, volume_node, self.default_axis if axis is None else axis, focus,
                                        precompute, self._options(), self._report)

    def set_segment(self, segmentation_node: Optional[Any], segment_id: str) -> None:
        """The segment that prompts write into."""
        self.segmentation_node = segmentation_node
        self.segment_id = segment_id or ""

    @property
    def volume_id(self) -> str:
        """The worker's id of the selected volume (waits for the upload: not for the main thread)."""
        return self._require_upload().volume_id()

    def wait_until_uploaded(self, timeout: Optional[float] = None) -> str:
        return self._require_upload().volume_id(timeout)

    def _uploaded_volume_id(self) -> str:
        """The volume's id on the worker, without waiting (a clear error while it is still being sent)."""
        return self._require_upload().volume_id_now()

    def _require_upload(self) -> VolumeUpload:
        if self._upload is None:
            raise RuntimeError("select a volume first")
        return self._upload

    # background embedding (never waits: see upload.py) -----------------------------------------
    def progress(self) -> Progress:
        """Where the upload / precompute stands (the worker's last answer)."""
        return Progress("idle") if self._upload is None else self._upload.progress()

    def focus(self, axis: int, index: int) -> None:
        """Tell the running precompute which slice is on screen (it is computed next)."""
        if self._upload is not None:
            self._upload.focus(axis, index)

    def cancel_precompute(self) -> None:
        if self._upload is not None:
            self._upload.cancel()

    # prompt nodes ------------------------------------------------------------------------------
    def observe(self, nodes: dict[str, Any]) -> None:
        """Watch the prompt markups: ``{"positivePoints": ..., "negativePoints": ..., "box": ..., "lasso": ...,
        "scribble": ...}``."""
        self.placement.observe(nodes)

    @property
    def prompt_nodes(self) -> dict[str, Any]:
        """The observed markups by role."""
        return self.placement.nodes

    def unobserve(self) -> None:
        self.placement.unobserve()

    def _point_placed(self, kind: str, node: Any, index: int) -> None:
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        self.add_point(kind, position, node.GetID(), node.GetNthControlPointID(index))

    def _point_dragged(self, node: Any, index: int) -> None:
        position = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, position)
        self.move_point(node.GetID(), node.GetNthControlPointID(index), position)

    def _box_drawn(self, roi: Any) -> None:
        self.add_roi(roi)

    def _curve_drawn(self, role: str, stroke: Any) -> bool:
        return self.add_curve(role, stroke) is not None

    # prompts -----------------------------------------------------------------------------------
    def add_point(self, kind: str, ras: Sequence[float], node_id: str = "", point_id: str = "") -> PromptStep:
        """A "+" or "−" point at ``ras``: predict its slice (in the view that contains it) and update the segment."""
        volume = self._require_volume()
        axis = self.axis_at(ras)
        point = P.point_on_slice(np.linalg.inv(ijk_to_ras(volume)), ras, axis, dims_ijk(volume))
        step = self.add_prompt(P.Prompt(kind, point.axis, point.index, (point.x, point.y), node_id, point_id))  # type: ignore[arg-type]
        if point_id:
            self._placed_at[point_id] = tuple(ras[:3])
        return step

    def move_point(self, node_id: str, point_id: str, ras: Sequence[float]) -> bool:
        """A placed point was dragged to ``ras``: predict its slice again (and its old slice, if it left it, from
        the prompts left there). Undo moves it back and restores the segments. False if nothing changed."""
        old = self.prompts.find(node_id, point_id)
        if old is None:
            return False
        volume = self._require_volume()
        self._require_segment()
        axis = self.axis_at(ras)
        point = P.point_on_slice(np.linalg.inv(ijk_to_ras(volume)), ras, axis, dims_ijk(volume))
        new = P.Prompt(old.kind, point.axis, point.index, (point.x, point.y), node_id, point_id)
        if new == old:
            return False
        self.prompts.replace(old, new)
        moved = MovedPoint(old, new, self._placed_at.get(point_id))
        self._undo.append(moved)
        for where in dict.fromkeys([(new.axis, new.index), (old.axis, old.index)]):
            self._predict(*where, owner=moved, quiet=where != (new.axis, new.index))
        self._placed_at[point_id] = tuple(ras[:3])
        return True

    def add_roi(self, roi: Any) -> Optional[PromptStep]:
        """The ROI as a box on the slice through its centre (ignored when the box did not change)."""
        volume = self._require_volume()
        center = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(center)
        corners = roi_corners(roi)
        thinnest = _thinnest_axis(np.linalg.inv(ijk_to_ras(volume)), corners)
        in_views = self._view_axes(center)
        axis = thinnest if thinnest in in_views or not in_views else in_views[0]
        box = P.box_on_slice(np.linalg.inv(ijk_to_ras(volume)), corners, center, axis, dims_ijk(volume))
        previous = [b for b, snapshot in self._placed_boxes if snapshot.GetAttribute("SAMMed.node") == roi.GetID()]
        if previous and box == previous[-1]:
            return None
        self._fit_to_slice(roi, box.axis)
        step = self._add_region(P.Prompt("box", box.axis, box.index, box.corners, roi.GetID()), roi)
        snapshot = roi.NewInstance()
        snapshot.CopyContent(roi)
        snapshot.SetAttribute("SAMMed.node", roi.GetID())
        self._placed_boxes.append((box, snapshot))
        return step

    def add_curve(self, role: str, node: Any) -> Optional[PromptStep]:
        """A finished lasso (closed curve) or scribble (open curve, a "+" stroke) as a prompt on the slice it was
        drawn in; the markup ``node`` is the prompt's own (undo removes it). None, with a notice, for a lasso of
        fewer than 3 points."""
        if role not in ("lasso", "scribble"):
            raise ValueError(f"not a curve role: {role!r}")
        volume = self._require_volume()
        points = defined_points(node)
        if role == "lasso" and len(points) < 3:
            self._notify("a lasso needs 3 points or more: click around the object, then right-click")
            return None
        ras_to_ijk = np.linalg.inv(ijk_to_ras(volume))
        in_views = self._view_axes(points.mean(axis=0))
        axis = in_views[0] if in_views else _thinnest_axis(ras_to_ijk, points)
        curve = P.curve_on_slice(ras_to_ijk, points, axis, dims_ijk(volume), closed=role == "lasso")
        prompt = P.Prompt(role, curve.axis, curve.index, tuple(v for xy in curve.vertices for v in xy), node.GetID())  # type: ignore[arg-type]
        return self._add_region(prompt, node) if role == "lasso" else self.add_prompt(prompt)

    def _add_region(self, prompt: P.Prompt, node: Any) -> PromptStep:
        """Add a box or lasso prompt: only the newest region of a slice counts, so the one it replaces is hidden
        (until undo)."""
        replaced = self.prompts.on_slice_regions(prompt.axis, prompt.index)
        step = self.add_prompt(prompt)
        superseded = self.scene.GetNodeByID(replaced[-1].node_id) if replaced else None
        if superseded is not None and superseded is not node and superseded.GetDisplayNode() is not None:
            superseded.GetDisplayNode().SetVisibility(False)
            step.hidden = superseded
        return step

    def _fit_to_slice(self, roi: Any, axis: int) -> None:
        """Make a box one voxel thick across its slice: Slicer gives an ROI drawn in a slice view a depth as large as
        its height, so it would show on dozens of slices it does not prompt."""
        direction = ijk_to_ras(self._require_volume())[:3, axis]
        axes = []
        for getter in (roi.GetXAxisWorld, roi.GetYAxisWorld, roi.GetZAxisWorld):
            vector = [0.0, 0.0, 0.0]
            getter(vector)
            axes.append(vector)
        across = int(np.argmax(np.abs(np.array(axes) @ (direction / np.linalg.norm(direction)))))
        size = list(roi.GetSize())
        if size[across] > np.linalg.norm(direction) * 1.001:
            size[across] = float(np.linalg.norm(direction))
            with self.placement.muted():
                roi.SetSize(*size)

    def add_prompt(self, prompt: P.Prompt) -> PromptStep:
        """Record a prompt and queue the prediction of its slice from every prompt there; returns its undo step
        (its edit arrives with :meth:`drain`)."""
        self._require_segment()
        self.prompts.add(prompt)
        step = PromptStep(prompt)
        self._undo.append(step)
        self._predict(prompt.axis, prompt.index, owner=step)
        return step

    def undo(self) -> bool:
        """Remove the last prompt (its markups point; a box puts its ROI back where it was, or removes it) and
        restore the segments as they were before it — a prediction still running or waiting is dropped; or take
        back the last applied propagation / auto-segmentation."""
        if not self._undo:
            return False
        step = self._undo.pop()
        self._drop_predictions(step)
        if isinstance(step, AppliedResult):
            step.undo(self._slices())
            return True
        for edit in reversed(step.edits):
            self._slices().undo(edit)
        if isinstance(step, MovedPoint):
            self._restore_point(step)
            return True
        self.prompts.pop()
        with self.placement.muted():
            self._remove_markup(step.prompt)
            if step.hidden is not None and self.scene.IsNodePresent(step.hidden):
                step.hidden.GetDisplayNode().SetVisibility(True)
        return True

    def _restore_point(self, moved: MovedPoint) -> None:
        """Put the prompt and the markups point back where they were before a move."""
        self.prompts.replace(moved.new, moved.old)
        node = self.scene.GetNodeByID(moved.old.node_id)
        index = node.GetNthControlPointIndexByID(moved.old.point_id) if node is not None else -1
        if index >= 0 and moved.old_ras is not None:
            with self.placement.muted():
                node.SetNthControlPointPositionWorld(index, *moved.old_ras)
            self._placed_at[moved.old.point_id] = moved.old_ras

    def clear_prompts(self) -> None:
        """Forget all prompts and remove their markups; the segment stays as it is (undo history is cleared)."""
        self._predictions.cancel_all()
        self._requests.clear()
        self.prompts.clear()
        self._undo.clear()
        self._placed_boxes.clear()
        self.placement.clear()

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    # predictions (background thread) → segment (main thread) -------------------------------------
    @property
    def busy(self) -> bool:
        """A prediction is running or waiting (the panel shows it)."""
        return self._predictions.busy

    def activity(self) -> str:
        """What the predictions are doing, for the panel ("" when idle)."""
        running, waiting = self._predictions.running, self._predictions.waiting
        if running is None and not waiting:
            return ""
        text = f"predicting slice {running.key[2]}" if running is not None else "predicting"
        if self._upload is not None and not self._upload.done:
            text = "waiting for the volume upload"
        return text + (f" ({waiting} waiting)" if waiting else "")

    def drain(self) -> int:
        """Write the predictions finished since the last call into the segment (main thread; the widget's timer
        calls it). Returns how many were applied."""
        applied = 0
        for finished in self._predictions.drain():
            step = self._requests.pop(finished.request.ticket, None)
            if step is None:
                continue
            if finished.error is not None:
                self._worker_failed(finished.error)
                continue
            self.worker_down = False
            result = finished.result
            if isinstance(result, str):
                self._notify(result)
            elif isinstance(result, SliceResult):
                edit = self._write(result)
                if edit is not None:
                    step.edits.append(edit)
                    applied += 1
        return applied

    def wait(self, timeout: float = 300.0, interval: float = 0.05) -> None:
        """Drain until no prediction is left (for scripts and tests: it waits, so never call it from the UI)."""
        deadline = time.monotonic() + timeout
        while True:
            self.drain()
            if not self.busy:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"predictions still running after {timeout} s")
            time.sleep(interval)

    def _predict(self, axis: int, index: int, owner: Step, quiet: bool = False) -> None:
        """Queue the prediction of one slice from the prompts on it now; the result goes to ``owner``'s edits."""
        on_slice = self.prompts.on_slice(axis, index)
        segmentation, segment_id = self.segmentation_node, self._require_segment()
        options = self._options()
        if self.prompt_encoder:
            options["prompt_encoder"] = self.prompt_encoder

        def run() -> Union[SliceResult, str, None]:  # on the prediction thread
            if not on_slice.has_foreground:
                if quiet:  # nothing left to predict from on a slice a point moved away from: leave it as it is
                    return None
                return "place a \"+\" point or a box: \"−\" points alone select nothing"
            result = self.client.predict(self.volume_id, axis, index, on_slice.points, on_slice.labels, on_slice.box,
                                         lasso=on_slice.lasso, scribbles=on_slice.scribbles, **options)
            return SliceResult(segmentation, segment_id, axis, index, np.asarray(result.mask, bool))

        request = self._predictions.submit((segment_id, axis, index), run, owner)
        self._requests[request.ticket] = owner
        for ticket in request.replaced:  # coalesced: the replaced request's step gets no edit of its own
            self._requests.pop(ticket, None)

    def _drop_predictions(self, step: Step) -> None:
        """Forget the predictions of an undone step; a dropped request that carried earlier steps' prompts (they
        were coalesced into it) is made again for them."""
        for request in self._predictions.cancel(step):
            self._requests.pop(request.ticket, None)
            owners = [s for s in request.absorbed if any(s is u for u in self._undo)]
            if owners:
                _, axis, index = request.key
                self._predict(axis, index, owner=owners[-1])

    def _write(self, result: SliceResult) -> Optional[SliceEdit]:
        node = result.segmentation_node
        if node is None or not self.scene.IsNodePresent(node) or node.GetSegmentation().GetSegment(result.segment_id) is None:
            self._report("the segment was removed before its prediction arrived")
            return None
        slices = SegmentSlices(node, self._require_volume())
        return slices.apply(self._edit_settings(), result.segment_id, result.axis, result.index, result.mask)

    def _worker_failed(self, error: BaseException) -> None:
        """Report a failed prediction; an unreachable worker only once until it answers again."""
        if isinstance(error, UNREACHABLE):
            if self.on_worker_lost is not None:
                self.on_worker_lost(str(error))
                return
            if self.worker_down:
                return
            self.worker_down = True
        self._report(str(error))

    # views -------------------------------------------------------------------------------------
    def axis_at(self, ras: Sequence[float]) -> int:
        """The IJK axis of the slice view whose plane contains ``ras`` (``active_slice_node`` first; else
        ``default_axis``)."""
        axes = self._view_axes(ras)
        return axes[0] if axes else self.default_axis

    def slice_of_view(self, slice_node: Any) -> tuple[int, int]:
        """(axis, index) of the volume slice a slice view shows."""
        return slice_of_view(self._require_volume(), slice_node)

    def _view_axes(self, ras: Sequence[float]) -> list[int]:
        """IJK axes of the slice views whose plane contains ``ras``, the active view first."""
        volume = self._require_volume()
        views = [self.scene.GetNthNodeByClass(n, "vtkMRMLSliceNode")
                 for n in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode"))]
        if self.active_slice_node is not None:
            views.insert(0, self.active_slice_node)
        axes = []
        for view in views:
            slice_to_ras = to_numpy(view.GetSliceToRAS())
            normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
            if abs(normal @ (np.asarray(ras[:3]) - slice_to_ras[:3, 3])) < PLANE_TOLERANCE_MM:
                axes.append(P.slice_axis(ijk_to_ras(volume), normal))
        return axes

    # internals ---------------------------------------------------------------------------------
    def _options(self) -> dict[str, Any]:
        return {"model": self.model} if self.model else {}

    def _edit_settings(self) -> EditSettings:
        node = self.editor_node or self.scene.GetFirstNodeByClass("vtkMRMLSegmentEditorNode")
        return EditSettings.from_editor_node(node)

    def _slices(self) -> SegmentSlices:
        return SegmentSlices(self.segmentation_node, self._require_volume())

    def _require_volume(self) -> Any:
        if self.volume_node is None:
            raise RuntimeError("select a volume first")
        return self.volume_node

    def _remove_markup(self, prompt: P.Prompt) -> None:
        node = self.scene.GetNodeByID(prompt.node_id) if prompt.node_id else None
        if prompt.kind == "box":  # every box prompt came from add_roi: its ROI goes back to its previous box
            self._placed_boxes.pop()
            previous = [s for _, s in self._placed_boxes if s.GetAttribute("SAMMed.node") == prompt.node_id]
            if node is None:
                return
            if previous:
                node.CopyContent(previous[-1])
            elif self.placement.is_adopted(node):
                self.placement.remove_adopted(node)
            else:
                node.RemoveAllControlPoints()
        elif prompt.kind in ("lasso", "scribble"):
            if node is not None:
                self.placement.remove_stroke(node)
        elif node is not None:
            index = node.GetNthControlPointIndexByID(prompt.point_id)
            if index >= 0:
                node.RemoveNthControlPoint(index)

    def _guarded(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception as exc:  # noqa: BLE001 - an observer must never raise into VTK
            self._report(str(exc))

    def _report(self, message: str) -> None:
        self.errors.append(message)
        if self.on_error is not None:
            self.on_error(message)

    def _notify(self, message: str) -> None:
        self.notices.append(message)
        if self.on_notice is not None:
            self.on_notice(message)

    def close(self) -> None:
        """Stop observing, cancel the precompute, end the background threads (without waiting for them)."""
        self.unobserve()
        self._predictions.close()
        if self._upload is not None:
            self._upload.close()


def _thinnest_axis(ras_to_ijk_matrix: np.ndarray, corners: np.ndarray) -> int:
    """The IJK axis along which a box is thinnest in voxels (the slicing axis of a box drawn in a slice view)."""
    ijk = np.array([P.ras_to_ijk(ras_to_ijk_matrix, c) for c in corners])
    return int(np.argmin(ijk.max(axis=0) - ijk.min(axis=0)))
