"""DICOM SEG: dcmqi's liver SEG reads back as exactly its liver_seg.nrrd (voxels and geometry); a SEG we write for
that series reads back the same through highdicom and through plain pydicom, and dciodvfy finds no error in it."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sammed_server.engine.dicom_seg import read_dicom_seg, read_series, write_dicom_seg
from sammed_server.engine.organ_codes import organ_code
from sammed_server.engine.segmentation_file import Segment
from sammed_server.engine.volume import load_volume


@pytest.fixture(scope="module")
def dcmqi(data):
    folder = data / "dcmqi-ct-seg"
    if not (folder / "liver_SEG.dcm").is_file():
        pytest.skip(f"no dcmqi-ct-seg in {data}")
    return folder


@pytest.fixture(scope="module")
def series(dcmqi):
    """The CT series as the batch reads it: GDCM's slice order, the volume and the source datasets."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(dcmqi / "ct_dicom"))
    return files, load_volume(dcmqi / "ct_dicom"), read_series(files)


def dciodvfy_path() -> str:
    """dciodvfy (Debian dicom3tools), installed with apt-get when absent and possible."""
    if not shutil.which("dciodvfy") and shutil.which("apt-get"):
        subprocess.run("apt-get update -qq && apt-get install -y -qq dicom3tools", shell=True, capture_output=True)
    if not shutil.which("dciodvfy"):
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed and could not be installed")
    return shutil.which("dciodvfy")


def assert_same_geometry(image: sitk.Image, volume) -> None:
    assert np.allclose(image.GetOrigin(), volume.origin, atol=1e-3)
    assert np.allclose(image.GetSpacing(), volume.spacing, atol=1e-5)
    assert np.allclose(image.GetDirection(), volume.direction, atol=1e-6)


def test_dcmqi_seg_reads_as_its_nrrd(dcmqi, series):
    _, volume, _ = series
    reference = sitk.ReadImage(str(dcmqi / "liver_seg.nrrd"))
    grid, segments = read_dicom_seg(dcmqi / "liver_SEG.dcm", volume)
    assert [s.name for s in segments] == ["Liver"]
    expected = sitk.GetArrayFromImage(reference) > 0
    assert expected.sum() > 1000 and np.array_equal(segments[0].mask, expected)
    assert_same_geometry(reference, grid)
    # without a reference the SEG's own grid (its frames run inferior-wards) holds the same voxels in space
    own_grid, own = read_dicom_seg(dcmqi / "liver_SEG.dcm")
    assert own_grid.direction[8] == -1.0
    resampled = sitk.Resample(own_grid.to_sitk(own[0].mask.astype(np.uint8)), reference, sitk.Transform(),
                              sitk.sitkNearestNeighbor)
    assert np.array_equal(sitk.GetArrayFromImage(resampled) > 0, expected)


def test_written_seg_reads_back_in_highdicom_and_pydicom(dcmqi, series, tmp_path):
    files, volume, source = series
    liver = read_dicom_seg(dcmqi / "liver_SEG.dcm", volume)[1][0].mask
    other = np.zeros_like(liver)
    other[1, 100:180, 300:420] = True  # one slice only: the other two frames of this segment are empty
    segments = [Segment("liver", liver, (0.9, 0.5, 0.4)), Segment("kidney_left", other, (0.2, 0.6, 0.9)),
                Segment("tumour_core", liver & other, (1.0, 1.0, 0.0))]
    path = write_dicom_seg(volume, segments, source, tmp_path / "out.seg.dcm")

    grid, back = read_dicom_seg(path, volume)
    assert [s.name for s in back] == ["liver", "kidney_left", "tumour_core"]
    for written, read in zip(segments, back):
        assert np.array_equal(written.mask, read.mask)
        assert np.allclose(written.color, read.color, atol=0.01)

    dataset = pydicom.dcmread(path)
    assert dataset.Modality == "SEG" and dataset.SegmentationType == "BINARY"
    assert dataset.StudyInstanceUID == source[0].StudyInstanceUID
    assert dataset.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    codes = [(item.SegmentedPropertyTypeCodeSequence[0].CodeValue, item.SegmentLabel) for item in dataset.SegmentSequence]
    assert codes == [("10200004", "liver"), ("64033007", "kidney_left"), ("91723000", "tumour_core")]
    modifier = dataset.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert modifier[0].CodeValue == "7771000"  # left
    # plain pydicom: each frame's segment number and source instance say where its bits go
    frames = dataset.pixel_array.reshape(-1, volume.array.shape[1], volume.array.shape[2])
    slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(source)}
    rebuilt = np.zeros((len(segments), *volume.array.shape), bool)
    for frame, item in zip(frames, dataset.PerFrameFunctionalGroupsSequence):
        number = item.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        rebuilt[number - 1, slice_of[uid]] = frame > 0
    assert all(np.array_equal(rebuilt[i], s.mask) for i, s in enumerate(segments))


def test_written_seg_passes_dciodvfy(dcmqi, series, tmp_path):
    _, volume, source = series
    liver = read_dicom_seg(dcmqi / "liver_SEG.dcm", volume)[1][0].mask
    path = write_dicom_seg(volume, [Segment("liver", liver, (0.9, 0.5, 0.4))], source, tmp_path / "liver.seg.dcm")
    result = subprocess.run([dciodvfy_path(), str(path)], capture_output=True, text=True)
    report = result.stdout + result.stderr
    assert "Segmentation" in report or "SEG" in report, report[:500]
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_a_seg_off_the_reference_grid_is_one_clear_error(dcmqi, data):
    from sammed_server.errors import InputError

    other = load_volume(data / "totalsegmentator" / "example_ct_sm.nii.gz")
    with pytest.raises(InputError, match="does not lie on the reference"):
        read_dicom_seg(dcmqi / "liver_SEG.dcm", other)


@pytest.mark.parametrize("name, value, side", [
    ("liver", "10200004", None), ("Spleen", "78961009", None), ("kidney_left", "64033007", "7771000"),
    ("right parotid", "45289007", "24028007"), ("vertebrae_L2", "51282000", None), ("rib_left_7", "113197003", "7771000"),
    ("right ventricle cavity", "53085002", None), ("mystery organ", "91723000", None),
])
def test_organ_codes(name, value, side):
    code = organ_code(name)
    assert code.category.value == "91723000" and code.type.value == value
    assert (code.laterality.value if code.laterality else None) == side
