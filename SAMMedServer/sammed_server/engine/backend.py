"""One interface for every SAM-family model: ``encode(images) -> embeddings``, ``decode(embedding, prompts)``."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .runtimes import InferenceRuntime
from .runtimes.torch_runtime import TorchRuntime

IMAGENET_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


@dataclass
class Decoded:
    """Decoder output in model space: ``low_res_logits (M, r, r)`` and predicted IoU ``(M,)``."""

    low_res_logits: torch.Tensor
    iou: torch.Tensor


class SamBackend:
    """A frozen image encoder with SAM's prompt encoder and mask decoder.

    ``encode`` turns normalised ``(N, 3, S, S)`` inputs into ``(N, 256, E, E)`` fp16 embeddings on the
    CPU (where the cache keeps them); ``decode`` runs prompts on one embedding. Thread-safe for
    inference; ``encoder_calls`` counts encoded slices (the cache tests assert on it). The torch modules stay
    the model (training and adapted models use them); ``runtime`` runs the frozen encoder and mask decoder for
    inference (torch by default, see :mod:`.runtimes`).
    """

    def __init__(
        self,
        model_id: str,
        weights_sha256: str,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        input_size: int,
        normalization: str,
        device: torch.device,
        box_only: bool = False,
    ) -> None:
        self.model_id = model_id
        self.box_only = box_only
        self.weights_sha256 = weights_sha256
        self.input_size = input_size
        self.normalization = normalization
        self.device = device
        self.image_encoder = image_encoder.to(device).eval()
        self.prompt_encoder = prompt_encoder.to(device).eval()
        self.mask_decoder = mask_decoder.to(device).eval()
        for module in (self.image_encoder, self.prompt_encoder, self.mask_decoder):
            module.requires_grad_(False)
        self.embedding_size = int(self.prompt_encoder.image_embedding_size[0])
        self.mask_input_size = 4 * self.embedding_size
        self.encoder_calls = 0
        self.runtime: InferenceRuntime = TorchRuntime(self.image_encoder, self.mask_decoder, device)
        self._image_pe = self.prompt_encoder.get_dense_pe()  # constant: a buffer of the frozen prompt encoder
        self._counter_lock = threading.Lock()

    def normalize(self, resized01: torch.Tensor) -> torch.Tensor:
        """``(1, h, w)`` image in [0, 1] (before padding) → the ``(3, h, w)`` input this model expects."""
        image = resized01.expand(3, -1, -1)
        if self.normalization == "minmax":  # LiteMedSAM / MedSAM: per-image min-max to [0, 1]
            low, high = image.min(), image.max()
            return (image - low) / torch.clamp(high - low, min=1e-8)
        if self.normalization == "imagenet":  # SAM: 0-255 with ImageNet mean/std
            return (image * 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        raise ValueError(f"unknown normalization {self.normalization!r}")

    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` → ``(N, 256, E, E)`` float16 embeddings on the CPU."""
        with self._autocast():
            embeddings = self.runtime.encode(images.float())
        with self._counter_lock:
            self.encoder_calls += images.shape[0]
        return embeddings.to("cpu", torch.float16)

    @torch.inference_mode()
    def decode(
        self,
        embedding: torch.Tensor,
        points: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        box: Optional[torch.Tensor] = None,
        mask_input: Optional[torch.Tensor] = None,
        multimask: bool = False,
        prompt_encoder: Optional[nn.Module] = None,
    ) -> Decoded:
        """Decode one slice. Coordinates are model-input pixels: ``points (n, 2)``, ``labels (n,)``
        (1 foreground, 0 background), ``box (4,)``; ``mask_input (1, 4E, 4E)`` logits from a previous decode.
        ``prompt_encoder`` replaces the model's own (a learned SAM-assist encoder).

        A batch of B prompt sets on the same slice decodes in one call: give every prompt a leading batch
        dimension (``points (B, n, 2)``, ``labels (B, n)``, ``box (B, 4)``, ``mask_input (B, 1, 4E, 4E)``);
        the outputs are then ``(B, M, r, r)`` and ``(B, M)``.

        An embedding on a coarser grid than the model's (``(256, e, e)``, e.g. average-pooled 2×, without mask
        input) decodes at a fraction of the cost, with ``r = 4e``: the click search scores candidate boxes so.
        """
        device = self.device
        prompt_encoder = prompt_encoder or self.prompt_encoder
        batched = (box is not None and box.dim() == 2) or (points is not None and points.dim() == 3)
        if not batched:
            points, labels = (None, None) if points is None else (points[None], labels[None])
            box = None if box is None else box.view(1, 4)
            mask_input = None if mask_input is None else mask_input[None]
        sparse, dense = prompt_encoder(
            points=None if points is None else (points.to(device, torch.float32), labels.to(device, torch.int)),
            boxes=None if box is None else box.to(device, torch.float32),
            masks=None if mask_input is None else mask_input.to(device, torch.float32),
        )
        image_pe = self._image_pe if prompt_encoder is self.prompt_encoder else prompt_encoder.get_dense_pe()
        decode = self.runtime.decode
        grid = int(embedding.shape[-1])
        if grid != self.embedding_size:  # the click search's coarse grid: torch (the exports have the model's grid)
            if mask_input is not None:
                raise ValueError("a mask input needs an embedding on the model's own grid")
            image_pe = prompt_encoder.pe_layer((grid, grid))[None]
            dense = dense[:, :, :1, :1].expand(-1, -1, grid, grid)  # the "no mask" embedding, constant
            decode = self.mask_decoder.predict_masks
        logits, iou = decode(embedding[None].to(device, torch.float32), image_pe, sparse, dense)
        outputs = slice(1, None) if multimask else slice(0, 1)  # as MaskDecoder.forward picks them
        logits, iou = logits[:, outputs], iou[:, outputs]
        if batched:
            return Decoded(logits.float().cpu(), iou.float().cpu())
        return Decoded(logits[0].float().cpu(), iou[0].float().cpu())

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()
