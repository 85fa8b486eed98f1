"""FacT weight increments for the query and value projections of attention blocks.

Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision Transformer", AAAI 2023 (the FacT-TT form):
the increments of all adapted ``C×C`` weights are one tensor factorised as ``ΔW_l = s · U Σ_l Vᵀ`` with ``U, V ∈
R^{C×r}`` shared by every layer and a small ``Σ_l ∈ R^{r×r}`` per layer and per matrix. MA-SAM (Chen et al., "MA-SAM:
Modality-agnostic SAM adaptation for 3D medical image segmentation", 2023) uses it with rank 32 on q and v.

SAM ViT has one width, so one ``FacT`` serves all blocks (exactly the paper). TinyViT's stages have different widths
(128, 160, 320): U and V cannot be shared across widths, so there is one ``FacT`` per width, shared by all the blocks
of that width, each block keeping its own Σ_q and Σ_v.
"""

from __future__ import annotations

import torch
from torch import nn

PROJECTIONS = ("q", "v")


class FacT(nn.Module):
    """Shared factors ``U (C, r)``, ``V (r, C)`` and per-layer cores ``Σ_q, Σ_v (L, r, r)``.

    Σ starts at zero, so every increment is zero at initialisation (the adapted model equals the frozen one);
    U and V start random so that Σ receives a gradient from the first step.
    """

    def __init__(self, dim: int, rank: int, num_layers: int, scale: float = 1.0) -> None:
        super().__init__()
        if rank < 1 or num_layers < 1:
            raise ValueError(f"FacT needs rank ≥ 1 and ≥ 1 layer, got rank={rank}, layers={num_layers}")
        self.dim, self.rank, self.num_layers, self.scale = dim, rank, num_layers, scale
        self.u = nn.Parameter(nn.init.xavier_uniform_(torch.empty(dim, rank)))
        self.v = nn.Parameter(nn.init.xavier_uniform_(torch.empty(rank, dim)))
        self.sigma = nn.ParameterDict({p: nn.Parameter(torch.zeros(num_layers, rank, rank)) for p in PROJECTIONS})

    def delta(self, x: torch.Tensor, layer: int, projection: str) -> torch.Tensor:
        """``x (…, C)`` → ``s · x U Σ_l V`` of shape ``(…, C)``: the output increment of one q or v projection."""
        return self.scale * (((x @ self.u) @ self.sigma[projection][layer]) @ self.v)

    def projection(self, layer: int, projection: str) -> "FacTDelta":
        """The increment of one layer's q or v projection as a module (for the qkv wrapper)."""
        if projection not in PROJECTIONS or not 0 <= layer < self.num_layers:
            raise ValueError(f"no FacT projection {projection!r} for layer {layer} of {self.num_layers}")
        return FacTDelta(self, layer, projection)


class FacTDelta(nn.Module):
    """``x (…, C) → ΔW x (…, C)`` for one layer and one projection; the shared ``FacT`` is a submodule (tied)."""

    def __init__(self, fact: FacT, layer: int, projection: str) -> None:
        super().__init__()
        self.fact, self.layer, self.projection = fact, layer, projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fact.delta(x, self.layer, self.projection)
