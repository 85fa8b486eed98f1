"""LoRA on the query and value projections of every attention block (Hu et al., 2021, "LoRA: Low-Rank
Adaptation of Large Language Models"), as H-SAM and SAMed adapt SAM's encoder (rank 4)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .qkv import QVDelta
from .stem import EncoderTrunk


class LoRA(nn.Module):
    """``x (…, C_in)`` → ``B(A x) (…, C_out)``, rank r; ``A`` Kaiming-uniform, ``B`` zero, so it starts at 0."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be ≥ 1, got {rank}")
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))


def add_lora(trunk: EncoderTrunk, rank: int) -> list[nn.Parameter]:
    """Wrap every block's ``attn.qkv`` of ``trunk`` with LoRA increments on q and v; returns the new parameters."""
    parameters: list[nn.Parameter] = []
    for block in trunk.attention_blocks():
        qkv = block.attn.qkv
        width = qkv.in_features
        q, v = LoRA(width, width, rank), LoRA(width, width, rank)
        block.attn.qkv = QVDelta(qkv, q, v, num_heads=block.attn.num_heads, interleaved=trunk.tinyvit)
        parameters += [*q.parameters(), *v.parameters()]
    return parameters
