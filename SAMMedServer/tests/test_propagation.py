"""Slice-to-slice propagation with real LiteMedSAM on the sample CT."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import SimpleITK as sitk

from sammed_server.engine.propagation import PropagationConfig, centre_points, propagate, stop_reason
from sammed_server.engine.volume import load_volume
from sammed_server.errors import CancelledError, InputError
from sammed_server.evaluation.metrics import dice
from sammed_server.evaluation.prompt_simulation import largest_slice

LIVER, KIDNEY_RIGHT = 5, 2


@pytest.fixture(scope="module")
def ct(predictor, ct_path, ct_labels_path):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path)))
    return predictor.prepare(load_volume(ct_path)), labels


class RecordingPredictor:
    """The real predictor, noting which slices it is asked to decode."""

    def __init__(self, predictor):
        self.predictor, self.backend, self.decoded = predictor, predictor.backend, []

    def predict(self, prepared, axis, index, prompts, prompt_encoder=None):
        self.decoded.append(index)
        return self.predictor.predict(prepared, axis, index, prompts, prompt_encoder)


def test_centre_points_pick_the_deepest_pixel_of_the_largest_parts():
    mask = np.zeros((40, 60), bool)
    mask[5:25, 5:25] = True  # 20×20 square, centre (14.5, 14.5)
    mask[30:35, 40:45] = True  # 5×5 square, centre (42, 32)
    points = centre_points(mask, 3)
    assert len(points) == 2
    (x0, y0), (x1, y1) = points
    assert 14 <= x0 <= 15 and 14 <= y0 <= 15 and (x1, y1) == (42.0, 32.0)
    assert centre_points(mask, 1) == points[:1]


def test_stop_rules_for_small_structures():
    """A new mask off the previous one (SAM jumped to a neighbour) or a predicted IoU falling below the recent ones
    stops; the same mask with a steady IoU passes. Intensity test off (values equal)."""
    previous = np.zeros((40, 40), bool)
    previous[10:20, 10:20] = True
    moved = np.roll(previous, 12, axis=1)
    values, start = np.ones(100), (1.0, 1.0)
    config = PropagationConfig()
    assert stop_reason(previous, previous, 0.93, [0.95, 0.94, 0.96], config, values, start) == ""
    assert stop_reason(previous, moved, 0.95, [0.95], config, values, start).startswith("overlap with the previous")
    assert stop_reason(previous, np.roll(previous, 4, axis=1), 0.95, [], config, values, start) == ""  # 60 % on it
    assert stop_reason(previous, previous, 0.80, [0.95, 0.94, 0.96], config, values, start).startswith(
        "predicted IoU 0.80 dropped")
    assert stop_reason(previous, previous, 0.80, [0.95], PropagationConfig(max_iou_drop=None), values, start) == ""
    assert stop_reason(previous, moved, 0.95, [], PropagationConfig(min_overlap=0.0), values, start) == ""


def test_liver_propagates_through_the_volume(predictor, ct):
    prepared, labels = ct
    liver = labels == LIVER
    start = largest_slice(liver)
    done = []
    result = propagate(predictor, prepared, 2, start, liver[start], "both",
                       progress=lambda i, total, score: done.append((i, total)))
    assert start not in result.masks and set(result.stopped) == {"up", "down"}
    assert done and done[-1][0] == len(result.masks) and all(total == 29 for _, total in done)
    volume = np.zeros_like(liver)
    volume[start] = liver[start]
    for index, mask in result.masks.items():
        assert mask.shape == liver[start].shape and result.scores[index] >= 0.5
        volume[index] = mask
    assert dice(volume, liver) >= 0.88  # measured 0.911 (0.90 without the intensity test)


def test_stops_past_the_end_of_the_organ(predictor, ct):
    prepared, labels = ct
    kidney = labels == KIDNEY_RIGHT
    last = int(np.nonzero(kidney.any(axis=(1, 2)))[0].max())  # slice 18; slices 19..29 have no kidney
    result = propagate(predictor, prepared, 2, last - 1, kidney[last - 1], "up")
    assert last in result.masks and max(result.masks) <= last + 1, result.stopped
    assert result.stopped["up"].startswith("predicted IoU 0.64 dropped"), result.stopped  # the IoU-trend rule
    without_trend = propagate(predictor, prepared, 2, last - 1, kidney[last - 1], "up",
                              PropagationConfig(max_iou_drop=None))
    assert max(without_trend.masks) <= last + 1 and without_trend.stopped["up"].startswith("intensity")
    strict = propagate(predictor, prepared, 2, last - 1, kidney[last - 1], "up", PropagationConfig(min_iou=0.99))
    assert strict.masks == {} and strict.stopped["up"].startswith("predicted IoU 0.9") and "< 0.99" in strict.stopped["up"]


def test_area_ratio_and_max_slices_stop(predictor, ct):
    prepared, labels = ct
    liver = labels == LIVER
    start = largest_slice(liver)
    tiny = np.zeros_like(liver[start])
    rows, cols = np.nonzero(liver[start])
    tiny[rows[len(rows) // 2], cols[len(cols) // 2]] = True  # one liver pixel: the next slice grows far past it
    grown = propagate(predictor, prepared, 2, start, tiny, "up", PropagationConfig(max_intensity_z=None))
    assert grown.stopped["up"].startswith(("area ratio", "predicted IoU", "empty mask")), grown.stopped
    capped = propagate(predictor, prepared, 2, start, liver[start], "down", PropagationConfig(max_slices=2))
    assert sorted(capped.masks) == [start - 2, start - 1] and capped.stopped == {"down": "max slices"}


def test_rerun_from_a_corrected_slice_and_direction_up_stays_up(predictor, ct):
    prepared, labels = ct
    liver = labels == LIVER
    start = largest_slice(liver) - 8
    recorder = RecordingPredictor(predictor)
    result = propagate(recorder, prepared, 2, start, liver[start], "up", PropagationConfig(max_slices=4))
    assert sorted(result.masks) == list(range(start + 1, start + 5))
    assert min(recorder.decoded) == start + 1
    recorder.decoded.clear()
    corrected = start + 2  # the user fixes this slice and propagates again from it
    rerun = propagate(recorder, prepared, 2, corrected, liver[corrected], "up", PropagationConfig(max_slices=2))
    assert sorted(rerun.masks) == [corrected + 1, corrected + 2] and min(recorder.decoded) == corrected + 1
    assert dice(rerun.masks[corrected + 1], liver[corrected + 1]) >= dice(result.masks[corrected + 1], liver[corrected + 1]) - 0.05


def test_cancel(predictor, ct):
    prepared, labels = ct
    liver = labels == LIVER
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        propagate(predictor, prepared, 2, 20, liver[20], cancel=cancel)


@pytest.mark.parametrize("start, mask, direction, config, message", [
    (20, "empty", "both", PropagationConfig(), "start mask is empty"),
    (30, "liver", "both", PropagationConfig(), "outside the volume"),
    (-1, "liver", "both", PropagationConfig(), "outside the volume"),
    (20, "wrong shape", "both", PropagationConfig(), "has shape"),
    (20, "liver", "sideways", PropagationConfig(), "direction"),
    (20, "liver", "up", PropagationConfig(min_iou=1.5), "min_iou"),
    (20, "liver", "up", PropagationConfig(max_area_ratio=0.5), "area ratios"),
    (20, "liver", "up", PropagationConfig(min_overlap=1.5), "min_overlap"),
    (20, "liver", "up", PropagationConfig(max_iou_drop=0.0), "max_iou_drop"),
])
def test_bad_input(predictor, ct, start, mask, direction, config, message):
    prepared, labels = ct
    masks = {"empty": np.zeros(labels.shape[1:], bool), "liver": labels[20] == LIVER, "wrong shape": np.ones((5, 5), bool)}
    with pytest.raises(InputError, match=message):
        propagate(predictor, prepared, 2, start, masks[mask], direction, config)
