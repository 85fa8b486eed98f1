"""`sammed-server bench --http`: predict round trips over loopback HTTP beside the engine-only time."""

from __future__ import annotations

import http.client
import json
import tempfile
import time
import urllib.parse
import zlib
from pathlib import Path
from typing import Optional

import numpy as np

from ..bench import Row, percentiles_ms
from ..engine.cache import EmbeddingCache
from ..engine.predictor import SlicePredictor
from ..engine.prompts import SlicePrompts
from ..engine.registry import load_backend
from ..engine.volume import load_volume
from . import codec
from .launch import ServerProcess
from .protocol import API_PREFIX, VOLUME_HEADER
from .schemas import EncodedArray


def http_roundtrip_bench(
    volume_path: Path, n: int = 100, model: str = "litemedsam", device: Optional[str] = None
) -> list[Row]:
    """Start a worker subprocess on 127.0.0.1, upload ``volume_path`` and time ``n`` box predicts on the
    middle axial slice over HTTP (request, JSON, mask decode), each followed by the same predict in-process."""
    volume = load_volume(volume_path)
    index = volume.num_slices(2) // 2
    rows, cols = volume.slice_shape(2)
    box = (cols * 0.3, rows * 0.3, cols * 0.6, rows * 0.6)
    server_args = ["--model", model] + (["--device", device] if device else [])
    with tempfile.TemporaryDirectory() as cache, ServerProcess(server_args, env={"SAMMED_CACHE_DIR": cache}) as server:
        url = urllib.parse.urlsplit(server.url)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=600)

        def post(path: str, body: bytes, headers: dict) -> dict:
            connection.request("POST", API_PREFIX + path, body=body, headers=headers)
            response = connection.getresponse()
            payload = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status} {payload}")
            return payload

        raw = np.ascontiguousarray(volume.array)
        started = time.perf_counter()
        compressed = zlib.compress(raw.data, 1)
        geometry = {"shape": list(raw.shape), "dtype": raw.dtype.name, "spacing": list(volume.spacing)}
        volume_id = post("/volumes", compressed,
                         {VOLUME_HEADER: json.dumps(geometry), "Content-Type": "application/octet-stream"})["id"]
        upload_s = time.perf_counter() - started

        predictor = SlicePredictor(load_backend(model, device=device), EmbeddingCache(Path(cache), 2**30))
        prepared = predictor.prepare(volume)
        prompts = SlicePrompts(box=box)
        request = json.dumps({"axis": 2, "index": index, "box": list(box), "model": model}).encode()
        headers = {"Content-Type": "application/json"}
        post(f"/volumes/{volume_id}/predict", request, headers)  # the server encodes the slice
        predictor.predict(prepared, 2, index, prompts)  # and this process loads it from the shared disk cache
        http_s, server_ms, engine_s, payload_chars = [], [], [], 0
        for _ in range(n):  # interleaved, so both see the same machine load
            started = time.perf_counter()
            answer = post(f"/volumes/{volume_id}/predict", request, headers)
            codec.decode_array(EncodedArray(**answer["masks"]))
            http_s.append(time.perf_counter() - started)
            server_ms.append(answer["timing_ms"]["predict"] + answer["timing_ms"]["encode_mask"])
            payload_chars = len(answer["masks"]["data"])
            started = time.perf_counter()
            predictor.predict(prepared, 2, index, prompts)
            engine_s.append(time.perf_counter() - started)
        connection.close()

    overhead = float(np.median(http_s) - np.median(engine_s)) * 1000
    return [
        ("volume upload (raw MB -> sent MB, ms)", f"{raw.nbytes / 2**20:.1f} -> {len(compressed) / 2**20:.1f}, {upload_s * 1000:.0f}"),
        (f"predict over HTTP p50 / p95 ms ({n}, incl. mask decode)", percentiles_ms(http_s)),
        ("  server time in it p50 / p95 ms (predict + mask encode)", percentiles_ms([ms / 1000 for ms in server_ms])),
        (f"engine-only predict p50 / p95 ms ({n}, same prompt)", percentiles_ms(engine_s)),
        ("transport overhead p50 ms (HTTP - engine)", f"{overhead:.1f}"),
        ("mask payload (base64 chars, slice %dx%d)" % (cols, rows), str(payload_chars)),
    ]
