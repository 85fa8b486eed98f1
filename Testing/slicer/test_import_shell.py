"""Importing SAMMedSlicer.py (what Slicer does at startup for every module) does no work.

Slicer's Qt, ctk and the app-side of ``slicer`` do not exist outside the application, so this test puts a
clearly fake stand-in for them in ``sys.modules``. Any subprocess, network connection or pip run during the
import (or while constructing the module object) fails the test.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

MODULE_FILE = Path(__file__).resolve().parents[2] / "SAMMedSlicer" / "SAMMedSlicer.py"


class FakeAnything:
    """FAKE Qt/ctk/Slicer object: every attribute and call gives another fake."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name: str) -> "FakeAnything":
        return FakeAnything()

    def __call__(self, *args, **kwargs) -> "FakeAnything":
        return FakeAnything()


def fake_module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__getattr__ = lambda attr: FakeAnything()  # type: ignore[attr-defined]
    return module


class FakeScriptedLoadableModule:
    """FAKE slicer.ScriptedLoadableModule base class: records the parent, does nothing else."""

    def __init__(self, parent=None) -> None:
        self.parent = parent


def fake_slicer_modules() -> dict[str, types.ModuleType]:
    loadable = fake_module(
        "slicer.ScriptedLoadableModule", ScriptedLoadableModule=FakeScriptedLoadableModule,
        ScriptedLoadableModuleWidget=FakeScriptedLoadableModule, ScriptedLoadableModuleLogic=FakeScriptedLoadableModule,
        ScriptedLoadableModuleTest=FakeScriptedLoadableModule,
    )
    util = fake_module("slicer.util", VTKObservationMixin=type("FakeVTKObservationMixin", (), {"__init__": lambda self: None}))
    real_slicer = sys.modules["slicer"]
    slicer = fake_module("slicer", ScriptedLoadableModule=loadable, util=util)
    slicer.__getattr__ = lambda attr: getattr(real_slicer, attr)  # type: ignore[attr-defined]  # MRML classes stay real
    return {"qt": fake_module("qt"), "ctk": fake_module("ctk"), "slicer": slicer,
            "slicer.ScriptedLoadableModule": loadable, "slicer.util": util}


def forbidden(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{what} at import time: {args[:2]}")

    return refuse


def test_import_does_no_work(monkeypatch):
    import slicer  # noqa: F401 - the real wheel, kept reachable behind the fake

    for name, module in fake_slicer_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(subprocess, "Popen", forbidden("a subprocess (server start or pip)"))
    monkeypatch.setattr(socket.socket, "connect", forbidden("a network connection"))
    monkeypatch.setattr(socket, "create_connection", forbidden("a network connection"))
    monkeypatch.setitem(sys.modules, "pip", None)  # importing pip would fail loudly
    monkeypatch.syspath_prepend(str(MODULE_FILE.parent))

    spec = importlib.util.spec_from_file_location("SAMMedSlicer_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    parent = types.SimpleNamespace()
    module.SAMMedSlicer(parent)
    assert parent.title == "SAMMed" and parent.categories == ["Segmentation"]
    logic = module.SAMMedSlicerLogic()
    assert logic.process is None and logic.client is None and logic.session is None
    for name in ("SAMMedSlicerWidget", "SAMMedSlicerTest"):
        assert hasattr(module, name)


def test_fake_really_blocks_subprocesses(monkeypatch):
    """Guard for the guard: the patched Popen refuses."""
    monkeypatch.setattr(subprocess, "Popen", forbidden("a subprocess"))
    with pytest.raises(AssertionError, match="a subprocess"):
        subprocess.run(["true"])
