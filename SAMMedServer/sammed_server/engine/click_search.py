"""Clicks on a box-trained model (LiteMedSAM): find the box the clicks mean, without training.

A box-trained decoder gives nothing from points alone, and a point added to a box pulls its mask away from
the box. So clicks select among boxes instead:

* **clicks only** — a batch of candidate boxes around the "+" clicks (several sizes in mm and aspect ratios, each
  grown to hold every "+" click) is decoded in ONE decoder call on the cached embedding. Each mask is scored by
  the decoder's predicted IoU plus SAM's stability score (the IoU of the mask thresholded at logit ±1), whether
  every "+" click is inside and every "−" click outside, and, when given, its overlap with the segment's mask on
  the neighbouring slice (docs/clicks.md has the measurements that chose this score). The best mask's own bounding box is then decoded once more (a tight box is what the model was trained
  with).
* **a box and clicks** — the box stays the prompt; clicks are corrections. For each click the box's mask breaks,
  variants of the box (sides moved out to a missed "+" click or in past a "−" click) are decoded in one call, and
  the change of the variant that honours the click with the fewest pixels changed is taken only where it forms a
  blob around the click. A "+" click inside the current mask therefore changes nothing, and a click never edits
  far from itself.

Coordinates here are model-input pixels (see :class:`~sammed_server.engine.preprocessing.InputTransform`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from scipy import ndimage

from .backend import Decoded

DecodeFn = Callable[[np.ndarray], Decoded]  # boxes (B, 4) in model pixels → logits (B, 1, r, r), iou (B, 1)


@dataclass(frozen=True)
class ClickSearchConfig:
    """The candidate boxes: side lengths in mm (steps of ~1.35×) × aspect ratios (width / height). Measured on
    the sample CT (docs/clicks.md): finer sizes pay more than more aspect ratios for the same decoder time."""

    sizes_mm: tuple[float, ...] = (12.0, 16.0, 22.0, 30.0, 40.0, 54.0, 72.0, 96.0, 130.0, 175.0, 235.0, 320.0)
    aspects: tuple[float, ...] = (1.0,)
    coarse_pool: int = 2  # candidates are scored on the embedding average-pooled this much (4× less decoder time)
    refine_margin_px: float = 2.0  # model pixels added around the chosen mask's box before the refining decode


@dataclass(frozen=True)
class Clicks:
    """Clicks in model-input pixels: ``positive (n, 2)`` and ``negative (m, 2)`` as ``(x, y)``."""

    positive: np.ndarray
    negative: np.ndarray

    @classmethod
    def from_labelled(cls, points: np.ndarray, labels: np.ndarray) -> "Clicks":
        points, labels = np.asarray(points, np.float64).reshape(-1, 2), np.asarray(labels).reshape(-1)
        return cls(points[labels == 1], points[labels == 0])


@dataclass
class SearchResult:
    """The chosen box (model pixels), its decoded logits ``(r, r)`` and predicted IoU, and every candidate tried."""

    box: np.ndarray
    logits: torch.Tensor
    iou: float
    candidates: np.ndarray
    scores: np.ndarray


def candidate_boxes(clicks: Clicks, mm_per_pixel: float, bounds: tuple[float, float],
                    config: ClickSearchConfig = ClickSearchConfig()) -> np.ndarray:
    """``(len(sizes) · len(aspects), 4)`` boxes centred on the "+" clicks, each grown to hold them all, clipped to
    ``bounds`` = (width, height) of the image inside the model input; ordered size-major."""
    centre = clicks.positive.mean(axis=0)
    low, high = clicks.positive.min(axis=0), clicks.positive.max(axis=0)
    boxes = []
    for size in np.asarray(config.sizes_mm) / mm_per_pixel:
        for aspect in config.aspects:
            half = 0.5 * size * np.array([np.sqrt(aspect), 1.0 / np.sqrt(aspect)])
            boxes.append(np.concatenate([np.minimum(centre - half, low - 1.0), np.maximum(centre + half, high + 1.0)]))
    width, height = bounds
    return np.clip(np.asarray(boxes), 0.0, [width - 1, height - 1, width - 1, height - 1])


def click_agreement(masks: np.ndarray, clicks: Clicks) -> np.ndarray:
    """``(B,)`` number of clicks each ``(B, r, r)`` mask honours ("+" inside, "−" outside); model pixels map 1:1."""
    size = masks.shape[-1]
    honoured = np.zeros(len(masks), dtype=np.int64)
    for points, wanted in ((clicks.positive, True), (clicks.negative, False)):
        for x, y in np.clip(np.round(points).astype(int), 0, size - 1):
            honoured += masks[:, y, x] == wanted
    return honoured


def stability(logits: torch.Tensor, offset: float = 1.0) -> np.ndarray:
    """SAM's stability score: IoU of the masks thresholded at ``+offset`` and ``−offset`` (``(B, r, r)`` → ``(B,)``)."""
    inner = (logits > offset).flatten(1).sum(1).float()
    outer = (logits > -offset).flatten(1).sum(1).float()
    return (inner / outer.clamp(min=1)).numpy()


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two ``(B, r, r)`` boolean stacks (1 where both are empty)."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def search_clicks(decode: DecodeFn, decode_coarse: DecodeFn, clicks: Clicks, mm_per_pixel: float,
                  bounds: tuple[float, float], context: Optional[np.ndarray] = None,
                  config: ClickSearchConfig = ClickSearchConfig()) -> SearchResult:
    """Clicks alone → the best candidate box (scored through ``decode_coarse``: one call for the whole batch,
    logits at the same ``r`` as ``decode``), refined by decoding its mask's bounding box with ``decode``.

    ``context`` is an optional ``(r, r)`` boolean mask in model space the object probably resembles (the segment
    on the neighbouring slice)."""
    boxes = candidate_boxes(clicks, mm_per_pixel, bounds, config)
    decoded = decode_coarse(boxes)
    logits, ious = decoded.low_res_logits[:, 0], decoded.iou[:, 0].numpy()
    masks = (logits > 0).numpy()
    scores = score_candidates(masks, logits, ious, clicks, context)
    best = int(np.argmax(scores))
    box, chosen_logits, chosen_iou = boxes[best], logits[best], float(ious[best])
    tight = mask_box(masks[best], config.refine_margin_px, bounds)
    if tight is not None:
        refined = decode(tight[None])
        refined_mask = (refined.low_res_logits[:, 0] > 0).numpy()
        if click_agreement(refined_mask, clicks)[0] >= click_agreement(masks[best:best + 1], clicks)[0]:
            box, chosen_logits, chosen_iou = tight, refined.low_res_logits[0, 0], float(refined.iou[0, 0])
    return SearchResult(box, chosen_logits, chosen_iou, boxes, scores)


def score_candidates(masks: np.ndarray, logits: torch.Tensor, ious: np.ndarray, clicks: Clicks,
                     context: Optional[np.ndarray] = None) -> np.ndarray:
    """One score per candidate (higher is better): predicted IoU + stability (+ IoU with ``context``); a
    candidate that breaks a click scores below every one that does not, an empty mask lowest."""
    count = len(masks)
    score = ious + stability(logits)
    if context is not None and context.any():
        score = score + mask_iou(masks, np.broadcast_to(context, masks.shape))
    empty = masks.reshape(count, -1).sum(1) == 0
    broken = clicks.positive.shape[0] + clicks.negative.shape[0] - click_agreement(masks, clicks)
    return score - 10.0 * broken - 100.0 * empty


def mask_box(mask: np.ndarray, margin: float, bounds: tuple[float, float]) -> Optional[np.ndarray]:
    """The bounding box ``(x0, y0, x1, y1)`` of a model-space mask grown by ``margin``, clipped; None if empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    width, height = bounds
    box = np.array([cols.min() - margin, rows.min() - margin, cols.max() + margin, rows.max() + margin], np.float64)
    return np.clip(box, 0.0, [width - 1, height - 1, width - 1, height - 1])


def box_variants(box: np.ndarray, base_mask: np.ndarray, clicks: Clicks, bounds: tuple[float, float],
                 margin: float = 2.0) -> np.ndarray:
    """The user's box first, then boxes with sides moved for each click ``base_mask`` breaks: out to a "+" click
    outside the box (all sides at once), or each side in turn pushed out by a quarter of the box (a "+" click
    inside the box); each side in turn moved in just past a "−" click. Variants that would lose a "+" click or
    collapse are dropped."""
    x0, y0, x1, y1 = box
    extent = np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0])
    variants = [np.asarray(box, np.float64)]
    broken_positive = [p for p in clicks.positive if not _inside(base_mask, p)]
    broken_negative = [p for p in clicks.negative if _inside(base_mask, p)]
    for x, y in broken_positive:
        if not (x0 <= x <= x1 and y0 <= y <= y1):
            variants.append(np.array([min(x0, x - margin), min(y0, y - margin), max(x1, x + margin), max(y1, y + margin)]))
        else:
            for side, sign in enumerate((-1, -1, 1, 1)):
                moved = np.asarray(box, np.float64).copy()
                moved[side] += sign * max(0.25 * extent[side], margin)
                variants.append(moved)
    for x, y in broken_negative:
        for side, value in enumerate((x + margin, y + margin, x - margin, y - margin)):
            moved = np.asarray(box, np.float64).copy()
            moved[side] = value
            variants.append(moved)
    width, height = bounds
    variants = [np.clip(v, 0.0, [width - 1, height - 1, width - 1, height - 1]) for v in variants]
    keep = [v for v in variants if v[2] - v[0] >= 2 and v[3] - v[1] >= 2
            and all(v[0] <= x <= v[2] and v[1] <= y <= v[3] for x, y in clicks.positive)]
    return np.asarray([variants[0]] + [v for v in keep[1:] if not np.allclose(v, variants[0])] if keep else variants[:1])


def correct_box(decode: DecodeFn, box: np.ndarray, clicks: Clicks, bounds: tuple[float, float],
                image: Optional[np.ndarray] = None, focus: float = 0.15, tolerance: float = 0.08) -> SearchResult:
    """A box with corrective clicks. The box's own mask stands wherever no click says otherwise. For each click
    it breaks, the variant of the box that honours that click with the fewest pixels changed is found, and only
    its change around the click is taken: the connected part of the difference that holds the click (of intensity
    within ``tolerance`` of the click's, given the model-space ``image`` in [0, 1]), and only if it lies within
    ``focus`` × the box diagonal of the click. So a click edits the structure it lies on and nothing far away;
    a change that reaches farther (a side cut through the organ) is not taken."""
    base = decode(np.asarray(box, np.float64)[None])
    logits, iou = base.low_res_logits[0, 0].clone(), float(base.iou[0, 0])
    base_mask = (logits > 0).numpy()
    candidates = box_variants(box, base_mask, clicks, bounds)
    scores = np.zeros(len(candidates))
    if len(candidates) > 1:
        more = decode(candidates[1:])
        variant_logits = more.low_res_logits[:, 0]
        masks = (variant_logits > 0).numpy()
        closeness = mask_iou(masks, np.broadcast_to(base_mask, masks.shape))
        radius = focus * float(np.hypot(box[2] - box[0], box[3] - box[1]))
        rows, cols = np.indices(base_mask.shape)
        for click, wanted in [(p, True) for p in clicks.positive] + [(p, False) for p in clicks.negative]:
            if _inside(base_mask, click) == wanted:
                continue
            honours = np.array([_inside(m, click) == wanted for m in masks])
            if not honours.any():
                continue
            best = int(np.argmax(np.where(honours, closeness, -1.0)))
            scores[best + 1] += 1
            x, y = np.clip(np.round(click).astype(int), 0, base_mask.shape[-1] - 1)
            editable = masks[best] != base_mask
            if image is not None:
                level = float(np.median(image[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2]))
                editable &= np.abs(image - level) <= tolerance
            parts, _ = ndimage.label(editable)
            region = parts == parts[y, x]
            if parts[y, x] == 0 or np.any(region & ((cols - click[0]) ** 2 + (rows - click[1]) ** 2 > radius ** 2)):
                continue  # no change at the click, or one reaching far from it (a side cut through the organ)
            logits[torch.from_numpy(region)] = variant_logits[best][torch.from_numpy(region)]
    return SearchResult(np.asarray(box, np.float64), logits, iou, candidates, scores)


def _inside(mask: np.ndarray, point: np.ndarray) -> bool:
    size = mask.shape[-1]
    x, y = np.clip(np.round(point).astype(int), 0, size - 1)
    return bool(mask[y, x])
