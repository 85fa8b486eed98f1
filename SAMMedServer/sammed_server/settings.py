"""Where the worker keeps its files; every location can be overridden by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def home_dir() -> Path:
    """Root for weights and caches: ``$SAMMED_HOME``, else ``$XDG_CACHE_HOME/sammed`` or ``~/.cache/sammed``."""
    if os.environ.get("SAMMED_HOME"):
        return Path(os.environ["SAMMED_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "sammed"


def weights_dir() -> Path:
    return Path(os.environ.get("SAMMED_WEIGHTS_DIR", home_dir() / "weights")).expanduser()


def embedding_cache_dir() -> Path:
    return Path(os.environ.get("SAMMED_CACHE_DIR", home_dir() / "embeddings")).expanduser()


def runtime_cache_dir() -> Path:
    """Exported ONNX models for the ONNX Runtime and OpenVINO runtimes (``$SAMMED_RUNTIME_DIR``)."""
    return Path(os.environ.get("SAMMED_RUNTIME_DIR", home_dir() / "runtimes")).expanduser()


def runtime_choice() -> str:
    """Inference runtime: ``auto`` (default), ``torch``, ``onnxruntime`` or ``openvino`` (``$SAMMED_RUNTIME``)."""
    return os.environ.get("SAMMED_RUNTIME", "auto")


def thread_budget() -> Optional[int]:
    """CPU threads for inference (``$SAMMED_THREADS``; default None: the usable cores)."""
    value = os.environ.get("SAMMED_THREADS")
    return int(value) if value else None


def memory_cache_bytes() -> int:
    """In-memory embedding budget (default 2 GiB, ``$SAMMED_MEMORY_CACHE_MB``)."""
    return int(float(os.environ.get("SAMMED_MEMORY_CACHE_MB", 2048)) * 2**20)


def data_dir() -> Path:
    """The shared test-data folder, absolute: ``$SAMMED_DATA_DIR``, default ``../shared/data`` (from the working
    directory)."""
    return Path(os.environ.get("SAMMED_DATA_DIR", "../shared/data")).expanduser().resolve()


def cache_max_bytes() -> int | None:
    """Disk budget of the embedding cache (``$SAMMED_CACHE_MAX_GB``, default 20 GB; 0 or ``none`` = unbounded)."""
    raw = os.environ.get("SAMMED_CACHE_MAX_GB", "20").strip().lower()
    return None if raw in ("", "0", "none") else int(float(raw) * 1e9)


def cache_min_free_bytes() -> int:
    """Free space the embedding cache leaves on its disk (``$SAMMED_CACHE_MIN_FREE_MB``, default 256)."""
    return int(float(os.environ.get("SAMMED_CACHE_MIN_FREE_MB", 256)) * 2**20)


def volume_memory_bytes() -> int:
    """Memory for held volumes (``$SAMMED_VOLUME_MEMORY_MB``; default a quarter of the machine's memory, ≥ 1 GiB).

    One volume must fit in it; older volumes are dropped to make room. It is also the ceiling for a file read
    with ``from-path`` and for the declared size of an upload, checked before anything is inflated."""
    if os.environ.get("SAMMED_VOLUME_MEMORY_MB"):
        return int(float(os.environ["SAMMED_VOLUME_MEMORY_MB"]) * 2**20)
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        physical = 8 * 2**30
    return max(2**30, physical // 4)


def data_roots() -> list[Path]:
    """Folders ``from-path`` may read: the user's home, the data directory (``$SAMMED_DATA_DIR``, default
    ``../shared/data``) and the ``os.pathsep``-separated folders of ``$SAMMED_DATA_ROOTS``."""
    roots = [Path.home(), data_dir()]
    roots += [Path(p) for p in os.environ.get("SAMMED_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    return [root.expanduser() for root in roots]
