"""The multi-class segmentation loss of SAMed / H-SAM / MA-SAM: 0.2·cross-entropy + 0.8·soft Dice.

Zhang & Liu, 2023, "Customized Segment Anything Model for Medical Image Segmentation" (SAMed) introduced this
weighting; H-SAM (Cheng et al., CVPR 2024) and MA-SAM (Chen et al., 2023) train with it.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

CE_WEIGHT, DICE_WEIGHT = 0.2, 0.8


def ce_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``0.2·CE + 0.8·(1 − mean soft Dice over the K+1 classes)``.

    ``logits (N, K+1, S, S)``, ``labels (N, S, S)`` long, −1 ignored. Dice sums over the whole batch per class.
    A batch without any labelled pixel gives 0 (kept in the graph).
    """
    valid = labels >= 0
    if not bool(valid.any()):
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, labels, ignore_index=-1)
    prob = logits.softmax(1).permute(0, 2, 3, 1)[valid]  # (P, K+1)
    target = F.one_hot(labels[valid], logits.shape[1]).to(prob)
    dice = (2 * (prob * target).sum(0) + 1.0) / (prob.sum(0) + target.sum(0) + 1.0)
    return CE_WEIGHT * ce + DICE_WEIGHT * (1 - dice.mean())
