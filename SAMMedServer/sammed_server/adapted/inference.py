"""Automatic segmentation of a whole volume: every slice window through the model, probabilities back to the grid.

Windows are centred on every slice (stride 1); a model with ``window > 1`` (MA-SAM) predicts every slice of each
window, and a slice's probabilities are the mean over all windows that contain it. Models that split into
``embed``/``decode`` have their adapted embeddings cached per window under the stored model's own weights hash.
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

import numpy as np
import torch

from ..engine.backend import SamBackend
from ..engine.cache import EmbeddingCache, StoreKey
from ..engine.geometry import CanonicalFrame
from ..engine.segmentation_file import Segment
from ..engine.volume import Volume, check_axis, slice_index
from ..errors import CancelledError
from .base import AutoSegModel
from .features import FeatureSource, slice_transform, window_indices


def predict_classes(
    model: AutoSegModel,
    features: FeatureSource,
    volume: Volume,
    axis: int = 2,
    model_key: Optional[tuple[str, str]] = None,
    slices: Optional[list[int]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> np.ndarray:
    """Class indices ``(K, J, I)`` (0 = background) for ``volume``; slices outside ``slices`` (default: all) are 0.
    Arguments as :func:`slice_probabilities`."""
    classes = np.zeros(volume.array.shape, dtype=np.uint8 if model.num_classes < 256 else np.uint16)
    for k, probabilities in slice_probabilities(model, features, volume, axis, model_key, slices, progress,
                                                cancel).items():
        classes[slice_index(axis, k)] = probabilities.argmax(0).numpy()
    return classes


def slice_probabilities(
    model: AutoSegModel,
    features: FeatureSource,
    volume: Volume,
    axis: int = 2,
    model_key: Optional[tuple[str, str]] = None,
    slices: Optional[list[int]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> dict[int, torch.Tensor]:
    """``{slice: (K+1, rows, cols)}`` class probabilities at slice resolution for ``slices`` (default: all).

    ``model_key`` = (model id, weights hash) of a stored model: its embeddings are cached under that key in
    ``features.cache``. ``progress(done, total)`` counts windows; ``cancel`` stops between windows.
    """
    axis = check_axis(axis)
    count = volume.num_slices(axis)
    wanted = sorted(set(range(count) if slices is None else slices))
    size = features.backend.input_size
    sums = {k: torch.zeros(model.num_classes, size, size) for k in wanted}
    hits = {k: 0 for k in wanted}
    half = model.window // 2
    centres = sorted({c for k in wanted for c in range(k - half, k + half + 1) if 0 <= c < count})
    model.eval()
    device = next(model.parameters()).device
    for done, centre in enumerate(centres, start=1):
        if cancel is not None and cancel.is_set():
            raise CancelledError("segmentation was cancelled")
        indices = window_indices(centre, model.window, count)
        probabilities = _window_probabilities(model, features, volume, axis, centre, indices, count, model_key, device)
        for t, k in enumerate(indices):
            if k in sums:
                sums[k] += probabilities[t]
                hits[k] += 1
        if progress:
            progress(done, len(centres))
    transform = slice_transform(volume, axis, size)
    return {k: transform.logits_to_slice(sums[k] / max(hits[k], 1)) for k in wanted}


def _window_probabilities(model: AutoSegModel, features: FeatureSource, volume: Volume, axis: int, centre: int,
                          indices: list[int], count: int, model_key: Optional[tuple[str, str]],
                          device: torch.device) -> torch.Tensor:
    """``(T, K+1, S, S)`` probabilities of the window centred on ``centre`` (its stems are read only when the
    adapted embeddings are not cached)."""
    def stems() -> torch.Tensor:
        return features.window(volume, axis, indices)[None].to(device)

    with torch.no_grad():
        if model_key is None or not model.splits_encoder:
            return model.probabilities(stems())[0].float().cpu()
        cache: EmbeddingCache = features.cache
        key = StoreKey(volume.content_hash, axis, f"auto-{model_key[0]}", model_key[1],
                       features.preprocessing.fingerprint())
        embeddings = cache.get(key, centre, count, _embedding_shape(model, features))
        if embeddings is None:
            embeddings = model.embed(stems())[0].cpu()
            cache.put(key, centre, count, embeddings)
            embeddings = embeddings.to(torch.float16)  # as the cache keeps it: same result cached or not
        return model.decode(embeddings[None].float().to(device))[0].float().cpu()


def _embedding_shape(model: AutoSegModel, features: FeatureSource) -> tuple[int, ...]:
    backend = features.backend
    return (model.window, backend.mask_decoder.transformer_dim, backend.embedding_size, backend.embedding_size)


class StoredAutoModel:
    """A stored automatic model rebuilt on ``backend`` once, to segment any number of volumes."""

    def __init__(self, artefact_id: str, backend: SamBackend, cache: EmbeddingCache) -> None:
        from .store import load_auto_model, manifest_classes, manifest_preprocessing

        self.model, manifest = load_auto_model(artefact_id, backend)
        self.classes = manifest_classes(manifest)
        self.features = FeatureSource(backend, manifest_preprocessing(manifest), cache,
                                      frozen_encoder=self.model.frozen_encoder)
        self.key = (manifest["id"], manifest["weights_sha256"])
        self.frame = CanonicalFrame.from_manifest(manifest)

    def segment(self, volume: Volume, axis: int = 2, progress: Optional[Callable[[int, int], None]] = None,
                cancel: Optional[threading.Event] = None) -> list[Segment]:
        """One named, coloured segment per organ on ``volume``'s grid. A model with a canonical frame segments
        ``volume`` seen in it (``axis`` is then its own); older ones segment ``volume``'s slices along ``axis``."""
        if self.frame is None:
            predicted = predict_classes(self.model, self.features, volume, axis, self.key, progress=progress,
                                        cancel=cancel)
        else:
            view = self.frame.view(volume)
            probabilities = np.zeros((self.model.num_classes, *view.volume.array.shape), np.float32)
            for k, p in slice_probabilities(self.model, self.features, view.volume, self.frame.axis, self.key,
                                            progress=progress, cancel=cancel).items():
                probabilities[(slice(None), *slice_index(self.frame.axis, k))] = p.numpy()
            predicted = view.probabilities_to_native(probabilities)
        return [Segment(name, predicted == i + 1, tuple(color))
                for i, (name, color) in enumerate(zip(self.classes.names, self.classes.colors))]


def segment_with_auto_model(
    artefact_id: str,
    backend: SamBackend,
    volume: Volume,
    cache: EmbeddingCache,
    axis: int = 2,
    progress: Optional[Callable[[int, int], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> list[Segment]:
    """Segment ``volume`` with the stored automatic model ``artefact_id``: one named, coloured segment per organ on
    ``volume``'s grid (see :meth:`StoredAutoModel.segment`)."""
    return StoredAutoModel(artefact_id, backend, cache).segment(volume, axis, progress, cancel)
