"""Strokes → prompts (no model): scribbles become points along them, a lasso a box and a mask; bad strokes are
clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from sammed_server.engine.prompts import SlicePrompts
from sammed_server.engine.strokes import POINTS_PER_SCRIBBLE, Scribble, lasso_mask, mask_box, scribble_points
from sammed_server.errors import InputError


def test_scribble_points_are_even_by_arc_length_middle_first():
    polyline = np.array([[10.0, 10.0], [10.0, 30.0], [50.0, 30.0]])  # an L: 20 px down, 40 px across
    points = scribble_points(polyline)
    assert len(points) == POINTS_PER_SCRIBBLE
    along = np.array([abs(y - 10) if x == 10 else 20 + (x - 10) for x, y in points])  # arc length of each point
    assert np.allclose(np.sort(along), (np.arange(5) + 0.5) * 60 / 5)
    assert np.allclose(points[0], [20.0, 30.0])  # the middle of the scribble (30 px along) comes first
    assert np.all(np.abs(along[1:] - 30) >= np.abs(along[:-1] - 30) - 1e-9)


def test_short_scribbles_give_fewer_points():
    assert len(scribble_points(np.array([[5.0, 5.0], [5.0, 5.0]]))) == 1
    assert np.allclose(scribble_points(np.array([[5.0, 5.0]])), [[5.0, 5.0]])
    assert len(scribble_points(np.array([[0.0, 0.0], [9.0, 0.0]]))) == 2  # 9 px: stretches of at least 4 px
    assert len(scribble_points(np.array([[0.0, 0.0], [500.0, 0.0]]))) == POINTS_PER_SCRIBBLE


def test_lasso_mask_holds_the_pixel_centres_inside():
    square = np.array([[2.0, 3.0], [8.0, 3.0], [8.0, 7.0], [2.0, 7.0]])  # x 2..8, y 3..7
    mask = lasso_mask(square, 12, 10)
    assert mask.shape == (12, 10)
    assert mask[5, 5] and not mask[0, 0] and not mask[5, 9]
    x0, y0, x1, y1 = mask_box(mask)
    assert 2 <= x0 <= 3 and 7 <= x1 <= 8 and 3 <= y0 <= 4 and 6 <= y1 <= 7


def test_validated_turns_strokes_into_points_and_a_box():
    prompts = SlicePrompts(
        points=[(1.0, 1.0)], labels=[0],
        scribbles=[Scribble([(10.0, 10.0), (30.0, 10.0)], 1), Scribble([(5.0, 20.0), (5.0, 40.0)], 0)],
        lasso=[(10.0, 5.0), (40.0, 5.0), (40.0, 35.0), (10.0, 35.0)],
    ).validated(50, 60)
    assert prompts.points[0] == (1.0, 1.0) and prompts.labels[0] == 0  # the request's own points first
    assert len(prompts.points) == len(prompts.labels) == 1 + 5 + 5
    assert prompts.labels[1:6] == [1] * 5 and prompts.labels[6:] == [0] * 5
    assert all(10 <= x <= 30 and y == 10 for x, y in prompts.points[1:6])
    assert prompts.box == mask_box(prompts.lasso_mask) and prompts.lasso_mask.shape == (50, 60)
    assert prompts.lasso_mask.sum() == pytest.approx(30 * 30, rel=0.1)


def test_a_scribble_alone_is_a_prompt():
    prompts = SlicePrompts(scribbles=[Scribble([(10.0, 10.0), (30.0, 12.0)])]).validated(50, 60)
    assert prompts.box is None and prompts.labels == [1] * 5


@pytest.mark.parametrize(
    "prompts, message",
    [
        (SlicePrompts(lasso=[(1.0, 1.0), (20.0, 1.0)]), "at least 3 vertices"),
        (SlicePrompts(lasso=[(1.0, 1.0), (20.0, 1.0), (20.0, 90.0)]), r"lasso vertex \(20, 90\) is outside the 60×50"),
        (SlicePrompts(lasso=[(1.0, 1.0), (20.0, float("nan")), (20.0, 9.0)]), "finite"),
        (SlicePrompts(lasso=[(1.0, 1.0), (20.0, 1.0), (40.0, 1.0)]), "encloses no area"),
        (SlicePrompts(lasso=[(1.0, 1.0), (20.0, 1.0), (20.0, 9.0)], box=(1, 1, 20, 9)), "a lasso or a box, not both"),
        (SlicePrompts(scribbles=[Scribble([])]), "at least one point"),
        (SlicePrompts(scribbles=[Scribble([(1.0, 1.0), (-3.0, 1.0)])]), r"scribble point \(-3, 1\) is outside"),
        (SlicePrompts(scribbles=[Scribble([(1.0, float("inf"))])]), "finite"),
        (SlicePrompts(scribbles=[Scribble([(1.0, 1.0)], 2)]), "label must be"),
    ],
)
def test_bad_strokes_are_clear_errors(prompts, message):
    with pytest.raises(InputError, match=message):
        prompts.validated(50, 60)
