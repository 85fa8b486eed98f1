"""Test helpers: the same physical voxels stored in another voxel order (axis permutation + flips)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from sammed_server.engine.volume import Volume, volume_from_array


def restored(volume: Volume, order: Sequence[int], flips: Sequence[bool], array: np.ndarray | None = None) -> Volume:
    """``volume`` (or ``array`` on its grid) stored with new IJK axis n = old axis ``order[n]``, reversed where
    ``flips[n]``: a different array, direction and origin, the same image in physical space."""
    ijk = np.asarray(volume.array if array is None else array).transpose(2, 1, 0).transpose(order)
    for n, flip in enumerate(flips):
        if flip:
            ijk = np.flip(ijk, n)
    old_direction = np.reshape(volume.direction, (3, 3))
    direction = np.stack([old_direction[:, order[n]] * (-1 if flips[n] else 1) for n in range(3)], axis=1)
    start = np.array([volume.shape_ijk[order[n]] - 1 if flips[n] else 0 for n in range(3)])
    old_start = np.zeros(3)
    old_start[list(order)] = start
    origin = np.asarray(volume.origin) + old_direction @ (old_start * np.asarray(volume.spacing))
    return volume_from_array(np.ascontiguousarray(ijk.transpose(2, 1, 0)), [volume.spacing[o] for o in order], origin,
                             direction.ravel())
