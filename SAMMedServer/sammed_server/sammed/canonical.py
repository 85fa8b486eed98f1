"""SAP-Nets in the canonical frame (``engine/geometry.py``): trained from the user's annotated native slices, applied
to any volume however it is stored, results returned on that volume's own grid."""

from __future__ import annotations

import threading
from typing import Callable, Mapping, Optional

import numpy as np
from torch import nn

from ..engine.geometry import CanonicalFrame
from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.volume import Volume, slice_index
from .auto_segment import AutoSegmentation, auto_segment
from .sapnet import SAPNetConfig, TrainedSAPNet, train_sapnet


def train_sapnet_canonical(
    predictor: SlicePredictor,
    volume: Volume,
    axis: int,
    annotations: Mapping[int, np.ndarray],
    window: Optional[str] = None,
    config: SAPNetConfig = SAPNetConfig(),
    progress: Optional[Callable[[int, int, float], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> tuple[TrainedSAPNet, PreparedVolume, list[int]]:
    """Train a SAP-Net on native slice ``annotations`` along ``axis`` of ``volume``, in the canonical frame.
    Returns the SAP-Net (``frame`` set), the canonical prepared volume and the canonical annotated slices."""
    frame = CanonicalFrame.for_volume(volume, axis)
    view = frame.view(volume)
    prepared = predictor.prepare(view.volume, window)
    canonical = view.annotations(axis, annotations)
    trained = train_sapnet(predictor, prepared, frame.axis, canonical, config, progress, cancel)
    trained.frame = frame
    return trained, prepared, sorted(k for k, mask in canonical.items() if mask.any())


def auto_segment_native(
    predictor: SlicePredictor,
    volume: Volume,
    sapnet: TrainedSAPNet,
    axis: int = 2,
    annotations: Mapping[int, np.ndarray] = {},
    window: Optional[str] = None,
    prompt_encoder: Optional[nn.Module] = None,
    prompt: str = "box",
    progress: Optional[Callable[[int, int], None]] = None,
    cancel: Optional[threading.Event] = None,
) -> AutoSegmentation:
    """SAM-auto on ``volume`` with ``sapnet``: in its canonical frame when it has one (``axis`` then only says along
    which native axis ``annotations`` lie), else on ``volume``'s own slices along ``axis``. The masks come back on
    ``volume``'s grid; annotated slices keep the user's masks; prompts and scores are keyed by canonical slice."""
    if sapnet.frame is None:
        return auto_segment(predictor, predictor.prepare(volume, window), axis, sapnet, annotations,
                            prompt_encoder, prompt, progress=progress, cancel=cancel)
    view = sapnet.frame.view(volume)
    canonical = view.annotations(axis, annotations) if annotations else {}
    result = auto_segment(predictor, predictor.prepare(view.volume, window), sapnet.frame.axis, sapnet, canonical,
                          prompt_encoder, prompt, progress=progress, cancel=cancel)
    result.mask = view.to_native(result.mask.astype(np.uint8)).astype(bool)
    result.coarse = view.to_native(result.coarse.astype(np.uint8)).astype(bool)
    for index, mask in annotations.items():
        result.mask[slice_index(axis, index)] = np.asarray(mask, bool)
    return result
