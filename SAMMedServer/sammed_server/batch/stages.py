"""The three per-case steps of a cohort run, as functions of one row (a dict) so Ray Data can run them:
:class:`ReadStep` (input → voxels + geometry), :class:`SegmentStep` (the model, loaded once per worker) and
:class:`WriteStep` (outputs through temporary names, then rename). A step that fails puts a one-line ``error`` in
the row and the later steps pass it on untouched, so one bad case never stops the run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..engine.segmentation_file import Segment
from ..engine.volume import Volume, volume_from_array
from ..errors import SAMMedError
from .cases import Case
from .model import ModelSpec

Row = dict[str, Any]
NO_VOXELS = np.zeros((1, 1, 1), np.uint8)  # array columns of a failed row (Ray Data wants every column)
THUMBNAIL = 160  # contact-sheet tile size, pixels


def new_row(case: Case) -> Row:
    return {"case": case.to_json(), "error": "", "seconds": "{}", "array": NO_VOXELS, "labels": NO_VOXELS,
            "geometry": "{}", "segments": "[]", "content_sha256": "", "worker": "", "result": "{}"}


def error_line(exc: BaseException) -> str:
    """One line for the manifest: a SAMMedError's message, else the exception type and its first line."""
    if isinstance(exc, SAMMedError):
        return str(exc).splitlines()[0]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def guarded(step: Callable[[Row], Row], name: str) -> Callable[[Row], Row]:
    """Run ``step`` on rows without an error; turn an exception into the row's error and time the step."""
    def run(row: Row) -> Row:
        if row["error"]:
            return row
        started = time.perf_counter()
        try:
            row = step(row)
        except Exception as exc:  # a case's failure, whatever it is, is that case's result
            row["error"] = error_line(exc)
            row["traceback"] = traceback.format_exc(limit=4)[-2000:]
        seconds = json.loads(row["seconds"])
        seconds[name] = round(time.perf_counter() - started, 3)
        row["seconds"] = json.dumps(seconds)
        return row

    return run


def row_volume(row: Row) -> Volume:
    geometry = json.loads(row["geometry"])
    return volume_from_array(row["array"], geometry["spacing"], geometry["origin"], geometry["direction"])


@dataclass
class ReadStep:
    """Input → voxels, geometry and the sha256 of the input bytes. DICOMweb series are fetched into
    ``<run>/.dicomweb/<case>/`` first (removed again by the write step)."""

    run_folder: str

    def __call__(self, row: Row) -> Row:
        return guarded(self._read, "read")(row)

    def _read(self, row: Row) -> Row:
        from ..engine.volume import load_dicom_series, load_volume

        case = Case.from_json(row["case"])
        if case.kind == "dicomweb":
            from .dicomweb import fetch_series

            files = fetch_series(case, Path(self.run_folder) / ".dicomweb" / case.case_id)
            case = Case(**{**json.loads(case.to_json()), "files": tuple(files)})
        volume = load_volume(case.source) if case.kind == "file" else load_dicom_series(case.files, case.case_id)
        row["case"] = case.to_json()
        row["array"] = np.asarray(volume.array)
        row["geometry"] = json.dumps({"spacing": volume.spacing, "origin": volume.origin,
                                      "direction": volume.direction, "hash": volume.content_hash})
        row["content_sha256"] = sha256_files(case.files or (case.source,))
        return row


class SegmentStep:
    """The model of a run, loaded once when Ray starts this worker; segments one case per call. Ray Data builds
    it without arguments: :func:`segment_step` makes the subclass that carries the model spec."""

    SPEC: dict = {}

    def __init__(self) -> None:
        from .model import LoadedModel

        self.model = LoadedModel(ModelSpec(**self.SPEC))
        self.worker = f"{os.uname().nodename}:{os.getpid()}"

    def __call__(self, row: Row) -> Row:
        return guarded(self._segment, "infer")(row)

    def _segment(self, row: Row) -> Row:
        segments = self.model.segment(row_volume(row))
        labels = np.zeros(row["array"].shape, np.uint8 if len(segments) < 255 else np.uint16)
        for value, segment in enumerate(segments, start=1):
            labels[segment.mask] = value
        row["labels"] = labels
        row["segments"] = json.dumps([{"name": s.name, "color": list(s.color)} for s in segments])
        row["worker"] = self.worker
        return row


def segment_step(spec: ModelSpec) -> type:
    """A :class:`SegmentStep` for ``spec`` (the spec travels with the class, not as actor arguments)."""
    return type("SegmentStep", (SegmentStep,), {"SPEC": spec.as_dict()})


@dataclass
class WriteStep:
    """Outputs of one case under ``<run>/cases/<case>/``: ``.seg.nrrd`` always, DICOM SEG when the input was a
    DICOM series (and STOW-RS back to the server for DICOMweb cases), a NIfTI labelmap when asked, and a
    thumbnail for the contact sheet. Each file is written under a temporary name and renamed into place."""

    run_folder: str
    dicom_seg: bool = True
    nifti: bool = False

    def __call__(self, row: Row) -> Row:
        row = guarded(self._write, "write")(row)
        case = Case.from_json(row["case"])
        if case.kind == "dicomweb":
            shutil.rmtree(Path(self.run_folder) / ".dicomweb" / case.case_id, ignore_errors=True)
        row["array"], row["labels"] = NO_VOXELS, NO_VOXELS  # the driver needs only the record
        return row

    def _write(self, row: Row) -> Row:
        from ..engine.dicom_seg import read_series

        case = Case.from_json(row["case"])
        volume = row_volume(row)
        names = json.loads(row["segments"])
        segments = [Segment(s["name"], row["labels"] == value, tuple(s["color"]))
                    for value, s in enumerate(names, start=1)]
        folder = Path(self.run_folder) / "cases" / case.case_id
        folder.mkdir(parents=True, exist_ok=True)
        outputs = {"seg_nrrd": self._place(folder / f"{case.case_id}.seg.nrrd", volume, segments)}
        if self.nifti:
            outputs["nifti"] = self._place(folder / f"{case.case_id}.nii.gz", volume, segments)
        notes = []
        if self.dicom_seg and case.kind in ("dicom", "dicomweb"):
            source = read_series(case.files)
            if all("FrameOfReferenceUID" in ds for ds in source):
                outputs.update(self._dicom_seg(case, folder, volume, segments, source))
            else:  # a SEG must share its source's frame of reference: inventing one would misplace it
                notes.append("no DICOM SEG: the source series has no Frame of Reference UID")
        outputs["thumbnail"] = self._thumbnail(folder / "thumbnail.png", volume, segments)
        voxel_ml = float(np.prod(volume.spacing)) / 1000.0
        row["result"] = json.dumps({
            "outputs": outputs,
            "organ_volumes_ml": {s.name: round(float(np.count_nonzero(s.mask)) * voxel_ml, 3) for s in segments},
            "notes": notes,
        })
        return row

    def _place(self, path: Path, volume: Volume, segments: list[Segment]) -> str:
        from ..engine.segmentation_file import write_segmentation

        return self._atomic(path, lambda temporary: write_segmentation(volume, segments, temporary))

    def _dicom_seg(self, case: Case, folder: Path, volume: Volume, segments: list[Segment],
                   source: list) -> dict[str, str]:
        from ..engine.dicom_seg import build_dicom_seg

        seg = build_dicom_seg(volume, segments, source, series_description=f"SAMMed {case.case_id}"[:64])
        outputs = {"dicom_seg": self._atomic(folder / f"{case.case_id}.seg.dcm", lambda t: seg.save_as(str(t)))}
        if case.kind == "dicomweb":
            from .dicomweb import store

            outputs["dicomweb_seg"] = store(case.source, seg)
        return outputs

    def _thumbnail(self, path: Path, volume: Volume, segments: list[Segment]) -> str:
        from ..evaluation.overlay import overlay

        k = volume.array.shape[0] // 2
        image = volume.array[k].astype(np.float32)
        low, high = np.percentile(image, [1, 99])
        picture = overlay((image - low) / max(high - low, 1e-6), [s.mask[k] for s in segments],
                          [s.color for s in segments], scale=1)
        rows, cols = volume.slice_shape(2)
        height, width = rows * volume.spacing[1], cols * volume.spacing[0]  # physical aspect
        factor = THUMBNAIL / max(height, width)
        picture = picture.resize((max(1, round(width * factor)), max(1, round(height * factor))))
        return self._atomic(path, lambda temporary: picture.save(temporary, format="PNG"))

    def _atomic(self, path: Path, write: Callable[[Path], Any]) -> str:
        temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        try:
            write(temporary)
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return str(path.relative_to(self.run_folder))


def sha256_files(files) -> str:
    digest = hashlib.sha256()
    for name in files:
        with open(name, "rb") as handle:
            for block in iter(lambda: handle.read(2**20), b""):
                digest.update(block)
    return digest.hexdigest()


def record_fields(row: Row) -> dict[str, Any]:
    """The manifest fields of a finished row."""
    result = json.loads(row["result"])
    geometry = json.loads(row["geometry"])
    return {
        "status": "failed" if row["error"] else "done",
        "error": row["error"],
        "seconds": json.loads(row["seconds"]),
        "content_sha256": row["content_sha256"],
        "volume_hash": geometry.get("hash", ""),
        "organ_volumes_ml": result.get("organ_volumes_ml", {}),
        "outputs": result.get("outputs", {}) if not row["error"] else {},
        "notes": result.get("notes", []),
        "worker": row["worker"],
    }

