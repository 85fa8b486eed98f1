"""Prompts: markups positions in RAS → (axis, slice index, pixel x/y) on a volume's voxel grid, and their record.

Conventions are the worker's: a volume array is ``(K, J, I)``; ``axis`` is the IJK index of the slicing direction
(0 = I, 1 = J, 2 = K); a slice along ``axis`` has pixel coordinates ``(x, y)``:
axis 2: ``(i, j)``, axis 1: ``(i, k)``, axis 0: ``(j, k)``, in voxel-centre units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence

import numpy as np

PromptKind = Literal["positive", "negative", "box", "lasso", "scribble"]
REGION_KINDS = ("box", "lasso")  # the newest of them on a slice is its region prompt

IN_PLANE_AXES: dict[int, tuple[int, int]] = {2: (0, 1), 1: (0, 2), 0: (1, 2)}
"""For each slicing axis, the IJK indices that become slice pixel (x, y)."""


def slice_axis(ijk_to_ras: np.ndarray, normal_ras: Sequence[float]) -> int:
    """The IJK axis most parallel to a slice view's normal (RAS): 2 for Red on an axial scan, and so on.

    Uses the volume's voxel directions, so it also holds for volumes acquired in another orientation.
    """
    directions = np.asarray(ijk_to_ras, float)[:3, :3]
    directions = directions / np.linalg.norm(directions, axis=0)
    normal = np.asarray(normal_ras, float) / np.linalg.norm(normal_ras)
    return int(np.argmax(np.abs(directions.T @ normal)))


def ras_to_ijk(ras_to_ijk_matrix: np.ndarray, ras: Sequence[float]) -> np.ndarray:
    """Continuous IJK (voxel centres at integers) of a RAS position."""
    return (np.asarray(ras_to_ijk_matrix, float) @ np.array([*ras[:3], 1.0]))[:3]


@dataclass(frozen=True)
class SlicePoint:
    """A point on one slice: pixel ``(x, y)`` on slice ``index`` along ``axis``."""

    axis: int
    index: int
    x: float
    y: float


@dataclass(frozen=True)
class SliceBox:
    """A box on one slice, ``(x0, y0, x1, y1)`` through the corner pixels' centres."""

    axis: int
    index: int
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def corners(self) -> tuple[float, float, float, float]:
        return self.x0, self.y0, self.x1, self.y1


class OutsideVolumeError(ValueError):
    """The prompt does not fall on the volume."""


def point_on_slice(ras_to_ijk_matrix: np.ndarray, ras: Sequence[float], axis: int, dims_ijk: Sequence[int]) -> SlicePoint:
    """The slice through ``ras`` along ``axis`` and the point's pixel position on it.

    Raises OutsideVolumeError when the point is off the voxel grid (by more than half a voxel).
    """
    ijk = ras_to_ijk(ras_to_ijk_matrix, ras)
    if np.any(ijk < -0.5) or np.any(ijk > np.asarray(dims_ijk) - 0.5):
        raise OutsideVolumeError(f"the point at IJK {np.round(ijk, 1).tolist()} is outside the volume")
    ax_x, ax_y = IN_PLANE_AXES[axis]
    return SlicePoint(axis, int(round(ijk[axis])), float(ijk[ax_x]), float(ijk[ax_y]))


def box_on_slice(
    ras_to_ijk_matrix: np.ndarray, corners_ras: np.ndarray, center_ras: Sequence[float], axis: int, dims_ijk: Sequence[int]
) -> SliceBox:
    """The in-plane bounding box of an ROI's corners, clipped to the slice, on the slice through its centre."""
    ijk = np.array([ras_to_ijk(ras_to_ijk_matrix, corner) for corner in np.asarray(corners_ras, float)])
    center = ras_to_ijk(ras_to_ijk_matrix, center_ras)
    index = int(round(center[axis]))
    if not 0 <= index < dims_ijk[axis]:
        raise OutsideVolumeError(f"the box's slice {index} is outside the volume (axis {axis})")
    ax_x, ax_y = IN_PLANE_AXES[axis]
    x0, x1 = np.clip([ijk[:, ax_x].min(), ijk[:, ax_x].max()], 0, dims_ijk[ax_x] - 1)
    y0, y1 = np.clip([ijk[:, ax_y].min(), ijk[:, ax_y].max()], 0, dims_ijk[ax_y] - 1)
    if x1 <= x0 or y1 <= y0:
        raise OutsideVolumeError("the box does not overlap the volume on its slice")
    return SliceBox(axis, index, float(x0), float(y0), float(x1), float(y1))


@dataclass(frozen=True)
class SliceCurve:
    """A curve on one slice: its vertices ``(x, y)`` in slice pixels on slice ``index`` along ``axis``."""

    axis: int
    index: int
    vertices: tuple[tuple[float, float], ...]


def curve_on_slice(
    ras_to_ijk_matrix: np.ndarray, points_ras: np.ndarray, axis: int, dims_ijk: Sequence[int], closed: bool
) -> SliceCurve:
    """A curve's control points as pixels on the slice they lie in (a curve placed in a slice view lies in its
    plane). A ``closed`` curve (lasso) reaching past the image is clamped to its edge (it still outlines the part
    on the image); an open one (scribble) must lie on the image. Raises OutsideVolumeError otherwise, or when the
    points do not lie in one slice."""
    ijk = np.array([ras_to_ijk(ras_to_ijk_matrix, point) for point in np.asarray(points_ras, float).reshape(-1, 3)])
    across = np.round(ijk[:, axis]).astype(int)
    if across.min() != across.max():
        raise OutsideVolumeError(f"the curve crosses slices {across.min()}..{across.max()}: draw it in one slice view")
    index = int(across[0])
    if not 0 <= index < dims_ijk[axis]:
        raise OutsideVolumeError(f"the curve's slice {index} is outside the volume (axis {axis})")
    ax_x, ax_y = IN_PLANE_AXES[axis]
    xy = ijk[:, [ax_x, ax_y]]
    high = np.array([dims_ijk[ax_x], dims_ijk[ax_y]]) - 0.5
    if closed:
        xy = np.clip(xy, -0.5, high)
    elif np.any(xy < -0.5) or np.any(xy > high):
        raise OutsideVolumeError("the scribble reaches outside the volume")
    return SliceCurve(axis, index, tuple((float(x), float(y)) for x, y in xy))


@dataclass(frozen=True)
class Prompt:
    """One placed prompt: what it is, where it fell, and the markups control point it came from."""

    kind: PromptKind
    axis: int
    index: int
    coords: tuple[float, ...]  # (x, y) for points, (x0, y0, x1, y1) for a box, x0, y0, x1, y1, ... for a curve
    node_id: str
    point_id: str = ""

    @property
    def vertices(self) -> list[tuple[float, float]]:
        """The coordinates as (x, y) pairs (a curve's vertices)."""
        return list(zip(self.coords[0::2], self.coords[1::2]))


@dataclass
class SlicePrompts:
    """Everything prompted on one slice, in the form the worker's predict takes: points, and the newest box or
    lasso, and scribbles as ``(vertices, label)``."""

    points: list[tuple[float, float]]
    labels: list[int]
    box: Optional[tuple[float, float, float, float]]
    lasso: Optional[list[tuple[float, float]]] = None
    scribbles: list[tuple[list[tuple[float, float]], int]] = field(default_factory=list)

    @property
    def has_foreground(self) -> bool:
        """Whether anything here selects (a box, a lasso, a "+" point or scribble): "−" alone select nothing."""
        return self.box is not None or self.lasso is not None or 1 in self.labels or bool(self.scribbles)


class PromptLog:
    """The prompts in placement order (undo removes the last)."""

    def __init__(self) -> None:
        self._prompts: list[Prompt] = []

    def __len__(self) -> int:
        return len(self._prompts)

    def __iter__(self):
        return iter(self._prompts)

    def add(self, prompt: Prompt) -> None:
        self._prompts.append(prompt)

    def pop(self) -> Optional[Prompt]:
        return self._prompts.pop() if self._prompts else None

    def replace(self, old: Prompt, new: Prompt) -> None:
        """Put ``new`` where ``old`` is (a moved point keeps its place in the undo order)."""
        self._prompts[self._prompts.index(old)] = new

    def find(self, node_id: str, point_id: str) -> Optional[Prompt]:
        """The prompt that came from a markups control point, if any."""
        return next((p for p in self._prompts if p.node_id == node_id and p.point_id == point_id), None)

    def clear(self) -> None:
        self._prompts.clear()

    def on_slice_regions(self, axis: int, index: int) -> list[Prompt]:
        """The boxes and lassos placed on slice ``index`` along ``axis``, oldest first."""
        return [p for p in self._prompts if p.kind in REGION_KINDS and p.axis == axis and p.index == index]

    def on_slice(self, axis: int, index: int) -> SlicePrompts:
        """Points of both signs, scribbles, and the latest box or lasso placed on slice ``index`` along ``axis``."""
        here = [p for p in self._prompts if p.axis == axis and p.index == index]
        points = [p for p in here if p.kind in ("positive", "negative")]
        regions = [p for p in here if p.kind in REGION_KINDS]
        region = regions[-1] if regions else None
        return SlicePrompts(
            points=[(p.coords[0], p.coords[1]) for p in points],
            labels=[1 if p.kind == "positive" else 0 for p in points],
            box=tuple(region.coords) if region is not None and region.kind == "box" else None,  # type: ignore[arg-type]
            lasso=region.vertices if region is not None and region.kind == "lasso" else None,
            scribbles=[(p.vertices, 1) for p in here if p.kind == "scribble"],
        )
