"""The main thread never waits for the worker: a scripted session against a worker made slow on purpose, then dead.

Every call the panel makes on Slicer's main thread (selecting the volume, markups events from placing boxes and
points, undo, the timer's ``drain()`` and ``progress()``) is timed; the longest must stay under 100 ms while every
request to the worker takes seconds: the first click lands on a slice nobody has embedded yet (a volume with new
voxels), clicks come while the volume is still uploading, and finally the worker goes away. The dead worker is
reported once, not once per click or per timer tick.

:class:`SlowWorkerProxy` is a test-only fake: a loopback HTTP proxy in front of the real worker that holds every
request for ``DELAY_S`` before forwarding it (stopping it is the worker dying, as the client sees it: connection
refused).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import numpy as np
import vtk
from vtkmodules.util import numpy_support

from SAMMedSlicerLib.client import SAMMedClient
from SAMMedSlicerLib.session import Session, create_prompt_nodes
from SAMMedSlicerLib.volume import ijk_to_ras

DELAY_S = 1.5
STALL_LIMIT_S = 0.1
TIMER_S = 0.05  # the panel's drain timer


class SlowWorkerProxy:
    """Test-only fake: forwards HTTP requests on 127.0.0.1 to ``upstream`` after ``delay`` seconds each."""

    def __init__(self, upstream: str, delay: float) -> None:
        host, port = upstream.split("//", 1)[1].split(":")
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                proxy.connections.add(self.connection)

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(proxy.delay)
                connection = http.client.HTTPConnection(host, int(port), timeout=600)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
                connection.close()

            def _answer(self) -> None:
                try:
                    self._forward()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the proxy was stopped mid-request: the client sees a dead worker, as intended

            do_GET = do_POST = do_PUT = do_DELETE = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.delay = delay
        self.connections: set[Any] = set()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The worker is gone: the port refuses connections from now on."""
        self.server.shutdown()
        self.server.server_close()
        for connection in self.connections:  # keep-alive connections die with it
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MainThread:
    """Times every call made 'on the main thread' and keeps the longest."""

    def __init__(self) -> None:
        self.stalls: list[tuple[float, str]] = []

    def __call__(self, what: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = call()
        self.stalls.append((time.perf_counter() - started, what))
        return result

    def timer_ticks(self, session: Session, seconds: float) -> None:
        """The panel's timers for ``seconds``: drain every 50 ms, progress every 500 ms."""
        end = time.monotonic() + seconds
        tick = 0
        while time.monotonic() < end:
            self("drain", session.drain)
            if tick % 10 == 0:
                self("progress", session.progress)
            tick += 1
            time.sleep(TIMER_S)

    def until_idle(self, session: Session, timeout: float) -> None:
        end = time.monotonic() + timeout
        while session.busy:
            assert time.monotonic() < end, f"predictions still running after {timeout} s"
            self.timer_ticks(session, 0.2)

    @property
    def longest(self) -> tuple[float, str]:
        return max(self.stalls)


def fresh_volume(mrml: Any) -> Any:
    """The CT with every voxel + 1: new content, so no slice of it is in any embedding cache."""
    volume = mrml.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct+1")
    image = vtk.vtkImageData()
    image.DeepCopy(mrml.volume.GetImageData())
    scalars = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    scalars += 1
    volume.SetAndObserveImageData(image)
    matrix = vtk.vtkMatrix4x4()
    mrml.volume.GetIJKToRASMatrix(matrix)
    volume.SetIJKToRASMatrix(matrix)
    return volume


def test_main_thread_never_waits_for_a_slow_or_dead_worker(mrml, segmentation, worker, reference, capsys):
    proxy = SlowWorkerProxy(worker.base_url, DELAY_S)
    client = SAMMedClient(proxy.url, timeout=300, retries=1)
    main = MainThread()
    volume = fresh_volume(mrml)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("liver")
    liver = reference["liver"]
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    rows, cols = np.nonzero(liver[k])
    to_ras = lambda ijk: (ijk_to_ras(volume) @ np.array([*ijk, 1.0]))[:3]  # noqa: E731

    session = Session(mrml.scene, client)
    nodes = create_prompt_nodes(mrml.scene)
    session.observe(nodes)
    session.set_segment(segmentation, segment_id)
    roi, positive = nodes["box"], nodes["positivePoints"]

    def place_box(margin: int) -> None:
        low = to_ras((cols.min() - margin, rows.min() - margin, k))
        high = to_ras((cols.max() + margin, rows.max() + margin, k))
        size = np.abs(high - low)
        size[2] = 1.0
        modifying = roi.StartModify()
        roi.SetCenter(*((low + high) / 2))
        roi.SetSize(*size)
        roi.EndModify(modifying)

    try:
        started = time.perf_counter()
        main("select the volume (upload + precompute start)", lambda: session.set_volume(volume, focus=k))
        main("progress while uploading", session.progress)
        # clicks before the upload has ended, on a slice nobody has embedded: box, "+" point, a second box
        main("box during upload", lambda: place_box(2))
        main("\"+\" point during upload", lambda: positive.AddControlPoint(vtk.vtkVector3d(*to_ras(
            (cols[len(cols) // 2], rows[len(rows) // 2], k)))))
        main("second box during upload (coalesced)", lambda: place_box(4))
        assert session.busy and session.activity(), "no busy state while predicting"
        main("undo the second box while it waits", session.undo)
        main.until_idle(session, timeout=300)
        first_result = time.perf_counter() - started
        assert not session.errors, session.errors
        segment = session._slices().read(segment_id, 2, k)
        dice = 2 * (segment & liver[k]).sum() / (segment.sum() + liver[k].sum())
        assert dice > 0.5, f"the box on the unembedded slice gave Dice {dice:.3f}"
        assert len(session.prompts) == 2 and session.can_undo

        main("cancel the precompute", session.cancel_precompute)
        main.timer_ticks(session, 2 * DELAY_S + 0.5)  # the cancel reaches the worker before it dies

        # the worker dies: clicks and timer ticks go on, the error is reported once
        proxy.stop()
        main("box with a dead worker", lambda: place_box(3))
        main.timer_ticks(session, 2.0)
        main("\"+\" point with a dead worker", lambda: positive.AddControlPoint(vtk.vtkVector3d(*to_ras(
            (cols[0], rows[0], k)))))
        main.until_idle(session, timeout=60)
        main.timer_ticks(session, 1.0)
        unreachable = [e for e in session.errors if "reach" in e.lower() or "connect" in e.lower()]
        assert len(session.errors) == 1 and len(unreachable) == 1, session.errors
        assert session.worker_down
        while session.can_undo:
            main("undo", session.undo)
        assert not session._slices().read(segment_id, 2, k).any(), "undo did not clear the slice"
    finally:
        session.close()
        client.close()
    longest, what = main.longest
    with capsys.disabled():
        print(f"\nmain thread against a worker delaying every request {DELAY_S} s, then dead: {len(main.stalls)} calls, "
              f"longest {longest * 1e3:.1f} ms ({what}); first box on an unembedded slice applied after "
              f"{first_result:.1f} s; dead worker reported once: {session.errors[0]!r}")
    assert longest < STALL_LIMIT_S, f"the main thread waited {longest * 1e3:.0f} ms in: {what}"
