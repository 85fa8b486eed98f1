"""Fixtures of the robustness suite: the main worker (sample CT registered), the reference mask that a healthy
worker gives for one liver slice (every test asks for it again after its fault), a data folder and a tmpfs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness import start_worker


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data folder of this test run (FIFOs, devices, test volumes go here)."""
    return tmp_path_factory.mktemp("robustness-data")


@pytest.fixture(scope="session")
def worker(ct_path, shared_cache_dir, data_root):
    """The main worker: the shared embedding cache, a 256 MiB volume budget, short read timeouts."""
    process, worker = start_worker(
        ct_path, shared_cache_dir,
        ("--data-root", str(data_root), "--allow-host", "sammed.test", "--header-timeout", "1", "--body-timeout", "2",
         "--max-connections-per-client", "32"),
        env={"SAMMED_VOLUME_MEMORY_MB": "256"},
    )
    try:
        worker.register_ct()
        yield worker
    finally:
        process.stop()


@pytest.fixture(scope="session")
def reference_mask(worker) -> np.ndarray:
    """What a healthy worker answers for the liver slice (its embedding comes from the shared cache)."""
    mask = worker.liver_mask()
    assert mask.shape == (1, 101, 122) and 500 < mask.sum() < 5000
    return mask


@pytest.fixture
def tmpfs(tmp_path):
    """A 6 MB tmpfs (root only); the test is skipped with the reason where mounting is not allowed."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}): disk-full tests need one")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
