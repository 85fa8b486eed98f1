"""One automatic-model training job end to end: data → features → training (checkpointed) → stored artefact.

This is what ``sammed-server train hsam|masam`` runs (and what the HTTP layer can run as a background job).
The checkpoint lives under ``<SAMMED_HOME>/training/<job fingerprint>/checkpoint.pt``: the same job (same
model, classes, volumes, slices, preprocessing, base weights and optimiser settings) started with ``resume``
continues from it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..engine.backend import SamBackend
from ..engine.cache import EmbeddingCache
from ..settings import home_dir
from .augmentation import AugmentedStems, RandomRotateScale
from .data import AnnotatedVolume, ClassTable, in_canonical_frame, training_windows
from .features import FeatureSource
from .preprocessing import preprocessing_for
from .store import build_model, save_auto_model
from .training import AutoTrainingConfig, ProgressFn, TrainingRecord, train_auto_model


@dataclass(frozen=True)
class TrainedAuto:
    artefact_id: str
    record: TrainingRecord
    checkpoint: Path


def job_fingerprint(mode: str, options: dict[str, Any], classes: ClassTable, volumes: Sequence[AnnotatedVolume],
                    axis: int, config: AutoTrainingConfig, backend: SamBackend) -> str:
    """Identifies a training job for resuming (the length of training is not part of it: it may be extended)."""
    record = {
        "mode": mode, "options": options, "classes": classes.to_manifest(), "axis": axis,
        "volumes": [[v.volume.content_hash, list(v.slices)] for v in volumes], "base": backend.weights_sha256,
        "config": {k: v for k, v in asdict(config).items() if k not in ("iterations", "minutes", "checkpoint_every")},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def run_training_job(
    mode: str,
    backend: SamBackend,
    volumes: Sequence[AnnotatedVolume],
    classes: ClassTable,
    config: AutoTrainingConfig,
    cache: EmbeddingCache,
    name: Optional[str] = None,
    options: Optional[dict[str, Any]] = None,
    axis: int = 2,
    resume: bool = False,
    progress: Optional[ProgressFn] = None,
    feature_progress: Optional[Callable[[int, int], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> TrainedAuto:
    """Train a ``mode`` model (``hsam``, ``masam``, ``decoder_only``) on the annotated slices (along ``axis``) of
    ``volumes``, seen in the canonical frame, and store it; ``feature_progress(done, total)`` reports the feature
    pass, ``progress(step, total, loss)`` training."""
    config.check()
    volumes, frame = in_canonical_frame(volumes, axis)
    axis = frame.axis
    options = dict(options or {})
    model = build_model(mode, backend, classes.num_classes, options)
    preprocessing = preprocessing_for(mode)
    features = FeatureSource(backend, preprocessing, cache, frozen_encoder=model.frozen_encoder)
    samples = training_windows(volumes, classes, features, model.window, axis, feature_progress, cancel,
                               images=config.augment)
    prepare = AugmentedStems(features, RandomRotateScale()) if config.augment else None
    fingerprint = job_fingerprint(mode, options, classes, volumes, axis, config, backend)
    checkpoint = home_dir() / "training" / f"{mode}-{fingerprint}" / "checkpoint.pt"
    # balanced per volume: each volume is drawn as often, whatever its number of annotated slices
    weights = [1 / len(v.slices) for v in volumes for _ in v.slices] if len(volumes) > 1 else None
    record = train_auto_model(model, samples, config, checkpoint, resume, progress, cancel, prepare, weights)
    training = {"axis": axis, "volumes": [{"volume": v.volume.content_hash, "slices": list(v.slices)} for v in volumes],
                "config": asdict(config), "job": fingerprint}
    artefact_id = save_auto_model(model, name or f"{mode}-{'-'.join(classes.names)}", classes, preprocessing, backend,
                                  record, options, training, frame)
    return TrainedAuto(artefact_id, record, checkpoint)
