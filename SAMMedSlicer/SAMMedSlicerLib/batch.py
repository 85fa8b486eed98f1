"""Cohort runs from Slicer: start ``sammed-server batch`` in the worker's environment, follow its progress, list
the cases it has finished so the module can load them.

The job is the worker's own command (same executable as ``server_process``), not an HTTP call: a cohort run is
long, resumable and owns its run folder, so it outlives the Slicer session if need be and a re-run picks it up.
Progress comes from the run folder's ``manifest.json``, which the batch replaces atomically after every case, so
reading it never sees a half-written file. Nothing here blocks: the widget polls :meth:`BatchJob.progress` from a
timer and loads each new entry of :meth:`BatchJob.finished_cases`.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .server_process import is_python


@dataclass(frozen=True)
class BatchProgress:
    """Cases in the run, how many are done / failed so far, whether the process still runs, and its exit code
    (0: all done, 1: some case failed, other: the run itself failed; see ``log``)."""

    total: int
    done: int
    failed: int
    running: bool
    returncode: Optional[int]


@dataclass(frozen=True)
class FinishedCase:
    case_id: str
    volume: str  # the input: a volume file or a DICOM series folder (what Slicer loads)
    segmentation: Path  # the case's .seg.nrrd


def batch_command(executable: str, model_id: str, inputs: Sequence[str], run_folder: str, workers: int = 1,
                  device: Optional[str] = None, extra: Sequence[str] = ()) -> list[str]:
    """The ``sammed-server batch`` command line for ``executable`` (the script or a Python)."""
    base = [executable, "-m", "sammed_server.cli"] if is_python(executable) else [executable]
    command = [*base, "batch", "--auto", model_id, *inputs, "-o", str(run_folder), "--workers", str(workers)]
    if device:
        command += ["--device", device]
    return [*command, *extra]


class BatchJob:
    """One ``batch`` run in a child process; ``popen`` is injectable for tests of the wiring."""

    def __init__(self, command: Sequence[str], run_folder: str | Path, env: Optional[dict] = None,
                 popen: Callable[..., subprocess.Popen] = subprocess.Popen) -> None:
        self.command, self.run_folder, self.env, self._popen = list(command), Path(run_folder), env, popen
        self.process: Optional[subprocess.Popen] = None
        self.log = self.run_folder / "batch.log"

    def start(self) -> None:
        self.run_folder.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = self._popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def progress(self) -> BatchProgress:
        records = self._records()
        returncode = self.process.poll() if self.process else None
        return BatchProgress(len(records), sum(r["status"] == "done" for r in records),
                             sum(r["status"] == "failed" for r in records),
                             self.process is not None and returncode is None, returncode)

    def finished_cases(self) -> list[FinishedCase]:
        """The done cases with their ``.seg.nrrd`` (in manifest order), to load into the scene."""
        return [FinishedCase(r["case_id"], r["input"], self.run_folder / r["outputs"]["seg_nrrd"])
                for r in self._records() if r["status"] == "done" and "seg_nrrd" in r["outputs"]]

    def failures(self) -> dict[str, str]:
        return {r["case_id"]: r["error"] for r in self._records() if r["status"] == "failed"}

    def cancel(self) -> None:
        """Stop the run (finished cases stay; running the same job again resumes it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def _records(self) -> list[dict]:
        path = self.run_folder / "manifest.json"
        if not path.is_file():
            return []
        return list(json.loads(path.read_text()).get("cases", {}).values())
