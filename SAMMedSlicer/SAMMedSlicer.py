"""SAMMed: Segment Anything for CT/MR annotation in 3D Slicer.

A thin shell: the panel (Widget), a facade over SAMMedSlicerLib (Logic) and the in-Slicer self-test. All behaviour
(prompts, worker, segments, undo) lives in the Qt-free SAMMedSlicerLib. Importing this file does no work.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import ctk  # noqa: F401 - loaded for the .ui file's ctk widgets
import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SAMMedSlicerLib.client import SAMMedClient, SAMMedClientError
from SAMMedSlicerLib.parameters import Parameters
from SAMMedSlicerLib.server_process import (
    ServerProcess, WorkerError, create_env_commands, env_executable, serve_command,
)
from SAMMedSlicerLib.session import Session, create_prompt_nodes, slice_of_view

SETTINGS_PREFIX = "SAMMed/"
SHORTCUTS = {"Shift+A": "positivePoints", "Shift+S": "negativePoints", "Shift+B": "box"}
POLL_MS = 500
DRAIN_MS = 50  # finished predictions are written into the segment this often (main thread)


class SAMMedSlicer(ScriptedLoadableModule):
    def __init__(self, parent: Any) -> None:
        super().__init__(parent)
        self.parent.title = "SAMMed"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["SAMMed developers"]
        self.parent.helpText = (
            "Segment CT/MR structures with Segment Anything: place a box and +/− points in any slice view; the "
            "selected segment updates on that slice. Ctrl+Z undoes the last prompt."
        )
        self.parent.acknowledgementText = (
            "Uses LiteMedSAM / Segment Anything models run by the sammed-server worker."
        )


def setting(name: str, default: str = "") -> str:
    return str(qt.QSettings().value(SETTINGS_PREFIX + name, default) or default)


def set_setting(name: str, value: str) -> None:
    qt.QSettings().setValue(SETTINGS_PREFIX + name, value)


class SAMMedSlicerLogic(ScriptedLoadableModuleLogic):
    """Facade the widget and tests use: the worker (local process or remote URL) and the prompt session."""

    def __init__(self) -> None:
        super().__init__()
        self.client: Optional[SAMMedClient] = None
        self.process: Optional[ServerProcess] = None
        self.session: Optional[Session] = None

    @staticmethod
    def parameters() -> Parameters:
        return Parameters.find_or_create(slicer.mrmlScene)

    @staticmethod
    def module_dir() -> str:
        return os.path.dirname(os.path.abspath(__file__))

    def server_source(self) -> str:
        """The SAMMedServer folder: beside the module when installed, at the repository root in a source tree."""
        for candidate in (os.path.join(self.module_dir(), "SAMMedServer"),
                          os.path.join(os.path.dirname(self.module_dir()), "SAMMedServer")):
            if os.path.isfile(os.path.join(candidate, "pyproject.toml")):
                return candidate
        raise WorkerError("the SAMMedServer sources are not installed with this extension")

    @staticmethod
    def default_env_dir() -> str:
        return os.path.join(os.path.expanduser("~"), ".sammed", "worker-env")

    def environment_commands(self, env_dir: str) -> list[list[str]]:
        """venv + pip commands with Slicer's Python (``sys.executable`` is PythonSlicer inside Slicer)."""
        source = self.server_source()
        constraints = os.path.join(source, "constraints.txt")
        return create_env_commands(env_dir, source, constraints if os.path.isfile(constraints) else None)

    def create_environment(self, env_dir: str) -> str:
        """Run the environment commands (the widget asks the user first); returns the worker's python."""
        for command in self.environment_commands(env_dir):
            process = slicer.util.launchConsoleProcess(command)
            slicer.util.logProcessOutput(process)  # raises CalledProcessError with the output on failure
        return env_executable(env_dir, "python")

    def connect(self, url: str, token: Optional[str] = None) -> Any:
        """Use the worker at ``url``; returns its health (raises on protocol mismatch or no answer)."""
        self.client = SAMMedClient(url, token=token or None)
        return self.client.health()

    def start_local_worker(self, executable: str, port: int, model: Optional[str] = None) -> Any:
        """(Re)start the local worker from ``executable`` (its python or sammed-server) and wait for health."""
        self.stop_worker()
        url = f"http://127.0.0.1:{port}"
        self.client = SAMMedClient(url)
        self.process = ServerProcess(serve_command(executable, port=port, model=model), self.client.health)
        return self.process.start()

    def stop_worker(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def start_session(self, on_error: Any = None, on_notice: Any = None) -> Session:
        """A prompt session on the connected worker (replacing the previous one)."""
        if self.client is None:
            raise WorkerError("start the worker or test the connection first")
        self.end_session()
        model = self.parameters().get("model") or None
        self.session = Session(slicer.mrmlScene, self.client, model=model, on_error=on_error, on_notice=on_notice)
        return self.session

    def end_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    def shutdown(self) -> None:
        self.end_session()
        self.stop_worker()


class SAMMedSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: selections, worker line, prompt tools; a timer polls the precompute (the UI never blocks on it)."""

    def __init__(self, parent: Any = None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic: Optional[SAMMedSlicerLogic] = None
        self.params: Optional[Parameters] = None
        self.shortcuts: list[Any] = []
        self.timer: Optional[Any] = None
        self.drainTimer: Optional[Any] = None
        self._predictionStatusShown = False
        self._focus: Optional[tuple[int, int]] = None
        self._encoderTypes: dict[str, str] = {}

    def setup(self) -> None:
        super().setup()
        panel = slicer.util.loadUI(self.resourcePath("UI/SAMMedSlicer.ui"))
        self.layout.addWidget(panel)
        self.ui = slicer.util.childWidgetVariables(panel)
        panel.setMRMLScene(slicer.mrmlScene)
        self.logic = SAMMedSlicerLogic()

        self.ui.pythonPathLineEdit.text = setting("python", env_executable(SAMMedSlicerLogic.default_env_dir(), "python"))
        self.ui.workerTokenLineEdit.text = setting("token")
        self.ui.volumeSelector.currentNodeChanged.connect(self.onVolumeChanged)
        self.ui.segmentationSelector.currentNodeChanged.connect(self.onSegmentationChanged)
        self.ui.segmentSelector.currentSegmentChanged.connect(self.onSegmentChanged)
        self.ui.modelComboBox.currentTextChanged.connect(lambda text: self._set("model", text))
        self.ui.remoteRadioButton.toggled.connect(lambda on: self._set("workerMode", "remote" if on else "local"))
        self.ui.workerUrlLineEdit.editingFinished.connect(lambda: self._set("workerUrl", self.ui.workerUrlLineEdit.text))
        self.ui.startWorkerButton.clicked.connect(self.onStartWorker)
        self.ui.stopWorkerButton.clicked.connect(self.onStopWorker)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.ui.createEnvironmentButton.clicked.connect(self.onCreateEnvironment)
        for role, button in (("positivePoints", self.ui.positivePointButton),
                             ("negativePoints", self.ui.negativePointButton), ("box", self.ui.boxButton)):
            button.clicked.connect(lambda checked, r=role: self.placePrompt(r) if checked else self.stopPlacing())
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.clearPromptsButton.clicked.connect(self.onClearPrompts)
        self.ui.promptTypeComboBox.addItems(["point", "box", "composite"])
        self.ui.trainPromptButton.clicked.connect(self.onTrainPrompt)
        self.ui.promptEncoderComboBox.currentIndexChanged.connect(self.onPromptEncoderChanged)
        for direction, button in (("down", self.ui.propagateDownButton), ("both", self.ui.propagateBothButton),
                                  ("up", self.ui.propagateUpButton)):
            button.clicked.connect(lambda checked=False, d=direction: self.onPropagate(d))
        self.ui.autoSapnetButton.clicked.connect(self.onAutoSegmentSapnet)
        self.ui.autoModelButton.clicked.connect(self.onAutoSegmentModel)
        self.ui.cancelTaskButton.clicked.connect(self.onCancelTask)
        self.ui.applyResultButton.clicked.connect(self.onApplyResult)
        self.ui.discardResultButton.clicked.connect(self.onDiscardResult)

        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_MS)
        self.timer.timeout.connect(self.onPoll)
        self.drainTimer = qt.QTimer()  # runs while the module lives: predictions in flight land after exit() too
        self.drainTimer.setInterval(DRAIN_MS)
        self.drainTimer.timeout.connect(self.onDrainPredictions)
        self.drainTimer.start()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        slicer.app.connect("aboutToQuit()", self.logic.shutdown)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.timer is not None:
            self.timer.stop()
            self.drainTimer.stop()
        self._removeShortcuts()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()
        self._installShortcuts()
        self.timer.start()

    def exit(self) -> None:
        self._removeShortcuts()
        self.timer.stop()

    def onSceneEndClose(self, caller: Any, event: Any) -> None:
        self.logic.end_session()
        if self.parent.isEntered:
            self.initializeParameterNode()

    # parameter node ------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.params = self.logic.parameters()
        if self.params.reference("box") is None:
            for role, node in create_prompt_nodes(slicer.mrmlScene).items():
                self.params.set_reference(role, node)
        volume = self.params.reference("volume") or slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.ui.volumeSelector.setCurrentNode(volume)
        self.ui.segmentationSelector.setCurrentNode(self.params.reference("segmentation"))
        self.ui.segmentSelector.setCurrentSegmentID(self.params.get("segmentId"))
        self.ui.remoteRadioButton.checked = self.params.get("workerMode") == "remote"
        self.ui.workerUrlLineEdit.text = self.params.get("workerUrl")

    def _set(self, name: str, value: str) -> None:
        if self.params is not None:
            self.params.set(name, value)

    # selections ----------------------------------------------------------------------------------
    def onVolumeChanged(self, node: Any) -> None:
        if self.params is not None:
            self.params.set_reference("volume", node)
        self._startVolume()

    def onSegmentationChanged(self, node: Any) -> None:
        if self.params is not None:
            self.params.set_reference("segmentation", node)
        self.ui.segmentSelector.setCurrentNode(node)
        if node is not None and self.ui.volumeSelector.currentNode() is not None:
            node.SetReferenceImageGeometryParameterFromVolumeNode(self.ui.volumeSelector.currentNode())
        self._updateSegment()

    def onSegmentChanged(self, segment_id: str) -> None:
        self._set("segmentId", segment_id or "")
        self._updateSegment()

    def _updateSegment(self) -> None:
        if self.logic.session is not None:
            self.logic.session.set_segment(self.ui.segmentationSelector.currentNode(),
                                           self.ui.segmentSelector.currentSegmentID())

    def _startVolume(self) -> None:
        """New session on the chosen volume: upload + precompute in the background, the Red slice first."""
        volume = self.ui.volumeSelector.currentNode()
        if volume is None or self.logic.client is None:
            return
        session = self.logic.start_session(on_error=self._message, on_notice=self._message)
        red = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        axis, index = slice_of_view(volume, red)
        session.set_volume(volume, focus=index, axis=axis)
        session.observe({role: self.params.reference(role) for role in ("positivePoints", "negativePoints", "box")})
        self._watchSliceViewKeys(session)
        self._updateSegment()

    def _watchSliceViewKeys(self, session: Session) -> None:
        """Esc in a slice view leaves Place mode (Slicer's markups widget has no key for it)."""
        layout = slicer.app.layoutManager()
        for name in layout.sliceViewNames():
            session.placement.watch_keys(layout.sliceWidget(name).sliceView().interactor())

    # worker --------------------------------------------------------------------------------------
    def onStartWorker(self) -> None:
        python = self.ui.pythonPathLineEdit.text.strip()
        set_setting("python", python)
        port = int(qt.QUrl(self.params.get("workerUrl")).port(8765))
        self._status("starting the worker…")
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            health = self.logic.start_local_worker(python, port, self.params.get("model") or None)
        except WorkerError as exc:
            self._status("not running")
            slicer.util.errorDisplay(str(exc), windowTitle="SAMMed worker")
            return
        finally:
            qt.QApplication.restoreOverrideCursor()
        self._connected(health)

    def onStopWorker(self) -> None:
        self.logic.shutdown()
        self._status("stopped")

    def onTestConnection(self) -> None:
        token = self.ui.workerTokenLineEdit.text.strip()
        set_setting("token", token)
        try:
            health = self.logic.connect(self.ui.workerUrlLineEdit.text.strip(), token)
        except SAMMedClientError as exc:
            self._status(f"no connection: {exc}")
            return
        self._connected(health)

    def onCreateEnvironment(self) -> None:
        env_dir = SAMMedSlicerLogic.default_env_dir()
        if not slicer.util.confirmOkCancelDisplay(
            f"Create the SAMMed worker environment in {env_dir}?\n\nThis installs PyTorch and the worker "
            "(several GB download) into its own Python environment; Slicer's Python is not changed."
        ):
            return
        with slicer.util.tryWithErrorDisplay("Could not create the worker environment", waitCursor=True):
            python = self.logic.create_environment(env_dir)
            self.ui.pythonPathLineEdit.text = python
            set_setting("python", python)
            self._status("environment ready: press Start")

    def _connected(self, health: Any) -> None:
        self._status(f"connected: sammed-server {health.version} on {health.device} (protocol {health.protocol})")
        models = [m.id for m in self.logic.client.models()]
        wanted = self.params.get("model")
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItems(models)
        if wanted in models:
            self.ui.modelComboBox.setCurrentText(wanted)
        self._refreshArtefacts()
        self._startVolume()

    # workflows (worker jobs, polled by the timer; results previewed, then applied or discarded) ---------------
    def onTrainPrompt(self) -> None:
        self._runTask(lambda session: session.train_prompt(
            self.ui.trainSlicesSpinBox.value, self.ui.promptTypeComboBox.currentText, self._viewedSlice()[0]))

    def onPromptEncoderChanged(self, index: int) -> None:
        if self.logic.session is not None and index >= 0:
            artefact_id = self.ui.promptEncoderComboBox.itemData(index) or ""
            self.logic.session.use_prompt_encoder(artefact_id or None, self._encoderTypes.get(artefact_id, ""))

    def onPropagate(self, direction: str) -> None:
        self._runTask(lambda session: session.propagate(direction, *self._viewedSlice()))

    def onAutoSegmentSapnet(self) -> None:
        self._runTask(lambda session: session.auto_segment_sapnet(self._viewedSlice()[0]))

    def onAutoSegmentModel(self) -> None:
        artefact_id = self.ui.autoModelComboBox.currentData
        if not artefact_id:
            self._message("no trained H-SAM / MA-SAM model: train one with `sammed-server train hsam|masam`")
            return
        self._runTask(lambda session: session.auto_segment_model(artefact_id))

    def onCancelTask(self) -> None:
        if self.logic.session is not None:
            self.logic.session.cancel_task()

    def onApplyResult(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not apply the result", waitCursor=True):
            self.logic.session.apply_pending()
        self._message("applied: Undo (Ctrl+Z) takes it back as a whole")
        self._showPending(False)

    def onDiscardResult(self) -> None:
        self.logic.session.discard_pending()
        self._showPending(False)

    def _runTask(self, start: Any) -> None:
        session = self.logic.session
        if session is None:
            self._message("connect to a worker and choose a volume first")
            return
        try:
            start(session)
        except (RuntimeError, SAMMedClientError) as exc:
            self._message(str(exc))
            return
        self.ui.cancelTaskButton.enabled = True
        self.ui.taskProgressBar.value = 0

    def _pollTask(self, session: Any) -> None:
        task = session.task
        if task is None or not self.ui.cancelTaskButton.enabled:
            return
        state, fraction, message = task.poll()
        self.ui.taskProgressBar.value = int(100 * fraction)
        loss = f" (loss {task.losses[0]:.3f} → {task.losses[-1]:.3f})" if task.losses else ""
        self.ui.taskLabel.text = message + loss
        if state == "running":
            return
        self.ui.cancelTaskButton.enabled = False
        if state == "succeeded":
            self._refreshArtefacts()
            self._showPending(session.pending is not None)

    def _showPending(self, waiting: bool) -> None:
        self.ui.applyResultButton.enabled = waiting
        self.ui.discardResultButton.enabled = waiting

    def _viewedSlice(self) -> tuple[int, int]:
        """(axis, index) of the volume slice in the Red view."""
        return self.logic.session.slice_of_view(slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode())

    def _refreshArtefacts(self) -> None:
        """Fill the learned-encoder and automatic-model lists from the worker (this model's weights only)."""
        client = self.logic.client
        if client is None:
            return
        model = self.ui.modelComboBox.currentText
        encoders = self.ui.promptEncoderComboBox
        selected = encoders.currentData
        encoders.blockSignals(True)
        encoders.clear()
        encoders.addItem("the model's own prompt encoder", "")
        self._encoderTypes = {}
        for item in client.artefacts("prompt_encoders"):
            if item.base_model == model:
                self._encoderTypes[item.id] = item.manifest.get("prompt_type", "point")
                encoders.addItem(item.label, item.id)
        session = self.logic.session
        if session is not None and session.prompt_encoder:
            selected = session.prompt_encoder  # a freshly trained encoder is the one in use
        encoders.setCurrentIndex(max(0, encoders.findData(selected)))
        encoders.blockSignals(False)
        models = self.ui.autoModelComboBox
        models.clear()
        for item in client.artefacts("auto_models"):
            models.addItem(item.label, item.id)

    # prompts -------------------------------------------------------------------------------------
    def placePrompt(self, role: str) -> None:
        """Put the slice views in place mode for one of the prompt markups."""
        node = self.params.reference(role)
        for other, button in (("positivePoints", self.ui.positivePointButton),
                              ("negativePoints", self.ui.negativePointButton), ("box", self.ui.boxButton)):
            button.checked = other == role
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(1)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def stopPlacing(self) -> None:
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    def onUndo(self) -> None:
        if self.logic.session is not None and not self.logic.session.undo():
            self._message("nothing to undo")

    def onClearPrompts(self) -> None:
        if self.logic.session is not None:
            self.logic.session.clear_prompts()

    def _installShortcuts(self) -> None:
        self._removeShortcuts()
        bindings = {"Ctrl+Z": self.onUndo, **{key: (lambda r=role: self.placePrompt(r)) for key, role in SHORTCUTS.items()}}
        for key, action in bindings.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), slicer.util.mainWindow())
            shortcut.activated.connect(action)
            self.shortcuts.append(shortcut)

    def _removeShortcuts(self) -> None:
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    # polling -------------------------------------------------------------------------------------
    def onPoll(self) -> None:
        """Show the precompute's progress and tell the worker which slice is on screen."""
        session = self.logic.session
        if session is None or session.volume_node is None:
            return
        try:
            self._pollTask(session)
            progress = session.progress()
            self.ui.precomputeProgressBar.value = int(100 * progress.fraction)
            self.ui.precomputeProgressBar.setFormat(f"{progress.state} %p%")
            focus = session.slice_of_view(slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode())
            if focus != self._focus:
                self._focus = focus
                session.focus(*focus)
        except SAMMedClientError as exc:
            self._status(f"worker unreachable: {exc}")

    def onDrainPredictions(self) -> None:
        """Write finished predictions into the segment (the prediction thread never touches the scene) and show
        what is still running in the status bar."""
        session = self.logic.session if self.logic is not None else None
        if session is None:
            return
        session.drain()
        activity = session.activity()
        if activity or self._predictionStatusShown:
            slicer.util.showStatusMessage(f"SAMMed: {activity}" if activity else "SAMMed: ready", 0 if activity else 2000)
        self._predictionStatusShown = bool(activity)

    def _status(self, text: str) -> None:
        self.ui.workerStatusLabel.text = text

    def _message(self, text: str) -> None:
        self.ui.messageLabel.text = text


class SAMMedSlicerTest(ScriptedLoadableModuleTest):
    """In-Slicer self-test of the Lib on the scene (no worker needed): slice write honours overwrite, undo exact."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_slice_write_and_undo()
        self.test_parameter_node()

    def test_slice_write_and_undo(self) -> None:
        import numpy as np

        from SAMMedSlicerLib.segments import EditSettings, SegmentSlices

        volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "ct")
        image = vtk.vtkImageData()
        image.SetDimensions(40, 30, 10)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        volume.SetAndObserveImageData(image)
        seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
        a = seg.GetSegmentation().AddEmptySegment("a")
        b = seg.GetSegmentation().AddEmptySegment("b")
        slices = SegmentSlices(seg, volume)
        other = np.zeros((30, 40), bool)
        other[0:10, 0:10] = True
        slices.write(b, 2, 4, other)
        mask = np.zeros((30, 40), bool)
        mask[5:20, 5:20] = True
        edit = slices.apply(EditSettings(), a, 2, 4, mask)
        self.assertTrue(np.array_equal(slices.read(a, 2, 4), mask))
        self.assertTrue(np.array_equal(slices.read(b, 2, 4), other & ~mask))
        slices.undo(edit)
        self.assertFalse(slices.read(a, 2, 4).any())
        self.assertTrue(np.array_equal(slices.read(b, 2, 4), other))
        self.delayDisplay("slice write and undo OK")

    def test_parameter_node(self) -> None:
        params = SAMMedSlicerLogic.parameters()
        params.set("model", "litemedsam")
        self.assertIs(SAMMedSlicerLogic.parameters().node, params.node)
        self.delayDisplay("parameter node OK")
