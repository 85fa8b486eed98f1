"""GPU checks (skipped without CUDA): bf16 encoder embeddings agree with the CPU ones and masks stay accurate."""

from __future__ import annotations

import pytest
import SimpleITK as sitk
import torch

from sammed_server.engine.cache import EmbeddingCache
from sammed_server.engine.predictor import SlicePredictor
from sammed_server.engine.prompts import SlicePrompts
from sammed_server.engine.registry import load_backend
from sammed_server.engine.volume import load_volume
from sammed_server.evaluation.metrics import dice
from sammed_server.evaluation.prompt_simulation import tight_box

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_matches_cpu(ct_path, ct_labels_path, predictor):
    gpu = SlicePredictor(load_backend("litemedsam", device="cuda"), EmbeddingCache(None, 2**30))
    volume = load_volume(ct_path)
    on_gpu, on_cpu = gpu.prepare(volume), predictor.prepare(volume)
    a, b = gpu.embedding(on_gpu, 2, 24).float(), predictor.embedding(on_cpu, 2, 24).float()
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.99
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path)))[24] == 5
    prediction = gpu.predict(on_gpu, 2, 24, SlicePrompts(box=tight_box(reference, 2)))
    assert dice(prediction.masks[0], reference) >= 0.90
