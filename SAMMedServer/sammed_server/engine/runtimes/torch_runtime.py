"""The reference runtime: the backend's own torch modules, as loaded from the checkpoint."""

from __future__ import annotations

import torch
from torch import nn


class TorchRuntime:
    name = "torch"

    def __init__(self, image_encoder: nn.Module, mask_decoder: nn.Module) -> None:
        self.image_encoder = image_encoder
        self.mask_decoder = mask_decoder

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)

    def decode(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask_decoder.predict_masks(image_embeddings, image_pe, sparse, dense)
