"""MA-SAM: automatic multi-organ segmentation of 5-slice windows with an adapted SAM encoder.

Chen et al., "MA-SAM: Modality-agnostic SAM adaptation for 3D medical image segmentation", 2023. The frozen SAM
encoder is adapted with FacT increments on q and v (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on
Vision Transformer", AAAI 2023; rank 32, see ``fact.py``) and two 3D adapters per block that mix adjacent slices
(``adapter3d.py``). The mask decoder (``decoder.ClassDecoder``) is trained in full: one output token per class
(K organs + background), no prompt by default, and progressive ×2 transposed-convolution stages after SAM's own ×4
upscaling until the logits reach the model input size (SAM ViT at 1024 px: 64 → 256 → 512 → 1024; LiteMedSAM's 64×64
embedding is already upscaled to its 256 px input, so it needs no extra stage). Optional per-slice box prompts come
from a 3D box (``window_boxes``). The loss is ``losses.ce_dice_loss`` (0.2·CE + 0.8·Dice over the K+1 classes).

The encoder runs from cached frozen-stem outputs (``stem.py``): TinyViT's stem is ``patch_embed`` + ``layers[0]``
(no attention, nothing adapted) giving tokens ``(L, C)``; SAM ViT's is ``patch_embed`` giving ``(H, W, C)``.
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..errors import InputError
from ..training.losses import ce_dice_loss
from .adapter3d import Adapter3D, TinyViTBlock3D, ViTBlock3D
from .base import AutoSegModel
from .decoder import ClassDecoder
from .fact import FacT
from .qkv import QVDelta
from .stem import EncoderTrunk

WINDOW = 5


def inject_masam(trunk: EncoderTrunk, rank: int, frames: int, adapter_ratio: float,
                 fact_scale: float) -> nn.ModuleDict:
    """Put FacT on q, v and two 3D adapters into every attention block of ``trunk`` (in place); return the FacT
    modules, one per attention width (key: the width as text)."""
    if trunk.tinyvit:
        owners = [(layer.blocks, i) for layer in trunk.layers for i in range(len(layer.blocks))]
    else:
        owners = [(trunk.blocks, i) for i in range(len(trunk.blocks))]
    widths = [owner[i].attn.qkv.in_features for owner, i in owners]
    facts = nn.ModuleDict({str(w): FacT(w, rank, widths.count(w), fact_scale) for w in sorted(set(widths))})
    seen = {w: 0 for w in widths}
    wrapper = TinyViTBlock3D if trunk.tinyvit else ViTBlock3D
    for (owner, i), width in zip(owners, widths):
        block, fact, layer = owner[i], facts[str(width)], seen[width]
        seen[width] += 1
        block.attn.qkv = QVDelta(block.attn.qkv, fact.projection(layer, "q"), fact.projection(layer, "v"),
                                 num_heads=block.attn.num_heads, interleaved=trunk.tinyvit)
        hidden = max(1, round(width * adapter_ratio))
        owner[i] = wrapper(block, Adapter3D(width, hidden, frames), Adapter3D(width, hidden, frames))
    return facts


class MASAM(AutoSegModel):
    """MA-SAM on windows of ``window`` adjacent slices; see the module docstring.

    ``stems (B, T, *stem_shape)`` with T = ``window``; optional ``boxes (B, T, 4)`` in model-input pixels
    ``(x0, y0, x1, y1)``, a row of NaN meaning "no box on this slice" (see ``window_boxes``).
    """

    mode = "masam"

    def __init__(self, trunk: EncoderTrunk, facts: nn.ModuleDict, decoder: ClassDecoder,
                 prompt_encoder: nn.Module, num_classes: int, input_size: int, window: int = WINDOW) -> None:
        super().__init__()
        self.trunk, self.facts, self.decoder = trunk, facts, decoder
        self.window, self.num_classes, self.input_size = window, num_classes, input_size
        self.prompt_encoder = prompt_encoder.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """FacT U, V, Σ of every width, the 3D adapters and the whole class decoder."""
        adapters = [p for m in self.trunk.modules() if isinstance(m, Adapter3D) for p in m.parameters()]
        return list(self.facts.parameters()) + adapters + list(self.decoder.parameters())

    def embed(self, stems: torch.Tensor) -> torch.Tensor:
        """``(B, T, *stem_shape)`` → adapted embeddings ``(B, T, 256, E, E)`` (each depends on the whole window)."""
        b, t = self._check(stems, None)
        embeddings = self.trunk(stems.flatten(0, 1))
        return embeddings.view(b, t, *embeddings.shape[1:])

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``(B, T, 256, E, E)`` from :meth:`embed` → probabilities ``(B, T, K+1, S, S)``."""
        b, t = embeddings.shape[:2]
        self._check(embeddings, boxes)
        logits = self._logits(embeddings.flatten(0, 1), None if boxes is None else boxes.flatten(0, 1))
        return logits.softmax(1).view(b, t, *logits.shape[1:])

    @torch.no_grad()
    def probabilities(self, stems: torch.Tensor, boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Softmax probabilities ``(B, T, K+1, S, S)`` for every slice of each window."""
        return self.decode(self.embed(stems), boxes)

    def training_loss(self, stems: torch.Tensor, labels: torch.Tensor, progress: float,
                      boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """0.2·CE + 0.8·soft Dice against ``labels (B, T, S, S)`` (−1 ignored). The encoder sees the whole window;
        the decoder runs only on slices with labelled pixels. ``progress`` is unused: MA-SAM has one stage."""
        b, t = self._check(stems, boxes)
        if labels.shape != (b, t, self.input_size, self.input_size):
            raise InputError(f"labels of shape {tuple(labels.shape)} do not fit stems {tuple(stems.shape)}",
                             f"labels must be ({b}, {t}, {self.input_size}, {self.input_size}) class indices, −1 "
                             "where unlabelled")
        labels = labels.flatten(0, 1)
        keep = (labels >= 0).flatten(1).any(1)
        if not bool(keep.any()):
            return self.decoder.class_tokens.sum() * 0.0
        embeddings = self.trunk(stems.flatten(0, 1))[keep]
        logits = self._logits(embeddings, None if boxes is None else boxes.flatten(0, 1)[keep])
        return ce_dice_loss(logits, labels[keep])

    def _check(self, stems: torch.Tensor, boxes: Optional[torch.Tensor]) -> tuple[int, int]:
        """``(B, T)`` of a valid batch of windows (stems or embeddings), else an ``InputError``."""
        if stems.dim() < 3 or stems.shape[1] != self.window:
            raise InputError(f"MA-SAM takes windows of {self.window} slices, got stems of shape {tuple(stems.shape)}",
                             f"pass stems shaped (B, {self.window}, *stem_shape)")
        b, t = stems.shape[:2]
        if boxes is not None and boxes.shape != (b, t, 4):
            raise InputError(f"boxes must be shaped ({b}, {t}, 4), got {tuple(boxes.shape)}",
                             "one (x0, y0, x1, y1) box per slice of each window, NaN where there is none")
        return b, t

    def _logits(self, embeddings: torch.Tensor, boxes: Optional[torch.Tensor]) -> torch.Tensor:
        """Embeddings ``(N, 256, E, E)`` and optional boxes ``(N, 4)`` → logits ``(N, K+1, S, S)``. Prompt-free:
        no prompt token; with boxes: two box-corner tokens per slice, or two not-a-point tokens for a NaN row."""
        sparse = None
        if boxes is not None:
            encoder = self.prompt_encoder
            boxes = boxes.to(embeddings)
            missing = torch.isnan(boxes).any(1)
            corners, _ = encoder(points=None, boxes=torch.nan_to_num(boxes), masks=None)
            no_box = encoder.not_a_point_embed.weight.expand(len(boxes), 2, -1)
            sparse = torch.where(missing[:, None, None], no_box, corners)
        return self.decoder(embeddings, sparse).logits


def window_boxes(box: tuple[float, float, float, float], first: int, last: int, start: int,
                 window: int = WINDOW) -> torch.Tensor:
    """Per-slice box prompts ``(window, 4)`` from a 3D box: the 2D box ``(x0, y0, x1, y1)`` (model-input pixels) on
    slices ``first..last`` (inclusive, volume indices) and NaN on the other slices of the window that starts at
    slice ``start``."""
    if last < first:
        raise InputError(f"3D box slice range {first}..{last} is empty", "give first ≤ last")
    rows = torch.full((window, 4), float("nan"))
    for t in range(window):
        if first <= start + t <= last:
            rows[t] = torch.tensor(box, dtype=torch.float32)
    return rows


def build_masam(backend, num_classes: int, rank: int = 32, window: int = WINDOW, adapter_ratio: float = 0.25,
                fact_scale: float = 1.0, input_size: Optional[int] = None) -> MASAM:
    """An untrained MA-SAM on a loaded ``SamBackend`` (TinyViT or SAM ViT) for ``num_classes`` = K+1 outputs.

    ``adapter_ratio``: adapter bottleneck width / block width. ``input_size``: the model input side S (default the
    backend's; the stem must be computed at that size). At initialisation the adapted encoder equals the frozen one.
    """
    if num_classes < 2:
        raise InputError(f"MA-SAM needs at least 2 classes (background + 1 organ), got {num_classes}")
    if rank < 1 or window < 1:
        raise InputError(f"rank and window must be ≥ 1, got rank={rank}, window={window}")
    trunk = EncoderTrunk(backend.image_encoder)
    facts = inject_masam(trunk, rank, window, adapter_ratio, fact_scale)
    size = input_size or backend.input_size
    embedding = size * backend.embedding_size // backend.input_size  # SAM ViT: size/16, TinyViT: size/4
    prompt_encoder = copy.deepcopy(backend.prompt_encoder)
    prompt_encoder.image_embedding_size = (embedding, embedding)
    prompt_encoder.input_image_size = (size, size)
    decoder = ClassDecoder(backend.mask_decoder, prompt_encoder, num_classes, size)
    device = next(trunk.parameters()).device  # the backend's: the new FacT, adapter and token weights follow it
    return MASAM(trunk, facts, decoder, prompt_encoder, num_classes, size, window).to(device)
