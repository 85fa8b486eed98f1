"""ONNX export of a backend's image encoder and mask decoder, once per weights hash, into the runtime cache.

The folder ``<runtime cache>/<model id>-<weights sha256[:16]>/`` holds ``encoder.onnx``, ``decoder.onnx`` and
``manifest.json`` (weights sha256, export version, sha256 of each file). A folder whose manifest does not match the
weights, this code's export version or the files' hashes is stale and is exported again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ...settings import runtime_cache_dir

#: Bump when the exported graphs change (inputs, outputs, opset): every cached export is then redone.
EXPORT_VERSION = 1
OPSET = 17


@dataclass(frozen=True)
class ExportedModels:
    encoder: Path
    decoder: Path


class _DecoderGraph(nn.Module):
    """The mask decoder with all its outputs: ``(1, C, E, E)`` embedding, PE, ``(B, T, C)`` sparse and
    ``(B, C, E, E)`` dense prompt embeddings → mask logits ``(B, K, 4E, 4E)`` and IoU ``(B, K)``."""

    def __init__(self, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.mask_decoder = mask_decoder

    def forward(self, image_embeddings, image_pe, sparse, dense):
        return self.mask_decoder.predict_masks(image_embeddings, image_pe, sparse, dense)


def exported_models(backend) -> ExportedModels:
    """The ONNX files for ``backend`` (a :class:`SamBackend`), exported now unless a valid export is cached."""
    folder = runtime_cache_dir() / f"{backend.model_id}-{backend.weights_sha256[:16]}"
    models = ExportedModels(folder / "encoder.onnx", folder / "decoder.onnx")
    if not _is_current(folder / "manifest.json", backend.weights_sha256, models):
        folder.mkdir(parents=True, exist_ok=True)
        _export_encoder(backend, models.encoder)
        _export_decoder(backend, models.decoder)
        manifest = {
            "model_id": backend.model_id, "weights_sha256": backend.weights_sha256, "export_version": EXPORT_VERSION,
            "opset": OPSET, "torch": torch.__version__,
            "files": {path.name: _sha256(path) for path in (models.encoder, models.decoder)},
        }
        _write_atomic(folder / "manifest.json", json.dumps(manifest, indent=1).encode())
    return models


def _is_current(manifest_path: Path, weights_sha256: str, models: ExportedModels) -> bool:
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        return (
            manifest["weights_sha256"] == weights_sha256
            and manifest["export_version"] == EXPORT_VERSION
            and all(files[path.name] == _sha256(path) for path in (models.encoder, models.decoder))
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _export_encoder(backend, path: Path) -> None:
    size = backend.input_size
    example = torch.zeros(1, 3, size, size)
    _export(backend.image_encoder, (example,), path, ["images"], ["embeddings"], {"images": {0: "n"}, "embeddings": {0: "n"}})


def _export_decoder(backend, path: Path) -> None:
    channels, size = backend.mask_decoder.transformer_dim, backend.embedding_size
    example = (
        torch.zeros(1, channels, size, size), torch.zeros(1, channels, size, size),
        torch.zeros(2, 3, channels), torch.zeros(2, channels, size, size),
    )
    axes = {"sparse": {0: "b", 1: "t"}, "dense": {0: "b"}, "masks": {0: "b"}, "iou": {0: "b"}}
    _export(_DecoderGraph(backend.mask_decoder), example, path, ["image_embeddings", "image_pe", "sparse", "dense"],
            ["masks", "iou"], axes)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic (static here)
        torch.onnx.export(module.eval(), args, str(partial), input_names=inputs, output_names=outputs,
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    os.replace(partial, path)


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def int8_decoder(decoder: Path) -> Path:
    """The decoder with int8 weights (ONNX Runtime dynamic quantisation), made once per fp32 decoder file: its
    name carries the source's hash, so a re-exported decoder gets a new one. Opt-in only: masks differ from torch."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = decoder.with_name(f"decoder-int8-{_sha256(decoder)[:16]}.onnx")
    if not path.exists():
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial.onnx")
        quantize_dynamic(str(decoder), str(partial), weight_type=QuantType.QInt8)
        os.replace(partial, path)
    return path
