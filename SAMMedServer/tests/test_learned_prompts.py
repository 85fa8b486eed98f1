"""SAM-assist: prompt sampling, and a prompt encoder learned from 2 real slices beating raw point prompts."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from sammed_server.cli import main
from sammed_server.engine.prompts import SlicePrompts
from sammed_server.engine.volume import load_volume
from sammed_server.errors import CheckpointError, InputError
from sammed_server.evaluation.metrics import dice
from sammed_server.sammed.learned_prompts import (
    PromptTrainingConfig, load_prompt_encoder, save_prompt_encoder, train_prompt_encoder,
)
from sammed_server.sammed.prompt_sampling import jittered_box, sample_point_prompt, sample_points

SPLEEN = 1


def disc(rows: int = 64, cols: int = 64, radius: float = 15) -> np.ndarray:
    y, x = np.mgrid[:rows, :cols]
    return (y - rows / 2) ** 2 + (x - cols / 2) ** 2 <= radius**2


def test_point_schemes():
    mask, rng = disc(), np.random.default_rng(0)
    depth = ndimage.distance_transform_edt(mask)
    by_scheme = {s: sample_points(mask, 200, s, rng).astype(int) for s in ("uniform", "center", "boundary")}
    for points in by_scheme.values():
        assert mask[points[:, 1], points[:, 0]].all()
    mean_depth = {s: depth[p[:, 1], p[:, 0]].mean() for s, p in by_scheme.items()}
    assert mean_depth["boundary"] <= 3 < mean_depth["uniform"] < mean_depth["center"]
    with pytest.raises(ValueError):
        sample_points(mask, 1, "corner", rng)


def test_point_prompt_and_box_jitter():
    mask, rng = disc(), np.random.default_rng(1)
    for _ in range(50):
        points, labels = sample_point_prompt(mask, 6, "center", rng)
        assert 1 <= len(points) < 6 and labels.sum() >= 1
        xy = points.astype(int)
        assert np.array_equal(mask[xy[:, 1], xy[:, 0]], labels == 1)
        x0, y0, x1, y1 = jittered_box(mask, 2, 6, rng)
        assert 17 - 6 <= x0 <= 17 + 2 and 47 - 2 <= x1 <= 47 + 6 and y0 <= y1


@pytest.fixture(scope="module")
def spleen(ct_labels_path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path))) == SPLEEN


@pytest.fixture(scope="module")
def trained(predictor, ct_path, spleen):
    torch.manual_seed(0)
    prepared = predictor.prepare(load_volume(ct_path))
    config = PromptTrainingConfig(prompt_type="point")  # the defaults: what "Train prompt from 2 slices" runs
    return prepared, train_prompt_encoder(predictor, prepared, 2, {10: spleen[10], 20: spleen[20]}, config)


def test_two_slice_point_encoder_beats_raw_points(predictor, trained, spleen):
    prepared, result = trained
    assert np.mean(result.losses[-5:]) < 0.8 * np.mean(result.losses[:5])
    raw, learned = [], []
    for k in (12, 15, 18):  # held-in slices between the two annotated ones
        depth = ndimage.distance_transform_edt(spleen[k])
        y, x = np.unravel_index(np.argmax(depth), depth.shape)
        prompts = SlicePrompts(points=[(x, y)], labels=[1])
        raw.append(dice(predictor.predict(prepared, 2, k, prompts, predictor.backend.prompt_encoder).masks[0], spleen[k]))
        learned.append(dice(predictor.predict(prepared, 2, k, prompts, result.module).masks[0], spleen[k]))
    assert np.mean(learned) >= np.mean(raw) + 0.10, (raw, learned)


def test_artefact_round_trip_and_base_model_check(predictor, trained, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMMED_HOME", str(tmp_path))
    prepared, result = trained
    artefact_id = save_prompt_encoder(result, "spleen", prepared, 2, [10, 20], predictor)
    loaded = load_prompt_encoder(artefact_id, predictor.backend)
    prompts = SlicePrompts(points=[(90, 40)], labels=[1])
    a = predictor.predict(prepared, 2, 15, prompts, result.module).low_res_logits
    b = predictor.predict(prepared, 2, 15, prompts, loaded).low_res_logits
    assert np.allclose(a, b, atol=1e-5)
    other = type("Backend", (), {"weights_sha256": "0" * 64, "prompt_encoder": None})()
    with pytest.raises(CheckpointError, match="not on the model in use"):
        load_prompt_encoder(artefact_id, other)


def test_empty_annotations_are_refused(predictor, trained):
    prepared, _ = trained
    with pytest.raises(InputError, match="every given mask is empty"):
        train_prompt_encoder(predictor, prepared, 2, {3: np.zeros((101, 122), bool)})


def test_cli_train_then_segment_with_points(ct_path, ct_labels_path, tmp_path, monkeypatch, capsys, shared_cache_dir):
    monkeypatch.setenv("SAMMED_HOME", str(tmp_path))
    monkeypatch.setenv("SAMMED_CACHE_DIR", str(shared_cache_dir))
    assert main(["train", "prompt-encoder", str(ct_path), "--labels", str(ct_labels_path), "--label", "1",
                 "--slices", "10,20", "--name", "spleen", "--iterations", "3", "--device", "cpu"]) == 0
    artefact_id = capsys.readouterr().out.split(":")[0]
    assert artefact_id.startswith("spleen-")
    out = tmp_path / "spleen.seg.nrrd"
    assert main(["segment", str(ct_path), "--slice", "15", "--point", "90,40,+", "--prompt-encoder", artefact_id,
                 "--device", "cpu", "-o", str(out)]) == 0
    assert out.exists()
