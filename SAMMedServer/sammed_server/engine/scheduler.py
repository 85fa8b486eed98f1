"""One device queue where interactive work goes before batch work."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator


class DeviceQueue:
    """A lock for the accelerator with two priorities.

    ``interactive()`` (a user's click) is granted as soon as the device is free; ``batch()``
    (background precompute, training) waits while any interactive request is waiting, so a click
    never waits for more than the batch step already running.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._busy = False
        self._interactive_waiting = 0

    @contextlib.contextmanager
    def interactive(self) -> Iterator[None]:
        with self._condition:
            self._interactive_waiting += 1
            try:
                self._condition.wait_for(lambda: not self._busy)
            finally:
                self._interactive_waiting -= 1
            self._busy = True
        try:
            yield
        finally:
            self._release()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._busy and self._interactive_waiting == 0)
            self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        with self._condition:
            self._busy = False
            self._condition.notify_all()
