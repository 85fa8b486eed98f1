"""`sammed-server bench`: encoder and decoder speed, cache behaviour and peak memory, as a printed table."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .engine.cache import EmbeddingCache
from .engine.geometry import load_labels
from .engine.predictor import SlicePredictor
from .engine.prompts import SlicePrompts
from .engine.registry import load_backend
from .engine.volume import load_volume

Row = tuple[str, str]


def percentiles_ms(seconds: list[float]) -> str:
    p50, p95 = np.percentile(np.asarray(seconds) * 1000, [50, 95])
    return f"{p50:.1f} / {p95:.1f}"


def run_bench(
    volume_path: Path, model_id: str = "litemedsam", checkpoint: Optional[Path] = None, device: Optional[str] = None,
    slices: int = 5, decodes: int = 100,
) -> list[Row]:
    """Measure on ``volume_path`` (axial slices around the middle), with a throw-away disk cache."""
    started = time.perf_counter()
    backend = load_backend(model_id, checkpoint, device)
    load_s = time.perf_counter() - started
    volume = load_volume(volume_path)
    count = volume.num_slices(2)
    first = max(0, count // 2 - slices // 2)
    indices = list(range(first, min(count, first + max(slices, 2))))
    rows: list[Row] = [("model", f"{model_id} on {backend.device}"), ("model load", f"{load_s:.2f} s")]
    with tempfile.TemporaryDirectory() as root:
        predictor = SlicePredictor(backend, EmbeddingCache(Path(root), 2**30))
        prepared = predictor.prepare(volume)
        predictor.embedding(prepared, 2, indices[0])  # warm-up (allocator, kernels)
        encode_s = []
        for index in indices[1:]:
            started = time.perf_counter()
            predictor.embedding(prepared, 2, index)
            _synchronize(backend.device)
            encode_s.append(time.perf_counter() - started)
        rows.append(("encoder ms/slice (mean, incl. cache write)", f"{1000 * float(np.mean(encode_s)):.0f} ({len(encode_s)} slices)"))

        rows_, cols_ = volume.slice_shape(2)
        box = (cols_ * 0.3, rows_ * 0.3, cols_ * 0.6, rows_ * 0.6)
        decode_s = []
        for i in range(decodes):
            started = time.perf_counter()
            predictor.predict(prepared, 2, indices[i % len(indices)], SlicePrompts(box=box))
            decode_s.append(time.perf_counter() - started)
        rows.append((f"decode p50 / p95 ms ({decodes} box prompts, cached)", percentiles_ms(decode_s)))
        click = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        click_s = []
        for i in range(max(decodes // 5, 2)):  # one "+" click: the click search (docs/clicks.md)
            started = time.perf_counter()
            predictor.predict(prepared, 2, indices[i % len(indices)], SlicePrompts(points=[click], labels=[1]))
            click_s.append(time.perf_counter() - started)
        ratio = float(np.median(click_s) / np.median(decode_s))
        rows.append((f"click p50 / p95 ms ({len(click_s)} one-click searches, cached; p50 × box)",
                     f"{percentiles_ms(click_s)} ({ratio:.1f}×)"))

        stats = predictor.cache.stats
        rows.append(("cache hits memory / disk / misses", f"{stats.memory_hits} / {stats.disk_hits} / {stats.misses}"))
        fresh = SlicePredictor(backend, EmbeddingCache(Path(root), 2**30))  # what a second process sees
        calls_before, started = backend.encoder_calls, time.perf_counter()
        for index in indices:
            fresh.embedding(prepared, 2, index)
        disk_ms = 1000 * (time.perf_counter() - started) / len(indices)
        rows.append(("disk cache load ms/slice (fresh cache on same folder)", f"{disk_ms:.1f}"))
        rows.append(("encoder calls for the fresh cache", str(backend.encoder_calls - calls_before)))
    rows.append(("peak RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"))
    if backend.device.type == "cuda":
        rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"))
    return rows


def prompt_training_bench(
    volume_path: Path, labels_path: Path, model_id: str = "litemedsam", checkpoint: Optional[Path] = None,
    device: Optional[str] = None,
) -> list[Row]:
    """Train a point prompt encoder with the default settings (`train prompt-encoder`, the Train button) on
    2 slices of the labelmap's largest label, drawn as `evaluate` draws them; seconds and loss first → last."""
    from .evaluation.protocols import training_slices
    from .evaluation.prompt_simulation import largest_slice
    from .sammed.learned_prompts import PromptTrainingConfig, train_prompt_encoder

    volume = load_volume(volume_path)
    labels = load_labels(labels_path, volume, "reference labelmap")
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    target = labels == values[np.argmax(counts)]
    slices = [k for k in range(target.shape[0]) if target[k].any()]
    picked = training_slices(slices, 2, np.random.default_rng(0)) if len(slices) > 1 else [largest_slice(target)]
    config = PromptTrainingConfig()
    with tempfile.TemporaryDirectory() as root:
        predictor = SlicePredictor(load_backend(model_id, checkpoint, device), EmbeddingCache(Path(root), 2**30))
        prepared = predictor.prepare(volume)
        trained = train_prompt_encoder(predictor, prepared, 2, {k: target[k] for k in picked}, config)
    return [(f"train point prompt encoder on 2 slices (label {values[np.argmax(counts)]}, slices {picked}, "
             f"{config.iterations} it × {config.prompts_per_slice} prompts)",
             f"{trained.seconds:.1f} s, loss {trained.losses[0]:.3f} → {trained.losses[-1]:.3f}")]


def auto_model_bench(
    volume_path: Path, labels_path: Path, modes: list[str], steps: int = 3, model_id: str = "litemedsam",
    checkpoint: Optional[Path] = None, device: Optional[str] = None,
) -> list[Row]:
    """Automatic models (``hsam``, ``masam``, ``decoder_only``) on the labelmap's 4 largest labels, 10 % of the
    slices: feature pass, seconds per training step (after one warm-up step), whole-volume segmentation, GPU memory."""
    from .adapted.data import AnnotatedVolume, choose_slices, parse_classes, training_windows
    from .adapted.features import FeatureSource
    from .adapted.inference import predict_classes
    from .adapted.preprocessing import preprocessing_for
    from .adapted.store import build_model
    from .adapted.training import AutoTrainingConfig, train_auto_model

    volume = load_volume(volume_path)
    labels = load_labels(labels_path, volume, "reference labelmap")
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    largest = values[np.argsort(counts)[::-1][:4]]
    classes = parse_classes(",".join(f"{v}=label_{v}" for v in largest), None)
    slices = tuple(choose_slices(labels, classes, 2, 0.1))
    backend = load_backend(model_id, checkpoint, device)
    rows: list[Row] = []
    for mode in modes:
        if backend.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        model = build_model(mode, backend, classes.num_classes)
        with tempfile.TemporaryDirectory() as root:
            features = FeatureSource(backend, preprocessing_for(mode), EmbeddingCache(Path(root), 2**30),
                                     frozen_encoder=model.frozen_encoder)
            started = time.perf_counter()
            samples = training_windows([AnnotatedVolume(volume, labels, slices)], classes, features, model.window)
            feature_s = time.perf_counter() - started
            stamps: list[float] = []

            def lap(step: int, total: Optional[int], loss: float) -> None:
                _synchronize(backend.device)
                stamps.append(time.perf_counter())

            train_auto_model(model, samples, AutoTrainingConfig(iterations=steps + 1), progress=lap)
            started = time.perf_counter()
            predict_classes(model, features, volume)
            segment_s = time.perf_counter() - started
        step_s = (stamps[-1] - stamps[0]) / steps
        rows.append((f"{mode}: features of {len(samples)} training windows (slices {list(slices)})", f"{feature_s:.1f} s"))
        rows.append((f"{mode}: training step (window {model.window}, mean of {steps} after a warm-up)", f"{step_s:.2f} s"))
        rows.append((f"{mode}: segment {volume.num_slices(2)} slices (features included)", f"{segment_s:.1f} s"))
        if backend.device.type == "cuda":
            rows.append((f"{mode}: peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"))
    rows.append(("peak RSS (process)", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"))
    return rows


def print_table(rows: list[Row], title: str) -> None:
    width = max(len(name) for name, _ in rows)
    print(f"\n{title}\n" + "-" * (width + 24))
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
