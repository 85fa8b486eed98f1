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
