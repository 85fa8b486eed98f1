"""The demo workflow: embed a CT, segment organs from box prompts on every slice, write .seg.nrrd + PNG, report Dice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from PIL import Image, ImageOps

from .engine.predictor import PreparedVolume, SlicePredictor
from .engine.prompts import SlicePrompts
from .engine.geometry import load_labels
from .engine.segmentation_file import Segment, default_color, write_segmentation
from .engine.volume import Volume, load_volume
from .errors import InputError
from .evaluation.metrics import dice
from .evaluation.overlay import overlay, side_by_side
from .evaluation.prompt_simulation import largest_slice, tight_box
from .sample_data import SAMPLE_ORGANS

AXIS = 2  # axial slices of the sample CT


@dataclass
class OrganResult:
    name: str
    slices: int
    volume_dice: float
    largest_slice_dice: float


def segment_from_boxes(
    predictor: SlicePredictor, prepared: PreparedVolume, reference: np.ndarray, margin: float = 2.0
) -> tuple[np.ndarray, list[int]]:
    """Segment one organ slice by slice from a box around ``reference`` (+``margin`` px) on each slice."""
    result = np.zeros(reference.shape, dtype=bool)
    slices = [k for k in range(reference.shape[0]) if reference[k].any()]
    for k in slices:
        prediction = predictor.predict(prepared, AXIS, k, SlicePrompts(box=tight_box(reference[k], margin)))
        result[k] = prediction.masks[prediction.best]
    return result, slices


def run_demo(
    predictor: SlicePredictor,
    volume_path: Path,
    reference_path: Optional[Path],
    out_dir: Path,
    organs: Optional[dict[str, int]] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> tuple[list[OrganResult], Path, Path]:
    """Run the demo; returns per-organ results, the ``.seg.nrrd`` and the PNG overlay paths."""
    if reference_path is None:
        raise InputError(
            "the demo simulates box prompts from a reference labelmap; give one with --reference",
            "to segment your own volume from your own boxes use `sammed-server segment VOLUME --box ... --slice K`",
        )
    volume = load_volume(volume_path)
    labels = load_labels(reference_path, volume, "reference labelmap")
    organs = organs or _organs_present(labels)
    prepared = predictor.prepare(volume)
    predictor.precompute(prepared, AXIS, progress=progress)

    results, segments = [], []
    for index, (name, value) in enumerate(organs.items()):
        reference = labels == value
        if not reference.any():
            continue
        predicted, slices = segment_from_boxes(predictor, prepared, reference)
        k = largest_slice(reference, AXIS)
        results.append(OrganResult(name, len(slices), dice(predicted, reference), dice(predicted[k], reference[k])))
        segments.append(Segment(name, predicted, default_color(index)))
    if not segments:
        raise InputError(f"none of the organs {', '.join(organs)} is in the reference labelmap")

    stem = Path(volume_path).name.split(".")[0]
    seg_path = write_segmentation(volume, segments, out_dir / f"{stem}.seg.nrrd")
    png_path = _overlay_png(prepared, segments, labels, organs, out_dir / f"{stem}_overlay.png")
    return results, seg_path, png_path


def _organs_present(labels: np.ndarray) -> dict[str, int]:
    present = set(np.unique(labels).tolist())
    known = {name: value for name, value in SAMPLE_ORGANS.items() if value in present}
    return known or {f"label_{value}": int(value) for value in sorted(present - {0})}


def _overlay_png(
    prepared: PreparedVolume, segments: list[Segment], labels: np.ndarray, organs: dict[str, int], path: Path
) -> Path:
    """Prediction (with the boxes) | reference, on the axial slice where the most organs show."""
    k = int(np.argmax([sum(segment.mask[k].any() for segment in segments) for k in range(labels.shape[0])]))
    image = prepared.preprocessing.window.apply(prepared.volume.slice(AXIS, k))
    colors = [segment.color for segment in segments]
    references = [labels[k] == organs[segment.name] for segment in segments]
    boxes = [tight_box(reference, 2.0) for reference in references]
    predicted = overlay(image, [segment.mask[k] for segment in segments], colors, boxes)
    reference = overlay(image, references, colors)
    return side_by_side(*(_radiological(prepared.volume, picture) for picture in (predicted, reference)), path)


def _radiological(volume: Volume, picture: Image.Image) -> Image.Image:
    """Turn an axial slice picture so anterior is up and the patient's right is on the left (LPS direction signs)."""
    direction = np.reshape(volume.direction, (3, 3))
    if direction[0, 0] < 0:
        picture = ImageOps.mirror(picture)
    if direction[1, 1] < 0:
        picture = ImageOps.flip(picture)
    return picture
