"""The slice predictor: cached embeddings in, masks at slice resolution out."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CancelledError, InputError
from ..evaluation.metrics import dice
from .backend import Decoded, SamBackend
from .cache import EmbeddingCache, StoreKey
from .click_search import ClickSearchConfig, Clicks, correct_box, search_clicks
from .preprocessing import InputTransform, Preprocessing, resolve_window
from .prompts import SlicePrompts
from .scheduler import DeviceQueue
from .volume import Volume, check_axis

ProgressFn = Callable[[int, int], None]  # (done, total)

@dataclass(frozen=True)
class PreparedVolume:
    """A volume with the preprocessing its embeddings are computed with."""

    volume: Volume
    preprocessing: Preprocessing

    def transform(self, axis: int) -> InputTransform:
        rows, cols = self.volume.slice_shape(axis)
        return InputTransform.for_slice(
            rows, cols, self.volume.slice_spacing(axis), self.preprocessing.input_size, self.preprocessing.isotropic
        )

@dataclass
class Prediction:
    """Masks ``(M, rows, cols)`` at slice resolution, predicted IoU ``(M,)``, model-space logits ``(M, r, r)``;
    ``box``: the box (slice pixels) that clicks were resolved to on a box-trained model, else None;
    ``lasso_dice``: with a lasso, each mask's Dice with it ``(M,)``, else None (the masks are kept inside the
    lasso; the logits are the decoder's)."""

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    box: Optional[tuple[float, float, float, float]] = None
    lasso_dice: Optional[np.ndarray] = None

    @property
    def best(self) -> int:
        return int(np.argmax(self.scores))

class SlicePredictor:
    """Embeds slices on demand (through the cache and the device queue) and decodes prompts."""

    def __init__(self, backend: SamBackend, cache: EmbeddingCache, queue: Optional[DeviceQueue] = None) -> None:
        self.backend = backend
        self.cache = cache
        self.queue = queue or DeviceQueue()
        self.click_search = ClickSearchConfig()

    def prepare(self, volume: Volume, window: Optional[str] = None, isotropic: bool = True) -> PreparedVolume:
        """Attach this model's preprocessing (``window`` as in :func:`resolve_window`) to ``volume``."""
        preprocessing = Preprocessing(
            resolve_window(volume, window), self.backend.input_size, self.backend.normalization, isotropic
        )
        return PreparedVolume(volume, preprocessing)

    def store_key(self, prepared: PreparedVolume, axis: int) -> StoreKey:
        return StoreKey(
            prepared.volume.content_hash,
            check_axis(axis),
            self.backend.model_id,
            self.backend.weights_sha256,
            prepared.preprocessing.fingerprint(),
        )

    def model_input(self, prepared: PreparedVolume, axis: int, index: int) -> torch.Tensor:
        """The normalised, resized and padded ``(3, S, S)`` encoder input of one slice."""
        transform = prepared.transform(axis)
        image01 = prepared.preprocessing.window.apply(prepared.volume.slice(axis, index))
        return transform.pad(self.backend.normalize(transform.resize(image01)))

    def is_cached(self, prepared: PreparedVolume, axis: int, index: int) -> bool:
        return self.cache.contains(self.store_key(prepared, axis), index, prepared.volume.num_slices(axis), self._shape)

    def embedding(self, prepared: PreparedVolume, axis: int, index: int) -> torch.Tensor:
        """The slice's ``(256, E, E)`` embedding: from the cache, else encoded now at interactive priority."""
        key = self.store_key(prepared, axis)
        count = prepared.volume.num_slices(axis)
        prepared.volume.slice(axis, index)  # validates the index
        cached = self.cache.get(key, index, count, self._shape)
        if cached is not None:
            return cached
        with self.queue.interactive():
            cached = self.cache.get(key, index, count, self._shape, count_miss=False)  # stored meanwhile?
            if cached is not None:
                return cached
            embedding = self.backend.encode(self.model_input(prepared, axis, index)[None])[0]
        self.cache.put(key, index, count, embedding)
        return embedding

    def precompute(
        self,
        prepared: PreparedVolume,
        axis: int,
        order: Optional[Iterable[int]] = None,
        progress: Optional[ProgressFn] = None,
        cancel: Optional[threading.Event] = None,
        next_index: Optional[Callable[[], Optional[int]]] = None,
        batch_size: Optional[int] = None,
    ) -> int:
        """Embed every uncached slice at batch priority; returns how many were encoded.

        ``next_index`` (if given) is asked before each step for a slice that should jump the queue
        (the one the user is viewing). ``cancel`` stops between steps with :class:`CancelledError`.
        """
        key = self.store_key(prepared, axis)
        count = prepared.volume.num_slices(axis)
        pending = list(order if order is not None else range(count))
        batch_size = batch_size or self._precompute_batch_size(prepared, axis, pending)
        total, encoded = len(pending), 0
        while pending:
            if cancel is not None and cancel.is_set():
                raise CancelledError("embedding precompute was cancelled")
            urgent = next_index() if next_index else None
            if urgent is not None and urgent in pending:
                pending.remove(urgent)
                pending.insert(0, urgent)
            batch, pending = pending[:batch_size], pending[batch_size:]
            todo = [i for i in batch if not self.cache.contains(key, i, count, self._shape)]
            if todo:
                inputs = torch.stack([self.model_input(prepared, axis, i) for i in todo])
                with self.queue.batch():
                    embeddings = self.backend.encode(inputs)
                for i, embedding in zip(todo, embeddings):
                    self.cache.put(key, i, count, embedding)
                encoded += len(todo)
            if progress:
                progress(total - len(pending), total)
        return encoded

    def predict(
        self, prepared: PreparedVolume, axis: int, index: int, prompts: SlicePrompts,
        prompt_encoder: Optional[torch.nn.Module] = None,
    ) -> Prediction:
        """Decode ``prompts`` on slice ``index`` along ``axis``; masks come back at slice resolution.
        ``prompt_encoder`` is a learned (SAM-assist) encoder to use instead of the model's own. On a box-trained
        model, points without a mask input go through the click search (one mask: ``multimask`` only applies to
        a box with points, which then go to the decoder as given, as with a mask input). A lasso is its box, decoded
        as described in :meth:`_predict_lasso`."""
        transform = prepared.transform(axis)
        prompts = prompts.validated(transform.rows, transform.cols)
        if prompts.lasso_mask is not None:
            return self._predict_lasso(prepared, axis, index, prompts, prompt_encoder)
        embedding = self.embedding(prepared, axis, index)
        clicks_only = prompts.box is None or not prompts.multimask  # box + points + multimask: the decoder's 3 masks
        if self.backend.box_only and prompts.points and prompt_encoder is None and prompts.mask_input is None and clicks_only:
            return self._predict_clicks(prepared, axis, index, embedding, prompts)
        points = labels = box = mask_input = None
        if prompts.points:
            points = torch.from_numpy(transform.points_to_model(np.asarray(prompts.points))).float()
            labels = torch.as_tensor(prompts.labels, dtype=torch.int)
        if prompts.box is not None:
            box = torch.from_numpy(transform.box_to_model(np.asarray(prompts.box))).float()
        if prompts.mask_input is not None:
            size = self.backend.mask_input_size
            mask_input = torch.as_tensor(np.asarray(prompts.mask_input, dtype=np.float32))
            if mask_input.numel() != size * size:
                raise InputError(f"mask input must be {size}×{size} low-resolution logits, got shape {tuple(mask_input.shape)}")
            mask_input = mask_input.reshape(1, size, size)
        decoded = self.backend.decode(embedding, points, labels, box, mask_input, prompts.multimask, prompt_encoder)
        return self._prediction(transform, decoded.low_res_logits, decoded.iou)

    def _predict_lasso(self, prepared: PreparedVolume, axis: int, index: int, prompts: SlicePrompts,
                       prompt_encoder: Optional[torch.nn.Module]) -> Prediction:
        """A lasso (validated prompts): its box, with the other prompts, decoded as any box; then nothing outside
        the lasso is kept (the user outlined where the object is), and each mask's Dice with the lasso is reported.
        Choosing among the decoder's three candidates by their overlap with the lasso, or giving the lasso as mask
        input, measured worse on LiteMedSAM (docs/clicks.md#strokes)."""
        lasso = prompts.lasso_mask
        prediction = self.predict(prepared, axis, index, replace(prompts, lasso_mask=None), prompt_encoder)
        prediction.masks = prediction.masks & lasso
        prediction.lasso_dice = np.array([dice(mask, lasso) for mask in prediction.masks])
        return prediction

    def _predict_clicks(self, prepared: PreparedVolume, axis: int, index: int, embedding: torch.Tensor,
                        prompts: SlicePrompts) -> Prediction:
        """Points on a box-trained model (:mod:`.click_search`): the first "+" click finds a box (one batched
        decode of candidate boxes plus one refining decode); every other click corrects that box's mask, as
        clicks after a drawn box do."""
        transform = prepared.transform(axis)
        if 1 not in prompts.labels and prompts.box is None:
            raise InputError("\"−\" points alone select nothing", "place a \"+\" point on the object or draw a box")
        clicks = Clicks.from_labelled(transform.points_to_model(np.asarray(prompts.points)), np.asarray(prompts.labels))
        bounds = (float(transform.new_cols), float(transform.new_rows))

        def decode(boxes: np.ndarray, grid: torch.Tensor = embedding) -> Decoded:
            return self.backend.decode(grid, box=torch.from_numpy(np.asarray(boxes, np.float32)))

        def decode_coarse(boxes: np.ndarray) -> Decoded:
            pool = self.click_search.coarse_pool
            decoded = decode(boxes, F.avg_pool2d(embedding[None].float(), pool)[0] if pool > 1 else embedding)
            size = self.backend.mask_input_size
            logits = F.interpolate(decoded.low_res_logits, size=(size, size), mode="bilinear", align_corners=False)
            return Decoded(logits, decoded.iou)

        image = prepared.preprocessing.window.apply(prepared.volume.slice(axis, index))
        resolution = self.backend.mask_input_size
        model_image = F.interpolate(transform.image_to_model(image)[None], size=(resolution, resolution),
                                    mode="bilinear", align_corners=False)[0, 0].numpy()
        box = None if prompts.box is None else transform.box_to_model(np.asarray(prompts.box))
        if box is None:  # the first "+" click finds the box; every other click corrects it, as after a drawn box
            context = None
            if prompts.context is not None:
                context = (transform.mask_to_model(prompts.context, resolution)[0] > 0).numpy()
            row_mm, col_mm = prepared.volume.slice_spacing(axis)
            mm_per_pixel = float(np.sqrt(row_mm * transform.rows / transform.new_rows
                                         * col_mm * transform.cols / transform.new_cols))
            first = Clicks(clicks.positive[:1], np.zeros((0, 2)))
            found = search_clicks(decode, decode_coarse, first, mm_per_pixel, bounds, context, self.click_search)
            box = found.box
        if prompts.box is not None or len(clicks.positive) + len(clicks.negative) > 1:
            found = correct_box(decode, box, clicks, bounds, model_image)
        prediction = self._prediction(transform, found.logits[None], torch.tensor([found.iou]))
        prediction.box = tuple(float(v) for v in transform.box_to_slice(found.box))
        return prediction

    def _prediction(self, transform: InputTransform, low_res_logits: torch.Tensor, iou: torch.Tensor) -> Prediction:
        slice_logits = transform.logits_to_slice(low_res_logits)
        return Prediction(masks=(slice_logits > 0).numpy(), scores=iou.numpy(), low_res_logits=low_res_logits.numpy())

    def _precompute_batch_size(self, prepared: PreparedVolume, axis: int, pending: list[int]) -> int:
        """1 on the CPU (batching does not speed up CPU encoders); on CUDA as many as half the free memory holds."""
        if self.backend.device.type != "cuda" or not pending:
            return 1
        from .runtimes.cuda import precompute_batch_size

        with self.queue.batch():
            return precompute_batch_size(self.backend, self.model_input(prepared, axis, pending[0])[None])

    @property
    def _shape(self) -> tuple[int, int, int]:
        size = self.backend.embedding_size
        return (256, size, size)
