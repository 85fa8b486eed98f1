"""Volumes: loading (files and DICOM folders), validation, content hashing and IJK slicing.

Arrays are kept in SimpleITK/numpy order ``(K, J, I)``. Slicing axes are named by their IJK index
(0 = I, 1 = J, 2 = K). A slice is a 2D image with rows/cols and pixel coordinates ``(x, y)``:

=====  ==========  ====  ====
axis   slice       x     y
=====  ==========  ====  ====
2 (K)  a[k, :, :]  i     j
1 (J)  a[:, j, :]  i     k
0 (I)  a[:, :, i]  j     k
=====  ==========  ====  ====
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, VolumeReadError

AXIS_NAMES = ("I", "J", "K")
MAX_EXTENT = 4096  # voxels along one axis: also bounds an axis's slice count and so its embedding store


@dataclass(frozen=True)
class Volume:
    """A 3D scalar image with its physical geometry (LPS, as in ITK/DICOM) and a content hash."""

    array: np.ndarray = field(repr=False)
    spacing: tuple[float, float, float]  # (I, J, K) in mm
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 3x3 row-major, columns are the I, J, K directions
    content_hash: str

    @property
    def shape_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return i, j, k

    def num_slices(self, axis: int) -> int:
        return self.shape_ijk[check_axis(axis)]

    def slice(self, axis: int, index: int) -> np.ndarray:
        """The 2D image of slice ``index`` along IJK ``axis`` (rows = y, cols = x, see module doc)."""
        axis = check_axis(axis)
        if not 0 <= index < self.num_slices(axis):
            raise InputError(
                f"slice {index} is outside the volume: axis {AXIS_NAMES[axis]} has slices 0..{self.num_slices(axis) - 1}"
            )
        return self.array[slice_index(axis, index)]

    def slice_shape(self, axis: int) -> tuple[int, int]:
        """(rows, cols) of a slice along ``axis``."""
        i, j, k = self.shape_ijk
        return {0: (k, j), 1: (k, i), 2: (j, i)}[check_axis(axis)]

    def slice_spacing(self, axis: int) -> tuple[float, float]:
        """Pixel spacing (row, col) in mm of a slice along ``axis``."""
        si, sj, sk = self.spacing
        return {0: (sk, sj), 1: (sk, si), 2: (sj, si)}[check_axis(axis)]

    def to_sitk(self, array: np.ndarray | None = None) -> sitk.Image:
        """A SimpleITK image with this volume's geometry (and ``array`` as voxels, if given)."""
        image = sitk.GetImageFromArray(self.array if array is None else array)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def check_axis(axis: int) -> int:
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0 (I), 1 (J) or 2 (K), got {axis!r}")
    return axis


def slice_index(axis: int, index: int) -> tuple:
    """Numpy index selecting slice ``index`` along IJK ``axis`` of a ``(K, J, I)`` array."""
    return {0: (slice(None), slice(None), index), 1: (slice(None), index, slice(None)), 2: (index,)}[axis]


def content_hash(array: np.ndarray, spacing: Sequence[float]) -> str:
    """Hash of voxel values, dtype, shape and spacing: everything an embedding depends on."""
    digest = hashlib.sha256()
    digest.update(f"{array.dtype.str}|{array.shape}|{tuple(round(float(s), 6) for s in spacing)}".encode())
    digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()[:32]


def volume_from_array(
    array: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
) -> Volume:
    """Validate a ``(K, J, I)`` array and its geometry and wrap it as a :class:`Volume`."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D volume, got an array with {array.ndim} dimension(s) of shape {array.shape}")
    if min(array.shape) < 1:
        raise InputError(f"the volume is empty (shape {array.shape})")
    if max(array.shape) > MAX_EXTENT:
        raise InputError(f"the volume has {max(array.shape)} voxels along one axis; at most {MAX_EXTENT} are supported",
                         "crop or resample it")
    if array.dtype.kind not in "iuf" and array.dtype != np.bool_:
        raise InputError(f"voxel type {array.dtype} is not a scalar number type")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(f"the volume contains {bad} NaN or infinite voxel(s)", "fix or mask them before segmenting")
    spacing_t = tuple(float(s) for s in spacing)
    if len(spacing_t) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_t):
        raise InputError(f"spacing must be three positive numbers, got {tuple(spacing)}")
    origin_t = tuple(float(o) for o in origin)
    direction_t = tuple(float(d) for d in direction)
    if len(origin_t) != 3 or len(direction_t) != 9:
        raise InputError("origin needs 3 numbers and direction 9 (a row-major 3x3 matrix)")
    if abs(np.linalg.det(np.reshape(direction_t, (3, 3)))) < 1e-6:
        raise InputError("the direction matrix is singular")
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return Volume(array, spacing_t, origin_t, direction_t, content_hash(array, spacing_t))


def load_volume(path: str | Path, max_bytes: Optional[int] = None) -> Volume:
    """Read a NIfTI/NRRD/MHA/... file or a folder holding one DICOM series.

    With ``max_bytes`` a file whose header declares more voxel bytes is refused before its voxels are read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeReadError(f"no such file or folder: {path}")
    return _scalar_volume(_read_dicom_folder(path) if path.is_dir() else _read_file(path, max_bytes), path.name)


def load_dicom_series(files: Sequence[str | Path], name: str = "the DICOM series") -> Volume:
    """Read the DICOM files of one series, in the given (slice) order: slice k of the volume is ``files[k]``."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"cannot read {name}: {str(exc).strip()[:160]}") from None
    return _scalar_volume(image, name)


def _scalar_volume(image: sitk.Image, name: str) -> Volume:
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed"
        )
    if image.GetDimension() != 3 or image.GetSize()[2] == 1:
        shape = f"{image.GetDimension()}D" if image.GetDimension() != 3 else "single-slice (2D)"
        raise InputError(f"{name} is a {shape} image of size {image.GetSize()}; a 3D volume is needed")
    return volume_from_array(
        sitk.GetArrayViewFromImage(image).copy(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    )


def _read_file(path: Path, max_bytes: Optional[int] = None) -> sitk.Image:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        if max_bytes is not None:
            reader.ReadImageInformation()
            one_voxel = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
            declared = float(np.prod(reader.GetSize(), dtype=np.float64)) * sitk.GetArrayViewFromImage(one_voxel).nbytes
            if declared > max_bytes:
                raise InputError(f"{path.name} declares {declared / 2**20:.0f} MiB of voxels, more than this worker "
                                 f"reads ({max_bytes / 2**20:.0f} MiB)", "crop or resample it")
        return reader.Execute()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown format"
        raise VolumeReadError(f"cannot read {path}: not a readable image ({reason[:160]})") from None


def _read_dicom_folder(path: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise VolumeReadError(f"{path} is a folder without a DICOM series")
    files_by_series = {sid: reader.GetGDCMSeriesFileNames(str(path), sid) for sid in series}
    largest = max(files_by_series, key=lambda sid: len(files_by_series[sid]))
    reader.SetFileNames(files_by_series[largest])
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise VolumeReadError(f"cannot read the DICOM series in {path}: {str(exc).strip()[:160]}") from None
