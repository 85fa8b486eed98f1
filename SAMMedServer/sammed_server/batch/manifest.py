"""The run folder's manifest: one record per case (input, hashes, status, error, times, organ volumes, outputs,
model), saved atomically after every finished case, so a run killed at any moment leaves a consistent manifest
and re-running skips what is done and retries what failed."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .cases import Case

MANIFEST = "manifest.json"
VERSION = 1


@dataclass
class CaseRecord:
    """What the run knows about one case. ``status``: ``pending``, ``done`` or ``failed``."""

    case_id: str
    input: str
    kind: str
    signature: str
    status: str = "pending"
    error: str = ""
    attempts: int = 0
    content_sha256: str = ""
    volume_hash: str = ""
    seconds: dict[str, float] = field(default_factory=dict)  # read, infer, write
    organ_volumes_ml: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # kind → path relative to the run folder (or a URL)
    notes: list[str] = field(default_factory=list)  # what a done case lacks, e.g. why it has no DICOM SEG
    model_id: str = ""
    weights_sha256: str = ""
    worker: str = ""
    finished: str = ""


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder, fsync, then rename: a reader (or a
    run killed mid-write) sees the old file or the new one, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class RunManifest:
    """``<run folder>/manifest.json``: the model of the run and a record per case id."""

    def __init__(self, folder: Path, model: dict[str, str]) -> None:
        self.folder, self.model = Path(folder), model
        self.records: dict[str, CaseRecord] = {}
        path = self.folder / MANIFEST
        if path.is_file():
            stored = json.loads(path.read_text())
            self.records = {cid: CaseRecord(**record) for cid, record in stored.get("cases", {}).items()}

    @property
    def path(self) -> Path:
        return self.folder / MANIFEST

    def plan(self, cases: list[Case]) -> list[Case]:
        """The cases to run now: everything not finished with this model on this exact input (new, failed,
        pending from a killed run, changed input or model, or outputs gone)."""
        todo = []
        for case in cases:
            record = self.records.get(case.case_id)
            if record is None or not self.is_finished(record, case):
                todo.append(case)
                self.records[case.case_id] = CaseRecord(
                    case.case_id, case.source, case.kind, case.signature(),
                    attempts=record.attempts if record and record.signature == case.signature() else 0)
        self.save()
        return todo

    def is_finished(self, record: CaseRecord, case: Case) -> bool:
        return (record.status == "done" and record.signature == case.signature()
                and record.model_id == self.model["model_id"] and record.weights_sha256 == self.model["weights_sha256"]
                and all(self.output_exists(value) for value in record.outputs.values()))

    def output_exists(self, value: str) -> bool:
        return "://" in value or (self.folder / value).is_file()

    def finish(self, case_id: str, result: dict[str, Any]) -> CaseRecord:
        """Record a case's result (``status``, ``error``, ``seconds``, … as the pipeline returns them) and save."""
        record = self.records[case_id]
        record.attempts += 1
        for name, value in result.items():
            setattr(record, name, value)
        record.model_id, record.weights_sha256 = self.model["model_id"], self.model["weights_sha256"]
        record.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.save()
        return record

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        document = {"version": VERSION, "model": self.model,
                    "cases": {cid: asdict(record) for cid, record in self.records.items()}}
        atomic_write(self.path, json.dumps(document, indent=1).encode())

    def selected(self, cases: list[Case]) -> list[CaseRecord]:
        """The records of ``cases`` (this run's inputs), in input order."""
        return [self.records[case.case_id] for case in cases if case.case_id in self.records]


def read_manifest(folder: Path) -> Optional[dict[str, Any]]:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None
