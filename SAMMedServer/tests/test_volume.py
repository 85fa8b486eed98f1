"""Volumes: every supported format, every axis, and the bad inputs users actually have."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sammed_server.engine.volume import load_volume, volume_from_array
from sammed_server.errors import InputError, VolumeReadError


def test_nifti_geometry_and_axes(ct_path):
    volume = load_volume(ct_path)
    assert volume.shape_ijk == (122, 101, 30)
    assert volume.spacing == (3.0, 3.0, 3.0)
    assert volume.direction[0] == -1.0
    assert volume.slice(2, 10).shape == volume.slice_shape(2) == (101, 122)
    assert volume.slice(1, 50).shape == volume.slice_shape(1) == (30, 122)
    assert volume.slice(0, 60).shape == volume.slice_shape(0) == (30, 101)
    assert volume.slice(0, 60)[5, 7] == volume.array[5, 7, 60]  # (x, y) = (j, k) on an I slice


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_other_formats_give_the_same_volume(ct_path, tmp_path, suffix):
    original = load_volume(ct_path)
    path = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(ct_path)), str(path))
    copy = load_volume(path)
    assert copy.content_hash == original.content_hash
    assert np.allclose(copy.origin, original.origin) and copy.direction == original.direction


def test_dicom_folder(data):
    volume = load_volume(data / "slicer-ctheadaxial-dicom")
    assert volume.shape_ijk == (64, 64, 93)
    assert volume.spacing[2] == pytest.approx(1.5, abs=0.01)
    assert volume.slice_spacing(0) == pytest.approx((1.5, 3.2), abs=0.01)


def test_hash_depends_on_content_not_origin():
    array = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    a = volume_from_array(array, origin=(0, 0, 0))
    b = volume_from_array(array, origin=(5, 5, 5))
    c = volume_from_array(array + 1)
    assert a.content_hash == b.content_hash != c.content_hash


def test_unreadable_file(tmp_path):
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"this is not an image")
    with pytest.raises(VolumeReadError, match="cannot read"):
        load_volume(path)


def test_missing_file(tmp_path):
    with pytest.raises(VolumeReadError, match="no such file"):
        load_volume(tmp_path / "absent.nii.gz")


def test_2d_image_is_rejected(tmp_path):
    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((20, 30), np.int16)), str(path))
    with pytest.raises(InputError, match="3D volume is needed"):
        load_volume(path)


def test_nan_voxels_are_rejected(tmp_path):
    array = np.zeros((4, 5, 6), np.float32)
    array[1, 2, 3] = np.nan
    path = tmp_path / "nan.mha"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(InputError, match="1 NaN"):
        load_volume(path)


def test_bad_geometry_and_slice_index():
    with pytest.raises(InputError, match="spacing"):
        volume_from_array(np.zeros((2, 2, 2)), spacing=(1, 0, 1))
    with pytest.raises(InputError, match="singular"):
        volume_from_array(np.zeros((2, 2, 2)), direction=(1, 0, 0, 1, 0, 0, 0, 0, 1))
    volume = volume_from_array(np.zeros((3, 4, 5)))
    with pytest.raises(InputError, match="slices 0..2"):
        volume.slice(2, 3)
    with pytest.raises(InputError, match="axis"):
        volume.slice(3, 0)
