"""End-of-run outputs: ``summary.csv`` (one row per case), ``report.json`` (done/failed, throughput, time split,
per-organ volume statistics) and ``contact_sheet.png`` (each case's mid-slice thumbnail with its overlay)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .manifest import CaseRecord, atomic_write
from .stages import THUMBNAIL

STEPS = ("read", "infer", "write")


def write_reports(folder: Path, records: list[CaseRecord], wall_seconds: float, ran: int,
                  model: dict[str, str], workers: int) -> dict[str, Any]:
    """Write the three files for ``records`` (this run's cases) and return the report."""
    report = build_report(records, wall_seconds, ran, model, workers)
    atomic_write(folder / "report.json", json.dumps(report, indent=1).encode())
    atomic_write(folder / "summary.csv", summary_csv(records).encode())
    sheet = contact_sheet(folder, records)
    if sheet is not None:
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        atomic_write(folder / "contact_sheet.png", buffer.getvalue())
    return report


def build_report(records: list[CaseRecord], wall_seconds: float, ran: int, model: dict[str, str],
                 workers: int) -> dict[str, Any]:
    done = [r for r in records if r.status == "done"]
    failed = [r for r in records if r.status == "failed"]
    organs: dict[str, list[float]] = {}
    for record in done:
        for organ, ml in record.organ_volumes_ml.items():
            organs.setdefault(organ, []).append(ml)
    return {
        "model": model,
        "workers": workers,
        "cases": len(records),
        "done": len(done),
        "failed": len(failed),
        "ran_this_time": ran,
        "wall_seconds": round(wall_seconds, 2),
        "cases_per_minute": round(60.0 * ran / wall_seconds, 2) if ran and wall_seconds > 0 else None,
        "mean_seconds": {step: _mean([r.seconds.get(step) for r in done]) for step in STEPS},
        "failures": {r.case_id: r.error for r in failed},
        "organ_volume_ml": {organ: _stats(values) for organ, values in sorted(organs.items())},
    }


def summary_csv(records: list[CaseRecord]) -> str:
    organs = sorted({organ for r in records for organ in r.organ_volumes_ml})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", "status", "error", "input", *(f"{s}_s" for s in STEPS),
                     *(f"{o}_ml" for o in organs), "seg_nrrd", "dicom_seg", "notes"])
    for r in records:
        writer.writerow([r.case_id, r.status, r.error, r.input, *(r.seconds.get(s, "") for s in STEPS),
                         *(r.organ_volumes_ml.get(o, "") for o in organs),
                         r.outputs.get("seg_nrrd", ""), r.outputs.get("dicom_seg", ""), "; ".join(r.notes)])
    return buffer.getvalue()


def contact_sheet(folder: Path, records: list[CaseRecord], columns: int = 6) -> Image.Image | None:
    """Thumbnails of the finished cases in a grid, each captioned with its case id; None when none finished."""
    tiles = [(r.case_id, folder / r.outputs["thumbnail"]) for r in records
             if r.status == "done" and "thumbnail" in r.outputs and (folder / r.outputs["thumbnail"]).is_file()]
    if not tiles:
        return None
    caption, cell = 14, THUMBNAIL + 8
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (min(len(tiles), columns) * cell, rows * (cell + caption)), "black")
    draw = ImageDraw.Draw(sheet)
    for index, (case_id, path) in enumerate(tiles):
        x, y = (index % columns) * cell, (index // columns) * (cell + caption)
        with Image.open(path) as tile:
            sheet.paste(tile.convert("RGB"), (x + 4, y + 4))
        draw.text((x + 4, y + cell), case_id[:24], fill="white")
    return sheet


def _mean(values: list[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return round(float(np.mean(numbers)), 3) if numbers else None


def _stats(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, float)
    return {"n": int(array.size), "mean": round(float(array.mean()), 3), "sd": round(float(array.std()), 3),
            "median": round(float(np.median(array)), 3), "min": round(float(array.min()), 3),
            "max": round(float(array.max()), 3)}
