"""Web-page attacks and misbehaving clients (issue rows 5 and 7): DNS rebinding, cross-origin and "simple"
requests, slow and aborted requests. Afterwards the worker answers the reference mask."""

from __future__ import annotations

import socket
import time

import numpy as np

from harness import proc_status


def test_dns_rebinding_host_is_refused(worker, reference_mask):
    for host in (f"rebind.attacker.example:{worker.port}", "attacker.example", "127.0.0.1.nip.io", f"sammed.test.evil:{worker.port}"):
        status, body = worker.request("GET", "/v1/volumes", headers={"Host": host})
        assert status == 403 and body["error"]["code"] == "forbidden_host", (host, body)
        assert worker.request("POST", "/v1/jobs/x/cancel", headers={"Host": host})[0] == 403
    for host in (f"127.0.0.1:{worker.port}", f"localhost:{worker.port}", "[::1]", f"sammed.test:{worker.port}"):
        assert worker.request("GET", "/v1/volumes", headers={"Host": host})[0] == 200, host  # --allow-host sammed.test
    np.testing.assert_array_equal(worker.liver_mask(), reference_mask)


def test_cross_origin_and_simple_requests_are_refused(worker, reference_mask):
    own = f"http://127.0.0.1:{worker.port}"
    status, body = worker.request("GET", "/v1/volumes", headers={"Origin": "http://evil.example"})
    assert status == 403 and body["error"]["code"] == "forbidden_origin"
    assert worker.request("GET", "/v1/volumes", headers={"Origin": "null"})[0] == 403
    assert worker.request("GET", "/v1/volumes", headers={"Origin": f"http://localhost:{worker.port}"})[0] == 403
    assert worker.request("GET", "/v1/volumes", headers={"Origin": own})[0] == 200  # the worker's own origin
    # what a cross-site <form> or fetch() without preflight can send: no handler runs
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
        status, body = worker.request("POST", "/v1/jobs/x/cancel", b"", headers)
        assert status == 415 and body["error"]["code"] == "unsupported_media_type", content_type
        status, _ = worker.request("POST", "/v1/volumes/from-path", b'{"path": "/etc/passwd"}', headers)
        assert status == 415
    assert worker.request("POST", "/v1/jobs/x/cancel")[0] == 404  # with the JSON content type it reaches the handler
    np.testing.assert_array_equal(worker.liver_mask(), reference_mask)


def test_slow_and_aborted_clients_are_dropped_and_the_worker_returns_to_baseline(worker, reference_mask):
    """Half-sent headers and stalled bodies are closed after the timeouts (1 s, 2 s here); more than 32 open
    connections from one client are refused; aborted uploads leave no memory behind."""
    worker.liver_mask()
    threads_before, rss_before = proc_status(worker.pid(), "Threads"), proc_status(worker.pid(), "VmRSS")
    half_headers = [_connect(worker) for _ in range(32)]
    for sock in half_headers:
        sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never finished
    refused = _connect(worker)  # the 33rd from this client: answered 503 and closed
    assert refused.recv(4096).startswith(b"HTTP/1.1 503")
    time.sleep(2)
    for sock in half_headers:
        assert _closed_by_server(sock), "a connection with unfinished headers is still open"
    stalled = []
    for _ in range(20):  # a 64 MiB upload declared, 1 MiB sent, then silence; or the client hangs up
        sock = _connect(worker)
        sock.sendall(b"POST /v1/volumes HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
                     b'X-SAMMed-Volume: {"shape": [64, 1024, 1024], "dtype": "uint8", "spacing": [1, 1, 1], "compression": "none"}\r\n'
                     b"Content-Length: 67108864\r\n\r\n" + b"\1" * 2**20)
        stalled.append(sock)
    for sock in stalled[:10]:
        sock.close()
    time.sleep(4)
    for sock in stalled[10:]:
        assert _closed_by_server(sock), "a stalled upload's connection is still open"
    for sock in [refused] + half_headers + stalled:
        sock.close()
    np.testing.assert_array_equal(worker.liver_mask(), reference_mask)
    time.sleep(11)  # idle thread-pool threads expire after 10 s; AnyIO stops them at the next request
    np.testing.assert_array_equal(worker.liver_mask(), reference_mask)
    time.sleep(1)
    threads_after, rss_after = proc_status(worker.pid(), "Threads"), proc_status(worker.pid(), "VmRSS")
    assert threads_after <= threads_before + 2, (threads_before, threads_after)
    assert rss_after < rss_before * 1.10 + 32 * 1024, (rss_before, rss_after)  # KiB


def _connect(worker) -> socket.socket:
    sock = socket.create_connection((worker.host, worker.port), timeout=10)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
