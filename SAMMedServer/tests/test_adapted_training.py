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

from sammed_server.adapted.baseline import build_decoder_only
from sammed_server.adapted.data import (
    AnnotatedVolume, choose_slices, labels_to_model, parse_classes, training_windows,
)
from sammed_server.adapted.features import FeatureSource, window_indices
from sammed_server.adapted.inference import predict_classes
from sammed_server.adapted.preprocessing import HSAM_PREPROCESSING, MASAM_PREPROCESSING, preprocessing_for
from sammed_server.adapted.store import build_model, load_auto_model, save_auto_model
from sammed_server.adapted.training import AutoTrainingConfig, train_auto_model, trainable_state
from sammed_server.engine.cache import EmbeddingCache
from sammed_server.engine.preprocessing import InputTransform
from sammed_server.engine.volume import load_volume
from sammed_server.errors import CancelledError, CheckpointError, InputError
from sammed_server.evaluation.metrics import dice

ORGANS = "5=liver,1=spleen,2=kidney_right,3=kidney_left"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def _write_crop(source: Path, destination: Path, first: int, last: int) -> Path:
    image = sitk.ReadImage(str(source))
    sitk.WriteImage(image[:, :, first:last], str(destination))
    return destination


def test_cli_train_resume_and_segment_auto(ct_path: Path, ct_labels_path: Path, shared_cache_dir: Path,
                                           tmp_path: Path) -> None:
    """`train hsam` stops at 2 steps, `--resume` continues to 3, `segment --auto` writes a named .seg.nrrd."""
    image = _write_crop(ct_path, tmp_path / "crop.nii.gz", 12, 18)
    labels = _write_crop(ct_labels_path, tmp_path / "crop_seg.nii.gz", 12, 18)
    env = {**os.environ, "SAMMED_HOME": str(tmp_path / "home"), "SAMMED_CACHE_DIR": str(shared_cache_dir),
           "OMP_NUM_THREADS": "1"}
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

    output = tmp_path / "auto.seg.nrrd"
    run(*cli, "segment", str(image), "--auto", artefact, "-o", str(output), "--device", "cpu")
    import slicerio

    segmentation = slicerio.read_segmentation(str(output))
    assert [s["name"] for s in segmentation["segments"]] == ["liver", "spleen"]
    assert list(shared_cache_dir.glob(f"auto-{artefact}-*/*"))  # the adapted embeddings got their own cache entry
    failed = subprocess.run([*cli, "segment", str(image), "--auto", "no-such-model", "-o", str(output)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "no stored model" in failed.stderr


TRAIN_SLICES = (5, 15, 25)  # 3 of the CT's 30 slices (10 %), each holding liver and spleen
BUDGET_STEPS = 24


def _train_and_score(mode: str, backend, cache: EmbeddingCache, volume, labels: np.ndarray) -> dict[str, float]:
    """Train ``mode`` for ``BUDGET_STEPS`` steps on ``TRAIN_SLICES``; volume Dice per organ on every third other slice."""
    classes = parse_classes(ORGANS, None)
    torch.manual_seed(0)
    model = build_model(mode, backend, classes.num_classes)
    features = FeatureSource(backend, preprocessing_for(mode), cache, frozen_encoder=model.frozen_encoder)
    samples = training_windows([AnnotatedVolume(volume, labels, TRAIN_SLICES)], classes, features, model.window)
    train_auto_model(model, samples, AutoTrainingConfig(iterations=BUDGET_STEPS, learning_rate=1e-3, seed=0))
    evaluated = [k for k in range(volume.num_slices(2)) if k not in TRAIN_SLICES][::3]
    predicted = predict_classes(model, features, volume, slices=evaluated)[evaluated]
    reference = classes.class_map(labels)[evaluated]
    return {name: dice(predicted == i + 1, reference == i + 1) for i, name in enumerate(classes.names)}


def _liver_spleen(scores: dict[str, float]) -> float:
    return (scores["liver"] + scores["spleen"]) / 2


def test_hsam_beats_same_budget_decoder_only_baseline(ct, backend, cache) -> None:
    """H-SAM (LoRA + two decoding stages) against the frozen encoder with the stage-1 decoder trained alone, the same
    number of steps, data and learning rate: H-SAM must segment liver + spleen better on the unseen slices."""
    volume, labels = ct
    hsam = _train_and_score("hsam", backend, cache, volume, labels)
    baseline = _train_and_score("decoder_only", backend, cache, volume, labels)
    print(f"\nH-SAM {hsam}\nbaseline {baseline}")
    assert _liver_spleen(hsam) > _liver_spleen(baseline) + 0.02, (hsam, baseline)
    assert hsam["liver"] > 0.5


@pytest.mark.skipif(not os.environ.get("SAMMED_SLOW_TESTS"),
                    reason="MA-SAM trains on 5-slice windows: ~8 min on an idle 2-core CPU; set SAMMED_SLOW_TESTS=1")
def test_masam_beats_same_budget_decoder_only_baseline(ct, backend, cache) -> None:
    """MA-SAM (FacT + 3D adapters, 5-slice windows) against the same-budget decoder-only baseline."""
    volume, labels = ct
    masam = _train_and_score("masam", backend, cache, volume, labels)
    baseline = _train_and_score("decoder_only", backend, cache, volume, labels)
    print(f"\nMA-SAM {masam}\nbaseline {baseline}")
    assert _liver_spleen(masam) > _liver_spleen(baseline) + 0.02, (masam, baseline)
