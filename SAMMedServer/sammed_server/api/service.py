"""The worker's state behind the HTTP layer: volumes by content hash, one predictor per model, jobs.

All models share one embedding cache and one :class:`DeviceQueue`, so interactive decodes go before
background work whatever model either uses.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .. import __version__
from ..engine.cache import EmbeddingCache
from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.prompts import SlicePrompts
from ..engine.registry import REGISTRY, default_checkpoint_path, get_spec, load_backend, pick_device
from ..engine.scheduler import DeviceQueue
from ..engine.volume import AXIS_NAMES, Volume, load_volume, volume_from_array
from ..errors import InputError, SAMMedError
from ..settings import embedding_cache_dir, memory_cache_bytes
from . import codec
from .jobs import Job, JobContext, JobManager
from .workflows import LearnedPromptEncoders
from .protocol import PROTOCOL_VERSION, SERVICE_NAME
from .schemas import EmbedRequest, Health, ModelInfo, PredictRequest, PredictResponse, VolumeInfo, VolumeUpload

MAX_VOLUMES = 16  # least recently used volumes beyond this are dropped (clients re-upload on unknown_volume)
MAX_PREVIOUS = 256  # stored low-res logits for use_previous_mask


class UnknownVolumeError(SAMMedError):
    code = "unknown_volume"


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


class Service:
    def __init__(
        self,
        model: str = "litemedsam",
        device: Optional[str] = None,
        cache_dir: Optional[Path] = None,
        memory_bytes: Optional[int] = None,
        job_workers: int = 1,
    ) -> None:
        self.default_model = get_spec(model).model_id
        self.device = str(pick_device(device))
        self.cache = EmbeddingCache(Path(cache_dir or embedding_cache_dir()), memory_bytes or memory_cache_bytes())
        self.queue = DeviceQueue()
        self.jobs = JobManager(job_workers)
        self.learned_encoders = LearnedPromptEncoders()
        self._predictors: dict[str, SlicePredictor] = {}
        self._volumes: OrderedDict[str, StoredVolume] = OrderedDict()
        self._prepared: dict[tuple[str, str, str], PreparedVolume] = {}
        self._previous: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    # models -------------------------------------------------------------------------------
    def predictor(self, model: Optional[str] = None) -> SlicePredictor:
        """The predictor of ``model`` (default: the server's), loading its weights on first use."""
        model_id = get_spec(model or self.default_model).model_id
        with self._load_lock:
            if model_id not in self._predictors:
                backend = load_backend(model_id, device=self.device)
                self._predictors[model_id] = SlicePredictor(backend, self.cache, self.queue)
            return self._predictors[model_id]

    def health(self, auth: bool, max_request_bytes: int, max_upload_bytes: int) -> Health:
        return Health(
            service=SERVICE_NAME, version=__version__, protocol=PROTOCOL_VERSION, device=self.device,
            default_model=self.default_model, models_loaded=sorted(self._predictors), auth=auth,
            max_request_bytes=max_request_bytes, max_upload_bytes=max_upload_bytes,
        )

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                id=spec.model_id, description=spec.description, input_size=spec.input_size, box_only=spec.box_only,
                default=spec.model_id == self.default_model, loaded=spec.model_id in self._predictors,
                checkpoint_present=default_checkpoint_path(spec).is_file(),
            )
            for spec in REGISTRY.values()
        ]

    # volumes ------------------------------------------------------------------------------
    def upload(self, body: bytes, meta: VolumeUpload) -> VolumeInfo:
        array = codec.decode_volume(body, meta.shape, meta.dtype, meta.compression)
        return self._add(volume_from_array(array, meta.spacing, meta.origin, meta.direction), "upload")

    def from_path(self, path: str) -> VolumeInfo:
        return self._add(load_volume(path), str(Path(path).expanduser()))

    def volume_info(self, volume_id: str) -> VolumeInfo:
        return self._stored(volume_id).info(created=False)

    def volumes(self) -> list[VolumeInfo]:
        with self._lock:
            return [stored.info(created=False) for stored in self._volumes.values()]

    def delete_volume(self, volume_id: str) -> None:
        self._stored(volume_id)
        with self._lock:
            self._volumes.pop(volume_id, None)
            self._drop_derived(volume_id)

    def _add(self, volume: Volume, source: str) -> VolumeInfo:
        with self._lock:
            stored = self._volumes.get(volume.content_hash)
            created = stored is None
            if created:
                stored = self._volumes[volume.content_hash] = StoredVolume(volume, source)
                while len(self._volumes) > MAX_VOLUMES:
                    self._drop_derived(self._volumes.popitem(last=False)[0])
            self._volumes.move_to_end(volume.content_hash)
            return stored.info(created)

    def _stored(self, volume_id: str) -> StoredVolume:
        with self._lock:
            stored = self._volumes.get(volume_id)
            if stored is None:
                raise UnknownVolumeError(
                    f"no volume {volume_id!r} on this server", "upload the volume (or register its path) first"
                )
            self._volumes.move_to_end(volume_id)
            return stored

    def _drop_derived(self, volume_id: str) -> None:
        """Forget prepared volumes and stored logits of ``volume_id``; the caller holds ``_lock``."""
        for key in [k for k in self._prepared if k[0] == volume_id]:
            del self._prepared[key]
        for key in [k for k in self._previous if k[0] == volume_id]:
            del self._previous[key]

    def prepared(self, volume_id: str, predictor: SlicePredictor, window: Optional[str]) -> PreparedVolume:
        """The stored volume with ``predictor``'s preprocessing for ``window`` (kept, so hashes are computed once)."""
        volume = self._stored(volume_id).volume
        key = (volume_id, predictor.backend.model_id, (window or "auto").strip().lower())
        with self._lock:
            prepared = self._prepared.get(key)
        if prepared is None:
            prepared = predictor.prepare(volume, window)
            with self._lock:
                self._prepared[key] = prepared
        return prepared

    # prediction ---------------------------------------------------------------------------
    def predict(self, volume_id: str, request: PredictRequest) -> PredictResponse:
        started = time.perf_counter()
        predictor = self.predictor(request.model)
        prepared = self.prepared(volume_id, predictor, request.window)
        axis, index = request.axis, request.index
        prepared.volume.slice(axis, index)  # validates the index with a clear message
        session_key = (volume_id, predictor.backend.model_id, prepared.preprocessing.fingerprint(), axis, index,
                       request.session, request.prompt_encoder)
        mask_input = None
        if request.mask_input is not None:
            if request.use_previous_mask:
                raise InputError("give mask_input or use_previous_mask, not both")
            mask_input = codec.decode_array(request.mask_input, "mask_input")
        elif request.use_previous_mask:
            with self._lock:
                mask_input = self._previous.get(session_key)
        context = None if request.context_mask is None else codec.decode_array(request.context_mask, "context_mask")
        prompts = SlicePrompts(
            [tuple(p) for p in request.points], list(request.labels), request.box, mask_input, request.multimask, context
        )
        encoder = self.learned_encoders.get(request.prompt_encoder, predictor)
        cached = predictor.is_cached(prepared, axis, index)
        prediction = predictor.predict(prepared, axis, index, prompts, prompt_encoder=encoder)
        predicted = time.perf_counter()
        best = prediction.best
        with self._lock:
            self._previous[session_key] = prediction.low_res_logits[best]
            self._previous.move_to_end(session_key)
            while len(self._previous) > MAX_PREVIOUS:
                self._previous.popitem(last=False)
        masks = codec.encode_mask(prediction.masks)
        return PredictResponse(
            volume_id=volume_id, axis=axis, index=index, model=predictor.backend.model_id, masks=masks,
            scores=[float(s) for s in prediction.scores], best=best, box=prediction.box, cached=cached,
            timing_ms={
                "predict": 1000 * (predicted - started),
                "encode_mask": 1000 * (time.perf_counter() - predicted),
            },
        )

    # jobs ---------------------------------------------------------------------------------
    def embed(self, volume_id: str, request: EmbedRequest) -> Job:
        """Start (or join the running) embedding precompute of a volume along one axis."""
        predictor = self.predictor(request.model)
        prepared = self.prepared(volume_id, predictor, request.window)
        axis, count = request.axis, prepared.volume.num_slices(request.axis)
        slices = sorted(set(request.slices)) if request.slices is not None else list(range(count))
        for index in slices + ([request.focus] if request.focus is not None else []):
            if not 0 <= index < count:
                raise InputError(f"slice {index} is outside axis {AXIS_NAMES[axis]} (0..{count - 1})")
        order = outward_order(slices, request.focus if request.focus is not None else count // 2)
        key = hashlib.sha1(
            f"embed|{volume_id}|{axis}|{predictor.backend.model_id}|{prepared.preprocessing.fingerprint()}|{slices}".encode()
        ).hexdigest()

        def run(ctx: JobContext) -> dict:
            ctx.log(f"embedding {len(order)} slice(s) of {volume_id[:8]} along {AXIS_NAMES[axis]} with {predictor.backend.model_id}")
            encoded = predictor.precompute(
                prepared, axis, order, progress=ctx.progress, cancel=ctx.cancel_event, next_index=ctx.take_focus
            )
            ctx.log(f"{encoded} slice(s) encoded, {len(order) - encoded} already cached")
            return {"volume_id": volume_id, "axis": axis, "slices": len(order), "encoded": encoded}

        return self.jobs.submit("embed", run, key=key, focus=request.focus)

    def close(self) -> None:
        self.jobs.shutdown()


def outward_order(slices: Iterable[int], center: int) -> list[int]:
    """``slices`` sorted by distance from ``center`` (ties: the lower index first)."""
    return sorted(slices, key=lambda i: (abs(i - center), i))
