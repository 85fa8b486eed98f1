"""Run the local worker (``sammed-server serve``) as a child process, and build the commands that create its environment.

Nothing here runs at import time. ``ServerProcess.start`` launches the worker, waits until its ``/v1/health``
answers with the expected protocol, and turns every way of failing into a :class:`WorkerError` with a message a
user can act on (missing program, port taken, early exit with the tail of its log, protocol mismatch).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


class WorkerError(RuntimeError):
    """The worker cannot be started or used; ``str()`` is a message for the user."""


def is_python(executable: str) -> bool:
    """Whether ``executable`` names a Python interpreter (else it is the ``sammed-server`` program itself)."""
    return Path(executable).name.lower().startswith(("python", "pythonslicer"))


def env_executable(env_dir: str, name: str) -> str:
    """A program inside a virtual environment (``bin/`` on POSIX, ``Scripts/*.exe`` on Windows)."""
    if os.name == "nt":
        return str(Path(env_dir) / "Scripts" / f"{name}.exe")
    return str(Path(env_dir) / "bin" / name)


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


def create_env_commands(
    env_dir: str, server_source: str, constraints: Optional[str] = None, base_python: str = sys.executable
) -> list[list[str]]:
    """The commands that create the worker's own environment and install ``sammed-server`` into it.

    ``server_source`` is the SAMMedServer folder shipped with the extension; ``constraints`` pins exact versions.
    The caller asks the user before running them (they download several GB of packages).
    """
    python = env_executable(env_dir, "python")
    install = [python, "-m", "pip", "install", "--upgrade"]
    if constraints:
        install += ["--constraint", constraints]
    return [
        [base_python, "-m", "venv", env_dir],
        [python, "-m", "pip", "install", "--upgrade", "pip"],
        [*install, server_source],
    ]


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
    """

    def __init__(
        self, command: Sequence[str], health: Callable[[], Any], env: Optional[dict[str, str]] = None,
        log_path: Optional[str] = None,
    ) -> None:
        self.command = list(command)
        self.health = health
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"sammed-server-{os.getpid()}.log")
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
                self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env)
            except OSError as exc:
                raise WorkerError(f"cannot run the SAMMed worker ({' '.join(self.command)}): {exc}") from None
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise WorkerError(f"the SAMMed worker exited (code {code}) before it was ready:\n{self.log_tail()}")
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
                f"the SAMMed worker program {program} does not exist: create the worker environment "
                "(SAMMed panel: Worker → Create environment) or set the Python/sammed-server path"
            )
        if "--port" in self.command:
            host = self.command[self.command.index("--host") + 1] if "--host" in self.command else "127.0.0.1"
            port = int(self.command[self.command.index("--port") + 1])
            if port and port_in_use(host, port):
                raise WorkerError(
                    f"port {port} on {host} is already in use by another program: choose another port "
                    "or stop that program (a SAMMed worker already running there can be used with Test connection)"
                )
