"""Shared pytest fixtures: the real-data directory, the real LiteMedSAM backend and one embedding cache per run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The test-data folder: ``$SAMMED_DATA_DIR``, default ``../shared/data`` beside the repository."""
    return Path(os.environ.get("SAMMED_DATA_DIR", REPO.parent / "shared" / "data")).expanduser()


@pytest.fixture(scope="session")
def data() -> Path:
    folder = data_dir()
    if not (folder / "totalsegmentator" / "example_ct_sm.nii.gz").exists():
        pytest.skip(f"real test data not found in {folder} (set SAMMED_DATA_DIR to the shared data folder)")
    return folder


@pytest.fixture(scope="session")
def ct_path(data: Path) -> Path:
    return data / "totalsegmentator" / "example_ct_sm.nii.gz"


@pytest.fixture(scope="session")
def ct_labels_path(data: Path) -> Path:
    return data / "totalsegmentator" / "example_seg.nii.gz"


@pytest.fixture(scope="session")
def label_names(data: Path) -> dict[str, dict[int, str]]:
    """``{labelmap file name: {value: organ}}`` from the data's labels.json."""
    raw = json.loads((data / "totalsegmentator" / "labels.json").read_text())
    return {name: {int(k): v for k, v in table.items()} for name, table in raw.items()}


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One on-disk embedding cache for the whole run, so each slice is encoded once across tests and processes."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def backend():
    from sammed_server.engine.registry import load_backend

    return load_backend("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def predictor(backend, shared_cache_dir):
    from sammed_server.engine.cache import EmbeddingCache
    from sammed_server.engine.predictor import SlicePredictor

    return SlicePredictor(backend, EmbeddingCache(shared_cache_dir, 2**30))
