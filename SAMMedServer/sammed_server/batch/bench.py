"""`sammed-server bench --batch`: cohort throughput on Ray for 1 and 2 workers, and the per-case time split.

The cohort is ``cases`` distinct crops of ``slices`` slices of the sample CT (distinct arrays, so every case is
encoded: nothing comes from the embedding cache, which is fresh and temporary for each worker count). The model is
a decoder-only model trained for a few steps on the sample's labels (its quality does not matter here: every
automatic model costs one encoder pass per slice plus a decoder pass).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import SimpleITK as sitk

Row = tuple[str, str]


def batch_bench(volume_path: Path, labels_path: Path, workers: Sequence[int] = (1, 2), cases: int = 6,
                slices: int = 3, device: Optional[str] = None) -> list[Row]:
    from .cases import discover_cases
    from .model import resolve_model
    from .runner import BatchOptions, run_batch

    rows: list[Row] = []
    saved = {k: os.environ.get(k) for k in ("SAMMED_HOME", "SAMMED_CACHE_DIR")}
    with tempfile.TemporaryDirectory() as root:
        os.environ["SAMMED_HOME"] = str(Path(root) / "home")
        try:
            os.environ["SAMMED_CACHE_DIR"] = str(Path(root) / "cache-train")
            model_id = _train(volume_path, labels_path, device)
            cohort = _cohort(volume_path, Path(root) / "cohort", cases, slices)
            spec = resolve_model(model_id, device=device)
            gpu = (device or "").startswith("cuda")
            for count in workers:
                os.environ["SAMMED_CACHE_DIR"] = str(Path(root) / f"cache-{count}")  # every slice encoded
                options = BatchOptions(Path(root) / f"run-{count}", workers=count, object_store_mb=256,
                                       gpus_per_worker=1.0 / count if gpu else 0.0)
                report = run_batch(discover_cases([cohort]), spec, options)
                split = report["mean_seconds"]
                label = f"batch: {count} worker(s) on {'GPU' if gpu else 'CPU'}, {report['done']} cases × {slices} slices"
                rows.append((f"{label}: throughput", f"{report['cases_per_minute']} cases/min "
                                                     f"({report['wall_seconds']:.0f} s incl. Ray start)"))
                rows.append((f"{label}: per case read / infer / write (mean)",
                             " / ".join(f"{split[s]:.2f} s" for s in ("read", "infer", "write"))))
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return rows


def _train(volume_path: Path, labels_path: Path, device: Optional[str]) -> str:
    """A decoder-only model for the labelmap's largest label, 3 steps on 2 slices."""
    import numpy as np

    from ..adapted.data import AnnotatedVolume, parse_classes
    from ..adapted.jobs import run_training_job
    from ..adapted.training import AutoTrainingConfig
    from ..engine.cache import EmbeddingCache
    from ..engine.registry import load_backend
    from ..engine.volume import load_volume
    from ..settings import embedding_cache_dir

    volume, labels = load_volume(volume_path), load_volume(labels_path).array
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    value = int(values[np.argmax(counts)])
    slices = tuple(int(k) for k in np.flatnonzero((labels == value).any(axis=(1, 2)))[:2])
    classes = parse_classes(f"{value}=label_{value}", None)
    backend = load_backend("litemedsam", None, device)
    trained = run_training_job("decoder_only", backend, [AnnotatedVolume(volume, labels, slices)], classes,
                               AutoTrainingConfig(iterations=3), EmbeddingCache(embedding_cache_dir(), 2**30),
                               "bench-batch")
    return trained.artefact_id


def _cohort(volume_path: Path, folder: Path, cases: int, slices: int) -> Path:
    """``cases`` crops of ``slices`` slices at distinct offsets (wrapping when the volume is short)."""
    image = sitk.ReadImage(str(volume_path))
    depth = image.GetSize()[2]
    folder.mkdir(parents=True)
    for index in range(cases):
        start = (index * slices) % max(1, depth - slices)
        sitk.WriteImage(image[:, :, start:start + slices], str(folder / f"case_{index:03d}.nii.gz"))
    return folder
