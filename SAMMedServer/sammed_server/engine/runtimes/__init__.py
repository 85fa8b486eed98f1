"""Inference runtimes behind :class:`~sammed_server.engine.backend.SamBackend`: torch, ONNX Runtime, OpenVINO.

A runtime runs the two frozen networks of a backend: the image encoder (``encode``) and the mask decoder
(``decode``, all mask outputs; the backend picks single or multimask). The prompt encoder stays in torch: it is
< 1 % of a decode and a learned SAM-assist encoder replaces it, so every runtime serves learned encoders too.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import TYPE_CHECKING, Optional, Protocol

from ...errors import InputError
from .threads import ThreadPlan

if TYPE_CHECKING:
    import torch

RUNTIMES = ("torch", "onnxruntime", "openvino", "onnxruntime-int8")
#: Not identical to torch (int8 decoder weights; Dice against torch in docs/performance.md): never chosen by auto.
APPROXIMATE = ("onnxruntime-int8",)


class InferenceRuntime(Protocol):
    name: str

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, 3, S, S)`` float32 → ``(N, C, E, E)`` float embeddings (any device)."""

    def decode(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One embedding ``(1, C, E, E)`` and B prompt sets → all mask logits ``(B, K, 4E, 4E)``, IoU ``(B, K)``."""


def available(name: str) -> bool:
    """Whether runtime ``name`` can run here (its package is installed)."""
    if name == "torch":
        return True
    return importlib.util.find_spec(name.split("-")[0]) is not None


def choose_runtime(requested: Optional[str], device: torch.device) -> str:
    """``requested`` (checked), else ``auto``: torch on CUDA, ONNX Runtime on the CPU when installed, else torch."""
    if requested in (None, "", "auto"):
        if device.type == "cpu" and available("onnxruntime"):
            return "onnxruntime"
        return "torch"
    if requested not in RUNTIMES:
        raise InputError(f"unknown runtime {requested!r}", f"choose one of: auto, {', '.join(RUNTIMES)}")
    if requested != "torch" and device.type != "cpu":
        raise InputError(f"runtime {requested} runs on the CPU only, not on {device}", "use --runtime torch on a GPU")
    if not available(requested):
        extra = requested.split("-")[0]
        raise InputError(f"runtime {requested} is not installed", f"pip install 'sammed-server[{extra}]'")
    return requested


def build_runtime(name: str, backend, threads: ThreadPlan) -> InferenceRuntime:
    """Runtime ``name`` (from :func:`choose_runtime`) for ``backend``; exports its ONNX files on first use."""
    from .torch_runtime import TorchRuntime

    if name == "torch":
        return TorchRuntime(backend.image_encoder, backend.mask_decoder, backend.device)
    from .export import exported_models

    models = exported_models(backend)
    if name.startswith("onnxruntime"):
        from .onnxruntime_runtime import OnnxRuntime

        if name == "onnxruntime-int8":
            from .export import int8_decoder

            models = replace(models, decoder=int8_decoder(models.decoder))
        return OnnxRuntime(models, threads, name)
    from .openvino_runtime import OpenVinoRuntime

    return OpenVinoRuntime(models, threads)
