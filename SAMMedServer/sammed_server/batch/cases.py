"""The cases of a cohort run: volume files, DICOM series found in folders (one case per series), CSV lists of
paths, and DICOMweb series. A case knows what to read and a cheap signature of its input (sizes and mtimes, or
the DICOMweb instance count) that says whether a finished case must be redone."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from ..errors import InputError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Files a folder search never takes as volumes: segmentations (ours or Slicer's) and DICOM SEG.
NOT_VOLUMES = (".seg.nrrd", ".seg.nii.gz", ".seg.dcm")
#: A CSV whose first row names one of these is read from that column, under the header.
HEADER_NAMES = ("path", "file", "volume", "image", "input")


@dataclass(frozen=True)
class Case:
    """One volume to segment. ``kind``: ``file``, ``dicom`` (a series; ``files`` in slice order) or
    ``dicomweb`` (``source`` = server URL, with study and series UIDs)."""

    case_id: str
    kind: str
    source: str
    files: tuple[str, ...] = ()
    study_uid: str = ""
    series_uid: str = ""
    instances: int = 0

    def signature(self) -> str:
        """Changes when the input changes: file sizes and modification times, or the DICOMweb instance count."""
        if self.kind == "dicomweb":
            return f"{self.series_uid}:{self.instances}"
        parts = []
        for name in self.files or (self.source,):
            try:
                stat = os.stat(name)
                parts.append(f"{stat.st_size}:{stat.st_mtime_ns}")
            except OSError:
                parts.append("missing")
        return "|".join(parts)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Case":
        record = json.loads(text)
        return cls(**{**record, "files": tuple(record["files"])})


def discover_cases(inputs: Iterable[str | Path]) -> list[Case]:
    """Cases from files, folders (searched recursively) and ``.csv`` lists of paths (column ``path`` or the
    first column; relative paths are relative to the CSV). A path that does not exist becomes a case that fails
    with that reason; inputs that yield no case at all are an error."""
    found: list[Case] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_file() and path.suffix.lower() == ".csv":
            found += discover_cases(_csv_paths(path))
        elif path.is_dir():
            found += _folder_cases(path)
        else:
            found.append(Case(case_slug(_strip_suffix(path.name)), "file", str(path)))
    if not found:
        raise InputError("no volumes found in the inputs", "give volume files, folders or a CSV of paths")
    return unique_ids(found)


def unique_ids(cases: list[Case]) -> list[Case]:
    """The same cases with repeated ids made distinct (``-2``, ``-3`` … in input order)."""
    seen: dict[str, int] = {}
    result = []
    for case in cases:
        count = seen.get(case.case_id, 0) + 1
        seen[case.case_id] = count
        result.append(case if count == 1 else Case(**{**asdict(case), "case_id": f"{case.case_id}-{count}"}))
    return result


def _csv_paths(path: Path) -> list[Path]:
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and row[0].strip()]
    if not rows:
        raise InputError(f"{path} lists no paths")
    header = [cell.strip().lower() for cell in rows[0]]
    names = [i for i, cell in enumerate(header) if cell in HEADER_NAMES]
    column = names[0] if names else 0
    return [path.parent / row[column].strip() for row in rows[1 if names else 0:] if len(row) > column]


def _folder_cases(root: Path) -> list[Case]:
    """Volume files and DICOM series under ``root`` (sorted, so ids and order are stable between runs)."""
    import SimpleITK as sitk

    cases = []
    reader = sitk.ImageSeriesReader()
    for folder, _, names in sorted(os.walk(root)):
        relative = Path(folder).relative_to(root)
        for name in sorted(names):
            lower = name.lower()
            if lower.endswith(VOLUME_SUFFIXES) and not lower.endswith(NOT_VOLUMES):
                cases.append(Case(case_slug(str(relative / _strip_suffix(name))), "file", str(Path(folder) / name)))
        found = reader.GetGDCMSeriesIDs(folder) if any(not n.lower().endswith(VOLUME_SUFFIXES) for n in names) else ()
        series = {uid: files for uid in found
                  if not _is_segmentation((files := tuple(reader.GetGDCMSeriesFileNames(folder, uid)))[0])}
        for series_uid, files in series.items():
            name = str(relative) if str(relative) != "." else root.name
            suffix = f"_{series_uid.split('.')[-1]}" if len(series) > 1 else ""
            cases.append(Case(case_slug(name + suffix), "dicom", folder, files, series_uid=series_uid))
    return cases


def _is_segmentation(file: str) -> bool:
    """A DICOM SEG (or RT structure set) is a result, not a volume to segment."""
    import pydicom

    try:
        return str(pydicom.dcmread(file, stop_before_pixels=True, specific_tags=["Modality"]).Modality) in ("SEG", "RTSTRUCT")
    except Exception:  # unreadable: let the read step report it
        return False


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def case_slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.replace(os.sep, "__")).strip("_.") or "case"

