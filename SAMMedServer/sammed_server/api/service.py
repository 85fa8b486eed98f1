"""The worker's operations behind the HTTP layer: health, volumes in (upload or path, both bounded), predict,
embedding jobs. What it holds between requests lives in :mod:`.state`.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Optional, Sequence

import numpy as np
from anyio import to_thread

from .. import __version__
from ..engine.prompts import SlicePrompts
from ..engine.registry import REGISTRY, default_checkpoint_path
from ..engine.strokes import Scribble
from ..engine.volume import AXIS_NAMES, load_volume, volume_from_array
from ..errors import InputError
from ..settings import data_roots
from . import codec
from .jobs import Job, JobContext
from .paths import checked_path
from .protocol import PROTOCOL_VERSION, SERVICE_NAME
from .schemas import EmbedRequest, Health, ModelInfo, PredictRequest, PredictResponse, VolumeInfo, VolumeUpload
from .state import WorkerState

MAX_PREVIOUS = 256  # stored low-res logits for use_previous_mask
READ_TIMEOUT_S = 120.0  # a from-path read that takes longer is abandoned (the request gets a clear error)
READER_THREADS = 2
DRAIN_BYTES = 64 * 2**20  # of a refused upload's body, read and dropped before answering; beyond it the connection closes

class ReadTimeoutError(InputError):
    code = "read_timeout"


class Service(WorkerState):
    def __init__(self, roots: Optional[Sequence[Path]] = None, read_timeout_s: float = READ_TIMEOUT_S, **state: Any) -> None:
        """``roots``: folders ``from-path`` may read (default :func:`settings.data_roots`); ``state``: the options
        of :class:`WorkerState` (model, device, cache_dir, memory_bytes, job_workers, volume_bytes)."""
        super().__init__(**state)
        self.data_roots = list(roots) if roots is not None else data_roots()
        self.read_timeout_s = read_timeout_s
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="volume-reader")
        self._previous: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.volumes.on_drop.append(self._forget_previous)

    def health(self, auth: bool, max_request_bytes: int, max_upload_bytes: int) -> Health:
        return Health(
            service=SERVICE_NAME, version=__version__, protocol=PROTOCOL_VERSION, device=self.device,
            default_model=self.default_model, models_loaded=self.loaded_models(), auth=auth,
            max_request_bytes=max_request_bytes, max_upload_bytes=max_upload_bytes,
        )

    def models(self) -> list[ModelInfo]:
        return [
            ModelInfo(
                id=spec.model_id, description=spec.description, input_size=spec.input_size, box_only=spec.box_only,
                default=spec.model_id == self.default_model, loaded=spec.model_id in self.loaded_models(),
                checkpoint_present=default_checkpoint_path(spec).is_file(),
            )
            for spec in REGISTRY.values()
        ]

    # volumes ------------------------------------------------------------------------------
    async def upload(self, chunks: AsyncIterator[bytes], meta: VolumeUpload) -> VolumeInfo:
        """A volume from a streamed body: its declared size is checked against the budget before any inflating."""
        body_read = False
        try:
            nbytes = codec.volume_bytes(meta.shape, meta.dtype)
            with self.volumes.reserve(nbytes, f"a {'x'.join(map(str, meta.shape))} {meta.dtype} volume"):
                inflater = codec.VolumeInflater(meta.shape, meta.dtype, meta.compression)
                async for chunk in chunks:
                    await to_thread.run_sync(inflater.feed, chunk)
                body_read = True
                volume = await to_thread.run_sync(
                    volume_from_array, inflater.array(), meta.spacing, meta.origin, meta.direction
                )
                return self.volumes.add(volume, "upload")
        except InputError:
            if not body_read:
                await _drain(chunks, DRAIN_BYTES)  # read (and drop) the rest, so the client gets the answer, not a reset
            raise

    async def from_path(self, path: str) -> VolumeInfo:
        """A volume read from this machine's disk: only under the data roots, regular files, bounded size and
        time, on reader threads of its own (a stuck read never holds up other requests)."""
        real = checked_path(path, self.data_roots, self.volumes.memory_bytes)
        future = asyncio.get_running_loop().run_in_executor(self._readers, load_volume, real, self.volumes.memory_bytes)
        try:
            volume = await asyncio.wait_for(future, self.read_timeout_s)
        except asyncio.TimeoutError:
            raise ReadTimeoutError(f"reading {path} took longer than {self.read_timeout_s:g} s; abandoned",
                                   "check the file system it lives on") from None
        return self.volumes.add(volume, path)

    def volume_info(self, volume_id: str) -> VolumeInfo:
        return self.volumes.get(volume_id).info(created=False)

    def list_volumes(self) -> list[VolumeInfo]:
        return [stored.info(created=False) for stored in self.volumes.all()]

    def delete_volume(self, volume_id: str) -> None:
        self.volumes.delete(volume_id)

    def _forget_previous(self, volume_id: str) -> None:
        with self._lock:
            for key in [k for k in self._previous if k[0] == volume_id]:
                del self._previous[key]

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
            size = predictor.backend.mask_input_size
            mask_input = codec.decode_array(request.mask_input, "mask_input", max_elements=size * size)
        elif request.use_previous_mask:
            with self._lock:
                mask_input = self._previous.get(session_key)
        context = None if request.context_mask is None else codec.decode_array(request.context_mask, "context_mask")
        prompts = SlicePrompts(
            [tuple(p) for p in request.points], list(request.labels), request.box, mask_input, request.multimask, context,
            lasso=request.lasso, scribbles=[Scribble(s.points, s.label) for s in request.scribbles],
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
            lasso_dice=None if prediction.lasso_dice is None else [float(d) for d in prediction.lasso_dice],
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
        super().close()
        self._readers.shutdown(wait=False, cancel_futures=True)


async def _drain(chunks: AsyncIterator[bytes], limit: int) -> None:
    drained = 0
    async for chunk in chunks:
        drained += len(chunk)
        if drained > limit:
            return


def outward_order(slices: Iterable[int], center: int) -> list[int]:
    """``slices`` sorted by distance from ``center`` (ties: the lower index first)."""
    return sorted(slices, key=lambda i: (abs(i - center), i))
