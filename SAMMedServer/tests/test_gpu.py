"""GPU checks (skipped without CUDA): bf16 encoder embeddings agree with the CPU ones and masks stay accurate; an
automatic model trained on the GPU predicts on the CPU as it does on the GPU."""

from __future__ import annotations

import math

import pytest
import SimpleITK as sitk
import torch

from sammed_server.adapted.data import AnnotatedVolume, parse_classes, training_windows
from sammed_server.adapted.features import FeatureSource
from sammed_server.adapted.inference import slice_probabilities
from sammed_server.adapted.preprocessing import preprocessing_for
from sammed_server.adapted.store import build_model
from sammed_server.adapted.training import AutoTrainingConfig, load_trainable_state, train_auto_model, trainable_state
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


@pytest.mark.parametrize("mode", ["hsam", "masam"])
def test_auto_model_trained_on_cuda_predicts_the_same_on_cpu(mode, ct_path, ct_labels_path, backend):
    volume, labels = load_volume(ct_path), load_volume(ct_labels_path).array
    classes = parse_classes("5=liver,1=spleen", None)
    gpu_backend = load_backend("litemedsam", device="cuda")
    on_gpu = build_model(mode, gpu_backend, classes.num_classes)
    assert all(p.is_cuda for p in on_gpu.parameters())
    gpu_features = FeatureSource(gpu_backend, preprocessing_for(mode), EmbeddingCache(None, 2**30))
    samples = training_windows([AnnotatedVolume(volume, labels, (12, 20))], classes, gpu_features, on_gpu.window)
    record = train_auto_model(on_gpu, samples, AutoTrainingConfig(iterations=3))
    assert all(math.isfinite(loss) for loss in record.losses)
    on_cpu = build_model(mode, backend, classes.num_classes)
    load_trainable_state(on_cpu, trainable_state(on_gpu))
    cpu_features = FeatureSource(backend, preprocessing_for(mode), EmbeddingCache(None, 2**30))
    gpu_p = slice_probabilities(on_gpu, gpu_features, volume, slices=[15])[15]
    cpu_p = slice_probabilities(on_cpu, cpu_features, volume, slices=[15])[15]
    assert (gpu_p.argmax(0) == cpu_p.argmax(0)).float().mean() > 0.99
