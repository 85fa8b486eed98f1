"""Start the worker as a subprocess on loopback and wait for its ready line (tests and benchmarks)."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

from .protocol import READY_MARKER, TOKEN_MARKER

READY = re.compile(re.escape(READY_MARKER) + r" (http://\S+)")
TOKEN = re.compile(re.escape(TOKEN_MARKER) + r"(\S+)\s*$")


class ServerProcess:
    """``with ServerProcess(env={...}) as server: server.url``: a worker on 127.0.0.1 with a free port
    (``server.token``: the token announced on the ready line with ``--token auto``, else "")."""

    def __init__(self, args: Sequence[str] = (), env: Optional[dict[str, str]] = None, startup_timeout: float = 180.0) -> None:
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout = startup_timeout
        self.url = ""
        self.token = ""
        self.output: collections.deque[str] = collections.deque(maxlen=200)
        self.process: Optional[subprocess.Popen] = None
        self._ready = threading.Event()

    def start(self) -> str:
        command = [sys.executable, "-m", "sammed_server.cli", "serve", "--host", "127.0.0.1", "--port", "0", *self.args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env, bufsize=1
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._ready.wait(0.1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the SAMMed server did not start:\n" + "\n".join(self.output))
        return self.url

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> "ServerProcess":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            match = READY.search(line)
            if match and not self._ready.is_set():
                self.url = match.group(1)
                token = TOKEN.search(line)
                self.token = token.group(1) if token else ""
                self._ready.set()
