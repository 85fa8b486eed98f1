"""The selected volume on the worker (Qt-free): sent once and its slices precomputed, all off the main thread.

:class:`VolumeUpload` sends the voxels on a background thread and starts the worker's embedding job; ``progress()``,
``focus()`` and ``cancel()`` never wait for the worker either: they ask it on a second background thread and
return the last answer.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

from .volume import ijk_to_ras, lps_geometry, voxel_array

STATUS_REFRESH_S = 0.3  # progress() asks the worker at most this often


@dataclass(frozen=True)
class Progress:
    """Background work for the panel: ``state`` is idle, uploading, queued, running, succeeded, failed or cancelled."""

    state: str
    fraction: float = 0.0
    message: str = ""


class VolumeUpload:
    """One volume sent to ``client`` and (``precompute``) embedded along ``axis``, slice ``focus`` first.

    ``options`` go to the embedding job (e.g. the model); ``on_error`` hears of a cancel that failed.
    """

    def __init__(self, client: Any, volume_node: Any, axis: int, focus: Optional[int], precompute: bool,
                 options: dict[str, Any], on_error: Callable[[str], None]) -> None:
        self.client = client
        self.axis = axis
        self._on_error = on_error
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sammed-upload")
        self._status = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sammed-status")
        self._progress = Progress("idle")
        self._refresh: Optional[Future] = None
        self._asked = 0.0
        array = voxel_array(volume_node)  # read VTK data here, on the caller's (main) thread
        geometry = lps_geometry(ijk_to_ras(volume_node))
        self._sent: Future = self._sender.submit(self._send, array, geometry, focus, precompute, options)

    @property
    def done(self) -> bool:
        return self._sent.done()

    def volume_id(self, timeout: Optional[float] = None) -> str:
        """The worker's id of the volume (waits for the upload: not for the main thread)."""
        return self._sent.result(timeout)[0]

    def volume_id_now(self) -> str:
        """The worker's id without waiting (a clear error while the volume is still being sent)."""
        if not self._sent.done():
            raise RuntimeError("the volume is still being sent to the worker: try again in a moment")
        return self._sent.result()[0]

    def progress(self) -> Progress:
        """Where the upload / precompute stands: the last answer of the worker (asked in the background)."""
        if not self._sent.done():
            return Progress("uploading", 0.0, "sending the volume to the worker")
        if self._sent.exception() is not None:
            return Progress("failed", 0.0, str(self._sent.exception()))
        if not self.job_id:
            return Progress("idle", 0.0, "volume on the worker")
        refreshing = self._refresh is not None and not self._refresh.done()
        if not refreshing and time.monotonic() - self._asked > STATUS_REFRESH_S:
            self._asked = time.monotonic()
            self._refresh = self._status.submit(self._ask_progress, self.job_id)
        return self._progress

    def focus(self, axis: int, index: int) -> None:
        """Tell the running precompute which slice is on screen (it is computed next); sent in the background."""
        if self.job_id and axis == self.axis and self._progress.state in ("idle", "queued", "running"):
            self._status.submit(self._send_focus, self.job_id, index)

    def cancel(self) -> None:
        """Cancel the precompute (in the background)."""
        if self.job_id:
            self._status.submit(self._send_cancel, self.job_id)

    def close(self) -> None:
        self.cancel()
        self._sender.shutdown(wait=False)
        self._status.shutdown(wait=False)

    @property
    def job_id(self) -> str:
        """The precompute job's id ("" while uploading, after a failed upload, or without precompute)."""
        if not self._sent.done() or self._sent.exception() is not None:
            return ""
        return self._sent.result()[1]

    def _send(self, array: Any, geometry: Any, focus: Optional[int], precompute: bool,
              options: dict[str, Any]) -> tuple[str, str]:
        info = self.client.upload_volume(array, geometry.spacing, geometry.origin, geometry.direction)
        if not precompute:
            return info.id, ""
        return info.id, self.client.start_embedding(info.id, axis=self.axis, focus=focus, **options)

    def _ask_progress(self, job_id: str) -> None:
        try:
            job = self.client.job(job_id)
        except Exception as exc:  # noqa: BLE001 - shown as the progress state; the worker may be gone
            self._progress = Progress("failed", 0.0, str(exc))
            return
        self._progress = Progress(job.state, float(job.progress), job.message)

    def _send_focus(self, job_id: str, index: int) -> None:
        try:
            if not self.client.job(job_id).done:
                self.client.focus_job(job_id, index)
        except Exception:  # noqa: BLE001 - a hint only; progress() shows a worker that is gone
            pass

    def _send_cancel(self, job_id: str) -> None:
        try:
            self.client.cancel_job(job_id)
        except Exception as exc:  # noqa: BLE001 - the worker may be gone; nothing to cancel then
            self._on_error(f"could not cancel the precompute: {exc}")
