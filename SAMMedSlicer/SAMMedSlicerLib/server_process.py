"""Run the local worker (``sammed-server serve``) as a child process.

Nothing here runs at import time. ``ServerProcess.start`` launches the worker, waits until its ``/v1/health``
answers with the expected protocol, and turns every way of failing into a :class:`WorkerError` with a message a
user can act on (missing program, port taken, early exit with the tail of its log, protocol mismatch). ``start``
blocks: inside Slicer it runs on a thread (:class:`~SAMMedSlicerLib.worker.Worker`), and :meth:`ServerProcess.stop`
from another thread ends the wait.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence


class WorkerError(RuntimeError):
    """The worker cannot be started or used; ``str()`` is a message for the user."""


def is_python(executable: str) -> bool:
    """Whether ``executable`` names a Python interpreter (else it is the ``sammed-server`` program itself)."""
    return Path(executable).name.lower().startswith(("python", "pythonslicer"))


def serve_command(
    executable: str, host: str = "127.0.0.1", port: int = 8765, token: Optional[str] = None,
    model: Optional[str] = None, device: Optional[str] = None,
) -> list[str]:
    """The command line that starts the worker with ``executable`` (the ``sammed-server`` script or a Python)."""
    base = [executable, "-m", "sammed_server.cli"] if is_python(executable) else [executable]
    command = [*base, "serve", "--host", host, "--port", str(port)]
    for flag, value in (("--token", token), ("--model", model), ("--device", device)):
        if value:
            command += [flag, value]
    return command


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (a closed worker's TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


class ServerProcess:
    """One worker child process: start (and wait for health), stop, restart; stopped at interpreter exit.

    ``health`` is called until it returns (e.g. ``SAMMedClient.health``); it raises while the worker is not up,
    and raises an exception with ``code == "protocol_mismatch"`` / ``"not_sammed"`` when the versions differ.
    ``env`` is the worker's whole environment (None: this process's); ``creationflags`` e.g. no console window.
    """

    def __init__(
        self, command: Sequence[str], health: Callable[[], Any], env: Optional[Mapping[str, str]] = None,
        log_path: Optional[str] = None, creationflags: int = 0,
    ) -> None:
        self.command = list(command)
        self.health = health
        self.env = dict(env) if env is not None else None
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"sammed-server-{os.getpid()}.log")
        self.creationflags = creationflags
        self.process: Optional[subprocess.Popen] = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 180.0, poll: float = 0.25) -> Any:
        """Launch the worker and return its health once it answers; raises WorkerError otherwise."""
        if self.running:
            return self.health()
        self._check_can_start()
        with open(self.log_path, "wb") as log:
            try:
                process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           stdin=subprocess.DEVNULL, creationflags=self.creationflags)
            except OSError as exc:
                raise WorkerError(f"cannot run the SAMMed worker ({' '.join(self.command)}): {exc}") from None
        self.process = process
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not process:
                raise WorkerError("the SAMMed worker was stopped before it was ready")
            if process.poll() is not None:
                self.process = None
                raise WorkerError(
                    f"the SAMMed worker exited (code {process.returncode}) before it was ready:\n{self.log_tail()}")
            try:
                return self.health()
            except Exception as exc:  # noqa: BLE001 - any failure to answer means "not up yet", except a mismatch
                if getattr(exc, "code", "") in ("protocol_mismatch", "not_sammed"):
                    self.stop()
                    raise WorkerError(str(exc)) from None
            if time.monotonic() > deadline:
                self.stop()
                raise WorkerError(f"the SAMMed worker did not answer within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(poll)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the worker (kill it if it does not stop within ``timeout``)."""
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def adopt(self, process: subprocess.Popen) -> None:
        """Take over a running worker started by an earlier instance (the module was reloaded)."""
        self.process = process
        atexit.register(self.stop)

    def release(self) -> Optional[subprocess.Popen]:
        """Hand the running worker over (to :meth:`adopt`); this instance no longer stops it."""
        process, self.process = self.process, None
        atexit.unregister(self.stop)
        return process if process is not None and process.poll() is None else None

    def restart(self, timeout: float = 180.0) -> Any:
        self.stop()
        return self.start(timeout)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the worker wrote (stdout and stderr)."""
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(the worker wrote nothing)"

    def _check_can_start(self) -> None:
        program = self.command[0]
        if os.path.sep in program and not os.path.isfile(program):
            raise WorkerError(
                f"the SAMMed worker program {program} does not exist: choose Slicer's Python and press Install, "
                "or name a Python that has sammed-server installed"
            )
        if "--port" in self.command:
            host = self.command[self.command.index("--host") + 1] if "--host" in self.command else "127.0.0.1"
            port = int(self.command[self.command.index("--port") + 1])
            if port and port_in_use(host, port):
                raise WorkerError(
                    f"port {port} on {host} is already in use by another program: choose another port "
                    "or stop that program (a SAMMed worker already running there can be used with Test connection)"
                )
