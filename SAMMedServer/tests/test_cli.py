"""The CLI as users run it: real processes, real files; bad input is one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from sammed_server.engine.volume import load_volume
from sammed_server.evaluation.metrics import dice
from sammed_server.evaluation.prompt_simulation import tight_box


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sammed_server.cli", *args], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def cli_env(shared_cache_dir):
    import os

    return {**os.environ, "SAMMED_CACHE_DIR": str(shared_cache_dir)}


def assert_one_clear_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("sammed-server: error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr


def test_segment_writes_a_seg_nrrd_slicer_can_open(ct_path, ct_labels_path, tmp_path, cli_env):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path)))
    reference = labels[24] == 5
    x0, y0, x1, y1 = tight_box(reference, 2)
    out = tmp_path / "liver.seg.nrrd"
    result = cli("segment", str(ct_path), "--slice", "24", "--box", f"{x0},{y0},{x1},{y1}", "--name", "liver",
                 "--color", "0.8,0.3,0.2", "-o", str(out), env=cli_env)
    assert result.returncode == 0, result.stderr
    segmentation = slicerio.read_segmentation(str(out))
    volume = load_volume(ct_path)
    assert np.allclose(segmentation["ijkToLPS"][:3, 3], volume.origin)
    assert np.allclose(np.abs(segmentation["ijkToLPS"][:3, :3]), np.diag(volume.spacing))
    segment = segmentation["segments"][0]
    assert segment["name"] == "liver" and np.allclose(segment["color"], [0.8, 0.3, 0.2])
    mask = slicerio.extract_segments(segmentation, [("liver", 1)])["voxels"].transpose(2, 1, 0) > 0
    assert mask.shape == volume.array.shape and mask[23].sum() == 0
    assert dice(mask[24], reference) >= 0.90


def test_segment_writes_nifti_with_geometry(ct_path, tmp_path, cli_env):
    out = tmp_path / "box.nii.gz"
    result = cli("segment", str(ct_path), "--slice", "22", "--box", "60,30,100,70", "-o", str(out), env=cli_env)
    assert result.returncode == 0, result.stderr
    written, original = sitk.ReadImage(str(out)), sitk.ReadImage(str(ct_path))
    assert written.GetSize() == original.GetSize()
    assert np.allclose(written.GetDirection(), original.GetDirection()) and np.allclose(written.GetOrigin(), original.GetOrigin())


def test_bad_inputs_are_one_line_each(ct_path, tmp_path, cli_env):
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"garbage")
    flat = tmp_path / "flat.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.int16)), str(flat))
    nan = tmp_path / "nan.mha"
    array = np.zeros((3, 8, 8), np.float32)
    array[0, 0, 0] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(nan))
    wrong = tmp_path / "sam_vit_b_01ec64.pth"
    wrong.write_bytes(b"nope")
    out = str(tmp_path / "o.seg.nrrd")
    cases = [
        (["segment", str(broken), "--slice", "0", "--box", "1,1,5,5", "-o", out], "cannot read"),
        (["segment", str(flat), "--slice", "0", "--box", "1,1,5,5", "-o", out], "3D volume is needed"),
        (["segment", str(nan), "--slice", "0", "--box", "1,1,5,5", "-o", out], "NaN"),
        (["segment", str(ct_path), "--slice", "5", "--box", "300,300,400,400", "-o", out], "outside"),
        (["segment", str(ct_path), "--slice", "99", "--box", "1,1,5,5", "-o", out], "outside the volume"),
        (["segment", str(ct_path), "--slice", "5", "--box", "1,1,5,5", "--model", "sam_vit_q", "-o", out], "unknown model"),
        (["segment", str(ct_path), "--slice", "5", "--box", "1,1,5,5", "--model", "sam_vit_b",
          "--checkpoint", str(wrong), "-o", out], "is not the sam_vit_b checkpoint"),
        (["segment", str(ct_path), "--slice", "5", "--box", "1,1,5,5", "-o", str(tmp_path / "o.png")], "cannot write"),
    ]
    # the processes run side by side (each spends its seconds importing torch); each is checked on its own
    running = [(subprocess.Popen([sys.executable, "-m", "sammed_server.cli", *args], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=cli_env), args) for args, _ in cases]
    for (process, args), (_, text) in zip(running, cases):
        stdout, stderr = process.communicate(timeout=300)
        assert_one_clear_error(subprocess.CompletedProcess(args, process.returncode, stdout, stderr), text)


def test_embed_reports_cache_location(ct_path, tmp_path, cli_env):
    small = tmp_path / "three.nrrd"
    image = sitk.ReadImage(str(ct_path))[:, :, 10:12]
    sitk.WriteImage(image, str(small))
    first = cli("embed", str(small), env=cli_env)
    second = cli("embed", str(small), env=cli_env)
    assert first.returncode == 0 and "2 slice(s) encoded" in first.stdout
    assert "0 slice(s) encoded, 2 already cached" in second.stdout and cli_env["SAMMED_CACHE_DIR"] in second.stdout
