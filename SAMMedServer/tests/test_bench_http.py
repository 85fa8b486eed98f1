"""The HTTP benchmarks speak the worker's current protocol: a guard added to the worker (e.g. the content types of
issue 15) must not leave `make bench` failing unnoticed. Two predicts each, not a timing."""

from __future__ import annotations

import numpy as np

from sammed_server.api.bench_http import http_roundtrip_bench
from sammed_server.engine.volume import load_volume
from sammed_server.runtime_bench import RuntimeTimes, _http_round_trips


def test_http_roundtrip_bench_uploads_and_predicts(ct_path, shared_cache_dir, monkeypatch):
    monkeypatch.setenv("SAMMED_HOME", str(shared_cache_dir / "home"))
    rows = dict(http_roundtrip_bench(ct_path, n=2, device="cpu"))
    assert rows["predict over HTTP p50 / p95 ms (2, incl. mask decode)"]


def test_runtime_bench_http_round_trips(ct_path, tmp_path, monkeypatch, shared_cache_dir):
    monkeypatch.setenv("SAMMED_HOME", str(shared_cache_dir / "home"))
    volume = load_volume(ct_path)
    times = {"onnxruntime": RuntimeTimes()}
    _http_round_trips(volume, [(24, np.array([30.0, 20.0, 90.0, 70.0]))], ["onnxruntime"], "litemedsam", 2,
                      str(shared_cache_dir), times)
    assert len(times["onnxruntime"].http) == 2
