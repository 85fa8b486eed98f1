"""Low-rank increments on the query and value projections of a frozen attention block.

LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") and FacT (Jie & Deng, 2023, "FacT:
Factor-Tuning for Lightweight Adaptation on Vision Transformer") both add ``Δq(x)`` and ``Δv(x)`` to the outputs of
the fused ``qkv`` Linear of every attention block; this wrapper does the adding for both backbones' layouts.
"""

from __future__ import annotations

import torch
from torch import nn


class QVDelta(nn.Module):
    """Wraps a fused ``qkv`` Linear (C → 3C) and adds ``q_delta(x)`` and ``v_delta(x)`` to its q and v parts.

    ``forward``: ``x (…, C)`` → ``(…, 3C)``. Output layouts:

    - stacked (SAM ViT ``Attention``): ``[q | k | v]``, each C wide;
    - interleaved (TinyViT ``Attention``, ``interleaved=True``): per head ``[q_h k_h v_h]``, i.e. the output viewed
      as ``(…, heads, 3·C/heads)`` splits into q, k, v along the last axis.

    The wrapped Linear is frozen; the delta modules map ``(…, C)`` → ``(…, C)`` and hold the trainable weights.
    """

    def __init__(self, qkv: nn.Linear, q_delta: nn.Module, v_delta: nn.Module, num_heads: int,
                 interleaved: bool) -> None:
        super().__init__()
        if qkv.out_features != 3 * qkv.in_features or qkv.in_features % num_heads:
            raise ValueError(f"expected a C→3C qkv Linear with C divisible by {num_heads} heads, "
                             f"got {qkv.in_features}→{qkv.out_features}")
        self.qkv = qkv.requires_grad_(False)
        self.q_delta, self.v_delta = q_delta, v_delta
        self.num_heads, self.interleaved = num_heads, interleaved

    @property
    def in_features(self) -> int:
        return self.qkv.in_features

    @property
    def out_features(self) -> int:
        return self.qkv.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.qkv(x)
        # views (…, [heads,] 3, C or C/heads) of the output; adding in place avoids building a 3C-wide delta
        parts = out.unflatten(-1, (self.num_heads, 3, -1) if self.interleaved else (3, -1))
        shape = (self.num_heads, -1) if self.interleaved else (-1,)
        parts[..., 0, :] += self.q_delta(x).unflatten(-1, shape)
        parts[..., 2, :] += self.v_delta(x).unflatten(-1, shape)
        return out
