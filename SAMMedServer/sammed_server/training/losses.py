"""Segmentation losses on logits ``(N, H, W)`` against binary targets of the same shape."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
