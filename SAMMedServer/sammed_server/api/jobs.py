"""Background jobs: id, state, progress, log tail, cancel, result; run on a small thread pool.

A job function receives a :class:`JobContext` and returns a JSON-able dict (its result). It reports
with ``ctx.progress(done, total)`` and ``ctx.log(line)``, and should check ``ctx.cancelled`` (or let
an engine call raise :class:`~sammed_server.errors.CancelledError` on ``ctx.cancel_event``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional

from ..errors import CancelledError, SAMMedError
from .schemas import ErrorBody, JobStatus

log = logging.getLogger(__name__)
LOG_TAIL = 50
KEEP_FINISHED = 200


class UnknownJobError(SAMMedError):
    code = "unknown_job"


class JobContext:
    """What a running job sees: its cancel flag, progress and log, and a focus hint from the user."""

    def __init__(self, job: "Job") -> None:
        self._job = job
        self.cancel_event = job.cancel_event

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def progress(self, done: int, total: int, message: str = "") -> None:
        with self._job.lock:
            self._job.progress = min(1.0, done / total) if total else 1.0
            if message:
                self._job.message = message

    def metric(self, name: str, value: float) -> None:
        """Append a point to the curve ``name`` (e.g. the training loss), visible while the job runs."""
        with self._job.lock:
            self._job.metrics.setdefault(name, []).append(float(value))

    def log(self, line: str) -> None:
        with self._job.lock:
            self._job.log.append(f"{time.strftime('%H:%M:%S')} {line}")

    def take_focus(self) -> Optional[int]:
        """The slice index the user asked to see first (once), or None."""
        with self._job.lock:
            focus, self._job.focus = self._job.focus, None
            return focus


JobFn = Callable[[JobContext], dict[str, Any]]


class Job:
    def __init__(self, kind: str, key: Optional[str]) -> None:
        self.id = uuid.uuid4().hex[:16]
        self.kind = kind
        self.key = key
        self.state = "queued"
        self.progress = 0.0
        self.message = ""
        self.log: deque[str] = deque(maxlen=LOG_TAIL)
        self.result: Optional[dict[str, Any]] = None
        self.error: Optional[ErrorBody] = None
        self.metrics: dict[str, list[float]] = {}
        self.focus: Optional[int] = None
        self.created = time.time()
        self.started: Optional[float] = None
        self.finished: Optional[float] = None
        self.cancel_event = threading.Event()
        self.lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def status(self) -> JobStatus:
        with self.lock:
            return JobStatus(
                id=self.id, kind=self.kind, state=self.state, progress=self.progress, message=self.message,
                log=list(self.log), result=self.result, error=self.error,
                metrics={name: list(values) for name, values in self.metrics.items()},
                created=self.created, started=self.started, finished=self.finished,
            )


class JobManager:
    """Runs jobs on ``workers`` threads; an active job with the same ``key`` is reused, not duplicated."""

    def __init__(self, workers: int = 1) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sammed-job")
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def submit(self, kind: str, fn: JobFn, key: Optional[str] = None, focus: Optional[int] = None) -> Job:
        with self._lock:
            job = next((j for j in self._jobs.values() if key and j.key == key and j.active), None)
            created = job is None
            if created:
                job = Job(kind, key)
                self._jobs[job.id] = job
                self._forget_old()
        if focus is not None:
            with job.lock:
                job.focus = focus
        if created:
            self._pool.submit(self._run, job, fn)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJobError(f"no job {job_id!r}", "list the jobs with GET /v1/jobs")
        return job

    def list(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job:
        """Ask a job to stop; a queued job is cancelled at once, a finished one is left as it is."""
        job = self.get(job_id)
        job.cancel_event.set()
        with job.lock:
            if job.state == "queued":
                self._finish(job, "cancelled", error=ErrorBody(code=CancelledError.code, message="cancelled before it started"))
        return job

    def focus(self, job_id: str, index: int) -> Job:
        job = self.get(job_id)
        with job.lock:
            job.focus = index
        return job

    def shutdown(self) -> None:
        for job in self.list():
            job.cancel_event.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, job: Job, fn: JobFn) -> None:
        with job.lock:
            if job.state != "queued":
                return
            job.state, job.started = "running", time.time()
        try:
            if job.cancel_event.is_set():
                raise CancelledError("cancelled before it started")
            result = fn(JobContext(job))
        except CancelledError as exc:
            with job.lock:
                self._finish(job, "cancelled", error=ErrorBody(code=exc.code, message=exc.message, hint=exc.hint))
        except SAMMedError as exc:
            with job.lock:
                self._finish(job, "failed", error=ErrorBody(code=exc.code, message=exc.message, hint=exc.hint))
        except Exception as exc:  # a bug must fail the job, not kill the worker thread silently
            log.exception("job %s (%s) crashed", job.id, job.kind)
            with job.lock:
                self._finish(job, "failed", error=ErrorBody(code="internal_error", message=f"{type(exc).__name__}: {exc}"))
        else:
            with job.lock:
                job.result = result
                job.progress = 1.0
                self._finish(job, "succeeded")

    @staticmethod
    def _finish(job: Job, state: str, error: Optional[ErrorBody] = None) -> None:
        """Set the final state; the caller holds ``job.lock``."""
        job.state, job.error, job.finished = state, error, time.time()
        job.log.append(f"{time.strftime('%H:%M:%S')} {state}" + (f": {error.message}" if error else ""))

    def _forget_old(self) -> None:
        finished = [j.id for j in self._jobs.values() if not j.active]
        for job_id in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self._jobs[job_id]
