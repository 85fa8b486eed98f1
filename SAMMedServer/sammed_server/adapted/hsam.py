"""H-SAM: a LoRA-adapted SAM encoder with two hierarchical decoding stages for automatic multi-organ segmentation.

Cheng et al., CVPR 2024, "Unleashing the Potential of SAM for Medical Adaptation via Hierarchical Decoding".

- Encoder: frozen SAM encoder with LoRA (rank 4) on q and v of every attention block (``lora.py``).
- Stage 1: SAM's decoder with K+1 class tokens (``decoder.ClassDecoder``) gives a prior probability map P.
- Stage 2: (a) class-balanced mask-guided self-attention (:class:`ClassBalancedMaskAttention`): P-weighted class
  prototypes, each normalised by its own class mass (so small organs weigh as much as large ones), attend to each
  other; a working gate — the sigmoid of a learned per-class, per-channel score — scales what flows back to the
  pixels (through P) and into the stage-2 class tokens. The authors' released gate is a softmax over a single
  channel, which is identically 1 (a no-op); ours is a real gate. (b) learnable mask cross-attention in every
  token→image attention of the decoder transformer: ``out = (M ⊙ softmax(QKᵀ/√d)) V + X`` with
  ``M = (1 − w) + w·P`` and a learned weight ``w = sigmoid(θ)`` per layer and head (:func:`prior_masked_attention`).
  (c) hierarchical pixel decoder: the stage-2 upscaling adds zero-initialised 1×1 convolutions of the stage-1
  features at SAM's two ×2 levels (E → 2E → 4E), then ×2 steps up to the full model-input resolution, each adding
  the stage-1 feature of that level (none for LiteMedSAM, whose 4E = 256 is already its input size).
- Loss: ``w₁·L(stage 1) + (1 − w₁)·L(stage 2)``, L = 0.2·CE + 0.8·Dice, with the stage-1 weight decaying linearly
  over training from 0.5 to 0.1 (:func:`stage1_weight`).
- Inference: the mean of the two stages' probabilities.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..training.losses import ce_dice_loss
from .base import AutoSegModel
from .decoder import (
    ClassDecoder, DecoderOutput, UpStep, class_hypernetworks, class_masks, extra_steps, prompt_free_inputs, upscale_pyramid,
)
from .lora import add_lora
from .stem import EncoderTrunk

STAGE1_WEIGHT = (0.5, 0.1)  # stage-1 loss weight at the start and at the end of training


def stage1_weight(progress: float) -> float:
    """The stage-1 loss weight at ``progress`` ∈ [0, 1]: linear from 0.5 to 0.1."""
    start, end = STAGE1_WEIGHT
    return start + (end - start) * min(max(progress, 0.0), 1.0)


class ClassBalancedMaskAttention(nn.Module):
    """Class-balanced mask-guided self-attention with a sigmoid gate.

    ``forward(pixels (N, HW, C), prior (N, K+1, HW))`` → ``(pixels', context)``: pixels plus the prior-weighted gated
    class context ``(N, HW, C)`` (the output projection starts at zero, so pixels' = pixels at init), and the gated
    class context ``(N, K+1, C)`` that initialises the stage-2 class tokens.
    """

    def __init__(self, dim: int, heads: int = 8) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.gate = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, pixels: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mass = prior.sum(-1, keepdim=True).clamp_min(1e-6)
        prototypes = (prior @ pixels) / mass  # (N, K+1, C), each class averaged over its own mass
        attended, _ = self.attention(prototypes, prototypes, prototypes, need_weights=False)
        classes = self.norm(prototypes + attended)
        context = torch.sigmoid(self.gate(classes)) * classes  # the gate: per class, per channel, in (0, 1)
        return pixels + prior.transpose(1, 2) @ self.out(context), context


def prior_masked_attention(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           mask: torch.Tensor) -> torch.Tensor:
    """SAM's ``Attention`` with the attention map multiplied by ``mask (N, heads, K+1, HW)`` after the softmax.

    ``q (N, K+1, C)`` tokens, ``k``, ``v`` ``(N, HW, C)`` pixels → ``(N, K+1, C)`` (before the residual)."""
    heads = attention.num_heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)

    qh, kh, vh = split(attention.q_proj(q)), split(attention.k_proj(k)), split(attention.v_proj(v))
    weights = torch.softmax(qh @ kh.transpose(-2, -1) / math.sqrt(qh.shape[-1]), -1) * mask
    out = (weights @ vh).transpose(1, 2).flatten(2)
    return attention.out_proj(out)


class PriorGuidedDecoder(nn.Module):
    """H-SAM's stage-2 decoder; ``forward(embeddings (N, 256, E, E), stage1: DecoderOutput)`` → logits ``(N, K+1, S, S)``.

    Starts from the pretrained SAM decoder (transformer, upscaling, hypernetworks, mask tokens ``i mod 4``)."""

    def __init__(self, mask_decoder: nn.Module, prompt_encoder: nn.Module, num_classes: int, output_size: int) -> None:
        super().__init__()
        pretrained = mask_decoder.mask_tokens.weight.detach()
        dim = pretrained.shape[1]
        self.balanced = ClassBalancedMaskAttention(dim)
        self.transformer = copy.deepcopy(mask_decoder.transformer)
        heads = self.transformer.layers[0].cross_attn_token_to_image.num_heads
        self.prior_logit = nn.Parameter(torch.full((len(self.transformer.layers) + 1, heads), 2.0))  # w ≈ 0.88
        self.class_tokens = nn.Parameter(torch.stack([pretrained[i % len(pretrained)] for i in range(num_classes)]))
        self.output_upscaling = copy.deepcopy(mask_decoder.output_upscaling)
        levels = [self.output_upscaling[0].out_channels, self.output_upscaling[3].out_channels]
        self.skips = nn.ModuleList(nn.Conv2d(c, c, 1) for c in levels)
        for conv in self.skips:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.hypernetworks = class_hypernetworks(mask_decoder, num_classes)
        image_pe, dense = prompt_free_inputs(prompt_encoder)
        self.register_buffer("image_pe", image_pe, persistent=False)
        self.register_buffer("dense", dense, persistent=False)
        self.extra = nn.ModuleList(UpStep(levels[1]) for _ in range(extra_steps(image_pe.shape[-1], output_size)))
        self.requires_grad_(True)

    def forward(self, embeddings: torch.Tensor, stage1: DecoderOutput) -> torch.Tensor:
        n, c, h, w = embeddings.shape
        prior = F.adaptive_avg_pool2d(stage1.logits.softmax(1), (h, w)).flatten(2)  # (N, K+1, HW)
        pixels = (embeddings + self.dense).flatten(2).transpose(1, 2)
        pixels, context = self.balanced(pixels, prior)
        queries = self.class_tokens.unsqueeze(0) + context
        keys, token_pe = pixels, self.class_tokens.unsqueeze(0).expand(n, -1, -1)
        key_pe = self.image_pe.flatten(2).transpose(1, 2)
        masks = self._masks(prior)
        for i, layer in enumerate(self.transformer.layers):
            queries, keys = self._layer(layer, queries, keys, token_pe, key_pe, masks[i])
        final = prior_masked_attention(self.transformer.final_attn_token_to_image, queries + token_pe, keys + key_pe,
                                       keys, masks[-1])
        queries = self.transformer.norm_final_attn(queries + final)
        src = keys.transpose(1, 2).reshape(n, c, h, w)
        features = upscale_pyramid(self.output_upscaling, src, stage1.features[:2], self.skips)
        for step, skip in zip(self.extra, stage1.features[2:]):
            features.append(step(features[-1]) + skip)
        return class_masks(self.hypernetworks, queries, features[-1])

    def _masks(self, prior: torch.Tensor) -> torch.Tensor:
        """Learnable prior masks ``(layers+1, N, heads, K+1, HW)``: ``(1 − w) + w·P`` per layer and head."""
        weight = torch.sigmoid(self.prior_logit)[:, None, :, None, None]
        return (1 - weight) + weight * prior[None, :, None]

    @staticmethod
    def _layer(layer: nn.Module, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor,
               key_pe: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SAM's two-way attention block with the token→image attention replaced by the prior-masked one."""
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        queries = layer.norm2(queries + prior_masked_attention(
            layer.cross_attn_token_to_image, queries + query_pe, keys + key_pe, keys, mask))
        queries = layer.norm3(queries + layer.mlp(queries))
        keys = layer.norm4(keys + layer.cross_attn_image_to_token(q=keys + key_pe, k=queries + query_pe, v=queries))
        return queries, keys


class HSAM(AutoSegModel):
    """H-SAM on single slices (window 1); see the module docstring. Stems ``(B, 1, *stem_shape)``."""

    mode = "hsam"
    window = 1

    def __init__(self, trunk: EncoderTrunk, lora: list[nn.Parameter], stage1: ClassDecoder,
                 stage2: PriorGuidedDecoder, num_classes: int) -> None:
        super().__init__()
        self.trunk, self.stage1, self.stage2, self.num_classes = trunk, stage1, stage2, num_classes
        self._lora = lora

    def trainable_parameters(self) -> list[nn.Parameter]:
        """LoRA A and B of every block, and both decoders in full."""
        return [*self._lora, *self.stage1.parameters(), *self.stage2.parameters()]

    def embed(self, stems: torch.Tensor) -> torch.Tensor:
        if stems.dim() < 3 or stems.shape[1] != self.window:
            raise InputError(f"H-SAM takes single slices, got stems of shape {tuple(stems.shape)}",
                             "pass stems shaped (B, 1, *stem_shape)")
        return self.trunk(stems.flatten(0, 1)).unsqueeze(1)

    def stage_logits(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 256, E, E)`` → stage-1 and stage-2 logits, each ``(N, K+1, S, S)``."""
        first = self.stage1(embeddings)
        return first.logits, self.stage2(embeddings, first)

    def training_loss(self, stems: torch.Tensor, labels: torch.Tensor, progress: float) -> torch.Tensor:
        first, second = self.stage_logits(self.embed(stems).flatten(0, 1))
        labels = labels.flatten(0, 1)
        weight = stage1_weight(progress)
        return weight * ce_dice_loss(first, labels) + (1 - weight) * ce_dice_loss(second, labels)

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        first, second = self.stage_logits(embeddings.flatten(0, 1).float())
        probabilities = (first.softmax(1) + second.softmax(1)) / 2
        return probabilities.view(*embeddings.shape[:2], *probabilities.shape[1:])

    @torch.no_grad()
    def probabilities(self, stems: torch.Tensor) -> torch.Tensor:
        return self.decode(self.embed(stems))


def build_hsam(backend, num_classes: int, rank: int = 4) -> HSAM:
    """H-SAM on ``backend``'s frozen encoder (TinyViT or SAM ViT) for ``num_classes`` = K organs + background."""
    if num_classes < 2:
        raise InputError(f"an automatic model needs at least one organ and background, got {num_classes} classes")
    trunk = EncoderTrunk(backend.image_encoder)
    lora = add_lora(trunk, rank)
    size = backend.input_size
    stage1 = ClassDecoder(backend.mask_decoder, backend.prompt_encoder, num_classes, size)
    stage2 = PriorGuidedDecoder(backend.mask_decoder, backend.prompt_encoder, num_classes, size)
    return HSAM(trunk, lora, stage1, stage2, num_classes).to(backend.device)
