"""SAM-auto on real CT (SAP-Net coarse mask → SAM), and Algorithm 1 point propagation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed_server.errors import InputError
from sammed_server.evaluation.metrics import dice
from sammed_server.engine.propagation import centre_points
from sammed_server.sammed.auto_segment import auto_segment, coarse_prompts
from sammed_server.sammed.learned_prompts import PromptTrainingConfig, train_prompt_encoder
from sammed_server.sammed.prompt_propagation import propagate_point_prompts, segment_by_point_propagation
from sammed_server.sammed.sapnet import SAPNetConfig, train_sapnet

ORGANS = {"liver": (5, 0.85), "spleen": (1, 0.80)}  # label, volume Dice to reach


def evenly_inside(reference: np.ndarray, count: int) -> list[int]:
    """``count`` K slices evenly inside the organ's slice range (centres of ``count`` equal parts)."""
    present = np.nonzero(reference.any(axis=(1, 2)))[0]
    low, high = present.min(), present.max()
    return [int(round(low + (high - low) * (2 * i + 1) / (2 * count))) for i in range(count)]


@pytest.mark.parametrize("organ", sorted(ORGANS))
def test_sam_auto_from_three_slices(predictor, prepared, labels, organ):
    value, target = ORGANS[organ]
    reference = labels == value
    slices = evenly_inside(reference, 3)
    annotations = {k: reference[k] for k in slices}
    sapnet = train_sapnet(predictor, prepared, 2, annotations)
    result = auto_segment(predictor, prepared, 2, sapnet, annotations)  # base box encoder, margin 3, top-1
    assert dice(result.mask, reference) >= target, (organ, dice(result.mask, reference), dice(result.coarse, reference))
    for k in slices:
        assert np.array_equal(result.mask[k], reference[k]) and k not in result.prompts
    assert set(result.prompts) == set(result.predicted_iou)
    assert all(result.coarse[k].any() for k in result.prompts)
    assert all(p.box is not None and not p.points for p in result.prompts.values())


def test_coarse_prompts_from_a_synthetic_mask():
    mask = np.zeros((40, 60), bool)
    mask[5:16, 5:16] = True  # square centred at (10, 10)
    mask[20:35, 35:50] = True  # larger square centred at (42, 27)
    assert centre_points(mask) == [(42.0, 27.0), (10.0, 10.0)]
    assert centre_points(mask, max_points=1) == [(42.0, 27.0)]
    box = coarse_prompts(mask, "box", margin=2)
    assert box.box == (3, 3, 51, 36) and not box.points
    both = coarse_prompts(mask, "composite", margin=0)
    assert both.box == (5, 5, 49, 34) and both.labels == [1, 1]


def test_bad_auto_segment_input(predictor, prepared, labels):
    reference = labels == 5
    sapnet = train_sapnet(predictor, prepared, 2, {15: reference[15]}, SAPNetConfig(iterations=1))
    with pytest.raises(InputError, match="prompt must be one of"):
        auto_segment(predictor, prepared, 2, sapnet, prompt="circle")
    with pytest.raises(InputError, match="does not fit"):
        auto_segment(predictor, prepared, 2, sapnet, {3: np.ones((5, 5), bool)})
    with pytest.raises(InputError, match="does not fit"):
        auto_segment(predictor, prepared, 2, sapnet, {30: reference[0]})


def test_algorithm1_points_stop_where_the_intensity_leaves_the_band():
    volume = np.zeros((10, 20, 20), np.float32)
    volume[:, 5:15, 5:15] = 100.0 + np.tile([-10.0, 10.0], 50).reshape(10, 10)  # region: mean 100, std 10
    volume[7:, 5:15, 5:15] = 140.0  # slices 7+: the region's intensity leaves 100 ± 1·10
    volume[:2, 5:15, 10:15] = 300.0  # slices 0-1: the right half leaves it
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    reached = propagate_point_prompts(volume, 2, {4: mask}, lam=1.0, points=20, scheme="uniform")
    assert sorted(reached) == [0, 1, 2, 3, 5, 6]
    assert all(list(by_source) == [4] for by_source in reached.values())
    assert np.all(reached[0][4][:, 0] < 10) and len(reached[0][4]) < len(reached[2][4])  # only left-half points
    assert len(reached[5][4]) == len(reached[3][4])
    wider = propagate_point_prompts(volume, 2, {4: mask}, lam=5.0, points=20)
    assert sorted(wider) == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    two = propagate_point_prompts(volume, 2, {2: mask, 5: mask}, lam=1.0, points=20)
    assert sorted(two[3]) == sorted(two[4]) == [2, 5]  # reached from both sides; walks stop at annotated slices
    assert list(two[6]) == [5] and list(two[1]) == [2]
    with pytest.raises(InputError, match="every given mask is empty"):
        propagate_point_prompts(volume, 2, {4: np.zeros((20, 20), bool)})
    with pytest.raises(InputError, match="does not fit"):
        propagate_point_prompts(volume, 2, {4: np.ones((5, 5), bool)})


def test_point_propagation_with_a_learned_point_encoder(predictor, prepared, labels):
    reference = labels == 5
    slices = evenly_inside(reference, 2)
    annotations = {k: reference[k] for k in slices}
    annotated_only = np.zeros_like(reference)
    annotated_only[slices] = reference[slices]
    torch.manual_seed(0)
    config = PromptTrainingConfig(prompt_type="point", iterations=20, prompts_per_slice=2, learning_rate=3e-3)
    encoder = train_prompt_encoder(predictor, prepared, 2, annotations, config).module
    mask = segment_by_point_propagation(predictor, prepared, 2, annotations, encoder, lam=2.0, points=5)
    # measured 0.545 (annotated slices alone: 0.128)
    assert dice(mask, reference) >= 0.45 > dice(annotated_only, reference) + 0.3
