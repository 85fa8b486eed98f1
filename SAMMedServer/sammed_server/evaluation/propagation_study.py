"""Where propagation stops: slices reached against the structure's extent, and volume Dice, for small structures
(parotids, larynx, left-ventricle cavity at end-systole) and CT organs, under the stop rules in
``engine/propagation.py`` (docs/evaluation.md, "Propagation stop rule").

Each case starts from the reference mask on the structure's largest slice and propagates both ways. One permissive
run per case (only an empty mask stops it, at most ``reach`` slices past the structure's ends) records every
slice's mask and predicted IoU; a stop rule is then replayed on that trace exactly, since propagation up to the slice
where a rule stops is the same whatever rule is used.

Run: ``python -m sammed_server.evaluation.propagation_study [DATA_DIR [TRACES.pkl]]`` (prints a Markdown table; the
traces are kept in TRACES.pkl when given, so other rules can be replayed without the model).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from ..engine.predictor import PreparedVolume, SlicePredictor
from ..engine.propagation import PropagationConfig, propagate, stop_reason
from ..engine.volume import load_volume
from .metrics import dice
from .prompt_simulation import largest_slice

AXIS = 2


@dataclass(frozen=True)
class Case:
    dataset: str
    image: str
    labels: str
    value: int
    structure: str
    window: Optional[str] = None


def default_cases() -> list[Case]:
    """Small structures of ``../shared/data`` (the two head-and-neck CTs with a larynx contour, three end-systole
    cardiac MRs) and the sample CT's organs."""
    cases = []
    for n in (4, 5):
        for value, name in ((3, "right parotid"), (4, "left parotid"), (6, "larynx")):
            cases.append(Case("openkbp", f"openkbp-headneck-ct/pt_{n}_ct.nii.gz", f"openkbp-headneck-ct/pt_{n}_oars.nii.gz",
                              value, name, "40,400"))
    for patient in ("001", "002", "007"):
        cases.append(Case("acdc", f"acdc-cine-mr/patient{patient}_frame02_img.nii.gz",
                          f"acdc-cine-mr/patient{patient}_frame02_label.nii.gz", 3, "LV cavity (ES)", "mr"))
    for value, name in ((5, "liver"), (1, "spleen"), (2, "kidney right"), (3, "kidney left")):
        cases.append(Case("sample CT", "totalsegmentator/example_ct_sm.nii.gz", "totalsegmentator/example_seg.nii.gz",
                          value, name))
    return cases


@dataclass
class Trace:
    """One permissive propagation: the start slice and mask, every slice reached with its mask and predicted IoU."""

    name: str
    reference: np.ndarray  # (K, J, I) bool
    start: int
    masks: dict[int, np.ndarray]
    scores: dict[int, float]
    values: PreparedVolume


def trace(predictor: SlicePredictor, case: Case, data: Path, reach: int = 4) -> Optional[Trace]:
    """The permissive run of ``case`` (None when the structure is absent)."""
    volume = load_volume(data / case.image)
    reference = load_volume(data / case.labels).array == case.value
    if not reference.any():
        return None
    prepared = predictor.prepare(volume, case.window)
    start = largest_slice(reference, AXIS)
    present = np.nonzero(reference.any(axis=(1, 2)))[0]
    permissive = PropagationConfig(min_iou=0.0, min_area_ratio=0.0, max_area_ratio=1e9, max_intensity_z=None,
                                   min_overlap=0.0, max_iou_drop=None,
                                   max_slices=max(start - present.min(), present.max() - start) + reach)
    result = propagate(predictor, prepared, AXIS, start, reference[start], "both", permissive)
    return Trace(f"{case.dataset} {Path(case.image).name.split('.')[0]} {case.structure}", reference, start,
                 result.masks, result.scores, prepared)


def replay(item: Trace, config: PropagationConfig) -> np.ndarray:
    """The volume mask the real propagation with ``config`` would give, replayed on ``item``'s trace."""
    volume = np.zeros_like(item.reference)
    volume[item.start] = item.reference[item.start]
    start_values = item.values.volume.slice(AXIS, item.start)[item.reference[item.start]].astype(np.float64)
    intensity = (float(start_values.mean()), max(float(start_values.std()), 1e-6))
    for step in (1, -1):
        previous, index, scores = item.reference[item.start], item.start + step, []
        while index in item.masks:
            current, score = item.masks[index], item.scores[index]
            if stop_reason(previous, current, score, scores, config,
                           item.values.volume.slice(AXIS, index)[current], intensity):
                break
            volume[index], previous = current, current
            scores.append(score)
            index += step
    return volume


def extent(mask: np.ndarray) -> tuple[int, int]:
    present = np.nonzero(mask.any(axis=(1, 2)))[0]
    return int(present.min()), int(present.max())


def traces(data: Path, kept: Optional[Path] = None) -> list[Trace]:
    """The permissive runs of :func:`default_cases` (read from / written to ``kept`` when given)."""
    import pickle

    from ..engine.cache import EmbeddingCache
    from ..engine.registry import load_backend
    from ..settings import embedding_cache_dir

    if kept and kept.is_file():
        return pickle.loads(kept.read_bytes())
    predictor = SlicePredictor(load_backend("litemedsam", device="cpu"), EmbeddingCache(embedding_cache_dir(), 2**30))
    started = time.perf_counter()
    found = [item for case in default_cases() if (item := trace(predictor, case, data)) is not None]
    print(f"{len(found)} traces in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if kept:
        kept.write_bytes(pickle.dumps(found))
    return found


def main(data: Path, kept: Optional[Path] = None) -> None:
    old = replace(PropagationConfig(), min_overlap=0.0, max_iou_drop=None)
    new = PropagationConfig()
    print("| case | reference slices | before: slices (over / under) | Dice | with the stop rule: slices (over / under) "
          "| Dice |\n|---|---|---|---|---|---|")
    for item in traces(data, kept):
        low, high = extent(item.reference)
        cells = []
        for config in (old, new):
            mask = replay(item, config)
            a, b = extent(mask)
            cells.append(f"{a}–{b} (+{max(low - a, 0) + max(b - high, 0)} / −{max(a - low, 0) + max(high - b, 0)}) "
                         f"| {dice(mask, item.reference):.3f}")
        print(f"| {item.name} | {low}–{high} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[4] / "shared" / "data",
         Path(sys.argv[2]) if len(sys.argv) > 2 else None)
