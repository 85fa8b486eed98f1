"""The session's annotation workflows (Qt-free): train a prompt encoder, propagate, auto-segment, then preview,
apply or discard the result. Each runs as worker jobs behind a :class:`~.workflows.BackgroundTask` that the panel's
timer polls; results wait as a :class:`~.workflows.PendingResult` until applied as one undo step.

:class:`SessionWorkflows` is a mixin of :class:`~.session.Session`: it uses the session's client, volume, segment
and undo history.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .wire import decode_array
from .workflows import AppliedResult, BackgroundTask, PendingResult, annotated_slices


class SessionWorkflows:
    """Train / propagate / auto-segment / apply for :class:`~.session.Session` (see there for the attributes)."""

    task: Optional[BackgroundTask]
    pending: Optional[PendingResult]
    prompt_encoder: Optional[str]
    prompt_encoder_type: str

    def train_prompt(self, slice_count: int = 2, prompt_type: str = "point", axis: Optional[int] = None) -> BackgroundTask:
        """"Train prompt from N slices": learn the selected segment's target from ``slice_count`` of its annotated
        slices along ``axis``; when done, clicks use the learned prompt encoder."""
        axis = self.default_axis if axis is None else axis
        annotations = self._annotations(axis, slice_count)
        name = self._segment_name()
        volume_id = self._uploaded_volume_id()

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
        volume_id = self._uploaded_volume_id()
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
        volume_id, name = self._uploaded_volume_id(), self._segment_name()
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
        volume_id = self._uploaded_volume_id()
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
        self._undo.append(applied)
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

