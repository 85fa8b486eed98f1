"""Runtimes (torch, ONNX Runtime, OpenVINO) on the real LiteMedSAM and the sample CT: identical masks, embeddings
within fp16 rounding, one cache for all runtimes, and ONNX exports reused per weights hash and redone when stale."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from sammed_server.engine.cache import EmbeddingCache
from sammed_server.engine.predictor import SlicePredictor
from sammed_server.engine.prompts import SlicePrompts
from sammed_server.engine.registry import load_backend
from sammed_server.engine.runtimes import available, choose_runtime
from sammed_server.engine.runtimes.export import exported_models
from sammed_server.engine.runtimes.threads import ThreadPlan
from sammed_server.engine.volume import load_volume
from sammed_server.errors import InputError
from sammed_server.evaluation.prompt_simulation import largest_slice, tight_box

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "gallbladder": 4}
FAST = [name for name in ("onnxruntime", "openvino") if available(name)]
pytestmark = pytest.mark.skipif(not FAST, reason="neither onnxruntime nor openvino is installed")


@pytest.fixture(scope="module")
def volume(ct_path):
    return load_volume(ct_path)


@pytest.fixture(scope="module")
def predictors(shared_cache_dir):
    """One predictor per runtime on the same on-disk cache (the same embeddings, whoever computed them)."""
    return {name: SlicePredictor(load_backend("litemedsam", device="cpu", runtime=name), EmbeddingCache(shared_cache_dir, 2**30))
            for name in ("torch", *FAST)}


def organ_prompts(labels: np.ndarray) -> list[tuple[int, SlicePrompts]]:
    """Per organ on its largest slice: a tight box; for the liver also box + points (multimask) and a mask input."""
    prompts = []
    for value in ORGANS.values():
        reference = labels == value
        k = largest_slice(reference)
        prompts.append((k, SlicePrompts(box=tight_box(reference[k], 2))))
    liver = (labels == ORGANS["liver"])[24]
    depth = ndimage.distance_transform_edt(liver)
    inner = np.unravel_index(np.argmax(depth), depth.shape)[::-1]
    outer = np.argwhere(~liver & (ndimage.distance_transform_edt(~liver) > 4))[0][::-1]
    prompts.append((24, SlicePrompts(points=[inner, tuple(outer)], labels=[1, 0], box=tight_box(liver, 2), multimask=True)))
    return prompts


def test_decoders_give_identical_masks(predictors, volume, labels):
    reference = predictors["torch"]
    prepared = reference.prepare(volume)
    for k, prompts in organ_prompts(labels):
        expected = reference.predict(prepared, 2, k, prompts)
        refine = SlicePrompts(box=prompts.box, mask_input=expected.low_res_logits[expected.best])
        refined = reference.predict(prepared, 2, k, refine)
        for name in FAST:
            got = predictors[name].predict(prepared, 2, k, prompts)
            assert np.array_equal(got.masks, expected.masks), (name, k)
            np.testing.assert_allclose(got.scores, expected.scores, atol=1e-4)
            np.testing.assert_allclose(got.low_res_logits, expected.low_res_logits, atol=2e-3)
            assert np.array_equal(predictors[name].predict(prepared, 2, k, refine).masks, refined.masks), (name, k)


def test_embeddings_agree_within_fp16_and_masks_stay_identical(predictors, volume, labels):
    """Each runtime encodes the liver's slice afresh (no cache): embeddings within fp16 rounding of torch's,
    and the masks decoded from them identical for every organ on that slice."""
    k = 24
    fresh = {name: SlicePredictor(p.backend, EmbeddingCache(None, 2**30)) for name, p in predictors.items()}
    prepared = fresh["torch"].prepare(volume)
    expected = fresh["torch"].embedding(prepared, 2, k).float()
    boxes = [tight_box(labels[k] == v, 2) for v in ORGANS.values() if (labels[k] == v).sum() > 20]
    masks = [fresh["torch"].predict(prepared, 2, k, SlicePrompts(box=box)).masks for box in boxes]
    for name in FAST:
        got = fresh[name].embedding(prepared, 2, k).float()
        # fp16 keeps 11 significant bits: a value rounds to a neighbour at most 2**-10 relative away
        torch.testing.assert_close(got, expected, rtol=2**-10, atol=2e-4)
        for box, mask in zip(boxes, masks):
            assert np.array_equal(fresh[name].predict(prepared, 2, k, SlicePrompts(box=box)).masks, mask), name


def test_one_cache_for_all_runtimes(predictors, volume, tmp_path):
    """Cache keys do not name the runtime: what one runtime stored, another reads without encoding."""
    keys = {p.store_key(p.prepare(volume), 2) for p in predictors.values()}
    assert len(keys) == 1
    writer = SlicePredictor(predictors[FAST[0]].backend, EmbeddingCache(tmp_path, 2**30))
    stored = writer.embedding(writer.prepare(volume), 2, 3)
    reader = SlicePredictor(predictors["torch"].backend, EmbeddingCache(tmp_path, 2**30))
    calls = reader.backend.encoder_calls
    assert torch.equal(reader.embedding(reader.prepare(volume), 2, 3), stored)
    assert reader.backend.encoder_calls == calls and reader.cache.stats.disk_hits == 1


def test_export_is_reused_and_redone_when_stale(predictors, tmp_path, monkeypatch):
    backend = predictors[FAST[0]].backend
    current = exported_models(backend)
    copy = tmp_path / current.encoder.parent.name
    shutil.copytree(current.encoder.parent, copy)
    monkeypatch.setenv("SAMMED_RUNTIME_DIR", str(tmp_path))
    stamps = {path.name: path.stat().st_mtime_ns for path in copy.iterdir()}
    models = exported_models(backend)
    assert models.decoder == copy / "decoder.onnx"
    assert {path.name: path.stat().st_mtime_ns for path in copy.iterdir()} == stamps  # valid: nothing exported
    models.decoder.write_bytes(b"truncated")  # a damaged file fails its hash
    exported_models(backend)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert models.decoder.stat().st_size > 10**6 and manifest["weights_sha256"] == backend.weights_sha256
    manifest["weights_sha256"] = "0" * 64  # an export of other weights is stale too
    (copy / "manifest.json").write_text(json.dumps(manifest))
    before = models.encoder.stat().st_mtime_ns
    exported_models(backend)
    assert models.encoder.stat().st_mtime_ns != before
    assert json.loads((copy / "manifest.json").read_text())["weights_sha256"] == backend.weights_sha256


def test_runtime_choice():
    assert choose_runtime("auto", torch.device("cpu")) == ("onnxruntime" if available("onnxruntime") else "torch")
    assert choose_runtime(None, torch.device("cuda")) == "torch"
    assert choose_runtime("torch", torch.device("cpu")) == "torch"
    with pytest.raises(InputError, match="unknown runtime"):
        choose_runtime("tensorrt", torch.device("cpu"))
    with pytest.raises(InputError, match="CPU only"):
        choose_runtime(FAST[0], torch.device("cuda"))


def test_thread_plan_keeps_a_thread_for_clicks():
    assert ThreadPlan.for_threads(1) == ThreadPlan(encode=1, decode=1)
    assert ThreadPlan.for_threads(2) == ThreadPlan(encode=1, decode=1)
    assert ThreadPlan.for_threads(8) == ThreadPlan(encode=7, decode=1)
    assert ThreadPlan.for_threads(None).encode >= 1


def test_cli_runtime_options(ct_path, tmp_path, shared_cache_dir):
    """`--runtime` / `--threads` on a real command: a segmentation through ONNX Runtime on 1 thread; a thread
    count of 0 is one clear error."""
    import subprocess
    import sys

    env = {**os.environ, "SAMMED_CACHE_DIR": str(shared_cache_dir)}
    run = [sys.executable, "-m", "sammed_server.cli", "segment", str(ct_path), "--slice", "24", "--box", "30,30,80,70"]
    bad = subprocess.run(run + ["-o", str(tmp_path / "x.nii.gz"), "--threads", "0"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "sammed-server: error: --threads must be at least 1" in bad.stderr, bad.stderr
    ok = subprocess.run(run + ["-o", str(tmp_path / "a.nii.gz"), "--runtime", FAST[0], "--threads", "1"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "a.nii.gz")))[24].sum() > 100


def test_gpu_batch_size_arithmetic():
    from sammed_server.engine.runtimes.cuda import batch_size_for

    gib = 2**30
    assert batch_size_for(free_bytes=40 * gib, per_slice_bytes=gib) == 20  # half the free memory
    assert batch_size_for(free_bytes=140 * gib, per_slice_bytes=50 * 2**20) == 64  # capped
    assert batch_size_for(free_bytes=gib, per_slice_bytes=4 * gib) == 1  # never below one


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_precompute_batches_from_free_memory_and_compiled_decoder_agrees(volume, labels, predictors, monkeypatch):
    """bf16 batched precompute with pinned transfers: a batch > 1, embeddings close to the CPU ones; the compiled
    (CUDA graph) decoder gives the eager decoder's masks."""
    from sammed_server.engine.runtimes.torch_runtime import TorchRuntime

    gpu = SlicePredictor(load_backend("litemedsam", device="cuda"), EmbeddingCache(None, 2**30))
    prepared = gpu.prepare(volume)
    calls = gpu.backend.encoder_calls
    sizes = []
    original = gpu.backend.encode
    monkeypatch.setattr(gpu.backend, "encode", lambda images: sizes.append(len(images)) or original(images))
    gpu.precompute(prepared, 2, order=range(20))
    assert max(sizes) > 1 and gpu.backend.encoder_calls - calls >= 20
    cpu = predictors["torch"].embedding(predictors["torch"].prepare(volume), 2, 10).float()
    assert torch.nn.functional.cosine_similarity(gpu.embedding(prepared, 2, 10).float().flatten(), cpu.flatten(), dim=0) > 0.99
    box = SlicePrompts(box=tight_box(labels[24] == ORGANS["liver"], 2))
    eager = gpu.predict(prepared, 2, 24, box).masks
    monkeypatch.setenv("SAMMED_COMPILE_DECODER", "1")
    gpu.backend.runtime = TorchRuntime(gpu.backend.image_encoder, gpu.backend.mask_decoder, gpu.backend.device)
    assert np.array_equal(gpu.predict(prepared, 2, 24, box).masks, eager)
