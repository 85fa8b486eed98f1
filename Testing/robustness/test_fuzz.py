"""Fuzz every route (issue row 8): no request may get a 5xx, and RSS ends within +10 % of where it started.

``make test`` runs a short pass (``$SAMMED_FUZZ_REQUESTS``, default 400); ``make fuzz`` runs 10,000 and writes
its figures to ``out/fuzz.json``.
"""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from harness import proc_status
from fuzz import Fuzzer, Tally

THREADS = 4
WARMUP_SEED, WARMUP_REQUESTS = 999, 100


def test_fuzzed_requests_get_no_5xx_and_memory_returns(worker, ct_path, data_root, reference_mask):
    total = int(os.environ.get("SAMMED_FUZZ_REQUESTS", "400"))
    pid = worker.pid()
    rss_before_warmup = proc_status(pid, "VmRSS")
    for _ in range(20):  # warm up: the predict path, one encode, the OpenAPI, then a short pass over every route
        worker.liver_mask()
    encode_once(worker)
    worker.request("GET", "/openapi.json")
    run(worker, ct_path, data_root, WARMUP_SEED, WARMUP_REQUESTS, Tally(), threading.Lock())
    rss_start = proc_status(pid, "VmRSS")
    tally = Tally()
    lock = threading.Lock()
    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(worker, ct_path, data_root, seed, total // THREADS, tally, lock))
               for seed in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.monotonic() - started
    for job in worker.request("GET", "/v1/jobs")[1]:
        if job["state"] in ("queued", "running"):
            worker.request("POST", f"/v1/jobs/{job['id']}/cancel")
    time.sleep(12)  # idle thread-pool threads exit after 10 s
    rss_end = proc_status(pid, "VmRSS")
    figures = {"requests": tally.requests, "seconds": round(seconds, 1), "server_errors": len(tally.server_errors),
               "statuses": dict(sorted(tally.statuses.items(), key=lambda item: str(item[0]))), "rss_before_warmup_mib": round(rss_before_warmup / 1024, 1),
               "rss_start_mib": round(rss_start / 1024, 1), "rss_end_mib": round(rss_end / 1024, 1),
               "threads_end": proc_status(pid, "Threads")}
    print("fuzz:", json.dumps(figures))
    if os.environ.get("SAMMED_FUZZ_REPORT"):
        Path(os.environ["SAMMED_FUZZ_REPORT"]).parent.mkdir(parents=True, exist_ok=True)
        Path(os.environ["SAMMED_FUZZ_REPORT"]).write_text(json.dumps(figures, indent=2))
    assert worker.alive()
    assert not tally.server_errors, "\n".join(tally.server_errors[:20])
    assert tally.requests == THREADS * (total // THREADS) and tally.statuses["retried"] <= total // 1000
    assert rss_end <= rss_start * 1.10, figures
    worker.register_ct()
    np.testing.assert_array_equal(worker.liver_mask(), reference_mask)


def encode_once(worker) -> None:
    """A predict on a slice no cache holds: the encoder's working memory is part of the baseline."""
    array = np.random.default_rng(int(time.time())).integers(0, 255, (1, 48, 48), dtype=np.uint8)
    meta = {"shape": list(array.shape), "dtype": "uint8", "spacing": [1, 1, 1]}
    status, body = worker.request("POST", "/v1/volumes", zlib.compress(array.tobytes()),
                                  {"Content-Type": "application/octet-stream", "X-SAMMed-Volume": json.dumps(meta)})
    assert status == 200, body
    status, body = worker.request("POST", f"/v1/volumes/{body['id']}/predict", {"index": 0, "box": [5, 5, 40, 40]})
    assert status == 200 and body["cached"] is False, body


def run(worker, ct_path, data_root, seed: int, count: int, tally: Tally, lock: threading.Lock) -> None:
    """``count`` fuzzed requests on one keep-alive connection (a new one after the worker closes it)."""
    fuzzer = Fuzzer(worker.ct_id, str(ct_path), str(data_root), seed)
    connection = http.client.HTTPConnection(worker.host, worker.port, timeout=120)
    for n in range(count):
        method, path, body, headers = fuzzer.next()
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        for attempt in range(2):
            reused = connection.sock is not None
            try:
                connection.request(method, path, body=data, headers=headers)
                response = connection.getresponse()
                payload = response.read()
                status = response.status
                if response.will_close:
                    connection.close()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                connection.close()
                status, payload = 0, repr(exc).encode()
                if not reused or attempt:  # a kept-alive connection the server closed meanwhile: once more, anew
                    break
                with lock:
                    tally.statuses["retried"] += 1
        with lock:
            tally.requests += 1
            tally.statuses[status] += 1
            if status >= 500 or status == 0:
                tally.server_errors.append(f"{status} {method} {path[:80]} {str(body)[:200]} -> {payload[:300]!r}")
        if n % 200 == 199:
            worker.register_ct()  # uploads may have pushed the CT out of the held volumes
    connection.close()
