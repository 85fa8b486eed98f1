"""`sammed-server bench --runtimes`: one table, runtime × speed, each as a ratio to torch measured in the same run.

Every runtime is measured interleaved with the torch reference (slice by slice, decode by decode, request by
request), so a machine whose load changes during the run slows all of them alike; read the ratios. Encoder and
decoder times are in this process; the HTTP round trip and peak RSS come from one worker process per runtime
(``serve --runtime NAME``), each serving the same box prompts.
"""

from __future__ import annotations

import http.client
import json
import os
import tempfile
import time
import urllib.parse
import zlib
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .engine.cache import EmbeddingCache
from .engine.predictor import SlicePredictor
from .engine.prompts import SlicePrompts
from .engine.registry import load_backend
from .engine.volume import Volume, load_volume
from .evaluation.metrics import dice

REFERENCE = "torch"


@dataclass
class RuntimeTimes:
    """What one runtime measured: seconds per encoded slice, per decode, per HTTP round trip; peak worker RSS."""

    encode: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    http: list[float] = field(default_factory=list)
    peak_rss_mib: float = float("nan")
    identical: int = 0
    decodes: int = 0
    dice: list[float] = field(default_factory=list)


def organ_boxes(volume: Volume, labels: Optional[np.ndarray], indices: list[int]) -> list[tuple[int, tuple]]:
    """(slice, tight box) of every labelled structure ≥ 30 px on ``indices`` (axis 2); without labels one
    central box per slice."""
    rows, cols = volume.slice_shape(2)
    if labels is None:
        return [(k, (cols * 0.3, rows * 0.3, cols * 0.6, rows * 0.6)) for k in indices]
    from .evaluation.prompt_simulation import tight_box

    boxes = []
    for k in indices:
        plane = labels[k]  # (K, J, I) array: slice k along IJK axis 2
        boxes += [(k, tight_box(plane == v, 2)) for v in np.unique(plane) if v and (plane == v).sum() >= 30]
    return boxes


def compare_runtimes(
    volume_path: Path, labels_path: Optional[Path], runtimes: list[str], model_id: str = "litemedsam",
    slices: int = 4, decodes: int = 60, http: bool = True,
) -> tuple[list[str], list[list[str]]]:
    """Measure ``runtimes`` (the torch reference is added first) and return the table's header and rows."""
    runtimes = [REFERENCE] + [r for r in runtimes if r != REFERENCE]
    volume = load_volume(volume_path)
    labels = load_volume(labels_path).array if labels_path else None
    count = volume.num_slices(2)
    indices = list(range(max(0, count // 2 - slices // 2), min(count, count // 2 - slices // 2 + slices)))
    times = {name: RuntimeTimes() for name in runtimes}
    with tempfile.TemporaryDirectory() as root:
        predictors = {name: SlicePredictor(load_backend(model_id, device="cpu", runtime=name),
                                           EmbeddingCache(Path(root), 2**30)) for name in runtimes}
        prepared = predictors[REFERENCE].prepare(volume)
        inputs = [predictors[REFERENCE].model_input(prepared, 2, k)[None] for k in indices]
        for predictor in predictors.values():  # warm-up: allocators, thread pools, first-run graph work
            predictor.backend.encode(inputs[0])
        for images in inputs:
            for name, predictor in predictors.items():
                started = time.perf_counter()
                predictor.backend.encode(images)
                times[name].encode.append(time.perf_counter() - started)
        for k in indices:  # the torch embeddings in the shared cache: every runtime decodes the same input
            predictors[REFERENCE].embedding(prepared, 2, k)
        boxes = organ_boxes(volume, labels, indices)
        for i in range(max(decodes, len(boxes))):
            k, box = boxes[i % len(boxes)]
            expected = None
            for name, predictor in predictors.items():
                started = time.perf_counter()
                masks = predictor.predict(prepared, 2, k, SlicePrompts(box=box)).masks
                times[name].decode.append(time.perf_counter() - started)
                expected = masks if expected is None else expected
                times[name].identical += int(np.array_equal(masks, expected))
                times[name].decodes += 1
                times[name].dice.append(dice(masks[0], expected[0]))
        if http:
            _http_round_trips(volume, boxes, runtimes, model_id, decodes, root, times)
    return _table(runtimes, times, len(indices))


def _http_round_trips(volume: Volume, boxes: list, runtimes: list[str], model_id: str, n: int, cache: str,
                      times: dict[str, RuntimeTimes]) -> None:
    """One worker per runtime on the shared disk cache; the same predict requests to each in turn."""
    from .api import codec
    from .api.launch import ServerProcess
    from .api.protocol import API_PREFIX, VOLUME_HEADER
    from .api.schemas import EncodedArray

    raw = np.ascontiguousarray(volume.array)
    geometry = json.dumps({"shape": list(raw.shape), "dtype": raw.dtype.name, "spacing": list(volume.spacing)})
    compressed = zlib.compress(raw.data, 1)
    with ExitStack() as stack:
        workers = {}
        for name in runtimes:
            server = stack.enter_context(ServerProcess(["--model", model_id, "--device", "cpu", "--runtime", name],
                                                       env={"SAMMED_CACHE_DIR": cache}))
            address = urllib.parse.urlsplit(server.url)
            volume_id = _post(address, API_PREFIX + "/volumes", compressed,
                              {VOLUME_HEADER: geometry, "Content-Type": "application/octet-stream"})["id"]
            workers[name] = (server, address, f"{API_PREFIX}/volumes/{volume_id}/predict")
        headers = {"Content-Type": "application/json"}
        for i in range(-1, n):  # request -1 warms each worker up (model load, runtime sessions)
            k, box = boxes[max(i, 0) % len(boxes)]
            body = json.dumps({"axis": 2, "index": k, "box": [float(v) for v in box], "model": model_id}).encode()
            for name, (_, address, path) in workers.items():
                started = time.perf_counter()
                answer = _post(address, path, body, headers)
                codec.decode_array(EncodedArray(**answer["masks"]))
                if i >= 0:
                    times[name].http.append(time.perf_counter() - started)
        for name, (server, _, _) in workers.items():
            times[name].peak_rss_mib = _peak_rss_mib(server.process.pid)


def _post(address: urllib.parse.SplitResult, path: str, body: bytes, headers: dict) -> dict:
    """One request on a new connection, as the Slicer client sends them (urllib: a connection per request)."""
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        payload = json.loads(response.read())
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {payload}")
    return payload


def _peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (Linux ``VmHWM``); NaN where /proc is absent."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _table(runtimes: list[str], times: dict[str, RuntimeTimes], slices: int) -> tuple[list[str], list[list[str]]]:
    reference = times[REFERENCE]

    def cell(value: float, base: float, unit: str = "ms", scale: float = 1000.0, faster_is_lower: bool = True) -> str:
        if not np.isfinite(value):
            return "–"
        ratio = base / value if faster_is_lower else value / base
        return f"{value * scale:.1f} {unit} ({ratio:.2f}×)"

    header = ["runtime", f"encoder / slice ({slices})", "decode p50", "decode p95", "HTTP p50", "HTTP p95",
              "peak RSS (worker)", "masks = torch", "Dice vs torch (min)"]
    rows = []
    for name in runtimes:
        t = times[name]
        p = {key: np.percentile(values, [50, 95]) if values else [np.nan, np.nan]
             for key, values in (("decode", t.decode), ("http", t.http), ("rp", reference.decode), ("rh", reference.http))}
        rows.append([
            name,
            cell(float(np.median(t.encode)), float(np.median(reference.encode))),
            cell(p["decode"][0], p["rp"][0]), cell(p["decode"][1], p["rp"][1]),
            cell(p["http"][0], p["rh"][0]), cell(p["http"][1], p["rh"][1]),
            cell(t.peak_rss_mib, reference.peak_rss_mib, "MiB", 1.0, faster_is_lower=False),
            f"{t.identical}/{t.decodes}",
            f"{np.mean(t.dice):.4f} ({np.min(t.dice):.4f})",
        ])
    return header, rows


def print_runtime_table(header: list[str], rows: list[list[str]], title: str) -> None:
    """A Markdown table: ratios are speed-ups over torch (×, higher is faster) and RSS relative to torch."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"\n{title}\nload average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; torch threads {torch.get_num_threads()}; "
          "(×) = speed-up over torch in this run (RSS: fraction of torch's)\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
