"""Which paths ``from-path`` may read: under a data root, a regular file or a folder of regular files, not too big.

Checked before the image reader sees the path: a FIFO or a device would block the reader forever (and with it
the reader's global lock), a huge file would be read into memory, and a path longer than the system allows
would fail inside the reader as an internal error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Sequence

from ..errors import InputError, VolumeReadError

MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255
MAX_FOLDER_FILES = 20000  # a DICOM series folder


def checked_path(raw: str, roots: Sequence[Path], max_bytes: int) -> Path:
    """The resolved path ``raw`` names, if it may be read; else one clear :class:`InputError`."""
    if "\x00" in raw or len(raw) > MAX_PATH_CHARS or any(len(part.encode()) > MAX_NAME_BYTES for part in Path(raw).parts):
        raise InputError("the path is longer than a file system allows (or holds a NUL byte)")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        raise InputError(f"give an absolute path, got {raw!r}")
    try:
        real = path.resolve()
        allowed = [root.resolve() for root in roots]
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise VolumeReadError(f"cannot resolve {raw} ({exc})") from None
    if not any(real == root or root in real.parents for root in allowed):  # checked first: no existence oracle
        raise InputError(
            f"{raw} is outside the folders this worker reads from",
            "move the data under one of them, or start the worker with --data-root FOLDER",
        )
    try:
        info = real.stat()
    except FileNotFoundError:
        raise VolumeReadError(f"no such file or folder: {raw}") from None
    except OSError as exc:
        raise VolumeReadError(f"cannot read {raw} ({exc.strerror})") from None
    if stat.S_ISREG(info.st_mode):
        size = info.st_size
    elif stat.S_ISDIR(info.st_mode):
        size = _folder_size(real, raw)
    else:
        raise InputError(f"{raw} is not a regular file or folder (a pipe, device or socket cannot be read as a volume)")
    if size > max_bytes:
        raise InputError(
            f"{raw} holds {size / 2**20:.0f} MiB, more than this worker reads ({max_bytes / 2**20:.0f} MiB)",
            "raise SAMMED_VOLUME_MEMORY_MB or crop the volume",
        )
    return real


def _folder_size(folder: Path, raw: str) -> int:
    """Bytes of the regular files directly in ``folder`` (what a DICOM series reader opens); others refused."""
    total = count = 0
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                mode = entry.stat().st_mode
                if stat.S_ISDIR(mode):
                    continue
                if not stat.S_ISREG(mode):
                    raise InputError(f"{raw} holds {entry.name!r}, which is not a regular file (a pipe, device or socket)")
                total += entry.stat().st_size
                count += 1
                if count > MAX_FOLDER_FILES:
                    raise InputError(f"{raw} holds more than {MAX_FOLDER_FILES} files; point at one series folder")
    except OSError as exc:
        raise VolumeReadError(f"cannot list {raw} ({exc.strerror})") from None
    return total
