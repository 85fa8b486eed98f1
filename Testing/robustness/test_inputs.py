"""Hostile inputs (issue rows 4, 6, 8–11): memory bombs under a memory limit, paths that would block or blow up the
reader, out-of-range shapes and windows, artefact ids that are paths, delete + re-upload races. Every test ends
with the reference mask."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from harness import LIVER_BOX, LIVER_SLICE, proc_status

CGROUP = Path("/sys/fs/cgroup/memory")
BUDGET_MIB = 256  # SAMMED_VOLUME_MEMORY_MB of the worker fixture


def zeros_zlib(nbytes: int) -> bytes:
    packer = zlib.compressobj(9)
    chunk = bytes(2**24)
    parts = [packer.compress(chunk[: min(len(chunk), nbytes - done)]) for done in range(0, nbytes, len(chunk))]
    return b"".join(parts) + packer.flush()


def upload(worker, shape, body: bytes, compression="zlib", dtype="uint8"):
    meta = {"shape": list(shape), "dtype": dtype, "spacing": [1, 1, 1], "compression": compression}
    return worker.request("POST", "/v1/volumes", body,
                          {"Content-Type": "application/octet-stream", "X-SAMMed-Volume": json.dumps(meta)})


class MemoryCgroup:
    """The worker in a cgroup-v1 memory cgroup limited to ``limit`` bytes (the kernel kills it beyond that)."""

    def __init__(self, pid: int, limit: int) -> None:
        self.pid = pid
        self.folder = CGROUP / f"sammed-robustness-{os.getpid()}"
        self.folder.mkdir()
        (self.folder / "memory.limit_in_bytes").write_text(str(limit))
        (self.folder / "cgroup.procs").write_text(str(pid))

    def close(self) -> None:
        try:
            (CGROUP / "cgroup.procs").write_text(str(self.pid))
        except OSError:
            pass  # the process is gone
        self.folder.rmdir()


def test_memory_bombs_are_refused_before_inflating(worker, reference_mask):
    """Uploads and encoded arrays that inflate to GiBs: 413/400 before a large allocation; the worker runs in a
    memory cgroup of its current RSS + budget + 192 MiB, and its peak RSS stays within the budget."""
    if not (CGROUP / "cgroup.procs").exists() or not os.access(CGROUP, os.W_OK):
        pytest.skip(f"no writable cgroup-v1 memory controller at {CGROUP}: cannot enforce a memory limit here")
    pid = worker.pid()
    rss = proc_status(pid, "VmRSS") * 1024
    group = MemoryCgroup(pid, rss + (BUDGET_MIB + 192) * 2**20)
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak-RSS mark (VmHWM)
        small_bomb, big_bomb = zeros_zlib(2**30), zeros_zlib(400 * 2**20)  # ~1 MB and ~400 KB
        status, body = upload(worker, (1024, 1024, 1024), small_bomb)  # declares 1 GiB
        assert status == 413 and body["error"]["code"] == "payload_too_large", body
        status, body = upload(worker, (2048, 1024, 1024), os.urandom(2**21), compression="none")  # 2 MB, declares 2 GiB
        assert status == 413, body
        with ThreadPoolExecutor(3) as pool:  # three at once, each declaring 100 MiB and inflating to 400 MiB
            answers = list(pool.map(lambda _: upload(worker, (100, 1024, 1024), big_bomb), range(3)))
        assert all(status in (400, 413) for status, _ in answers), answers
        assert any("more than" in body["error"]["message"] for _, body in answers), answers
        worker.register_ct()  # the budget may have dropped the CT to make room for the uploads
        mask_bomb = {"shape": [16384, 16384], "dtype": "float32", "data": base64.b64encode(small_bomb).decode()}
        status, body = worker.request("POST", f"/v1/volumes/{worker.ct_id}/predict",
                                      {"index": LIVER_SLICE, "box": LIVER_BOX, "mask_input": mask_bomb})
        assert status == 400 and "too large" in body["error"]["message"], body
        annotations = {"axis": 2, "indices": [LIVER_SLICE],
                       "masks": {"shape": [1, 16384, 16384 * 8], "dtype": "bool", "data": mask_bomb["data"]}}
        status, body = worker.request("POST", f"/v1/volumes/{worker.ct_id}/train", {"kind": "sapnet", "annotations": annotations})
        assert status == 400 and "must have shape" in body["error"]["message"], body
        peak = proc_status(pid, "VmHWM") * 1024
        assert worker.alive()
        assert peak - rss < (BUDGET_MIB + 64) * 2**20, f"peak RSS {peak / 2**20:.0f} MiB, start {rss / 2**20:.0f} MiB"
        np.testing.assert_array_equal(worker.liver_mask(), reference_mask)
    finally:
        group.close()


def test_paths_that_would_block_or_blow_up_the_reader(worker, data_root, reference_mask):
    fifo = data_root / "fifo.nii.gz"
    os.mkfifo(fifo)
    device = data_root / "zero.nii"
    os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
    folder = data_root / "dicom-with-fifo"
    folder.mkdir()
    os.mkfifo(folder / "IM0001")
    sparse = data_root / "huge.nii"
    with open(sparse, "wb") as handle:
        handle.truncate(2**30)  # 1 GiB, no blocks: over the 256 MiB ceiling
    cases = {
        str(fifo): "not a regular file", str(device): "not a regular file", str(folder): "not a regular file",
        str(sparse): "more than this worker reads", "/dev/zero": "outside the folders", "/etc/passwd": "outside the folders",
        "/" + "a" * 5000: "longer than a file system allows", str(data_root / ("b" * 300)): "longer than",
        "relative/path.nii": "absolute path", str(data_root / "missing.nii"): "no such file",
        str(data_root) + "/.." * len(data_root.parts) + "/etc/passwd": "outside the folders",
    }
    health_ok = []
    stop = threading.Event()

    def poll_health() -> None:
        while not stop.is_set():
            started = time.monotonic()
            health_ok.append(worker.request("GET", "/v1/health", timeout=5)[0] == 200 and time.monotonic() - started < 1)
            time.sleep(0.05)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with ThreadPoolExecutor(8) as pool:  # each many times at once (40 FIFOs wedged the old worker)
            paths = [path for path in cases for _ in range(4)]
            timed = list(pool.map(lambda p: (p, time.monotonic(), worker.request("POST", "/v1/volumes/from-path", {"path": p}), time.monotonic()), paths))
    finally:
        stop.set()
        poller.join()
    for path, started, (status, body), finished in timed:
        assert status in (400, 422), (path, body)
        assert status == 422 or cases[path] in body["error"]["message"], (path, body)
        assert finished - started < 1.0, (path, finished - started)
    assert health_ok and all(health_ok)
    np.testing.assert_array_equal(worker.liver_mask(), reference_mask)


def test_shapes_windows_and_artefact_ids_are_checked(worker, reference_mask):
    status, body = upload(worker, (65536, 2, 2), zlib.compress(bytes(2**18)))  # one 64k-slice axis: a 128 GiB store
    assert status == 422 and "shape" in body["error"]["field"], body
    for window in ("nan,1", "inf,1", "40,0", "40,-5", "1e400,10", "a,b"):
        status, body = worker.request("POST", f"/v1/volumes/{worker.ct_id}/predict",
                                      {"index": LIVER_SLICE, "box": LIVER_BOX, "window": window})
        assert status == 422 and body["error"]["field"] == "window", (window, body)
    for artefact in ("/etc/passwd", "../../weights", "x/y"):
        status, body = worker.request("POST", f"/v1/volumes/{worker.ct_id}/auto-segment", {"artefact": artefact})
        assert status == 422 and body["error"]["field"] == "artefact", (artefact, body)
        status, body = worker.request("POST", f"/v1/volumes/{worker.ct_id}/predict",
                                      {"index": LIVER_SLICE, "box": LIVER_BOX, "prompt_encoder": artefact})
        assert status == 422, body
    status, body = worker.request("POST", f"/v1/volumes/{worker.ct_id}/predict",
                                  {"index": LIVER_SLICE, "box": [float("nan"), 0, 10, 10]})
    assert status in (400, 422), body
    np.testing.assert_array_equal(worker.liver_mask(), reference_mask)


def test_predict_after_delete_and_register_again_always_finds_the_volume(worker, reference_mask):
    for _ in range(5):
        assert worker.request("DELETE", f"/v1/volumes/{worker.register_ct()}")[0] == 204
        assert worker.request("GET", f"/v1/volumes/{worker.ct_id}")[0] == 404
        worker.register_ct()
        np.testing.assert_array_equal(worker.liver_mask(), reference_mask)
