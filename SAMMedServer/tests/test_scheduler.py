"""The device queue: a waiting interactive request goes before waiting batch work."""

from __future__ import annotations

import threading
import time

from sammed_server.engine.scheduler import DeviceQueue


def test_interactive_overtakes_waiting_batch_work():
    queue, order = DeviceQueue(), []
    holding = threading.Event()

    def batch_holder() -> None:
        with queue.batch():
            holding.set()
            time.sleep(0.3)
            order.append("batch-1")

    def batch_waiter() -> None:
        with queue.batch():
            order.append("batch-2")

    def interactive() -> None:
        with queue.interactive():
            order.append("interactive")

    first = threading.Thread(target=batch_holder)
    first.start()
    holding.wait()
    waiters = [threading.Thread(target=batch_waiter)]
    waiters[0].start()
    time.sleep(0.05)  # the batch waiter queues first ...
    waiters.append(threading.Thread(target=interactive))
    waiters[1].start()  # ... but the click is served before it
    for thread in [first, *waiters]:
        thread.join(5)
    assert order == ["batch-1", "interactive", "batch-2"]
