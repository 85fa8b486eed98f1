"""Acceptance (issue 12): models learned on the sample CT segment a copy stored differently — flipped, axes permuted,
resampled to 1 mm in the slice plane — as well as the CT itself, because both are seen in the canonical frame.

To keep the encoder passes affordable the "unmodified volume" is 12 of the sample's 30 axial slices (4–15, all four
organs on each); the copy is made from it. Dice is over the 9 slices not annotated for training, so both numbers
measure what the models learned, not what they memorised; the copy's segmentation is scored on the unmodified grid
(put there by nearest neighbour), against the same reference: on the copy's own 1 mm grid the reference is the 3 mm
labelmap cut into 3 × 3 blocks, and smooth predictions lose up to 0.02 Dice against those blocks (printed too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from geometry_helpers import restored
from sammed_server.adapted.data import AnnotatedVolume, parse_classes
from sammed_server.adapted.inference import segment_with_auto_model
from sammed_server.adapted.jobs import run_training_job
from sammed_server.adapted.training import AutoTrainingConfig
from sammed_server.engine.geometry import labels_on_image, volume_from_sitk
from sammed_server.engine.volume import Volume, load_volume, volume_from_array
from sammed_server.evaluation.metrics import dice
from sammed_server.sammed.canonical import auto_segment_native, train_sapnet_canonical

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}
TRAIN_SLICES = (2, 6, 10)  # of the 12-slice crop
TOLERANCE = 0.03


def _crop(volume: Volume, array: np.ndarray, first: int, last: int) -> Volume:
    direction = np.reshape(volume.direction, (3, 3))
    origin = np.asarray(volume.origin) + direction[:, 2] * volume.spacing[2] * first
    return volume_from_array(array[first:last + 1], volume.spacing, origin, volume.direction)


def _one_mm(volume: Volume, interpolator: int) -> Volume:
    """``volume`` (slicing axis 0, as :func:`restored` leaves it) resampled to 1 mm in its slice plane (axes 1, 2)."""
    image = volume.to_sitk()
    size = [volume.shape_ijk[0]] + [int(round(volume.shape_ijk[a] * volume.spacing[a])) for a in (1, 2)]
    return volume_from_sitk(sitk.Resample(image, size, sitk.Transform(), interpolator, volume.origin,
                                          (volume.spacing[0], 1.0, 1.0), volume.direction, 0.0 if
                                          interpolator == sitk.sitkNearestNeighbor else float(volume.array.min())))


@pytest.fixture(scope="module")
def pair(ct_path: Path, ct_labels_path: Path):
    """(volume, labels) of the crop and of its flipped + permuted + 1 mm copy."""
    ct, labels = load_volume(ct_path), load_volume(ct_labels_path)
    crop, crop_labels = _crop(ct, ct.array, 4, 15), _crop(ct, labels.array, 4, 15)
    order, flips = (2, 0, 1), (True, False, True)
    copy = _one_mm(restored(crop, order, flips), sitk.sitkLinear)
    copy_labels = _one_mm(restored(crop_labels, order, flips), sitk.sitkNearestNeighbor)
    assert copy.shape_ijk == (12, 366, 303) and copy.spacing == (3.0, 1.0, 1.0)
    return (crop, crop_labels.array), (copy, copy_labels.array)


EVALUATED = [k for k in range(12) if k not in TRAIN_SLICES]


def _scores(crop: Volume, crop_mask: np.ndarray, crop_labels: np.ndarray, copy: Volume, copy_mask: np.ndarray,
            copy_labels: np.ndarray, value: int) -> tuple[float, float]:
    """Volume Dice of ``value`` on the evaluated slices: of the crop's segmentation, and of the copy's put on the
    crop's grid; prints the copy's Dice on its own grid as well (its axis 2, reversed)."""
    back = labels_on_image(volume_from_array(copy_mask.astype(np.uint8), copy.spacing, copy.origin, copy.direction),
                           crop, "copy's segmentation").astype(bool)
    copy_slices = [11 - k for k in EVALUATED]
    print(f"label {value}: copy on its own grid {dice(copy_mask[..., copy_slices], copy_labels[..., copy_slices] == value):.3f}")
    return (dice(crop_mask[EVALUATED], crop_labels[EVALUATED] == value),
            dice(back[EVALUATED], crop_labels[EVALUATED] == value))


def _assert_close(scores: dict[str, tuple[float, float]]) -> None:
    print("\n" + "\n".join(f"{organ}: unmodified {a:.3f}, copy {b:.3f}" for organ, (a, b) in scores.items()))
    for organ, (unmodified, copy) in scores.items():
        assert unmodified > 0.6, scores
        assert abs(unmodified - copy) <= TOLERANCE, (organ, scores)


def test_sapnet_segments_a_flipped_permuted_1mm_copy_as_the_original(pair, predictor) -> None:
    (crop, labels), (copy, copy_labels) = pair
    scores = {}
    for organ, value in ORGANS.items():
        annotations = {k: labels[k] == value for k in TRAIN_SLICES}
        sapnet, _, _ = train_sapnet_canonical(predictor, crop, 2, annotations)
        on_crop = auto_segment_native(predictor, crop, sapnet).mask
        on_copy = auto_segment_native(predictor, copy, sapnet).mask
        assert on_copy.shape == copy.array.shape
        scores[organ] = _scores(crop, on_crop, labels, copy, on_copy, copy_labels, value)
    _assert_close(scores)


def test_decoder_only_segments_a_flipped_permuted_1mm_copy_as_the_original(pair, backend, predictor, tmp_path,
                                                                            monkeypatch) -> None:
    monkeypatch.setenv("SAMMED_HOME", str(tmp_path))
    (crop, labels), (copy, copy_labels) = pair
    classes = parse_classes(",".join(f"{v}={o}" for o, v in ORGANS.items()), None)
    trained = run_training_job("decoder_only", backend, [AnnotatedVolume(crop, labels, TRAIN_SLICES)], classes,
                               AutoTrainingConfig(iterations=60, learning_rate=1e-3), predictor.cache)
    on_crop, on_copy = (segment_with_auto_model(trained.artefact_id, backend, v, predictor.cache) for v in (crop, copy))
    scores = {organ: _scores(crop, on_crop[i].mask, labels, copy, on_copy[i].mask, copy_labels, value)
              for i, (organ, value) in enumerate(ORGANS.items())}
    _assert_close(scores)
