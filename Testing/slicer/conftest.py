"""Fixtures for the SAMMedSlicerLib tests on Slicer's real MRML (the ``slicer-core`` wheel, no Slicer app).

Run with a Python that has ``slicer-core==5.13.*`` (``make test-slicer`` builds ``.venv-slicer``); under any other
Python these tests are not collected and the header says why. The worker is the real ``sammed-server`` of the
project environment (``$SAMMED_SERVER``, default ``.venv/bin/sammed-server``) on 127.0.0.1 with LiteMedSAM on CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SAMMedSlicer"


def _slicer_core_missing() -> str:
    try:
        import slicer
    except ImportError:
        return "slicer-core is not installed in this Python"
    if not hasattr(slicer, "vtkMRMLScene"):
        return "`import slicer` is not the slicer-core wheel"
    return ""


MISSING = _slicer_core_missing()
if MISSING:
    collect_ignore_glob = ["test_*.py"]
else:
    sys.path.insert(0, str(MODULE_DIR))


def pytest_report_header(config: pytest.Config) -> str:
    if MISSING:
        return f"Testing/slicer SKIPPED: {MISSING} (run `make test-slicer`, which uses .venv-slicer)"
    return f"Testing/slicer: slicer-core MRML, module sources from {MODULE_DIR}"


@dataclass
class Mrml:
    """A scene with the module logics a Slicer app would have, and the CT loaded as a scalar volume."""

    scene: Any
    app: Any
    logics: dict[str, Any]
    volume: Any = None


def make_mrml() -> Mrml:
    import slicer
    import vtk

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    app.GetColorLogic().SetMRMLScene(scene)
    app.GetColorLogic().AddDefaultColorNodes()
    app.SetSliceLogics(vtk.vtkCollection())
    app.SetViewLogics(vtk.vtkCollection())
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLApplicationLogic(app)
    colors.SetMRMLScene(scene)
    app.SetModuleLogic("Colors", colors)
    logics = {"Colors": colors}
    for name, cls in (("Volumes", slicer.vtkSlicerVolumesLogic), ("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                      ("Markups", slicer.vtkSlicerMarkupsLogic)):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        logics[name] = logic
    return Mrml(scene, app, logics)


def load_volume(mrml: Mrml, path: Path, name: str) -> Any:
    import vtk

    node = mrml.logics["Volumes"].AddArchetypeVolume(str(path), name, 0, vtk.vtkStringArray())
    assert node is not None, f"could not load {path}"
    return node


@pytest.fixture
def mrml(ct_path: Path) -> Mrml:
    """A fresh scene with example_ct_sm in a ``vtkMRMLScalarVolumeNode``."""
    app = make_mrml()
    app.volume = load_volume(app, ct_path, "ct")
    return app


@pytest.fixture(scope="session")
def reference(ct_labels_path: Path, label_names: dict) -> dict[str, Any]:
    """``{organ: (K, J, I) bool}`` from example_seg (same grid as the CT)."""
    from SAMMedSlicerLib.volume import voxel_array

    labels = voxel_array(load_volume(make_mrml(), ct_labels_path, "labels"))
    names = label_names[ct_labels_path.name]
    return {organ: labels == value for value, organ in names.items()}


@pytest.fixture
def segmentation(mrml: Mrml) -> Any:
    node = mrml.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(mrml.volume)
    return node




@pytest.fixture
def session(mrml, segmentation, worker):
    """A live session on the CT (no precompute: tests embed only the slices they touch) with prompt markups."""
    from SAMMedSlicerLib.session import Session, create_prompt_nodes

    live = Session(mrml.scene, worker)
    live.set_volume(mrml.volume, precompute=False)
    live.wait_until_uploaded(300)  # the workflows refuse to start while the volume is still being sent
    live.observe(create_prompt_nodes(mrml.scene))
    yield live
    live.close()
    assert not live.errors, live.errors
