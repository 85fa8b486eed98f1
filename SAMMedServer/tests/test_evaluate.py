"""`sammed-server evaluate`: SAM^Med's prompt protocols on the sample CT, and their building blocks."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys

import numpy as np

from sammed_server.evaluation.protocols import CSV_COLUMNS, ResultRow, corrective_click, training_slices
from sammed_server.evaluation.report import markdown_table, write_csv


def test_corrective_click_targets_the_largest_error():
    reference = np.zeros((30, 30), bool)
    reference[5:25, 5:25] = True
    prediction = reference.copy()
    prediction[5:25, 5:12] = False  # 20×7 missed (FN)
    prediction[26:29, 26:29] = True  # 3×3 false (FP)
    (x, y), label = corrective_click(prediction, reference)
    assert label == 1 and reference[int(y), int(x)] and not prediction[int(y), int(x)]
    prediction[5:25, 5:12] = True
    (x, y), label = corrective_click(prediction, reference)
    assert label == 0 and (x, y) == (27.0, 27.0)
    assert corrective_click(reference, reference) is None


def test_training_slices_are_distinct_organ_slices_near_the_median():
    slices = list(range(40, 60))
    draws = [training_slices(slices, 5, np.random.default_rng(seed)) for seed in range(20)]
    for picked in draws:
        assert len(set(picked)) == 5 and set(picked) <= set(slices) and picked == sorted(picked)
    assert abs(np.mean(draws) - 49.5) < 2
    assert training_slices([3, 4], 5, np.random.default_rng(0)) == [3, 4]


def test_report(tmp_path):
    rows = [ResultRow("liver", "points", "1 point", "raw SAM", 0, "all", 10, 0.1, 0.05, 1.0),
            ResultRow("spleen", "points", "1 point", "raw SAM", 0, "all", 8, 0.3, 0.05, 1.0),
            ResultRow("liver", "SAP-Net", "coarse", "SAP-Net (2 slices)", 2, "volume", 30, 0.8, math.nan, 2.0, 3.0)]
    table = markdown_table(rows).splitlines()
    assert table[0] == "| protocol | liver | spleen | mean |"
    assert table[2] == "| points: 1 point — raw SAM | 0.100 | 0.300 | 0.200 |"
    assert table[3].endswith("| 0.800 | – | 0.800 |")
    with write_csv(rows, tmp_path / "a" / "b.csv").open() as handle:
        lines = list(csv.reader(handle))
    assert tuple(lines[0]) == CSV_COLUMNS and lines[3][8] == "" and len(lines) == 4


def test_evaluate_quick_on_ct(data, ct_path, ct_labels_path, shared_cache_dir, tmp_path):
    out = tmp_path / "eval.csv"
    env = dict(os.environ, SAMMED_CACHE_DIR=str(shared_cache_dir), SAMMED_HOME=str(tmp_path / "home"))
    command = [sys.executable, "-m", "sammed_server.cli", "evaluate", str(ct_path), str(ct_labels_path),
               "--organs", "spleen", "--train-slices", "2", "--quick", "--device", "cpu",
               "--out", str(out)]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "| protocol | spleen | mean |" in finished.stdout
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {r["organ"] for r in rows} == {"spleen"}
    assert all(math.isfinite(float(r["dice_mean"])) and 0 <= float(r["dice_mean"]) <= 1 for r in rows)

    def held_in(encoder: str, organ: str) -> float:
        [row] = [r for r in rows if r["organ"] == organ and r["prompt"] == "1 point" and r["encoder"] == encoder
                 and r["slices"] == "held-in"]
        assert row["n"] == "2" and row["train_slices"] == "2"
        return float(row["dice_mean"])

    raw, learned = held_in("raw SAM", "spleen"), held_in("learned point (2 slices)", "spleen")
    assert learned >= raw + 0.10, (raw, learned)
    box = [float(r["dice_mean"]) for r in rows if r["protocol"] == "box" and r["encoder"] == "raw SAM" and r["slices"] == "all"]
    assert min(box) > 0.6  # 3 spleen slices incl. its small end slices: 0.733 measured


def test_evaluate_rejects_unknown_organs(data, ct_path, ct_labels_path, capsys):
    from sammed_server.cli import main

    assert main(["evaluate", str(ct_path), str(ct_labels_path), "--organs", "liver,heart", "--quick"]) == 2
    assert "unknown organ(s) heart" in capsys.readouterr().err
