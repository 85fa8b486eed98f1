"""`sammed-server batch` as users run it: a real subprocess on a local Ray (2 CPUs, 1 worker), a model trained by
the CLI, and a cohort of 22 small real volumes (2–3 slice crops of ../shared/data in NIfTI/NRRD/MHA, a flipped copy,
DICOM series, a CSV list) of which 2 are broken. The first run is killed with SIGKILL after its first finished
case, the second completes it, the third — started the way the Slicer module starts it — only retries the 2 broken
cases. A real Orthanc PACS (Debian packages,
loopback, random ports) serves a series over DICOMweb; the SEG the batch stores back must equal its .seg.nrrd."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "SAMMedSlicer"))

from sammed_server.engine.dicom_seg import read_dicom_seg  # noqa: E402
from sammed_server.engine.volume import load_dicom_series, load_volume  # noqa: E402

pytest.importorskip("ray", reason="`batch` needs the cluster extra (pip install sammed-server[cluster])")

RAY_OPTIONS = ("--num-cpus", "2", "--workers", "1", "--object-store-mb", "100", "--device", "cpu")
BROKEN = {"broken__unreadable": "cannot read", "broken__flat": "2D"}


def cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sammed_server.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.fixture(scope="module")
def batch_env(shared_cache_dir) -> dict:
    home = shared_cache_dir / "batch-home"
    return {**os.environ, "SAMMED_CACHE_DIR": str(shared_cache_dir), "SAMMED_HOME": str(home)}


@pytest.fixture(scope="module")
def model_id(batch_env, ct_path, ct_labels_path) -> str:
    """A decoder-only liver + spleen model trained by the CLI on 2 slices (kept with the test cache)."""
    stored = sorted(Path(batch_env["SAMMED_HOME"]).glob("artefacts/auto_models/batch-test-*/manifest.json"))
    if stored:
        return stored[0].parent.name
    result = cli("train", "decoder", "--images", str(ct_path), "--labels", str(ct_labels_path), "--classes",
                 "5=liver,1=spleen", "--slices", "14,16", "--iterations", "50", "--name", "batch-test",
                 "--device", "cpu", env=batch_env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split(":")[0].strip()


def crop(image: sitk.Image, count: int = 2) -> sitk.Image:
    """``count`` slices from the middle of the last axis (physical geometry kept)."""
    start = image.GetSize()[2] // 2 - count // 2
    return image[:, :, start:start + count]


@pytest.fixture(scope="module")
def cohort(data, tmp_path_factory) -> dict:
    """22 cases: 20 readable crops (19 distinct slices to encode, the rest are copies) and 2 broken files."""
    root = tmp_path_factory.mktemp("cohort")
    tree, listed = root / "cohort", root / "listed"
    for folder in ("ct", "mr", "headneck", "cardiac", "broken", "dicom/head", "dicom/abdomen"):
        (tree / folder).mkdir(parents=True)
    listed.mkdir()
    ts = data / "totalsegmentator"
    ct = sitk.ReadImage(str(ts / "example_ct_sm.nii.gz"))[:, :, 15:17]
    for suffix in ("nii.gz", "nrrd", "mha"):
        sitk.WriteImage(ct, str(tree / "ct" / f"ct.{suffix}"))
    flipped = sitk.Flip(ct, [True, False, False])  # same anatomy, array stored right-to-left
    for suffix in ("nii.gz", "nrrd"):
        sitk.WriteImage(flipped, str(tree / "ct" / f"ct_flipped.{suffix}"))
    mr = crop(sitk.ReadImage(str(ts / "example_mr_sm.nii.gz")))
    for suffix in ("nii.gz", "mha", "nrrd"):
        sitk.WriteImage(mr, str(tree / "mr" / f"mr.{suffix}"))
    for n in (1, 2, 3):
        head_neck = crop(sitk.ReadImage(str(data / "openkbp-headneck-ct" / f"pt_{n}_ct.nii.gz")))
        sitk.WriteImage(head_neck, str(tree / "headneck" / f"pt_{n}.nii.gz"))
        sitk.WriteImage(head_neck, str(listed / f"pt_{n}.mha"))
    cardiac = crop(sitk.ReadImage(str(data / "acdc-cine-mr" / "patient001_frame01_img.nii.gz")))
    for suffix in ("nii.gz", "nrrd"):
        sitk.WriteImage(cardiac, str(tree / "cardiac" / f"patient001.{suffix}"))
    head_files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(data / "slicer-ctheadaxial-dicom"))
    for name in head_files[45:47]:
        shutil.copy(name, tree / "dicom" / "head")
    for name in sorted((data / "dcmqi-ct-seg" / "ct_dicom").iterdir()):
        shutil.copy(name, tree / "dicom" / "abdomen")
    sitk.WriteImage(load_volume(tree / "dicom" / "head").to_sitk(), str(listed / "head.nrrd"))
    sitk.WriteImage(load_volume(tree / "dicom" / "abdomen").to_sitk(), str(listed / "abdomen.nrrd"))
    (tree / "broken" / "unreadable.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((16, 16), np.int16)), str(tree / "broken" / "flat.nrrd"))
    csv = root / "more.csv"
    csv.write_text("path\n" + "".join(f"listed/{p.name}\n" for p in sorted(listed.iterdir())))
    return {"inputs": [str(tree), str(csv)], "root": root, "cases": 22}


def read_manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture(scope="module")
def killed_then_finished(cohort, model_id, batch_env, tmp_path_factory) -> dict:
    """Run 1 killed (SIGKILL) as soon as a case is recorded done; run 2 on the same folder finishes the cohort."""
    run = tmp_path_factory.mktemp("run") / "cohort-run"
    command = [sys.executable, "-m", "sammed_server.cli", "batch", "--auto", model_id, *cohort["inputs"], "-o",
               str(run), *RAY_OPTIONS]
    process = subprocess.Popen(command, env=batch_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    at_kill = None
    deadline = time.monotonic() + 500
    while process.poll() is None and time.monotonic() < deadline:
        if (run / "manifest.json").is_file():
            manifest = read_manifest(run)
            if any(r["status"] == "done" for r in manifest["cases"].values()):
                process.send_signal(signal.SIGKILL)
                at_kill = manifest
                break
        time.sleep(0.05)
    process.wait(timeout=60)
    assert at_kill is not None, f"the first run ended before a case finished: {process.stderr.read()[-2000:]}"
    after_kill = read_manifest(run)
    time.sleep(2)  # let the killed run's Ray processes go (its reaper ends them)
    second = cli("batch", "--auto", model_id, *cohort["inputs"], "-o", str(run), *RAY_OPTIONS, env=batch_env)
    return {"run": run, "after_kill": after_kill, "second": second, "final": read_manifest(run)}


def test_a_killed_run_keeps_its_finished_cases(killed_then_finished):
    run, after_kill, final = killed_then_finished["run"], killed_then_finished["after_kill"], killed_then_finished["final"]
    done_at_kill = {cid: r for cid, r in after_kill["cases"].items() if r["status"] == "done"}
    assert 1 <= len(done_at_kill) < 22
    assert len(after_kill["cases"]) == 22  # the plan was saved before any work
    for case_id, record in done_at_kill.items():  # kept, not redone: same finish time, one attempt
        assert final["cases"][case_id]["finished"] == record["finished"]
        assert final["cases"][case_id]["attempts"] == 1
    assert not list(run.rglob(".tmp-*")) and not (run / ".dicomweb").exists()


def test_cohort_finishes_with_the_broken_cases_reported(killed_then_finished, cohort):
    run, second, final = killed_then_finished["run"], killed_then_finished["second"], killed_then_finished["final"]
    assert second.returncode == 1, second.stderr[-2000:]  # 1: some case failed
    assert "Traceback" not in second.stderr
    records = final["cases"]
    failed = {cid: r["error"] for cid, r in records.items() if r["status"] == "failed"}
    assert set(failed) == set(BROKEN)
    for case_id, reason in BROKEN.items():
        assert reason in failed[case_id] and "\n" not in failed[case_id]
        assert f"failed: {case_id}: " in second.stderr
    done = {cid: r for cid, r in records.items() if r["status"] == "done"}
    assert len(done) == 20
    done_at_kill = {cid for cid, r in killed_then_finished["after_kill"]["cases"].items() if r["status"] == "done"}
    workers = {r["worker"] for cid, r in done.items() if cid not in done_at_kill}
    assert len(workers) == 1  # the second run's one Ray worker did all its cases (its model loaded once)
    report = json.loads((run / "report.json").read_text())
    assert (report["cases"], report["done"], report["failed"]) == (22, 20, 2)
    assert report["organ_volume_ml"]["liver"]["n"] == 20 and report["organ_volume_ml"]["liver"]["max"] > 10
    assert set(report["mean_seconds"]) == {"read", "infer", "write"}
    summary = (run / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("case,status,error") and len(summary) == 23
    sheet = sitk.ReadImage(str(run / "contact_sheet.png"))
    assert sheet.GetSize()[0] >= 6 * 160 and sheet.GetSize()[1] >= 4 * 160
    for case_id, record in done.items():
        assert record["model_id"] == report["model"]["model_id"] and len(record["weights_sha256"]) == 64
        assert len(record["content_sha256"]) == 64 and set(record["seconds"]) == {"read", "infer", "write"}
        source = Path(record["input"])
        volume = load_volume(source) if record["kind"] == "file" else load_dicom_series(
            sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source)))
        segmentation = slicerio.read_segmentation(str(run / record["outputs"]["seg_nrrd"]))
        matrix = segmentation["ijkToLPS"]
        assert np.allclose(matrix[:3, 3], volume.origin, atol=1e-4), case_id
        assert np.allclose(matrix[:3, :3], np.reshape(volume.direction, (3, 3)) @ np.diag(volume.spacing), atol=1e-4)
        assert [s["name"] for s in segmentation["segments"]] == ["liver", "spleen"]
        masks = {name: slicerio.extract_segments(segmentation, [(name, 1)])["voxels"].transpose(2, 1, 0) > 0
                 for name in ("liver", "spleen")}
        voxel_ml = float(np.prod(volume.spacing)) / 1000
        for name, mask in masks.items():
            assert mask.shape == volume.array.shape
            assert record["organ_volumes_ml"][name] == pytest.approx(mask.sum() * voxel_ml, abs=1e-3)
        if "dicom_seg" in record["outputs"]:  # DICOM in: DICOM SEG out, holding the same voxels
            _, segments = read_dicom_seg(run / record["outputs"]["dicom_seg"], volume)
            assert all(np.array_equal(s.mask, masks[s.name]) for s in segments)
        else:
            assert record["kind"] == "file" or case_id == "dicom__head"
    assert "dicom_seg" in done["dicom__abdomen"]["outputs"]
    # Slicer's CT head series has no Frame of Reference UID, which a SEG must share: .seg.nrrd only, and why
    assert done["dicom__head"]["notes"] == ["no DICOM SEG: the source series has no Frame of Reference UID"]
    ct = [done[c]["organ_volumes_ml"]["liver"] for c in ("ct__ct", "ct__ct-2", "ct__ct-3")]
    assert ct[0] > 10 and ct[0] == ct[1] == ct[2]  # format copies: the same result


def test_rerun_from_slicer_only_retries_the_failed_cases(killed_then_finished, cohort, model_id, batch_env):
    """The third run is started as the Slicer module starts it (SAMMedSlicerLib.batch), polled until it ends."""
    from SAMMedSlicerLib.batch import BatchJob, batch_command

    run, before = killed_then_finished["run"], killed_then_finished["final"]
    command = batch_command(sys.executable, model_id, cohort["inputs"], str(run), workers=1, device="cpu",
                            extra=RAY_OPTIONS[:2] + RAY_OPTIONS[4:6])
    job = BatchJob(command, run, env=batch_env)
    job.start()
    seen = []
    while (progress := job.progress()).running:
        seen.append(progress)
        time.sleep(0.2)
    assert progress.returncode == 1, job.log.read_text()[-2000:]
    assert (progress.total, progress.done, progress.failed) == (22, 20, 2)
    assert seen and all(p.total == 22 and p.done == 20 for p in seen)  # finished cases never go back
    finished = job.finished_cases()
    assert len(finished) == 20 and all(case.segmentation.is_file() for case in finished)
    assert set(job.failures()) == set(BROKEN)
    after = read_manifest(run)
    report = json.loads((run / "report.json").read_text())
    assert report["ran_this_time"] == 2 and report["done"] == 20
    for case_id, record in after["cases"].items():
        if case_id in BROKEN:
            assert record["attempts"] == before["cases"][case_id]["attempts"] + 1 and record["status"] == "failed"
        else:
            assert record == before["cases"][case_id]
    assert "20 done, 2 failed of 22 case(s); 2 run now" in job.log.read_text()


ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def orthanc(data, tmp_path_factory):
    """A real Orthanc with its DICOMweb plugin (Debian packages, installed when absent and possible) on loopback
    ports of its own, with its own storage, loaded with dcmqi's 3-slice CT series; yields the DICOMweb root URL."""
    import requests

    if not (shutil.which("Orthanc") and ORTHANC_PLUGIN.is_file()) and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc "
                       "orthanc-dicomweb", shell=True, capture_output=True)
    if not (shutil.which("Orthanc") and ORTHANC_PLUGIN.is_file()):
        pytest.skip("Orthanc and its DICOMweb plugin (Debian: orthanc, orthanc-dicomweb) are not installed")
    folder = tmp_path_factory.mktemp("orthanc")
    http = free_port()
    config = {"Name": "SAMMedTest", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
              "HttpPort": http, "DicomPort": free_port(), "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "Plugins": [str(ORTHANC_PLUGIN)],
              "DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "w")
    server = subprocess.Popen([shutil.which("Orthanc"), str(folder / "orthanc.json")], stdout=log, stderr=log)
    base = f"http://127.0.0.1:{http}"
    try:
        for _ in range(300):
            try:
                if requests.get(f"{base}/system", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
        for name in sorted((data / "dcmqi-ct-seg" / "ct_dicom").iterdir()):
            requests.post(f"{base}/instances", data=name.read_bytes(), timeout=30).raise_for_status()
        yield f"{base}/dicom-web"
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_dicomweb_series_in_seg_stored_back_equals_seg_nrrd(orthanc, data, model_id, batch_env, tmp_path):
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(data / "dcmqi-ct-seg" / "ct_dicom"))
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    run = tmp_path / "pacs-run"
    result = cli("batch", "--auto", model_id, "--dicomweb", orthanc, "--study", study, "-o", str(run),
                 *RAY_OPTIONS, env=batch_env)
    assert result.returncode == 0, result.stderr[-2000:]
    (record,) = read_manifest(run)["cases"].values()
    assert record["status"] == "done" and record["kind"] == "dicomweb"
    assert record["outputs"]["dicomweb_seg"].startswith(f"{orthanc}/studies/{study}/series/")

    web = DICOMwebClient(orthanc)
    (found,) = web.search_for_series(study, search_filters={"Modality": "SEG"})
    seg_series = found["0020000E"]["Value"][0]
    (stored,) = web.retrieve_series(study, seg_series)
    assert stored.Modality == "SEG" and stored.StudyInstanceUID == study
    assert stored.pixel_array.shape == (2 * 3, 512, 512)  # pydicom decodes it: 2 organs × 3 slices
    ct = load_dicom_series(files)
    _, segments = read_dicom_seg(stored, ct)  # highdicom, mapped onto the CT by geometry
    segmentation = slicerio.read_segmentation(str(run / record["outputs"]["seg_nrrd"]))
    matrix = segmentation["ijkToLPS"]
    assert np.allclose(matrix[:3, 3], ct.origin, atol=1e-4)
    assert np.allclose(matrix[:3, :3], np.reshape(ct.direction, (3, 3)) @ np.diag(ct.spacing), atol=1e-4)
    assert [s.name for s in segments] == [s["name"] for s in segmentation["segments"]] == ["liver", "spleen"]
    for segment in segments:
        nrrd = slicerio.extract_segments(segmentation, [(segment.name, 1)])["voxels"].transpose(2, 1, 0) > 0
        assert np.array_equal(segment.mask, nrrd)
    assert sum(s.mask.sum() for s in segments) > 0
