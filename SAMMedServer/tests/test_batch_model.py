"""The model a batch worker loads once: a SAP-Net with a learned prompt encoder (`batch --auto SAPNET --prompts
ENCODER`) gives exactly what SAM-auto gives in-process, and the manifest's model entry names both weights."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from sammed_server.batch.model import LoadedModel, resolve_model
from sammed_server.engine.volume import load_volume
from sammed_server.sammed.auto_segment import auto_segment
from sammed_server.sammed.learned_prompts import PromptTrainingConfig, save_prompt_encoder, train_prompt_encoder
from sammed_server.sammed.sapnet import SAPNetConfig, load_sapnet, save_sapnet, train_sapnet

SLICES = (7, 22)  # the annotated liver slices the SAP-Net tests use (their embeddings are in the shared cache)


def test_sapnet_with_prompt_encoder_segments_as_sam_auto(predictor, ct_path, ct_labels_path, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMMED_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAMMED_CACHE_DIR", str(predictor.cache.root))
    volume = load_volume(ct_path)
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path))) == 5
    prepared = predictor.prepare(volume)
    annotations = {k: liver[k] for k in SLICES}
    sapnet_id = save_sapnet(train_sapnet(predictor, prepared, 2, annotations, SAPNetConfig(iterations=10)), "liver",
                            prepared, 2, list(SLICES), predictor)
    encoder = train_prompt_encoder(predictor, prepared, 2, annotations, PromptTrainingConfig(prompt_type="box",
                                                                                             iterations=5))
    encoder_id = save_prompt_encoder(encoder, "liver", prepared, 2, list(SLICES), predictor)

    spec = resolve_model(sapnet_id, encoder_id, device="cpu")
    assert spec.kind == "sapnets" and spec.fingerprint()["model_id"] == f"{sapnet_id}+{encoder_id}"
    assert len(spec.fingerprint()["weights_sha256"]) == 64 + 1 + 64
    (segment,) = LoadedModel(spec).segment(volume)
    expected = auto_segment(predictor, prepared, 2, load_sapnet(sapnet_id, predictor.backend),
                            prompt_encoder=encoder.module.eval(), prompt="box").mask
    assert segment.name == "liver" and expected.sum() > 1000
    assert np.array_equal(segment.mask, expected)
