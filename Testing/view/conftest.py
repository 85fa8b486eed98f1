"""Fixtures for the view tests: a real offscreen Red slice view from ``trame-slicer`` (slicer-core + VTK, no Qt).

Run with a Python that has ``trame-slicer[standalone]`` (``make test-view`` builds ``.venv-view``); under any other
Python these tests are not collected and the header says why. Rendering is offscreen through EGL
(``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow``; Mesa's llvmpipe is enough, no GPU or display needed). The worker
is the real ``sammed-server`` of the project environment (``$SAMMED_SERVER``, default ``.venv/bin/sammed-server``)
on 127.0.0.1 with LiteMedSAM on CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "SAMMedSlicer"

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def _trame_slicer_missing() -> str:
    try:
        import trame_slicer.core  # noqa: F401
        import slicer
    except ImportError as error:
        return f"trame-slicer is not installed in this Python ({error})"
    if not hasattr(slicer, "vtkMRMLScene"):
        return "`import slicer` is not the slicer-core wheel"
    return ""


MISSING = _trame_slicer_missing()
if MISSING:
    collect_ignore_glob = ["test_*.py"]
else:
    sys.path.insert(0, str(MODULE_DIR))


def pytest_report_header(config: pytest.Config) -> str:
    if MISSING:
        return f"Testing/view SKIPPED: {MISSING} (run `make test-view`, which uses .venv-view)"
    return (f"Testing/view: trame-slicer offscreen views ({os.environ['VTK_DEFAULT_OPENGL_WINDOW']}), "
            f"module sources from {MODULE_DIR}")


@pytest.fixture
def app() -> Iterator[Any]:
    """A trame-slicer ``SlicerApp`` (scene + module logics) that creates views offscreen."""
    from trame_slicer.core import SlicerApp
    from trame_slicer.views import DirectViewFactory

    slicer_app = SlicerApp()
    slicer_app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
    yield slicer_app
    # empty the scene while the views still observe it, so their pipelines are not updated half torn down
    slicer_app.scene.Clear(True)
    for view in slicer_app.view_manager.get_views():
        view.finalize()
