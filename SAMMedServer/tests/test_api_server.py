"""The real worker process (uvicorn on 127.0.0.1): start-up rules, token, limits and clients that misbehave."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import zlib

import numpy as np
import pytest

from sammed_server.api.launch import ServerProcess
from sammed_server.api.protocol import READY_MARKER, VOLUME_HEADER
from sammed_server.api.server import is_loopback

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(shared_cache_dir):
    with ServerProcess(["--token", TOKEN], env={"SAMMED_CACHE_DIR": str(shared_cache_dir)}) as process:
        yield process


def request(server, method, path, body=None, headers=None, timeout=120):
    url = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    connection.request(method, path, body=data, headers={"Content-Type": "application/json", **AUTH, **(headers or {})})
    response = connection.getresponse()
    payload = json.loads(response.read() or b"null")
    connection.close()
    return response.status, payload


def raw_socket(server) -> socket.socket:
    url = urllib.parse.urlsplit(server.url)
    return socket.create_connection((url.hostname, url.port), timeout=30)


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without an answer: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head.split()[1]), json.loads(rest[:length])


def synthetic_volume(server, seed: int) -> str:
    array = np.random.default_rng(seed).integers(0, 255, (3, 32, 40)).astype(np.uint8)
    geometry = {"shape": list(array.shape), "dtype": "uint8", "spacing": [1, 1, 1]}
    status, body = request(server, "POST", "/v1/volumes", zlib.compress(array.tobytes()),
                           {VOLUME_HEADER: json.dumps(geometry), "Content-Type": "application/octet-stream"})
    assert status == 200, body
    return body["id"]


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.10") and not is_loopback("example.org")


def test_refuses_a_public_address_without_token():
    done = subprocess.run(
        [sys.executable, "-m", "sammed_server.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "refusing to listen on 0.0.0.0 without an API token" in done.stderr
    assert READY_MARKER not in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "sammed_server.cli", "serve", "--port", "0", "--allow-host", "*"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2 and "--allow-host '*' needs a token" in done.stderr


def test_token_auto_is_announced_on_the_ready_line(shared_cache_dir):
    with ServerProcess(["--token", "auto"], env={"SAMMED_CACHE_DIR": str(shared_cache_dir)}) as process:
        assert len(process.token) >= 24 and process.token != "auto"
        assert f"token={process.token}" in "\n".join(process.output)
        url = urllib.parse.urlsplit(process.url)
        for headers, expected in (({}, 401), ({"Authorization": "Bearer auto"}, 401),
                                  ({"Authorization": f"Bearer {process.token}"}, 200)):
            connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
            connection.request("GET", "/v1/health", headers=headers)
            assert connection.getresponse().status == expected
            connection.close()


def test_health_over_http_needs_the_token(server):
    status, body = request(server, "GET", "/v1/health")
    assert status == 200 and body["auth"] is True and body["models_loaded"] == ["litemedsam"]
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer nope"}, {"Authorization": f"Bearer {TOKEN}x"}):
        status, body = request(server, "GET", "/v1/health", headers=headers)
        assert status == 401 and body["error"]["code"] == "unauthorized"
    status, body = request(server, "GET", "/openapi.json")
    assert status == 200 and "/v1/health" in body["paths"]


def test_oversized_bodies_get_413_and_the_server_keeps_serving(server):
    sock = raw_socket(server)  # declared too large: answered before any body is sent
    sock.sendall(b"POST /v1/volumes/x/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 999999999\r\n\r\n")
    status, body = read_response(sock)
    sock.close()
    assert status == 413 and body["error"]["code"] == "payload_too_large"

    sock = raw_socket(server)  # chunked (no length): cut off while streaming
    sock.sendall(b"POST /v1/volumes/x/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b" " * 2**20
    try:
        for _ in range(20):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may stop reading once it has answered
    status, body = read_response(sock)
    sock.close()
    assert status == 413 and body["error"]["code"] == "payload_too_large"
    assert request(server, "GET", "/v1/health")[0] == 200


def test_malformed_requests_over_http(server):
    status, body = request(server, "POST", "/v1/volumes/x/predict", b'{"index": ')
    assert status == 400 and body["error"]["code"] == "invalid_json"
    status, body = request(server, "POST", "/v1/volumes/x/predict", {"index": "three", "box": [0, 0, 1, 1]})
    assert status == 422 and body["error"]["field"] == "index"
    sock = raw_socket(server)
    sock.sendall(b"THIS IS NOT HTTP\r\n\r\n")
    answer = sock.recv(1024)
    sock.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400")  # uvicorn refuses it at the protocol level
    assert request(server, "GET", "/v1/health")[0] == 200


def test_clients_that_disconnect_mid_request(server):
    sock = raw_socket(server)  # body cut short
    sock.sendall(b"POST /v1/volumes/from-path HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + TOKEN.encode()
                 + b"\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"path\": \"/tm")
    sock.close()

    volume_id = synthetic_volume(server, seed=11)  # uncached slice: the server encodes it after we hang up
    sock = raw_socket(server)
    payload = json.dumps({"index": 1, "box": [5, 5, 30, 25]}).encode()
    sock.sendall(b"POST /v1/volumes/" + volume_id.encode() + b"/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                 + TOKEN.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    sock.close()

    assert request(server, "GET", "/v1/health")[0] == 200
    status, body = request(server, "POST", f"/v1/volumes/{volume_id}/predict", {"index": 1, "box": [5, 5, 30, 25]})
    assert status == 200 and body["masks"]["shape"] == [1, 32, 40]
    assert server.process.poll() is None


def test_unknown_ids_over_http(server):
    status, body = request(server, "POST", "/v1/volumes/feedface/predict", {"index": 0, "box": [0, 0, 3, 3]})
    assert status == 404 and body["error"]["code"] == "unknown_volume" and body["error"]["hint"]
    status, body = request(server, "POST", "/v1/jobs/feedface/cancel")
    assert status == 404 and body["error"]["code"] == "unknown_job"


def test_keep_alive_requests_do_not_wait_for_delayed_acks(server):
    """Without TCP_NODELAY on accepted sockets each keep-alive answer stalls ~40 ms (Nagle + delayed ACK)."""
    url = urllib.parse.urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    seconds = []
    for _ in range(20):
        started = time.perf_counter()
        connection.request("GET", "/v1/health", headers=AUTH)
        assert connection.getresponse().read()
        seconds.append(time.perf_counter() - started)
    connection.close()
    assert float(np.median(seconds)) < 0.030, f"median keep-alive round trip {np.median(seconds) * 1000:.0f} ms"
