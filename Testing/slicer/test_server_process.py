"""Worker supervision: clear messages for every way the worker can fail to start (the real worker's start, restart
and stop: test_worker.py::test_real_worker_from_another_python_with_slicers_launcher_variables)."""

from __future__ import annotations

import socket
import sys
import textwrap

import pytest

from SAMMedSlicerLib.client import SAMMedClient
from SAMMedSlicerLib.server_process import ServerProcess, WorkerError, free_port, serve_command


def test_missing_program_is_a_clear_error(tmp_path):
    command = serve_command(str(tmp_path / "env" / "bin" / "sammed-server"), port=free_port())
    with pytest.raises(WorkerError, match="does not exist: choose Slicer's Python and press Install"):
        ServerProcess(command, lambda: None).start(timeout=5)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(WorkerError, match=f"port {port} on 127.0.0.1 is already in use"):
            ServerProcess(serve_command(sys.executable, port=port), lambda: None).start(timeout=5)


def test_early_exit_reports_the_log_tail(tmp_path):
    script = tmp_path / "python-fails.py"
    script.write_text("import sys\nprint('loading model...')\nsys.exit('checkpoint not found: litemedsam.pth')\n")
    process = ServerProcess([sys.executable, str(script)], lambda: (_ for _ in ()).throw(ConnectionError()),
                            log_path=str(tmp_path / "log"))
    with pytest.raises(WorkerError, match=r"(?s)exited \(code 1\) before it was ready.*checkpoint not found"):
        process.start(timeout=20)
    assert not process.running


def test_protocol_mismatch_stops_the_worker_with_a_clear_message(tmp_path):
    """A fake worker that answers /v1/health with another protocol version."""
    port = free_port()
    script = tmp_path / "fake_worker.py"
    script.write_text(textwrap.dedent(f"""
        import http.server, json
        class Health(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps({{"service": "sammed-server", "version": "9.0", "protocol": 99}}).encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
        http.server.HTTPServer(("127.0.0.1", {port}), Health).serve_forever()
    """))
    client = SAMMedClient(f"http://127.0.0.1:{port}", retries=0)
    process = ServerProcess([sys.executable, str(script)], client.health, log_path=str(tmp_path / "log"))
    with pytest.raises(WorkerError, match="speaks protocol 99, but this SAMMed module speaks protocol 1"):
        process.start(timeout=20)
    assert not process.running


def test_serve_commands():
    python = "/opt/conda/envs/sam/bin/python"
    assert serve_command(python, port=9000, token="t")[:4] == [python, "-m", "sammed_server.cli", "serve"]
    assert serve_command("/Slicer/bin/PythonSlicer", port=9000)[1:3] == ["-m", "sammed_server.cli"]
    assert serve_command("/opt/sammed-env/bin/sammed-server", port=9000)[1] == "serve"
