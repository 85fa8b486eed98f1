"""The frozen part of the image encoder that no adapter touches, computed once per slice, and the rest of it.

TinyViT (LiteMedSAM; Wu et al., 2022, "TinyViT: Fast Pretraining Distillation for Small Vision Transformers"):
the stem is ``patch_embed`` + ``layers[0]`` (convolutions only, about half the encoder's time) and gives tokens
``(L, C)``; SAM ViT (Kirillov et al., 2023, "Segment Anything"): the stem is ``patch_embed`` and gives ``(H, W, C)``.
Adapters sit in attention blocks only, so training can cache the stem outputs and run just the trunk.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError


def is_tinyvit(encoder: nn.Module) -> bool:
    """Whether ``encoder`` is a TinyViT (``layers``) rather than a SAM ViT (``blocks``)."""
    if hasattr(encoder, "layers") and hasattr(encoder, "patch_embed"):
        return True
    if hasattr(encoder, "blocks") and hasattr(encoder, "patch_embed"):
        return False
    raise InputError(f"cannot adapt a {type(encoder).__name__} image encoder", "use LiteMedSAM (TinyViT) or a SAM ViT")


class FrozenStem(nn.Module):
    """The encoder's stem: normalised images ``(N, 3, S, S)`` → stem outputs ``(N, *stem_shape)``.

    TinyViT: ``(N, L, C)`` tokens after ``layers[0]``; SAM ViT: ``(N, H, W, C)`` patch embeddings (no position).
    Shares (does not copy) the backend's frozen modules; always runs in eval mode without gradients.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.tinyvit = is_tinyvit(encoder)
        self.parts = nn.ModuleList([encoder.patch_embed, encoder.layers[0]] if self.tinyvit else [encoder.patch_embed])

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for part in self.parts:
            x = part.eval()(x)
        return x


class EncoderTrunk(nn.Module):
    """A frozen copy of the encoder after its stem: stems ``(N, *stem_shape)`` → embeddings ``(N, 256, E, E)``.

    Holds deep copies, so adapters injected into its blocks never change the backend's encoder. Stays in eval mode
    (frozen BatchNorm statistics and TinyViT's cached attention biases) even when the owning model trains.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.tinyvit = is_tinyvit(encoder)
        if self.tinyvit:
            self.layers = copy.deepcopy(encoder.layers[1:])
        else:
            self.blocks = copy.deepcopy(encoder.blocks)
            self.pos_embed = None if encoder.pos_embed is None else nn.Parameter(encoder.pos_embed.detach().clone())
        self.neck = copy.deepcopy(encoder.neck)
        self.requires_grad_(False)
        self.eval()

    def attention_blocks(self) -> list[nn.Module]:
        """Every block with an ``attn.qkv`` Linear, in forward order."""
        if self.tinyvit:
            return [block for layer in self.layers for block in layer.blocks]
        return list(self.blocks)

    def forward(self, stems: torch.Tensor) -> torch.Tensor:
        x = stems
        if self.tinyvit:
            for layer in self.layers:
                x = layer(x)
            n, length, c = x.shape
            side = math.isqrt(length)
            return self.neck(x.view(n, side, side, c).permute(0, 3, 1, 2))
        if self.pos_embed is not None:
            pos = self.pos_embed
            if pos.shape[1:3] != x.shape[1:3]:  # an input size other than the one the position table was made for
                pos = F.interpolate(pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bicubic",
                                    align_corners=False).permute(0, 2, 3, 1)
            x = x + pos
        for block in self.blocks:
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))

    def train(self, mode: bool = True) -> "EncoderTrunk":
        return super().train(False)
