"""SAM-auto: SAP-Net's coarse masks become prompts for SAM (with a learned SAM-assist prompt encoder or the
model's own), slice by slice, over the whole volume.

Wang et al. (2023), "SAM^Med: A medical image annotation framework based on large vision model": the coarse
mask of each slice gives a box (with a margin), centre points (the deepest pixel of each 2D part, by the
distance transform) or both; SAM refines it. Annotated slices keep the user's annotation, and the final
mask keeps the K largest 3D components.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np
from torch import nn

from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.propagation import centre_points
from ..engine.prompts import SlicePrompts
from ..engine.volume import slice_index
from ..errors import CancelledError, InputError
from ..evaluation.prompt_simulation import tight_box
from .sapnet import TrainedSAPNet, coarse_segmentation, keep_top_k_components

PROMPTS = ("box", "point", "composite")
ProgressFn = Callable[[int, int], None]  # (done, total)


@dataclass
class AutoSegmentation:
    """``mask`` and SAP-Net's ``coarse`` mask, ``(K, J, I)`` bool; the prompt and SAM's predicted IoU of each
    slice SAM segmented (annotated slices are not in them)."""

    mask: np.ndarray
    coarse: np.ndarray
    prompts: dict[int, SlicePrompts] = field(default_factory=dict)
    predicted_iou: dict[int, float] = field(default_factory=dict)


def auto_segment(
    predictor: SlicePredictor,
    prepared: PreparedVolume,
    axis: int,
    sapnet: TrainedSAPNet,
    annotations: Mapping[int, np.ndarray] = {},
    prompt_encoder: Optional[nn.Module] = None,
    prompt: str = "box",
    margin: float = 3.0,
    top_k: Optional[int] = 1,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
) -> AutoSegmentation:
    """Segment the whole volume along ``axis``: SAP-Net coarse mask → per-slice ``prompt`` ("box": the coarse
    box grown by ``margin`` slice pixels; "point": centre points; "composite": both) → SAM with
    ``prompt_encoder`` (a learned one, or the model's own when None). ``annotations`` ({slice: mask}) overwrite
    their slices; ``top_k`` largest 3D components are kept (None or 0: no clean-up).
    ``progress(done, total)`` counts 2 steps per slice for the coarse pass and 1 for the SAM pass.
    """
    if prompt not in PROMPTS:
        raise InputError(f"auto-segmentation prompt must be one of {PROMPTS}, got {prompt!r}")
    if margin < 0:
        raise InputError(f"the box margin must be ≥ 0 pixels, got {margin}")
    shape, count = prepared.volume.slice_shape(axis), prepared.volume.num_slices(axis)
    for k, mask in annotations.items():
        if np.shape(mask) != shape or not 0 <= k < count:
            raise InputError(f"the annotation of slice {k} does not fit the volume: slices 0..{count - 1} of shape {shape}")
    total = 3 * count

    def coarse_progress(done: int, _: int) -> None:
        if progress:
            progress(done, total)

    coarse = coarse_segmentation(predictor, prepared, axis, sapnet, coarse_progress, cancel, top_k)
    result = AutoSegmentation(np.zeros_like(coarse), coarse)
    for index in range(count):
        if cancel is not None and cancel.is_set():
            raise CancelledError("auto-segmentation was cancelled")
        where = slice_index(axis, index)
        if index in annotations:
            result.mask[where] = np.asarray(annotations[index], bool)
        elif coarse[where].any():
            prompts = coarse_prompts(coarse[where], prompt, margin)
            prediction = predictor.predict(prepared, axis, index, prompts, prompt_encoder)
            result.mask[where] = prediction.masks[0]
            result.prompts[index] = prompts
            result.predicted_iou[index] = float(prediction.scores[0])
        if progress:
            progress(2 * count + index + 1, total)
    if top_k:
        result.mask = keep_top_k_components(result.mask, top_k)
    return result


def coarse_prompts(coarse: np.ndarray, prompt: str = "box", margin: float = 3.0) -> SlicePrompts:
    """Prompts from a non-empty coarse ``(rows, cols)`` mask: its box grown by ``margin`` and/or one foreground
    point at the deepest pixel (distance transform maximum) of each 2D connected part."""
    points: list[tuple[float, float]] = []
    if prompt in ("point", "composite"):
        points = centre_points(coarse)
    box = tight_box(coarse, margin) if prompt in ("box", "composite") else None
    return SlicePrompts(points=points, labels=[1] * len(points), box=box)
