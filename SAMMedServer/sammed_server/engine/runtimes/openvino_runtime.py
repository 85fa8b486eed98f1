"""OpenVINO on the CPU: the same exported ONNX files, compiled once per process."""

from __future__ import annotations

from pathlib import Path

import torch

from .export import ExportedModels
from .onnxruntime_runtime import _numpy
from .threads import ThreadPlan


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, models: ExportedModels, threads: ThreadPlan) -> None:
        self.encoder = _compile(models.encoder, threads.encode)
        self.decoder = _compile(models.decoder, threads.decode)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        request = self.encoder.create_infer_request()  # one per call: encode and decode may run concurrently
        return torch.from_numpy(request.infer({"images": _numpy(images)})[0].copy())

    def decode(
        self, image_embeddings: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        request = self.decoder.create_infer_request()
        out = request.infer({"image_embeddings": _numpy(image_embeddings), "image_pe": _numpy(image_pe),
                             "sparse": _numpy(sparse), "dense": _numpy(dense)})
        return torch.from_numpy(out[0].copy()), torch.from_numpy(out[1].copy())


def _compile(path: Path, threads: int):
    import openvino

    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    return openvino.Core().compile_model(str(path), "CPU", config)
