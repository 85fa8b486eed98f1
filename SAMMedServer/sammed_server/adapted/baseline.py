"""The decoder-only baseline: frozen encoder, SAM's decoder with K+1 class tokens trained alone.

The same prompt-free class decoder as H-SAM's stage 1 (``decoder.ClassDecoder``; SAMed, Zhang & Liu, 2023,
"Customized Segment Anything Model for Medical Image Segmentation", without LoRA). Its "stems" are the frozen
encoder's full embeddings ``(256, E, E)`` (``frozen_encoder = True``), so training never runs the encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from ..training.losses import ce_dice_loss
from .base import AutoSegModel
from .decoder import ClassDecoder


class DecoderOnly(AutoSegModel):
    """Embeddings ``(B, 1, 256, E, E)`` of the frozen encoder → class probabilities ``(B, 1, K+1, S, S)``."""

    mode = "decoder_only"
    window = 1
    frozen_encoder = True

    def __init__(self, decoder: ClassDecoder, num_classes: int) -> None:
        super().__init__()
        self.decoder, self.num_classes = decoder, num_classes

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    def _logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.dim() != 5 or embeddings.shape[1] != 1:
            raise InputError(f"the decoder-only model takes (B, 1, 256, E, E) embeddings, got {tuple(embeddings.shape)}")
        return self.decoder(embeddings.flatten(0, 1).float()).logits

    def training_loss(self, stems: torch.Tensor, labels: torch.Tensor, progress: float) -> torch.Tensor:
        return ce_dice_loss(self._logits(stems), labels.flatten(0, 1))

    @torch.no_grad()
    def probabilities(self, stems: torch.Tensor) -> torch.Tensor:
        return self._logits(stems).softmax(1).unsqueeze(1)


def build_decoder_only(backend, num_classes: int) -> DecoderOnly:
    """The baseline for ``num_classes`` = K organs + background on ``backend``'s frozen encoder."""
    if num_classes < 2:
        raise InputError(f"an automatic model needs at least one organ and background, got {num_classes} classes")
    decoder = ClassDecoder(backend.mask_decoder, backend.prompt_encoder, num_classes, backend.input_size)
    return DecoderOnly(decoder, num_classes).to(backend.device)
