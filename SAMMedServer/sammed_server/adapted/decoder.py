"""SAM's mask decoder turned into a prompt-free multi-class decoder: one output token per class.

This is H-SAM's stage-1 decoder (Cheng et al., CVPR 2024, "Unleashing the Potential of SAM for Medical Adaptation
via Hierarchical Decoding") and the decoder of the decoder-only baseline; it follows SAMed (Zhang & Liu, 2023,
"Customized Segment Anything Model for Medical Image Segmentation"). All weights start from the pretrained
decoder: class token i and its hypernetwork MLP copy pretrained mask token ``i mod 4``'s (the MLP's output layer
starts at zero, see :func:`class_hypernetworks`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import InputError


@dataclass
class DecoderOutput:
    """``logits (N, K+1, S, S)``, output ``tokens (N, K+1, 256)``, the upscaling pyramid ``features`` (coarse → fine:
    ``(N, 64, 2E, 2E)``, ``(N, 32, 4E, 4E)``, then one per extra ×2 step)."""

    logits: torch.Tensor
    tokens: torch.Tensor
    features: list[torch.Tensor]


class UpStep(nn.Sequential):
    """×2 transposed convolution → GroupNorm(1) (LayerNorm over C, H, W) → GELU: ``(N, c, s, s)`` → ``(N, c, 2s, 2s)``."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.GroupNorm(1, channels), nn.GELU())


def extra_steps(embedding_size: int, output_size: int) -> int:
    """How many ×2 steps take SAM's 4E output to ``output_size`` (0 for LiteMedSAM: 4·64 = 256)."""
    ratio = output_size / (4 * embedding_size)
    steps = round(math.log2(ratio)) if ratio >= 1 else -1
    if steps < 0 or 4 * embedding_size * 2**steps != output_size:
        raise InputError(f"cannot upsample {embedding_size}² embeddings to a {output_size}² output by ×2 steps")
    return steps


def prompt_free_inputs(prompt_encoder: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen positional encoding ``(1, 256, E, E)`` and "no mask" dense embedding ``(1, 256, E, E)``."""
    with torch.no_grad():
        image_pe = prompt_encoder.get_dense_pe().detach().cpu().clone()
        dense = prompt_encoder.no_mask_embed.weight.detach().cpu().reshape(1, -1, 1, 1).expand_as(image_pe).clone()
    return image_pe, dense


class ClassDecoder(nn.Module):
    """Prompt-free SAM decoder with K+1 class tokens: embeddings ``(N, 256, E, E)`` → :class:`DecoderOutput`."""

    def __init__(self, mask_decoder: nn.Module, prompt_encoder: nn.Module, num_classes: int, output_size: int) -> None:
        super().__init__()
        pretrained = mask_decoder.mask_tokens.weight.detach()
        self.transformer = copy.deepcopy(mask_decoder.transformer)
        self.iou_token = nn.Parameter(mask_decoder.iou_token.weight.detach().clone())
        self.class_tokens = nn.Parameter(torch.stack([pretrained[i % len(pretrained)] for i in range(num_classes)]))
        self.output_upscaling = copy.deepcopy(mask_decoder.output_upscaling)
        self.hypernetworks = class_hypernetworks(mask_decoder, num_classes)
        image_pe, dense = prompt_free_inputs(prompt_encoder)
        self.register_buffer("image_pe", image_pe, persistent=False)
        self.register_buffer("dense", dense, persistent=False)
        channels = self.hypernetworks[0].layers[-1].out_features
        self.extra = nn.ModuleList(UpStep(channels) for _ in range(extra_steps(image_pe.shape[-1], output_size)))
        self.requires_grad_(True)

    def forward(self, embeddings: torch.Tensor, sparse: Optional[torch.Tensor] = None) -> DecoderOutput:
        """``sparse (N, n, 256)``: optional prompt tokens (e.g. boxes) appended after the class tokens."""
        n, c, h, w = embeddings.shape
        tokens = torch.cat([self.iou_token, self.class_tokens], 0).unsqueeze(0).expand(n, -1, -1)
        if sparse is not None:
            tokens = torch.cat([tokens, sparse], 1)
        hs, src = self.transformer(embeddings + self.dense, self.image_pe.expand(n, -1, -1, -1), tokens)
        tokens = hs[:, 1:1 + self.class_tokens.shape[0]]
        features = upscale_pyramid(self.output_upscaling, src.transpose(1, 2).reshape(n, c, h, w))
        for step in self.extra:
            features.append(step(features[-1]))
        return DecoderOutput(class_masks(self.hypernetworks, tokens, features[-1]), tokens, features)


def upscale_pyramid(upscaling: nn.Sequential, src: torch.Tensor, skips: list[torch.Tensor] | None = None,
                    skip_convs: nn.ModuleList | None = None) -> list[torch.Tensor]:
    """Run SAM's ``output_upscaling`` (ConvT, LayerNorm2d, GELU, ConvT, GELU) keeping both levels:
    ``(N, 256, E, E)`` → ``[(N, 64, 2E, 2E), (N, 32, 4E, 4E)]``. With ``skips``, ``skip_convs[i](skips[i])`` is added
    to level i before its activation (H-SAM's hierarchical pixel decoder)."""
    conv1, norm, act1, conv2, act2 = upscaling
    first = norm(conv1(src))
    if skips is not None:
        first = first + skip_convs[0](skips[0])
    first = act1(first)
    second = conv2(first)
    if skips is not None:
        second = second + skip_convs[1](skips[1])
    return [first, act2(second)]


def class_hypernetworks(mask_decoder: nn.Module, num_classes: int) -> nn.ModuleList:
    """One hypernetwork MLP per class, copied from pretrained mask token ``i mod 4``'s, with its output layer zeroed:
    every class logit starts at 0 (uniform probabilities). Starting from the pretrained, confidently saturated mask
    logits, training first collapses to all-background and sits on that plateau for tens of steps."""
    mlps = nn.ModuleList(copy.deepcopy(mask_decoder.output_hypernetworks_mlps[i % mask_decoder.num_mask_tokens])
                         for i in range(num_classes))
    for mlp in mlps:
        nn.init.zeros_(mlp.layers[-1].weight)
        nn.init.zeros_(mlp.layers[-1].bias)
    return mlps


def class_masks(hypernetworks: nn.ModuleList, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Dot products of each class token's hypernetwork output with the pixel features: ``tokens (N, K+1, 256)``,
    ``features (N, c, S, S)`` → logits ``(N, K+1, S, S)``."""
    n, c, h, w = features.shape
    hyper = torch.stack([mlp(tokens[:, i]) for i, mlp in enumerate(hypernetworks)], 1)  # (N, K+1, c)
    return (hyper @ features.flatten(2)).view(n, -1, h, w)
