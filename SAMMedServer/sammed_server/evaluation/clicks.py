"""The click protocol of the interactive-segmentation literature, beside a box, on the slices of each organ.

Clicks only: the first "+" click at the object's centre (the maximum of its distance transform), every next one
at the centre of the largest error region ("+" on missed foreground, "−" on false foreground), each decoded with
all clicks so far (Xu et al., CVPR 2016; Sofiiuk et al., RITM, 2022). Dice after each click and NoC@90, the
number of clicks until Dice ≥ 0.90 (capped at the click budget when never reached). Box: the organ's tight box;
box + clicks: the same box then corrective clicks, Dice after each, and how often Dice fell from one click to the
next.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np
from scipy import ndimage

from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.prompts import SlicePrompts
from ..engine.volume import check_axis, slice_index
from ..errors import CancelledError, InputError
from .metrics import dice
from .prompt_simulation import tight_box
from .protocols import corrective_click

ProgressFn = Callable[[int, int, str], None]


@dataclass
class SliceClicks:
    """One organ on one slice: Dice of the box, after each click alone, and after box + each click."""

    organ: str
    index: int
    box: float
    clicks: list[float] = field(default_factory=list)  # Dice after click 1, 2, ...
    box_clicks: list[float] = field(default_factory=list)  # Dice after box + click 1, 2, ...
    seconds_per_click: float = 0.0

    def noc(self, threshold: float = 0.90) -> int:
        """Clicks until Dice ≥ ``threshold``; the click budget when never reached."""
        reached = [i + 1 for i, d in enumerate(self.clicks) if d >= threshold]
        return reached[0] if reached else len(self.clicks)

    def falls(self) -> int:
        """How many times box + clicks lost Dice (by more than 0.001) from one step to the next, box included."""
        steps = [self.box] + self.box_clicks
        return sum(b < a - 1e-3 for a, b in zip(steps, steps[1:]))


def largest_slices(mask: np.ndarray, axis: int, count: int) -> list[int]:
    """The ``count`` slices along ``axis`` where the ``(K, J, I)`` mask has the most foreground, in slice order."""
    sums_over = {0: (0, 1), 1: (0, 2), 2: (1, 2)}[check_axis(axis)]
    areas = mask.sum(axis=sums_over)
    picked = [int(k) for k in np.argsort(areas, kind="stable")[::-1][:count] if areas[k] > 0]
    return sorted(picked)


def centre_click(reference: np.ndarray) -> tuple[float, float]:
    """``(x, y)`` of the foreground pixel farthest from the background."""
    depth = ndimage.distance_transform_edt(np.pad(reference, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return float(x), float(y)


def evaluate_clicks(
    predictor: SlicePredictor,
    prepared: PreparedVolume,
    axis: int,
    labels: np.ndarray,
    organs: Mapping[str, int],
    clicks: int = 5,
    slices_per_organ: int = 3,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
) -> list[SliceClicks]:
    """The click protocol on each organ's ``slices_per_organ`` largest slices ({name: label value} in ``labels``)."""
    axis = check_axis(axis)
    if labels.shape != prepared.volume.array.shape:
        raise InputError(f"the labelmap has shape {labels.shape}, the volume {prepared.volume.array.shape}")
    if clicks < 1 or slices_per_organ < 1:
        raise InputError("clicks and slices per organ must be ≥ 1")
    work = [(name, k) for name, value in organs.items() for k in largest_slices(labels == value, axis, slices_per_organ)]
    results = []
    for done, (name, k) in enumerate(work, 1):
        if cancel is not None and cancel.is_set():
            raise CancelledError("evaluation was cancelled")
        reference = labels[slice_index(axis, k)] == organs[name]
        results.append(_one_slice(predictor, prepared, axis, k, name, reference, clicks))
        if progress:
            progress(done, len(work), f"{name} slice {k}")
    return results


def _one_slice(predictor: SlicePredictor, prepared: PreparedVolume, axis: int, k: int, name: str,
               reference: np.ndarray, clicks: int) -> SliceClicks:
    def run(box) -> list[float]:
        points, labels, scores = [centre_click(reference)] if box is None else [], [1] if box is None else [], []
        mask = predictor.predict(prepared, axis, k, SlicePrompts(box=box)).masks[0] if box is not None else None
        while len(scores) < clicks:
            if mask is not None:
                corrected = corrective_click(mask, reference)
                if corrected is None:  # perfect: every further click would change nothing
                    scores.append(scores[-1] if scores else 1.0)
                    continue
                points.append(corrected[0])
                labels.append(corrected[1])
            mask = predictor.predict(prepared, axis, k, SlicePrompts(points=list(points), labels=list(labels), box=box)).masks[0]
            scores.append(dice(mask, reference))
        return scores

    box = tight_box(reference)
    box_dice = dice(predictor.predict(prepared, axis, k, SlicePrompts(box=box)).masks[0], reference)
    started = time.perf_counter()
    alone = run(None)
    seconds = (time.perf_counter() - started) / clicks
    return SliceClicks(name, k, box_dice, alone, run(box), seconds)


def summary_rows(results: list[SliceClicks], report: tuple[int, ...] = (1, 3, 5)) -> list[dict]:
    """Per organ (and the mean over organs): box Dice, Dice after each reported click, NoC@90, box + clicks Dice
    after the last click and the count of falls; ``n`` slices."""
    rows = []
    for organ in dict.fromkeys(r.organ for r in results):
        mine = [r for r in results if r.organ == organ]
        row = {"organ": organ, "n": len(mine), "box": float(np.mean([r.box for r in mine]))}
        for c in report:
            row[f"click {c}"] = float(np.mean([r.clicks[c - 1] for r in mine if len(r.clicks) >= c]))
        row["NoC@90"] = float(np.mean([r.noc() for r in mine]))
        row["box + clicks"] = float(np.mean([r.box_clicks[-1] for r in mine]))
        row["falls"] = int(sum(r.falls() for r in mine))
        row["s/click"] = float(np.mean([r.seconds_per_click for r in mine]))
        rows.append(row)
    return rows


def markdown_summary(rows: list[dict]) -> str:
    """The rows of :func:`summary_rows` as a Markdown table (organs as rows)."""
    if not rows:
        return ""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys) + " |")
    return "\n".join(lines)
