"""The interface every automatic (prompt-free, multi-organ) segmentation model implements.

An automatic model maps cached frozen-stem outputs (``stem.py``) of a window of T consecutive slices to per-class
probabilities for every slice of the window. Trainers, stores and inference code use only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn


class AutoSegModel(nn.Module, ABC):
    """A SAM-based automatic segmentation model over K organs + background.

    Attributes:
        mode: ``"hsam"``, ``"masam"`` or ``"decoder_only"`` (the frozen-encoder baseline).
        window: slices per input window: 1 (H-SAM, baseline) or 5 (MA-SAM).
        num_classes: K organs + background = K + 1 output channels.
    """

    mode: str
    window: int
    num_classes: int
    #: True when no part of the encoder trains: the "stems" are then the frozen encoder's full embeddings
    #: ``(256, E, E)`` (computed once per slice), not the stem outputs of ``stem.py``.
    frozen_encoder: bool = False

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (everything else stays frozen)."""

    @abstractmethod
    def training_loss(self, stems: torch.Tensor, labels: torch.Tensor, progress: float) -> torch.Tensor:
        """Scalar loss of one batch.

        Args:
            stems: ``(B, T, *stem_shape)`` cached frozen-stem outputs of a T-slice window.
            labels: ``(B, T, S, S)`` long class indices at the model input size S; −1 = unlabelled (ignored).
            progress: fraction of training done, in [0, 1] (for scheduled loss weights).
        """

    @abstractmethod
    def probabilities(self, stems: torch.Tensor) -> torch.Tensor:
        """``(B, T, *stem_shape)`` → ``(B, T, K+1, S, S)`` softmax probabilities for every slice of the window.

        Called in eval mode under ``torch.no_grad()``.
        """

    def embed(self, stems: torch.Tensor) -> torch.Tensor:
        """Optional split for inference caching: ``(B, T, *stem_shape)`` → adapted embeddings ``(B, T, 256, E, E)``.

        Models that implement it and :meth:`decode` get their embeddings cached per window at inference."""
        raise NotImplementedError

    def decode(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Optional: ``(B, T, 256, E, E)`` from :meth:`embed` → probabilities ``(B, T, K+1, S, S)`` (eval, no grad)."""
        raise NotImplementedError

    @property
    def splits_encoder(self) -> bool:
        """Whether this model implements :meth:`embed` and :meth:`decode`."""
        cls = type(self)
        return cls.embed is not AutoSegModel.embed and cls.decode is not AutoSegModel.decode
