"""Shared pytest fixtures: the real-data directory, the real LiteMedSAM backend and one embedding cache per run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent


def data_dir() -> Path:
    """The test-data folder: ``$SAMMED_DATA_DIR``, default ``../shared/data`` beside the repository."""
    return Path(os.environ.get("SAMMED_DATA_DIR", REPO.parent / "shared" / "data")).expanduser().resolve()


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
def mr_path(data: Path) -> Path:
    return data / "totalsegmentator" / "example_mr_sm.nii.gz"


@pytest.fixture(scope="session")
def mr_labels_path(data: Path) -> Path:
    return data / "totalsegmentator" / "example_seg_mr.nii.gz"


@pytest.fixture(scope="session")
def label_names(data: Path) -> dict[str, dict[int, str]]:
    """``{labelmap file name: {value: organ}}`` from the data's labels.json."""
    raw = json.loads((data / "totalsegmentator" / "labels.json").read_text())
    return {name: {int(k): v for k, v in table.items()} for name, table in raw.items()}


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One on-disk embedding cache for the whole run, so each slice is encoded once across tests and processes.
    ``$SAMMED_TEST_CACHE_DIR`` keeps it between runs (for development; CI starts empty)."""
    kept = os.environ.get("SAMMED_TEST_CACHE_DIR")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        return Path(kept)
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session", autouse=True)
def shared_runtime_dir(shared_cache_dir: Path) -> Iterator[Path]:
    """One folder of exported ONNX models for the run (``$SAMMED_RUNTIME_DIR``, inherited by every worker and CLI
    process a test starts): tests that give a process its own ``SAMMED_HOME`` would otherwise export the model
    again each time (~20 s). A test of the export itself sets its own folder."""
    if os.environ.get("SAMMED_RUNTIME_DIR"):
        yield Path(os.environ["SAMMED_RUNTIME_DIR"])
        return
    folder = shared_cache_dir / "runtimes"
    os.environ["SAMMED_RUNTIME_DIR"] = str(folder)
    yield folder
    del os.environ["SAMMED_RUNTIME_DIR"]


@pytest.fixture(scope="session")
def backend():
    from sammed_server.engine.registry import load_backend

    return load_backend("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def predictor(backend, shared_cache_dir):
    from sammed_server.engine.cache import EmbeddingCache
    from sammed_server.engine.predictor import SlicePredictor

    return SlicePredictor(backend, EmbeddingCache(shared_cache_dir, 2**30))


@pytest.fixture(scope="session")
def worker(shared_cache_dir: Path) -> Iterator[Any]:
    """A real ``sammed-server serve`` on a free loopback port, started by the Slicer Lib's ServerProcess; yields
    the Lib's client. For the Slicer-side tests, whose conftest puts ``SAMMedSlicer/`` on ``sys.path``."""
    from SAMMedSlicerLib.client import SAMMedClient
    from SAMMedSlicerLib.server_process import ServerProcess, free_port, serve_command

    executable = os.environ.get("SAMMED_SERVER", str(REPO / ".venv" / "bin" / "sammed-server"))
    if not Path(executable).is_file():
        pytest.skip(f"no worker program at {executable} (run `make venv` or set SAMMED_SERVER)")
    port = free_port()
    client = SAMMedClient(f"http://127.0.0.1:{port}", timeout=300)
    process = ServerProcess(
        serve_command(executable, port=port, device="cpu"), client.health,
        env={"SAMMED_CACHE_DIR": str(shared_cache_dir), "SAMMED_HOME": str(shared_cache_dir / "home")}, log_path=str(shared_cache_dir / "worker.log"),
    )
    process.start(timeout=300)
    yield client
    process.stop()
