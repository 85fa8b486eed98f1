"""Embedding cache: LRU budget, persistence across processes, checksums, truncation."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from sammed_server.engine.cache import EmbeddingCache, StoreKey

KEY = StoreKey("vol", 2, "model", "weights", "prep")
SHAPE = (4, 8, 8)


def embedding(seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float16))


def test_memory_lru_respects_budget():
    one = embedding(0).numel() * 2
    cache = EmbeddingCache(None, memory_bytes=2 * one)
    for i in range(3):
        cache.put(KEY, i, 3, embedding(i))
    assert cache.get(KEY, 0, 3, SHAPE) is None  # evicted, no disk behind it
    assert torch.equal(cache.get(KEY, 2, 3, SHAPE), embedding(2))
    assert cache.stats.misses == 1 and cache.stats.memory_hits == 1


def test_disk_store_is_reused_by_a_new_cache(tmp_path):
    EmbeddingCache(tmp_path, 2**20).put(KEY, 1, 3, embedding(1))
    fresh = EmbeddingCache(tmp_path, 2**20)
    assert torch.equal(fresh.get(KEY, 1, 3, SHAPE), embedding(1))
    assert fresh.get(KEY, 0, 3, SHAPE) is None
    assert (fresh.stats.disk_hits, fresh.stats.misses) == (1, 1)


def test_corrupt_entry_is_detected_and_dropped(tmp_path, caplog):
    EmbeddingCache(tmp_path, 2**20).put(KEY, 1, 3, embedding(1))
    data = tmp_path / KEY.folder() / "embeddings.f16"
    raw = bytearray(data.read_bytes())
    raw[embedding(1).numel() * 2 + 5] ^= 0xFF  # flip a byte inside slice 1
    data.write_bytes(bytes(raw))
    fresh = EmbeddingCache(tmp_path, 2**20)
    with caplog.at_level(logging.WARNING):
        assert fresh.get(KEY, 1, 3, SHAPE) is None
    assert "failed its checksum" in caplog.text and fresh.stats.corrupt == 1
    fresh.put(KEY, 1, 3, embedding(1))
    assert torch.equal(EmbeddingCache(tmp_path, 2**20).get(KEY, 1, 3, SHAPE), embedding(1))


def test_truncated_file_loses_only_the_cut_slices(tmp_path, caplog):
    cache = EmbeddingCache(tmp_path, 2**20)
    for i in range(3):
        cache.put(KEY, i, 3, embedding(i))
    data = tmp_path / KEY.folder() / "embeddings.f16"
    os.truncate(data, data.stat().st_size - 100)
    with caplog.at_level(logging.WARNING):
        fresh = EmbeddingCache(tmp_path, 2**20)
        assert torch.equal(fresh.get(KEY, 0, 3, SHAPE), embedding(0))
        assert fresh.get(KEY, 2, 3, SHAPE) is None
    assert "cut off" in caplog.text and fresh.stats.corrupt == 1


def test_file_truncated_under_a_running_cache_is_a_miss_not_a_crash(tmp_path):
    cache = EmbeddingCache(tmp_path, memory_bytes=0)  # nothing kept in memory: every get reads the disk
    for i in range(3):
        cache.put(KEY, i, 3, embedding(i))
    os.truncate(tmp_path / KEY.folder() / "embeddings.f16", 0)
    assert all(cache.get(KEY, i, 3, SHAPE) is None for i in range(3))
    (tmp_path / KEY.folder() / "embeddings.f16").unlink()  # replaced by nothing, then by a new file
    cache.put(KEY, 1, 3, embedding(1))
    assert torch.equal(cache.get(KEY, 1, 3, SHAPE), embedding(1))


def test_unwritable_disk_falls_back_to_memory_with_one_warning(tmp_path, caplog):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    cache = EmbeddingCache(blocked, 2**20)
    with caplog.at_level(logging.WARNING):
        for i in range(3):
            cache.put(KEY, i, 3, embedding(i))
    assert [torch.equal(cache.get(KEY, i, 3, SHAPE), embedding(i)) for i in range(3)] == [True] * 3
    assert caplog.text.count("keeping embeddings in memory only") == 1
    assert cache.stats.disk_write_failures == 1 and not cache.disk_writable  # off for a minute, then retried


def test_too_little_free_space_is_not_written(tmp_path, caplog):
    cache = EmbeddingCache(tmp_path, 2**20, min_free_bytes=2**62)
    with caplog.at_level(logging.WARNING):
        cache.put(KEY, 0, 3, embedding(0))
    assert "MB free" in caplog.text and not (tmp_path / KEY.folder() / "embeddings.f16").exists()
    assert torch.equal(cache.get(KEY, 0, 3, SHAPE), embedding(0))


def test_disk_budget_evicts_the_least_recently_used_store(tmp_path):
    shape = (64, 32, 32)  # 128 KiB a slice: block rounding of the small files does not matter
    big = [torch.from_numpy(np.random.default_rng(i).standard_normal(shape).astype(np.float16)) for i in range(3)]
    cache = EmbeddingCache(tmp_path, 2**20, disk_bytes=2 * 3 * 2**17 + 2**16)  # two stores of 3 slices fit
    keys = [StoreKey(f"vol{n}", 2, "model", "weights", "prep") for n in range(3)]
    for age, key in enumerate(keys):
        for i in range(3):
            cache.put(key, i, 3, big[i])
        os.utime(tmp_path / key.folder() / "meta.json", (1000 + age, 1000 + age))  # vol0 is the oldest
    assert not (tmp_path / keys[0].folder()).exists()
    assert (tmp_path / keys[1].folder()).exists() and (tmp_path / keys[2].folder()).exists()
    fresh = EmbeddingCache(tmp_path, 2**20)
    assert fresh.get(keys[0], 0, 3, shape) is None and torch.equal(fresh.get(keys[2], 2, 3, shape), big[2])


def test_changed_layout_starts_a_new_store(tmp_path):
    EmbeddingCache(tmp_path, 2**20).put(KEY, 0, 3, embedding(0))
    meta = tmp_path / KEY.folder() / "meta.json"
    assert json.loads(meta.read_text())["shape"] == [3, *SHAPE]
    assert EmbeddingCache(tmp_path, 2**20).get(KEY, 0, 5, SHAPE) is None  # 5 slices now: old data discarded


def test_second_process_encodes_nothing(ct_path, tmp_path):
    """Two real processes on the same volume: the second one reads every embedding from disk."""
    script = textwrap.dedent(
        f"""
        from sammed_server.engine.cache import EmbeddingCache
        from sammed_server.engine.predictor import SlicePredictor
        from sammed_server.engine.registry import load_backend
        from sammed_server.engine.volume import load_volume
        backend = load_backend("litemedsam", device="cpu")
        predictor = SlicePredictor(backend, EmbeddingCache({str(tmp_path)!r}, 2**30))
        prepared = predictor.prepare(load_volume({str(ct_path)!r}))
        predictor.precompute(prepared, 2, order=[14, 15])
        print("encoder_calls", backend.encoder_calls)
        """
    )
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True) for _ in range(2)]
    assert "encoder_calls 2" in runs[0].stdout
    assert "encoder_calls 0" in runs[1].stdout
