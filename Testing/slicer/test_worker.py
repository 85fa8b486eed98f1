"""Getting a worker without freezing the panel: every Lib call the widget makes on the main thread returns in
< 100 ms while a worker made slow on purpose starts, while a connection hangs, and when the worker dies (reported
once). Also: the worker's environment, the install steps, reload hand-over.

The slow worker is a FAKE (``fake_slow_worker.py`` written below): a few lines of http.server that sleep before
listening and answer /v1/health, /v1/models and /v1/artefacts like sammed-server. The real worker's start is
covered by test_server_process.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from SAMMedSlicerLib.client import SAMMedClient
from SAMMedSlicerLib.server_process import WorkerError, free_port
from SAMMedSlicerLib.worker import LocalLaunch, Worker, local_launch
from SAMMedSlicerLib.worker_install import (
    CREATE_NO_WINDOW, LITEMEDSAM_ON_PYTHON_39, NO_PYTORCH_EXTENSION, TORCH_REQUIREMENTS, InstallRun, InstallStep, foreign_python_environment,
    install_plan, slicer_python,
)

STALL_LIMIT_S = 0.1
SLOW_START_S = 3.0

FAKE_WORKER = textwrap.dedent('''
    """FAKE slow worker: sleeps, then answers like sammed-server (health, models, artefacts)."""
    import http.server, json, sys, time
    port, delay = int(sys.argv[sys.argv.index("--port") + 1]), float(sys.argv[sys.argv.index("--delay") + 1])
    print("fake worker: loading (sleeping", delay, "s)", flush=True)
    time.sleep(delay)
    ANSWERS = {
        "/v1/health": {"service": "sammed-server", "version": "0.0-fake", "protocol": 1, "device": "cpu",
                       "default_model": "fake", "models_loaded": [], "auth": False,
                       "max_request_bytes": 1, "max_upload_bytes": 1},
        "/v1/models": [{"id": "fake", "description": "", "input_size": 256, "box_only": True, "default": True,
                        "loaded": False, "checkpoint_present": True}],
        "/v1/artefacts": [],
    }
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            body = json.dumps(ANSWERS.get(self.path.split("?")[0], {"code": "not_found", "message": "?"})).encode()
            self.send_response(200 if self.path.split("?")[0] in ANSWERS else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
''')


@pytest.fixture
def fake_worker(tmp_path) -> Path:
    script = tmp_path / "fake_slow_worker.py"
    script.write_text(FAKE_WORKER)
    return script


def fake_command(script: Path, port: int, delay: float) -> list[str]:
    return [sys.executable, str(script), "serve", "--host", "127.0.0.1", "--port", str(port), "--delay", str(delay)]


def short_client(url: str, token=None) -> SAMMedClient:
    return SAMMedClient(url, token=token, timeout=2.0, retries=0)


class Recorder:
    """Collects the worker's callbacks and times every main-thread call."""

    def __init__(self) -> None:
        self.connected, self.status, self.errors = [], [], []
        self.longest = 0.0

    def worker(self, **options) -> Worker:
        return Worker(self.connected.append, self.status.append, self.errors.append, client_factory=short_client,
                      **options)

    def timed(self, call, *args):
        began = time.perf_counter()
        result = call(*args)
        self.longest = max(self.longest, time.perf_counter() - began)
        return result

    def poll_until(self, worker: Worker, done, timeout: float, extra=None) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            if extra is not None:
                extra()
            self.timed(worker.poll)
            time.sleep(0.05)


def test_slow_start_never_stalls_and_a_dead_worker_is_reported_once(fake_worker):
    record = Recorder()
    worker = record.worker(start_timeout=30)
    port = free_port()
    began = time.monotonic()
    record.timed(worker.start_local, LocalLaunch(fake_command(fake_worker, port, SLOW_START_S), None), port)
    assert worker.state == "starting"
    record.poll_until(worker, lambda: worker.state != "starting", 30)
    took = time.monotonic() - began
    print(f"\nslow start: connected after {took:.1f} s; longest main-thread call {1000 * record.longest:.1f} ms")
    assert worker.state == "connected", record.errors
    assert took >= SLOW_START_S, "the fake worker was not slow: the test proves nothing"
    assert record.longest < STALL_LIMIT_S
    assert [m.id for m in record.connected[0].models] == ["fake"] and worker.client is not None

    # the worker dies: noticed once by poll (exit code + log), and status requests are no longer made
    worker.process.process.kill()
    health_calls = []
    record.poll_until(worker, lambda: False, 2.0,
                      extra=lambda: record.timed(worker.monitor, lambda: health_calls.append(1), lambda _: None))
    assert worker.state == "lost"
    assert len(record.errors) == 1 and "exited" in record.errors[0] and "fake worker: loading" in record.errors[0]
    assert record.longest < STALL_LIMIT_S
    assert not record.timed(worker.monitor, lambda: None, lambda _: None)
    worker.shutdown()


@pytest.fixture
def dead_remote_worker(fake_worker):
    """(record, worker): a Worker connected to a FAKE remote worker that was then killed."""
    port = free_port()
    fake = subprocess.Popen(fake_command(fake_worker, port, 0), stdout=subprocess.DEVNULL)
    try:
        record = Recorder()
        worker = record.worker()
        deadline = time.monotonic() + 20
        while worker.state != "connected" and time.monotonic() < deadline:  # the fake needs a moment to listen
            record.timed(worker.connect, f"http://127.0.0.1:{port}")
            record.poll_until(worker, lambda: worker.state not in ("connecting",), 5)
        assert worker.state == "connected"
        record.errors.clear()
        fake.kill()
        fake.wait()
        yield record, worker
    finally:
        fake.kill()


def test_remote_worker_that_stops_answering_is_reported_once(dead_remote_worker):
    record, worker = dead_remote_worker
    fetches = []

    def status():
        fetches.append(1)
        return worker.client.health()

    record.poll_until(worker, lambda: False, 3.0, extra=lambda: record.timed(worker.monitor, status, lambda _: None))
    print(f"\ndead remote worker: {len(fetches)} status request(s), errors {record.errors}, "
          f"longest main-thread call {1000 * record.longest:.1f} ms")
    assert worker.state == "lost" and len(record.errors) == 1 and "does not answer" in record.errors[0]
    assert len(fetches) == 1, "a lost worker is not asked again every 500 ms"
    assert record.longest < STALL_LIMIT_S


def test_a_prediction_that_finds_the_worker_dead_is_the_one_report(dead_remote_worker):
    """The session passes unreachable predictions to ``Worker.report_lost``: a click and the status timer noticing
    the same death give one message, not one each."""
    record, worker = dead_remote_worker
    worker.report_lost("connection refused")  # a box's prediction failed
    worker.report_lost("connection refused")  # and a "+" click's
    assert not record.timed(worker.monitor, worker.client.health, lambda _: None), "a lost worker is polled"
    record.poll_until(worker, lambda: False, 1.0)
    assert worker.state == "lost" and record.errors == ["the worker does not answer: connection refused"]


def test_connect_to_a_worker_that_never_answers_does_not_stall():
    with socket.socket() as hang:  # accepts connections, never answers
        hang.bind(("127.0.0.1", 0))
        hang.listen()
        record = Recorder()
        worker = record.worker()
        record.timed(worker.connect, f"http://127.0.0.1:{hang.getsockname()[1]}")
        record.poll_until(worker, lambda: worker.state != "connecting", 1.0)
        assert worker.state == "connecting" and record.longest < STALL_LIMIT_S
        record.poll_until(worker, lambda: worker.state != "connecting", 5.0)  # the client's 2 s timeout
        assert worker.state == "failed" and len(record.errors) == 1


def test_invalid_url_is_one_clear_error():
    record = Recorder()
    worker = record.worker()
    worker.connect("127.0.0.1:8765")
    assert worker.state == "failed" and "not an http(s) URL" in record.errors[0]


def test_stop_while_starting_ends_the_start_quietly(fake_worker):
    record = Recorder()
    worker = record.worker(start_timeout=30)
    port = free_port()
    worker.start_local(LocalLaunch(fake_command(fake_worker, port, 30), None), port)
    process = worker.process
    time.sleep(0.3)
    record.timed(worker.stop)
    record.poll_until(worker, lambda: not process.running and not worker.calls.busy("connect"), 15)
    worker.poll()
    assert not process.running and worker.state == "stopped" and not record.errors
    assert record.longest < STALL_LIMIT_S


def test_reload_hands_the_running_worker_over(fake_worker):
    record = Recorder()
    worker = record.worker(start_timeout=30)
    port = free_port()
    worker.start_local(LocalLaunch(fake_command(fake_worker, port, 0), None), port)
    record.poll_until(worker, lambda: worker.state != "starting", 20)
    pid = worker.process.process.pid
    handover = worker.detach()
    assert handover is not None and worker.process is None
    worker.shutdown()  # the old panel's logic going away does not stop it
    again = Recorder()
    reloaded = again.worker()
    reloaded.attach(handover)
    again.poll_until(reloaded, lambda: reloaded.state != "connecting", 10)
    assert reloaded.state == "connected" and reloaded.process.process.pid == pid and reloaded.process.running
    reloaded.shutdown()
    assert handover.process.poll() is not None


# environments and install steps ------------------------------------------------------------------
def test_another_python_gets_the_startup_environment_without_the_launchers_python():
    startup = {"PATH": "/usr/bin", "HOME": "/home/u", "PYTHONHOME": "/Slicer/lib/Python",
               "PYTHONPATH": "/Slicer/lib/Python/site-packages", "PYTHONNOUSERSITE": "1"}
    launch = local_launch("python", 8765, "/opt/conda/bin/python", startup_environment=startup, os_name="nt")
    assert launch.env == {"PATH": "/usr/bin", "HOME": "/home/u"}
    assert launch.command[:3] == ["/opt/conda/bin/python", "-m", "sammed_server.cli"]
    assert launch.creationflags == CREATE_NO_WINDOW
    assert local_launch("python", 8765, "/usr/bin/python3", startup_environment=startup, os_name="posix").creationflags == 0
    with pytest.raises(WorkerError, match="name the worker's Python"):
        local_launch("python", 8765, "  ")


def test_slicer_python_is_found_when_called(tmp_path):
    launch = local_launch("slicer", 9000, which=lambda name: f"/Slicer/bin/{name}")
    assert launch.command[:4] == ["/Slicer/bin/PythonSlicer", "-m", "sammed_server.cli", "serve"] and launch.env is None
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "PythonSlicer").touch()
    assert slicer_python(lambda name: None, str(tmp_path), "posix") == str(tmp_path / "bin" / "PythonSlicer")
    with pytest.raises(WorkerError, match="PythonSlicer was not found"):
        slicer_python(lambda name: None, "", "posix")


def test_install_plans():
    which = lambda name: "/S/bin/PythonSlicer"  # noqa: E731
    with pytest.raises(WorkerError, match="Install the \"PyTorch\" extension"):
        install_plan("slicer", "/ext/SAMMedServer", which=which)
    steps, env = install_plan("slicer", "/ext/SAMMedServer", pytorch_extension=True, which=which)
    assert env is None and [s.label for s in steps] == ["light-the-torch", "PyTorch", "sammed-server"]
    on_slicer_58, _ = install_plan("slicer", "/ext/SAMMedServer", torch_version="2.5.1", which=which, python_version=(3, 9))
    assert on_slicer_58[-1].command == ["/S/bin/PythonSlicer", "-m", "pip", "install", *LITEMEDSAM_ON_PYTHON_39]
    assert steps[1].command == ["/S/bin/PythonSlicer", "-m", "light_the_torch", "install", *TORCH_REQUIREMENTS]
    assert steps[2].command == ["/S/bin/PythonSlicer", "-m", "pip", "install", "/ext/SAMMedServer"]
    with pytest.raises(WorkerError, match="torch 1.13.1, SAMMed needs torch>=2.1"):
        install_plan("slicer", "/ext/SAMMedServer", torch_version="1.13.1", pytorch_extension=True, which=which)
    steps, _ = install_plan("slicer", "/ext/SAMMedServer", torch_version="2.5.1+cu121", which=which)
    assert [s.label for s in steps] == ["sammed-server"]
    steps, env = install_plan("python", "/ext/SAMMedServer", "/c/python", startup_environment={"PYTHONHOME": "x", "A": "b"})
    assert env == {"A": "b"} and steps[0].command == ["/c/python", "-m", "pip", "install", "/ext/SAMMedServer"]
    with pytest.raises(WorkerError, match="installed where it runs"):
        install_plan("remote", "/ext/SAMMedServer")
    assert NO_PYTORCH_EXTENSION.count("Extensions Manager") == 1


def test_torch_requirements_match_the_worker_package():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "SAMMedServer" / "pyproject.toml").read_text())
    dependencies = [d.replace(" ", "") for d in project["project"]["dependencies"]]
    assert all(requirement in dependencies for requirement in TORCH_REQUIREMENTS)


def test_install_runs_in_the_background_with_progress_and_a_clear_failure(tmp_path):
    """FAKE pip steps (python -c scripts): output arrives line by line, poll never waits, the environment is the
    one given (no PYTHONHOME), a failing step stops the run with its output's tail."""
    slow = "import os, time\nfor n in range(5):\n    print('Collecting part', n, flush=True); time.sleep(0.3)\nprint('PYTHONHOME', os.environ.get('PYTHONHOME'))"
    fail = "import sys\nprint('ERROR: No matching distribution found for torch>=2.1')\nsys.exit(3)"
    environment = foreign_python_environment({**os.environ, "PYTHONHOME": "/Slicer/lib/Python"})
    run = InstallRun([InstallStep("slow", [sys.executable, "-c", slow]), InstallStep("broken", [sys.executable, "-c", fail])],
                     environment)
    record, seen, log = Recorder(), [], []
    deadline = time.monotonic() + 20
    while run.state == "running" and time.monotonic() < deadline:
        progress = record.timed(run.poll)
        seen.append((progress.step, progress.message))
        log += progress.log
        time.sleep(0.05)
    assert run.state == "failed" and record.longest < STALL_LIMIT_S
    assert any(message.startswith("Collecting part") for step, message in seen if step == 1), seen
    assert log[:5] == [f"Collecting part {n}" for n in range(5)] and "PYTHONHOME None" in log
    final = run.poll()
    assert final.state == "failed" and final.step == 2
    assert "installing broken failed (exit code 3)" in final.message and "No matching distribution" in final.message


def test_install_cancel():
    run = InstallRun([InstallStep("sleep", [sys.executable, "-c", "import time; time.sleep(30)"])])
    run.cancel()
    assert run.poll().state == "cancelled"
    run._run.process.wait(10)


def test_real_worker_from_another_python_with_slicers_launcher_variables(shared_cache_dir):
    """The user's path for "Another Python": the real sammed-server started from .venv's python, with a startup
    environment that still carries a launcher's PYTHONHOME/PYTHONPATH (they would break that Python if passed on)."""
    python = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "python"
    if not python.is_file():
        pytest.skip(f"no worker Python at {python}")
    startup = {**os.environ, "PYTHONHOME": "/nonexistent/Slicer/lib/Python", "PYTHONNOUSERSITE": "1",
               "PYTHONPATH": "/nonexistent/Slicer/lib/Python/site-packages", "SAMMED_CACHE_DIR": str(shared_cache_dir)}
    port = free_port()
    launch = local_launch("python", port, str(python), startup_environment=startup)
    assert "--device" not in launch.command
    launch = LocalLaunch([*launch.command, "--device", "cpu"], launch.env, launch.creationflags)
    record = Recorder()
    worker = Worker(record.connected.append, record.status.append, record.errors.append, start_timeout=300)
    record.timed(worker.start_local, launch, port, str(shared_cache_dir / "worker-python.log"))
    record.poll_until(worker, lambda: worker.state != "starting", 300)
    try:
        assert worker.state == "connected", record.errors
        assert "litemedsam" in [m.id for m in record.connected[0].models]
        first = worker.process
        record.timed(worker.start_local, launch, port, str(shared_cache_dir / "worker-python.log"))  # Start again
        record.poll_until(worker, lambda: worker.state != "starting", 300)
        assert worker.state == "connected" and worker.process is not first and not first.running, record.errors
        assert record.longest < STALL_LIMIT_S
        print(f"\nreal worker from another Python, started twice: longest main-thread call "
              f"{1000 * record.longest:.1f} ms")
    finally:
        worker.shutdown()
    assert not first.running and worker.process is None
