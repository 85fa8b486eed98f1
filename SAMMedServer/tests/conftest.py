"""Fixtures the engine tests share: the sample CT prepared for the real LiteMedSAM predictor, and its labelmap."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk


@pytest.fixture(scope="session")
def prepared(predictor, ct_path):
    """``example_ct_sm`` prepared for the shared predictor (default window)."""
    from sammed_server.engine.volume import load_volume

    return predictor.prepare(load_volume(ct_path))


@pytest.fixture(scope="session")
def labels(ct_labels_path) -> np.ndarray:
    """``example_seg`` as a (K, J, I) array on the CT's grid."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path)))
