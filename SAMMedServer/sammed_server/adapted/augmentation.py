"""Training-time augmentation of automatic models: a random in-plane rotation and scaling per window.

SAMed, H-SAM and MA-SAM train with random rotations (MA-SAM also scales). Every slice of a window gets the same
transform, so MA-SAM's 3D adapters still see aligned neighbours; the labels follow with nearest-neighbour sampling,
and what the transform brings in from outside the image is ignored (−1). Flips, which the papers also use, are
left out on purpose: a left-right flip of an axial slice puts the left kidney where the right one belongs while its
label still says "left", which teaches the model to confuse the two sides.

Augmented images change every step, so their stem outputs cannot be cached: :class:`AugmentedStems` recomputes
them (TinyViT's stem is about half the encoder's time; for the frozen-encoder baseline it is the whole encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from .features import FeatureSource


@dataclass(frozen=True)
class RandomRotateScale:
    """Rotation by an angle uniform in ±``max_degrees`` and scaling uniform in ``scale``, about the image centre."""

    max_degrees: float = 20.0
    scale: tuple[float, float] = (0.9, 1.1)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``images (B, T, C, S, S)``, ``labels (B, T, S, S)`` (−1 = ignore) → both transformed, one draw per window."""
        b, t, c, s, _ = images.shape
        draws = torch.rand(b, 2, generator=generator)
        angles = (2 * draws[:, 0] - 1) * math.radians(self.max_degrees)
        scales = self.scale[0] + (self.scale[1] - self.scale[0]) * draws[:, 1]
        cos, sin = torch.cos(angles) / scales, torch.sin(angles) / scales  # output → input sampling: inverse zoom
        theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
        grid = F.affine_grid(theta.repeat_interleave(t, 0).to(images), [b * t, c, s, s], align_corners=False)
        moved = F.grid_sample(images.flatten(0, 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        shifted = (labels.flatten(0, 1)[:, None] + 1).to(images)  # 0 outside the image after sampling → −1
        moved_labels = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return moved.view_as(images), (moved_labels[:, 0].round().long() - 1).view_as(labels)


class AugmentedStems:
    """Batch preparation for training on images: augment ``(B, T, 3, S, S)`` windows, then run the frozen stem
    (or encoder) of ``features`` → ``(B, T, *feature_shape)`` and the transformed labels."""

    def __init__(self, features: FeatureSource, augmentation: RandomRotateScale) -> None:
        self.features, self.augmentation = features, augmentation

    def __call__(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.augmentation(images, labels, generator)
        stems = self.features.encode(images.flatten(0, 1))
        return stems.view(*images.shape[:2], *stems.shape[1:]).to(images.device), labels
