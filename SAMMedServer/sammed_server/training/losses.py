"""Every training loss in one place.

Binary losses (SAM-assist prompt encoders, SAP-Net) take logits ``(N, H, W)`` and binary targets of the same shape;
the multi-class loss of SAMed / H-SAM / MA-SAM, 0.2·cross-entropy + 0.8·soft Dice, takes ``(N, K+1, S, S)`` logits.
Zhang & Liu, 2023, "Customized Segment Anything Model for Medical Image Segmentation" (SAMed) introduced that
weighting; H-SAM (Cheng et al., CVPR 2024) and MA-SAM (Chen et al., 2023) train with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CE_WEIGHT, DICE_WEIGHT = 0.2, 0.8


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice, averaged over the batch."""
    return biased_dice_loss(logits, target, beta=1.0, eps=eps)


def biased_dice_loss(logits: torch.Tensor, target: torch.Tensor, beta: float, eps: float = 1.0) -> torch.Tensor:
    """SAM^Med's biased Dice, ``1 − 2TP / (2TP + β·FP + FN)``: β > 1 punishes false positives more."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1).float()
    tp = (prob * target).sum(1)
    fp = (prob * (1 - target)).sum(1)
    fn = ((1 - prob) * target).sum(1)
    return (1 - (2 * tp + eps) / (2 * tp + beta * fp + fn + eps)).mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice + binary cross-entropy, equally weighted."""
    return soft_dice_loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target.float())



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
