"""A workflow task whose status is fetched on a thread and advanced on the main thread; a failing result handler
ends it as failed, reported once (it does not stay "running" and throw on every timer tick)."""

from __future__ import annotations

from types import SimpleNamespace

from SAMMedSlicerLib.session_status import advance_task, fetch_session_status
from SAMMedSlicerLib.workflows import BackgroundTask


class FakeJobs:
    """FAKE worker: every job has already succeeded."""

    def __init__(self) -> None:
        self.started, self.fetched = [], 0

    def start(self, previous):
        self.started.append(previous)
        return f"job-{len(self.started)}"

    def job(self, job_id):
        self.fetched += 1
        return SimpleNamespace(id=job_id, state="succeeded", progress=1.0, message="", metrics={},
                               result={"from": job_id}, error=None)


def test_failing_result_handler_fails_the_task_once():
    jobs = FakeJobs()

    def broken_result(status):
        raise KeyError("masks")

    task = BackgroundTask(jobs, "auto-segment", [("training", jobs.start), ("segmenting", jobs.start)], broken_result)
    session = SimpleNamespace(progress=lambda: "progress", focus=lambda axis, index: None)
    first = fetch_session_status(session, (2, 40), task)
    assert advance_task(first)[0] == "running" and jobs.started == [None, {"from": "job-1"}]
    state, fraction, message = advance_task(fetch_session_status(session, None, task))
    assert state == "failed" and fraction == 1.0 and "could not be used: 'masks'" in message
    fetched = jobs.fetched
    for _ in range(3):  # later timer ticks: no request, no exception, same answer
        assert advance_task(fetch_session_status(session, None, task))[0] == "failed"
    assert jobs.fetched == fetched


def test_a_stale_status_is_ignored():
    jobs = FakeJobs()
    task = BackgroundTask(jobs, "t", [("a", jobs.start), ("b", jobs.start)], lambda status: "done")
    stale = jobs.job("job-1")
    assert task.advance(stale)[0] == "running" and task.job_id == "job-2"
    assert task.advance(stale)[:2] == ("running", 0.0)  # job-1's status again: nothing starts twice
    assert jobs.started == [None, {"from": "job-1"}]
    assert task.advance(jobs.job("job-2"))[0] == "succeeded" and task.outcome == "done"
