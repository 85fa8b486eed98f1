"""Windowing presets and the exact slice ↔ model-input coordinate mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sammed_server.engine.preprocessing import InputTransform, resolve_window
from sammed_server.engine.volume import volume_from_array
from sammed_server.errors import InputError


def test_window_presets_and_choices():
    ct = volume_from_array(np.array([-1000, 0, 400], np.int16).reshape(1, 1, 3))
    assert resolve_window(ct).source == "ct preset abdomen 40/400"
    lung = resolve_window(ct, "lung")
    assert (lung.lower, lung.upper) == (-1350.0, 150.0)
    assert resolve_window(ct, "40,80").lower == 0.0
    mr = volume_from_array(np.arange(1000, dtype=np.int16).reshape(10, 10, 10))
    window = resolve_window(mr)
    assert window.source.startswith("percentile") and window.lower == pytest.approx(4.995) and window.upper == pytest.approx(994.005)
    assert np.allclose(window.apply(np.array([-5.0, 994.005, 2000])), [0, 1, 1])
    with pytest.raises(InputError, match="unknown window"):
        resolve_window(ct, "liverish")
    with pytest.raises(InputError, match="width must be positive"):
        resolve_window(ct, "40,0")


@pytest.mark.parametrize(
    "rows, cols, spacing",
    [(101, 122, (3.0, 3.0)), (30, 122, (3.0, 0.7)), (93, 64, (1.5, 3.2)), (200, 37, (0.5, 2.0))],
)
def test_box_lands_where_it_was_drawn(rows, cols, spacing):
    """A box drawn tightly around a rectangle must enclose that rectangle in the model input exactly."""
    transform = InputTransform.for_slice(rows, cols, spacing, 256)
    assert max(transform.new_rows, transform.new_cols) == 256
    physical_aspect = (rows * spacing[0]) / (cols * spacing[1])
    assert transform.new_rows / transform.new_cols == pytest.approx(physical_aspect, rel=0.02)
    image = np.zeros((rows, cols), np.float32)
    y0, y1, x0, x1 = rows // 4, rows // 2, cols // 3, cols - cols // 5
    image[y0 : y1 + 1, x0 : x1 + 1] = 1.0
    model = transform.image_to_model(image)[0].numpy()
    # Edges of the resized rectangle: where the interpolated image crosses 0.5.
    ys, xs = np.nonzero(model > 0.5)
    bx0, by0, bx1, by1 = transform.box_to_model(np.array([x0, y0, x1, y1]))
    sx, sy = transform.scale_xy
    # Corner pixel centres of the slice box sit half a (scaled) pixel inside the rectangle's edges.
    assert xs.min() - 0.5 == pytest.approx(bx0 - 0.5 * sx, abs=1.0)
    assert xs.max() + 0.5 == pytest.approx(bx1 + 0.5 * sx, abs=1.0)
    assert ys.min() - 0.5 == pytest.approx(by0 - 0.5 * sy, abs=1.0)
    assert ys.max() + 0.5 == pytest.approx(by1 + 0.5 * sy, abs=1.0)
    assert np.allclose(transform.points_from_model(transform.points_to_model([[x0, y0]])), [[x0, y0]])


@pytest.mark.parametrize("rows, cols, spacing", [(30, 122, (3.0, 0.7)), (93, 64, (1.5, 3.2))])
def test_mask_round_trip_is_exact(rows, cols, spacing):
    """Model-space logits of a rectangle come back to the same slice pixels."""
    transform = InputTransform.for_slice(rows, cols, spacing, 256)
    mask = np.zeros((rows, cols), bool)
    mask[rows // 4 : rows // 2, cols // 3 : cols // 2] = True
    logits = (transform.image_to_model(mask.astype(np.float32)) - 0.5)
    low = torch.nn.functional.interpolate(logits[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    assert np.array_equal(transform.logits_to_slice(logits).numpy()[0] > 0, mask)
    back = transform.logits_to_slice(low).numpy()[0] > 0
    assert (back != mask).sum() <= 0.1 * mask.sum()  # through 64×64 only edges may move


def test_mask_to_model_sign():
    transform = InputTransform.for_slice(50, 80, (1.0, 1.0), 256)
    mask = np.zeros((50, 80), bool)
    mask[10:30, 20:60] = True
    low = transform.mask_to_model(mask, 256)
    assert low.shape == (1, 256, 256)
    centre = transform.points_to_model([[40, 20]])[0]
    assert low[0, int(centre[1]), int(centre[0])] > 0 and low[0, 200, 200] < 0
