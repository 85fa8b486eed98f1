"""Cohort runs without Ray: which cases a folder tree / CSV yields, the manifest's skip-and-retry plan, atomic
writes, and the one clear error `batch` gives when Ray is not installed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import SimpleITK as sitk

from sammed_server.batch.cases import discover_cases
from sammed_server.batch.manifest import RunManifest
from sammed_server.batch.report import build_report


def test_folders_csv_and_dicom_series_become_cases(data, tmp_path):
    tree = tmp_path / "cohort"
    (tree / "a" / "b").mkdir(parents=True)
    image = sitk.ReadImage(str(data / "totalsegmentator" / "example_ct_sm.nii.gz"))[:, :, 10:12]
    sitk.WriteImage(image, str(tree / "a" / "ct.nii.gz"))
    sitk.WriteImage(image, str(tree / "a" / "b" / "ct.mha"))
    sitk.WriteImage(image, str(tree / "a" / "result.seg.nrrd"))  # a segmentation, not a case
    shutil.copytree(data / "dcmqi-ct-seg" / "ct_dicom", tree / "series")
    shutil.copy(data / "dcmqi-ct-seg" / "liver_SEG.dcm", tree / "series" / "seg.dcm")  # SEG series: skipped
    listed = tmp_path / "list.csv"
    listed.write_text("path,comment\ncohort/a/ct.nii.gz,again\nmissing.nrrd,gone\n")

    cases = discover_cases([tree, listed])
    by_id = {c.case_id: c for c in cases}
    assert list(by_id) == ["a__ct", "a__b__ct", "series", "ct", "missing"]
    series = by_id["series"]
    assert series.kind == "dicom" and len(series.files) == 3 and all(f.endswith(".dcm") for f in series.files)
    assert "seg.dcm" not in " ".join(series.files)
    assert by_id["missing"].kind == "file" and by_id["missing"].signature() == "missing"
    assert by_id["a__ct"].signature() == by_id["ct"].signature() != by_id["a__b__ct"].signature()


def test_manifest_skips_done_retries_failed_and_redoes_changed_inputs(data, tmp_path):
    volume = tmp_path / "in" / "ct.nrrd"
    volume.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 4), np.int16)), str(volume))
    (tmp_path / "in" / "bad.nii.gz").write_bytes(b"x")
    cases = discover_cases([tmp_path / "in"])
    model = {"model_id": "m", "weights_sha256": "w", "base_model": "litemedsam"}
    run = tmp_path / "run"
    manifest = RunManifest(run, model)
    assert [c.case_id for c in manifest.plan(cases)] == ["bad", "ct"]
    (run / "cases").mkdir()
    (run / "cases" / "ct.seg.nrrd").write_bytes(b"seg")
    manifest.finish("ct", {"status": "done", "outputs": {"seg_nrrd": "cases/ct.seg.nrrd"}})
    manifest.finish("bad", {"status": "failed", "error": "cannot read"})

    again = RunManifest(run, model)  # a new process reading the saved manifest
    assert [c.case_id for c in again.plan(cases)] == ["bad"]
    assert again.records["bad"].attempts == 1 and again.records["ct"].status == "done"
    assert not list(run.glob(".*tmp*"))  # atomic writes leave no temporary file behind
    assert [c.case_id for c in RunManifest(run, {**model, "weights_sha256": "other"}).plan(cases)] == ["bad", "ct"]
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((2, 4, 4), np.int16)), str(volume))  # the input changed
    assert "ct" in [c.case_id for c in RunManifest(run, model).plan(cases)]
    (run / "cases" / "ct.seg.nrrd").unlink()  # an output went missing
    stored = json.loads((run / "manifest.json").read_text())
    assert stored["model"] == model and set(stored["cases"]) == {"bad", "ct"}


def test_report_counts_throughput_and_organ_statistics():
    from sammed_server.batch.manifest import CaseRecord

    records = [CaseRecord("a", "a.nii", "file", "s", "done", seconds={"read": 1, "infer": 3, "write": 1},
                          organ_volumes_ml={"liver": 1000.0}),
               CaseRecord("b", "b.nii", "file", "s", "done", seconds={"read": 3, "infer": 5, "write": 1},
                          organ_volumes_ml={"liver": 1500.0}),
               CaseRecord("c", "c.nii", "file", "s", "failed", error="2D image")]
    report = build_report(records, 60.0, 3, {"model_id": "m"}, 1)
    assert (report["done"], report["failed"], report["cases_per_minute"]) == (2, 1, 3.0)
    assert report["mean_seconds"] == {"read": 2.0, "infer": 4.0, "write": 1.0}
    assert report["organ_volume_ml"]["liver"] == {"n": 2, "mean": 1250.0, "sd": 250.0, "median": 1250.0,
                                                  "min": 1000.0, "max": 1500.0}
    assert report["failures"] == {"c": "2D image"}


def test_without_ray_batch_says_how_to_install_it(tmp_path):
    code = ("import sys; sys.modules['ray'] = None\n"
            "from sammed_server.cli import main\n"
            f"sys.exit(main(['batch', '--auto', 'any', '{tmp_path}', '-o', '{tmp_path / 'run'}']))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "runs on Ray, which is not installed" in result.stderr
    assert 'pip install "sammed-server[cluster]"' in result.stderr
    assert not (tmp_path / "run").exists()


def test_too_few_cpus_for_the_workers_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, "-m", "sammed_server.cli", "batch", "--auto", "any", str(tmp_path),
                             "-o", str(tmp_path / "run"), "--num-cpus", "2", "--workers", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--num-cpus 2 leaves no CPU to read and write cases on" in result.stderr
    assert "give at least 3" in result.stderr and not (tmp_path / "run").exists()
