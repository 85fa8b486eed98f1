"""SAM^Med's evaluation protocols on a labelled volume, organ by organ, on the slices that contain the organ.

Wang et al. (2023), "SAM^Med: A medical image annotation framework based on large vision model", Tables 2, 4
and 5: random foreground points (1/3/5/10) and jittered boxes with SAM's own prompt encoder; prompt encoders
learned from 2 or 5 slices (point, box, composite), scored on the other slices of the organ (held-out) and on
the training slices (held-in); an active composite protocol (a box, then corrective clicks); SAP-Net volume
Dice with and without the top-K component post-processing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Optional

import numpy as np
from scipy import ndimage
from torch import nn

from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.prompts import SlicePrompts
from ..engine.volume import check_axis, slice_index
from ..errors import CancelledError, InputError
from ..sammed.learned_prompts import PromptTrainingConfig, train_prompt_encoder
from ..sammed.prompt_sampling import jittered_box, sample_points
from .metrics import dice
from .prompt_simulation import tight_box

ProgressFn = Callable[[int, int, str], None]  # (steps done, total steps, what was just done)
CSV_COLUMNS = ("organ", "protocol", "prompt", "encoder", "train_slices", "slices", "n", "dice_mean", "dice_sd",
               "seconds", "train_seconds")


@dataclass(frozen=True)
class EvaluationConfig:
    """What to run. ``max_eval_slices`` (evenly spaced) and fewer point counts / clicks make a quick run."""

    point_counts: tuple[int, ...] = (1, 3, 5, 10)
    train_slices: tuple[int, ...] = (2, 5)
    learned_types: tuple[str, ...] = ("point", "box", "composite")  # prompt encoders to train
    d_in: float = 2.0  # box jitter in slice pixels, as prompt_sampling.jittered_box
    d_out: float = 6.0
    clicks: int = 5  # corrective clicks after the box in the active composite protocol
    max_eval_slices: Optional[int] = None
    training: PromptTrainingConfig = PromptTrainingConfig(iterations=40)  # the CLI's `train` defaults
    sapnet: bool = True
    seed: int = 0

    def check(self) -> "EvaluationConfig":
        if not self.point_counts or min(self.point_counts) < 1:
            raise InputError("point counts must be positive integers")
        if any(t not in ("point", "box", "composite") for t in self.learned_types):
            raise InputError(f"learned prompt types must be point, box or composite, got {list(self.learned_types)}")
        if any(n < 1 for n in self.train_slices):
            raise InputError(f"training slice counts must be ≥ 1, got {list(self.train_slices)}")
        if self.clicks < 0 or (self.max_eval_slices is not None and self.max_eval_slices < 1):
            raise InputError("clicks must be ≥ 0 and max_eval_slices ≥ 1")
        self.training.check()
        return self


@dataclass
class ResultRow:
    """One organ × protocol × setting. ``slices`` is "all", "held-in", "held-out" (of a ``train_slices``-slice
    training draw) or "volume" (one 3D Dice, so ``dice_sd`` is NaN)."""

    organ: str
    protocol: str
    prompt: str
    encoder: str
    train_slices: int
    slices: str
    n: int
    dice_mean: float
    dice_sd: float
    seconds: float
    train_seconds: float = 0.0

    def label(self) -> str:
        """The row name in the Markdown table."""
        setting = "" if self.slices == "all" else f", {self.slices}"
        return f"{self.protocol}: {self.prompt} — {self.encoder}{setting}"


@dataclass
class _Organ:
    name: str
    mask: np.ndarray  # (K, J, I) bool
    slices: list[int] = field(default_factory=list)  # along the axis, with foreground


def evaluate(
    predictor: SlicePredictor,
    prepared: PreparedVolume,
    axis: int,
    labels: np.ndarray,
    organs: Mapping[str, int],
    config: EvaluationConfig = EvaluationConfig(),
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
) -> list[ResultRow]:
    """Run every protocol for each organ ({name: label value} in ``labels``, a ``(K, J, I)`` labelmap)."""
    config.check()
    axis = check_axis(axis)
    labels = np.asarray(labels)
    if labels.shape != prepared.volume.array.shape:
        raise InputError(f"the labelmap has shape {labels.shape}, the volume {prepared.volume.array.shape}")
    targets = []
    for name, value in organs.items():
        mask = labels == value
        slices = [k for k in range(prepared.volume.num_slices(axis)) if mask[slice_index(axis, k)].any()]
        if not slices:
            raise InputError(f"{name} (label {value}) is not in the labelmap", "check --organs and --label-names")
        targets.append(_Organ(name, mask, slices))
    steps = len(config.point_counts) + 2 + len(config.train_slices) * (len(config.learned_types) + 2 * config.sapnet)
    total, done = steps * len(targets), 0
    rows: list[ResultRow] = []

    def step(what: str) -> None:
        nonlocal done
        if cancel is not None and cancel.is_set():
            raise CancelledError("evaluation was cancelled")
        done += 1
        if progress:
            progress(done, total, what)

    for index, organ in enumerate(targets):
        run = _OrganRun(predictor, prepared, axis, organ, config, np.random.default_rng([config.seed, index]))
        rows += run.all_protocols(step)
    return rows


class _OrganRun:
    """The protocols of one organ; per-slice Dice is kept so raw results can be reported on any subset."""

    def __init__(self, predictor: SlicePredictor, prepared: PreparedVolume, axis: int, organ: _Organ,
                 config: EvaluationConfig, rng: np.random.Generator) -> None:
        self.predictor, self.prepared, self.axis, self.organ, self.config, self.rng = (
            predictor, prepared, axis, organ, config, rng)
        self.raw_encoder = predictor.backend.prompt_encoder
        self.rows: list[ResultRow] = []

    def reference(self, k: int) -> np.ndarray:
        return self.organ.mask[slice_index(self.axis, k)]

    def all_protocols(self, step: Callable[[str], None]) -> list[ResultRow]:
        config, name = self.config, self.organ.name
        eval_slices = _spread(self.organ.slices, config.max_eval_slices)
        protocols = [("points", c, self.point_dice) for c in config.point_counts]
        protocols += [("box", 0, self.box_dice), ("composite", 0, self.active_dice)]
        raw = {}
        for kind, count, fn in protocols:
            scores, seconds = self.score(fn, eval_slices, self.raw_encoder, count)
            raw[kind, count] = scores
            self.add(kind, count, "raw SAM", 0, "all", scores, seconds)
            step(f"{name}: {kind}{f' ×{count}' if count else ''}, raw SAM")
        for n in config.train_slices:
            train = training_slices(self.organ.slices, n, self.rng)
            held_out = _spread([k for k in self.organ.slices if k not in train], config.max_eval_slices)
            for kind, count, fn in protocols:  # raw SAM on the same held-in slices, for comparison
                scores = raw[kind, count]
                scores.update({k: fn(k, self.raw_encoder, count) for k in train if k not in scores})
                self.add(kind, count, "raw SAM", n, "held-in", {k: scores[k] for k in train}, 0.0)
            self.learned(n, train, held_out, step)
            if config.sapnet:
                self.sapnet(n, train, step)
        return self.rows

    def learned(self, n: int, train: list[int], held_out: list[int], step: Callable[[str], None]) -> None:
        """Train the point / box / composite encoders on ``train``; score held-out and held-in slices."""
        annotations = {k: self.reference(k) for k in train}
        evaluations = {"point": [("points", c, self.point_dice) for c in self.config.point_counts],
                       "box": [("box", 0, self.box_dice)], "composite": [("composite", 0, self.active_dice)]}
        for prompt_type in self.config.learned_types:
            protocols = evaluations[prompt_type]
            settings = replace(self.config.training, prompt_type=prompt_type, seed=int(self.rng.integers(2**31)))
            trained = train_prompt_encoder(self.predictor, self.prepared, self.axis, annotations, settings)
            encoder = f"learned {prompt_type} ({n} slices)"
            for kind, count, fn in protocols:
                for setting, slices in (("held-out", held_out), ("held-in", train)):
                    scores, seconds = self.score(fn, slices, trained.module, count)
                    self.add(kind, count, encoder, n, setting, scores, seconds, trained.seconds)
            step(f"{self.organ.name}: {prompt_type} encoder on {n} slices")

    def sapnet(self, n: int, train: list[int], step: Callable[[str], None]) -> None:
        """SAP-Net from the ``train`` slices: coarse volume Dice without and with top-1 component clean-up,
        and SAM-auto (coarse box → SAM) with the clean-up."""
        from ..sammed.auto_segment import auto_segment
        from ..sammed.sapnet import coarse_segmentation, keep_top_k_components, train_sapnet

        annotations = {k: self.reference(k) for k in train}
        trained = train_sapnet(self.predictor, self.prepared, self.axis, annotations)
        started = time.perf_counter()
        coarse = coarse_segmentation(self.predictor, self.prepared, self.axis, trained, top_k=None)
        seconds = time.perf_counter() - started
        for prompt, mask in (("coarse", coarse), ("coarse + top-1 component", keep_top_k_components(coarse, 1))):
            self.add_volume("SAP-Net", prompt, n, mask, seconds, trained.seconds)
        step(f"{self.organ.name}: SAP-Net on {n} slices")
        started = time.perf_counter()
        auto = auto_segment(self.predictor, self.prepared, self.axis, trained, prompt="box", top_k=1)
        self.add_volume("SAM-auto", "SAP-Net box → SAM + top-1 component", n, auto.mask,
                        time.perf_counter() - started, trained.seconds)
        step(f"{self.organ.name}: SAM-auto on {n} slices")

    def score(self, fn: Callable[..., float], slices: list[int], encoder: nn.Module, *args) -> tuple[dict[int, float], float]:
        started = time.perf_counter()
        scores = {k: fn(k, encoder, *args) for k in slices}
        return scores, time.perf_counter() - started

    def add(self, kind: str, count: int, encoder: str, n: int, setting: str, scores: dict[int, float],
            seconds: float, train_seconds: float = 0.0) -> None:
        prompt = {"points": f"{count} point{'s' if count > 1 else ''}", "box": "jittered box",
                  "composite": f"box + ≤{self.config.clicks} clicks (best)"}[kind]
        values = np.asarray(list(scores.values()), dtype=np.float64)
        self.rows.append(ResultRow(
            self.organ.name, kind, prompt, encoder, n, setting, len(values),
            float(values.mean()) if len(values) else float("nan"),
            float(values.std()) if len(values) else float("nan"), seconds, train_seconds))

    def add_volume(self, protocol: str, prompt: str, n: int, mask: np.ndarray, seconds: float, train_seconds: float) -> None:
        self.rows.append(ResultRow(self.organ.name, protocol, prompt, f"SAP-Net ({n} slices)", n, "volume",
                                   len(self.organ.slices), dice(mask, self.organ.mask), float("nan"), seconds, train_seconds))

    def decode(self, k: int, prompts: SlicePrompts, encoder: nn.Module):
        return self.predictor.predict(self.prepared, self.axis, k, prompts, encoder)

    def point_dice(self, k: int, encoder: nn.Module, count: int) -> float:
        """``count`` foreground points drawn uniformly inside the reference."""
        reference = self.reference(k)
        points = sample_points(reference, count, "uniform", self.rng)
        prediction = self.decode(k, SlicePrompts(points=[tuple(p) for p in points], labels=[1] * count), encoder)
        return dice(prediction.masks[0], reference)

    def box_dice(self, k: int, encoder: nn.Module, _: int = 0) -> float:
        """The reference's box jittered by [−d_in, d_out] per side."""
        reference = self.reference(k)
        box = jittered_box(reference, self.config.d_in, self.config.d_out, self.rng)
        return dice(self.decode(k, SlicePrompts(box=tuple(box)), encoder).masks[0], reference)

    def active_dice(self, k: int, encoder: nn.Module, _: int = 0) -> float:
        """A tight box, then corrective clicks (:func:`corrective_click`), each decoded with the previous logits
        as mask input; the best Dice along the way."""
        reference = self.reference(k)
        points: list[tuple[float, float]] = []
        labels: list[int] = []
        prompts = SlicePrompts(box=tight_box(reference))
        best = 0.0
        for click in range(self.config.clicks + 1):
            prediction = self.decode(k, prompts, encoder)
            best = max(best, dice(prediction.masks[0], reference))
            corrected = corrective_click(prediction.masks[0], reference)
            if corrected is None or click == self.config.clicks:
                break
            points.append(corrected[0])
            labels.append(corrected[1])
            prompts = SlicePrompts(points=list(points), labels=list(labels), box=prompts.box,
                                   mask_input=prediction.low_res_logits[:1])
        return best


def corrective_click(prediction: np.ndarray, reference: np.ndarray) -> Optional[tuple[tuple[float, float], int]]:
    """The click an annotator would add: at the interior (distance-transform maximum) of the largest error
    region, label 1 if it is missed foreground (FN), 0 if it is false foreground (FP); None if no error."""
    best = None
    for error, label in ((reference & ~prediction, 1), (prediction & ~reference, 0)):
        parts, count = ndimage.label(error)
        if count == 0:
            continue
        sizes = ndimage.sum_labels(error, parts, index=np.arange(1, count + 1))
        largest = int(np.argmax(sizes)) + 1
        if best is None or sizes[largest - 1] > best[0]:
            best = (sizes[largest - 1], parts == largest, label)
    if best is None:
        return None
    depth = ndimage.distance_transform_edt(best[1])
    y, x = np.unravel_index(int(np.argmax(depth)), depth.shape)
    return (float(x), float(y)), best[2]


def training_slices(slices: list[int], n: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct slices of ``slices`` (an organ's foreground slices) drawn ~N(median, sd of ``slices``),
    as SAM^Med picks its annotated slices; all of them when there are at most ``n``."""
    if len(slices) <= n:
        return sorted(slices)
    centre, sd = float(np.median(slices)), max(float(np.std(slices)), 1.0)
    picked: set[int] = set()
    while len(picked) < n:
        draw = int(round(rng.normal(centre, sd)))
        if draw in slices:
            picked.add(draw)
    return sorted(picked)


def _spread(slices: list[int], limit: Optional[int]) -> list[int]:
    """At most ``limit`` evenly spaced members of ``slices`` (all when ``limit`` is None)."""
    if limit is None or len(slices) <= limit:
        return list(slices)
    return [slices[int(i)] for i in np.linspace(0, len(slices) - 1, limit).round()]
