"""Weights download against a real local HTTP server: progress, resume, checksum, offline."""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import threading

import pytest

from sammed_server.cli import main
from sammed_server.engine import registry
from sammed_server.engine.checkpoints import download
from sammed_server.errors import DownloadError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at /weights.pth, honouring ``Range: bytes=N-`` like a real file host."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path != "/weights.pth":
            self.send_error(404)
            return
        match = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
        start = int(match.group(1)) if match else 0
        RangeHandler.requests.append(self.headers.get("Range", "full"))
        self.send_response(206 if match else 200)
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_with_progress(server, tmp_path):
    seen = []
    path = download(f"{server}/weights.pth", tmp_path / "w.pth", SHA, lambda done, total: seen.append((done, total)))
    assert path.read_bytes() == PAYLOAD
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD)) and not (tmp_path / "w.pth.part").exists()


def test_download_resumes_a_partial_file(server, tmp_path):
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:300_000])
    download(f"{server}/weights.pth", tmp_path / "w.pth", SHA)
    assert RangeHandler.requests == ["bytes=300000-"]
    assert (tmp_path / "w.pth").read_bytes() == PAYLOAD


def test_checksum_mismatch_deletes_the_file(server, tmp_path):
    with pytest.raises(DownloadError, match="expected 0000"):
        download(f"{server}/weights.pth", tmp_path / "w.pth", "0000" + SHA[4:])
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.pth.part").exists()


def test_offline_is_a_clear_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DownloadError, match="cannot download"):
        download(f"http://127.0.0.1:{port}/weights.pth", tmp_path / "w.pth", SHA)


def test_cli_weights_download(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAMMED_WEIGHTS_DIR", str(tmp_path))
    spec = registry.REGISTRY["sam_vit_b"]
    monkeypatch.setitem(registry.REGISTRY, "sam_vit_b", type(spec)(**{**spec.__dict__, "sha256": SHA}))
    assert main(["weights", "download", "sam_vit_b", "--url", f"{server}/weights.pth"]) == 0
    assert (tmp_path / "sam_vit_b_01ec64.pth").read_bytes() == PAYLOAD
    assert "sha256 verified" in capsys.readouterr().out
