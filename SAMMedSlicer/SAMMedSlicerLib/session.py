"""The interactive session (Qt-free): markups prompts in, the worker's masks into the selected segment, undo.

A :class:`Session` observes three markups nodes ("+" points, "−" points, an ROI for the box). Each placed prompt is
turned into (axis, slice, pixel) on the volume's grid, the worker predicts that slice from all prompts on it, and
the mask is written into the segment honouring the Segment Editor's settings. Undo removes the last prompt and puts
the segments back exactly. The volume is sent and its embeddings precomputed in the background; ``progress()``
reports on it for a timer in the widget to show.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import vtk

from . import prompts as P
from .client import decode_array
from .segments import EditSettings, SegmentSlices, SliceEdit
from .workflows import AppliedResult, BackgroundTask, PendingResult, annotated_slices
from .volume import dims_ijk, ijk_to_ras, lps_geometry, to_numpy, voxel_array

POINT_KINDS = {"positivePoints": "positive", "negativePoints": "negative"}
PLANE_TOLERANCE_MM = 1e-2


@dataclass
class MovedPoint:
    """A dragged point, for undo: the prompt before and after, where it was, and the slice edits it caused."""

    old: P.Prompt
    new: P.Prompt
    old_ras: Optional[tuple[float, ...]]
    edits: list[SliceEdit] = field(default_factory=list)


class WorkerClient(Protocol):
    """What the session needs from the worker (``client.SAMMedClient`` provides it)."""

    def upload_volume(self, array: np.ndarray, spacing: Sequence[float], origin: Sequence[float],
                      direction: Sequence[float]) -> Any: ...

    def predict(self, volume_id: str, axis: int, index: int, points: Sequence[Sequence[float]] = (),
                labels: Sequence[int] = (), box: Optional[Sequence[float]] = None, **options: Any) -> Any: ...

    def start_embedding(self, volume_id: str, axis: int = 2, focus: Optional[int] = None, **options: Any) -> str: ...

    def models(self) -> list[Any]: ...

    def job(self, job_id: str) -> Any: ...

    def cancel_job(self, job_id: str) -> Any: ...

    def focus_job(self, job_id: str, index: int) -> Any: ...

    def train(self, volume_id: str, kind: str, annotations: dict, **options: Any) -> str: ...

    def propagate(self, volume_id: str, axis: int, index: int, mask: np.ndarray, direction: str = "both",
                  **options: Any) -> str: ...

    def auto_segment(self, volume_id: str, artefact: str, **options: Any) -> str: ...


@dataclass(frozen=True)
class Progress:
    """Background work for the panel: ``state`` is idle, uploading, queued, running, succeeded, failed or cancelled."""

    state: str
    fraction: float = 0.0
    message: str = ""


def create_prompt_nodes(scene: Any) -> dict[str, Any]:
    """New "+" and "−" point lists and a box ROI, coloured and named for the panel."""
    nodes = {}
    for role, cls, name, color in (
        ("positivePoints", "vtkMRMLMarkupsFiducialNode", "SAMMed +", (0.2, 0.9, 0.2)),
        ("negativePoints", "vtkMRMLMarkupsFiducialNode", "SAMMed −", (0.95, 0.2, 0.2)),
        ("box", "vtkMRMLMarkupsROINode", "SAMMed box", (1.0, 0.85, 0.1)),
    ):
        node = scene.AddNewNodeByClass(cls, name)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(*color)
        node.GetDisplayNode().SetColor(*color)
        nodes[role] = node
    return nodes


def slice_of_view(volume_node: Any, slice_node: Any) -> tuple[int, int]:
    """(axis, index) of the slice of ``volume_node`` that a slice view shows."""
    slice_to_ras = to_numpy(slice_node.GetSliceToRAS())
    axis = P.slice_axis(ijk_to_ras(volume_node), slice_to_ras[:3, 2])
    ijk = P.ras_to_ijk(np.linalg.inv(ijk_to_ras(volume_node)), slice_to_ras[:3, 3])
    return axis, int(np.clip(round(ijk[axis]), 0, dims_ijk(volume_node)[axis] - 1))


class Session:
    """Prompts → worker → segment, with undo. Drive it from markups events or call :meth:`add_prompt` directly.

    ``model`` is passed to every predict; ``editor_node`` gives the Segment Editor settings (default: the scene's
    first ``vtkMRMLSegmentEditorNode``); a point's slice is the one of the slice view whose plane contains it
    (``active_slice_node`` first), else along ``default_axis`` (2 = K); a box's is the view plane through its
    centre that it is thinnest across.
    Errors in event handlers are kept in ``errors`` and passed to ``on_error`` (VTK would swallow them); hints for
    the user (e.g. "draw a box first") go to ``notices`` / ``on_notice``.
    """

    def __init__(
        self, scene: Any, client: WorkerClient, model: Optional[str] = None, editor_node: Optional[Any] = None,
        default_axis: int = 2, on_error: Optional[Callable[[str], None]] = None,
        on_notice: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.scene = scene
        self.client = client
        self.model = model
        self.editor_node = editor_node
        self.default_axis = default_axis
        self.on_error = on_error
        self.on_notice = on_notice
        self.active_slice_node: Optional[Any] = None  # the view the user works in (set by the widget)
        self.errors: list[str] = []
        self.notices: list[str] = []
        self.volume_node: Optional[Any] = None
        self.segmentation_node: Optional[Any] = None
        self.segment_id = ""
        self.prompts = P.PromptLog()
        self._undo: list[tuple[Optional[P.Prompt], Any]] = []  # (prompt, SliceEdit), (None, AppliedResult/MovedPoint)
        self.prompt_encoder: Optional[str] = None  # learned (SAM-assist) prompt encoder used by clicks
        self.prompt_encoder_type = ""
        self.task: Optional[BackgroundTask] = None
        self._placed_at: dict[str, tuple[float, ...]] = {}  # markups point id → its RAS when last predicted
        self.pending: Optional[PendingResult] = None
        self._observations: list[tuple[Any, int]] = []
        self._nodes: dict[str, Any] = {}
        self._muted = False
        self._roi_dragging = False
        self._placed_boxes: list[tuple[P.SliceBox, Any]] = []  # each accepted box and a copy of the ROI it came from
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sammed-upload")
        self._upload: Optional[Future] = None
        self._embed_axis = default_axis
        self._model_box_only: Optional[bool] = None

    # selection ---------------------------------------------------------------------------------
    def set_volume(
        self, volume_node: Any, focus: Optional[int] = None, axis: Optional[int] = None, precompute: bool = True
    ) -> None:
        """Select the volume: send it to the worker and (``precompute``) start embedding its slices along ``axis``,
        slice ``focus`` first, all in the background. Prompts given before the upload ends wait for it."""
        self._cancel_embedding()
        self.volume_node = volume_node
        self.clear_prompts()
        if volume_node is None:
            self._upload = None
            return
        self._embed_axis = self.default_axis if axis is None else axis
        array = voxel_array(volume_node)  # read VTK data here, on the caller's (main) thread
        geometry = lps_geometry(ijk_to_ras(volume_node))
        self._upload = self._executor.submit(self._send_volume, array, geometry, self._embed_axis, focus, precompute)

    def set_segment(self, segmentation_node: Optional[Any], segment_id: str) -> None:
        """The segment that prompts write into."""
        self.segmentation_node = segmentation_node
        self.segment_id = segment_id or ""

    @property
    def volume_id(self) -> str:
        """The worker's id of the selected volume (waits for the upload to finish)."""
        if self._upload is None:
            raise RuntimeError("select a volume first")
        return self._upload.result()[0]

    def wait_until_uploaded(self, timeout: Optional[float] = None) -> str:
        if self._upload is None:
            raise RuntimeError("select a volume first")
        return self._upload.result(timeout)[0]

    # background embedding ----------------------------------------------------------------------
    def progress(self) -> Progress:
        """Where the upload / precompute stands (a cheap call: one small request at most)."""
        if self._upload is None:
            return Progress("idle")
        if not self._upload.done():
            return Progress("uploading", 0.0, "sending the volume to the worker")
        if self._upload.exception() is not None:
            return Progress("failed", 0.0, str(self._upload.exception()))
        if not self._job_id:
            return Progress("idle", 0.0, "volume on the worker")
        job = self.client.job(self._job_id)
        return Progress(job.state, float(job.progress), job.message)

    def focus(self, axis: int, index: int) -> None:
        """Tell the running precompute which slice is on screen (it is computed next)."""
        if self._job_id and axis == self._embed_axis:
            job = self.client.job(self._job_id)
            if not job.done:
                self.client.focus_job(job.id, index)

    def cancel_precompute(self) -> None:
        self._cancel_embedding()

    # prompt nodes ------------------------------------------------------------------------------
    def observe(self, nodes: dict[str, Any]) -> None:
        """Watch the prompt markups: ``{"positivePoints": ..., "negativePoints": ..., "box": ...}``."""
        self.unobserve()
        self._nodes = dict(nodes)
        for role, node in self._nodes.items():
            if node is None:
                continue
            if role in POINT_KINDS:
                self._add_observer(node, "PointPositionDefinedEvent", self._point_handler(POINT_KINDS[role]))
                self._add_observer(node, "PointEndInteractionEvent", self._point_moved_handler())
            else:
                for event in ("PointPositionDefinedEvent", "PointStartInteractionEvent", "PointEndInteractionEvent"):
                    self._add_observer(node, event, self._roi_handler(event))
                self._add_observer(node, "ModifiedEvent", self._roi_handler("ModifiedEvent"))

    @property
    def prompt_nodes(self) -> dict[str, Any]:
        """The observed markups by role."""
        return dict(self._nodes)

    def unobserve(self) -> None:
        for node, tag in self._observations:
            node.RemoveObserver(tag)
        self._observations.clear()

    def _add_observer(self, node: Any, event: str, callback: Callable[[Any, Optional[int]], None]) -> None:
        # MRML custom event ids reach Python as "NoEvent": each observer knows its own event instead.
        def observer(caller: Any, _event: Any, calldata: Optional[int] = None) -> None:
            if not self._muted:
                self._guarded(callback, caller, calldata)

        observer.CallDataType = vtk.VTK_INT  # type: ignore[attr-defined]
        event_id = vtk.vtkCommand.ModifiedEvent if event == "ModifiedEvent" else getattr(type(node), event)
        self._observations.append((node, node.AddObserver(event_id, observer)))

    def _point_handler(self, kind: str) -> Callable[[Any, Optional[int]], None]:
        def handle(node: Any, index: Optional[int]) -> None:
            if index is None or not 0 <= index < node.GetNumberOfControlPoints():
                return
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            self.add_point(kind, position, node.GetID(), node.GetNthControlPointID(index))

        return handle

    def _point_moved_handler(self) -> Callable[[Any, Optional[int]], None]:
        def handle(node: Any, index: Optional[int]) -> None:
            if index is None or not 0 <= index < node.GetNumberOfControlPoints():
                return
            position = [0.0, 0.0, 0.0]
            node.GetNthControlPointPositionWorld(index, position)
            self.move_point(node.GetID(), node.GetNthControlPointID(index), position)

        return handle

    def _roi_handler(self, event: str) -> Callable[[Any, Optional[int]], None]:
        def handle(roi: Any, _index: Optional[int]) -> None:
            if event == "PointStartInteractionEvent":
                self._roi_dragging = True
                return
            if event == "PointEndInteractionEvent":
                self._roi_dragging = False
            elif self._roi_dragging or (event == "ModifiedEvent" and self._being_placed(roi)):
                return  # a box still being drawn or dragged is not a prompt yet
            if roi.GetNumberOfDefinedControlPoints() == 0 or sorted(roi.GetSize())[1] <= 0:
                return  # not placed yet, or still flat
            self.add_roi(roi)

        return handle

    def _being_placed(self, node: Any) -> bool:
        """Whether the user is placing ``node`` right now (Place mode with it as the active place node)."""
        interaction = self.scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        selection = self.scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        return (interaction is not None and selection is not None
                and interaction.GetCurrentInteractionMode() == interaction.Place
                and selection.GetActivePlaceNodeID() == node.GetID())

    # prompts -----------------------------------------------------------------------------------
    def add_point(self, kind: str, ras: Sequence[float], node_id: str = "", point_id: str = "") -> Optional[SliceEdit]:
        """A "+" or "−" point at ``ras``: predict its slice (in the view that contains it) and update the segment."""
        volume = self._require_volume()
        axis = self.axis_at(ras)
        point = P.point_on_slice(np.linalg.inv(ijk_to_ras(volume)), ras, axis, dims_ijk(volume))
        if point_id:
            self._placed_at[point_id] = tuple(ras[:3])
        return self.add_prompt(P.Prompt(kind, point.axis, point.index, (point.x, point.y), node_id, point_id))  # type: ignore[arg-type]

    def move_point(self, node_id: str, point_id: str, ras: Sequence[float]) -> bool:
        """A placed point was dragged to ``ras``: predict its slice again (and its old slice, if it left it, from
        the prompts left there). Undo moves it back and restores the segments. False if nothing changed."""
        old = self.prompts.find(node_id, point_id)
        if old is None:
            return False
        volume = self._require_volume()
        axis = self.axis_at(ras)
        point = P.point_on_slice(np.linalg.inv(ijk_to_ras(volume)), ras, axis, dims_ijk(volume))
        new = P.Prompt(old.kind, point.axis, point.index, (point.x, point.y), node_id, point_id)
        if new == old:
            return False
        self.prompts.replace(old, new)
        moved = MovedPoint(old, new, self._placed_at.get(point_id))
        try:
            for where in dict.fromkeys([(new.axis, new.index), (old.axis, old.index)]):
                edit = self._predict_and_apply(*where, quiet=where != (new.axis, new.index))
                if edit is not None:
                    moved.edits.append(edit)
        except BaseException:
            self._undo_move(moved)
            raise
        self._placed_at[point_id] = tuple(ras[:3])
        self._undo.append((None, moved))
        return True

    def add_roi(self, roi: Any) -> Optional[SliceEdit]:
        """The ROI as a box on the slice through its centre (ignored when the box did not change)."""
        volume = self._require_volume()
        center = [0.0, 0.0, 0.0]
        roi.GetCenterWorld(center)
        corners = _roi_corners(roi)
        thinnest = _thinnest_axis(np.linalg.inv(ijk_to_ras(volume)), corners)
        in_views = self._view_axes(center)
        axis = thinnest if thinnest in in_views or not in_views else in_views[0]
        box = P.box_on_slice(np.linalg.inv(ijk_to_ras(volume)), corners, center, axis, dims_ijk(volume))
        if self._placed_boxes and box == self._placed_boxes[-1][0]:
            return None
        edit = self.add_prompt(P.Prompt("box", box.axis, box.index, box.corners, roi.GetID()))
        snapshot = roi.NewInstance()
        snapshot.CopyContent(roi)
        self._placed_boxes.append((box, snapshot))
        return edit

    def add_prompt(self, prompt: P.Prompt) -> Optional[SliceEdit]:
        """Record a prompt, predict its slice from every prompt there, write the mask; returns the edit (undoable)."""
        self.prompts.add(prompt)
        try:
            edit = self._predict_and_apply(prompt.axis, prompt.index)
        except BaseException:
            self.prompts.pop()
            raise
        self._undo.append((prompt, edit))
        return edit

    def undo(self) -> bool:
        """Remove the last prompt (its markups point; a box puts the ROI back where the previous box was) and restore
        the segments as they were before it; or take back the last applied propagation / auto-segmentation."""
        if not self._undo:
            return False
        prompt, edit = self._undo.pop()
        if isinstance(edit, MovedPoint):
            self._undo_move(edit)
            return True
        if prompt is None:
            edit.undo(self._slices())
            return True
        self.prompts.pop()
        if edit is not None:
            self._slices().undo(edit)
        self._muted = True
        try:
            self._remove_markup(prompt)
        finally:
            self._muted = False
        return True

    def _undo_move(self, moved: "MovedPoint") -> None:
        """Restore the segments, the prompt and the markups point as they were before a move."""
        for edit in reversed(moved.edits):
            self._slices().undo(edit)
        self.prompts.replace(moved.new, moved.old)
        node = self.scene.GetNodeByID(moved.old.node_id)
        index = node.GetNthControlPointIndexByID(moved.old.point_id) if node is not None else -1
        if index >= 0 and moved.old_ras is not None:
            self._muted = True
            try:
                node.SetNthControlPointPositionWorld(index, *moved.old_ras)
            finally:
                self._muted = False
            self._placed_at[moved.old.point_id] = moved.old_ras

    def clear_prompts(self) -> None:
        """Forget all prompts and remove their markups; the segment stays as it is (undo history is cleared)."""
        self.prompts.clear()
        self._undo.clear()
        self._placed_boxes.clear()
        self._muted = True
        try:
            for node in self._nodes.values():
                if node is not None:
                    node.RemoveAllControlPoints()
        finally:
            self._muted = False

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

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

    # workflows (jobs on the worker; poll self.task from a timer) ----------------------------------
    def train_prompt(self, slice_count: int = 2, prompt_type: str = "point", axis: Optional[int] = None) -> BackgroundTask:
        """"Train prompt from N slices": learn the selected segment's target from ``slice_count`` of its annotated
        slices along ``axis``; when done, clicks use the learned prompt encoder."""
        axis = self.default_axis if axis is None else axis
        annotations = self._annotations(axis, slice_count)
        name = self._segment_name()
        volume_id = self.volume_id

        def done(status: Any) -> str:
            self.use_prompt_encoder(status.result["artefact_id"], prompt_type)
            self._notify(f"clicks now use the prompt encoder learned from slices {status.result['slices']}")
            return status.result["artefact_id"]

        start = lambda _: self.client.train(volume_id, "prompt_encoder", annotations, axis=axis, name=name,
                                            prompt_type=prompt_type, **self._options())
        return self._start(BackgroundTask(self.client, f"train {prompt_type} prompt", [("training", start)], done))

    def use_prompt_encoder(self, artefact_id: Optional[str], prompt_type: str = "point") -> None:
        """Make clicks use a learned prompt encoder (None: the model's own)."""
        self.prompt_encoder = artefact_id or None
        self.prompt_encoder_type = prompt_type if artefact_id else ""

    def propagate(self, direction: str, axis: int, index: int) -> BackgroundTask:
        """Carry the selected segment's mask on slice ``index`` to the next slices (``up``, ``down``, ``both``);
        the result waits in :attr:`pending` as a preview."""
        mask = self._slices().read(self._require_segment(), axis, index)
        if not mask.any():
            raise RuntimeError(f"the segment is empty on slice {index}: segment this slice first, then propagate")
        volume_id = self.volume_id
        start = lambda _: self.client.propagate(volume_id, axis, index, mask, direction,
                                                prompt_encoder=self.prompt_encoder, **self._options())

        def done(status: Any) -> PendingResult:
            result = status.result
            masks = decode_array(result["masks"])
            slices = {(axis, int(i)): masks[n] for n, i in enumerate(result["indices"])}
            stops = "; ".join(f"{d}: {why}" for d, why in result["stopped"].items())
            return self._preview(PendingResult(f"propagated from slice {index} ({stops})", slices=slices))

        return self._start(BackgroundTask(self.client, f"propagate {direction}", [("propagating", start)], done))

    def auto_segment_sapnet(self, axis: Optional[int] = None) -> BackgroundTask:
        """"Auto-segment volume (SAP-Net)": train a SAP-Net on the segment's annotated slices, then segment every
        slice from its prompts (through the learned prompt encoder, if one is selected); result as a preview."""
        axis = self.default_axis if axis is None else axis
        annotations = self._annotations(axis, None)
        volume_id, name = self.volume_id, self._segment_name()
        train = lambda _: self.client.train(volume_id, "sapnet", annotations, axis=axis, name=name, **self._options())
        segment = lambda trained: self.client.auto_segment(
            volume_id, trained["artefact_id"], prompt_encoder=self.prompt_encoder, annotations=annotations, axis=axis,
            **self._options())

        def done(status: Any) -> PendingResult:
            volume = decode_array(status.result["masks"])[0]
            slices = {(axis, i): mask for i, mask in annotated_slices(volume, axis).items()}
            return self._preview(PendingResult(f"SAP-Net auto-segmentation of {name}", slices=slices))

        steps = [("training SAP-Net", train), ("segmenting", segment)]
        return self._start(BackgroundTask(self.client, "auto-segment (SAP-Net)", steps, done))

    def auto_segment_model(self, artefact_id: str) -> BackgroundTask:
        """Segment the whole volume with a trained H-SAM / MA-SAM model; each label becomes a new segment (preview)."""
        volume_id = self.volume_id
        start = lambda _: self.client.auto_segment(volume_id, artefact_id, **self._options())

        def done(status: Any) -> PendingResult:
            masks = decode_array(status.result["masks"])
            labels = list(status.result["labels"])
            return self._preview(PendingResult(f"auto-segmentation ({artefact_id})", labels=labels, volumes=list(masks)))

        return self._start(BackgroundTask(self.client, "auto-segment", [("segmenting", start)], done))

    def apply_pending(self) -> bool:
        """Write the previewed result into the segmentation (one undo step) and remove the preview."""
        if self.pending is None:
            return False
        applied: AppliedResult = self.pending.apply(self._slices(), self._edit_settings(), self._require_segment())
        self.pending.discard(self.scene)
        self.pending = None
        self._undo.append((None, applied))
        return True

    def discard_pending(self) -> None:
        if self.pending is not None:
            self.pending.discard(self.scene)
            self.pending = None

    def cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _start(self, task: BackgroundTask) -> BackgroundTask:
        if self.task is not None and self.task.state == "running":
            task.cancel()
            raise RuntimeError(f"{self.task.title} is still running: wait for it or cancel it first")
        self.task = task
        return task

    def _preview(self, pending: PendingResult) -> PendingResult:
        self.discard_pending()
        pending.show(self.scene, self._require_volume())
        self.pending = pending
        return pending

    def _annotations(self, axis: int, count: Optional[int]) -> dict[int, np.ndarray]:
        annotations = annotated_slices(self._slices().read_volume(self._require_segment()), axis, count)
        if not annotations:
            raise RuntimeError("the segment has no annotated slice: segment one or two slices first")
        return annotations

    def _segment_name(self) -> str:
        segment = self.segmentation_node.GetSegmentation().GetSegment(self._require_segment())
        return segment.GetName() if segment is not None else "target"

    def _require_segment(self) -> str:
        if self.segmentation_node is None or not self.segment_id:
            raise RuntimeError("select a segmentation and a segment first")
        return self.segment_id

    def _options(self) -> dict[str, Any]:
        return {"model": self.model} if self.model else {}

    # internals ---------------------------------------------------------------------------------
    def _predict_and_apply(self, axis: int, index: int, quiet: bool = False) -> Optional[SliceEdit]:
        on_slice = self.prompts.on_slice(axis, index)
        if on_slice.box is None and (1 not in on_slice.labels or self._box_only()):
            if quiet:  # nothing left to predict from on a slice a point moved away from: leave it as it is
                return None
            self._notify("draw a box on this slice first: the model needs one, points then refine it"
                         if self._box_only() else "place a \"+\" point or a box: \"−\" points alone select nothing")
            return None
        if self.segmentation_node is None or not self.segment_id:
            raise RuntimeError("select a segmentation and a segment first")
        options = {"model": self.model} if self.model else {}
        if self.prompt_encoder:
            options["prompt_encoder"] = self.prompt_encoder
        result = self.client.predict(
            self.volume_id, axis, index, on_slice.points, on_slice.labels, on_slice.box, **options
        )
        return self._slices().apply(self._edit_settings(), self.segment_id, axis, index, np.asarray(result.mask))

    def _box_only(self) -> bool:
        """Whether the model refuses point-only prompts (LiteMedSAM); asked from the worker once."""
        if self.prompt_encoder and self.prompt_encoder_type in ("point", "composite"):
            return False
        if self._model_box_only is None:
            models = self.client.models()
            chosen = [m for m in models if (m.id == self.model if self.model else m.default)]
            self._model_box_only = bool(chosen and chosen[0].box_only)
        return self._model_box_only

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
        if prompt.kind == "box":  # every box prompt came from add_roi; the ROI goes back to the previous box
            self._placed_boxes.pop()
            if node is not None and self._placed_boxes:
                node.CopyContent(self._placed_boxes[-1][1])
            elif node is not None:
                node.RemoveAllControlPoints()
        elif node is not None:
            index = node.GetNthControlPointIndexByID(prompt.point_id)
            if index >= 0:
                node.RemoveNthControlPoint(index)

    def _send_volume(
        self, array: np.ndarray, geometry: Any, axis: int, focus: Optional[int], precompute: bool
    ) -> tuple[str, str]:
        info = self.client.upload_volume(array, geometry.spacing, geometry.origin, geometry.direction)
        if not precompute:
            return info.id, ""
        options = {"model": self.model} if self.model else {}
        return info.id, self.client.start_embedding(info.id, axis=axis, focus=focus, **options)

    @property
    def _job_id(self) -> str:
        """The precompute job's id ("" while uploading, after a failed upload, or without precompute)."""
        if self._upload is None or not self._upload.done() or self._upload.exception() is not None:
            return ""
        return self._upload.result()[1]

    def _cancel_embedding(self) -> None:
        if self._job_id:
            try:
                self.client.cancel_job(self._job_id)
            except Exception as exc:  # noqa: BLE001 - the worker may be gone; nothing to cancel then
                self._report(f"could not cancel the precompute: {exc}")

    def _guarded(self, callback: Callable[[Any, Optional[int]], None], node: Any, calldata: Optional[int]) -> None:
        try:
            callback(node, calldata)
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
        """Stop observing, cancel the precompute, end the upload thread."""
        self.unobserve()
        self._cancel_embedding()
        self._executor.shutdown(wait=False)


def _roi_corners(roi: Any) -> np.ndarray:
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


def _thinnest_axis(ras_to_ijk_matrix: np.ndarray, corners: np.ndarray) -> int:
    """The IJK axis along which a box is thinnest in voxels (the slicing axis of a box drawn in a slice view)."""
    ijk = np.array([P.ras_to_ijk(ras_to_ijk_matrix, c) for c in corners])
    return int(np.argmin(ijk.max(axis=0) - ijk.min(axis=0)))

