"""Training data for automatic models: the label table, the annotated slices, and windows of features + labels."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..engine.geometry import CanonicalFrame
from ..engine.segmentation_file import default_color
from ..engine.volume import Volume, slice_index
from ..errors import CancelledError, InputError
from .features import FeatureSource, slice_transform, window_indices


@dataclass(frozen=True)
class ClassTable:
    """Organs in class order (class i + 1 = ``values[i]`` in the labelmaps; class 0 is background)."""

    values: tuple[int, ...]
    names: tuple[str, ...]
    colors: tuple[tuple[float, float, float], ...]

    @property
    def num_classes(self) -> int:
        return len(self.values) + 1

    def to_manifest(self) -> list[dict]:
        return [{"class": i + 1, "value": v, "name": n, "color": list(c)}
                for i, (v, n, c) in enumerate(zip(self.values, self.names, self.colors))]

    @classmethod
    def from_manifest(cls, rows: list[dict]) -> "ClassTable":
        rows = sorted(rows, key=lambda r: r["class"])
        return cls(tuple(r["value"] for r in rows), tuple(r["name"] for r in rows),
                   tuple(tuple(r["color"]) for r in rows))

    def class_map(self, labels: np.ndarray) -> np.ndarray:
        """Labelmap values → class indices (0 for every value not in the table), same shape, int64."""
        lookup = np.zeros(int(max(self.values)) + 1, dtype=np.int64)
        lookup[list(self.values)] = np.arange(1, len(self.values) + 1)
        labels = np.asarray(labels).astype(np.int64)
        inside = (labels >= 0) & (labels < len(lookup))
        return np.where(inside, lookup[np.clip(labels, 0, len(lookup) - 1)], 0)


def parse_classes(text: Optional[str], label_names: Optional[Path], labelmap_names: Sequence[str] = ()) -> ClassTable:
    """``--classes 5=liver,1=spleen`` or ``--label-names labels.json`` (a ``{value: name}`` table, or one per labelmap
    file name as in TotalSegmentator's labels.json: the first labelmap's table is used)."""
    pairs: list[tuple[int, str]] = []
    if text:
        for item in text.split(","):
            value, _, name = item.partition("=")
            try:
                pairs.append((int(value), name.strip() or f"label_{int(value)}"))
            except ValueError:
                raise InputError(f"bad class {item!r}", "write classes as VALUE=NAME pairs, e.g. 5=liver,1=spleen") from None
    elif label_names:
        try:
            table = json.loads(Path(label_names).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read label names from {label_names}: {exc}") from None
        if table and all(isinstance(v, dict) for v in table.values()):
            keys = [Path(n).name for n in labelmap_names]
            table = next((table[k] for k in keys if k in table), next(iter(table.values())))
        pairs = [(int(k), str(v)) for k, v in table.items()]
    if not pairs:
        raise InputError("no organ classes given", "pass --classes VALUE=NAME,... or --label-names labels.json")
    values = [v for v, _ in pairs]
    if len(set(values)) != len(values) or min(values) < 1:
        raise InputError(f"class values must be distinct positive labelmap values, got {values}")
    return ClassTable(tuple(values), tuple(n for _, n in pairs), tuple(default_color(i) for i in range(len(pairs))))


def choose_slices(labels: np.ndarray, classes: ClassTable, axis: int, fraction: float) -> list[int]:
    """``round(fraction · count)`` slices (at least 1), evenly spread over the slices containing any class."""
    if not 0 < fraction <= 1:
        raise InputError(f"--fraction must be in (0, 1], got {fraction}")
    count = labels.shape[2 - axis]
    mapped = classes.class_map(labels)
    present = [k for k in range(count) if mapped[slice_index(axis, k)].any()]
    if not present:
        raise InputError("no slice of the labelmap contains any of the given classes")
    wanted = min(len(present), max(1, round(fraction * count)))
    picks = np.linspace(0, len(present) - 1, wanted + 2)[1:-1] if wanted < len(present) else range(len(present))
    return sorted({present[int(round(p))] for p in picks})


def labels_to_model(labels: np.ndarray, volume: Volume, axis: int, size: int) -> torch.Tensor:
    """A slice's class map ``(rows, cols)`` → ``(size, size)`` long at the model input (nearest), −1 in the padding."""
    transform = slice_transform(volume, axis, size)
    tensor = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32))[None, None]
    resized = F.interpolate(tensor, size=(transform.new_rows, transform.new_cols), mode="nearest-exact")[0, 0]
    return F.pad(resized, (0, size - transform.new_cols, 0, size - transform.new_rows), value=-1).long()


@dataclass(frozen=True)
class AnnotatedVolume:
    """A volume, its labelmap on the same grid, and the slice indices whose annotation training may use."""

    volume: Volume
    labels: np.ndarray
    slices: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.labels.shape != self.volume.array.shape:
            raise InputError(f"the labelmap has shape {self.labels.shape}, the volume {self.volume.array.shape}",
                             "give each image its own labelmap on the same grid")


def in_canonical_frame(volumes: Sequence[AnnotatedVolume], axis: int) -> tuple[list[AnnotatedVolume], CanonicalFrame]:
    """The annotated volumes (slices along their own ``axis``) seen in the canonical frame, and that frame; all must
    be sliced along the same anatomical axis."""
    frames = [CanonicalFrame.for_volume(item.volume, axis) for item in volumes]
    if len({frame.axis for frame in frames}) > 1:
        raise InputError(f"axis {axis} is not the same anatomical axis in every training volume "
                         f"(canonical axes {[frame.axis for frame in frames]})", "train on one plane, e.g. axial")
    seen = []
    for item, frame in zip(volumes, frames):
        view = frame.view(item.volume)
        slices = tuple(sorted(view.slice_number(axis, k) for k in item.slices))
        seen.append(AnnotatedVolume(view.volume, view.to_canonical(item.labels), slices))
    return seen, frames[0]


def training_windows(volumes: Sequence[AnnotatedVolume], classes: ClassTable, features: FeatureSource,
                     window: int, axis: int = 2, progress: Optional[Callable[[int, int], None]] = None,
                     cancel: Optional[threading.Event] = None,
                     images: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One ``(features (T, *shape), labels (T, S, S))`` pair per annotated slice, the window centred on it; slices
    of the window without annotation are all −1 (ignored). With ``images``, the window's model-input images
    ``(T, 3, S, S)`` instead of its features (for training with augmentation)."""
    size = features.backend.input_size
    samples = []
    total = sum(len(v.slices) for v in volumes)
    for item in volumes:
        count = item.volume.num_slices(axis)
        mapped = classes.class_map(item.labels)
        annotated = set(item.slices)
        for k in item.slices:
            if cancel is not None and cancel.is_set():
                raise CancelledError("training was cancelled while computing features")
            indices = window_indices(k, window, count)
            labels = torch.stack([
                labels_to_model(mapped[slice_index(axis, i)], item.volume, axis, size) if i in annotated
                else torch.full((size, size), -1, dtype=torch.long)
                for i in indices])
            inputs = features.images(item.volume, axis, indices) if images else features.window(item.volume, axis, indices)
            samples.append((inputs, labels))
            if progress:
                progress(len(samples), total)
    return samples
