"""SAP-Net (SAM-auto): top-K clean-up, training on real LiteMedSAM embeddings, artefacts, CLI."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from sammed_server.artefacts import UnknownArtefactError
from sammed_server.engine.volume import load_volume
from sammed_server.errors import CheckpointError, InputError
from sammed_server.evaluation.metrics import dice
from sammed_server.sammed.sapnet import (
    SAPNetConfig, coarse_segmentation, fourier_positions, keep_top_k_components, load_sapnet, save_sapnet, train_sapnet,
)

LIVER = 5
SLICES = (7, 22)


def test_keep_top_k_components():
    mask = np.zeros((6, 12, 12), bool)
    mask[0:4, 0:4, 0:4] = True  # 64 voxels
    mask[4, 4, 4] = True  # touches the first block only at a corner: 26-connected, same component
    mask[0:2, 8:11, 8:11] = True  # 18 voxels
    mask[5, 10:12, 0:2] = True  # 4 voxels
    top1 = keep_top_k_components(mask, 1)
    assert top1.sum() == 65 and top1[4, 4, 4] and not top1[0, 8, 8]
    top2 = keep_top_k_components(mask, 2)
    assert top2.sum() == 65 + 18 and not top2[5, 10, 0]
    assert np.array_equal(keep_top_k_components(mask, 5), mask)
    assert not keep_top_k_components(np.zeros((3, 3, 3)), 1).any()
    with pytest.raises(InputError, match="at least 1"):
        keep_top_k_components(mask, 0)


def test_fourier_positions_follow_the_slice_not_the_padding():
    from sammed_server.engine.preprocessing import InputTransform

    transform = InputTransform.for_slice(101, 122, (3.0, 3.0), 256)  # rows padded, cols fill the input
    encoding = fourier_positions(transform, 64, 3)
    assert encoding.shape == (12, 64, 64)
    x_band0 = encoding[0]  # sin(π·x): varies along columns only, odd around the slice centre
    assert np.allclose(x_band0, x_band0[:1]) and abs(float(x_band0[0, 0] + x_band0[0, -1])) < 1e-5
    assert transform.new_rows == 212  # 53 of the 64 cell rows hold the slice; its centre row 26 is y = 0
    sin_y, cos_y = encoding[3, :, 0], encoding[9, :, 0]
    assert abs(float(sin_y[26])) < 1e-5 and abs(float(cos_y[26]) - 1) < 1e-5
    assert float(sin_y[25]) == pytest.approx(-float(sin_y[27]), abs=1e-5)


@pytest.fixture(scope="module")
def liver(ct_labels_path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path))) == LIVER


@pytest.fixture(scope="module")
def trained(predictor, ct_path, liver):
    prepared = predictor.prepare(load_volume(ct_path))
    return prepared, train_sapnet(predictor, prepared, 2, {k: liver[k] for k in SLICES}, SAPNetConfig(iterations=40))


def test_training_lowers_the_loss_and_segments_the_liver(predictor, trained, liver):
    prepared, result = trained
    assert len(result.losses) == 40 and result.prototypes.shape == (2, 64)
    assert np.mean(result.losses[-5:]) < 0.3 * np.mean(result.losses[:5]), result.losses
    coarse = coarse_segmentation(predictor, prepared, 2, result, top_k=None)
    assert coarse.shape == liver.shape and coarse.dtype == bool
    assert dice(coarse, liver) >= 0.85
    held_out = [k for k in range(liver.shape[0]) if k not in SLICES]
    assert dice(coarse[held_out], liver[held_out]) >= 0.85


def test_progress_and_cancel(predictor, trained, liver):
    import threading

    from sammed_server.errors import CancelledError

    prepared, result = trained
    calls = []
    coarse_segmentation(predictor, prepared, 2, result, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (60, 60) and [d for d, _ in calls] == sorted(d for d, _ in calls)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        train_sapnet(predictor, prepared, 2, {7: liver[7]}, SAPNetConfig(iterations=2), cancel=cancel)


def test_artefact_round_trip_and_base_model_check(predictor, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMMED_HOME", str(tmp_path))
    prepared, result = trained
    artefact_id = save_sapnet(result, "liver", prepared, 2, list(SLICES), predictor)
    loaded = load_sapnet(artefact_id, predictor.backend)
    assert loaded.name == "liver" and loaded.config == result.config
    assert np.array_equal(coarse_segmentation(predictor, prepared, 2, result),
                          coarse_segmentation(predictor, prepared, 2, loaded))
    other = type("Backend", (), {"weights_sha256": "0" * 64})()
    with pytest.raises(CheckpointError, match="not on the model in use"):
        load_sapnet(artefact_id, other)
    with pytest.raises(UnknownArtefactError, match="no sapnets named"):
        load_sapnet("liver-0000000000", predictor.backend)


def test_bad_annotations_are_refused(predictor, trained):
    prepared, _ = trained
    with pytest.raises(InputError, match="every given mask is empty"):
        train_sapnet(predictor, prepared, 2, {3: np.zeros((101, 122), bool)})
    with pytest.raises(InputError, match="shape"):
        train_sapnet(predictor, prepared, 2, {3: np.ones((10, 10), bool)})
    with pytest.raises(InputError, match="multiple of 8"):
        SAPNetConfig(channels=12).check()


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sammed_server.cli", *args], capture_output=True, text=True, env=env)


def test_cli_train_sapnet_then_segment_auto(ct_path, ct_labels_path, tmp_path, shared_cache_dir):
    env = {**os.environ, "SAMMED_HOME": str(tmp_path / "home"), "SAMMED_CACHE_DIR": str(shared_cache_dir)}
    trained = cli("train", "sapnet", str(ct_path), "--labels", str(ct_labels_path), "--label", "5", "--slices", "7,22",
                  "--name", "liver", "--iterations", "5", "--device", "cpu", env=env)
    assert trained.returncode == 0, trained.stderr
    artefact_id = trained.stdout.split(":")[0]
    assert artefact_id.startswith("liver-") and "loss" in trained.stdout
    out = tmp_path / "liver.seg.nrrd"
    segmented = cli("segment", str(ct_path), "--auto", artefact_id, "--device", "cpu", "-o", str(out), env=env)
    assert segmented.returncode == 0, segmented.stderr
    segmentation = slicerio.read_segmentation(str(out))
    assert [s["name"] for s in segmentation["segments"]] == ["liver"]
    unknown = cli("segment", str(ct_path), "--auto", "nothing-123", "-o", str(out), env=env)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "no stored model named 'nothing-123'" in unknown.stderr
