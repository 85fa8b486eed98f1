"""Blocking calls off the main thread, their results back on it: the widget's timer calls :meth:`BackgroundCalls.poll`.

Qt-free on purpose (the Lib runs without Slicer in tests): a thread pool runs the call, ``poll()`` runs the
``on_result`` / ``on_error`` callbacks on the thread that polls (Slicer's main thread), so callbacks may touch the
MRML scene and the widgets. ``poll()`` itself never waits.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Optional

Callback = Callable[[Any], None]


@dataclass
class _Call:
    key: str
    future: Future
    on_result: Optional[Callback]
    on_error: Optional[Callback]


class BackgroundCalls:
    """Run functions on worker threads; hand their results to callbacks when :meth:`poll` is called.

    ``key`` names a kind of call (``"start"``, ``"status"``): :meth:`busy` tells whether one of that kind is still
    running or its result not yet delivered, so a timer never piles up a second status request behind a slow one.
    """

    def __init__(self, max_workers: int = 4, on_failure: Optional[Callable[[str], None]] = None) -> None:
        """``on_failure`` hears of a callback that raised (default: the log); the other callbacks still run."""
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sammed-call")
        self._calls: list[_Call] = []
        self._on_failure = on_failure

    def submit(self, key: str, function: Callable[[], Any], on_result: Optional[Callback] = None,
               on_error: Optional[Callback] = None) -> Future:
        future = self._executor.submit(function)
        self._calls.append(_Call(key, future, on_result, on_error))
        return future

    def busy(self, key: str) -> bool:
        return any(call.key == key for call in self._calls)

    def forget(self, key: str) -> None:
        """Drop the callbacks of calls of this kind (their results are no longer wanted)."""
        self._calls = [call for call in self._calls if call.key != key]

    def poll(self) -> int:
        """Run the callbacks of every finished call (on this thread); returns how many ran. Never waits."""
        done = [call for call in self._calls if call.future.done()]
        self._calls = [call for call in self._calls if not call.future.done()]
        for call in done:
            error = call.future.exception()
            callback, value = (call.on_error, error) if error is not None else (call.on_result, call.future.result())
            if callback is None:
                if error is not None:
                    logging.warning("SAMMed background call %s failed: %s", call.key, error)
                continue
            try:
                callback(value)
            except Exception as exc:  # noqa: BLE001 - a failing callback must not stop the others (nor the timer)
                logging.exception("SAMMed: the %s callback failed", call.key)
                if self._on_failure is not None:
                    self._on_failure(f"{call.key}: {type(exc).__name__}: {exc}")
        return len(done)

    def shutdown(self) -> None:
        """Stop accepting calls; running ones finish on their own (nothing waits for them)."""
        self._calls.clear()
        self._executor.shutdown(wait=False)
