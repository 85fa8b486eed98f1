"""Helpers of the robustness suite: a real ``sammed-server serve`` process with a small HTTP client that controls
every header, the reference slice and box, and reading process figures from ``/proc``."""

from __future__ import annotations

import http.client
import json
import shutil
import urllib.parse
from pathlib import Path
from typing import Any, Optional

import numpy as np
from sammed_server.api.launch import ServerProcess

LIVER_SLICE, LIVER_BOX = 24, [44.0, 27.0, 104.0, 81.0]  # largest liver slice of example_ct_sm (axis K)
JSON = {"Content-Type": "application/json"}


class Worker:
    """A running worker and a small HTTP client for it (raw ``http.client``: the test controls every header)."""

    def __init__(self, process: ServerProcess, ct_path: Path) -> None:
        self.process = process
        self.ct_path = ct_path
        parts = urllib.parse.urlsplit(process.url)
        self.host, self.port = parts.hostname, parts.port
        self.ct_id = ""

    def request(self, method: str, path: str, body: Any = None, headers: Optional[dict] = None,
                timeout: float = 120) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        default = JSON if method == "POST" else {}
        connection.request(method, path, body=data, headers={**default, **(headers or {})})
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        try:
            return response.status, json.loads(raw or b"null")
        except ValueError:
            return response.status, raw

    def register_ct(self) -> str:
        status, body = self.request("POST", "/v1/volumes/from-path", {"path": str(self.ct_path)})
        assert status == 200, body
        self.ct_id = body["id"]
        return self.ct_id

    def liver_mask(self, **extra: Any) -> np.ndarray:
        """The predicted mask of the reference slice and box (registering the CT again if it was dropped)."""
        status, body = self.request("POST", f"/v1/volumes/{self.ct_id or self.register_ct()}/predict",
                                    {"index": LIVER_SLICE, "box": LIVER_BOX, **extra})
        if status == 404:
            self.register_ct()
            status, body = self.request("POST", f"/v1/volumes/{self.ct_id}/predict", {"index": LIVER_SLICE, "box": LIVER_BOX})
        assert status == 200, body
        return decode_mask(body["masks"])

    def alive(self) -> bool:
        return self.process.process is not None and self.process.process.poll() is None

    def output(self) -> str:
        return "\n".join(self.process.output)

    def pid(self) -> int:
        assert self.process.process is not None
        return self.process.process.pid


def decode_mask(encoded: dict) -> np.ndarray:
    import base64
    import zlib

    bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(encoded["data"])), np.uint8))
    return bits[: int(np.prod(encoded["shape"]))].astype(bool).reshape(encoded["shape"])


def proc_status(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure (VmRSS, VmHWM in KiB; Threads)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def start_worker(ct_path: Path, cache_dir: Path, args: tuple = (), env: Optional[dict] = None) -> tuple[ServerProcess, Worker]:
    roots = {"SAMMED_DATA_ROOTS": str(ct_path.parent)}
    process = ServerProcess(list(args), env={"SAMMED_CACHE_DIR": str(cache_dir), **roots, **(env or {})})
    process.start()
    return process, Worker(process, ct_path)


def copy_liver_slice_stores(shared_cache_dir: Path, ct_id: str, target_root: Path) -> list[Path]:
    """Private copies of the CT's K stores (one per window used so far) holding only the liver slice (2 MiB each;
    sparse before it), from the shared cache where it is encoded already: a test may damage them."""
    sources = [p for p in shared_cache_dir.glob(f"litemedsam-{'?' * 12}/{ct_id}-K-*") if (p / "meta.json").exists()]
    copies = []
    for source in sources:
        shape = json.loads((source / "meta.json").read_text())["shape"]
        size = int(np.prod(shape[1:])) * 2
        chunks = {}
        for name, offset, length in (("embeddings.f16", LIVER_SLICE * size, size), ("checksums.u64", LIVER_SLICE * 8, 8)):
            with open(source / name, "rb") as src:
                src.seek(offset)
                chunks[name] = (offset, src.read(length))
        if any(len(chunk) != length for (_, chunk), length in zip(chunks.values(), (size, 8))):
            continue  # this window's store lacks the liver slice
        target = target_root / source.parent.name / source.name
        target.mkdir(parents=True)
        shutil.copy(source / "meta.json", target / "meta.json")
        for name, (offset, chunk) in chunks.items():
            with open(target / name, "wb") as dst:
                dst.seek(offset)
                dst.write(chunk)
        copies.append(target)
    assert copies, f"the liver slice of {ct_id} is not in the shared cache {shared_cache_dir}"
    return copies
