"""The worker the module talks to, got one of three ways, with every blocking call off the main thread.

* ``slicer``: ``sammed-server`` installed in Slicer's own Python, run as a separate ``PythonSlicer`` process;
* ``python``: a Python the user names, run in Slicer's startup environment (see :mod:`.worker_install`);
* ``remote``: a worker elsewhere (URL + token); nothing is started.

:class:`Worker` starts, connects and watches; the widget's timer calls :meth:`Worker.poll`, which only picks up
what the threads finished and runs the callbacks (``on_connected``, ``on_status``, ``on_error``) on the main thread.
A worker that stops answering, or a local one that exits, is reported once; nothing is retried until the user
starts or connects again.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from .background import BackgroundCalls
from .client import Health, SAMMedClient, SAMMedClientError
from .client_errors import UNREACHABLE
from .server_process import ServerProcess, WorkerError, serve_command
from .worker_install import foreign_python_environment, hidden_console_flags, slicer_python

SOURCES = ("slicer", "python", "remote")


@dataclass(frozen=True)
class WorkerInfo:
    """What the panel shows about a connected worker (fetched in one go, off the main thread)."""

    url: str
    health: Health
    models: list  # ModelInfo
    artefacts: list  # ArtefactInfo of every kind

    def of_kind(self, kind: str, base_model: str = "") -> list:
        return [a for a in self.artefacts if a.kind == kind and (not base_model or a.base_model == base_model)]


def fetch_info(client: Any) -> WorkerInfo:
    """Health (checks the protocol), models and stored artefacts: blocking, call it on a thread."""
    health = client.health()
    return WorkerInfo(client.base_url, health, client.models(), client.artefacts())


@dataclass(frozen=True)
class LocalLaunch:
    """How to run a local worker: its command line and whole environment (None: Slicer's own)."""

    command: list
    env: Optional[dict]
    creationflags: int = 0


def local_launch(
    source: str, port: int, python: str = "", model: Optional[str] = None,
    startup_environment: Optional[Mapping[str, str]] = None, which: Callable[[str], Optional[str]] = shutil.which,
    slicer_home: str = "", os_name: str = os.name,
) -> LocalLaunch:
    """The command and environment of a local worker, resolved now (never at import).

    ``slicer``: PythonSlicer with Slicer's environment, as ``slicer.util.pip_install`` runs it; ``python``: the
    named Python with ``startup_environment`` (``slicer.util.startupEnvironment()``) minus the launcher's Python
    variables.
    """
    if source == "slicer":
        executable = slicer_python(which, slicer_home, os_name)
        env = None
    elif source == "python":
        if not python.strip():
            raise WorkerError("name the worker's Python (a python with sammed-server installed), or choose Slicer's Python")
        executable = python.strip()
        env = foreign_python_environment(startup_environment if startup_environment is not None else os.environ)
    else:
        raise WorkerError(f"a {source!r} worker is not started here: use Test connection")
    return LocalLaunch(serve_command(executable, port=port, model=model), env, hidden_console_flags(os_name))


@dataclass
class Handover:
    """A running local worker passed from one module instance to the next (Reload keeps the worker)."""

    process: Any  # subprocess.Popen
    command: list
    url: str
    log_path: str


class Worker:
    """Start / connect / stop without waiting; :meth:`poll` delivers results on the caller's (main) thread.

    ``state``: ``none``, ``starting``, ``connecting``, ``connected``, ``lost`` (was connected, stopped answering),
    ``failed`` (could not start or connect) or ``stopped``.
    """

    def __init__(
        self, on_connected: Optional[Callable[[WorkerInfo], None]] = None,
        on_status: Optional[Callable[[str], None]] = None, on_error: Optional[Callable[[str], None]] = None,
        calls: Optional[BackgroundCalls] = None, client_factory: Callable[..., Any] = SAMMedClient,
        start_timeout: float = 180.0,
    ) -> None:
        self.on_connected = on_connected or (lambda info: None)
        self.on_status = on_status or (lambda text: None)
        self.on_error = on_error or (lambda text: None)
        self.calls = calls or BackgroundCalls(on_failure=lambda message: self.on_error(message))
        self.client_factory = client_factory
        self.start_timeout = start_timeout
        self.state = "none"
        self.client: Optional[Any] = None
        self.info: Optional[WorkerInfo] = None
        self.process: Optional[ServerProcess] = None
        self._generation = 0  # results of calls made before the last start/connect/stop are dropped
        self._last_error = ""

    # getting a worker ---------------------------------------------------------------------------
    def start_local(self, launch: LocalLaunch, port: int, log_path: Optional[str] = None) -> None:
        """(Re)start a local worker on 127.0.0.1:``port`` and wait for its health, all on a thread (a previous
        local worker is stopped there first, so that its port is free)."""
        previous = self._disconnect()
        client = self.client_factory(f"http://127.0.0.1:{port}")
        process = ServerProcess(launch.command, client.health, env=launch.env, creationflags=launch.creationflags,
                                log_path=log_path or os.path.join(tempfile.gettempdir(), f"sammed-server-{port}.log"))
        self.process = process
        self._begin("starting", f"starting the worker ({' '.join(launch.command[:1])})…")

        def start() -> None:
            if previous is not None:
                previous.stop()
            process.start(self.start_timeout)

        self._fetch(client, before=start)

    def connect(self, url: str, token: Optional[str] = None) -> None:
        """Use the worker at ``url`` (remote, or a local one already running): health and lists on a thread."""
        try:
            client = self.client_factory(url, token=token or None)
        except SAMMedClientError as exc:
            self._begin("failed", f"no connection: {exc}")
            self.on_error(f"no connection: {exc}")
            return
        self._begin("connecting", f"connecting to {url}…")
        self._fetch(client)

    def refresh(self) -> None:
        """Fetch the models and artefacts again (e.g. after training); ``on_connected`` gets them."""
        if self.state == "connected" and not self.calls.busy("connect"):
            self._fetch(self.client, state_after=None)

    def stop(self) -> None:
        """Stop the local worker (it is terminated on a thread: the panel does not wait for it to exit)."""
        process = self._disconnect()
        if process is not None:
            self.calls.submit("stop", process.stop)
        if self.state != "none":
            self.state = "stopped"
            self.on_status("stopped")

    def shutdown(self) -> None:
        """Slicer quits: stop the local worker now (waiting for it) and end the threads."""
        self._generation += 1
        if self.process is not None:
            self.process.stop()
            self.process = None
        self.calls.shutdown()

    # reload -----------------------------------------------------------------------------------------
    def detach(self) -> Optional[Handover]:
        """Give up the running local worker without stopping it (module Reload); None when there is none."""
        self._generation += 1
        self.calls.forget("status")
        if self.process is None or self.client is None:
            return None
        command, log_path, url = self.process.command, self.process.log_path, self.client.base_url
        process = self.process.release()
        self.process = None
        return Handover(process, command, url, log_path) if process is not None else None

    def attach(self, handover: Handover) -> None:
        """Take over a worker from :meth:`detach` (of an earlier module instance) and reconnect to it."""
        self.stop()
        client = self.client_factory(handover.url)
        self.process = ServerProcess(handover.command, client.health, log_path=handover.log_path)
        self.process.adopt(handover.process)
        self._begin("connecting", f"reconnecting to the worker at {handover.url}…")
        self._fetch(client)

    # watching -----------------------------------------------------------------------------------
    def monitor(self, fetch: Callable[[], Any], on_result: Callable[[Any], None]) -> bool:
        """Run ``fetch`` (blocking status requests) on a thread unless one still runs or the worker is not
        connected; ``on_result`` gets its value on the main thread. A worker that does not answer is reported once
        (state ``lost``); any other error is shown once per distinct message."""
        if self.state != "connected" or self.calls.busy("status"):
            return False
        generation = self._generation

        def delivered(value: Any) -> None:
            if generation == self._generation:
                on_result(value)

        self.calls.submit("status", fetch, delivered, lambda exc: self._status_failed(generation, exc))
        return True

    def poll(self) -> None:
        """Called by the widget's timer: deliver finished calls; notice (once) a local worker that exited."""
        self.calls.poll()
        if self.state == "connected" and self.process is not None and not self.process.running:
            code = self.process.process.returncode if self.process.process is not None else "?"
            self._lose(f"the worker exited (code {code}):\n{self.process.log_tail()}")

    def report_lost(self, message: str) -> None:
        """A call made elsewhere (a prediction) found the worker unreachable: the same single report as a failed
        status request (nothing more while it stays lost)."""
        if self.state == "connected":
            self._lose(f"the worker does not answer: {message}")

    # internals ------------------------------------------------------------------------------------
    def _disconnect(self) -> Optional[ServerProcess]:
        """Forget the client and pending results; returns the local worker still running (not stopped yet)."""
        self._generation += 1
        process, self.process = self.process, None
        self.client = None
        self.info = None
        return process if process is not None and process.running else None

    def _begin(self, state: str, status: str) -> None:
        self._generation += 1
        self.state = state
        self._last_error = ""
        self.on_status(status)

    def _fetch(self, client: Any, before: Optional[Callable[[], Any]] = None, state_after: Optional[str] = "connected") -> None:
        generation = self._generation

        def run() -> WorkerInfo:
            if before is not None:
                before()
            return fetch_info(client)

        def connected(info: WorkerInfo) -> None:
            if generation != self._generation:
                return
            self.client, self.info = client, info
            if state_after is not None:
                self.state = state_after
                health = info.health
                self.on_status(f"connected: sammed-server {health.version} on {health.device} "
                               f"(protocol {health.protocol}) at {info.url}")
            self.on_connected(info)

        def failed(exc: BaseException) -> None:
            if generation != self._generation:
                return
            if state_after is None:  # a refresh: the connection stays, the lists do not change
                self._status_failed(generation, exc)
                return
            self.state = "failed"
            if self.process is not None and not self.process.running:
                self.process = None
            self.on_status("not connected")
            self.on_error(str(exc) if isinstance(exc, (WorkerError, SAMMedClientError)) else f"{type(exc).__name__}: {exc}")

        self.calls.submit("connect", run, connected, failed)

    def _status_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation or self.state != "connected":
            return
        if isinstance(exc, UNREACHABLE):
            self._lose(f"the worker does not answer: {exc}")
            return
        message = str(exc) or type(exc).__name__
        if message != self._last_error:
            self._last_error = message
            self.on_error(message)

    def _lose(self, message: str) -> None:
        self.state = "lost"
        self.on_status("lost: press Start or Test connection")
        self.on_error(message)
