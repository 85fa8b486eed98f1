"""The reference runtime: the backend's own torch modules, as loaded from the checkpoint (on CUDA: pinned
transfers and, opt-in, a compiled decoder; see :mod:`.cuda`)."""

from __future__ import annotations

import torch
from torch import nn


class TorchRuntime:
    name = "torch"

    def __init__(self, image_encoder: nn.Module, mask_decoder: nn.Module, device: torch.device = torch.device("cpu")) -> None:
        self.image_encoder = image_encoder
        self.mask_decoder = mask_decoder
        self.device = device
        self._predict_masks = mask_decoder.predict_masks
        if device.type == "cuda":
            from .cuda import compiled_decoder

            self._predict_masks = compiled_decoder(mask_decoder)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            from .cuda import to_device_pinned, to_host_pinned

            return to_host_pinned(self.image_encoder(to_device_pinned(images, self.device)))
        return self.image_encoder(images.to(self.device))

    def decode(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self._predict_masks(image_embeddings, image_pe, sparse, dense)
