"""SAM-auto's SAP-Net: a spatial-aware prototype network on frozen SAM embeddings.

Wang et al. (2023), "SAM^Med: A medical image annotation framework based on large vision model": a small
trainable FCN on the frozen image embeddings, with a Fourier encoding of the pixel position concatenated
to its input, segments every slice by comparing features to prototypes of the annotated target; training
minimises a biased Dice loss (β > 1 punishes false positives) and the result is cleaned up by keeping the
K largest 3D connected components. The prototype head follows PANet (Wang et al., ICCV 2019, "PANet:
Few-Shot Image Semantic Segmentation with Prototype Alignment"): masked average pooling gives a foreground
and a background prototype, the segmentation is a softmax over scaled cosine similarities to them, and a
prototype-alignment loss makes prototypes from the query's prediction segment the support back.

Everything runs in the model's embedding space ``(E, E)`` (64×64 for LiteMedSAM); annotations get there
through :meth:`InputTransform.mask_to_model`, predictions come back through ``logits_to_slice``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ..artefacts import load_artefact, save_artefact
from ..engine.backend import SamBackend
from ..engine.geometry import CanonicalFrame
from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.preprocessing import InputTransform
from ..engine.volume import slice_index
from ..errors import CancelledError, InputError
from ..training.losses import biased_dice_loss

ARTEFACT_KIND = "sapnets"
ProgressFn = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class SAPNetConfig:
    """Network size, prototype head and training schedule."""

    channels: int = 64  # feature channels C of the FCN
    bands: int = 4  # Fourier frequency bands of the (x, y) position encoding (4·bands channels)
    scale: float = 20.0  # cosine-similarity scale (PANet's α)
    beta: float = 2.0  # biased Dice: weight of false positives
    alignment_weight: float = 1.0  # PANet prototype-alignment loss weight
    iterations: int = 60
    learning_rate: float = 3e-3
    seed: int = 0

    def check(self) -> "SAPNetConfig":
        if self.channels < 8 or self.channels % 8:
            raise InputError(f"SAP-Net channels must be a multiple of 8 (≥ 8), got {self.channels}")
        if self.bands < 0 or self.iterations < 1:
            raise InputError("SAP-Net needs bands ≥ 0 and iterations ≥ 1")
        if self.beta <= 0 or self.scale <= 0 or self.learning_rate <= 0 or self.alignment_weight < 0:
            raise InputError("SAP-Net beta, scale and learning rate must be positive (alignment weight ≥ 0)")
        return self


def fourier_positions(transform: InputTransform, size: int, bands: int) -> torch.Tensor:
    """``(4·bands, size, size)`` sin/cos encodings of each embedding cell's (x, y), normalised to [-1, 1] over
    the slice (not the padding), at frequencies ``2^b·π``, ``b < bands``."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * (transform.size / size)
    x = centres / transform.new_cols * 2 - 1
    y = centres / transform.new_rows * 2 - 1
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    frequencies = (2.0 ** torch.arange(bands, dtype=torch.float32) * torch.pi).view(-1, 1, 1)
    angles = torch.cat([xx[None] * frequencies, yy[None] * frequencies])
    return torch.cat([torch.sin(angles), torch.cos(angles)])


class SAPNet(nn.Module):
    """Embeddings ``(N, 256, E, E)`` + positions ``(N, 4·bands, E, E)`` → features ``(N, C, E, E)``."""

    def __init__(self, in_channels: int = 256, channels: int = 64, bands: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels + 4 * bands, channels, 1),
            nn.GroupNorm(8, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, embeddings: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([embeddings, positions], dim=1))


def masked_average(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Masked average pooling: features ``(N, C, E, E)``, weights ``(N, E, E)`` in [0, 1] → ``(C,)`` over all N."""
    total = weights.sum().clamp_min(1e-6)
    return (features * weights[:, None]).sum(dim=(0, 2, 3)) / total


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """Foreground logits ``(N, E, E)``: the two-way softmax over scaled cosine similarity to the
    ``(2, C)`` prototypes [background, foreground], written as the logit of its foreground probability."""
    similarity = torch.einsum("nchw,pc->nphw", F.normalize(features, dim=1), F.normalize(prototypes, dim=1))
    return scale * (similarity[:, 1] - similarity[:, 0])


@dataclass
class TrainedSAPNet:
    """A trained SAP-Net, its ``(2, C)`` [background, foreground] prototypes from all annotated slices,
    the training record, the target name (set when saved or loaded) and the canonical frame it learned in (None:
    the native slices of its training volume, as artefacts stored before frames existed)."""

    module: SAPNet
    prototypes: torch.Tensor
    config: SAPNetConfig
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    name: str = ""
    frame: Optional[CanonicalFrame] = None


@dataclass
class _Slices:
    """Annotated slices in embedding space: embeddings ``(N, 256, E, E)``, positions, fg and valid ``(N, E, E)``."""

    embeddings: torch.Tensor
    positions: torch.Tensor
    foreground: torch.Tensor
    valid: torch.Tensor

    @property
    def background(self) -> torch.Tensor:
        return (self.valid - self.foreground).clamp_min(0)


def train_sapnet(
    predictor: SlicePredictor,
    prepared: PreparedVolume,
    axis: int,
    annotations: Mapping[int, np.ndarray],
    config: SAPNetConfig = SAPNetConfig(),
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> TrainedSAPNet:
    """Train a SAP-Net on ``annotations`` ({slice index: binary ``(rows, cols)`` mask}) along ``axis``.

    Each step runs one episode per annotated slice: that slice is the query, the others are the support
    (the slice itself when it is the only one); loss = biased Dice + cross-entropy on the query plus the
    alignment loss on the support. ``progress(step, total, loss)``; ``cancel`` stops between steps.
    """
    config.check()
    slices = _annotated_slices(prepared, axis, annotations)
    data = _embed_slices(predictor, prepared, axis, slices, annotations, config.bands)
    with torch.random.fork_rng():  # seeded initialisation without touching the caller's random state
        torch.manual_seed(config.seed)
        module = SAPNet(data.embeddings.shape[1], config.channels, config.bands).train()
    optimiser = torch.optim.AdamW(module.parameters(), lr=config.learning_rate)
    count = len(slices)
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(config.iterations):
        if cancel is not None and cancel.is_set():
            raise CancelledError("SAP-Net training was cancelled")
        optimiser.zero_grad()
        features = module(data.embeddings, data.positions)
        loss = torch.zeros(())
        for query in range(count):
            support = [i for i in range(count) if i != query] or [query]
            loss = loss + _episode_loss(features, data, query, support, config) / count
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if progress:
            progress(step + 1, config.iterations, losses[-1])
    module.eval().requires_grad_(False)
    with torch.no_grad():
        prototypes = _prototypes(module(data.embeddings, data.positions), data.foreground, data.background)
    return TrainedSAPNet(module, prototypes, config, losses, time.perf_counter() - started)


def _episode_loss(features: torch.Tensor, data: _Slices, query: int, support: list[int], config: SAPNetConfig) -> torch.Tensor:
    """Segment the query with the support's prototypes; then (alignment) the support with the query's."""
    prototypes = _prototypes(features[support], data.foreground[support], data.background[support])
    logits = prototype_logits(features[query : query + 1], prototypes, config.scale)
    loss = _segmentation_loss(logits, data.foreground[query : query + 1], config.beta)
    if config.alignment_weight > 0:
        predicted = torch.sigmoid(logits) * data.valid[query : query + 1]
        back = _prototypes(features[query : query + 1], predicted, data.valid[query : query + 1] - predicted)
        aligned = prototype_logits(features[support], back, config.scale)
        loss = loss + config.alignment_weight * _segmentation_loss(aligned, data.foreground[support], config.beta)
    return loss


def _segmentation_loss(logits: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    return biased_dice_loss(logits, target, beta) + F.binary_cross_entropy_with_logits(logits, target)


def _prototypes(features: torch.Tensor, foreground: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    return torch.stack([masked_average(features, background), masked_average(features, foreground)])


def _annotated_slices(prepared: PreparedVolume, axis: int, annotations: Mapping[int, np.ndarray]) -> list[int]:
    shape = prepared.volume.slice_shape(axis)
    for k, mask in annotations.items():
        if np.shape(mask) != shape:
            raise InputError(f"the annotation of slice {k} has shape {np.shape(mask)}, slices along axis {axis} are {shape}")
    slices = sorted(k for k, mask in annotations.items() if np.asarray(mask).any())
    if not slices:
        raise InputError("no annotated slice to learn from: every given mask is empty",
                         "annotate the target on at least one slice")
    return slices


def _embed_slices(predictor: SlicePredictor, prepared: PreparedVolume, axis: int, slices: list[int],
                  annotations: Mapping[int, np.ndarray], bands: int) -> _Slices:
    transform = prepared.transform(axis)
    size = predictor.backend.embedding_size
    embeddings = torch.stack([predictor.embedding(prepared, axis, k).float() for k in slices])
    valid = _to_cells(transform, np.ones((transform.rows, transform.cols)), size)
    foreground = torch.stack([_to_cells(transform, annotations[k], size) for k in slices])
    positions = fourier_positions(transform, size, bands).expand(len(slices), -1, -1, -1)
    return _Slices(embeddings, positions, foreground, valid.expand(len(slices), -1, -1))


def _to_cells(transform: InputTransform, mask: np.ndarray, size: int) -> torch.Tensor:
    """A slice mask → the fraction of each ``(size, size)`` embedding cell it covers."""
    return (transform.mask_to_model(mask, size)[0] / 16.0 + 0.5).clamp(0, 1)


def coarse_segmentation(
    predictor: SlicePredictor,
    prepared: PreparedVolume,
    axis: int,
    trained: TrainedSAPNet,
    progress: Optional[ProgressFn] = None,
    cancel: Optional[threading.Event] = None,
    top_k: Optional[int] = 1,
) -> np.ndarray:
    """SAP-Net's coarse mask of the whole volume, ``(K, J, I)`` bool in the volume's array layout.

    Embeds every uncached slice first (``predictor.precompute``), then segments each slice with the trained
    prototypes; keeps the ``top_k`` largest 3D components (``None`` or 0: no clean-up).
    ``progress(done, total)`` counts slices embedded, then slices segmented (total = 2 × slices).
    """
    volume = prepared.volume
    count = volume.num_slices(axis)
    _check_embedding_size(trained, predictor)

    def embedded(done: int, total: int) -> None:
        if progress:
            progress(done, 2 * count)

    predictor.precompute(prepared, axis, progress=embedded, cancel=cancel)
    transform = prepared.transform(axis)
    size = predictor.backend.embedding_size
    positions = fourier_positions(transform, size, trained.config.bands)[None]
    mask = np.zeros(volume.array.shape, dtype=bool)
    with torch.no_grad():
        for index in range(count):
            if cancel is not None and cancel.is_set():
                raise CancelledError("auto-segmentation was cancelled")
            features = trained.module(predictor.embedding(prepared, axis, index).float()[None], positions)
            logits = prototype_logits(features, trained.prototypes, trained.config.scale)
            mask[slice_index(axis, index)] = (transform.logits_to_slice(logits)[0] > 0).numpy()
            if progress:
                progress(count + index + 1, 2 * count)
    return keep_top_k_components(mask, top_k) if top_k else mask


def keep_top_k_components(mask: np.ndarray, k: int = 1) -> np.ndarray:
    """The ``k`` largest 3D connected components (26-connectivity) of a binary ``mask`` (any shape, bool out)."""
    if k < 1:
        raise InputError(f"top-K must be at least 1, got {k}")
    mask = np.asarray(mask, bool)
    labels, found = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if found <= k:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes, kind="stable")[::-1][:k] + 1
    return np.isin(labels, keep)


def _check_embedding_size(trained: TrainedSAPNet, predictor: SlicePredictor) -> None:
    expected = trained.module.body[0].in_channels - 4 * trained.config.bands
    if expected != 256 or trained.prototypes.shape != (2, trained.config.channels):
        raise InputError(f"this SAP-Net does not fit {predictor.backend.model_id} embeddings")


def save_sapnet(trained: TrainedSAPNet, name: str, prepared: PreparedVolume, axis: int, slices: list[int],
                predictor: SlicePredictor) -> str:
    """Store a trained SAP-Net (weights + prototypes) as a "sapnets" artefact; returns its id."""
    state = {f"module.{k}": v.detach().cpu() for k, v in trained.module.state_dict().items()}
    state["prototypes"] = trained.prototypes.detach().cpu()
    manifest = {
        "base_model": predictor.backend.model_id,
        "base_weights_sha256": predictor.backend.weights_sha256,
        "target": name,
        "config": asdict(trained.config),
        "preprocessing": prepared.preprocessing.describe(),
        "frame": trained.frame.to_manifest() if trained.frame else None,
        "training": {"volume": prepared.volume.content_hash, "axis": axis, "slices": sorted(slices),
                     "seconds": round(trained.seconds, 2), "losses": [round(v, 4) for v in trained.losses]},
    }
    trained.name = name
    return save_artefact(ARTEFACT_KIND, name, state, manifest)


def load_sapnet(artefact_id: str, backend: SamBackend) -> TrainedSAPNet:
    """A stored SAP-Net, checked against ``backend``'s weights (a clear error when they differ)."""
    state, manifest = load_artefact(ARTEFACT_KIND, artefact_id, backend.weights_sha256)
    config = SAPNetConfig(**manifest["config"]).check()
    module = SAPNet(256, config.channels, config.bands)
    module.load_state_dict({k[len("module."):]: v for k, v in state.items() if k.startswith("module.")})
    module.eval().requires_grad_(False)
    training = manifest.get("training", {})
    return TrainedSAPNet(module, state["prototypes"].float(), config, list(training.get("losses", [])),
                         float(training.get("seconds", 0.0)), manifest.get("target", manifest.get("name", "")),
                         CanonicalFrame.from_manifest(manifest))

