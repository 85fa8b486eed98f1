"""Embedding cache: fp16 in memory under a byte budget (LRU), persisted on disk and checksummed.

On disk, each (volume, axis, model, weights, preprocessing) gets one folder with a memory-mapped
``embeddings.f16`` array of shape ``(slices, C, E, E)`` and a ``checksums.u64`` table holding a
CRC-32 of each stored slice (bit 32 marks presence). A second process opening the same folder
reuses every valid slice; a slice whose bytes no longer match its checksum, or that a truncated
file lost, is reported with a warning and treated as missing, so it is recomputed.
"""

from __future__ import annotations

import json
import logging
import threading
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .volume import AXIS_NAMES

log = logging.getLogger(__name__)
PRESENT = np.uint64(1 << 32)


@dataclass(frozen=True)
class StoreKey:
    """Identifies one stack of slice embeddings; with a slice index it is the full cache key."""

    volume_hash: str
    axis: int
    model_id: str
    weights_hash: str
    preprocessing_hash: str

    def folder(self) -> str:
        return (
            f"{self.model_id}-{self.weights_hash[:12]}/"
            f"{self.volume_hash}-{AXIS_NAMES[self.axis]}-{self.preprocessing_hash[:12]}"
        )


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0
    corrupt: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class DiskStore:
    """The memory-mapped embeddings of one :class:`StoreKey`."""

    def __init__(self, folder: Path, num_slices: int, slice_shape: tuple[int, ...]) -> None:
        self.folder = folder
        self.shape = (num_slices, *slice_shape)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"shape": list(self.shape), "dtype": "float16", "format": 1}
        meta_path = folder / "meta.json"
        data_path, sums_path = folder / "embeddings.f16", folder / "checksums.u64"
        if not meta_path.exists() or _read_json(meta_path) != meta:
            for path in (data_path, sums_path):
                path.unlink(missing_ok=True)
            meta_path.write_text(json.dumps(meta))
        _ensure_size(data_path, int(np.prod(self.shape)) * 2)
        _ensure_size(sums_path, num_slices * 8)
        self.data = np.memmap(data_path, dtype=np.float16, mode="r+", shape=self.shape)
        self.sums = np.memmap(sums_path, dtype=np.uint64, mode="r+", shape=(num_slices,))

    def has(self, index: int) -> bool:
        return bool(self.sums[index] & PRESENT)

    def get(self, index: int) -> Optional[np.ndarray]:
        """The slice's embedding, or None when absent or when it fails its checksum."""
        stored = self.sums[index]
        if not stored & PRESENT:
            return None
        array = np.array(self.data[index])
        if _checksum(array) != stored:
            log.warning("embedding cache: slice %d in %s failed its checksum; recomputing it", index, self.folder)
            self.sums[index] = 0
            return None
        return array

    def put(self, index: int, array: np.ndarray) -> None:
        self.data[index] = array
        self.data.flush()
        self.sums[index] = _checksum(array)
        self.sums.flush()


class EmbeddingCache:
    """Two-level cache of slice embeddings: memory LRU over an optional disk store."""

    def __init__(self, root: Optional[Path], memory_bytes: int) -> None:
        self.root = Path(root) if root else None
        self.memory_bytes = memory_bytes
        self.stats = CacheStats()
        self._memory: OrderedDict[tuple[StoreKey, int], torch.Tensor] = OrderedDict()
        self._used = 0
        self._stores: dict[StoreKey, DiskStore] = {}
        self._lock = threading.RLock()

    def get(
        self, key: StoreKey, index: int, num_slices: int, slice_shape: tuple[int, ...], count_miss: bool = True
    ) -> Optional[torch.Tensor]:
        """The cached embedding or None; ``count_miss=False`` for a re-check that should not count twice."""
        with self._lock:
            tensor = self._memory.get((key, index))
            if tensor is not None:
                self._memory.move_to_end((key, index))
                self.stats.memory_hits += 1
                return tensor
            store = self._store(key, num_slices, slice_shape)
            if store is not None:
                had_entry = store.has(index)
                array = store.get(index)
                if array is not None:
                    self.stats.disk_hits += 1
                    tensor = torch.from_numpy(array)
                    self._remember(key, index, tensor)
                    return tensor
                if had_entry:
                    self.stats.corrupt += 1
            self.stats.misses += count_miss
            return None

    def contains(self, key: StoreKey, index: int, num_slices: int, slice_shape: tuple[int, ...]) -> bool:
        """Whether the slice is cached (without checking the disk copy's checksum)."""
        with self._lock:
            if (key, index) in self._memory:
                return True
            store = self._store(key, num_slices, slice_shape)
            return store is not None and store.has(index)

    def put(self, key: StoreKey, index: int, num_slices: int, embedding: torch.Tensor) -> None:
        embedding = embedding.to(torch.float16).contiguous()
        with self._lock:
            store = self._store(key, num_slices, tuple(embedding.shape))
            if store is not None:
                store.put(index, embedding.numpy())
            self._remember(key, index, embedding)

    def location(self, key: StoreKey) -> Optional[Path]:
        return self.root / key.folder() if self.root else None

    def _remember(self, key: StoreKey, index: int, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if (key, index) in self._memory or size > self.memory_bytes:
            return
        self._memory[(key, index)] = tensor
        self._used += size
        while self._used > self.memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self._used -= evicted.numel() * evicted.element_size()

    def _store(self, key: StoreKey, num_slices: int, slice_shape: tuple[int, ...]) -> Optional[DiskStore]:
        if self.root is None:
            return None
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = DiskStore(self.root / key.folder(), num_slices, slice_shape)
        return store


def _checksum(array: np.ndarray) -> np.uint64:
    return np.uint64(zlib.crc32(np.ascontiguousarray(array).data)) | PRESENT


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ensure_size(path: Path, size: int) -> None:
    """Create the file at ``size`` bytes; a truncated file is extended (its lost slices fail their checksums)."""
    current = path.stat().st_size if path.exists() else None
    if current == size:
        return
    if current is not None:
        log.warning("embedding cache: %s has %d bytes, expected %d; missing slices will be recomputed", path, current, size)
    with open(path, "r+b" if current is not None else "wb") as handle:
        handle.truncate(size)
