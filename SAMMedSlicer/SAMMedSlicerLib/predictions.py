"""Predictions off the main thread: one background thread works through a queue of requests, and the main thread
collects the finished ones with :meth:`PredictionQueue.drain` (from a timer in Slicer).

Requests run in the order they were made, so results are applied in the order of the undo history. A request for
the same slice as the last one still waiting replaces it (the new one carries every prompt on that slice): clicks
made while the worker is busy are coalesced per slice, never lost.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional


@dataclass
class Request:
    """One prediction to make: ``run()`` is called on the background thread; ``owner`` is the undo step it belongs
    to; ``absorbed`` the owners (and ``replaced`` the tickets) of the waiting requests it replaced: their prompts
    are in it."""

    ticket: int
    key: Hashable
    run: Callable[[], Any]
    owner: Any
    absorbed: list[Any] = field(default_factory=list)
    replaced: list[int] = field(default_factory=list)


@dataclass
class Finished:
    """A request's outcome: what ``run()`` returned, or the exception it raised."""

    request: Request
    result: Any = None
    error: Optional[BaseException] = None


class PredictionQueue:
    """A FIFO of :class:`Request` served by one daemon thread; thread-safe, never blocks the caller."""

    def __init__(self, name: str = "sammed-predict") -> None:
        self._lock = threading.Condition()
        self._waiting: list[Request] = []
        self._running: Optional[Request] = None
        self._done: list[Finished] = []
        self._stale: set[int] = set()
        self._tickets = itertools.count(1)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, key: Hashable, run: Callable[[], Any], owner: Any) -> Request:
        """Queue ``run``; it replaces the last waiting request if that one has the same ``key``."""
        with self._lock:
            request = Request(next(self._tickets), key, run, owner)
            if self._waiting and self._waiting[-1].key == key:
                old = self._waiting.pop()
                request.absorbed = [*old.absorbed, old.owner]
                request.replaced = [*old.replaced, old.ticket]
            self._waiting.append(request)
            self._lock.notify()
            return request

    def cancel(self, owner: Any) -> list[Request]:
        """Drop the waiting requests of ``owner`` and discard the result of its running one; returns them."""
        with self._lock:
            dropped = [r for r in self._waiting if r.owner is owner]
            self._waiting = [r for r in self._waiting if r.owner is not owner]
            if self._running is not None and self._running.owner is owner:
                self._stale.add(self._running.ticket)
                dropped.append(self._running)
            dropped_tickets = {r.ticket for r in dropped}
            self._done = [f for f in self._done if f.request.ticket not in dropped_tickets]
            return dropped

    def cancel_all(self) -> None:
        with self._lock:
            self._waiting.clear()
            self._done.clear()
            if self._running is not None:
                self._stale.add(self._running.ticket)

    def drain(self) -> list[Finished]:
        """The requests finished since the last call, in order (call it on the main thread)."""
        with self._lock:
            done, self._done = self._done, []
            return done

    @property
    def busy(self) -> bool:
        """A request is running or waiting, or a result is waiting for :meth:`drain`."""
        with self._lock:
            return self._running is not None or bool(self._waiting) or bool(self._done)

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    @property
    def running(self) -> Optional[Request]:
        with self._lock:
            return self._running

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._waiting.clear()
            self._lock.notify()

    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                request = self._running = self._waiting.pop(0)
            finished = Finished(request)
            try:
                finished.result = request.run()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it
                finished.error = exc
            with self._lock:
                self._running = None
                if request.ticket in self._stale:
                    self._stale.discard(request.ticket)
                else:
                    self._done.append(finished)
