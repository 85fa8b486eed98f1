"""What the worker answers, as frozen dataclasses (health, models, volumes, predictions, jobs, artefacts, masks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .wire import decode_array


@dataclass(frozen=True)
class Health:
    service: str
    version: str
    protocol: int
    device: str
    default_model: str
    models_loaded: list
    auth: bool
    max_request_bytes: int
    max_upload_bytes: int


@dataclass(frozen=True)
class ModelInfo:
    id: str
    description: str
    input_size: int
    box_only: bool
    default: bool
    loaded: bool
    checkpoint_present: bool


@dataclass(frozen=True)
class VolumeInfo:
    """``id`` is the content hash; ``created`` is False when the server already had the volume."""

    id: str
    shape_ijk: tuple
    dtype: str
    spacing: tuple
    origin: tuple
    direction: tuple
    source: str
    created: bool


@dataclass(frozen=True)
class PredictResult:
    """``masks (M, rows, cols)`` bool at slice resolution, ``scores (M,)`` predicted IoU, ``best`` index;
    ``lasso_dice (M,)``: with a lasso, each mask's Dice with it (the masks lie inside it), else None."""

    volume_id: str
    axis: int
    index: int
    model: str
    masks: np.ndarray = field(repr=False)
    scores: np.ndarray
    best: int
    cached: bool
    timing_ms: dict
    lasso_dice: Optional[np.ndarray] = None

    @property
    def mask(self) -> np.ndarray:
        """The best mask, ``(rows, cols)`` bool."""
        return self.masks[self.best]

    @property
    def score(self) -> float:
        return float(self.scores[self.best])


@dataclass(frozen=True)
class JobStatus:
    """``state``: queued, running, succeeded, failed or cancelled; ``error`` is the error model dict."""

    id: str
    kind: str
    state: str
    progress: float
    message: str
    log: list
    result: Optional[dict]
    error: Optional[dict]
    created: float
    started: Optional[float]
    finished: Optional[float]
    metrics: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed", "cancelled")


AUTO_MODEL_MODES = {"hsam": "H-SAM", "masam": "MA-SAM", "decoder_only": "decoder only"}


@dataclass(frozen=True)
class ArtefactInfo:
    """A stored prompt encoder (``prompt_encoders``), SAP-Net (``sapnets``) or H-SAM/MA-SAM model (``auto_models``)."""

    id: str
    kind: str
    name: str
    base_model: str
    created: str
    manifest: dict = field(repr=False)

    @property
    def label(self) -> str:
        """How the panel lists it: the name, then what it is (prompt type; model and organs) or when it was made."""
        if self.kind == "auto_models":
            mode = self.manifest.get("mode", "?")
            organs = ", ".join(c["name"] for c in self.manifest.get("classes", []))
            return f"{self.name} ({AUTO_MODEL_MODES.get(mode, mode)}: {organs})"
        if self.kind == "prompt_encoders":
            return f"{self.name}: {self.manifest.get('prompt_type', 'point')}, {self.created}"
        return f"{self.name}, {self.created}"


@dataclass(frozen=True)
class SliceMasks:
    """Result of a propagation: ``masks (n, rows, cols)`` for ``indices`` along ``axis``; why each direction stopped."""

    axis: int
    indices: list
    masks: np.ndarray = field(repr=False)
    scores: list
    stopped: dict


@dataclass(frozen=True)
class VolumeMasks:
    """Result of an auto-segmentation: ``masks (L, K, J, I)`` bool, one per entry of ``labels`` (value, name, color)."""

    labels: list
    masks: np.ndarray = field(repr=False)


def propagation_result(status: JobStatus) -> SliceMasks:
    """The masks of a finished propagation job."""
    result = status.result or {}
    return SliceMasks(result["axis"], list(result["indices"]), decode_array(result["masks"]), list(result["scores"]),
                      dict(result["stopped"]))


def volume_masks(status: JobStatus) -> VolumeMasks:
    """The label masks of a finished auto-segmentation job."""
    result = status.result or {}
    return VolumeMasks(list(result["labels"]), decode_array(result["masks"]))
