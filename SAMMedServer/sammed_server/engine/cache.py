"""Embedding cache: fp16 in memory under a byte budget (LRU), persisted on disk under a size budget and checksummed.

On disk, each (volume, axis, model, weights, preprocessing) gets one folder with an ``embeddings.f16`` array of
shape ``(slices, C, E, E)`` and a ``checksums.u64`` table holding a CRC-32 of each stored slice (bit 32 marks
presence). Both are read and written with positioned ordinary I/O, never memory-mapped: a file another process
truncates, replaces or deletes, a full disk or a read-only folder is an error value here, not a SIGBUS. Files
grow as slices are written (no sparse pre-sizing). A second process opening the same folder reuses every valid
slice; a slice whose bytes no longer match its checksum, or that a truncated file lost, is reported with a
warning and treated as missing, so it is recomputed.

When the disk cannot take a write (full, read-only, no permission) the cache keeps serving from memory, with one
warning, and tries the disk again a minute later. The disk budget (``SAMMED_CACHE_MAX_GB``) is kept by deleting
whole store folders, least recently used first (a folder's ``meta.json`` mtime is its last use).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import threading
import time
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
DATA_FILE, SUMS_FILE, META_FILE = "embeddings.f16", "checksums.u64", "meta.json"
RETRY_DISK_AFTER_S = 60.0  # after a failed write, memory only for this long
TOUCH_EVERY_S = 60.0  # how often a store in use refreshes its last-use time
RESCAN_EVERY_S = 60.0  # how often the disk usage estimate is recounted (other processes write too)


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
    disk_write_failures: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


class DiskStore:
    """The on-disk embeddings of one :class:`StoreKey` (files opened per operation, so replacement is harmless)."""

    def __init__(self, folder: Path, num_slices: int, slice_shape: tuple[int, ...]) -> None:
        self.folder = folder
        self.shape = (num_slices, *slice_shape)
        self.slice_bytes = int(np.prod(slice_shape)) * 2
        self.meta = {"shape": list(self.shape), "dtype": "float16", "format": 1}
        self._touched = 0.0

    def has(self, index: int) -> bool:
        return bool(self._sum(index) & PRESENT)

    def get(self, index: int) -> Optional[np.ndarray]:
        """The slice's embedding, or None when absent, cut off or failing its checksum."""
        stored = self._sum(index)
        if not stored & PRESENT:
            return None
        raw = _pread(self.folder / DATA_FILE, index * self.slice_bytes, self.slice_bytes)
        array = None if raw is None else np.frombuffer(raw, np.float16).reshape(self.shape[1:]).copy()
        if array is None or _checksum(array) != stored:
            why = "is cut off (the file was truncated)" if array is None else "failed its checksum"
            log.warning("embedding cache: slice %d in %s %s; recomputing it", index, self.folder, why)
            self._forget(index)
            return None
        return array

    def put(self, index: int, array: np.ndarray) -> None:
        """Write one slice (data first, then its checksum); an ``OSError`` means nothing usable was stored."""
        self._ensure_meta()
        _pwrite(self.folder / DATA_FILE, index * self.slice_bytes, np.ascontiguousarray(array, np.float16).tobytes())
        _pwrite(self.folder / SUMS_FILE, index * 8, np.array([_checksum(array)], np.uint64).tobytes())
        self.touch()

    def touch(self, force: bool = False) -> None:
        """Mark the store as used now (for least-recently-used eviction); at most once a minute."""
        now = time.time()
        if force or now - self._touched > TOUCH_EVERY_S:
            self._touched = now
            try:
                os.utime(self.folder / META_FILE)
            except OSError:
                pass

    def _sum(self, index: int) -> np.uint64:
        if not 0 <= index < self.shape[0] or _read_json(self.folder / META_FILE) != self.meta:
            return np.uint64(0)
        raw = _pread(self.folder / SUMS_FILE, index * 8, 8)
        return np.frombuffer(raw, np.uint64)[0] if raw is not None else np.uint64(0)

    def _forget(self, index: int) -> None:
        try:
            _pwrite(self.folder / SUMS_FILE, index * 8, bytes(8))
        except OSError:
            pass  # a read-only cache: the bad slice stays bad and is recomputed each time

    def _ensure_meta(self) -> None:
        """Create the folder and its ``meta.json``; a store of another layout is discarded first."""
        meta_path = self.folder / META_FILE
        if _read_json(meta_path) == self.meta:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in (DATA_FILE, SUMS_FILE):
            (self.folder / name).unlink(missing_ok=True)
        meta_path.write_text(json.dumps(self.meta))


class DiskBudget:
    """Keeps the bytes under ``root`` at most ``max_bytes`` by deleting least recently used store folders."""

    def __init__(self, root: Path, max_bytes: Optional[int]) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.evicted = 0
        self._used: Optional[int] = None
        self._counted = 0.0

    def make_room(self, needed: int, keep: Path) -> bool:
        """Whether ``needed`` more bytes fit, after evicting other stores if necessary."""
        if self.max_bytes is None:
            return True
        if self._used is None or time.monotonic() - self._counted > RESCAN_EVERY_S:
            self._recount()
        if self._used + needed <= self.max_bytes:
            self._used += needed
            return True
        self._recount()
        stores = sorted(self._folders(), key=_last_used)
        for folder in stores:
            if self._used + needed <= self.max_bytes:
                break
            if folder == keep:
                continue
            size = _folder_bytes(folder)
            if _delete_folder(folder):
                self._used -= size
                self.evicted += 1
                log.info("embedding cache: evicted %s (%.1f MB) to stay under the disk budget", folder, size / 2**20)
        fits = self._used + needed <= self.max_bytes
        self._used += needed if fits else 0
        return fits

    def _recount(self) -> None:
        self._used = sum(_folder_bytes(folder) for folder in self._folders())
        self._counted = time.monotonic()

    def _folders(self) -> list[Path]:
        """Store folders (those with a ``meta.json``; anything else under the root is left alone)."""
        try:
            return [store for model in self.root.iterdir() if model.is_dir()
                    for store in model.iterdir() if (store / META_FILE).is_file()]
        except OSError:
            return []


class EmbeddingCache:
    """Two-level cache of slice embeddings: memory LRU over an optional disk store."""

    def __init__(self, root: Optional[Path], memory_bytes: int, disk_bytes: Optional[int] = None,
                 min_free_bytes: int = 0) -> None:
        self.root = Path(root) if root else None
        self.memory_bytes = memory_bytes
        self.min_free_bytes = min_free_bytes
        self.stats = CacheStats()
        self._budget = DiskBudget(self.root, disk_bytes) if self.root else None
        self._memory: OrderedDict[tuple[StoreKey, int], torch.Tensor] = OrderedDict()
        self._used = 0
        self._stores: dict[StoreKey, DiskStore] = {}
        self._disk_off_until = 0.0
        self._disk_warned = False
        self._too_big_warned: set[StoreKey] = set()
        self._lock = threading.RLock()

    @classmethod
    def from_settings(cls, root: Optional[Path] = None, memory_bytes: Optional[int] = None) -> "EmbeddingCache":
        """The cache the settings describe: folder, memory budget, disk budget and free-space floor."""
        from ..settings import cache_max_bytes, cache_min_free_bytes, embedding_cache_dir, memory_cache_bytes

        return cls(Path(root or embedding_cache_dir()), memory_bytes or memory_cache_bytes(),
                   disk_bytes=cache_max_bytes(), min_free_bytes=cache_min_free_bytes())

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
            self._remember(key, index, embedding)
            store = self._store(key, num_slices, tuple(embedding.shape))
            if store is not None and time.monotonic() >= self._disk_off_until:
                self._write(key, store, index, embedding.numpy())

    def location(self, key: StoreKey) -> Optional[Path]:
        return self.root / key.folder() if self.root else None

    @property
    def disk_writable(self) -> bool:
        """False while writes are off after a failure (full or read-only disk)."""
        return self.root is not None and time.monotonic() >= self._disk_off_until

    def _write(self, key: StoreKey, store: DiskStore, index: int, array: np.ndarray) -> None:
        assert self._budget is not None
        try:
            free = shutil.disk_usage(self.root if self.root.exists() else self.root.parent).free
            if free < store.slice_bytes + 8 + self.min_free_bytes:
                raise OSError(errno.ENOSPC, f"only {free / 2**20:.1f} MB free")
            if not self._budget.make_room(store.slice_bytes + 8, keep=store.folder):
                if key not in self._too_big_warned:
                    self._too_big_warned.add(key)
                    log.warning("embedding cache: %s does not fit the disk budget; its slices stay in memory", store.folder)
                return
            store.put(index, array)
        except OSError as exc:
            self.stats.disk_write_failures += 1
            self._disk_off_until = time.monotonic() + RETRY_DISK_AFTER_S
            if not self._disk_warned:
                self._disk_warned = True
                log.warning("embedding cache: cannot write to %s (%s); keeping embeddings in memory only, "
                            "retrying the disk every %.0f s", self.root, exc.strerror or exc, RETRY_DISK_AFTER_S)
            return
        if self._disk_warned:
            self._disk_warned = False
            log.warning("embedding cache: writing to %s works again", self.root)

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
        if store is None or store.shape != (num_slices, *slice_shape):
            store = self._stores[key] = DiskStore(self.root / key.folder(), num_slices, slice_shape)
            store.touch(force=True)
        return store


def _checksum(array: np.ndarray) -> np.uint64:
    return np.uint64(zlib.crc32(np.ascontiguousarray(array).data)) | PRESENT


def _pread(path: Path, offset: int, size: int) -> Optional[bytes]:
    """``size`` bytes at ``offset``, or None when the file is missing, unreadable or too short."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        raw = os.pread(fd, size, offset)
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw if len(raw) == size else None


def _pwrite(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    finally:
        os.close(fd)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _folder_bytes(folder: Path) -> int:
    """Bytes allocated on disk by the files of ``folder`` (sparse holes do not count)."""
    total = 0
    try:
        for entry in os.scandir(folder):
            try:
                total += entry.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                pass
    except OSError:
        pass
    return total


def _last_used(folder: Path) -> float:
    try:
        return (folder / META_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _delete_folder(folder: Path) -> bool:
    """Remove a store folder (renamed first, so no reader sees it half-deleted)."""
    doomed = folder.with_name(f".{folder.name}.evicted-{os.getpid()}-{threading.get_ident()}")
    try:
        folder.rename(doomed)
    except OSError:
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True
