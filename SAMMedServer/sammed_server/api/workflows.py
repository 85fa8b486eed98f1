"""The annotation workflows behind the HTTP layer, each run as a job: learn a target from annotated slices
(SAM-assist prompt encoder or SAP-Net), propagate an accepted mask slice by slice, and segment a whole volume
automatically (SAP-Net + assist, or an H-SAM / MA-SAM model).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any, Optional

import numpy as np

from ..artefacts import artefact_kind, list_artefacts, read_manifest
from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.volume import AXIS_NAMES
from ..errors import InputError
from . import codec
from .jobs import Job, JobContext
from .schemas import AnnotatedSlices, ArtefactInfo, AutoSegmentRequest, PropagateRequest, TrainRequest
from .state import WorkerState

ARTEFACT_KINDS = ("prompt_encoders", "sapnets", "auto_models")


def artefacts(kind: Optional[str]) -> list[ArtefactInfo]:
    """Stored artefacts of one kind (or all kinds), newest first."""
    if kind is not None and kind not in ARTEFACT_KINDS:
        raise InputError(f"artefact kind must be one of {', '.join(ARTEFACT_KINDS)}, got {kind!r}")
    return [
        ArtefactInfo(
            id=m["id"], kind=m["kind"], name=m.get("name", m["id"]), base_model=m.get("base_model", ""),
            created=m.get("created", ""), manifest=m,
        )
        for k in ([kind] if kind else ARTEFACT_KINDS)
        for m in list_artefacts(k)
    ]


def annotations_of(prepared: PreparedVolume, annotated: AnnotatedSlices) -> dict[int, np.ndarray]:
    """``{slice index: (rows, cols) bool}`` from the wire, checked against the volume's slices."""
    rows, cols = prepared.volume.slice_shape(annotated.axis)
    masks = codec.decode_array(annotated.masks, "annotations.masks", shape=(len(annotated.indices), rows, cols))
    if len(set(annotated.indices)) != len(annotated.indices):
        raise InputError("annotations.indices has duplicates")
    for index in annotated.indices:
        prepared.volume.slice(annotated.axis, index)  # validates the index
    return {int(i): masks[n].astype(bool) for n, i in enumerate(annotated.indices)}


def train(state: WorkerState, volume_id: str, request: TrainRequest) -> Job:
    """Start training a prompt encoder or a SAP-Net; the job's ``loss`` metric is the curve, its result the id."""
    predictor = state.predictor(request.model)
    prepared = state.prepared(volume_id, predictor, request.window)
    axis = request.annotations.axis
    annotations = annotations_of(prepared, request.annotations)
    if not any(mask.any() for mask in annotations.values()):
        raise InputError("every annotated slice is empty", "draw the target on at least one slice first")
    slices = sorted(i for i, mask in annotations.items() if mask.any())

    def on_step(ctx: JobContext):
        def update(step: int, total: int, loss: float) -> None:
            ctx.metric("loss", loss)
            ctx.progress(step, total, f"step {step}/{total}, loss {loss:.3f}")
        return update

    def run_prompt_encoder(ctx: JobContext) -> dict[str, Any]:
        from ..sammed.learned_prompts import PromptTrainingConfig, save_prompt_encoder, train_prompt_encoder

        config = PromptTrainingConfig(prompt_type=request.prompt_type)
        config = replace(config, iterations=request.iterations) if request.iterations else config
        ctx.log(f"training a {request.prompt_type} prompt encoder for {request.name!r} on slices {slices}")
        trained = train_prompt_encoder(predictor, prepared, axis, annotations, config, on_step(ctx), ctx.cancel_event)
        artefact_id = save_prompt_encoder(trained, request.name, prepared, axis, slices, predictor)
        return _trained(artefact_id, "prompt_encoders", trained.losses, trained.seconds, slices)

    def run_sapnet(ctx: JobContext) -> dict[str, Any]:
        from ..sammed.canonical import train_sapnet_canonical
        from ..sammed.sapnet import SAPNetConfig, save_sapnet

        config = SAPNetConfig(iterations=request.iterations) if request.iterations else SAPNetConfig()
        ctx.log(f"training a SAP-Net for {request.name!r} on slices {slices} (in the canonical frame)")
        trained, canonical, canonical_slices = train_sapnet_canonical(
            predictor, prepared.volume, axis, annotations, request.window, config, on_step(ctx), ctx.cancel_event)
        artefact_id = save_sapnet(trained, request.name, canonical, trained.frame.axis, canonical_slices, predictor)
        return _trained(artefact_id, "sapnets", trained.losses, trained.seconds, slices)

    run = run_prompt_encoder if request.kind == "prompt_encoder" else run_sapnet
    return state.jobs.submit(f"train_{request.kind}", run)


def _trained(artefact_id: str, kind: str, losses: list[float], seconds: float, slices: list[int]) -> dict[str, Any]:
    return {"artefact_id": artefact_id, "kind": kind, "slices": slices, "seconds": round(seconds, 2),
            "loss_first": losses[0], "loss_last": losses[-1], "losses": [round(v, 4) for v in losses]}


def propagate(state: WorkerState, volume_id: str, request: PropagateRequest) -> Job:
    """Start propagating ``request.mask`` from its slice; the result holds only the slices it computed."""
    from ..engine.propagation import PropagationConfig, propagate as run_propagation

    predictor = state.predictor(request.model)
    prepared = state.prepared(volume_id, predictor, request.window)
    axis, index = request.axis, request.index
    rows, cols = prepared.volume.slice(axis, index).shape
    mask = codec.decode_array(request.mask, "mask", shape=(rows, cols))
    if not mask.any():
        raise InputError("the mask to propagate is empty", "accept a mask on this slice first")
    encoder = state.learned_encoders.get(request.prompt_encoder, predictor)
    config = PropagationConfig(max_slices=request.max_slices) if request.max_slices else PropagationConfig()

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.log(f"propagating from slice {index} along {AXIS_NAMES[axis]} ({request.direction})")
        result = run_propagation(
            predictor, prepared, axis, index, mask.astype(bool), request.direction, config,
            prompt_encoder=encoder, cancel=ctx.cancel_event,
            progress=lambda done, total, iou: ctx.progress(done, total, f"{done} slice(s), predicted IoU {iou:.2f}"),
        )
        indices = sorted(result.masks)
        for direction, reason in result.stopped.items():
            ctx.log(f"{direction}: stopped ({reason})")
        stack = np.stack([result.masks[i] for i in indices]) if indices else np.zeros((0, rows, cols), bool)
        return {
            "axis": axis, "start": index, "indices": indices, "masks": codec.encode_mask(stack).model_dump(),
            "scores": [float(result.scores[i]) for i in indices], "stopped": dict(result.stopped),
        }

    return state.jobs.submit("propagate", run)


def auto_segment(state: WorkerState, volume_id: str, request: AutoSegmentRequest) -> Job:
    """Start segmenting the whole volume with a SAP-Net (+ assist) or an H-SAM / MA-SAM model.

    The result is ``labels`` (value, name, colour) and ``masks``: ``(L, K, J, I)`` bool, one per label."""
    kind = artefact_kind(request.artefact, ("sapnets", "auto_models"))
    predictor = state.predictor(request.model)
    prepared = state.prepared(volume_id, predictor, request.window)
    annotations = annotations_of(prepared, request.annotations) if request.annotations else {}
    if kind == "sapnets":
        return _sapnet_job(state, predictor, prepared, request, annotations)
    return _auto_model_job(state, predictor, prepared, request)


def _sapnet_job(state: WorkerState, predictor: SlicePredictor, prepared: PreparedVolume,
                request: AutoSegmentRequest, annotations: dict[int, np.ndarray]) -> Job:
    from ..sammed.canonical import auto_segment_native
    from ..sammed.sapnet import load_sapnet

    sapnet = load_sapnet(request.artefact, predictor.backend)
    encoder = state.learned_encoders.get(request.prompt_encoder, predictor)
    prompt = read_manifest("prompt_encoders", request.prompt_encoder)["prompt_type"] if request.prompt_encoder else "box"
    name = sapnet.name or "target"

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.log(f"auto-segmenting {name!r} with SAP-Net {request.artefact} ({prompt} prompts)")
        result = auto_segment_native(
            predictor, prepared.volume, sapnet, request.axis, annotations, request.window, prompt_encoder=encoder,
            prompt=prompt, progress=lambda done, total: ctx.progress(done, total), cancel=ctx.cancel_event,
        )
        ctx.log(f"{len(result.predicted_iou)} slice(s) segmented from SAP-Net prompts")
        return {"labels": [{"value": 1, "name": name, "color": None}],
                "masks": codec.encode_mask(result.mask[None]).model_dump()}

    key = hashlib.sha1(f"auto|{prepared.volume.content_hash}|{request.model_dump_json()}".encode()).hexdigest()
    return state.jobs.submit("auto_segment", run, key=key)


def _auto_model_job(state: WorkerState, predictor: SlicePredictor, prepared: PreparedVolume,
                    request: AutoSegmentRequest) -> Job:
    from ..adapted.inference import segment_with_auto_model

    manifest = read_manifest("auto_models", request.artefact)

    def run(ctx: JobContext) -> dict[str, Any]:
        ctx.log(f"auto-segmenting with {manifest.get('mode')} model {request.artefact}")
        segments = segment_with_auto_model(
            request.artefact, predictor.backend, prepared.volume, state.cache, axis=request.axis,
            progress=lambda done, total: ctx.progress(done, total), cancel=ctx.cancel_event,
        )
        labels = [{"value": n + 1, "name": seg.name, "color": list(seg.color)} for n, seg in enumerate(segments)]
        return {"labels": labels, "masks": codec.encode_mask(np.stack([seg.mask for seg in segments])).model_dump()}

    key = hashlib.sha1(f"auto|{prepared.volume.content_hash}|{request.model_dump_json()}".encode()).hexdigest()
    return state.jobs.submit("auto_segment", run, key=key)

