"""Cache-disk faults (issue rows 1–3): full disk, a cache file truncated under a running worker, a read-only cache
folder. The worker stays up, predicts keep working from memory, one warning; the mask is the reference mask."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import numpy as np

from harness import LIVER_SLICE, copy_liver_slice_stores, start_worker

MEMORY_ONLY = "keeping embeddings in memory only"


def test_full_disk_keeps_serving_from_memory(ct_path, tmpfs, reference_mask):
    """6 MB cache disk: the third 2 MiB embedding does not fit (was: SIGBUS, exit 135)."""
    process, worker = start_worker(ct_path, tmpfs, env={"SAMMED_CACHE_MIN_FREE_MB": "0"})  # really run into ENOSPC
    try:
        ct_id = worker.register_ct()
        status, job = worker.request("POST", f"/v1/volumes/{ct_id}/embed",
                                     {"slices": [LIVER_SLICE - 1, LIVER_SLICE, LIVER_SLICE + 1], "focus": LIVER_SLICE})
        assert status == 202, job
        deadline = time.monotonic() + 300
        while job["state"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
            time.sleep(0.5)
            job = worker.request("GET", f"/v1/jobs/{job['id']}")[1]
        assert job["state"] == "succeeded", job
        assert worker.alive()
        np.testing.assert_array_equal(worker.liver_mask(), reference_mask)
        assert worker.output().count(MEMORY_ONLY) == 1, worker.output()
    finally:
        process.stop()
    assert process.process.returncode in (0, -15), f"exit code {process.process.returncode}"


def test_cache_file_truncated_under_a_running_worker(ct_path, shared_cache_dir, worker, tmp_path, reference_mask):
    """Every predict reads the disk (no memory cache) while another process truncates the file (was: SIGBUS)."""
    stores = copy_liver_slice_stores(shared_cache_dir, worker.ct_id, tmp_path / "cache")
    process, private = start_worker(ct_path, tmp_path / "cache", env={"SAMMED_MEMORY_CACHE_MB": "0"})
    stop = threading.Event()

    def truncate_repeatedly() -> None:
        while not stop.is_set():
            for store in stores:
                try:
                    os.truncate(store / "embeddings.f16", 0)
                except OSError:
                    pass
            time.sleep(0.05)

    try:
        private.register_ct()
        np.testing.assert_array_equal(private.liver_mask(), reference_mask)  # read from the private store
        vandal = threading.Thread(target=truncate_repeatedly)
        vandal.start()
        try:
            masks = [private.liver_mask() for _ in range(2)]  # each: a miss, re-encode, rewrite, truncated again
        finally:
            stop.set()
            vandal.join()
        assert private.alive()
        for mask in masks:
            np.testing.assert_array_equal(mask, reference_mask)
        np.testing.assert_array_equal(private.liver_mask(), reference_mask)
    finally:
        stop.set()
        process.stop()


def test_read_only_cache_folder(ct_path, shared_cache_dir, worker, tmpfs, reference_mask):
    """A cache on a read-only mount: cached slices are read, new ones computed and kept in memory (was: 500)."""
    subprocess.run(["mount", "-o", "remount,size=64m", str(tmpfs)], check=True)  # room for a store per window
    copy_liver_slice_stores(shared_cache_dir, worker.ct_id, tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    process, private = start_worker(ct_path, tmpfs)
    try:
        ct_id = private.register_ct()
        np.testing.assert_array_equal(private.liver_mask(), reference_mask)  # from the read-only store
        status, body = private.request("POST", f"/v1/volumes/{ct_id}/predict", {"index": LIVER_SLICE + 1, "box": [40, 30, 100, 80]})
        assert status == 200, body  # an uncached slice: encoded, the write fails, kept in memory
        again = private.request("POST", f"/v1/volumes/{ct_id}/predict", {"index": LIVER_SLICE + 1, "box": [40, 30, 100, 80]})[1]
        assert again["cached"] is True
        np.testing.assert_array_equal(private.liver_mask(), reference_mask)
        assert private.alive() and private.output().count(MEMORY_ONLY) == 1, private.output()
    finally:
        process.stop()
