"""Model inputs of automatic models: per-slice stem outputs (or frozen embeddings), computed once and cached.

A slice's features are its paper-preprocessed intensities (``preprocessing.py``), resized and padded to the
backbone input (``InputTransform``), normalised as the backbone expects, then run through the frozen stem
(``stem.FrozenStem``) — or, for frozen-encoder models, the whole frozen encoder. They go through an
:class:`EmbeddingCache` under the backbone's weights and the preprocessing's fingerprint, so a volume's slices are
encoded once across training runs and segmentations.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np
import torch

from ..engine.backend import SamBackend
from ..engine.cache import EmbeddingCache, StoreKey
from ..engine.preprocessing import InputTransform
from ..engine.volume import Volume, check_axis, slice_index
from .preprocessing import PaperPreprocessing
from .stem import EncoderTrunk, FrozenStem


def slice_transform(volume: Volume, axis: int, size: int) -> InputTransform:
    """Slice → square model input geometry (physical aspect kept, padded bottom/right)."""
    rows, cols = volume.slice_shape(axis)
    return InputTransform.for_slice(rows, cols, volume.slice_spacing(axis), size, isotropic=True)


def window_indices(center: int, window: int, count: int) -> list[int]:
    """The ``window`` slice indices centred on ``center``, clamped to ``[0, count)`` (edge slices repeat)."""
    return [min(max(center - window // 2 + t, 0), count - 1) for t in range(window)]


class FeatureSource:
    """Features ``(T, *shape)`` of slice windows of volumes for one backbone, preprocessing and encoder mode."""

    def __init__(self, backend: SamBackend, preprocessing: PaperPreprocessing, cache: EmbeddingCache,
                 frozen_encoder: bool = False) -> None:
        self.backend, self.preprocessing, self.cache = backend, preprocessing, cache
        self.stem = FrozenStem(backend.image_encoder)
        self.trunk = EncoderTrunk(backend.image_encoder).to(backend.device) if frozen_encoder else None
        self._values: dict[str, np.ndarray] = {}
        self._feature_shape: Optional[tuple[int, ...]] = None
        self._lock = threading.Lock()

    def window(self, volume: Volume, axis: int, indices: Sequence[int]) -> torch.Tensor:
        """Features of the slices ``indices`` (one window, in order) → ``(T, *shape)`` float32 on the CPU."""
        if self.preprocessing.window_dependent(self.backend.normalization):
            return self._compute(volume, axis, list(indices))
        return torch.stack([self.slice(volume, axis, i) for i in indices])

    def slice(self, volume: Volume, axis: int, index: int) -> torch.Tensor:
        """One slice's features (window-independent preprocessing only), through the cache."""
        key, count = self._key(volume, axis), volume.num_slices(axis)
        cached = self.cache.get(key, index, count, self._shape())
        if cached is None:
            cached = self._compute(volume, axis, [index])[0]
            self.cache.put(key, index, count, cached)
        return cached.float()

    def _compute(self, volume: Volume, axis: int, indices: list[int]) -> torch.Tensor:
        return self.encode(self.images(volume, axis, indices))

    def images(self, volume: Volume, axis: int, indices: Sequence[int]) -> torch.Tensor:
        """The model-input images ``(T, 3, S, S)`` (paper preprocessing, resized, padded, normalised) of one window."""
        values = self._volume_values(volume)
        transform = slice_transform(volume, axis, self.backend.input_size)
        slices = self.preprocessing.window_values(np.stack([values[slice_index(axis, i)] for i in indices]))
        return torch.stack([transform.pad(self.backend.normalize(transform.resize(s))) for s in slices])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Model-input images ``(N, 3, S, S)`` → features ``(N, *shape)`` (stem, or the whole frozen encoder), float32
        on the CPU."""
        features = self.stem(images.to(self.backend.device))
        if self.trunk is not None:
            features = self.trunk(features)
        return features.float().cpu()

    def _volume_values(self, volume: Volume) -> np.ndarray:
        with self._lock:
            if volume.content_hash not in self._values:
                self._values = {volume.content_hash: self.preprocessing.volume_values(volume)}  # keep the latest
            return self._values[volume.content_hash]

    def _key(self, volume: Volume, axis: int) -> StoreKey:
        part = "encoder" if self.trunk is not None else "stem"
        return StoreKey(volume.content_hash, check_axis(axis), f"{self.backend.model_id}-{part}",
                        self.backend.weights_sha256, self.preprocessing.fingerprint())

    def _shape(self) -> tuple[int, ...]:
        """The per-slice feature shape: ``(C, E, E)`` for the frozen encoder, else found once from a blank input."""
        if self._feature_shape is None:
            if self.trunk is not None:
                size = self.backend.embedding_size
                self._feature_shape = (self.backend.mask_decoder.transformer_dim, size, size)
            else:
                size = self.backend.input_size
                blank = torch.zeros(1, 3, size, size, device=self.backend.device)
                self._feature_shape = tuple(self.stem(blank).shape[1:])
        return self._feature_shape
