"""Automatic models end to end on the real CT: data preparation, paper preprocessing, checkpoint/resume, the
artefact store, the CLI (train → resume → segment --auto), and H-SAM against a same-budget decoder-only baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sammed_server.adapted.augmentation import AugmentedStems, RandomRotateScale
from sammed_server.adapted.baseline import build_decoder_only
from sammed_server.adapted.data import (
    AnnotatedVolume, choose_slices, labels_to_model, parse_classes, training_windows,
)
from sammed_server.adapted.features import FeatureSource, window_indices
from sammed_server.adapted.inference import predict_classes, slice_probabilities
from sammed_server.adapted.preprocessing import HSAM_PREPROCESSING, MASAM_PREPROCESSING, preprocessing_for
from sammed_server.adapted.store import build_model, load_auto_model, save_auto_model
from sammed_server.adapted.training import AutoTrainingConfig, train_auto_model, trainable_state
from sammed_server.engine.cache import EmbeddingCache
from sammed_server.engine.preprocessing import InputTransform
from sammed_server.engine.volume import load_volume
from sammed_server.errors import CancelledError, CheckpointError, InputError
from sammed_server.evaluation.metrics import dice

ORGANS = "5=liver,1=spleen,2=kidney_right,3=kidney_left"



@pytest.fixture(scope="module")
def ct(ct_path: Path, ct_labels_path: Path):
    return load_volume(ct_path), load_volume(ct_labels_path).array


@pytest.fixture(scope="module")
def cache(shared_cache_dir: Path) -> EmbeddingCache:
    return EmbeddingCache(shared_cache_dir, 2**30)


def test_classes_slices_and_model_labels(ct, data: Path) -> None:
    volume, labels = ct
    classes = parse_classes(ORGANS, None)
    assert classes.values == (5, 1, 2, 3) and classes.num_classes == 5
    from_json = parse_classes(None, data / "totalsegmentator" / "labels.json", ["example_seg.nii.gz"])
    assert dict(zip(from_json.values, from_json.names))[5] == "liver"
    with pytest.raises(InputError):
        parse_classes("liver=5", None)
    mapped = classes.class_map(labels)
    assert set(np.unique(mapped)) == {0, 1, 2, 3, 4} and (mapped == 1).sum() == (labels == 5).sum()
    picked = choose_slices(labels, classes, axis=2, fraction=0.1)
    assert len(picked) == 3 and all(mapped[k].any() for k in picked)
    with pytest.raises(InputError):
        choose_slices(labels, classes, axis=2, fraction=0.0)
    model_labels = labels_to_model(mapped[10], volume, 2, 256)
    transform = InputTransform.for_slice(101, 122, volume.slice_spacing(2), 256)
    assert model_labels.shape == (256, 256)
    assert (model_labels[transform.new_rows:] == -1).all() and (model_labels[: transform.new_rows] >= 0).all()
    assert set(model_labels.unique().tolist()) <= {-1, 0, 1, 2, 3, 4}
    assert window_indices(0, 5, 30) == [0, 0, 0, 1, 2] and window_indices(29, 5, 30) == [27, 28, 29, 29, 29]
    with pytest.raises(InputError):
        AnnotatedVolume(volume, labels[:-1], (1,))


def test_paper_preprocessing(ct, backend) -> None:
    volume, _ = ct
    hsam = HSAM_PREPROCESSING.volume_values(volume)
    expected = (np.clip(volume.array.astype(np.float32), -125, 275) + 125) / 400
    np.testing.assert_allclose(hsam, expected, atol=1e-6)
    masam = MASAM_PREPROCESSING.volume_values(volume)
    assert abs(float(masam.mean())) < 1e-3 and abs(float(masam.std()) - 1) < 1e-3
    window = MASAM_PREPROCESSING.window_values(masam[3:8])
    assert window.min() == 0 and window.max() == pytest.approx(1)
    # per-window min-max is undone exactly by LiteMedSAM's per-image min-max, not by SAM's ImageNet normalisation
    assert not MASAM_PREPROCESSING.window_dependent("minmax") and MASAM_PREPROCESSING.window_dependent("imagenet")
    transform = InputTransform.for_slice(101, 122, volume.slice_spacing(2), 256)
    direct = backend.normalize(transform.resize(masam[5]))
    windowed = backend.normalize(transform.resize(window[2]))
    torch.testing.assert_close(direct, windowed, atol=1e-5, rtol=0)
    assert HSAM_PREPROCESSING.fingerprint() != MASAM_PREPROCESSING.fingerprint()


def test_checkpoint_resume_and_store(ct, backend, cache, tmp_path: Path, monkeypatch) -> None:
    """A run cancelled at step 3 and resumed ends exactly like an uninterrupted 6-step run; the stored model
    reloads to the same weights and refuses another base model."""
    monkeypatch.setenv("SAMMED_HOME", str(tmp_path))
    volume, labels = ct
    classes = parse_classes("5=liver,1=spleen", None)
    features = FeatureSource(backend, HSAM_PREPROCESSING, cache, frozen_encoder=True)
    samples = training_windows([AnnotatedVolume(volume, labels, (12, 20))], classes, features, window=1)
    assert samples[0][0].shape == (1, 256, 64, 64) and samples[0][1].shape == (1, 256, 256)
    config = AutoTrainingConfig(iterations=6, checkpoint_every=2)

    torch.manual_seed(0)
    straight = build_decoder_only(backend, classes.num_classes)
    record = train_auto_model(straight, samples, config, tmp_path / "straight.pt")

    torch.manual_seed(0)
    interrupted = build_decoder_only(backend, classes.num_classes)
    cancel = threading.Event()

    def stop_at_three(step: int, total, loss: float) -> None:
        if step == 3:
            cancel.set()

    with pytest.raises(CancelledError):
        train_auto_model(interrupted, samples, config, tmp_path / "resumed.pt", progress=stop_at_three, cancel=cancel)
    torch.manual_seed(1)  # the resumed run must not depend on the global generator
    resumed = build_decoder_only(backend, classes.num_classes)
    again = train_auto_model(resumed, samples, config, tmp_path / "resumed.pt", resume=True)
    assert again.resumed_from == [3] and again.steps == 6
    assert again.losses == pytest.approx(record.losses, abs=1e-6)
    for name, value in trainable_state(straight).items():
        torch.testing.assert_close(trainable_state(resumed)[name], value, atol=1e-6, rtol=1e-5)

    artefact = save_auto_model(straight, "test baseline", classes, HSAM_PREPROCESSING, backend, record, {}, {})
    loaded, manifest = load_auto_model(artefact, backend)
    assert manifest["mode"] == "decoder_only" and [c["name"] for c in manifest["classes"]] == ["liver", "spleen"]
    assert manifest["preprocessing"]["clip"] == [-125.0, 275.0]
    for name, value in trainable_state(straight).items():
        torch.testing.assert_close(trainable_state(loaded)[name], value)

    class OtherBase:
        weights_sha256 = "f" * 64

    with pytest.raises(CheckpointError):
        load_auto_model(artefact, OtherBase())


def test_augmented_training_resumes_exactly(ct, backend, cache, tmp_path: Path) -> None:
    """With augmentation the samples are images, the frozen encoder runs every step on a freshly rotated and scaled
    slice, and a run cancelled at step 2 and resumed still matches an uninterrupted one (the draws come from the
    checkpointed generator)."""
    volume, labels = ct
    classes = parse_classes("5=liver,1=spleen", None)
    features = FeatureSource(backend, HSAM_PREPROCESSING, cache, frozen_encoder=True)
    samples = training_windows([AnnotatedVolume(volume, labels, (12, 20))], classes, features, window=1, images=True)
    assert samples[0][0].shape == (1, 3, 256, 256)
    prepare = AugmentedStems(features, RandomRotateScale())
    config = AutoTrainingConfig(iterations=4, checkpoint_every=1, augment=True)

    torch.manual_seed(0)
    straight = build_decoder_only(backend, classes.num_classes)
    record = train_auto_model(straight, samples, config, tmp_path / "straight.pt", prepare=prepare)
    cancel = threading.Event()
    torch.manual_seed(0)
    with pytest.raises(CancelledError):
        train_auto_model(build_decoder_only(backend, classes.num_classes), samples, config, tmp_path / "resumed.pt",
                         progress=lambda step, total, loss: cancel.set() if step == 2 else None, cancel=cancel,
                         prepare=prepare)
    resumed = build_decoder_only(backend, classes.num_classes)
    again = train_auto_model(resumed, samples, config, tmp_path / "resumed.pt", resume=True, prepare=prepare)
    assert again.resumed_from == [2] and again.losses == pytest.approx(record.losses, abs=1e-5)

    torch.manual_seed(0)  # the same first pick without augmentation sees the unmoved slice: another loss
    plain = training_windows([AnnotatedVolume(volume, labels, (12, 20))], classes, features, window=1)
    unaugmented = train_auto_model(build_decoder_only(backend, classes.num_classes), plain,
                                   AutoTrainingConfig(iterations=1))
    assert unaugmented.losses[0] != pytest.approx(record.losses[0], abs=1e-4)


def _write_crop(source: Path, destination: Path, first: int, last: int) -> Path:
    image = sitk.ReadImage(str(source))
    sitk.WriteImage(image[:, :, first:last], str(destination))
    return destination


def test_cli_train_resume_and_segment_auto(ct_path: Path, ct_labels_path: Path, shared_cache_dir: Path,
                                           tmp_path: Path) -> None:
    """`train hsam` stops at 2 steps, `--resume` continues to 3, `train decoder --augment` stores the fast
    decoder-only model, `segment --auto` writes a named .seg.nrrd."""
    image = _write_crop(ct_path, tmp_path / "crop.nii.gz", 12, 18)
    labels = _write_crop(ct_labels_path, tmp_path / "crop_seg.nii.gz", 12, 18)
    env = {**os.environ, "SAMMED_HOME": str(tmp_path / "home"), "SAMMED_CACHE_DIR": str(shared_cache_dir)}
    cli = [sys.executable, "-m", "sammed_server.cli"]
    train = [*cli, "train", "hsam", "--images", str(image), "--labels", str(labels), "--classes", "5=liver,1=spleen",
             "--slices", "2", "--device", "cpu"]

    def run(*args: str) -> str:
        done = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run(*train, "--iterations", "2")
    assert "2 steps" in first
    checkpoints = list((tmp_path / "home" / "training").glob("hsam-*/checkpoint.pt"))
    assert len(checkpoints) == 1
    second = run(*train, "--iterations", "3", "--resume")
    assert "3 steps" in second and "resumed at step 2" in second
    artefact = second.split(":")[0].strip()
    manifest = json.loads((tmp_path / "home" / "artefacts" / "auto_models" / artefact / "manifest.json").read_text())
    assert manifest["training"]["steps"] == 3 and manifest["training"]["resumed_from"] == [2]

    fast = run(*cli, "train", "decoder", "--images", str(image), "--labels", str(labels), "--classes", "5=liver",
               "--slices", "2", "--device", "cpu", "--iterations", "2", "--augment")
    fast_id = fast.split(":")[0].strip()
    fast_manifest = json.loads((tmp_path / "home" / "artefacts" / "auto_models" / fast_id / "manifest.json").read_text())
    assert fast_manifest["mode"] == "decoder_only" and fast_manifest["training"]["config"]["augment"] is True

    output = tmp_path / "auto.seg.nrrd"
    run(*cli, "segment", str(image), "--auto", artefact, "-o", str(output), "--device", "cpu")
    import slicerio

    segmentation = slicerio.read_segmentation(str(output))
    assert [s["name"] for s in segmentation["segments"]] == ["liver", "spleen"]
    assert list(shared_cache_dir.glob(f"auto-{artefact}-*/*"))  # the adapted embeddings got their own cache entry
    failed = subprocess.run([*cli, "segment", str(image), "--auto", "no-such-model", "-o", str(output)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "no stored model" in failed.stderr


def test_bench_times_automatic_models(ct_path: Path, ct_labels_path: Path, tmp_path: Path) -> None:
    """`bench --auto` rows: feature pass, seconds per training step, whole-volume segmentation (decoder-only on a
    6-slice crop, one timed step)."""
    from sammed_server.bench import auto_model_bench

    image = _write_crop(ct_path, tmp_path / "crop.nii.gz", 12, 18)
    labels = _write_crop(ct_labels_path, tmp_path / "crop_seg.nii.gz", 12, 18)
    rows = dict(auto_model_bench(image, labels, ["decoder_only"], steps=1, device="cpu"))
    step = next(v for k, v in rows.items() if k.startswith("decoder_only: training step"))
    segment = next(v for k, v in rows.items() if k.startswith("decoder_only: segment 6 slices"))
    assert float(step.split()[0]) > 0 and float(segment.split()[0]) > 0
    assert any(k.startswith("decoder_only: features of 1 training windows") for k in rows)


TRAIN_SLICES = (5, 15, 25)  # 3 of the CT's 30 slices (10 %), each holding liver and spleen
BUDGET_STEPS = 24


def _train(mode: str, backend, cache: EmbeddingCache, volume, labels: np.ndarray, steps: int = BUDGET_STEPS):
    """``mode`` trained for ``steps`` steps on ``TRAIN_SLICES`` → (model, its feature source)."""
    classes = parse_classes(ORGANS, None)
    torch.manual_seed(0)
    model = build_model(mode, backend, classes.num_classes)
    features = FeatureSource(backend, preprocessing_for(mode), cache, frozen_encoder=model.frozen_encoder)
    samples = training_windows([AnnotatedVolume(volume, labels, TRAIN_SLICES)], classes, features, model.window)
    train_auto_model(model, samples, AutoTrainingConfig(iterations=steps, learning_rate=1e-3, seed=0))
    return model, features


def _score(model, features: FeatureSource, volume, labels: np.ndarray) -> dict[str, float]:
    """Volume Dice per organ on every third slice not trained on."""
    classes = parse_classes(ORGANS, None)
    evaluated = [k for k in range(volume.num_slices(2)) if k not in TRAIN_SLICES][::3]
    predicted = predict_classes(model, features, volume, slices=evaluated)[evaluated]
    reference = classes.class_map(labels)[evaluated]
    return {name: dice(predicted == i + 1, reference == i + 1) for i, name in enumerate(classes.names)}


def _liver_spleen(scores: dict[str, float]) -> float:
    return (scores["liver"] + scores["spleen"]) / 2


@pytest.mark.long
def test_hsam_beats_same_budget_decoder_only_baseline(ct, backend, cache) -> None:
    """H-SAM (LoRA + two decoding stages) against the frozen encoder with the stage-1 decoder trained alone, the same
    number of steps, data and learning rate: H-SAM must segment liver + spleen better on the unseen slices."""
    volume, labels = ct
    hsam = _score(*_train("hsam", backend, cache, volume, labels), volume, labels)
    baseline = _score(*_train("decoder_only", backend, cache, volume, labels), volume, labels)
    print(f"\nH-SAM {hsam}\nbaseline {baseline}")
    assert _liver_spleen(hsam) > _liver_spleen(baseline) + 0.02, (hsam, baseline)
    assert hsam["liver"] > 0.5


@pytest.mark.long
def test_masam_beats_same_budget_decoder_only_baseline(ct, backend, cache) -> None:
    """MA-SAM (FacT + 3D adapters, 5-slice windows) against the same-budget decoder-only baseline (about 12 min on a
    2-core CPU: ``make test-long``)."""
    volume, labels = ct
    model, features = _train("masam", backend, cache, volume, labels)
    masam = _score(model, features, volume, labels)
    baseline = _score(*_train("decoder_only", backend, cache, volume, labels), volume, labels)
    print(f"\nMA-SAM {masam}\nbaseline {baseline}")
    assert _liver_spleen(masam) > _liver_spleen(baseline) + 0.02, (masam, baseline)


def test_masam_window_embeddings_are_cached_and_reused(ct, backend, cache) -> None:
    """A stored MA-SAM model's adapted window embeddings (one training step is enough to make them its own) go to
    the cache under the model's key, and a second call reads them instead of encoding."""
    volume, labels = ct
    model, features = _train("masam", backend, cache, volume, labels, steps=1)
    key = ("test-masam-" + volume.content_hash[:8], "e" * 64)
    direct = slice_probabilities(model, features, volume, slices=[0])[0]
    first = slice_probabilities(model, features, volume, model_key=key, slices=[0])[0]
    assert list(cache.root.glob(f"auto-{key[0]}-*/*"))  # the model's own cache entry, on disk
    hits = cache.stats.memory_hits + cache.stats.disk_hits
    again = slice_probabilities(model, features, volume, model_key=key, slices=[0])[0]
    assert cache.stats.memory_hits + cache.stats.disk_hits == hits + 3  # windows centred on 0, 1, 2 hold slice 0
    torch.testing.assert_close(first, direct, atol=2e-2, rtol=0)  # cached in reduced precision
    torch.testing.assert_close(again, first, atol=1e-6, rtol=0)  # cached = fresh, up to multithreaded float rounding
