"""What the worker holds between requests: models, volumes (under a memory budget) with their prepared forms,
learned prompt encoders, the embedding cache and the jobs. The service and the workflows both build on it.

All models share one embedding cache and one :class:`DeviceQueue`, so interactive decodes go before
background work whatever model either uses.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

from torch import nn

from ..engine.cache import EmbeddingCache
from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.registry import get_spec, load_backend, pick_device
from ..engine.scheduler import DeviceQueue
from ..engine.volume import Volume
from ..errors import InputError, SAMMedError
from ..settings import volume_memory_bytes
from .jobs import JobManager
from .schemas import VolumeInfo

MAX_VOLUMES = 16  # least recently used volumes beyond this are dropped (clients re-upload on unknown_volume)


class UnknownVolumeError(SAMMedError):
    code = "unknown_volume"


class TooLargeError(InputError):
    """A volume or array larger than this worker's memory budget (HTTP 413)."""

    code = "payload_too_large"


@dataclass
class StoredVolume:
    volume: Volume
    source: str

    def info(self, created: bool) -> VolumeInfo:
        v = self.volume
        return VolumeInfo(
            id=v.content_hash, shape_ijk=v.shape_ijk, dtype=v.array.dtype.name, spacing=v.spacing,
            origin=v.origin, direction=v.direction, source=self.source, created=created,
        )


class HeldVolumes:
    """Volumes by content hash, least recently used dropped beyond ``max_count`` or ``memory_bytes``.

    Uploads and file reads reserve their size first (:meth:`reserve`), so concurrent ones cannot together
    exceed the budget; ``on_drop`` callbacks forget what was derived from a dropped volume."""

    def __init__(self, memory_bytes: int, max_count: int = MAX_VOLUMES) -> None:
        self.memory_bytes = memory_bytes
        self.max_count = max_count
        self.on_drop: list[Callable[[str], None]] = []
        self._volumes: OrderedDict[str, StoredVolume] = OrderedDict()
        self._prepared: dict[tuple[str, str, str], PreparedVolume] = {}
        self._reserved = 0
        self._lock = threading.Lock()

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Room for ``nbytes`` more (older volumes are dropped for it) while the block runs; 413 if it cannot fit."""
        if nbytes > self.memory_bytes:
            raise TooLargeError(
                f"{what} needs {nbytes / 2**20:.0f} MiB, more than this worker holds ({self.memory_bytes / 2**20:.0f} MiB)",
                "crop or downsample the volume, or raise SAMMED_VOLUME_MEMORY_MB",
            )
        with self._lock:
            while self._volumes and self._held() + self._reserved + nbytes > self.memory_bytes:
                self._drop(next(iter(self._volumes)))
            if self._held() + self._reserved + nbytes > self.memory_bytes:
                raise TooLargeError(f"{what} does not fit while other volumes are being loaded", "try again shortly")
            self._reserved += nbytes
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= nbytes

    def add(self, volume: Volume, source: str) -> VolumeInfo:
        with self._lock:
            stored = self._volumes.get(volume.content_hash)
            created = stored is None
            if created:
                stored = self._volumes[volume.content_hash] = StoredVolume(volume, source)
            self._volumes.move_to_end(volume.content_hash)
            while len(self._volumes) > self.max_count or (len(self._volumes) > 1 and self._held() > self.memory_bytes):
                self._drop(next(iter(self._volumes)))
            return stored.info(created)

    def get(self, volume_id: str) -> StoredVolume:
        with self._lock:
            stored = self._volumes.get(volume_id)
            if stored is None:
                raise UnknownVolumeError(
                    f"no volume {volume_id!r} on this server", "upload the volume (or register its path) first"
                )
            self._volumes.move_to_end(volume_id)
            return stored

    def all(self) -> list[StoredVolume]:
        with self._lock:
            return list(self._volumes.values())

    def delete(self, volume_id: str) -> None:
        self.get(volume_id)
        with self._lock:
            if volume_id in self._volumes:
                self._drop(volume_id)

    def prepared(self, volume_id: str, predictor: SlicePredictor, window: Optional[str]) -> PreparedVolume:
        """The volume with ``predictor``'s preprocessing for ``window`` (kept, so hashes are computed once)."""
        volume = self.get(volume_id).volume
        key = (volume_id, predictor.backend.model_id, (window or "auto").strip().lower())
        with self._lock:
            prepared = self._prepared.get(key)
        if prepared is None:
            prepared = predictor.prepare(volume, window)
            with self._lock:
                if volume_id in self._volumes:
                    self._prepared[key] = prepared
        return prepared

    def _held(self) -> int:
        return sum(stored.volume.array.nbytes for stored in self._volumes.values())

    def _drop(self, volume_id: str) -> None:
        """Forget a volume and everything derived from it; the caller holds ``_lock``."""
        del self._volumes[volume_id]
        for key in [k for k in self._prepared if k[0] == volume_id]:
            del self._prepared[key]
        for forget in self.on_drop:
            forget(volume_id)


class LearnedPromptEncoders:
    """Loaded SAM-assist prompt encoders, one per (artefact, base weights); loading checks the base weights."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], nn.Module] = {}
        self._lock = threading.Lock()

    def get(self, artefact_id: Optional[str], predictor: SlicePredictor) -> Optional[nn.Module]:
        if not artefact_id:
            return None
        from ..sammed.learned_prompts import load_prompt_encoder

        key = (artefact_id, predictor.backend.weights_sha256)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load_prompt_encoder(artefact_id, predictor.backend)
            return self._loaded[key]


class WorkerState:
    """Models (loaded on first use), held volumes, learned prompt encoders, the embedding cache and the jobs."""

    def __init__(
        self,
        model: str = "litemedsam",
        device: Optional[str] = None,
        cache_dir: Optional[Path] = None,
        memory_bytes: Optional[int] = None,
        job_workers: int = 1,
        volume_bytes: Optional[int] = None,
    ) -> None:
        self.default_model = get_spec(model).model_id
        self.device = str(pick_device(device))
        self.cache = EmbeddingCache.from_settings(cache_dir, memory_bytes)
        self.queue = DeviceQueue()
        self.jobs = JobManager(job_workers)
        self.volumes = HeldVolumes(volume_bytes or volume_memory_bytes())
        self.learned_encoders = LearnedPromptEncoders()
        self._predictors: dict[str, SlicePredictor] = {}
        self._load_lock = threading.Lock()

    def predictor(self, model: Optional[str] = None) -> SlicePredictor:
        """The predictor of ``model`` (default: the server's), loading its weights on first use."""
        model_id = get_spec(model or self.default_model).model_id
        with self._load_lock:
            if model_id not in self._predictors:
                backend = load_backend(model_id, device=self.device)
                self._predictors[model_id] = SlicePredictor(backend, self.cache, self.queue)
            return self._predictors[model_id]

    def loaded_models(self) -> list[str]:
        return sorted(self._predictors)

    def prepared(self, volume_id: str, predictor: SlicePredictor, window: Optional[str]) -> PreparedVolume:
        return self.volumes.prepared(volume_id, predictor, window)

    def close(self) -> None:
        self.jobs.shutdown()
