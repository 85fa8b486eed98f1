"""What the panel's timer shows about a session, fetched off the main thread and applied on it.

:func:`fetch_session_status` makes the blocking requests (precompute progress, the slice on screen, the running
task's job) and runs on a thread (:meth:`~SAMMedSlicerLib.worker.Worker.monitor`); :func:`advance_task` then moves
the task on, on the main thread, where its result may touch the scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(frozen=True)
class SessionStatus:
    session: Any
    progress: Any  # session.Progress
    task: Any = None  # the BackgroundTask whose job was fetched
    job: Any = None  # its JobStatus
    focus: Optional[tuple[int, int]] = None  # the slice the precompute was told about


def fetch_session_status(session: Any, focus: Optional[tuple[int, int]] = None, task: Any = None) -> SessionStatus:
    """Blocking (HTTP): precompute progress, tell it the slice on screen (``focus``), fetch ``task``'s job."""
    progress = session.progress()
    if focus is not None:
        session.focus(*focus)
    job = task.fetch() if task is not None and task.state == "running" else None
    return SessionStatus(session, progress, task, job, focus)


def advance_task(status: SessionStatus) -> Optional[tuple[str, float, str]]:
    """Main thread: move the fetched task on (start its next step, or build its result); None without a task."""
    if status.task is None:
        return None
    return status.task.advance(status.job)
