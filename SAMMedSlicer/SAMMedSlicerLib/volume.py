"""A volume node as the worker sees it: its ``(K, J, I)`` voxel array and its ITK (LPS) geometry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import vtk
from vtkmodules.util import numpy_support

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_numpy(matrix: Any) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4×4 array."""
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_ras(volume_node: Any) -> np.ndarray:
    """The volume's voxel → world (RAS) matrix, including a linear parent transform."""
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    result = to_numpy(matrix)
    parent = volume_node.GetParentTransformNode()
    if parent is not None:
        to_world = vtk.vtkMatrix4x4()
        if not parent.GetMatrixTransformToWorld(to_world):
            raise ValueError(f"{volume_node.GetName()} is under a non-linear transform: harden it first")
        result = to_numpy(to_world) @ result
    return result


def dims_ijk(volume_node: Any) -> tuple[int, int, int]:
    return tuple(volume_node.GetImageData().GetDimensions())  # type: ignore[return-value]


def voxel_array(volume_node: Any) -> np.ndarray:
    """A copy of the voxels as a ``(K, J, I)`` array (first component of multi-component images)."""
    image = volume_node.GetImageData()
    values = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    if values.ndim == 2:
        values = values[:, 0]
    return values.reshape(dims_ijk(volume_node)[::-1]).copy()


@dataclass(frozen=True)
class Geometry:
    """ITK/LPS geometry: spacing and origin in (I, J, K) / (x, y, z) order, direction 3×3 row-major."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def lps_geometry(ijk_to_ras_matrix: np.ndarray) -> Geometry:
    """Slicer's RAS IJK→RAS matrix as the worker's LPS spacing / origin / direction."""
    linear = RAS_TO_LPS @ np.asarray(ijk_to_ras_matrix, float)[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    origin = RAS_TO_LPS @ np.asarray(ijk_to_ras_matrix, float)[:3, 3]
    direction = linear / spacing
    return Geometry(tuple(spacing.tolist()), tuple(origin.tolist()), tuple(direction.ravel().tolist()))  # type: ignore[arg-type]
