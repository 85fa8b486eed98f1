"""Evaluation results as a CSV file and as a Markdown table (rows = protocol, columns = organs + mean)."""

from __future__ import annotations

import csv
import math
from dataclasses import astuple
from pathlib import Path
from typing import Sequence

from .protocols import CSV_COLUMNS, ResultRow


def write_csv(rows: Sequence[ResultRow], path: Path) -> Path:
    """One line per organ × protocol × setting, columns :data:`CSV_COLUMNS`; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else round(v, 4) if isinstance(v, float) else v
                             for v in astuple(row)])
    return path


def markdown_table(rows: Sequence[ResultRow]) -> str:
    """Dice (mean over slices, or the volume Dice) per protocol row and organ, plus the mean over organs."""
    organs = list(dict.fromkeys(r.organ for r in rows))
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.encoder == "raw SAM" and row.slices != "all":
            continue  # the same raw numbers on subsets: in the CSV only
        table.setdefault(row.label(), {})[row.organ] = row.dice_mean
    lines = ["| protocol | " + " | ".join(organs) + " | mean |", "|---" * (len(organs) + 2) + "|"]
    for label, values in table.items():
        cells = [values.get(o, math.nan) for o in organs]
        known = [v for v in cells if not math.isnan(v)]
        mean = sum(known) / len(known) if known else math.nan
        lines.append(f"| {label} | " + " | ".join(_cell(v) for v in cells + [mean]) + " |")
    return "\n".join(lines)


def _cell(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.3f}"
