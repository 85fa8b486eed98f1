"""Checkpoint files: checksum verification and resumable downloads with progress."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from ..errors import CheckpointError, DownloadError

ProgressFn = Callable[[int, Optional[int]], None]  # (bytes so far, total bytes or None)


def sha256_file(path: Path) -> str:
    return _sha256_cached(str(Path(path).resolve()), Path(path).stat().st_size, Path(path).stat().st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path: Path, expected_sha256: Optional[str], model_id: str) -> str:
    """Return the file's sha256; raise a :class:`CheckpointError` naming file and checksum if it is wrong."""
    if not path.is_file():
        raise CheckpointError(
            f"model {model_id} needs its checkpoint {path.name}, which is not at {path}"
            + (f" (expected sha256 {expected_sha256})" if expected_sha256 else ""),
            f"run `sammed-server weights download {model_id}` or pass --checkpoint PATH",
        )
    actual = sha256_file(path)
    if expected_sha256 and actual != expected_sha256:
        raise CheckpointError(
            f"{path} is not the {model_id} checkpoint: sha256 {actual[:16]}…, expected {expected_sha256}",
            "the file is corrupt, truncated or a different model; download it again",
        )
    return actual


def download(url: str, destination: Path, expected_sha256: Optional[str], progress: Optional[ProgressFn] = None) -> Path:
    """Fetch ``url`` to ``destination`` through ``destination.part``, resuming a partial file.

    The finished file is checked against ``expected_sha256`` before it replaces ``destination``.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    offset = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            resumed = offset > 0 and response.status == 206
            if not resumed:
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with open(partial, "ab" if resumed else "wb") as handle:
                done = offset
                for block in iter(lambda: response.read(2**20), b""):
                    handle.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the partial file is already complete
            pass
        else:
            raise DownloadError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"cannot download {url}: {reason}",
            f"check the internet connection, or copy the file to {destination} by hand; a partial download resumes",
        ) from None
    actual = sha256_file(partial)
    if expected_sha256 and actual != expected_sha256:
        partial.unlink()
        raise DownloadError(f"the download of {url} has sha256 {actual}, expected {expected_sha256}; it was deleted")
    partial.replace(destination)
    return destination
