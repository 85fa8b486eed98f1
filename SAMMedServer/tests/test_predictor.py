"""The real LiteMedSAM on real CT: box, point, multimask, mask-input prompts, and bad prompts."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage

from sammed_server.engine.prompts import SlicePrompts
from sammed_server.engine.volume import load_volume
from sammed_server.errors import CancelledError, InputError
from sammed_server.evaluation.metrics import dice
from sammed_server.evaluation.prompt_simulation import largest_slice, tight_box

ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "stomach": 6, "gallbladder": 4}


@pytest.mark.parametrize("organ", ORGANS)
def test_tight_box_dice(predictor, prepared, labels, organ):
    reference = labels == ORGANS[organ]
    k = largest_slice(reference)
    prediction = predictor.predict(prepared, 2, k, SlicePrompts(box=tight_box(reference[k], 2)))
    assert prediction.masks.shape == (1, 101, 122)
    assert dice(prediction.masks[prediction.best], reference[k]) >= 0.90


def test_points_refine_a_box_and_multimask(predictor, prepared, labels):
    reference = (labels == ORGANS["liver"])[24]
    depth = ndimage.distance_transform_edt(reference)
    inner = np.unravel_index(np.argmax(depth), depth.shape)[::-1]  # (x, y) deepest inside the liver
    box = tight_box(reference, 2)
    multi = predictor.predict(prepared, 2, 24, SlicePrompts(points=[inner], labels=[1], box=box, multimask=True))
    assert multi.masks.shape == (3, 101, 122) and multi.scores.shape == (3,)
    assert multi.masks[multi.best][inner[1], inner[0]]
    refined = predictor.predict(prepared, 2, 24, SlicePrompts(box=box, mask_input=multi.low_res_logits[multi.best]))
    assert dice(refined.masks[0], reference) > 0.90
    background = np.argwhere(~reference & (ndimage.distance_transform_edt(~reference) > 4))
    y, x = background[len(background) // 2]
    negative = predictor.predict(prepared, 2, 24, SlicePrompts(points=[inner, (x, y)], labels=[1, 0], box=box))
    assert not negative.masks[0][y, x]


def test_other_axes_work(predictor, prepared, labels):
    reference = labels == ORGANS["liver"]
    j = largest_slice(reference, axis=1)
    prediction = predictor.predict(prepared, 1, j, SlicePrompts(box=tight_box(reference[:, j, :], 1)))
    assert prediction.masks.shape == (1, 30, 122)
    assert dice(prediction.masks[0], reference[:, j, :]) >= 0.80


@pytest.mark.parametrize(
    "prompts, message",
    [
        (SlicePrompts(box=(200, 200, 300, 300)), "outside"),
        (SlicePrompts(box=(50, 50, 10, 10)), "x1 < x0"),
        (SlicePrompts(points=[(500, 3)], labels=[1], box=(1, 1, 20, 20)), "outside"),
        (SlicePrompts(points=[(5, 3)], labels=[2], box=(1, 1, 20, 20)), "labels must be"),
        (SlicePrompts(), "at least one point or a box"),
        (SlicePrompts(box=(1, 1, 20, 20), mask_input=np.zeros((64, 64))), "mask input must be 256"),
    ],
)
def test_bad_prompts_are_clear_errors(predictor, prepared, prompts, message):
    with pytest.raises(InputError, match=message):
        predictor.predict(prepared, 2, 24, prompts)


def test_box_partly_outside_is_clipped(predictor, prepared, labels):
    reference = (labels == ORGANS["spleen"])[22]
    x0, y0, x1, y1 = tight_box(reference, 2)
    prediction = predictor.predict(prepared, 2, 22, SlicePrompts(box=(x0, y0, x1 + 500, y1)))
    assert prediction.masks.shape == (1, 101, 122)


def test_precompute_serves_the_urgent_slice_first_and_cancels(backend, ct_path, tmp_path):
    from sammed_server.engine.cache import EmbeddingCache
    from sammed_server.engine.predictor import SlicePredictor

    predictor = SlicePredictor(backend, EmbeddingCache(tmp_path, 2**28))  # empty cache: other tests fill the shared one
    prepared = predictor.prepare(load_volume(ct_path))
    order, urgent = [0, 1, 2], 2
    seen = []

    def progress(done: int, total: int) -> None:
        seen.append([predictor.is_cached(prepared, 2, i) for i in order])

    predictor.precompute(prepared, 2, order=order, progress=progress, next_index=lambda: urgent)
    assert seen[0] == [False, False, True]  # the urgent slice was encoded in the first step
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(CancelledError):
        predictor.precompute(prepared, 2, order=[3], cancel=cancel)
    assert not predictor.is_cached(prepared, 2, 3)
