"""The Slicer module's client against the real worker on 127.0.0.1: Dice through HTTP, concurrency, errors."""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SAMMedSlicer"))

from SAMMedSlicerLib import client as client_module  # noqa: E402
from SAMMedSlicerLib.client import (  # noqa: E402
    AuthenticationError, ConnectionFailedError, InvalidRequestError, JobFailedError, NotFoundError,
    ProtocolMismatchError, SAMMedClient,
)
from sammed_server.api.launch import ServerProcess  # noqa: E402
from sammed_server.engine.prompts import SlicePrompts  # noqa: E402
from sammed_server.engine.volume import load_volume  # noqa: E402
from sammed_server.evaluation.metrics import dice  # noqa: E402
from sammed_server.evaluation.prompt_simulation import largest_slice, tight_box  # noqa: E402

TOKEN = "e2e-token"
ORGANS = ("liver", "spleen", "kidney_right")


@pytest.fixture(scope="module")
def server(shared_cache_dir):
    with ServerProcess(["--token", TOKEN], env={"SAMMED_CACHE_DIR": str(shared_cache_dir)}) as process:
        yield process


@pytest.fixture(scope="module")
def client(server):
    return SAMMedClient(server.url, token=TOKEN, timeout=120)


@pytest.fixture(scope="module")
def ct_image(ct_path):
    return sitk.ReadImage(str(ct_path))


@pytest.fixture(scope="module")
def volume(client, ct_image):
    return client.upload_volume(
        sitk.GetArrayFromImage(ct_image), ct_image.GetSpacing(), ct_image.GetOrigin(), ct_image.GetDirection()
    )


@pytest.fixture(scope="module")
def organ_prompts(ct_labels_path, label_names):
    """{organ: (axial slice with the most of it, its box (+2 px), its reference mask)}."""
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(ct_labels_path)))
    values = {name: value for value, name in label_names["example_seg.nii.gz"].items()}
    prompts = {}
    for organ in ORGANS:
        mask = labels == values[organ]
        index = largest_slice(mask)
        prompts[organ] = (index, tight_box(mask[index], 2.0), mask[index])
    return prompts


def test_health_and_models(client):
    health = client.health()
    assert health.protocol == client_module.PROTOCOL_VERSION and health.service == "sammed-server"
    assert health.auth and "litemedsam" in health.models_loaded
    models = {model.id: model for model in client.models()}
    assert models["litemedsam"].default and models["litemedsam"].box_only


def test_volume_is_sent_once(client, volume, ct_image, monkeypatch):
    assert volume.shape_ijk == ct_image.GetSize() and volume.spacing == ct_image.GetSpacing()
    sent = []
    original = client._call
    monkeypatch.setattr(client, "_call", lambda method, path, *a, **k: sent.append((method, path)) or original(method, path, *a, **k))
    again = client.upload_volume(sitk.GetArrayFromImage(ct_image), ct_image.GetSpacing())
    assert again.id == volume.id and again.created is False
    assert sent == [("GET", f"/volumes/{volume.id}")]  # the hash matched: no upload


def test_dice_through_http_matches_the_engine(client, volume, organ_prompts, ct_path, predictor):
    prepared = predictor.prepare(load_volume(ct_path))
    for organ, (index, box, reference) in organ_prompts.items():
        result = client.predict(volume.id, axis=2, index=index, box=box)
        engine = predictor.predict(prepared, 2, index, SlicePrompts(box=box))
        assert result.mask.shape == reference.shape and result.mask.dtype == np.bool_
        np.testing.assert_array_equal(result.masks, engine.masks)
        score = dice(result.mask, reference)
        print(f"{organ}: slice {index}, Dice {score:.3f} (HTTP) = {dice(engine.masks[engine.best], reference):.3f} (engine)")
        assert score >= 0.90, organ


def test_concurrent_predicts_while_an_embedding_job_runs(client, volume, organ_prompts):
    requests = []
    for index, box, _ in organ_prompts.values():
        x0, y0, x1, y1 = box
        requests.append({"index": index, "box": box})
        requests.append({"index": index, "box": box, "points": [((x0 + x1) / 2, (y0 + y1) / 2)], "labels": [1]})
    reference = [client.predict(volume.id, axis=2, **r).masks for r in requests]  # also caches the slices
    job_id = client.start_embedding(volume.id, axis=1, focus=50)  # 101 coronal slices: minutes on a CPU
    errors, mismatches, done = [], [], []

    def worker(seed: int) -> None:
        own = SAMMedClient(client.base_url, token=TOKEN) if seed % 2 else client  # shared and private clients
        order = np.random.default_rng(seed).integers(0, len(requests), 60)
        for k in order:
            try:
                result = own.predict(volume.id, axis=2, **requests[k])
            except Exception as exc:  # every failure counts
                errors.append(repr(exc))
                continue
            if not np.array_equal(result.masks, reference[k]):
                mismatches.append(k)
            done.append(result.cached)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    during = client.job(job_id)
    client.cancel_job(job_id)
    with pytest.raises(JobFailedError) as failed:
        client.wait_job(job_id, poll=0.2, timeout=120)
    assert errors == [] and mismatches == [] and len(done) == 240 and all(done)
    assert during.state == "running" and 0 < during.progress < 1, "the embedding job must run during the predicts"
    assert failed.value.code == "cancelled" and failed.value.job.state == "cancelled"


def test_embedding_job_with_progress(client, volume, organ_prompts):
    cached = sorted({index for index, _, _ in organ_prompts.values()})
    job_id = client.start_embedding(volume.id, axis=2, slices=cached, focus=cached[-1])
    seen = []
    status = client.wait_job(job_id, poll=0.05, timeout=120, progress_cb=seen.append)
    assert status.state == "succeeded" and status.result["encoded"] == 0 and status.result["slices"] == len(cached)
    assert seen[-1].progress == 1.0 and status in seen


def test_errors_arrive_as_exceptions(client, volume, server):
    with pytest.raises(InvalidRequestError) as error:
        client.predict(volume.id, axis=2, index=500, box=(1, 1, 5, 5))
    assert error.value.code == "invalid_input" and "outside the volume" in error.value.message
    with pytest.raises(InvalidRequestError) as error:
        client.predict(volume.id, axis=2, index=3, points=[(5, 5)], labels=[0])
    assert "select nothing" in error.value.message and error.value.hint
    with pytest.raises(InvalidRequestError) as error:
        client.predict(volume.id, axis=7, index=3, box=(1, 1, 5, 5))
    assert error.value.code == "validation_error" and error.value.field == "axis" and error.value.status == 422
    with pytest.raises(NotFoundError) as error:
        client.predict("0" * 32, axis=2, index=3, box=(1, 1, 5, 5))
    assert error.value.code == "unknown_volume"
    with pytest.raises(NotFoundError):
        client.job("nope")
    with pytest.raises(AuthenticationError) as error:
        SAMMedClient(server.url, token="wrong").health()
    assert "wrong API token" in str(error.value)
    with pytest.raises(AuthenticationError):
        SAMMedClient(server.url).models()
    assert client.health().protocol == 1


def test_protocol_mismatch_is_a_clear_error(server, monkeypatch):
    monkeypatch.setattr(client_module, "PROTOCOL_VERSION", 99)
    with pytest.raises(ProtocolMismatchError) as error:
        SAMMedClient(server.url, token=TOKEN).models()
    assert "speaks protocol 1, but this SAMMed module speaks protocol 99" in error.value.message
    assert "same SAMMed release" in error.value.hint


def test_not_a_sammed_server_and_no_server(tmp_path):
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ProtocolMismatchError, match="is not a SAMMed server"):
            SAMMedClient(f"http://127.0.0.1:{other.server_address[1]}").health()
    finally:
        other.shutdown()
        other.server_close()
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError, match="cannot talk to the SAMMed server") as error:
        SAMMedClient(f"http://127.0.0.1:{other.server_address[1]}", retries=2).health()
    assert error.value.code == "connection_failed" and time.monotonic() - started >= 0.7  # retried with backoff


def test_idle_keep_alive_connection_is_reopened(server, volume):
    client = SAMMedClient(server.url, token=TOKEN, retries=0)  # no retries: only the reconnect can save the call
    client.health()
    client._local.connection.sock.shutdown(socket.SHUT_RDWR)  # as if the server had dropped the idle connection
    assert client.volume(volume.id).id == volume.id
