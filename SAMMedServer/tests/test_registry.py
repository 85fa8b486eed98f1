"""Model registry: the real default model, and every way a checkpoint can be wrong."""

from __future__ import annotations

import shutil

import pytest
import torch

from sammed_server.engine.registry import REGISTRY, default_checkpoint_path, get_spec, load_backend
from sammed_server.errors import CheckpointError, UnknownModelError


def test_default_model_is_verified_litemedsam(backend):
    assert backend.model_id == "litemedsam"
    assert backend.weights_sha256 == REGISTRY["litemedsam"].sha256
    assert (backend.input_size, backend.embedding_size, backend.mask_input_size) == (256, 64, 256)
    out = backend.encode(torch.zeros(1, 3, 256, 256))
    assert out.shape == (1, 256, 64, 64) and out.dtype == torch.float16


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="unknown model 'sam_vit_x'") as info:
        get_spec("sam_vit_x")
    assert "litemedsam" in info.value.hint


def test_missing_checkpoint_names_file_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMMED_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(CheckpointError) as info:
        load_backend("sam_vit_b", device="cpu")
    message = str(info.value)
    assert "sam_vit_b_01ec64.pth" in message and REGISTRY["sam_vit_b"].sha256 in message
    assert "weights download sam_vit_b" in info.value.hint


def test_wrong_file_for_a_checksummed_model(tmp_path):
    fake = tmp_path / "sam_vit_b_01ec64.pth"
    fake.write_bytes(b"not the real checkpoint")
    with pytest.raises(CheckpointError, match="is not the sam_vit_b checkpoint"):
        load_backend("sam_vit_b", checkpoint=fake, device="cpu")


def test_checkpoint_of_another_architecture(tmp_path):
    """medsam has no fixed checksum, so the architecture check must catch a LiteMedSAM file given as MedSAM."""
    wrong = tmp_path / "medsam_vit_b.pth"
    shutil.copy(default_checkpoint_path(get_spec("litemedsam")), wrong)
    with pytest.raises(CheckpointError, match="does not fit model medsam"):
        load_backend("medsam", checkpoint=wrong, device="cpu")


def test_file_that_is_not_a_checkpoint(tmp_path):
    garbage = tmp_path / "medsam_vit_b.pth"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_backend("medsam", checkpoint=garbage, device="cpu")
