"""SAM^Med's Algorithm 1: point prompts carried from annotated slices to their neighbours.

Wang et al. (2023), "SAM^Med: A medical image annotation framework based on large vision model": points
sampled inside an annotation are carried slice by slice up and down the volume; a point survives on the
next slice while the intensity under it stays within ``mean ± λ·std`` of the annotated region's intensity,
and the walk stops when no point survives. Each reached slice is segmented with its surviving points by a
learned point prompt encoder; where several annotated slices reach the same slice, their probabilities are
averaged.
"""

from __future__ import annotations

import threading
from typing import Callable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.prompts import SlicePrompts
from ..engine.volume import check_axis, slice_index
from ..errors import CancelledError, InputError
from .prompt_sampling import SCHEMES, sample_points

ProgressFn = Callable[[int, int], None]  # (done, total)


def propagate_point_prompts(
    array: np.ndarray,
    axis: int,
    annotations: Mapping[int, np.ndarray],
    lam: float = 2.0,
    points: int = 5,
    scheme: str = "center",
    seed: int = 0,
) -> dict[int, dict[int, np.ndarray]]:
    """Algorithm 1 on a ``(K, J, I)`` intensity ``array``: ``{slice: {annotated slice: points (n, 2) as (x, y)}}``.

    From each annotated slice, ``points`` pixels are drawn inside its mask (``scheme`` of
    :func:`sample_points`) and walked outwards in both directions; on each slice only the points whose
    voxel value lies in ``mean ± lam·std`` of the annotated region survive. A walk stops when no point
    survives, at the volume's edge, or at the next annotated slice (which has its own, better prompts).
    """
    axis = check_axis(axis)
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"expected a (K, J, I) volume, got shape {array.shape}")
    if lam <= 0 or points < 1:
        raise InputError(f"λ must be positive and points ≥ 1, got λ={lam}, points={points}")
    if scheme not in SCHEMES:
        raise InputError(f"point scheme must be one of {SCHEMES}, got {scheme!r}")
    count = array.shape[2 - axis]
    shape = array[slice_index(axis, 0)].shape
    for k, mask in annotations.items():
        if np.shape(mask) != shape or not 0 <= k < count:
            raise InputError(f"annotation of slice {k} does not fit the volume: slices 0..{count - 1} of shape {shape}")
    sources = sorted(k for k, mask in annotations.items() if np.asarray(mask).any())
    if not sources:
        raise InputError("no annotated slice to propagate from: every given mask is empty",
                         "annotate the target on at least one slice")
    rng = np.random.default_rng(seed)
    reached: dict[int, dict[int, np.ndarray]] = {}
    for source in sources:
        mask = np.asarray(annotations[source], bool)
        region = array[slice_index(axis, source)][mask].astype(np.float64)
        low, high = region.mean() - lam * region.std(), region.mean() + lam * region.std()
        start = np.unique(sample_points(mask, points, scheme, rng).astype(int), axis=0)
        for step in (-1, 1):
            current, k = start, source + step
            while 0 <= k < count and k not in sources:
                values = array[slice_index(axis, k)][current[:, 1], current[:, 0]]
                current = current[(values >= low) & (values <= high)]
                if not len(current):
                    break
                reached.setdefault(k, {})[source] = current.astype(np.float64)
                k += step
    return reached


def segment_by_point_propagation(
    predictor: SlicePredictor,
    prepared: PreparedVolume,
    axis: int,
    annotations: Mapping[int, np.ndarray],
    prompt_encoder: Optional[nn.Module],
    lam: float = 2.0,
    points: int = 5,
    seed: int = 0,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
) -> np.ndarray:
    """Segment every slice Algorithm 1 reaches with its propagated points through ``prompt_encoder`` (a learned
    point prompt encoder; None = the model's own, refused for box-only models); averages the foreground
    probabilities of several sources. Annotated slices keep the annotation. Returns ``(K, J, I)`` bool."""
    reached = propagate_point_prompts(prepared.volume.array, axis, annotations, lam, points, seed=seed)
    transform = prepared.transform(axis)
    mask = np.zeros(prepared.volume.array.shape, dtype=bool)
    for k, annotation in annotations.items():
        mask[slice_index(axis, k)] = np.asarray(annotation, bool)
    for done, (k, by_source) in enumerate(sorted(reached.items()), start=1):
        if cancel is not None and cancel.is_set():
            raise CancelledError("point propagation was cancelled")
        probabilities = []
        for xy in by_source.values():
            prompts = SlicePrompts(points=[tuple(p) for p in xy], labels=[1] * len(xy))
            logits = predictor.predict(prepared, axis, k, prompts, prompt_encoder).low_res_logits
            probabilities.append(torch.sigmoid(transform.logits_to_slice(torch.from_numpy(logits)))[0].numpy())
        mask[slice_index(axis, k)] = np.mean(probabilities, axis=0) > 0.5
        if progress:
            progress(done, len(reached))
    return mask
