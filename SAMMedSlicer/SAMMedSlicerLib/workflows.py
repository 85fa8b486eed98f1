"""Long annotation workflows for the panel (Qt-free): learn a target from annotated slices, propagate a slice,
auto-segment a volume. Each runs as worker jobs that a timer polls (:class:`BackgroundTask`); results are shown
in a separate preview segmentation first (:class:`PendingResult`) and applied into the user's segmentation only
on request, as one undoable step that honours the Segment Editor's overwrite and masking settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .segments import EditSettings, SegmentSlices, SliceEdit, mask_region, slice_index

PREVIEW_NAME = "SAMMed preview"
PREVIEW_COLOR = (1.0, 0.55, 0.0)


def annotated_slices(volume_mask: np.ndarray, axis: int, count: Optional[int] = None) -> dict[int, np.ndarray]:
    """``{index: (rows, cols) bool}`` of the slices along ``axis`` of a ``(K, J, I)`` mask that have foreground;
    with ``count``, that many spread evenly over them (first and last included)."""
    sums = volume_mask.sum(axis=tuple(a for a in range(3) if a != 2 - axis))
    indices = [int(i) for i in np.flatnonzero(sums)]
    if count is not None and len(indices) > count:
        picks = np.linspace(0, len(indices) - 1, count).round().astype(int)
        indices = [indices[p] for p in picks]
    return {i: volume_mask[slice_index(axis, i)].copy() for i in indices}


Step = Callable[[Optional[dict]], str]  # previous job's result → the id of the job it starts


class BackgroundTask:
    """Worker jobs run one after another (e.g. train a SAP-Net, then segment with it); poll it from a timer.

    ``steps`` are (label, start) pairs: ``start`` gets the previous job's result and returns a job id.
    ``on_done`` turns the last job's status into the task's outcome (e.g. a :class:`PendingResult`).
    """

    def __init__(self, client: Any, title: str, steps: Sequence[tuple[str, Step]],
                 on_done: Callable[[Any], Any]) -> None:
        self.client = client
        self.title = title
        self._steps = list(steps)
        self._on_done = on_done
        self._step = 0
        self.job_id = self._steps[0][1](None)
        self.state = "running"
        self.outcome: Any = None
        self.error = ""
        self.losses: list[float] = []

    def poll(self) -> tuple[str, float, str]:
        """(state, overall fraction, message); state is running, succeeded, failed or cancelled. Blocking: inside
        Slicer, :meth:`fetch` runs on a thread and :meth:`advance` on the main thread."""
        return self.advance(self.fetch() if self.state == "running" else None)

    def fetch(self) -> Any:
        """The current job's status (an HTTP request: call it off the main thread)."""
        return self.client.job(self.job_id)

    def advance(self, status: Any) -> tuple[str, float, str]:
        """Move on from a fetched ``status``: start the next step or finish (``on_done``, on the main thread).
        Anything that fails here ends the task as failed, reported once: it never stays "running"."""
        if self.state != "running" or status is None or status.id != self.job_id:
            return self.state, 1.0 if self.state != "running" else 0.0, self.error or f"{self.title}: {self.state}"
        label = self._steps[self._step][0]
        self.losses = list(status.metrics.get("loss", [])) if status.metrics else self.losses
        if status.state in ("failed", "cancelled"):
            self.state = status.state
            error = status.error or {}
            self.error = f"{self.title}: {label} {status.state}" + (f": {error.get('message')}" if error else "")
            return self.state, 1.0, self.error
        if status.state == "succeeded":
            try:
                if self._step + 1 < len(self._steps):
                    self.job_id = self._steps[self._step + 1][1](status.result)
                    self._step += 1
                else:
                    self.outcome = self._on_done(status)
                    self.state = "succeeded"
                    return self.state, 1.0, f"{self.title}: done"
            except Exception as exc:  # noqa: BLE001 - a failing step or result handler ends the task, once
                self.state = "failed"
                self.error = f"{self.title}: {label} succeeded, but its result could not be used: {exc}"
                return self.state, 1.0, self.error
        fraction = (self._step + (0.0 if status.state == "succeeded" else float(status.progress))) / len(self._steps)
        return "running", fraction, f"{self.title}: {self._steps[self._step][0]} {status.message}".rstrip()

    def cancel(self) -> None:
        if self.state == "running":
            self.client.cancel_job(self.job_id)


@dataclass
class PendingResult:
    """Masks waiting for the user's decision, shown in a preview segmentation node until applied or discarded.

    ``slices`` maps (axis, index) → (rows, cols) bool for the target segment (propagation, SAP-Net), or
    ``labels`` + ``volumes`` give new segments (name, colour) with ``(K, J, I)`` masks (H-SAM / MA-SAM).
    """

    description: str
    slices: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    labels: list[dict] = field(default_factory=list)
    volumes: list[np.ndarray] = field(default_factory=list)
    preview_node: Any = None

    def show(self, scene: Any, volume_node: Any) -> Any:
        """Put the result into a new preview segmentation node (one segment per result) and return it."""
        self.discard(scene)
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", PREVIEW_NAME)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        writer = SegmentSlices(node, volume_node)
        for name, color, mask in self._layers():
            segment_id = node.GetSegmentation().AddEmptySegment("", name, color)
            if isinstance(mask, dict):
                for (axis, index), plane in sorted(mask.items()):
                    writer.write(segment_id, axis, index, plane)
            elif (region := mask_region(np.asarray(mask, bool))) is not None:
                writer.write_region({segment_id: np.asarray(mask, bool)[region]}, region)
        self.preview_node = node
        return node

    def discard(self, scene: Any) -> None:
        """Remove the preview node (the user's segmentation was never touched)."""
        if self.preview_node is not None and scene.IsNodePresent(self.preview_node):
            scene.RemoveNode(self.preview_node)
        self.preview_node = None

    def apply(self, segments: SegmentSlices, settings: EditSettings, target: str) -> "AppliedResult":
        """Write the result into the user's segmentation as one undoable step.

        Slices go into ``target``; labels become new segments (a name already in use gets a suffix, so no
        existing segment is reused)."""
        applied = AppliedResult()
        for (axis, index), mask in sorted(self.slices.items()):
            applied.edits.append(segments.apply(settings, target, axis, index, mask))
        segmentation = segments.segmentation_node.GetSegmentation()
        for label, volume in zip(self.labels, self.volumes):
            name = _free_name(segmentation, str(label["name"]))
            segment_id = segmentation.AddEmptySegment("", name, tuple(label.get("color") or PREVIEW_COLOR))
            applied.created.append(segment_id)
            edit = segments.apply_volume(settings, segment_id, volume)  # one vectorised step, not slice by slice
            if edit is not None:
                applied.edits.append(edit)
        return applied

    def _layers(self) -> list[tuple[str, tuple[float, float, float], Any]]:
        layers: list[tuple[str, tuple[float, float, float], Any]] = []
        if self.slices:
            layers.append((self.description, PREVIEW_COLOR, self.slices))
        for label, volume in zip(self.labels, self.volumes):
            layers.append((str(label["name"]), tuple(label.get("color") or PREVIEW_COLOR), volume))
        return layers


@dataclass
class AppliedResult:
    """What applying a :class:`PendingResult` changed: slice edits in order, and the segments it created."""

    edits: list[SliceEdit] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    def undo(self, segments: SegmentSlices) -> None:
        """Put every touched slice back (last first) and remove the created segments."""
        for edit in reversed(self.edits):
            segments.undo(edit)
        segmentation = segments.segmentation_node.GetSegmentation()
        for segment_id in self.created:
            segmentation.RemoveSegment(segment_id)


def _free_name(segmentation: Any, name: str) -> str:
    taken = {segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())}
    if name not in taken:
        return name
    return next(f"{name} {n}" for n in range(2, 10_000) if f"{name} {n}" not in taken)
