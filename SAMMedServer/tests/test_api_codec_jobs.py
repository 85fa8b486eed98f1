"""Wire encodings and the job manager (no model needed)."""

from __future__ import annotations

import base64
import threading
import time
import zlib

import numpy as np
import pytest

from sammed_server.api import codec
from sammed_server.api.jobs import JobManager, UnknownJobError
from sammed_server.api.schemas import EncodedArray
from sammed_server.api.service import outward_order
from sammed_server.errors import CancelledError, InputError


@pytest.mark.parametrize("shape", [(1, 101, 122), (3, 7, 5), (1, 1, 1), (2, 64, 64)])
def test_mask_roundtrip_keeps_every_bit(shape):
    mask = np.random.default_rng(0).random(shape) > 0.5
    encoded = codec.encode_mask(mask)
    assert encoded.dtype == "bool" and encoded.shape == list(shape)
    np.testing.assert_array_equal(codec.decode_array(EncodedArray.model_validate_json(encoded.model_dump_json())), mask)


def test_mask_payload_is_small_for_a_blob():
    mask = np.zeros((512, 512), bool)
    mask[100:300, 150:320] = True
    assert len(codec.encode_mask(mask).data) < 1000  # 32 KiB of bits before compression


def test_float_roundtrip_is_float16_exact():
    logits = np.random.default_rng(1).normal(0, 5, (256, 256)).astype(np.float32)
    decoded = codec.decode_array(codec.encode_float(logits))
    np.testing.assert_array_equal(decoded, logits.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    "encoded, words",
    [
        (EncodedArray(shape=[4, 4], dtype="bool", data="not base64!"), "base64"),
        (EncodedArray(shape=[4, 4], dtype="bool", data=base64.b64encode(b"plain").decode()), "zlib"),
        (EncodedArray(shape=[64, 64], dtype="bool", data=base64.b64encode(zlib.compress(b"\0" * 3)).decode()), "do not fit"),
        (EncodedArray(shape=[4, 4], dtype="float32", data=base64.b64encode(zlib.compress(b"\0" * 64)[:-4]).decode()), "truncated"),
    ],
)
def test_bad_arrays_are_input_errors_naming_the_field(encoded, words):
    with pytest.raises(InputError, match=f"mask_input.*{words}"):
        codec.decode_array(encoded, "mask_input")


def test_a_compression_bomb_is_cut_off():
    bomb = zlib.compress(b"\0" * 50_000_000)
    with pytest.raises(InputError, match="needs 1000"):
        codec.decode_volume(bomb, (10, 10, 10), "uint8", "zlib")


def test_volume_body_decodes_little_endian_c_order():
    array = np.arange(24, dtype="<i2").reshape(2, 3, 4)
    decoded = codec.decode_volume(zlib.compress(array.tobytes()), (2, 3, 4), "int16", "zlib")
    np.testing.assert_array_equal(decoded, array)
    with pytest.raises(InputError, match="dtype"):
        codec.decode_volume(array.tobytes(), (2, 3, 4), "complex64", "none")


def test_outward_order_starts_at_the_focus():
    assert outward_order(range(6), 3) == [3, 2, 4, 1, 5, 0]
    assert outward_order([0, 9], 8) == [9, 0]


def _wait(job, states=("succeeded", "failed", "cancelled"), timeout=10.0):
    deadline = time.monotonic() + timeout
    while job.status().state not in states:
        assert time.monotonic() < deadline, f"job stuck in {job.status().state}"
        time.sleep(0.01)
    return job.status()


def test_job_reports_progress_log_and_result():
    manager = JobManager()

    def work(ctx):
        for i in range(4):
            ctx.progress(i + 1, 4)
            ctx.log(f"step {i}")
        return {"answer": 42}

    status = _wait(manager.submit("demo", work))
    assert status.state == "succeeded" and status.progress == 1.0 and status.result == {"answer": 42}
    assert any("step 3" in line for line in status.log) and status.error is None
    assert status.started is not None and status.finished >= status.started
    manager.shutdown()


def test_failures_become_the_error_model():
    manager = JobManager()

    def bad_input(ctx):
        raise InputError("slice 99 is outside", "pick another")

    def bug(ctx):
        raise ZeroDivisionError("oops")

    failed = _wait(manager.submit("demo", bad_input))
    assert failed.state == "failed" and failed.error.code == "invalid_input" and failed.error.hint == "pick another"
    crashed = _wait(manager.submit("demo", bug))
    assert crashed.state == "failed" and crashed.error.code == "internal_error" and "ZeroDivisionError" in crashed.error.message
    manager.shutdown()


def test_cancel_running_and_queued_jobs():
    manager = JobManager(workers=1)
    started = threading.Event()

    def wait_for_cancel(ctx):
        started.set()
        if not ctx.cancel_event.wait(10):
            return {"finished": True}
        raise CancelledError("stopped by the user")

    running = manager.submit("demo", wait_for_cancel)
    queued = manager.submit("demo", wait_for_cancel)
    assert started.wait(5)
    assert manager.cancel(queued.id).status().state == "cancelled"  # never started
    manager.cancel(running.id)
    status = _wait(running)
    assert status.state == "cancelled" and status.error.code == "cancelled"
    assert queued.status().started is None
    manager.shutdown()


def test_same_key_joins_the_running_job_and_focus_is_taken_once():
    manager = JobManager()
    release, seen = threading.Event(), []

    def work(ctx):
        release.wait(5)
        seen.extend([ctx.take_focus(), ctx.take_focus()])
        return {}

    first = manager.submit("embed", work, key="k", focus=3)
    again = manager.submit("embed", work, key="k", focus=7)
    other = manager.submit("embed", work, key="other")
    assert again is first and other is not first
    release.set()
    _wait(first)
    assert seen[:2] == [7, None]
    assert _wait(other).state == "succeeded"
    assert manager.submit("embed", work, key="k") is not first  # a finished job is not reused
    with pytest.raises(UnknownJobError):
        manager.get("nope")
    manager.shutdown()


def test_absurd_shapes_are_refused_before_any_allocation():
    huge = EncodedArray(shape=[65536, 65536, 65536, 65536], dtype="float32", data="")
    with pytest.raises(InputError, match="too large"):
        codec.decode_array(huge, "mask_input")
    with pytest.raises(ValueError):
        EncodedArray(shape=[-1, 4], dtype="bool", data="")
