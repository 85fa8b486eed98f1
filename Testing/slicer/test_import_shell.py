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
    assert logic.worker.state == "none" and logic.client is None and logic.session is None
    assert logic.worker.process is None and not logic.worker.calls.busy("connect")
    for name in ("SAMMedSlicerWidget", "SAMMedSlicerTest"):
        assert hasattr(module, name)


def test_fake_really_blocks_subprocesses(monkeypatch):
    """Guard for the guard: the patched Popen refuses."""
    monkeypatch.setattr(subprocess, "Popen", forbidden("a subprocess"))
    with pytest.raises(AssertionError, match="a subprocess"):
        subprocess.run(["true"])


# The widget's own logic, on FAKE Qt widgets and the real MRML nodes of slicer-core ---------------------------
class FakeLabel:
    """FAKE QLabel / QProgressBar: records what was shown."""

    def __init__(self) -> None:
        self.text, self.shown, self.value, self.enabled = "", [], 0, False

    def __setattr__(self, name, value) -> None:
        if name == "text" and hasattr(self, "shown"):
            self.shown.append(value)
        object.__setattr__(self, name, value)


class FakeButton:
    """FAKE checkable QPushButton."""

    def __init__(self) -> None:
        self.checked = False
        self.enabled = True

    def blockSignals(self, block: bool) -> None:
        pass


@pytest.fixture
def shell(monkeypatch):
    """The module file loaded behind FAKE qt/ctk/slicer modules (MRML classes stay real)."""
    import slicer  # noqa: F401

    fakes = fake_slicer_modules()
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(MODULE_FILE.parent))
    spec = importlib.util.spec_from_file_location("SAMMedSlicer_under_test", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fakes["slicer"].app = FakeAnything()
    return module, fakes["slicer"]


def bare_widget(module):
    widget = module.SAMMedSlicerWidget(None)
    widget.ui = types.SimpleNamespace(
        messageLabel=FakeLabel(), workerStatusLabel=FakeLabel(), cancelTaskButton=FakeLabel(),
        taskProgressBar=FakeLabel(), applyResultButton=FakeLabel(), discardResultButton=FakeLabel(),
        positivePointButton=FakeButton(), negativePointButton=FakeButton(), boxButton=FakeButton(),
        lassoButton=FakeButton(), scribbleButton=FakeButton(),
    )
    return widget


def test_poll_reports_an_error_once_and_keeps_running(shell):
    module, _ = shell
    widget = bare_widget(module)
    calls = []

    def broken_poll():
        calls.append(1)
        raise KeyError("result")

    widget.logic = types.SimpleNamespace(worker=types.SimpleNamespace(poll=broken_poll), session=None)
    for _ in range(5):
        widget.onPoll()  # must not raise into the QTimer
    assert len(calls) == 5
    assert widget.ui.messageLabel.shown == ["SAMMed: KeyError: 'result'"]


def test_apply_says_applied_only_when_it_was(shell):
    module, fake_slicer = shell
    widget = bare_widget(module)

    class SwallowingErrorDisplay:
        """FAKE slicer.util.tryWithErrorDisplay: shows the error, swallows it (as Slicer's does)."""

        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, kind, value, trace):
            return True

    fake_slicer.util.tryWithErrorDisplay = SwallowingErrorDisplay

    def failing_apply():
        raise RuntimeError("select a segmentation and a segment first")

    widget.logic = types.SimpleNamespace(session=types.SimpleNamespace(apply_pending=failing_apply))
    widget.onApplyResult()
    assert not any("applied" in text for text in widget.ui.messageLabel.shown)
    widget.logic.session.apply_pending = lambda: True
    widget.onApplyResult()
    assert widget.ui.messageLabel.shown[-1].startswith("applied")


def test_place_buttons_follow_the_interaction_node(shell, monkeypatch):
    """Esc / right-click put the interaction node back to ViewTransform: the checked button unchecks."""
    import slicer as real

    module, fake_slicer = shell
    scene = real.vtkMRMLScene()
    interaction = scene.AddNode(real.vtkMRMLInteractionNode())
    selection = scene.AddNode(real.vtkMRMLSelectionNode())
    app_logic = types.SimpleNamespace(GetInteractionNode=lambda: interaction, GetSelectionNode=lambda: selection)
    fake_slicer.app = types.SimpleNamespace(applicationLogic=lambda: app_logic)
    nodes = {role: scene.AddNewNodeByClass(cls) for role, cls in (
        ("positivePoints", "vtkMRMLMarkupsFiducialNode"), ("negativePoints", "vtkMRMLMarkupsFiducialNode"),
        ("box", "vtkMRMLMarkupsROINode"), ("lasso", "vtkMRMLMarkupsClosedCurveNode"),
        ("scribble", "vtkMRMLMarkupsCurveNode"))}
    widget = bare_widget(module)
    widget.params = types.SimpleNamespace(reference=lambda role: nodes[role])
    interaction.AddObserver(interaction.InteractionModeChangedEvent, widget.onInteractionModeChanged)

    widget.placePrompt("box")
    assert widget.ui.boxButton.checked and not widget.ui.positivePointButton.checked
    assert interaction.GetPlaceModePersistence() == 1
    widget.placePrompt("negativePoints")
    assert widget.ui.negativePointButton.checked and not widget.ui.boxButton.checked
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # what Esc / right-click do
    assert not any(b.checked for b in (widget.ui.positivePointButton, widget.ui.negativePointButton, widget.ui.boxButton))
    widget.placePrompt("lasso")
    assert widget.ui.lassoButton.checked and not widget.ui.scribbleButton.checked
    widget.placePrompt("scribble")
    assert widget.ui.scribbleButton.checked and not widget.ui.lassoButton.checked
    interaction.SetCurrentInteractionMode(interaction.ViewTransform)  # a right-click ends a curve and place mode
    assert not widget.ui.scribbleButton.checked
    widget.placePrompt("box")
    widget.exit()  # leaving the module ends place mode and its persistence
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert interaction.GetPlaceModePersistence() == 0 and not widget.ui.boxButton.checked


def test_model_change_starts_a_new_session(shell):
    module, _ = shell
    widget = bare_widget(module)
    stored = {"model": "litemedsam"}
    widget.params = types.SimpleNamespace(get=stored.get, set=stored.__setitem__)
    widget.logic = types.SimpleNamespace(session=object(), worker=types.SimpleNamespace(info=None))
    started = []
    widget._startVolume = lambda: started.append(stored["model"])
    widget.onModelChanged("litemedsam")
    assert started == []
    widget.onModelChanged("sam_vit_b")
    assert started == ["sam_vit_b"]


def test_reload_hands_the_worker_over_and_cleanup_does_not_stop_it(shell, monkeypatch):
    module, fake_slicer = shell
    import SAMMedSlicerLib

    widget = bare_widget(module)
    handover = object()
    events = []
    worker = types.SimpleNamespace(detach=lambda: handover, stop=lambda: events.append("stop"),
                                   shutdown=lambda: events.append("shutdown"))
    widget.logic = types.SimpleNamespace(worker=worker, end_session=lambda: events.append("end_session"),
                                         shutdown=lambda: events.append("shutdown"))
    fake_slicer.modules = types.SimpleNamespace()
    monkeypatch.setattr(module.ScriptedLoadableModuleWidget, "onReload", lambda self: events.append("reload"),
                        raising=False)
    forgotten = []
    monkeypatch.setattr(SAMMedSlicerLib, "forget_modules", lambda: forgotten.append(1))
    widget.onReload()
    assert getattr(fake_slicer.modules, module.HANDOVER) is handover
    assert forgotten == [1] and events == ["end_session", "reload"]
    widget.timer = None
    widget.removeObservers = lambda: None
    widget.cleanup()
    assert "stop" not in events and "shutdown" not in events


def test_forget_modules_makes_reload_import_the_lib_afresh(monkeypatch):
    monkeypatch.syspath_prepend(str(MODULE_FILE.parent))
    import SAMMedSlicerLib.worker as before

    saved = {name: mod for name, mod in sys.modules.items() if name.startswith("SAMMedSlicerLib")}
    try:
        names = sys.modules["SAMMedSlicerLib"].forget_modules()
        assert "SAMMedSlicerLib.worker" in names and "SAMMedSlicerLib.worker" not in sys.modules
        import SAMMedSlicerLib.worker as after

        assert after is not before
    finally:  # the other tests of this session hold the first import: put it back
        for name in [n for n in sys.modules if n.startswith("SAMMedSlicerLib")]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_batch_section_follows_the_run_and_loads_each_finished_case_once(shell, tmp_path):
    """Start batch hands the chosen model, folder and run folder to the logic; the timer then shows the run's progress
    from its manifest, loads each finished case once (one per tick) and gives the buttons back when the run ends.
    The process is a FAKE (the real `sammed-server batch` runs in Testing/batch)."""
    import json

    from SAMMedSlicerLib.batch import BatchJob

    module, fake_slicer = shell
    widget = bare_widget(module)
    run = tmp_path / "run"
    widget.ui.__dict__.update(
        batchModelComboBox=types.SimpleNamespace(currentData="decoder_only-abc"),
        batchInputPathLineEdit=types.SimpleNamespace(currentPath=str(tmp_path / "cohort")),
        batchRunPathLineEdit=types.SimpleNamespace(currentPath=str(run)),
        batchLoadCheckBox=types.SimpleNamespace(checked=True), workerSourceComboBox=types.SimpleNamespace(currentData="python"),
        pythonPathLineEdit=types.SimpleNamespace(text="/envs/worker/bin/python"), batchStartButton=FakeButton(),
        batchCancelButton=FakeButton(), batchProgressBar=FakeLabel(), batchStatusLabel=FakeLabel(),
    )

    class FakeProcess:
        """FAKE Popen: running until told otherwise."""

        returncode = None

        def poll(self):
            return self.returncode

    process = FakeProcess()
    started = []

    def start_batch(source, python, model_id, folder, run_folder):
        started.append((source, python, model_id, folder, run_folder))
        job = BatchJob(["sammed-server", "batch"], run_folder, popen=lambda *args, **kwargs: process)
        job.start()
        return job

    widget.logic = types.SimpleNamespace(start_batch=start_batch)
    loaded = []
    fake_slicer.util.loadVolume = lambda path: loaded.append(("volume", path))
    fake_slicer.util.loadSegmentation = lambda path: loaded.append(("segmentation", path))
    widget.onStartBatch()
    assert started == [("python", "/envs/worker/bin/python", "decoder_only-abc", str(tmp_path / "cohort"), str(run))]
    assert not widget.ui.batchStartButton.enabled and widget.ui.batchCancelButton.enabled

    volumes = [tmp_path / f"case{i}.nii.gz" for i in range(2)]
    for path in volumes:
        path.write_bytes(b"")
    cases = {f"c{i}": {"case_id": f"c{i}", "input": str(volumes[i]), "status": "done",
                       "outputs": {"seg_nrrd": f"c{i}.seg.nrrd"}} for i in range(2)}
    cases["bad"] = {"case_id": "bad", "input": "x.nii.gz", "status": "failed", "error": "unreadable", "outputs": {}}
    (run / "manifest.json").write_text(json.dumps({"cases": cases}))
    widget._pollBatch()
    assert widget.ui.batchProgressBar.value == 100 and "bad: unreadable" in widget.ui.batchStatusLabel.text
    assert loaded == [("volume", str(volumes[0])), ("segmentation", str(run / "c0.seg.nrrd"))]
    process.returncode = 1  # the run ends with a failed case
    widget._pollBatch()  # the second case is still to load
    assert loaded[2:] == [("volume", str(volumes[1])), ("segmentation", str(run / "c1.seg.nrrd"))]
    assert widget.batch is not None
    widget._pollBatch()
    assert widget.batch is None and widget.ui.batchStartButton.enabled and not widget.ui.batchCancelButton.enabled
    assert "exit code 1" in widget.ui.batchStatusLabel.text and len(loaded) == 4
