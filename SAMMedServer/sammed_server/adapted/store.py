"""Trained automatic models as artefacts of kind ``auto_models``: trainable weights + a manifest with the mode,
build options, label table (organ names, colours), preprocessing, base model and training record."""

from __future__ import annotations

from typing import Any, Optional

from ..artefacts import load_artefact, save_artefact
from ..engine.backend import SamBackend
from ..engine.geometry import CanonicalFrame
from ..errors import InputError
from .base import AutoSegModel
from .data import ClassTable
from .preprocessing import PaperPreprocessing, preprocessing_for
from .training import TrainingRecord, load_trainable_state, trainable_state

ARTEFACT_KIND = "auto_models"
MODES = ("hsam", "masam", "decoder_only")
#: Learning rates measured best at CPU budgets (3 annotated CT slices, 80–200 steps): MA-SAM at 1e-3 overfits its
#: adapters (96 steps: liver/spleen 0.81/0.49) and at 3e-4 does not (0.96/0.94).
DEFAULT_LEARNING_RATES = {"hsam": 1e-3, "masam": 3e-4, "decoder_only": 1e-3}


def build_model(mode: str, backend: SamBackend, num_classes: int, options: Optional[dict[str, Any]] = None) -> AutoSegModel:
    """A fresh model of ``mode`` (``hsam``, ``masam`` or ``decoder_only``) with build ``options`` (e.g. rank)."""
    options = options or {}
    if mode == "hsam":
        from .hsam import build_hsam

        return build_hsam(backend, num_classes, **options)
    if mode == "masam":
        from .masam import build_masam

        return build_masam(backend, num_classes, **options)
    if mode == "decoder_only":
        from .baseline import build_decoder_only

        return build_decoder_only(backend, num_classes)
    raise InputError(f"unknown automatic model {mode!r}", f"use one of {', '.join(MODES)}")


def save_auto_model(model: AutoSegModel, name: str, classes: ClassTable, preprocessing: PaperPreprocessing,
                    backend: SamBackend, record: TrainingRecord, options: dict[str, Any],
                    training: dict[str, Any], frame: Optional[CanonicalFrame] = None) -> str:
    """Store ``model``'s trainable weights and everything needed to rebuild and use it; returns the artefact id."""
    manifest = {
        "mode": model.mode,
        "window": model.window,
        "num_classes": model.num_classes,
        "options": options,
        "classes": classes.to_manifest(),
        "preprocessing": preprocessing.describe(),
        "frame": frame.to_manifest() if frame else None,
        "base_model": backend.model_id,
        "base_weights_sha256": backend.weights_sha256,
        "input_size": backend.input_size,
        "training": {**training, **record.summary()},
    }
    return save_artefact(ARTEFACT_KIND, name, trainable_state(model), manifest)


def load_auto_model(artefact_id: str, backend: SamBackend) -> tuple[AutoSegModel, dict[str, Any]]:
    """The stored model rebuilt on ``backend`` (which must be its base model) in eval mode, and its manifest."""
    state, manifest = load_artefact(ARTEFACT_KIND, artefact_id, backend.weights_sha256)
    model = build_model(manifest["mode"], backend, manifest["num_classes"], manifest.get("options"))
    load_trainable_state(model, state)
    return model.eval(), manifest


def manifest_classes(manifest: dict[str, Any]) -> ClassTable:
    return ClassTable.from_manifest(manifest["classes"])


def manifest_preprocessing(manifest: dict[str, Any]) -> PaperPreprocessing:
    return preprocessing_for(manifest["preprocessing"]["name"])
