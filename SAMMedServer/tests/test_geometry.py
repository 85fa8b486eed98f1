"""Labels checked against their image, and the canonical frame of learned artefacts (engine/geometry.py)."""

from __future__ import annotations

import itertools
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from geometry_helpers import restored
from sammed_server.engine.geometry import (
    CanonicalFrame,
    canonical_axis,
    labels_on_image,
    orientation_code,
    same_grid,
)
from sammed_server.engine.volume import load_volume, volume_from_array
from sammed_server.errors import InputError

ORIENTATIONS = [(order, flips) for order in itertools.permutations(range(3))
                for flips in itertools.product((False, True), repeat=3)]


def test_round_trip_of_a_labelmap_is_exact_for_all_48_orientations() -> None:
    rng = np.random.default_rng(0)
    base = volume_from_array(rng.integers(0, 5, (7, 6, 5)).astype(np.uint8), (0.7, 1.1, 2.5), (10.0, -20.0, 30.0))
    canonical = None
    assert len(ORIENTATIONS) == 48
    for order, flips in ORIENTATIONS:
        stored = restored(base, order, flips)
        view = CanonicalFrame(axis=2, pixel_mm=None).view(stored)
        assert view.volume.direction == (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # RAS
        on_canonical = view.to_canonical(stored.array)
        assert np.array_equal(view.to_native(on_canonical), stored.array), (order, flips)
        canonical = on_canonical if canonical is None else canonical
        assert np.array_equal(on_canonical, canonical), (order, flips)  # one canonical array for every storage
        assert np.allclose(view.volume.origin, CanonicalFrame(2, None).view(base).volume.origin)


def test_canonical_grid_is_the_same_for_every_storage_of_the_sample_ct(ct_path: Path, ct_labels_path: Path) -> None:
    ct, labels = load_volume(ct_path), load_volume(ct_labels_path)
    frame = CanonicalFrame.for_volume(ct, 2)
    assert orientation_code(ct) == "RAS" and frame.axis == 2 and (frame.pixel_mm, frame.size) == (1.5, 256)
    view = frame.view(ct)
    assert view.volume.array.shape == (30, 256, 256) and view.volume.spacing == (1.5, 1.5, 3.0)
    on_grid = view.to_canonical(labels.array)
    assert np.array_equal(view.to_native(on_grid), labels.array)  # 3 mm → 1.5 mm → 3 mm, nearest: exact
    order, flips = (2, 0, 1), (True, False, True)  # K becomes I and runs inferior, J runs right
    other, other_labels = restored(ct, order, flips), restored(labels, order, flips)
    axis, reversed_order = canonical_axis(other, 0)
    assert (axis, reversed_order) == (2, True)
    other_view = CanonicalFrame.for_volume(other, 0).view(other)
    assert np.array_equal(other_view.volume.array, view.volume.array)
    assert np.array_equal(other_view.to_canonical(other_labels.array), on_grid)
    assert np.array_equal(other_view.to_native(on_grid), other_labels.array)
    assert other_view.slice_number(0, 3) == 26 and view.slice_number(2, 3) == 3
    with pytest.raises(InputError, match="not the axial slices"):
        other_view.slice_number(1, 0)


def test_flipped_labelmap_is_resampled_and_scores_as_the_correct_one(ct_path, ct_labels_path, predictor, tmp_path,
                                                                      caplog) -> None:
    """The same physical labels stored upside down (same shape, other direction and origin) are resampled onto the
    CT with one warning, and the demo's Dice is the same as with the correct labelmap."""
    from sammed_server.demo import run_demo

    ct, labels = load_volume(ct_path), load_volume(ct_labels_path)
    upside_down = restored(labels, (0, 1, 2), (False, True, True))
    assert upside_down.array.shape == labels.array.shape and not same_grid(upside_down, ct)
    assert not np.array_equal(upside_down.array, labels.array)
    with caplog.at_level(logging.WARNING):
        assert np.array_equal(labels_on_image(upside_down, ct), labels.array)
    assert len(caplog.records) == 1 and "resampled onto the image grid" in caplog.records[0].getMessage()
    flipped_path = tmp_path / "flipped_seg.nii.gz"
    sitk.WriteImage(upside_down.to_sitk(), str(flipped_path))
    organs = {"kidney_left": 3}
    correct, _, _ = run_demo(predictor, ct_path, ct_labels_path, tmp_path / "a", organs)
    flipped, _, _ = run_demo(predictor, ct_path, flipped_path, tmp_path / "b", organs)
    assert [(r.name, r.volume_dice) for r in flipped] == [(r.name, r.volume_dice) for r in correct]
    assert correct[0].volume_dice > 0.8


def test_labels_outside_the_image_are_one_clear_error(ct_path, ct_labels_path, tmp_path) -> None:
    labels = load_volume(ct_labels_path)
    far = volume_from_array(labels.array, labels.spacing, np.add(labels.origin, (0, 0, 500.0)), labels.direction)
    with pytest.raises(InputError, match="do not overlap the image in physical space"):
        labels_on_image(far, load_volume(ct_path))
    far_path = tmp_path / "far_seg.nii.gz"
    sitk.WriteImage(far.to_sitk(), str(far_path))
    env = {**os.environ, "SAMMED_HOME": str(tmp_path / "home")}
    for command in (["evaluate", str(ct_path), str(far_path), "--quick"],
                    ["train", "decoder", "--images", str(ct_path), "--labels", str(far_path), "--classes", "5=liver",
                     "--iterations", "1"]):
        result = subprocess.run([sys.executable, "-m", "sammed_server.cli", *command], capture_output=True, text=True,
                                env=env, timeout=300)
        errors = [line for line in result.stderr.splitlines() if line.startswith("sammed-server: error:")]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(errors) == 1 and "do not overlap the image in physical space" in errors[0], result.stderr


def test_frame_in_the_manifest_and_old_artefacts_without_one(caplog) -> None:
    frame = CanonicalFrame(axis=1)
    assert CanonicalFrame.from_manifest({"frame": frame.to_manifest()}) == frame
    with caplog.at_level(logging.WARNING):
        assert CanonicalFrame.from_manifest({"id": "liver-123"}) is None  # stored before frames: native slices
    assert "liver-123 has no canonical frame" in caplog.text
