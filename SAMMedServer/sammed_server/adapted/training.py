"""Training an automatic model on cached features, with checkpoints that a killed or cancelled job resumes from.

Each step draws ``batch_size`` windows at random (seeded generator, whose state is checkpointed with the
weights, the optimiser and the step count), so a resumed run continues exactly where the interrupted one stopped.
The run ends after ``iterations`` steps or ``minutes`` of training time (summed over resumes), whichever is set.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..errors import CancelledError, CheckpointError, InputError
from .base import AutoSegModel

ProgressFn = Callable[[int, Optional[int], float], None]  # (step, total steps or None, loss)
#: Turns a batch of sample inputs and labels into model inputs, drawing from the run's generator (augmentation).
BatchPreparation = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class AutoTrainingConfig:
    """How long and how an automatic model trains (AdamW, constant learning rate after a linear warm-up)."""

    iterations: Optional[int] = None
    minutes: Optional[float] = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup: int = 3
    batch_size: int = 1
    seed: int = 0
    checkpoint_every: int = 5
    augment: bool = False  # random rotation and scaling per window (augmentation.py); stems recomputed every step

    def check(self) -> "AutoTrainingConfig":
        if (self.iterations is None) == (self.minutes is None):
            raise InputError("give exactly one of iterations and minutes", "use --iterations N or --minutes M")
        if (self.iterations is not None and self.iterations < 1) or (self.minutes is not None and self.minutes <= 0):
            raise InputError("iterations and minutes must be positive")
        if self.batch_size < 1 or self.checkpoint_every < 1 or self.learning_rate <= 0:
            raise InputError("batch size, checkpoint interval and learning rate must be positive")
        return self


@dataclass
class TrainingRecord:
    """What happened: steps done, loss per step, training seconds (over all resumes), resumes."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    resumed_from: list[int] = field(default_factory=list)

    def summary(self) -> dict:
        return {**asdict(self), "losses": [round(v, 4) for v in self.losses]}


def train_auto_model(
    model: AutoSegModel,
    samples: Sequence[tuple[torch.Tensor, torch.Tensor]],
    config: AutoTrainingConfig,
    checkpoint: Optional[Path] = None,
    resume: bool = False,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
    prepare: Optional[BatchPreparation] = None,
    weights: Optional[Sequence[float]] = None,
) -> TrainingRecord:
    """Train ``model``'s trainable parameters on ``samples`` (``(features (T, ...), labels (T, S, S))`` pairs).

    ``checkpoint``: file written every ``checkpoint_every`` steps, on cancel and at the end; with ``resume`` an
    existing one is loaded first. ``prepare`` maps each batch of sample inputs and labels to model inputs (e.g.
    ``augmentation.AugmentedStems`` on image samples), drawing from the checkpointed generator so that a resumed
    run stays exact. ``cancel`` stops between steps (after checkpointing) with :class:`CancelledError`.
    ``weights`` (one per sample) make some samples likelier to be drawn (None: uniform).
    """
    config.check()
    if not samples:
        raise InputError("no annotated slices to train on")
    device = next(model.parameters()).device
    parameters = model.trainable_parameters()
    optimiser = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    record = TrainingRecord()
    if resume and checkpoint is not None and checkpoint.is_file():
        _load_checkpoint(checkpoint, model, optimiser, generator, record)
        record.resumed_from.append(record.steps)
    model.train()
    started = time.perf_counter() - record.seconds
    while not _finished(config, record):
        if cancel is not None and cancel.is_set():
            _save_checkpoint(checkpoint, model, optimiser, generator, record)
            raise CancelledError(f"training was cancelled after {record.steps} steps",
                                 "resume it later with --resume" if checkpoint else "")
        for group in optimiser.param_groups:
            group["lr"] = config.learning_rate * min(1.0, (record.steps + 1) / max(config.warmup, 1))
        picks = (torch.randint(len(samples), (config.batch_size,), generator=generator) if weights is None else
                 torch.multinomial(torch.tensor(weights, dtype=torch.float64), config.batch_size, True,
                                   generator=generator)).tolist()
        stems = torch.stack([samples[i][0] for i in picks]).to(device)
        labels = torch.stack([samples[i][1] for i in picks]).to(device)
        if prepare is not None:
            stems, labels = prepare(stems, labels, generator)
        optimiser.zero_grad(set_to_none=True)
        loss = model.training_loss(stems, labels, _progress(config, record))
        loss.backward()
        optimiser.step()
        record.steps += 1
        record.losses.append(float(loss.detach()))
        record.seconds = time.perf_counter() - started
        if record.steps % config.checkpoint_every == 0:
            _save_checkpoint(checkpoint, model, optimiser, generator, record)
        if progress:
            progress(record.steps, config.iterations, record.losses[-1])
    _save_checkpoint(checkpoint, model, optimiser, generator, record)
    model.eval()
    return record


def _finished(config: AutoTrainingConfig, record: TrainingRecord) -> bool:
    if config.iterations is not None:
        return record.steps >= config.iterations
    return record.seconds >= 60 * config.minutes


def _progress(config: AutoTrainingConfig, record: TrainingRecord) -> float:
    """Fraction of training done, for scheduled loss weights."""
    if config.iterations is not None:
        return record.steps / config.iterations
    return min(1.0, record.seconds / (60 * config.minutes))


def trainable_state(model: AutoSegModel) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (the frozen backbone is rebuilt from the base model, not stored)."""
    ids = {id(p) for p in model.trainable_parameters()}
    return {name: p.detach().cpu().clone() for name, p in model.named_parameters() if id(p) in ids}


def load_trainable_state(model: AutoSegModel, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`trainable_state` output; every trainable parameter must be present with its shape."""
    expected = trainable_state(model)
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise CheckpointError("the stored weights do not fit this model (different classes, rank or base model)",
                              "train it again")
    model.load_state_dict(state, strict=False)


def _save_checkpoint(path: Optional[Path], model, optimiser, generator, record: TrainingRecord) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"model": trainable_state(model), "optimiser": optimiser.state_dict(),
                "generator": generator.get_state(), "record": asdict(record)}, partial)
    os.replace(partial, path)  # atomic: a kill never leaves a half-written checkpoint


def _load_checkpoint(path: Path, model, optimiser, generator, record: TrainingRecord) -> None:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        load_trainable_state(model, saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        generator.set_state(saved["generator"])
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}", "start again without --resume") from None
    for name, value in saved["record"].items():
        setattr(record, name, value)
