"""ONNX Runtime on the CPU: the exported encoder and decoder, each with its own thread pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .export import ExportedModels
from .threads import ThreadPlan


class OnnxRuntime:
    def __init__(self, models: ExportedModels, threads: ThreadPlan, name: str = "onnxruntime") -> None:
        self.name = name
        self.encoder = _session(models.encoder, threads.encode)
        self.decoder = _session(models.decoder, threads.decode)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        (embeddings,) = self.encoder.run(None, {"images": _numpy(images)})
        return torch.from_numpy(embeddings)

    def decode(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {"image_embeddings": _numpy(image_embeddings), "image_pe": _numpy(image_pe),
                 "sparse": _numpy(sparse), "dense": _numpy(dense)}
        masks, iou = self.decoder.run(None, feeds)
        return torch.from_numpy(masks), torch.from_numpy(iou)


def _session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to("cpu", torch.float32).numpy())
