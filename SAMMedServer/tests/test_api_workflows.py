"""The workflow endpoints in-process: train (job with a loss curve → stored artefact), artefacts listing, predict
with a learned prompt encoder, propagate and auto-segment jobs, and their errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from sammed_server.api import codec
from sammed_server.api.app import create_app
from sammed_server.api.service import Service
from sammed_server.engine.volume import load_volume
from sammed_server.evaluation.metrics import dice

LIVER = 5


@pytest.fixture(scope="module")
def api(shared_cache_dir, tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAMMED_HOME", str(home))
        service = Service(cache_dir=shared_cache_dir)
        with TestClient(create_app(service), base_url="http://127.0.0.1", raise_server_exceptions=False) as client:
            yield client
        service.close()


@pytest.fixture(scope="module")
def ct_id(api, ct_path):
    response = api.post("/v1/volumes/from-path", json={"path": str(ct_path)})
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def liver(ct_labels_path):
    return load_volume(ct_labels_path).array == LIVER


def annotations(mask, indices):
    return {"axis": 2, "indices": list(indices), "masks": codec.encode_mask(mask[list(indices)]).model_dump()}


def wait(api, job, timeout=900):
    deadline = time.monotonic() + timeout
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = api.get(f"/v1/jobs/{job['id']}").json()
    return job


def test_train_prompt_encoder_job_then_click_with_it(api, ct_id, liver):
    """A point prompt encoder trained through the API: the job reports a falling loss curve, the artefact is
    listed, and a point-only predict segments the liver with it (without it, the base model's click search answers)."""
    response = api.post(f"/v1/volumes/{ct_id}/train", json={
        "kind": "prompt_encoder", "annotations": annotations(liver, [18, 24]), "name": "liver", "iterations": 40})
    assert response.status_code == 202, response.text
    job = wait(api, response.json())
    assert job["state"] == "succeeded", job
    losses = job["metrics"]["loss"]
    assert len(losses) == 40 and np.mean(losses[-5:]) < np.mean(losses[:5])
    artefact_id = job["result"]["artefact_id"]
    listed = api.get("/v1/artefacts", params={"kind": "prompt_encoders"}).json()
    assert [a["id"] for a in listed] == [artefact_id] and listed[0]["manifest"]["prompt_type"] == "point"

    rows, cols = np.nonzero(liver[24])
    center = [float(np.median(cols)), float(np.median(rows))]
    point = {"index": 24, "points": [center], "labels": [1]}
    searched = api.post(f"/v1/volumes/{ct_id}/predict", json=point)
    assert searched.status_code == 200, searched.text  # the box-only base model: the click search finds a box
    learned = api.post(f"/v1/volumes/{ct_id}/predict", json={**point, "prompt_encoder": artefact_id})
    assert learned.status_code == 200, learned.text
    mask = codec.decode_array(codec.EncodedArray(**learned.json()["masks"]))[0]
    assert dice(mask, liver[24]) > 0.3  # raw SAM from one point on LiteMedSAM: ≈ 0.01


def test_workflow_errors_are_clear(api, ct_id, liver):
    empty = np.zeros_like(liver)
    cases = [
        ("train", {"kind": "prompt_encoder", "annotations": annotations(empty, [3])}, 400, "empty"),
        ("train", {"kind": "prompt_encoder", "annotations": {**annotations(liver, [24]), "indices": [24, 25]}}, 400, "masks"),
        ("train", {"kind": "sapnet", "annotations": {**annotations(liver, [24]), "indices": [99]}}, 400, "outside"),
        ("auto-segment", {"artefact": "no-such-model"}, 404, "no-such-model"),
        ("propagate", {"index": 24, "mask": codec.encode_mask(empty[24]).model_dump()}, 400, "empty"),
        ("predict", {"index": 24, "box": [44, 27, 104, 81], "prompt_encoder": "missing-0"}, 404, "missing-0"),
    ]
    for route, body, status, word in cases:
        response = api.post(f"/v1/volumes/{ct_id}/{route}", json=body)
        assert response.status_code == status, (route, response.text)
        assert word in response.json()["error"]["message"], (route, response.json())
    assert api.get("/v1/artefacts", params={"kind": "weights"}).status_code == 400
